package redisstore_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/mqkit/mq"
	"github.com/mqkit/mq/dlq"
	"github.com/mqkit/mq/idempotency"
	"github.com/mqkit/mq/idempotency/redisstore"
	"github.com/mqkit/mq/idempotency/storetest"
	"github.com/mqkit/mq/integration/testbed"
	"github.com/mqkit/mq/memory"
	"github.com/mqkit/mq/middleware"
)

var _ dlq.AttemptCounter = (*redisstore.Store)(nil)

// TestStore runs the store and attempt counter suites against a real Redis
// in a container (skipped when Docker is unavailable, failed in CI; see
// package testbed).
func TestStore(t *testing.T) {
	if testing.Short() {
		t.Skip("needs a Redis container")
	}
	rd := testbed.Redis(t)
	client := redis.NewClient(&redis.Options{Addr: rd.Addr})
	t.Cleanup(func() { _ = client.Close() })
	ctx := context.Background()
	if err := client.Ping(ctx).Err(); err != nil {
		t.Fatalf("ping %s: %v", rd.Addr, err)
	}
	store := redisstore.New(client, redisstore.Config{})
	t.Run("store", func(t *testing.T) {
		storetest.Run(t, func(*testing.T) idempotency.Store { return store })
	})
	t.Run("attempt counter", func(t *testing.T) {
		storetest.RunAttemptCounter(t, func(*testing.T) dlq.AttemptCounter { return store })
	})
	t.Run("check", func(t *testing.T) {
		if err := idempotency.Check(ctx, store); err != nil {
			t.Fatalf("Check = %v", err)
		}
	})
	t.Run("prefixes keep stores and counts apart", func(t *testing.T) {
		a := redisstore.New(client, redisstore.Config{Prefix: "a:", AttemptPrefix: "an:"})
		b := redisstore.New(client, redisstore.Config{Prefix: "b:", AttemptPrefix: "bn:"})
		for _, s := range []*redisstore.Store{a, b} {
			c, err := s.Claim(ctx, "k", time.Minute)
			if err != nil || c.Status != idempotency.Acquired {
				t.Fatalf("Claim = %v, %v; want acquired in each prefix", c, err)
			}
			if n, err := s.CountAttempt(ctx, "k", time.Minute); err != nil || n != 1 {
				t.Fatalf("CountAttempt = %d, %v; want 1 in each prefix", n, err)
			}
		}
		if n, err := client.Exists(ctx, "a:k", "b:k", "an:k", "bn:k").Result(); err != nil || n != 4 {
			t.Fatalf("EXISTS a:k b:k an:k bn:k = %d, %v; want 4", n, err)
		}
	})
	t.Run("script cache flushed", func(t *testing.T) {
		// A Redis restart or failover empties the script cache: EVALSHA
		// fails with NOSCRIPT and the store must fall back to EVAL.
		s := redisstore.New(client, redisstore.Config{Prefix: "flush:"})
		if err := client.ScriptFlush(ctx).Err(); err != nil {
			t.Fatal(err)
		}
		c, err := s.Claim(ctx, "k", time.Minute)
		if err != nil || c.Status != idempotency.Acquired {
			t.Fatalf("Claim after SCRIPT FLUSH = %v, %v", c, err)
		}
		if err := client.ScriptFlush(ctx).Err(); err != nil {
			t.Fatal(err)
		}
		if err := s.Extend(ctx, "k", c.Token, time.Minute); err != nil {
			t.Fatalf("Extend after SCRIPT FLUSH: %v", err)
		}
		if err := client.ScriptFlush(ctx).Err(); err != nil {
			t.Fatal(err)
		}
		if err := s.Complete(ctx, "k", c.Token, time.Minute); err != nil {
			t.Fatalf("Complete after SCRIPT FLUSH: %v", err)
		}
	})
	t.Run("two instances", func(t *testing.T) {
		// The dedup middleware across two "instances" sharing one Redis:
		// a message handled by one is skipped by the other.
		newInstance := func() mq.Middleware {
			client := redis.NewClient(&redis.Options{Addr: rd.Addr})
			t.Cleanup(func() { _ = client.Close() })
			mw, err := idempotency.New(redisstore.New(client, redisstore.Config{}), idempotency.Config{Namespace: "billing"})
			if err != nil {
				t.Fatal(err)
			}
			return mw
		}
		a, b := newInstance(), newInstance()
		runs := 0
		id := "pay-" + mq.NewID()
		h := mq.HandlerFunc(func(context.Context, *mq.Message) error { runs++; return nil })
		for _, mw := range []mq.Middleware{a, b, a} {
			if err := mw(h).Handle(ctx, &mq.Message{ID: id, Topic: "payments"}); err != nil {
				t.Fatal(err)
			}
		}
		if runs != 1 {
			t.Fatalf("handler ran %d times across two instances, want 1", runs)
		}
	})
}

// deadAddr returns a loopback address where nothing listens.
func deadAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	_ = l.Close()
	return addr
}

func unreachable(t *testing.T) *redisstore.Store {
	client := redis.NewClient(&redis.Options{Addr: deadAddr(t), DialTimeout: 200 * time.Millisecond, MaxRetries: -1})
	t.Cleanup(func() { _ = client.Close() })
	return redisstore.New(client, redisstore.Config{})
}

