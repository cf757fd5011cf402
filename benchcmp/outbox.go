package main

import (
	"context"
	stdsql "database/sql"
	"errors"
	"flag"
	"fmt"
	"io"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	wredis "github.com/ThreeDotsLabs/watermill-redisstream/pkg/redisstream"
	wsql "github.com/ThreeDotsLabs/watermill-sql/v4/pkg/sql"
	"github.com/ThreeDotsLabs/watermill/components/forwarder"
	"github.com/ThreeDotsLabs/watermill/message"
	_ "github.com/jackc/pgx/v5/stdlib"
	"github.com/redis/go-redis/v9"

	"github.com/mqkit/mq"
	"github.com/mqkit/mq/integration/testbed"
	"github.com/mqkit/mq/outbox"
	"github.com/mqkit/mq/outbox/pgxoutbox"
	_ "github.com/mqkit/mq/redisstream"
)

// runOutbox compares package outbox's relay with Watermill's Forwarder
// (watermill-sql's PostgreSQL publisher and subscriber, publishing to
// Redis Streams with watermill-redisstream) on one PostgreSQL and one
// Redis:
//
//   - drain: n rows committed while no relay runs, then the relay starts:
//     rows per second until the broker holds all n (XLEN of the stream);
//   - latency: writers commit one message per transaction at about -rate
//     per second while the relay and a consumer run: commit→handler
//     latency percentiles.
//
// Per-key order is checked in both phases: each transaction takes the
// next number of its key from a counter row it locks, so the numbers of a
// key are its commit order, and the handler must see them in order.
func runOutbox(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("benchcmp outbox", flag.ContinueOnError)
	fs.SetOutput(stderr)
	n := fs.Int("n", 10000, "rows in the drain phase")
	lat := fs.Int("latency-n", 2000, "messages in the latency phase")
	rate := fs.Int("rate", 400, "transactions per second in the latency phase")
	keys := fs.Int("keys", 50, "distinct keys")
	if err := fs.Parse(args); err != nil {
		return err
	}
	fmt.Fprintf(stderr, "starting postgres and redis...\n")
	pg, err := testbed.Start(ctx, testbed.KindPostgres)
	if err != nil {
		return err
	}
	defer func() { _ = pg.Terminate(context.WithoutCancel(ctx)) }()
	rd, err := testbed.Start(ctx, testbed.KindRedis)
	if err != nil {
		return err
	}
	defer func() { _ = rd.Terminate(context.WithoutCancel(ctx)) }()
	db, err := stdsql.Open("pgx", pg.URL)
	if err != nil {
		return err
	}
	defer func() { _ = db.Close() }()
	db.SetMaxOpenConns(32)
	ropts, err := redis.ParseURL(rd.URL)
	if err != nil {
		return err
	}
	rc := redis.NewClient(ropts)
	defer func() { _ = rc.Close() }()

	fmt.Fprintf(stdout, "# benchcmp outbox %s: PostgreSQL %s, Redis %s; drain %d rows, latency %d messages at %d tx/s, %d keys\n\n",
		time.Now().UTC().Format(time.RFC3339), pg.Image, rd.Image, *n, *lat, *rate, *keys)
	fmt.Fprintf(stdout, "| system | drain rows/s | p50 commit→handler | p99 | max | order violations | duplicates |\n|---|---|---|---|---|---|---|\n")
	for _, sys := range []obSystem{&mqkitOutbox{db: db, pgURL: pg.URL, redisURL: rd.URL}, &watermillForwarder{db: db, rc: rc}} {
		res, err := runOutboxSystem(ctx, db, rc, sys, *n, *lat, *rate, *keys, stderr)
		if err != nil {
			return fmt.Errorf("%s: %w", sys.name(), err)
		}
		fmt.Fprintf(stdout, "| %s | %.0f | %v | %v | %v | %d | %d |\n", sys.name(), res.drainRate,
			res.p50.Round(100*time.Microsecond), res.p99.Round(100*time.Microsecond), res.max.Round(100*time.Microsecond), res.disorder, res.dups)
	}
	return nil
}

// obSystem is an outbox implementation under test.
type obSystem interface {
	name() string
	// setup prepares topic (tables, consumer group).
	setup(ctx context.Context, topic string) error
	// add adds one message in tx.
	add(ctx context.Context, tx *stdsql.Tx, topic, id, key string, body []byte) error
	// relay runs the relay until ctx is done.
	relay(ctx context.Context, topic string) error
	// consume calls h for each message until ctx is done.
	consume(ctx context.Context, topic string, h func(id, key string, body []byte)) error
}

type obResult struct {
	drainRate     float64
	p50, p99, max time.Duration
	disorder      int
	dups          int
}

