package pgstore_test

import (
	"context"
	"database/sql"

	"github.com/mqkit/mq"
	"github.com/mqkit/mq/idempotency/pgstore"
	"github.com/mqkit/mq/middleware"
	"github.com/mqkit/mq/outbox"
)

// A payment handler whose charge record, follow-up message (through the
// outbox) and dedup record commit together: a redelivered payment finds
// the record and is acknowledged without charging again.
func ExampleStore_Handler() {
	var (
		db       *sql.DB     // sql.Open("pgx", os.Getenv("DATABASE_URL"))
		consumer mq.Consumer // client.Consumer(ctx, "payments", mq.WithGroup("billing"))
	)
	ctx := context.Background()
	store, err := pgstore.New(db, pgstore.Config{})
	if err != nil {
		panic(err)
	}
	if err := store.Migrate(ctx); err != nil {
		panic(err)
	}
	charge, err := store.Handler(pgstore.TxConfig{Namespace: "billing"}, func(ctx context.Context, tx *sql.Tx, m *mq.Message) error {
		if _, err := tx.ExecContext(ctx, "INSERT INTO charges (payment_id, body) VALUES ($1, $2)", m.ID, m.Body); err != nil {
			return err
		}
		return outbox.Add(ctx, tx, "receipts", &mq.Message{Key: m.Key, Body: m.Body})
	})
	if err != nil {
		panic(err)
	}
	// The transactional handler is the innermost layer; Dedup stays nil.
	h := mq.Chain(charge, middleware.Stack(middleware.StackConfig{}))
	_ = consumer.Consume(ctx, h)
}
