// Package outbox is a transactional outbox on PostgreSQL: a service adds
// messages inside its own database transaction, and a relay publishes
// them to any broker once, and only if, that transaction committed.
//
//	tx, err := db.BeginTx(ctx, nil)
//	// ... the service's own writes ...
//	err = outbox.Add(ctx, tx, "orders", &mq.Message{Key: "customer-42", Body: body})
//	err = tx.Commit() // the message exists exactly when the writes do
//
//	relay, err := outbox.NewRelay(db, client.Producer(), outbox.Config{Notifier: listener})
//	go relay.Run(ctx) // in every instance of the service
//
// Add works on a database/sql transaction; package
// github.com/mqkit/mq/outbox/pgxoutbox adds to a pgx.Tx and provides the
// LISTEN connection that wakes relays. This package links no PostgreSQL
// driver: use any (pgx's stdlib, lib/pq).
//
// # Table
//
// The table (default mq_outbox) and its index and trigger are created by
// [Table.Migrate], which runs the SQL of [Table.Schema], the file
// schema.sql in this package, readable and runnable by a DBA as is.
//
// # Guarantees
//
//   - A message is published only if the transaction that added it
//     committed; a rolled-back transaction publishes nothing.
//   - Every committed message is published at least once. A relay deletes
//     rows only after Produce returned nil for them, in the same
//     transaction that holds their partition. A relay that dies between
//     the broker's acknowledgement and that commit leaves the rows, and
//     the next relay publishes them again with the same IDs: consumers
//     that deduplicate by ID (package idempotency, or pgstore's
//     transactional handler) skip the copies.
//   - Per key, in commit order. Add takes a transaction-scoped advisory
//     lock on each (topic, key) it inserts, held until commit or rollback,
//     so of two transactions adding messages with one key the second
//     waits for the first: rows of a key are numbered (seq) in commit
//     order, and a row is never visible before an earlier row of its key.
//     Relays publish each partition in seq order. Messages with an empty
//     key carry no order (they take no lock).
//   - Any number of relays may run (one in every instance). Each row
//     belongs to one of 64 partitions by key, and a relay publishes a
//     partition's rows only inside a transaction holding that partition's
//     advisory lock, taken before it reads and released when its deletes
//     commit: two relays never publish one partition at once, so in the
//     normal path (no crash) no row is published twice and no key is
//     reordered. Copies published after a crash come in the original
//     order, so a deduplicating consumer sees every key's first copies in
//     order.
//
// The price of per-key order is that transactions adding to the same key
// run their Add-to-commit part one at a time: keep them short. Two
// transactions that add to two keys in opposite orders, in separate Add
// calls, can deadlock; PostgreSQL then aborts one (SQLSTATE 40P01) and it
// can be retried. One Add call takes its keys' locks in a fixed order.
//
// A partition whose first row the broker refuses for good (a message too
// large for it, say) stops there and its backlog grows: watch
// [Table.Backlog] (or `mq outbox`).
package outbox

import (
	"context"
	"database/sql"
	_ "embed"
	"fmt"
	"strings"
	"time"

	"github.com/mqkit/mq"
	"github.com/mqkit/mq/outbox/internal/wire"
)

//go:embed schema.sql
var schemaSQL string

// Table names an outbox table: a lower-case SQL identifier, without a
// schema (choose the schema with search_path). Its zero value is
// DefaultTable.
type Table string

// DefaultTable is the table the package-level functions use.
const DefaultTable Table = "mq_outbox"

// Partitions is how many partitions rows are spread over by key, and so
// the most relay workers that publish at the same time.
const Partitions = wire.Partitions

// name returns the table's name, DefaultTable's for the zero value.
func (t Table) name() (string, error) {
	if t == "" {
		t = DefaultTable
	}
	if err := wire.ValidTable(string(t)); err != nil {
		return "", err
	}
	return string(t), nil
}

// Schema returns the SQL that creates the table, its index, and the
// trigger that notifies relays: schema.sql with mq_outbox replaced by the
// table's name. The notification channel is the table's name.
func (t Table) Schema() (string, error) {
	name, err := t.name()
	if err != nil {
		return "", err
	}
	return strings.ReplaceAll(schemaSQL, "mq_outbox", name), nil
}

// Migrate creates the table, its index and its trigger if they do not
// exist, in one transaction. Instances starting at once may all call it:
// it serializes them on an advisory lock.
func (t Table) Migrate(ctx context.Context, db *sql.DB) error {
	name, err := t.name()
	if err != nil {
		return err
	}
	schema, _ := t.Schema()
	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("outbox: migrate %s: %w", name, err)
	}
	defer func() { _ = tx.Rollback() }()
	if _, err := tx.ExecContext(ctx, "SELECT pg_advisory_xact_lock($1)", wire.KeyHash(name, "\x00migrate", "")); err != nil {
		return fmt.Errorf("outbox: migrate %s: %w", name, err)
	}
	if _, err := tx.ExecContext(ctx, schema); err != nil {
		return fmt.Errorf("outbox: migrate %s: %w", name, err)
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("outbox: migrate %s: %w", name, err)
	}
	return nil
}

