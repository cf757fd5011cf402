// Package pgstore keeps the claims of package idempotency, and the
// delivery counts of package dlq, in PostgreSQL, shared by every instance
// of a service, through database/sql with any PostgreSQL driver.
//
//	db, err := sql.Open("pgx", os.Getenv("DATABASE_URL"))
//	store, err := pgstore.New(db, pgstore.Config{})
//	if err := store.Migrate(ctx); err != nil { ... }
//	if err := idempotency.Check(ctx, store); err != nil { ... }
//	dedup, err := idempotency.New(store, idempotency.Config{Namespace: "billing"})
//	deadLetter, err := dlq.New(dlq.Config{Producer: p, Group: "billing", MaxAttempts: 5, AttemptCounter: store})
//
// # Same transaction
//
// A handler whose effects are writes to the same database can do better
// than claim-then-complete: [Store.Handler] runs those writes and the
// dedup record in one transaction. A duplicate finds the record and is
// acknowledged without running; a handler that fails, panics or is killed
// before the commit leaves neither its writes nor the record, so the
// message runs again. There is no window in which the work is done but
// not recorded: exactly-once for the database's effects.
//
// Claims are rows of one table (default mq_idempotency), delivery counts
// rows of another (its name plus _attempts), created by [Store.Migrate]
// from the SQL file schema.sql of this package. Every operation is one
// statement. Times are the database's (now()), so the instances' clocks
// do not matter. Errors of a database that cannot be reached wrap
// mq.ErrUnavailable.
package pgstore

import (
	"context"
	"crypto/rand"
	"database/sql"
	"database/sql/driver"
	_ "embed"
	"errors"
	"fmt"
	"io"
	"net"
	"regexp"
	"strings"
	"sync/atomic"
	"time"

	"github.com/mqkit/mq"
	"github.com/mqkit/mq/idempotency"
)

//go:embed schema.sql
var schemaSQL string

// Config configures a Store. The zero value is ready to use.
type Config struct {
	// Table is the claims table, a lower-case SQL identifier; the delivery
	// counts go in Table + "_attempts". Default "mq_idempotency".
	Table string

	// SweepEvery makes every SweepEvery-th Complete also delete up to
	// 1000 expired rows (see Sweep). Default 1000; negative: never (call
	// Sweep yourself).
	SweepEvery int
}

// Store is an idempotency.Store, an idempotency.Pinger and a
// dlq.AttemptCounter in PostgreSQL. It is safe for concurrent use; the
// *sql.DB's pool bounds its connections, and the caller's context its
// calls (database/sql cancels a query whose context ends).
type Store struct {
	db         *sql.DB
	table      string
	attempts   string
	sweepEvery int64
	completes  atomic.Int64

	claimSQL, completeSQL, releaseSQL, extendSQL string
	countSQL, undoSQL, forgetSQL, recordSQL      string
}

var (
	_ idempotency.Store  = (*Store)(nil)
	_ idempotency.Pinger = (*Store)(nil)
)

var identRE = regexp.MustCompile(`^[a-z_][a-z0-9_]{0,40}$`)

