// Outbox fault tests: writers commit (and roll back) transactions that add
// outbox rows on a real PostgreSQL, relays publish them to a real broker,
// and a consumer handles them with pgstore's transactional handler, while
// relays die, run three at once, and the broker and the database restart.
// Every count comes from the database: committed = rows of the writers'
// own table written in the same transaction as the outbox row; handled =
// rows the handler wrote in the transaction of its dedup record.
package integration_test

import (
	"context"
	"database/sql"
	"fmt"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	_ "github.com/jackc/pgx/v5/stdlib"

	"github.com/mqkit/mq"
	"github.com/mqkit/mq/idempotency/pgstore"
	"github.com/mqkit/mq/integration/testbed"
	"github.com/mqkit/mq/outbox"
	"github.com/mqkit/mq/outbox/pgxoutbox"
)

// obRun is one outbox scenario's tables, broker client and counters.
type obRun struct {
	t      *testing.T
	db     *sql.DB
	pgURL  string
	table  outbox.Table
	topic  string
	client *mq.Client

	delivered atomic.Int64 // deliveries to the consumer, duplicates included
	mu        sync.Mutex
	rolled    map[string]bool // IDs of messages whose transaction rolled back
}

var obSeq atomic.Int32

func newOBRun(t *testing.T, pgURL, brokerURL string) *obRun {
	t.Helper()
	db, err := sql.Open("pgx", pgURL)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = db.Close() })
	r := &obRun{t: t, db: db, pgURL: pgURL, client: open(t, brokerURL), rolled: map[string]bool{}}
	n := obSeq.Add(1)
	r.table = outbox.Table(fmt.Sprintf("fault_%d_%d", time.Now().Unix()%100000, n))
	r.topic = fmt.Sprintf("outbox-%d-%s", n, mq.NewID())
	ctx := context.Background()
	if err := r.table.Migrate(ctx, db); err != nil {
		t.Fatal(err)
	}
	tn := string(r.table)
	for _, q := range []string{
		"CREATE TABLE " + tn + "_sent (id text PRIMARY KEY, k text NOT NULL, n int NOT NULL)",
		"CREATE TABLE " + tn + "_counters (k text PRIMARY KEY, n int NOT NULL)",
		"CREATE TABLE " + tn + "_handled (hseq bigint GENERATED ALWAYS AS IDENTITY, id text NOT NULL, k text NOT NULL, n int NOT NULL)",
	} {
		if _, err := db.ExecContext(ctx, q); err != nil {
			r.t.Fatal(err)
		}
	}
	return r
}

// write runs n transactions on keys k0..k19 from 4 goroutines, rolling back
// every one for which rollback(i) is true. A transaction that fails (the
// database restarting) is tried again; whether it committed is the
// database's to say.
func (r *obRun) write(ctx context.Context, n int, rollback func(i int) bool) {
	var wg sync.WaitGroup
	var next atomic.Int64
	for range 4 {
		wg.Go(func() {
			for {
				i := int(next.Add(1)) - 1
				if i >= n || ctx.Err() != nil {
					return
				}
				for ctx.Err() == nil {
					if err := r.writeOne(ctx, fmt.Sprintf("k%d", i%20), rollback(i)); err == nil {
						break
					}
					time.Sleep(100 * time.Millisecond)
				}
			}
		})
	}
	wg.Wait()
}

func (r *obRun) writeOne(ctx context.Context, k string, rollback bool) error {
	t := string(r.table)
	tx, err := r.db.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	defer func() { _ = tx.Rollback() }()
	var n int
	// The per-key counter's row lock orders a key's writers: n is the
	// key's commit order, which the handler must see.
	if err := tx.QueryRowContext(ctx, "INSERT INTO "+t+"_counters VALUES ($1, 1) ON CONFLICT (k) DO UPDATE SET n = "+t+"_counters.n + 1 RETURNING n", k).Scan(&n); err != nil {
		return err
	}
	m := &mq.Message{Key: k, Body: []byte(fmt.Sprint(n))}
	if err := r.table.Add(ctx, tx, r.topic, m); err != nil {
		return err
	}
	if _, err := tx.ExecContext(ctx, "INSERT INTO "+t+"_sent VALUES ($1, $2, $3)", m.ID, k, n); err != nil {
		return err
	}
	if rollback {
		r.mu.Lock()
		r.rolled[m.ID] = true
		r.mu.Unlock()
		return tx.Rollback()
	}
	return tx.Commit()
}

