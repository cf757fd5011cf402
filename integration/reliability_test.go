// Reliability tests: every message is counted by ID, confirmed on one side
// and handled on the other, while brokers restart, freeze, and consumers
// die. lost = confirmed but never handled (must be 0); duplicates are
// counted and reported separately (at-least-once allows them).
package integration_test

import (
	"context"
	"fmt"
	"net/url"
	"os"
	"runtime"
	"sync"
	"testing"
	"time"

	"github.com/mqkit/mq"
	"github.com/mqkit/mq/integration/internal/faultload"
	"github.com/mqkit/mq/integration/testbed"
	_ "github.com/mqkit/mq/kafka"
	_ "github.com/mqkit/mq/memory"
	_ "github.com/mqkit/mq/rabbit"
	_ "github.com/mqkit/mq/redisstream"
)

func TestMain(m *testing.M) { testbed.Main(m) }

// target is a broker kind and the URL parameters the tests use with it.
type target struct {
	name   string
	start  func(testing.TB, ...testbed.Option) *testbed.Broker // a broker of the test's own
	shared func(testing.TB) *testbed.Broker                    // the test binary's broker
	params url.Values
}

var targets = []target{
	{"kafka", testbed.Kafka, testbed.SharedKafka, url.Values{"create_topics": {"true"}, "partitions": {"3"}, "session_timeout": {"6s"}, "drain_timeout": {"5s"}}},
	{"rabbitmq", testbed.RabbitMQ, testbed.SharedRabbitMQ, url.Values{}},
	{"redis", testbed.Redis, testbed.SharedRedis, url.Values{"claim_idle": {"3s"}}},
}

// withParams adds params to a broker URL.
func withParams(t testing.TB, raw string, params url.Values) string {
	t.Helper()
	u, err := url.Parse(raw)
	if err != nil {
		t.Fatal(err)
	}
	if u.Path == "" {
		u.Path = "/"
	}
	q := u.Query()
	for k, vs := range params {
		q[k] = vs
	}
	u.RawQuery = q.Encode()
	return u.String()
}

func open(t testing.TB, rawURL string) *mq.Client {
	t.Helper()
	return faultload.Open(t, rawURL)
}

// ledger counts messages by ID on both sides.
type ledger struct {
	mu        sync.Mutex
	confirmed map[string]bool
	handled   map[string]int
	errors    int
}

func newLedger() *ledger {
	return &ledger{confirmed: map[string]bool{}, handled: map[string]int{}}
}

func (l *ledger) handler() mq.HandlerFunc {
	return func(_ context.Context, m *mq.Message) error {
		l.mu.Lock()
		l.handled[m.ID]++
		l.mu.Unlock()
		return nil
	}
}

func (l *ledger) counts() (confirmed, handled, lost, dups int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for id := range l.confirmed {
		if l.handled[id] == 0 {
			lost++
		}
	}
	for _, n := range l.handled {
		handled++
		dups += n - 1
	}
	return len(l.confirmed), handled, lost, dups
}

// waitNoLoss waits until every confirmed message was handled.
func (l *ledger) waitNoLoss(t *testing.T, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		confirmed, handled, lost, dups := l.counts()
		if lost == 0 {
			t.Logf("confirmed %d, handled %d distinct, lost 0, duplicates %d, produce errors retried %d", confirmed, handled, dups, l.errors)
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("confirmed %d, handled %d distinct, LOST %d, duplicates %d", confirmed, handled, lost, dups)
		}
		time.Sleep(250 * time.Millisecond)
	}
}

// TestBrokerRestartLosesNothing restarts each broker twice and freezes it
// once while a producer and a consumer group run; the SDK recovers by
// itself.
func TestBrokerRestartLosesNothing(t *testing.T) {
	if testing.Short() {
		t.Skip("long: restarts real brokers")
	}
	for _, tg := range targets {
		t.Run(tg.name, func(t *testing.T) {
			b := tg.start(t)
			u := withParams(t, b.URL, tg.params)
			// Rows per fault (duplicates included) go to MQ_REPORT_DIR/reliability.md.
			w := faultload.Start(t, u, "restart-"+mq.NewID(), faultload.Options{Report: "reliability"})
			w.Fault(t, "restart", b.Restart)
			w.Fault(t, "restart again", b.Restart)
			w.Fault(t, "pause 12s", func(ctx context.Context) error {
				if err := b.Pause(ctx); err != nil {
					return err
				}
				time.Sleep(12 * time.Second)
				return b.Unpause(ctx)
			})
			w.Finish(t, tg.name, "single node", true)
		})
	}
}