func runOutboxSystem(ctx context.Context, db *stdsql.DB, rc *redis.Client, sys obSystem, n, latN, rate, keys int, stderr io.Writer) (obResult, error) {
	var res obResult
	topic := "ob-" + sys.name() + "-" + strconv.FormatInt(time.Now().UnixNano(), 36)
	counters := "ctr_" + strconv.FormatInt(time.Now().UnixNano(), 36)
	if _, err := db.ExecContext(ctx, "CREATE TABLE "+counters+" (k text PRIMARY KEY, n int NOT NULL)"); err != nil {
		return res, err
	}
	if err := sys.setup(ctx, topic); err != nil {
		return res, err
	}
	var seq atomic.Int64
	write := func(ctx context.Context, commits *sync.Map) error {
		i := seq.Add(1)
		k := fmt.Sprintf("k%d", i%int64(keys))
		tx, err := db.BeginTx(ctx, nil)
		if err != nil {
			return err
		}
		defer func() { _ = tx.Rollback() }()
		var c int
		if err := tx.QueryRowContext(ctx, "INSERT INTO "+counters+" VALUES ($1, 1) ON CONFLICT (k) DO UPDATE SET n = "+counters+".n + 1 RETURNING n", k).Scan(&c); err != nil {
			return err
		}
		id := mq.NewID()
		if err := sys.add(ctx, tx, topic, id, k, []byte(strconv.Itoa(c))); err != nil {
			return err
		}
		if err := tx.Commit(); err != nil {
			return err
		}
		if commits != nil {
			commits.Store(id, time.Now())
		}
		return nil
	}
	// Drain: commit n rows first.
	fmt.Fprintf(stderr, "%s: writing %d rows\n", sys.name(), n)
	if err := parallel(ctx, 16, n, func(ctx context.Context) error { return write(ctx, nil) }); err != nil {
		return res, err
	}
	var mu sync.Mutex
	last := map[string]int{}
	seen := map[string]bool{}
	var lats []time.Duration
	var commits sync.Map
	handled := atomic.Int64{}
	h := func(id, key string, body []byte) {
		c, _ := strconv.Atoi(string(body))
		mu.Lock()
		defer mu.Unlock()
		if seen[id] {
			res.dups++
			return
		}
		seen[id] = true
		if c != last[key]+1 {
			res.disorder++
		}
		last[key] = c
		if t, ok := commits.Load(id); ok {
			lats = append(lats, time.Since(t.(time.Time)))
		}
		handled.Add(1)
	}
	rctx, stop := context.WithCancel(ctx)
	defer stop()
	var wg sync.WaitGroup
	errs := make(chan error, 2)
	begin := time.Now()
	wg.Go(func() { errs <- sys.relay(rctx, topic) })
	for {
		l, err := rc.XLen(ctx, topic).Result()
		if err != nil && !errors.Is(err, redis.Nil) {
			return res, err
		}
		if l >= int64(n) {
			break
		}
		if time.Since(begin) > 5*time.Minute {
			return res, fmt.Errorf("drain: %d of %d on the broker after 5 minutes", l, n)
		}
		time.Sleep(2 * time.Millisecond)
	}
	res.drainRate = float64(n) / time.Since(begin).Seconds()
	fmt.Fprintf(stderr, "%s: drained %d rows at %.0f/s; consuming them\n", sys.name(), n, res.drainRate)
	wg.Go(func() { errs <- sys.consume(rctx, topic, h) })
	for handled.Load() < int64(n) {
		time.Sleep(5 * time.Millisecond)
	}
	// Latency: paced writers while the relay and the consumer run.
	fmt.Fprintf(stderr, "%s: latency phase\n", sys.name())
	tick := time.NewTicker(time.Second / time.Duration(rate))
	var wwg sync.WaitGroup
	for range latN {
		<-tick.C
		wwg.Go(func() {
			if err := write(ctx, &commits); err != nil {
				fmt.Fprintf(stderr, "write: %v\n", err)
			}
		})
	}
	tick.Stop()
	wwg.Wait()
	deadline := time.Now().Add(time.Minute)
	for handled.Load() < int64(n+latN) && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	time.Sleep(500 * time.Millisecond)
	stop()
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil && !errors.Is(err, context.Canceled) {
			return res, err
		}
	}
	mu.Lock()
	defer mu.Unlock()
	if got := handled.Load(); got < int64(n+latN) {
		return res, fmt.Errorf("handled %d of %d", got, n+latN)
	}
	slices.Sort(lats)
	if len(lats) > 0 {
		res.p50, res.p99, res.max = lats[len(lats)/2], lats[len(lats)*99/100], lats[len(lats)-1]
	}
	return res, nil
}

// parallel runs f total times from conc goroutines.
func parallel(ctx context.Context, conc, total int, f func(context.Context) error) error {
	var next atomic.Int64
	var wg sync.WaitGroup
	var first atomic.Value
	for range conc {
		wg.Go(func() {
			for next.Add(1) <= int64(total) {
				if err := f(ctx); err != nil {
					first.CompareAndSwap(nil, err)
					return
				}
			}
		})
	}
	wg.Wait()
	if err, ok := first.Load().(error); ok {
		return err
	}
	return nil
}

// mqkitOutbox is package outbox: Add, a Relay woken by LISTEN/NOTIFY, the
// mq consumer.
type mqkitOutbox struct {
	db              *stdsql.DB
	pgURL, redisURL string
	table           outbox.Table
	client          *mq.Client
}

func (*mqkitOutbox) name() string { return "mqkit outbox" }