// TestUnreachable: with Redis down every operation fails with an error
// wrapping mq.ErrUnavailable and the client's cause, and Check says so at
// start-up.
func TestUnreachable(t *testing.T) {
	ctx := context.Background()
	s := unreachable(t)
	_, claimErr := s.Claim(ctx, "k", time.Minute)
	_, countErr := s.CountAttempt(ctx, "k", time.Minute)
	for name, err := range map[string]error{
		"Claim":          claimErr,
		"Complete":       s.Complete(ctx, "k", "tok", time.Minute),
		"Release":        s.Release(ctx, "k", "tok"),
		"Extend":         s.Extend(ctx, "k", "tok", time.Minute),
		"CountAttempt":   countErr,
		"UndoAttempt":    s.UndoAttempt(ctx, "k"),
		"ForgetAttempts": s.ForgetAttempts(ctx, "k"),
		"Check":          idempotency.Check(ctx, s),
	} {
		if !errors.Is(err, mq.ErrUnavailable) || !strings.Contains(err.Error(), "connection refused") {
			t.Errorf("%s = %v, want mq.ErrUnavailable and connection refused", name, err)
		}
	}
	t.Logf("Check: %v", idempotency.Check(ctx, s))
}

// TestStackWithRedisDown runs the documented Stack with a dedup store and
// an attempt counter on a Redis that refuses connections: a good order
// must not be dead-lettered ("connection refused" is an outage, not a bad
// message), must not use up its attempts, and must stay in the broker to
// be handled once Redis is back. Before, it was dead-lettered with
// "connection refused" once Retry gave up.
func TestStackWithRedisDown(t *testing.T) {
	for _, counter := range []bool{false, true} {
		t.Run(fmt.Sprintf("attempt counter %v", counter), func(t *testing.T) {
			s := unreachable(t)
			b := memory.NewBroker(memory.Config{})
			c := mq.NewClient(b.Conn(), mq.WithNackBackoff(time.Millisecond, 10*time.Millisecond), mq.WithLogger(slog.New(slog.DiscardHandler)))
			t.Cleanup(func() { _ = c.Close(); _ = b.Close() })
			var letters atomic.Int32
			cfg := dlq.Config{
				Producer: c.Producer(), Group: "billing", MaxAttempts: 2, Logger: slog.New(slog.DiscardHandler),
				OnDeadLetter: func(context.Context, *mq.Message, error) { letters.Add(1) },
			}
			if counter {
				cfg.AttemptCounter = s
			}
			dead, err := dlq.New(cfg)
			if err != nil {
				t.Fatal(err)
			}
			dedup, err := idempotency.New(s, idempotency.Config{Namespace: "billing", Logger: slog.New(slog.DiscardHandler)})
			if err != nil {
				t.Fatal(err)
			}
			var mu sync.Mutex
			seen := map[int]int{} // Attempt -> deliveries, seen outside the stack
			var returned []error
			var calls atomic.Int32
			observe := mq.Middleware(func(next mq.Handler) mq.Handler {
				return mq.HandlerFunc(func(ctx context.Context, m *mq.Message) error {
					err := next.Handle(ctx, m)
					mu.Lock()
					seen[m.Attempt]++
					returned = append(returned, err)
					mu.Unlock()
					return err
				})
			})
			h := mq.Chain(mq.HandlerFunc(func(context.Context, *mq.Message) error { calls.Add(1); return nil }), observe, middleware.Stack(middleware.StackConfig{
				DeadLetter: dead,
				Retry:      middleware.RetryConfig{MaxAttempts: 2, InitialInterval: time.Millisecond, MaxInterval: 20 * time.Millisecond, MaxElapsedTime: 50 * time.Millisecond},
				Dedup:      dedup,
			}))
			cons, err := c.Consumer(context.Background(), "orders", mq.WithGroup("billing"))
			if err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithCancel(context.Background())
			done := make(chan error, 1)
			go func() { done <- cons.Consume(ctx, h) }()
			if err := c.Producer().Produce(ctx, "orders", &mq.Message{ID: "order-7", Body: []byte(`{"total":12}`)}); err != nil {
				t.Fatal(err)
			}
			time.Sleep(time.Second)
			cancel()
			if err := <-done; err != nil {
				t.Fatal(err)
			}
			mu.Lock()
			defer mu.Unlock()
			if n := letters.Load(); n != 0 || calls.Load() != 0 {
				t.Fatalf("%d dead letters, %d handler calls with the dedup store down; want 0, 0", n, calls.Load())
			}
			if len(seen) != 1 || seen[1] == 0 {
				t.Fatalf("deliveries by Attempt %v: want every one at Attempt 1", seen)
			}
			for _, err := range returned {
				if !errors.Is(err, mq.ErrUnavailable) || errors.Is(err, middleware.ErrRetriesExhausted) {
					t.Fatalf("the stack returned %v, want mq.ErrUnavailable and not retries exhausted", err)
				}
			}
			for _, st := range b.Stats() {
				if st.Topic == "orders" && st.Ready+st.Unacked != 1 {
					t.Fatalf("after the outage %+v, want the order still in the broker", st)
				}
			}
			t.Logf("%d deliveries in 1s, all at Attempt 1, none dead-lettered; last error: %v", seen[1], returned[len(returned)-1])
		})
	}
}