// New returns a store on db. It does not contact the database: call
// Migrate (once, or let a DBA run Schema) and idempotency.Check at
// start-up.
func New(db *sql.DB, cfg Config) (*Store, error) {
	if db == nil {
		return nil, errors.New("pgstore: New needs a *sql.DB")
	}
	if cfg.Table == "" {
		cfg.Table = "mq_idempotency"
	}
	if !identRE.MatchString(cfg.Table) {
		return nil, fmt.Errorf("pgstore: table name %q must be a lower-case SQL identifier of at most 41 bytes", cfg.Table)
	}
	if cfg.SweepEvery == 0 {
		cfg.SweepEvery = 1000
	}
	t, a := cfg.Table, cfg.Table+"_attempts"
	s := &Store{db: db, table: t, attempts: a, sweepEvery: int64(cfg.SweepEvery)}
	// $1 key, $2 token, $3 lease or keep in microseconds.
	s.claimSQL = `WITH ins AS (
  INSERT INTO ` + t + ` AS t (key, token, done, expires_at) VALUES ($1, $2, false, now() + $3 * interval '1 microsecond')
  ON CONFLICT (key) DO UPDATE SET token = EXCLUDED.token, done = false, expires_at = EXCLUDED.expires_at
  WHERE t.expires_at <= now()
  RETURNING 1
)
SELECT (SELECT count(*) FROM ins), (SELECT done FROM ` + t + ` WHERE key = $1 AND expires_at > now())`
	s.completeSQL = `INSERT INTO ` + t + ` AS t (key, token, done, expires_at) VALUES ($1, $2, true, now() + $3 * interval '1 microsecond')
ON CONFLICT (key) DO UPDATE SET token = EXCLUDED.token, done = true, expires_at = EXCLUDED.expires_at
WHERE t.token = EXCLUDED.token OR t.expires_at <= now()`
	s.releaseSQL = `WITH del AS (
  DELETE FROM ` + t + ` WHERE key = $1 AND token = $2 AND NOT done RETURNING 1
)
SELECT (SELECT count(*) FROM del), (SELECT count(*) FROM ` + t + ` WHERE key = $1 AND expires_at > now())`
	s.extendSQL = `UPDATE ` + t + ` SET expires_at = now() + $3 * interval '1 microsecond'
WHERE key = $1 AND token = $2 AND NOT done AND expires_at > now()`
	// The record of the transactional handler: like Claim, but done at once.
	s.recordSQL = `WITH ins AS (
  INSERT INTO ` + t + ` AS t (key, token, done, expires_at) VALUES ($1, $2, true, now() + $3 * interval '1 microsecond')
  ON CONFLICT (key) DO UPDATE SET token = EXCLUDED.token, done = true, expires_at = EXCLUDED.expires_at
  WHERE t.expires_at <= now()
  RETURNING 1
)
SELECT (SELECT count(*) FROM ins), (SELECT done FROM ` + t + ` WHERE key = $1 AND expires_at > now())`
	s.countSQL = `INSERT INTO ` + a + ` AS a (key, n, expires_at) VALUES ($1, 1, now() + $2 * interval '1 microsecond')
ON CONFLICT (key) DO UPDATE SET n = CASE WHEN a.expires_at <= now() THEN 1 ELSE a.n + 1 END, expires_at = EXCLUDED.expires_at
RETURNING n`
	s.undoSQL = `WITH dec AS (
  UPDATE ` + a + ` SET n = n - 1 WHERE key = $1 AND n > 1 AND expires_at > now() RETURNING 1
)
DELETE FROM ` + a + ` WHERE key = $1 AND NOT EXISTS (SELECT 1 FROM dec)`
	s.forgetSQL = `DELETE FROM ` + a + ` WHERE key = $1`
	return s, nil
}

// Schema returns the SQL that creates the store's tables and indexes:
// schema.sql with the configured table name.
func (s *Store) Schema() string { return strings.ReplaceAll(schemaSQL, "mq_idempotency", s.table) }

// Migrate creates the store's tables and indexes if they do not exist, in
// one transaction, serialized with other instances by an advisory lock.
func (s *Store) Migrate(ctx context.Context) error {
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return dbError("migrate", s.table, err)
	}
	defer func() { _ = tx.Rollback() }()
	if _, err := tx.ExecContext(ctx, "SELECT pg_advisory_xact_lock(hashtext($1))", "mq-pgstore-migrate:"+s.table); err != nil {
		return dbError("migrate", s.table, err)
	}
	if _, err := tx.ExecContext(ctx, s.Schema()); err != nil {
		return dbError("migrate", s.table, err)
	}
	if err := tx.Commit(); err != nil {
		return dbError("migrate", s.table, err)
	}
	return nil
}

