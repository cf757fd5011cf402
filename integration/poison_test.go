package integration_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mqkit/mq"
	"github.com/mqkit/mq/dlq"
	"github.com/mqkit/mq/middleware"
)

// TestPoisonMessagesDeadLetteredOnce sends a stream in which some messages
// make the handler fail forever and some make it panic. With retry and the
// DLQ middleware, each poison message ends in the DLQ exactly once with its
// cause, and every other message is handled: the stream keeps flowing.
func TestPoisonMessagesDeadLetteredOnce(t *testing.T) {
	if testing.Short() {
		t.Skip("needs real brokers")
	}
	for _, tg := range targets {
		t.Run(tg.name, func(t *testing.T) {
			b := tg.shared(t)
			c := open(t, withParams(t, b.URL, tg.params))
			ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
			defer cancel()
			topic := "poison-" + mq.NewID()
			dlqTopic := dlq.DefaultTopic(topic)
			if err := dlq.Ensure(ctx, c, dlqTopic); err != nil {
				t.Fatalf("dlq.Ensure: %v", err)
			}
			cons, err := c.Consumer(ctx, topic, mq.WithGroup("g"), mq.WithConcurrency(8))
			if err != nil {
				t.Fatal(err)
			}
			dead, err := dlq.New(dlq.Config{Producer: c.Producer(), Group: "g"})
			if err != nil {
				t.Fatal(err)
			}
			var mu sync.Mutex
			handled := map[string]int{}
			h := mq.Chain(mq.HandlerFunc(func(_ context.Context, m *mq.Message) error {
				switch {
				case strings.HasPrefix(string(m.Body), "fail"):
					return errors.New("poison: cannot parse order")
				case strings.HasPrefix(string(m.Body), "panic"):
					panic("poison: nil order")
				}
				mu.Lock()
				handled[m.ID]++
				mu.Unlock()
				return nil
			}), middleware.Stack(middleware.StackConfig{
				DeadLetter: dead,
				Retry:      middleware.RetryConfig{MaxAttempts: 3, InitialInterval: 10 * time.Millisecond},
			}))

			var good []string
			poison := map[string]string{}
			var msgs []*mq.Message
			for i := range 300 {
				m := &mq.Message{Key: fmt.Sprintf("k%d", i%30), Body: []byte(fmt.Sprintf("ok %d", i))}
				switch {
				case i%50 == 7:
					m.Body = []byte("fail " + fmt.Sprint(i))
				case i%50 == 23:
					m.Body = []byte("panic " + fmt.Sprint(i))
				}
				msgs = append(msgs, m)
			}
			if err := c.Producer().Produce(ctx, topic, msgs...); err != nil {
				t.Fatal(err)
			}
			for _, m := range msgs {
				if b := string(m.Body); strings.HasPrefix(b, "ok") {
					good = append(good, m.ID)
				} else {
					poison[m.ID] = b
				}
			}
			cctx, stop := context.WithCancel(ctx)
			done := make(chan error, 1)
			go func() { done <- cons.Consume(cctx, h) }()
			deadline := time.Now().Add(2 * time.Minute)
			for {
				mu.Lock()
				missing := 0
				for _, id := range good {
					if handled[id] == 0 {
						missing++
					}
				}
				mu.Unlock()
				if missing == 0 {
					break
				}
				if time.Now().After(deadline) {
					t.Fatalf("%d of %d good messages never handled: poison blocked the stream", missing, len(good))
				}
				time.Sleep(100 * time.Millisecond)
			}
			// Every poison message in the DLQ exactly once, with its cause.
			seen := map[string]int{}
			for time.Now().Before(deadline) && len(seen) < len(poison) {
				letters, err := dlq.List(ctx, c, dlqTopic, 100)
				if err != nil {
					t.Fatalf("dlq.List: %v", err)
				}
				clear(seen)
				for _, l := range letters {
					seen[l.ID]++
					info := dlq.Describe(l)
					want := "cannot parse order"
					if strings.HasPrefix(poison[l.ID], "panic") {
						want = "nil order"
						if info.PanicStack == "" {
							t.Errorf("%s: panic dead-lettered without its stack", l.ID)
						}
					}
					if !strings.Contains(info.Error, want) || info.Topic != topic || info.Attempts < 3 {
						t.Errorf("%s: dead letter %+v, want cause %q from %s after 3 attempts", l.ID, info, want, topic)
					}
				}
			}
			stop()
			if err := <-done; err != nil {
				t.Errorf("Consume: %v", err)
			}
			for id := range poison {
				if seen[id] != 1 {
					t.Errorf("poison message %s is in the DLQ %d times, want exactly 1", id, seen[id])
				}
			}
			if len(seen) != len(poison) {
				t.Errorf("DLQ holds %d distinct letters, want %d", len(seen), len(poison))
			}
			t.Logf("%d good handled, %d poison dead-lettered once each", len(good), len(poison))
		})
	}
}
