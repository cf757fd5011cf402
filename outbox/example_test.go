package outbox_test

import (
	"context"
	"database/sql"
	"fmt"
	"strings"

	"github.com/mqkit/mq"
	"github.com/mqkit/mq/outbox"
	"github.com/mqkit/mq/outbox/pgxoutbox"
)

// The SQL a DBA reviews (or runs) before the service migrates.
func ExampleTable_Schema() {
	schema, err := outbox.Table("billing_outbox").Schema()
	if err != nil {
		panic(err)
	}
	for line := range strings.Lines(schema) {
		if strings.HasPrefix(line, "CREATE") {
			fmt.Print(line)
		}
	}
	// Output:
	// CREATE TABLE IF NOT EXISTS billing_outbox (
	// CREATE INDEX IF NOT EXISTS billing_outbox_part_seq ON billing_outbox (part, seq);
	// CREATE OR REPLACE FUNCTION billing_outbox_notify() RETURNS trigger
	// CREATE OR REPLACE TRIGGER billing_outbox_notify
}

// A service writes its order and the message announcing it in one
// transaction: the message is published if, and only if, the order
// committed.
func ExampleAdd() {
	var db *sql.DB // sql.Open("pgx", os.Getenv("DATABASE_URL"))
	ctx := context.Background()
	place := func() error {
		tx, err := db.BeginTx(ctx, nil)
		if err != nil {
			return err
		}
		defer func() { _ = tx.Rollback() }()
		if _, err := tx.ExecContext(ctx, "INSERT INTO orders (id, customer) VALUES ($1, $2)", 7, "customer-42"); err != nil {
			return err
		}
		m := &mq.Message{Key: "customer-42", Body: []byte(`{"order":7}`)}
		if err := outbox.Add(ctx, tx, "orders", m); err != nil {
			return err
		}
		fmt.Println("message", m.ID, "will be published after commit")
		return tx.Commit()
	}
	_ = place
}

// Every instance of the service runs a relay; LISTEN/NOTIFY wakes it as
// soon as a transaction with messages commits.
func ExampleRelay() {
	var (
		db         *sql.DB // the service's database
		client     *mq.Client
		connString = "postgres://app@db/app"
	)
	ctx := context.Background()
	if err := outbox.Migrate(ctx, db); err != nil {
		panic(err)
	}
	listener := pgxoutbox.NewListener(connString, outbox.DefaultTable)
	defer listener.Close()
	relay, err := outbox.NewRelay(db, client.Producer(), outbox.Config{Notifier: listener})
	if err != nil {
		panic(err)
	}
	_ = relay.Run(ctx) // until ctx is canceled
}
