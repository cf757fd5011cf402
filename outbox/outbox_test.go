package outbox_test

import (
	"context"
	"database/sql"
	"fmt"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	_ "github.com/jackc/pgx/v5/stdlib"

	"github.com/mqkit/mq"
	"github.com/mqkit/mq/integration/testbed"
	_ "github.com/mqkit/mq/memory"
	"github.com/mqkit/mq/outbox"
	"github.com/mqkit/mq/outbox/pgxoutbox"
)

func TestMain(m *testing.M) { testbed.Main(m) }

var tableSeq atomic.Int32

// setup connects to the test binary's PostgreSQL and migrates a table of
// the test's own.
func setup(t *testing.T) (*sql.DB, outbox.Table, string) {
	t.Helper()
	db, pg := testbed.PostgresDB(t)
	table := outbox.Table(fmt.Sprintf("ob_%d_%d", time.Now().Unix()%100000, tableSeq.Add(1)))
	if err := table.Migrate(context.Background(), db); err != nil {
		t.Fatal(err)
	}
	return db, table, pg.URL
}

// recorder is a real mem:// producer that also records what it accepted.
type recorder struct {
	mq.Producer
	mu   sync.Mutex
	msgs []*mq.Message
}

func (r *recorder) Produce(ctx context.Context, topic string, msgs ...*mq.Message) error {
	if err := r.Producer.Produce(ctx, topic, msgs...); err != nil {
		return err
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, m := range msgs {
		c := m.Clone()
		c.Topic = topic
		r.msgs = append(r.msgs, c)
	}
	return nil
}

func (r *recorder) published() []*mq.Message {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]*mq.Message(nil), r.msgs...)
}

func memProducer(t *testing.T) *recorder {
	t.Helper()
	c, err := mq.Open(context.Background(), "mem://")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return &recorder{Producer: c.Producer()}
}

// runRelay runs a relay until the test ends.
func runRelay(t *testing.T, db *sql.DB, p mq.Producer, cfg outbox.Config) *outbox.Relay {
	t.Helper()
	r, err := outbox.NewRelay(db, p, cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
	return r
}

// waitFor polls cond for up to 20s.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func inTx(t *testing.T, db *sql.DB, commit bool, f func(tx *sql.Tx) error) {
	t.Helper()
	tx, err := db.Begin()
	if err != nil {
		t.Fatal(err)
	}
	if err := f(tx); err != nil {
		_ = tx.Rollback()
		t.Fatal(err)
	}
	if commit {
		err = tx.Commit()
	} else {
		err = tx.Rollback()
	}
	if err != nil {
		t.Fatal(err)
	}
}

// TestAddAndRelay: committed messages arrive exactly as added, with the
// IDs Add gave them; rolled-back ones never do; the backlog empties.
func TestAddAndRelay(t *testing.T) {
	db, table, _ := setup(t)
	ctx := context.Background()
	committed := []*mq.Message{
		{Key: "k\x00\xff", Headers: map[string]string{"a": "1", "bin\x00": "\xff\xfe"}, Body: []byte("first")},
		{Key: "k\x00\xff", Body: nil},
		{Body: []byte("no key")},
		{ID: "my-own-id", Key: "other", Body: make([]byte, 1<<20)},
	}
	inTx(t, db, true, func(tx *sql.Tx) error { return table.Add(ctx, tx, "orders", committed...) })
	rolledBack := &mq.Message{Key: "k\x00\xff", Body: []byte("never")}
	inTx(t, db, false, func(tx *sql.Tx) error { return table.Add(ctx, tx, "orders", rolledBack) })
	for _, m := range append(committed, rolledBack) {
		if m.ID == "" {
			t.Fatal("Add left a message without an ID")
		}
	}
	b, err := table.Backlog(ctx, db)
	if err != nil || b.Rows != 4 || b.Oldest.IsZero() || b.Age < 0 {
		t.Fatalf("Backlog = %+v, %v; want 4 rows", b, err)
	}
	pending, err := table.Pending(ctx, db, 10)
	if err != nil || len(pending) != 4 || pending[0].ID != committed[0].ID || pending[0].Key != "k\x00\xff" || pending[3].Bytes != 1<<20 {
		t.Fatalf("Pending = %+v, %v", pending, err)
	}

	rec := memProducer(t)
	runRelay(t, db, rec, outbox.Config{Table: table, PollInterval: 20 * time.Millisecond})
	waitFor(t, "4 published", func() bool { return len(rec.published()) >= 4 })
	time.Sleep(100 * time.Millisecond)
	got := rec.published()
	if len(got) != 4 {
		t.Fatalf("published %d messages, want 4", len(got))
	}
	for i, m := range got {
		w := committed[i]
		if m.ID != w.ID || m.Key != w.Key || string(m.Body) != string(w.Body) || len(m.Headers) != len(w.Headers) || m.Topic != "orders" {
			t.Fatalf("message %d = %v %q, want %v %q", i, m, m.Headers, w, w.Headers)
		}
		for k, v := range w.Headers {
			if m.Headers[k] != v {
				t.Fatalf("message %d header %q = %q, want %q", i, k, m.Headers[k], v)
			}
		}
	}
	waitFor(t, "an empty backlog", func() bool {
		b, err := table.Backlog(ctx, db)
		return err == nil && b.Rows == 0 && b.Age == 0
	})
}