// consume handles the topic with pgstore's transactional handler until
// the test ends.
func (r *obRun) consume() {
	store, err := pgstore.New(r.db, pgstore.Config{Table: string(r.table) + "_idem"})
	if err != nil {
		r.t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	if err := store.Migrate(ctx); err != nil {
		r.t.Fatal(err)
	}
	t := string(r.table)
	h, err := store.Handler(pgstore.TxConfig{Namespace: "g"}, func(ctx context.Context, tx *sql.Tx, m *mq.Message) error {
		_, err := tx.ExecContext(ctx, "INSERT INTO "+t+"_handled (id, k, n) VALUES ($1, $2, $3::int)", m.ID, m.Key, string(m.Body))
		return err
	})
	if err != nil {
		r.t.Fatal(err)
	}
	cons, err := r.client.Consumer(ctx, r.topic, mq.WithGroup("g"), mq.WithConcurrency(8))
	if err != nil {
		r.t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() {
		done <- cons.Consume(ctx, mq.HandlerFunc(func(ctx context.Context, m *mq.Message) error {
			r.delivered.Add(1)
			return h.Handle(ctx, m)
		}))
	}()
	r.t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			r.t.Errorf("Consume: %v", err)
		}
		_ = cons.Close()
	})
}

// relay runs an in-process relay until stop is called.
func (r *obRun) relay(cfg outbox.Config) (stop func()) {
	cfg.Table = r.table
	l := pgxoutbox.NewListener(r.pgURL, r.table)
	cfg.Notifier = l
	rl, err := outbox.NewRelay(r.db, r.client.Producer(), cfg)
	if err != nil {
		r.t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- rl.Run(ctx) }()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cancel()
			if err := <-done; err != nil {
				r.t.Errorf("relay: %v", err)
			}
			_ = l.Close()
		})
	}
	r.t.Cleanup(stop)
	return stop
}

// obCounts are a scenario's numbers.
type obCounts struct {
	committed, handled, distinct, lost, twice, disorder, rolledHandled int
	delivered                                                          int64
}

func (c obCounts) String() string {
	return fmt.Sprintf("committed %d, delivered %d, handled %d (distinct %d), lost %d, handled twice %d, order violations %d, rolled back but handled %d",
		c.committed, c.delivered, c.handled, c.distinct, c.lost, c.twice, c.disorder, c.rolledHandled)
}

func (r *obRun) counts(ctx context.Context) obCounts {
	t := string(r.table)
	var c obCounts
	q := `SELECT
 (SELECT count(*) FROM ` + t + `_sent),
 (SELECT count(*) FROM ` + t + `_handled),
 (SELECT count(DISTINCT id) FROM ` + t + `_handled),
 (SELECT count(*) FROM ` + t + `_sent s WHERE NOT EXISTS (SELECT 1 FROM ` + t + `_handled h WHERE h.id = s.id)),
 (SELECT count(*) FROM (SELECT n, lag(n) OVER (PARTITION BY k ORDER BY hseq) AS prev FROM ` + t + `_handled) x WHERE prev IS NOT NULL AND n <> prev + 1)`
	if err := r.db.QueryRowContext(ctx, q).Scan(&c.committed, &c.handled, &c.distinct, &c.lost, &c.disorder); err != nil {
		r.t.Fatal(err)
	}
	c.twice = c.handled - c.distinct
	c.delivered = r.delivered.Load()
	r.mu.Lock()
	ids := make([]string, 0, len(r.rolled))
	for id := range r.rolled {
		ids = append(ids, "'"+id+"'")
	}
	r.mu.Unlock()
	if len(ids) > 0 {
		if err := r.db.QueryRowContext(ctx, "SELECT count(*) FROM "+t+"_handled WHERE id IN ("+strings.Join(ids, ",")+")").Scan(&c.rolledHandled); err != nil {
			r.t.Fatal(err)
		}
	}
	return c
}

