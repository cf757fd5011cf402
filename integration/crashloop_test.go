package integration_test

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net/url"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/mqkit/mq"
	"github.com/mqkit/mq/dlq"
	"github.com/mqkit/mq/idempotency"
	"github.com/mqkit/mq/idempotency/redisstore"
	"github.com/mqkit/mq/integration/testbed"
	"github.com/mqkit/mq/middleware"
)

// crashLoopMaxAttempts is the dlq MaxAttempts of the crash-loop child.
const crashLoopMaxAttempts = 3

// TestCrashLoopEndsInDLQ runs a consumer process that dies (os.Exit(1)) on
// every delivery of one poison message, and restarts it each time, as a
// supervisor would, on brokers that keep no delivery count across a crash:
// Kafka (Attempt is 1 again) and a RabbitMQ classic queue (Attempt is 2 at
// most). With middleware.Stack, dlq MaxAttempts and the Redis attempt
// counter, the poison message is dead-lettered after MaxAttempts crashes,
// every other message is handled, and the loop ends. Without the counter
// it would loop forever.
func TestCrashLoopEndsInDLQ(t *testing.T) {
	if testing.Short() {
		t.Skip("needs real brokers; restarts consumer processes")
	}
	crashTargets := []struct {
		name   string
		broker func(testing.TB) *testbed.Broker
		params url.Values
	}{
		{"kafka", testbed.SharedKafka, url.Values{"create_topics": {"true"}, "partitions": {"3"}, "session_timeout": {"6s"}, "drain_timeout": {"5s"}}},
		{"rabbitmq-classic", testbed.SharedRabbitMQ, url.Values{"queue_type": {"classic"}}},
	}
	for _, tg := range crashTargets {
		t.Run(tg.name, func(t *testing.T) {
			rd := testbed.SharedRedis(t)
			b := tg.broker(t)
			u := withParams(t, b.URL, tg.params)
			c := open(t, u)
			ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
			defer cancel()
			topic := "crashloop-" + mq.NewID()
			dlqTopic := dlq.DefaultTopic(topic)
			if err := dlq.Ensure(ctx, c, dlqTopic); err != nil {
				t.Fatalf("dlq.Ensure: %v", err)
			}
			pre, err := c.Consumer(ctx, topic, mq.WithGroup("g"))
			if err != nil {
				t.Fatal(err)
			}
			_ = pre.Close()
			var msgs []*mq.Message
			for i := range 30 {
				m := &mq.Message{Key: fmt.Sprintf("k%d", i%10), Body: []byte(fmt.Sprintf("order %d", i))}
				if i == 13 {
					m.Body = []byte("poison")
				}
				msgs = append(msgs, m)
			}
			if err := c.Producer().Produce(ctx, topic, msgs...); err != nil {
				t.Fatal(err)
			}
			poison := msgs[13].ID

			var mu sync.Mutex
			handled := map[string]bool{}
			crashes, deadLettered := 0, 0
			allHandled := func() bool {
				mu.Lock()
				defer mu.Unlock()
				for _, m := range msgs {
					if m.ID != poison && !handled[m.ID] {
						return false
					}
				}
				return deadLettered > 0
			}
			const maxLives = 2 * crashLoopMaxAttempts
			exited := false
			for life := 1; life <= maxLives && !exited; life++ {
				child := exec.CommandContext(ctx, os.Args[0], "-test.run=^TestCrashLoopChild$", "-test.v")
				child.Env = append(os.Environ(), "MQ_CRASHLOOP_URL="+u, "MQ_CRASHLOOP_TOPIC="+topic, "MQ_CRASHLOOP_REDIS="+rd.Addr)
				stdin, err := child.StdinPipe()
				if err != nil {
					t.Fatal(err)
				}
				out, err := child.StdoutPipe()
				if err != nil {
					t.Fatal(err)
				}
				child.Stderr = os.Stderr
				if err := child.Start(); err != nil {
					t.Fatal(err)
				}
				lines := make(chan struct{})
				go func() {
					defer close(lines)
					sc := bufio.NewScanner(out)
					for sc.Scan() {
						f := strings.Fields(sc.Text())
						if len(f) < 2 {
							continue
						}
						mu.Lock()
						switch f[0] {
						case "HANDLED":
							handled[f[1]] = true
						case "POISON":
							crashes++
						case "DEADLETTERED":
							if f[1] == poison {
								deadLettered++
							}
						}
						mu.Unlock()
					}
				}()
				// The child dies on the poison message, or handles everything:
				// then the parent tells it to stop by closing its stdin.
				waited := make(chan error, 1)
				go func() { <-lines; waited <- child.Wait() }()
				var werr error
			watch:
				for {
					select {
					case werr = <-waited:
						break watch
					case <-time.After(100 * time.Millisecond):
						if allHandled() {
							_ = stdin.Close()
							werr = <-waited
							exited = werr == nil
							break watch
						}
					}
				}
				mu.Lock()
				t.Logf("life %d ended (%v): %d handled, %d crashes, dead-lettered %d", life, werr, len(handled), crashes, deadLettered)
				mu.Unlock()
				if werr != nil && !allHandled() {
					var ee *exec.ExitError
					if !errors.As(werr, &ee) || ee.ExitCode() != 1 {
						t.Fatalf("child failed other than by the poison message's crash: %v", werr)
					}
				}
			}
			if !exited {
				t.Fatalf("the crash loop did not end in %d lives", maxLives)
			}
			mu.Lock()
			if crashes != crashLoopMaxAttempts || deadLettered != 1 {
				t.Errorf("%d crashes, dead-lettered %d times; want %d and 1", crashes, deadLettered, crashLoopMaxAttempts)
			}
			mu.Unlock()
			letters, err := dlq.List(ctx, c, dlqTopic, 0, dlq.WithIdle(5*time.Second))
			if err != nil {
				t.Fatalf("dlq.List: %v", err)
			}
			if len(letters) != 1 || letters[0].ID != poison {
				t.Fatalf("DLQ holds %d letters, want the poison message once", len(letters))
			}
			info := dlq.Describe(letters[0])
			if info.Reason != dlq.ReasonMaxAttempts || info.Attempts != crashLoopMaxAttempts {
				t.Errorf("dead letter reason %q after %d attempts, want %q after %d", info.Reason, info.Attempts, dlq.ReasonMaxAttempts, crashLoopMaxAttempts)
			}
			client := redis.NewClient(&redis.Options{Addr: rd.Addr})
			defer client.Close()
			if n, err := client.Exists(ctx, "mq:attempts:g:"+topic+":"+poison).Result(); err != nil || n != 0 {
				t.Errorf("the poison message's count is still in Redis (%d, %v): it was not forgotten", n, err)
			}
		})
	}
}