// TestKeyOrderIsCommitOrder: a second transaction adding to a key waits
// for the first, so rows of a key are numbered in commit order; a
// transaction on another key is neither blocked nor held back by an
// uncommitted one.
func TestKeyOrderIsCommitOrder(t *testing.T) {
	db, table, _ := setup(t)
	ctx := context.Background()
	rec := memProducer(t)
	runRelay(t, db, rec, outbox.Config{Table: table, PollInterval: 10 * time.Millisecond})

	txA, err := db.Begin()
	if err != nil {
		t.Fatal(err)
	}
	if err := table.Add(ctx, txA, "t", &mq.Message{Key: "k", Body: []byte("A")}); err != nil {
		t.Fatal(err)
	}
	// B adds to the same key: it must wait until A ends.
	bAdded := make(chan error, 1)
	txB, err := db.Begin()
	if err != nil {
		t.Fatal(err)
	}
	go func() { bAdded <- table.Add(ctx, txB, "t", &mq.Message{Key: "k", Body: []byte("B")}) }()
	select {
	case err := <-bAdded:
		t.Fatalf("the second Add on key k returned (%v) while the first transaction was open", err)
	case <-time.After(300 * time.Millisecond):
	}
	// Another key commits meanwhile and is published at once, although
	// its row comes after A's uncommitted one.
	inTx(t, db, true, func(tx *sql.Tx) error { return table.Add(ctx, tx, "t", &mq.Message{Key: "other", Body: []byte("C")}) })
	waitFor(t, "C published", func() bool { return len(rec.published()) == 1 })
	if err := txA.Commit(); err != nil {
		t.Fatal(err)
	}
	if err := <-bAdded; err != nil {
		t.Fatal(err)
	}
	if err := txB.Commit(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "A and B published", func() bool { return len(rec.published()) == 3 })
	var order []string
	for _, m := range rec.published() {
		order = append(order, string(m.Body))
	}
	if strings.Join(order, "") != "CAB" {
		t.Fatalf("published %v, want C, A, B", order)
	}

	// A rolled-back first transaction lets the second one go on alone.
	txA, _ = db.Begin()
	if err := table.Add(ctx, txA, "t", &mq.Message{Key: "k", Body: []byte("rolled back")}); err != nil {
		t.Fatal(err)
	}
	txB, _ = db.Begin()
	go func() { bAdded <- table.Add(ctx, txB, "t", &mq.Message{Key: "k", Body: []byte("D")}) }()
	time.Sleep(100 * time.Millisecond)
	_ = txA.Rollback()
	if err := <-bAdded; err != nil {
		t.Fatal(err)
	}
	if err := txB.Commit(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "D published", func() bool { return len(rec.published()) == 4 })
	if got := string(rec.published()[3].Body); got != "D" {
		t.Fatalf("published %q after the rollback, want D", got)
	}
}