// settle waits until nothing is lost (or the timeout), then checks the
// invariants and returns the counts.
func (r *obRun) settle(ctx context.Context, timeout time.Duration) obCounts {
	r.t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		c := r.counts(ctx)
		if c.lost == 0 || time.Now().After(deadline) {
			time.Sleep(300 * time.Millisecond) // late duplicates, if any
			c = r.counts(ctx)
			r.t.Log(c)
			if c.lost != 0 || c.twice != 0 || c.disorder != 0 || c.rolledHandled != 0 {
				r.t.Errorf("outbox invariants broken: %v", c)
			}
			return c
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// TestOutboxFaults runs, on every broker: three relays at once while half
// the transactions roll back; then a relay process killed between the
// broker's acknowledgement and the delete, whose rows the next relay
// publishes again.
func TestOutboxFaults(t *testing.T) {
	if testing.Short() {
		t.Skip("long: real PostgreSQL and brokers, kills a relay process")
	}
	for _, tg := range targets {
		t.Run(tg.name, func(t *testing.T) {
			pg := testbed.SharedPostgres(t)
			b := tg.shared(t)
			ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
			defer cancel()
			r := newOBRun(t, pg.URL, withParams(t, b.URL, tg.params))
			r.consume()

			// Three relays, two workers each, sharing 64 partitions.
			var stops []func()
			for range 3 {
				stops = append(stops, r.relay(outbox.Config{Workers: 2, BatchSize: 50, MaxPartitions: 8}))
			}
			r.write(ctx, 400, func(i int) bool { return i%2 == 1 })
			c := r.settle(ctx, time.Minute)
			if c.committed != 200 {
				t.Errorf("committed %d of 400 transactions, half rolled back: want 200", c.committed)
			}
			if c.delivered != int64(c.committed) {
				t.Errorf("three relays delivered %d messages for %d rows: a row was published twice without a fault", c.delivered, c.committed)
			}
			for _, stop := range stops {
				stop()
			}

			// A relay process killed after the broker accepted its first
			// batch and before it deleted the rows.
			r.write(ctx, 300, func(int) bool { return false })
			line := killAfter(ctx, t, "TestOutboxRelayChild", []string{"MQ_OUTBOX_CHILD_PG=" + pg.URL,
				"MQ_OUTBOX_CHILD_BROKER=" + withParams(t, b.URL, tg.params), "MQ_OUTBOX_CHILD_TABLE=" + string(r.table)}, "PUBLISHED ", time.Minute)
			t.Logf("child relay: %s; killed it", line)
			r.relay(outbox.Config{})
			c = r.settle(ctx, time.Minute)
			if c.committed != 500 {
				t.Errorf("committed %d, want 500", c.committed)
			}
			if c.delivered <= int64(c.committed) {
				t.Logf("note: no duplicate delivery seen after the kill (delivered %d)", c.delivered)
			}
		})
	}
}

// TestOutboxRelayChild is the relay process TestOutboxFaults kills. It
// does nothing unless started by that test.
func TestOutboxRelayChild(t *testing.T) {
	pgURL := os.Getenv("MQ_OUTBOX_CHILD_PG")
	if pgURL == "" {
		return // not a test of its own
	}
	db, err := sql.Open("pgx", pgURL)
	if err != nil {
		t.Fatal(err)
	}
	c, err := mq.Open(context.Background(), os.Getenv("MQ_OUTBOX_CHILD_BROKER"))
	if err != nil {
		t.Fatal(err)
	}
	rl, err := outbox.NewRelay(db, &stallAfterProduce{Producer: c.Producer()}, outbox.Config{Table: outbox.Table(os.Getenv("MQ_OUTBOX_CHILD_TABLE")), BatchSize: 100})
	if err != nil {
		t.Fatal(err)
	}
	_ = rl.Run(context.Background())
}

// stallAfterProduce produces for real, then announces it and never
// returns: the relay holds published rows it has not deleted when the
// parent kills the process.
type stallAfterProduce struct{ mq.Producer }

func (p *stallAfterProduce) Produce(ctx context.Context, topic string, msgs ...*mq.Message) error {
	if err := p.Producer.Produce(ctx, topic, msgs...); err != nil {
		return err
	}
	fmt.Printf("PUBLISHED %d messages, not deleted (pid %d)\n", len(msgs), os.Getpid())
	select {}
}

// TestOutboxRestarts restarts the broker and then PostgreSQL while
// writers, a relay and the consumer run (Redis and RabbitMQ: a Kafka
// restart alone takes longer than this whole test).
func TestOutboxRestarts(t *testing.T) {
	if testing.Short() {
		t.Skip("long: restarts PostgreSQL and brokers")
	}
	for _, tg := range targets {
		if tg.name == "kafka" {
			continue
		}
		t.Run(tg.name, func(t *testing.T) {
			pg := testbed.Postgres(t)
			b := tg.start(t)
			ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
			defer cancel()
			r := newOBRun(t, pg.URL, withParams(t, b.URL, tg.params))
			r.consume()
			r.relay(outbox.Config{BatchSize: 50})
			wctx, stopWriting := context.WithCancel(ctx)
			written := make(chan struct{})
			go func() { defer close(written); r.write(wctx, 1<<30, func(i int) bool { return i%4 == 3 }) }()
			for _, step := range []struct {
				name string
				f    func(context.Context) error
			}{{tg.name + " restart", b.Restart}, {"postgres restart", pg.Restart}} {
				time.Sleep(2 * time.Second)
				begin := time.Now()
				if err := step.f(ctx); err != nil {
					t.Fatalf("%s: %v", step.name, err)
				}
				t.Logf("%s done in %.1fs", step.name, time.Since(begin).Seconds())
			}
			time.Sleep(2 * time.Second)
			stopWriting()
			<-written
			c := r.settle(ctx, 2*time.Minute)
			if c.committed == 0 {
				t.Fatal("nothing committed")
			}
		})
	}
}