// TestCrashLoopChild is the consumer process TestCrashLoopEndsInDLQ starts
// and restarts. It does nothing unless started by that test.
func TestCrashLoopChild(t *testing.T) {
	rawURL := os.Getenv("MQ_CRASHLOOP_URL")
	if rawURL == "" {
		return // not a test of its own
	}
	ctx, stop := context.WithCancel(context.Background())
	defer stop()
	go func() { // the parent closes stdin to stop this process
		_, _ = bufio.NewReader(os.Stdin).ReadString('\n')
		stop()
	}()
	c, err := mq.Open(ctx, rawURL)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	rc := redis.NewClient(&redis.Options{Addr: os.Getenv("MQ_CRASHLOOP_REDIS")})
	defer rc.Close()
	store := redisstore.New(rc, redisstore.Config{})
	if err := idempotency.Check(ctx, store); err != nil {
		t.Fatal(err)
	}
	dead, err := dlq.New(dlq.Config{
		Producer:       c.Producer(),
		Group:          "g",
		MaxAttempts:    crashLoopMaxAttempts,
		AttemptCounter: store,
		OnDeadLetter: func(_ context.Context, m *mq.Message, _ error) {
			fmt.Printf("DEADLETTERED %s\n", m.ID)
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	cons, err := c.Consumer(ctx, os.Getenv("MQ_CRASHLOOP_TOPIC"), mq.WithGroup("g"), mq.WithConcurrency(4))
	if err != nil {
		t.Fatal(err)
	}
	h := mq.Chain(mq.HandlerFunc(func(_ context.Context, m *mq.Message) error {
		if string(m.Body) == "poison" {
			fmt.Printf("POISON %s attempt %s\n", m.ID, strconv.Itoa(m.Attempt))
			os.Exit(1) // the process dies before the handler returns
		}
		fmt.Printf("HANDLED %s\n", m.ID)
		return nil
	}), middleware.Stack(middleware.StackConfig{
		DeadLetter: dead,
		Retry:      middleware.RetryConfig{MaxAttempts: crashLoopMaxAttempts, InitialInterval: 10 * time.Millisecond},
	}))
	if err := cons.Consume(ctx, h); err != nil {
		t.Fatal(err)
	}
	_ = cons.Close()
}