// TestConsumerCrashLosesNothing kills a consumer process with SIGKILL while
// it holds unacknowledged messages; another member of the group handles
// every one of them.
func TestConsumerCrashLosesNothing(t *testing.T) {
	if testing.Short() {
		t.Skip("long: kills a consumer process")
	}
	for _, tg := range targets {
		t.Run(tg.name, func(t *testing.T) {
			b := tg.shared(t)
			u := withParams(t, b.URL, tg.params)
			c := open(t, u)
			topic := "crash-" + mq.NewID()
			ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
			defer cancel()
			// Create the group before producing, then hand it to the child.
			pre, err := c.Consumer(ctx, topic, mq.WithGroup("g"))
			if err != nil {
				t.Fatal(err)
			}
			_ = pre.Close()
			l := newLedger()
			var msgs []*mq.Message
			for i := range 200 {
				msgs = append(msgs, &mq.Message{Key: fmt.Sprintf("k%d", i%20), Body: []byte(fmt.Sprint(i))})
			}
			if err := c.Producer().Produce(ctx, topic, msgs...); err != nil {
				t.Fatal(err)
			}
			for _, m := range msgs {
				l.confirmed[m.ID] = true
			}

			line := killAfter(ctx, t, "TestCrashChild", []string{"MQ_CRASH_CHILD_URL=" + u, "MQ_CRASH_CHILD_TOPIC=" + topic}, "HOLDING ", 2*time.Minute)
			t.Logf("child consumer: %s; killed it", line)

			consumer, err := c.Consumer(ctx, topic, mq.WithGroup("g"), mq.WithConcurrency(4))
			if err != nil {
				t.Fatal(err)
			}
			cctx, stop := context.WithCancel(ctx)
			done := make(chan error, 1)
			go func() { done <- consumer.Consume(cctx, l.handler()) }()
			l.waitNoLoss(t, 3*time.Minute)
			stop()
			<-done
		})
	}
}

// TestCrashChild is the consumer process that TestConsumerCrashLosesNothing
// kills. It does nothing unless started by that test.
func TestCrashChild(t *testing.T) {
	rawURL := os.Getenv("MQ_CRASH_CHILD_URL")
	if rawURL == "" {
		return // not a test of its own: the process TestConsumerCrashLosesNothing starts and kills
	}
	c, err := mq.Open(context.Background(), rawURL)
	if err != nil {
		t.Fatal(err)
	}
	cons, err := c.Consumer(context.Background(), os.Getenv("MQ_CRASH_CHILD_TOPIC"), mq.WithGroup("g"), mq.WithConcurrency(4))
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	held := 0
	_ = cons.Consume(context.Background(), mq.HandlerFunc(func(ctx context.Context, m *mq.Message) error {
		mu.Lock()
		held++
		if held == 4 {
			fmt.Printf("HOLDING %d messages unacknowledged (pid %d)\n", held, os.Getpid())
		}
		mu.Unlock()
		select {} // never finish: the parent kills this process
	}))
}

// TestGoroutinesSettle checks that a consumer stops every goroutine it
// started once Consume returned and the client is closed.
func TestGoroutinesSettle(t *testing.T) {
	before := runtime.NumGoroutine()
	c := open(t, "mem://")
	cons, err := c.Consumer(context.Background(), "t", mq.WithGroup("g"), mq.WithConcurrency(16))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		_ = cons.Consume(ctx, mq.HandlerFunc(func(context.Context, *mq.Message) error { return nil }))
		close(done)
	}()
	time.Sleep(50 * time.Millisecond)
	cancel()
	<-done
	_ = c.Close()
	deadline := time.Now().Add(5 * time.Second)
	for runtime.NumGoroutine() > before && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if after := runtime.NumGoroutine(); after > before {
		t.Errorf("goroutines: %d before, %d after Close: something the consumer started was not stopped", before, after)
	}
}
