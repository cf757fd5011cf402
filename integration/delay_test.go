package integration_test

import (
	"context"
	"fmt"
	"os"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/mqkit/mq"
)

// TestDelayedSurvivesCrashAndRestart schedules 1,000 delayed messages,
// lets a consumer process (which also moves due messages) receive the
// first due ones and SIGKILLs it while it holds them unacknowledged,
// restarts the broker while the rest wait, and then checks that another
// consumer handles every one, none before it was due.
func TestDelayedSurvivesCrashAndRestart(t *testing.T) {
	if testing.Short() {
		t.Skip("long: kills a consumer process and restarts brokers")
	}
	for _, tg := range targets {
		t.Run(tg.name, func(t *testing.T) {
			b := tg.shared(t)
			u := withParams(t, b.URL, tg.params)
			c := open(t, u)
			topic := "delay-crash-" + mq.NewID()
			ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
			defer cancel()
			pre, err := c.Consumer(ctx, topic, mq.WithGroup("g"))
			if err != nil {
				t.Fatal(err)
			}
			_ = pre.Close()

			l := newLedger()
			start := time.Now()
			var msgs []*mq.Message
			for i := range 1000 {
				msgs = append(msgs, &mq.Message{Key: fmt.Sprintf("k%d", i%20), Body: []byte(fmt.Sprint(i)),
					DeliverAt: start.Add(2*time.Second + time.Duration(i)*6*time.Millisecond)})
			}
			p := c.Producer()
			for i := 0; i < len(msgs); i += 100 {
				if err := p.Produce(ctx, topic, msgs[i:i+100]...); err != nil {
					t.Fatal(err)
				}
			}
			due := map[string]time.Time{}
			for _, m := range msgs {
				l.confirmed[m.ID] = true
				due[m.ID] = m.DeliverAt
			}
			t.Logf("scheduled 1000 messages due 2s–8s after %v (took %v)", start.Format(time.TimeOnly), time.Since(start).Round(time.Millisecond))

			line := killAfter(ctx, t, "TestDelayChild", []string{"MQ_DELAY_CHILD_URL=" + u, "MQ_DELAY_CHILD_TOPIC=" + topic}, "HOLDING ", 2*time.Minute)
			t.Logf("child consumer: %s; killed it", line)
			if err := b.Restart(ctx); err != nil {
				t.Fatalf("restart: %v", err)
			}
			t.Logf("broker restarted %v after scheduling", time.Since(start).Round(time.Millisecond))

			var early atomic.Int64
			var mu sync.Mutex
			inner := l.handler()
			h := mq.HandlerFunc(func(ctx context.Context, m *mq.Message) error {
				mu.Lock()
				d, ok := due[m.ID]
				mu.Unlock()
				if ok && time.Now().Before(d) {
					early.Add(1)
				}
				return inner(ctx, m)
			})
			cons, err := c.Consumer(ctx, topic, mq.WithGroup("g"), mq.WithConcurrency(8))
			if err != nil {
				t.Fatal(err)
			}
			cctx, stop := context.WithCancel(ctx)
			done := make(chan error, 1)
			go func() { done <- cons.Consume(cctx, h) }()
			l.waitNoLoss(t, 3*time.Minute)
			stop()
			if err := <-done; err != nil {
				t.Errorf("Consume: %v", err)
			}
			_ = cons.Close()
			if n := early.Load(); n > 0 {
				t.Errorf("%d messages handled before they were due", n)
			}
		})
	}
}

// TestDelayChild is the consumer process TestDelayedSurvivesCrashAndRestart
// kills while it holds 4 delayed messages unacknowledged. It does nothing
// unless started by that test.
func TestDelayChild(t *testing.T) {
	rawURL := os.Getenv("MQ_DELAY_CHILD_URL")
	if rawURL == "" {
		return
	}
	c, err := mq.Open(context.Background(), rawURL)
	if err != nil {
		t.Fatal(err)
	}
	cons, err := c.Consumer(context.Background(), os.Getenv("MQ_DELAY_CHILD_TOPIC"), mq.WithGroup("g"), mq.WithConcurrency(4))
	if err != nil {
		t.Fatal(err)
	}
	var n atomic.Int64
	_ = cons.Consume(context.Background(), mq.HandlerFunc(func(ctx context.Context, m *mq.Message) error {
		if n.Add(1) == 4 {
			fmt.Printf("HOLDING 4 delayed messages unacknowledged (pid %d)\n", os.Getpid())
		}
		select {} // never finish: the parent kills this process
	}))
}