func (s *mqkitOutbox) setup(ctx context.Context, topic string) error {
	s.table = outbox.Table("bench_outbox")
	if err := s.table.Migrate(ctx, s.db); err != nil {
		return err
	}
	c, err := mq.Open(ctx, s.redisURL)
	if err != nil {
		return err
	}
	s.client = c
	cons, err := c.Consumer(ctx, topic, mq.WithGroup("g")) // the group exists before the relay runs
	if err != nil {
		return err
	}
	return cons.Close()
}

func (s *mqkitOutbox) add(ctx context.Context, tx *stdsql.Tx, topic, id, key string, body []byte) error {
	return s.table.Add(ctx, tx, topic, &mq.Message{ID: id, Key: key, Body: body})
}

func (s *mqkitOutbox) relay(ctx context.Context, topic string) error {
	l := pgxoutbox.NewListener(s.pgURL, s.table)
	defer func() { _ = l.Close() }()
	r, err := outbox.NewRelay(s.db, s.client.Producer(), outbox.Config{Table: s.table, Notifier: l, Workers: 4, MaxPartitions: 16})
	if err != nil {
		return err
	}
	return r.Run(ctx)
}

func (s *mqkitOutbox) consume(ctx context.Context, topic string, h func(id, key string, body []byte)) error {
	cons, err := s.client.Consumer(ctx, topic, mq.WithGroup("g"), mq.WithConcurrency(8))
	if err != nil {
		return err
	}
	defer func() { _ = cons.Close() }()
	return cons.Consume(ctx, mq.HandlerFunc(func(_ context.Context, m *mq.Message) error {
		h(m.ID, m.Key, m.Body)
		return nil
	}))
}

// watermillForwarder is watermill-sql's publisher inside the transaction,
// wrapped by the Forwarder's envelope publisher, and the Forwarder that
// subscribes to the SQL topic and publishes to Redis Streams, as
// Watermill's outbox documentation shows; a redisstream subscriber
// consumes.
type watermillForwarder struct {
	db *stdsql.DB
	rc *redis.Client
}

const wmForwarderTopic = "forwarder_topic"

func (*watermillForwarder) name() string { return "watermill forwarder" }

func (w *watermillForwarder) schema() wsql.SchemaAdapter {
	return wsql.DefaultPostgreSQLSchema{GeneratePayloadType: func(string) string { return "BYTEA" }}
}

func (w *watermillForwarder) setup(ctx context.Context, topic string) error {
	if err := w.rc.XGroupCreateMkStream(ctx, topic, "g", "0").Err(); err != nil {
		return err
	}
	// The subscriber creates the topic's table and offsets on start; make
	// them now so that add (in a transaction) need not.
	sub, err := w.subscriber()
	if err != nil {
		return err
	}
	defer func() { _ = sub.Close() }()
	return sub.SubscribeInitialize(wmForwarderTopic)
}

func (w *watermillForwarder) subscriber() (*wsql.Subscriber, error) {
	return wsql.NewSubscriber(wsql.BeginnerFromStdSQL(w.db), wsql.SubscriberConfig{
		SchemaAdapter:  w.schema(),
		OffsetsAdapter: wsql.DefaultPostgreSQLOffsetsAdapter{},
		ConsumerGroup:  "forwarder",
	}, watermill.NopLogger{})
}

func (w *watermillForwarder) add(ctx context.Context, tx *stdsql.Tx, topic, id, key string, body []byte) error {
	pub, err := wsql.NewPublisher(wsql.TxFromStdSQL(tx), wsql.PublisherConfig{SchemaAdapter: w.schema()}, watermill.NopLogger{})
	if err != nil {
		return err
	}
	fp := forwarder.NewPublisher(pub, forwarder.PublisherConfig{ForwarderTopic: wmForwarderTopic})
	msg := message.NewMessage(id, body)
	msg.Metadata.Set("key", key)
	return fp.Publish(topic, msg)
}

func (w *watermillForwarder) relay(ctx context.Context, topic string) error {
	sub, err := w.subscriber()
	if err != nil {
		return err
	}
	pub, err := wredis.NewPublisher(wredis.PublisherConfig{Client: w.rc}, watermill.NopLogger{})
	if err != nil {
		return err
	}
	f, err := forwarder.NewForwarder(sub, pub, watermill.NopLogger{}, forwarder.Config{ForwarderTopic: wmForwarderTopic})
	if err != nil {
		return err
	}
	go func() { <-ctx.Done(); _ = f.Close() }()
	return f.Run(ctx)
}

func (w *watermillForwarder) consume(ctx context.Context, topic string, h func(id, key string, body []byte)) error {
	sub, err := wredis.NewSubscriber(wredis.SubscriberConfig{Client: w.rc, ConsumerGroup: "g"}, watermill.NopLogger{})
	if err != nil {
		return err
	}
	defer func() { _ = sub.Close() }()
	ch, err := sub.Subscribe(ctx, topic)
	if err != nil {
		return err
	}
	for m := range ch {
		h(m.UUID, m.Metadata.Get("key"), m.Payload)
		m.Ack()
	}
	return ctx.Err()
}