// TestConcurrentRelays runs three relays, two workers each, while writers
// add messages to 20 keys: no row is published twice and every key comes
// out in commit order.
func TestConcurrentRelays(t *testing.T) {
	db, table, url := setup(t)
	ctx := context.Background()
	if _, err := db.ExecContext(ctx, "CREATE TABLE "+string(table)+"_counters (k text PRIMARY KEY, n int NOT NULL)"); err != nil {
		t.Fatal(err)
	}
	rec := memProducer(t)
	for range 3 {
		l := pgxoutbox.NewListener(url, table)
		t.Cleanup(func() { _ = l.Close() })
		runRelay(t, db, rec, outbox.Config{Table: table, Notifier: l, Workers: 2, BatchSize: 50, MaxPartitions: 8})
	}
	const writers, perWriter, keys = 8, 60, 20
	var wg sync.WaitGroup
	for w := range writers {
		wg.Go(func() {
			for i := range perWriter {
				k := fmt.Sprintf("k%d", (w*perWriter+i)%keys)
				tx, err := db.BeginTx(ctx, nil)
				if err != nil {
					t.Error(err)
					return
				}
				// The test's own per-key counter: its row lock orders the
				// writers of a key, so n is the key's commit order.
				var n int
				err = tx.QueryRowContext(ctx, "INSERT INTO "+string(table)+"_counters VALUES ($1, 1) ON CONFLICT (k) DO UPDATE SET n = "+string(table)+"_counters.n + 1 RETURNING n", k).Scan(&n)
				if err == nil {
					err = table.Add(ctx, tx, "t", &mq.Message{Key: k, Body: []byte(fmt.Sprint(n))})
				}
				if err == nil {
					err = tx.Commit()
				}
				if err != nil {
					_ = tx.Rollback()
					t.Error(err)
					return
				}
			}
		})
	}
	wg.Wait()
	waitFor(t, "every message published", func() bool { return len(rec.published()) >= writers*perWriter })
	time.Sleep(200 * time.Millisecond)
	seen := map[string]bool{}
	last := map[string]int{}
	for _, m := range rec.published() {
		if seen[m.ID] {
			t.Errorf("message %s published twice", m.ID)
		}
		seen[m.ID] = true
		var n int
		fmt.Sscan(string(m.Body), &n)
		if n != last[m.Key]+1 {
			t.Errorf("key %s: message %d after %d", m.Key, n, last[m.Key])
		}
		last[m.Key] = n
	}
	if len(seen) != writers*perWriter {
		t.Fatalf("published %d distinct messages, want %d", len(seen), writers*perWriter)
	}
}

// TestNotifyWakesTheRelay: with a Listener, a committed row is published
// at once although the relay would poll only every minute.
func TestNotifyWakesTheRelay(t *testing.T) {
	db, table, url := setup(t)
	ctx := context.Background()
	rec := memProducer(t)
	l := pgxoutbox.NewListener(url, table)
	t.Cleanup(func() { _ = l.Close() })
	runRelay(t, db, rec, outbox.Config{Table: table, Notifier: l, PollInterval: time.Minute})
	time.Sleep(300 * time.Millisecond) // the relay's first look and LISTEN
	for i := range 3 {
		begin := time.Now()
		inTx(t, db, true, func(tx *sql.Tx) error { return table.Add(ctx, tx, "t", &mq.Message{Key: "k"}) })
		waitFor(t, "the row published", func() bool { return len(rec.published()) == i+1 })
		t.Logf("row %d published %v after commit", i, time.Since(begin))
		if d := time.Since(begin); d > 5*time.Second {
			t.Fatalf("published %v after commit: the notification did not wake the relay", d)
		}
	}
}

// TestRunStopsEverything: Run returns after its context is canceled and
// leaves no goroutine behind.
func TestRunStopsEverything(t *testing.T) {
	db, table, url := setup(t)
	rec := memProducer(t)
	before := runtime.NumGoroutine()
	l := pgxoutbox.NewListener(url, table)
	r, err := outbox.NewRelay(db, rec, outbox.Config{Table: table, Notifier: l, Workers: 4})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()
	time.Sleep(200 * time.Millisecond)
	if err := r.Run(ctx); err == nil {
		t.Fatal("a second Run while the first runs succeeded")
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not return after cancel")
	}
	_ = l.Close()
	waitFor(t, "goroutines to settle", func() bool { return runtime.NumGoroutine() <= before })
}

func TestTableNames(t *testing.T) {
	for _, bad := range []outbox.Table{"Orders", "a-b", "s.t", "1x", outbox.Table(strings.Repeat("x", 60))} {
		if _, err := bad.Schema(); err == nil {
			t.Errorf("Schema of %q succeeded", bad)
		}
	}
	s, err := outbox.Table("billing_outbox").Schema()
	if err != nil || strings.Contains(s, "mq_outbox") || !strings.Contains(s, "CREATE TABLE IF NOT EXISTS billing_outbox (") {
		t.Fatalf("Schema = %v", err)
	}
}
