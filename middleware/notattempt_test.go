package middleware_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/mqkit/mq"
	"github.com/mqkit/mq/dlq"
	"github.com/mqkit/mq/idempotency"
	"github.com/mqkit/mq/middleware"
)

// outageStore fails every Claim with err until the outage ends.
type outageStore struct {
	idempotency.Store
	err   error
	until time.Time
}

func (s *outageStore) Claim(ctx context.Context, key string, lease time.Duration) (idempotency.Claim, error) {
	if time.Now().Before(s.until) {
		return idempotency.Claim{}, s.err
	}
	return s.Store.Claim(ctx, key, lease)
}

// errorLog records every error the stack returns to the consumer.
type errorLog struct {
	mu   sync.Mutex
	errs []error
}

func (l *errorLog) middleware() mq.Middleware {
	return func(next mq.Handler) mq.Handler {
		return mq.HandlerFunc(func(ctx context.Context, m *mq.Message) error {
			err := next.Handle(ctx, m)
			if err != nil {
				l.mu.Lock()
				l.errs = append(l.errs, err)
				l.mu.Unlock()
			}
			return err
		})
	}
}

func (l *errorLog) snapshot() []error {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]error(nil), l.errs...)
}

// TestStackNotAnAttempt runs the documented Stack, with a real dlq
// middleware (MaxAttempts set) and Retry with MaxElapsedTime, on a real
// consumer while the message cannot be handled for 600ms for a reason that
// is not the message's fault: its dedup claim is held by another instance,
// an inner layer reports mq.ErrInProgress, or the dedup store is down.
// The message must wait without using up attempts, never be dead-lettered
// and never be reported as retries exhausted, and then be handled once at
// Attempt 1. Before, the claim held elsewhere came back as a RetryError,
// an in-progress error used up attempts until dlq dead-lettered it with
// reason max-attempts, and a store outage was dead-lettered with
// "connection refused".
func TestStackNotAnAttempt(t *testing.T) {
	const outage = 600 * time.Millisecond
	tests := []struct {
		name  string
		setup func(t *testing.T, store idempotency.Store) (idempotency.Store, mq.Middleware)
	}{
		{"claim held by another instance", func(t *testing.T, store idempotency.Store) (idempotency.Store, mq.Middleware) {
			c, err := store.Claim(context.Background(), "billing:orders:pay-1", time.Minute)
			if err != nil || c.Status != idempotency.Acquired {
				t.Fatalf("Claim = %v, %v", c, err)
			}
			timer := time.AfterFunc(outage, func() { _ = store.Release(context.Background(), "billing:orders:pay-1", c.Token) })
			t.Cleanup(func() { timer.Stop() })
			return store, nil
		}},
		{"in progress elsewhere", func(t *testing.T, store idempotency.Store) (idempotency.Store, mq.Middleware) {
			until := time.Now().Add(outage)
			return store, func(next mq.Handler) mq.Handler {
				return mq.HandlerFunc(func(ctx context.Context, m *mq.Message) error {
					if time.Now().Before(until) {
						return fmt.Errorf("lock held by instance b: %w", mq.ErrInProgress)
					}
					return next.Handle(ctx, m)
				})
			}
		}},
		{"dedup store down", func(t *testing.T, store idempotency.Store) (idempotency.Store, mq.Middleware) {
			err := errors.New("dial tcp 127.0.0.1:6379: connect: connection refused")
			return &outageStore{Store: store, err: err, until: time.Now().Add(outage)}, nil
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newEnv(t)
			var letters atomic.Int32
			var lastCause atomic.Value
			dead, err := dlq.New(dlq.Config{
				Producer:    e.c.Producer(),
				Group:       e.group,
				MaxAttempts: 2,
				Logger:      slog.New(slog.DiscardHandler),
				OnDeadLetter: func(_ context.Context, _ *mq.Message, cause error) {
					letters.Add(1)
					lastCause.Store(cause.Error())
				},
			})
			if err != nil {
				t.Fatal(err)
			}
			store, inner := tt.setup(t, idempotency.NewMemoryStore(idempotency.MemoryStoreConfig{}))
			var mu sync.Mutex
			var attempts []int
			h := mq.HandlerFunc(func(_ context.Context, m *mq.Message) error {
				mu.Lock()
				defer mu.Unlock()
				attempts = append(attempts, m.Attempt)
				return nil
			})
			retry := fastRetry
			retry.MaxAttempts = 3
			retry.MaxElapsedTime = 50 * time.Millisecond
			var returned errorLog
			stack := middleware.Stack(middleware.StackConfig{
				DeadLetter: dead,
				Retry:      retry,
				Dedup:      newDedup(t, store),
			})
			e.consume(t, mq.Chain(h, returned.middleware(), stack, inner))
			start := time.Now()
			e.produce(t, &mq.Message{ID: "pay-1", Key: "customer-1"})
			e.settled(t)
			if time.Since(start) < outage/2 {
				t.Fatalf("settled after %v, before the obstacle went away", time.Since(start))
			}
			if n := letters.Load(); n != 0 {
				t.Fatalf("dead-lettered %d times (%v), want never", n, lastCause.Load())
			}
			mu.Lock()
			got := fmt.Sprint(attempts)
			mu.Unlock()
			if got != "[1]" {
				t.Fatalf("handler ran at attempts %s, want once at [1]", got)
			}
			errs := returned.snapshot()
			for _, err := range errs {
				if errors.Is(err, middleware.ErrRetriesExhausted) || !mq.NotAnAttempt(err) {
					t.Fatalf("the stack returned %v (%T): want the plain not-an-attempt error, never retries exhausted", err, err)
				}
			}
			if len(errs) == 0 {
				t.Fatal("MaxElapsedTime never handed the message back to the consumer")
			}
			if strings.Contains(tt.name, "store down") && !errors.Is(errs[0], mq.ErrUnavailable) {
				t.Fatalf("store outage returned %v, want it wrapped in mq.ErrUnavailable", errs[0])
			}
		})
	}
}
