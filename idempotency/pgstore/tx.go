package pgstore

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"time"

	"github.com/mqkit/mq"
	"github.com/mqkit/mq/idempotency"
)

// TxFunc does a message's work inside tx, the transaction that also holds
// the message's dedup record. Returning nil commits both; returning an
// error (or panicking) rolls both back. It must not commit or roll back
// tx itself.
type TxFunc func(ctx context.Context, tx *sql.Tx, m *mq.Message) error

// TxConfig configures Store.Handler.
type TxConfig struct {
	// Namespace separates the keys of consumers that must each process
	// every message: use the consumer group's name. Required. Keys are
	// "<Namespace>:<topic>:<key>", as idempotency.New makes them, so the
	// transactional handler and the dedup middleware on the same store
	// and namespace recognise each other's records.
	Namespace string

	// KeyFunc returns a message's deduplication key. Default: the message
	// ID (a message marked mq.HeaderIDNotUnique then runs in a
	// transaction without a record, since another message may share its
	// ID). A message for which it returns "" fails with an error wrapping
	// idempotency.ErrEmptyKey, marked mq.Permanent.
	KeyFunc func(m *mq.Message) string

	// Keep is how long the record is kept: a duplicate arriving later
	// runs again. Default 24 hours.
	Keep time.Duration

	// LockTimeout, when positive, bounds how long a delivery waits for
	// another delivery of the same key whose transaction is still open
	// (the record's unique key makes it wait); it then returns
	// idempotency.ErrBusy and comes back later. Default 0: it waits,
	// then is skipped if the other committed, or runs if it rolled back.
	LockTimeout time.Duration

	// TxOptions are the options of each transaction (isolation level).
	// Default nil: the database's default, READ COMMITTED.
	TxOptions *sql.TxOptions
}

// Handler returns a handler that runs fn and records the message as
// handled in one transaction:
//
//	BEGIN
//	insert the record "<Namespace>:<topic>:<key>" (done, kept for Keep)
//	  -> it was there and done: ROLLBACK, return nil (the duplicate is acknowledged)
//	  -> it is held by a running claim (the dedup middleware's): ROLLBACK, ErrBusy
//	fn(ctx, tx, m)
//	  -> error or panic: ROLLBACK, return the error (or re-panic)
//	COMMIT
//
// A crash, a timeout (a canceled ctx rolls the transaction back) or a
// lost connection before COMMIT leaves neither fn's writes nor the record:
// the message runs again when it comes back. A COMMIT whose connection
// fails leaves the outcome unknown; the error then wraps
// mq.ErrUnavailable, and the redelivery finds the record if it did
// commit.
//
// In middleware.Stack the handler takes the place of the Dedup layer
// (leave StackConfig.Dedup nil) and is the innermost layer, inside
// Recover: every attempt of Retry is a transaction of its own, a failed
// attempt leaves no record, and a panic rolls back before Recover sees it.
//
//	h, err := store.Handler(pgstore.TxConfig{Namespace: "billing"}, bill)
//	consumer.Consume(ctx, mq.Chain(h, middleware.Stack(middleware.StackConfig{DeadLetter: dl})))
func (s *Store) Handler(cfg TxConfig, fn TxFunc) (mq.Handler, error) {
	if fn == nil {
		return nil, errors.New("pgstore: Handler needs a TxFunc")
	}
	if cfg.Namespace == "" {
		return nil, errors.New("pgstore: TxConfig.Namespace is required (use the consumer group's name)")
	}
	if cfg.Keep < 0 || cfg.LockTimeout < 0 {
		return nil, fmt.Errorf("pgstore: Keep (%v) and LockTimeout (%v) must not be negative", cfg.Keep, cfg.LockTimeout)
	}
	if cfg.Keep == 0 {
		cfg.Keep = 24 * time.Hour
	}
	byID := cfg.KeyFunc == nil
	if byID {
		cfg.KeyFunc = func(m *mq.Message) string { return m.ID }
	}
	return &txHandler{s: s, cfg: cfg, fn: fn, byID: byID}, nil
}

type txHandler struct {
	s    *Store
	cfg  TxConfig
	fn   TxFunc
	byID bool
}

func (h *txHandler) Handle(ctx context.Context, m *mq.Message) error {
	record := !(h.byID && m.Header(mq.HeaderIDNotUnique) == "true")
	key := ""
	if record {
		k := h.cfg.KeyFunc(m)
		if k == "" {
			return mq.Permanent(fmt.Errorf("%w: message %s on topic %q", idempotency.ErrEmptyKey, m.ID, m.Topic))
		}
		key = h.cfg.Namespace + ":" + m.Topic + ":" + k
	}
	tx, err := h.s.db.BeginTx(ctx, h.cfg.TxOptions)
	if err != nil {
		return unavailable("begin", key, err)
	}
	committed := false
	defer func() {
		if !committed { // also when fn panics: the panic goes on after this
			_ = tx.Rollback()
		}
	}()
	if record {
		if h.cfg.LockTimeout > 0 {
			if _, err := tx.ExecContext(ctx, "SELECT set_config('lock_timeout', $1, true)", fmt.Sprintf("%dms", max(1, h.cfg.LockTimeout.Milliseconds()))); err != nil {
				return unavailable("set lock_timeout", key, err)
			}
		}
		st, err := h.s.claim(ctx, tx, h.s.recordSQL, key, newToken(), h.cfg.Keep)
		if err != nil {
			var ss sqlStater
			if errors.As(err, &ss) && ss.SQLState() == "55P03" { // lock_not_available
				return fmt.Errorf("%w (key %q)", idempotency.ErrBusy, key)
			}
			if mq.IsPermanent(err) {
				return err
			}
			return unavailable("record", key, err)
		}
		switch st {
		case idempotency.AlreadyDone:
			mq.SetOutcome(ctx, mq.OutcomeDuplicate)
			return nil
		case idempotency.Busy:
			return fmt.Errorf("%w (key %q)", idempotency.ErrBusy, key)
		}
		if h.cfg.LockTimeout > 0 {
			if _, err := tx.ExecContext(ctx, "SET LOCAL lock_timeout TO DEFAULT"); err != nil {
				return unavailable("reset lock_timeout", key, err)
			}
		}
	}
	if err := h.fn(ctx, tx, m); err != nil {
		return err
	}
	if err := tx.Commit(); err != nil {
		committed = true // (Rollback after a failed Commit does nothing)
		// Unknown outcome when the connection failed (mq.ErrUnavailable);
		// rolled back when the server refused (a deferred constraint, a
		// serialization failure).
		return dbError("commit", key, err)
	}
	committed = true
	return nil
}