// Add adds msgs for topic to the table inside tx. Messages without an ID
// get one now (a UUIDv7), set in place: the ID the consumer will see.
// They are published after tx commits, and never if it rolls back.
//
// Add takes a transaction-scoped advisory lock on every non-empty key
// among msgs (see the package documentation): another transaction adding
// to one of those keys waits until tx ends. Keys and headers may hold any
// bytes; IDs must not hold NUL bytes. A canceled ctx makes database/sql
// roll tx back.
func (t Table) Add(ctx context.Context, tx *sql.Tx, topic string, msgs ...*mq.Message) error {
	name, err := t.name()
	if err != nil {
		return err
	}
	stmts, err := wire.Build(name, topic, msgs)
	if err != nil {
		return err
	}
	for _, s := range stmts {
		if _, err := tx.ExecContext(ctx, s.SQL, s.Args...); err != nil {
			return fmt.Errorf("outbox: add to %s: %w", name, err)
		}
	}
	return nil
}

// Migrate is DefaultTable.Migrate.
func Migrate(ctx context.Context, db *sql.DB) error { return DefaultTable.Migrate(ctx, db) }

// Add is DefaultTable.Add.
func Add(ctx context.Context, tx *sql.Tx, topic string, msgs ...*mq.Message) error {
	return DefaultTable.Add(ctx, tx, topic, msgs...)
}

// Backlog is what an outbox table holds: committed messages no relay has
// published yet.
type Backlog struct {
	// Rows is the number of messages waiting.
	Rows int64
	// Oldest is when the oldest waiting message was added (zero when none
	// waits).
	Oldest time.Time
	// Age is how long the oldest one has waited, by the database's clock
	// (0 when none waits).
	Age time.Duration
}

// BacklogFunc returns Backlog of db as a function of the shape metrics
// gauges poll, such as mqotel.Instrumentation.ObserveOutbox:
//
//	stop := inst.ObserveOutbox(string(outbox.DefaultTable), outbox.DefaultTable.BacklogFunc(db))
func (t Table) BacklogFunc(db *sql.DB) func(ctx context.Context) (rows int64, oldest time.Duration, err error) {
	return func(ctx context.Context) (int64, time.Duration, error) {
		b, err := t.Backlog(ctx, db)
		return b.Rows, b.Age, err
	}
}

// Backlog reports the table's backlog. It counts the rows, so it reads
// the whole table: cheap while relays keep up.
func (t Table) Backlog(ctx context.Context, db *sql.DB) (Backlog, error) {
	name, err := t.name()
	if err != nil {
		return Backlog{}, err
	}
	var b Backlog
	var oldest sql.NullTime
	var age sql.NullFloat64
	err = db.QueryRowContext(ctx, `SELECT (SELECT count(*) FROM `+name+`), o.created_at, extract(epoch FROM now() - o.created_at)::float8
FROM (SELECT 1) AS one LEFT JOIN (SELECT created_at FROM `+name+` ORDER BY seq LIMIT 1) AS o ON true`).Scan(&b.Rows, &oldest, &age)
	if err != nil {
		return Backlog{}, fmt.Errorf("outbox: backlog of %s: %w", name, err)
	}
	if oldest.Valid {
		b.Oldest = oldest.Time
		b.Age = max(0, time.Duration(age.Float64*float64(time.Second)))
	}
	return b, nil
}

// Row is a message waiting in an outbox table, as Pending lists it.
type Row struct {
	Seq       int64
	ID        string
	Topic     string
	Key       string
	Partition int
	// Bytes is the size of the body.
	Bytes int
	// Created is when the row was added; Age how long ago, by the
	// database's clock.
	Created time.Time
	Age     time.Duration
}

// Pending returns up to limit of the oldest waiting rows, oldest first
// (limit <= 0: 100), without their bodies.
func (t Table) Pending(ctx context.Context, db *sql.DB, limit int) ([]Row, error) {
	name, err := t.name()
	if err != nil {
		return nil, err
	}
	if limit <= 0 {
		limit = 100
	}
	rows, err := db.QueryContext(ctx, `SELECT seq, id, topic, key, part, octet_length(body), created_at, extract(epoch FROM now() - created_at)::float8
FROM `+name+` ORDER BY seq LIMIT $1`, limit)
	if err != nil {
		return nil, fmt.Errorf("outbox: pending rows of %s: %w", name, err)
	}
	defer func() { _ = rows.Close() }()
	var out []Row
	for rows.Next() {
		var r Row
		var key []byte
		var age float64
		if err := rows.Scan(&r.Seq, &r.ID, &r.Topic, &key, &r.Partition, &r.Bytes, &r.Created, &age); err != nil {
			return nil, fmt.Errorf("outbox: pending rows of %s: %w", name, err)
		}
		r.Key = string(key)
		r.Age = max(0, time.Duration(age*float64(time.Second)))
		out = append(out, r)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("outbox: pending rows of %s: %w", name, err)
	}
	return out, nil
}