// Claim implements idempotency.Store: an insert on the unique key, or an
// update of a row whose lease or keep time has passed.
func (s *Store) Claim(ctx context.Context, key string, lease time.Duration) (idempotency.Claim, error) {
	if err := positive("lease", lease); err != nil {
		return idempotency.Claim{}, err
	}
	tok := newToken()
	st, err := s.claim(ctx, s.db, s.claimSQL, key, tok, lease)
	if err != nil {
		return idempotency.Claim{}, dbError("claim", key, err)
	}
	if st == idempotency.Acquired {
		return idempotency.Claim{Status: st, Token: tok}, nil
	}
	return idempotency.Claim{Status: st}, nil
}

// queryer is a *sql.DB or a *sql.Tx.
type queryer interface {
	QueryRowContext(ctx context.Context, query string, args ...any) *sql.Row
}

// claim runs the claim or record statement q.
func (s *Store) claim(ctx context.Context, db queryer, q, key, tok string, d time.Duration) (idempotency.Status, error) {
	var acquired int64
	var done sql.NullBool
	if err := db.QueryRowContext(ctx, q, []byte(key), tok, micros(d)).Scan(&acquired, &done); err != nil {
		return 0, err
	}
	switch {
	case acquired == 1:
		return idempotency.Acquired, nil
	case done.Valid && done.Bool:
		return idempotency.AlreadyDone, nil
	default:
		// Held, or taken by a transaction that committed after this
		// statement's snapshot: either way not ours.
		return idempotency.Busy, nil
	}
}

// Complete implements idempotency.Store.
func (s *Store) Complete(ctx context.Context, key, token string, keep time.Duration) error {
	if err := positive("keep", keep); err != nil {
		return err
	}
	res, err := s.db.ExecContext(ctx, s.completeSQL, []byte(key), token, micros(keep))
	if err != nil {
		return dbError("complete", key, err)
	}
	if n, err := res.RowsAffected(); err != nil {
		return dbError("complete", key, err)
	} else if n != 1 {
		return fmt.Errorf("%w (complete %q)", idempotency.ErrNotOwner, key)
	}
	if s.sweepEvery > 0 && s.completes.Add(1)%s.sweepEvery == 0 {
		_, _ = s.sweep(ctx, 1000)
	}
	return nil
}

// Release implements idempotency.Store.
func (s *Store) Release(ctx context.Context, key, token string) error {
	var deleted, live int64
	if err := s.db.QueryRowContext(ctx, s.releaseSQL, []byte(key), token).Scan(&deleted, &live); err != nil {
		return dbError("release", key, err)
	}
	if deleted == 0 && live > 0 {
		return fmt.Errorf("%w (release %q)", idempotency.ErrNotOwner, key)
	}
	return nil
}

// Extend implements idempotency.Store.
func (s *Store) Extend(ctx context.Context, key, token string, lease time.Duration) error {
	if err := positive("lease", lease); err != nil {
		return err
	}
	res, err := s.db.ExecContext(ctx, s.extendSQL, []byte(key), token, micros(lease))
	if err != nil {
		return dbError("extend", key, err)
	}
	if n, err := res.RowsAffected(); err != nil {
		return dbError("extend", key, err)
	} else if n != 1 {
		return fmt.Errorf("%w (extend %q)", idempotency.ErrNotOwner, key)
	}
	return nil
}

// Ping implements idempotency.Pinger: it checks that the database answers
// and that the store's tables exist, so a store that was never migrated
// fails at start-up.
func (s *Store) Ping(ctx context.Context) error {
	if _, err := s.db.ExecContext(ctx, "SELECT FROM "+s.table+", "+s.attempts+" LIMIT 0"); err != nil {
		return unavailable("ping", s.table, err)
	}
	return nil
}

// CountAttempt implements dlq.AttemptCounter: it adds one to key's count
// (starting again at 1 when it had expired), sets it to expire ttl from
// now, and returns it, in one statement.
func (s *Store) CountAttempt(ctx context.Context, key string, ttl time.Duration) (int, error) {
	if err := positive("ttl", ttl); err != nil {
		return 0, err
	}
	var n int
	if err := s.db.QueryRowContext(ctx, s.countSQL, []byte(key), micros(ttl)).Scan(&n); err != nil {
		return 0, dbError("count attempt", key, err)
	}
	return n, nil
}

// UndoAttempt implements dlq.AttemptCounter: it takes one off key's count,
// deleting it at zero.
func (s *Store) UndoAttempt(ctx context.Context, key string) error {
	if _, err := s.db.ExecContext(ctx, s.undoSQL, []byte(key)); err != nil {
		return dbError("undo attempt", key, err)
	}
	return nil
}

// ForgetAttempts implements dlq.AttemptCounter: it deletes key's count.
func (s *Store) ForgetAttempts(ctx context.Context, key string) error {
	if _, err := s.db.ExecContext(ctx, s.forgetSQL, []byte(key)); err != nil {
		return dbError("forget attempts", key, err)
	}
	return nil
}

// Sweep deletes up to limit expired rows of each of the store's tables
// (limit <= 0: 1000) and returns how many it deleted. Expired rows already
// count as absent; sweeping only frees their space. Complete sweeps now
// and then by itself (Config.SweepEvery).
func (s *Store) Sweep(ctx context.Context, limit int) (int64, error) {
	if limit <= 0 {
		limit = 1000
	}
	return s.sweep(ctx, limit)
}

func (s *Store) sweep(ctx context.Context, limit int) (int64, error) {
	var total int64
	for _, t := range []string{s.table, s.attempts} {
		res, err := s.db.ExecContext(ctx, "DELETE FROM "+t+" WHERE ctid = ANY (ARRAY(SELECT ctid FROM "+t+
			" WHERE expires_at < now() ORDER BY expires_at LIMIT $1))", limit)
		if err != nil {
			return total, dbError("sweep", t, err)
		}
		n, _ := res.RowsAffected()
		total += n
	}
	return total, nil
}

// sqlStater is implemented by the errors of pgx (*pgconn.PgError) and
// lib/pq (*pq.Error): the SQLSTATE code of an error the server sent.
type sqlStater interface{ SQLState() string }

// IsUnavailable reports whether err means that PostgreSQL could not be
// reached or did not serve: a network error, a dropped connection, or a
// server error of class 08 (connection), 53 (insufficient resources), 57
// (operator intervention: shutting down, starting up) or 58 (system
// error). Errors of statements the server ran and refused (a constraint,
// a missing table, a syntax error) and the caller's own cancellation are
// not.
func IsUnavailable(err error) bool {
	if err == nil || errors.Is(err, context.Canceled) {
		return false
	}
	if errors.Is(err, mq.ErrUnavailable) {
		return true
	}
	var st sqlStater
	if errors.As(err, &st) {
		switch code := st.SQLState(); {
		case strings.HasPrefix(code, "08"), strings.HasPrefix(code, "53"),
			strings.HasPrefix(code, "57"), strings.HasPrefix(code, "58"):
			return true
		default:
			return false
		}
	}
	var ne net.Error
	return errors.Is(err, driver.ErrBadConn) || errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) ||
		errors.Is(err, net.ErrClosed) || errors.Is(err, context.DeadlineExceeded) || errors.As(err, &ne) ||
		errors.Is(err, sql.ErrConnDone)
}

// dbError wraps an error of the database: in mq.ErrUnavailable when it is
// an outage (see IsUnavailable).
func dbError(op, key string, err error) error {
	if IsUnavailable(err) {
		return unavailable(op, key, err)
	}
	return fmt.Errorf("pgstore: %s %q: %w", op, key, err)
}

func unavailable(op, key string, err error) error {
	if errors.Is(err, mq.ErrUnavailable) {
		return fmt.Errorf("pgstore: %s %q: %w", op, key, err)
	}
	return fmt.Errorf("pgstore: %s %q: %w: %w", op, key, mq.ErrUnavailable, err)
}

func positive(what string, d time.Duration) error {
	if d <= 0 {
		return fmt.Errorf("pgstore: %s must be positive, got %v", what, d)
	}
	return nil
}

// micros rounds d up to whole microseconds, at least 1.
func micros(d time.Duration) int64 {
	return max(1, int64((d+time.Microsecond-1)/time.Microsecond))
}

// newToken returns 128 random bits in hex: unique across processes.
func newToken() string {
	return rand.Text()
}
