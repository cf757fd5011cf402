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
	"github.com/mqkit/mq/idempotency"
	"github.com/mqkit/mq/memory"
	"github.com/mqkit/mq/middleware"
)

// These tests run the middleware under a real consumer on the memory
// broker: the cases users get wrong are about what the consumer ends up
// doing (acknowledging, redelivering, dead-lettering), not only about what
// a handler returns.

var errBoom = errors.New("boom")

// env is a memory broker with one topic and one consumer group.
type env struct {
	b     *memory.Broker
	c     *mq.Client
	topic string
	group string
}

func newEnv(t *testing.T) *env {
	b := memory.NewBroker(memory.Config{})
	c := mq.NewClient(b.Conn())
	t.Cleanup(func() {
		_ = c.Close()
		_ = b.Close()
	})
	return &env{b: b, c: c, topic: "orders", group: "billing"}
}

// consume runs a consumer with h until the test ends (or stop is called),
// and returns stop, which shuts it down and returns Consume's result.
func (e *env) consume(t *testing.T, h mq.Handler, opts ...mq.Option) (stop func() error) {
	t.Helper()
	opts = append([]mq.Option{
		mq.WithGroup(e.group),
		mq.WithNackBackoff(time.Millisecond, 5*time.Millisecond),
		mq.WithLogger(slog.New(slog.DiscardHandler)), // shutdown-timeout warnings are expected here
	}, opts...)
	cons, err := e.c.Consumer(context.Background(), e.topic, opts...)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- cons.Consume(ctx, h) }()
	var once sync.Once
	var result error
	stop = func() error {
		once.Do(func() {
			cancel()
			select {
			case result = <-done:
			case <-time.After(20 * time.Second):
				result = errors.New("Consume did not return 20s after its context was cancelled")
			}
		})
		return result
	}
	t.Cleanup(func() {
		if err := stop(); err != nil {
			t.Error(err)
		}
	})
	return stop
}

func (e *env) produce(t *testing.T, msgs ...*mq.Message) {
	t.Helper()
	if err := e.c.Producer().Produce(context.Background(), e.topic, msgs...); err != nil {
		t.Fatal(err)
	}
}

// settled waits until the group has no message ready or unacknowledged.
func (e *env) settled(t *testing.T) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		var st memory.Stats
		for _, s := range e.b.Stats() {
			if s.Topic == e.topic && s.Group == e.group {
				st = s
			}
		}
		if st.Ready == 0 && st.Unacked == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("messages not settled after 10s: %+v", st)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// deadLetters is a stand-in for package dlq's middleware: it records the
// messages whose final outcome is an error and acknowledges them. Like a
// real DLQ it does not dead-letter a message whose context ended (the
// consumer is shutting down and will hand the message back).
type deadLetters struct {
	mu   sync.Mutex
	msgs []*mq.Message
	errs []error
}

func (d *deadLetters) middleware() mq.Middleware {
	return func(next mq.Handler) mq.Handler {
		return mq.HandlerFunc(func(ctx context.Context, m *mq.Message) error {
			err := next.Handle(ctx, m)
			if err == nil || ctx.Err() != nil || mq.IsShuttingDown(ctx) {
				return err
			}
			d.mu.Lock()
			defer d.mu.Unlock()
			d.msgs = append(d.msgs, m.Clone())
			d.errs = append(d.errs, err)
			return nil
		})
	}
}

func (d *deadLetters) snapshot() ([]*mq.Message, []error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	return append([]*mq.Message(nil), d.msgs...), append([]error(nil), d.errs...)
}

func newDedup(t *testing.T, store idempotency.Store) mq.Middleware {
	t.Helper()
	mw, err := idempotency.New(store, idempotency.Config{Namespace: "billing"})
	if err != nil {
		t.Fatal(err)
	}
	return mw
}

var fastRetry = middleware.RetryConfig{InitialInterval: time.Millisecond, MaxInterval: 5 * time.Millisecond}

func TestStackFinalFailureIsDeadLetteredOnce(t *testing.T) {
	const maxAttempts = 4
	tests := []struct {
		name         string
		handler      func(ctx context.Context, m *mq.Message) error
		wantCalls    int
		wantIs       []error
		wantExhaust  bool
		wantPanic    bool
		wantNotRetry bool
	}{
		{name: "error every time", handler: func(context.Context, *mq.Message) error { return errBoom },
			wantCalls: maxAttempts, wantIs: []error{errBoom}, wantExhaust: true},
		{name: "permanent error", handler: func(context.Context, *mq.Message) error { return mq.Permanent(errBoom) },
			wantCalls: 1, wantIs: []error{errBoom}},
		{name: "panic", handler: func(context.Context, *mq.Message) error { panicky(); return nil },
			wantCalls: maxAttempts, wantExhaust: true, wantPanic: true},
		{name: "timeout", handler: func(ctx context.Context, _ *mq.Message) error { <-ctx.Done(); return ctx.Err() },
			wantCalls: maxAttempts, wantIs: []error{middleware.ErrHandlerTimeout, context.DeadlineExceeded}, wantExhaust: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newEnv(t)
			var dl deadLetters
			var mu sync.Mutex
			var attempts []int
			h := mq.HandlerFunc(func(ctx context.Context, m *mq.Message) error {
				mu.Lock()
				attempts = append(attempts, m.Attempt)
				mu.Unlock()
				return tt.handler(ctx, m)
			})
			retry := fastRetry
			retry.MaxAttempts = maxAttempts
			stack := middleware.Stack(middleware.StackConfig{
				DeadLetter: dl.middleware(),
				Retry:      retry,
				Timeout:    20 * time.Millisecond,
				Dedup:      newDedup(t, idempotency.NewMemoryStore(idempotency.MemoryStoreConfig{})),
			})
			e.consume(t, mq.Chain(h, stack))
			e.produce(t, &mq.Message{ID: "m1", Key: "customer-1", Body: []byte("pay")})
			e.settled(t)

			mu.Lock()
			got := append([]int(nil), attempts...)
			mu.Unlock()
			want := make([]int, tt.wantCalls)
			for i := range want {
				want[i] = i + 1
			}
			if fmt.Sprint(got) != fmt.Sprint(want) {
				t.Fatalf("handler saw attempts %v, want %v", got, want)
			}
			msgs, errs := dl.snapshot()
			if len(msgs) != 1 {
				t.Fatalf("%d dead letters, want exactly 1", len(msgs))
			}
			m, err := msgs[0], errs[0]
			if m.ID != "m1" || m.Attempt != tt.wantCalls || string(m.Body) != "pay" {
				t.Fatalf("dead letter %v body %q, want m1 with attempt %d", m, m.Body, tt.wantCalls)
			}
			if _, perr := time.Parse(time.RFC3339Nano, m.Header(middleware.HeaderFirstFailure)); perr != nil {
				t.Fatalf("dead letter has no %s: %v", middleware.HeaderFirstFailure, perr)
			}
			for _, target := range tt.wantIs {
				if !errors.Is(err, target) {
					t.Errorf("dead letter error %v does not wrap %v", err, target)
				}
			}
			if got := errors.Is(err, middleware.ErrRetriesExhausted); got != tt.wantExhaust {
				t.Errorf("dead letter error %v: exhausted %v, want %v", err, got, tt.wantExhaust)
			}
			if want := fmt.Sprintf("after %d attempts", tt.wantCalls); tt.wantExhaust && !strings.Contains(err.Error(), want) {
				t.Errorf("dead letter error %q does not say %q", err, want)
			}
			var pe *mq.PanicError
			if got := errors.As(err, &pe); got != tt.wantPanic {
				t.Fatalf("dead letter error %v: PanicError %v, want %v", err, got, tt.wantPanic)
			}
			if tt.wantPanic && !strings.Contains(string(pe.Stack), "panicky") {
				t.Errorf("panic stack does not show where it panicked:\n%s", pe.Stack)
			}
		})
	}
}

func panicky() { panic("card declined by a nil pointer") }

// spyStore tells the test when a claim found the key busy.
type spyStore struct {
	idempotency.Store
	busy chan string
}

func (s *spyStore) Claim(ctx context.Context, key string, lease time.Duration) (idempotency.Claim, error) {
	c, err := s.Store.Claim(ctx, key, lease)
	if err == nil && c.Status == idempotency.Busy {
		select {
		case s.busy <- key:
		default:
		}
	}
	return c, err
}

func TestStackDuplicates(t *testing.T) {
	t.Run("delivered after success: skipped and acknowledged", func(t *testing.T) {
		e := newEnv(t)
		var dl deadLetters
		var calls atomic.Int32
		h := mq.HandlerFunc(func(context.Context, *mq.Message) error { calls.Add(1); return nil })
		stack := middleware.Stack(middleware.StackConfig{
			DeadLetter: dl.middleware(),
			Retry:      fastRetry,
			Dedup:      newDedup(t, idempotency.NewMemoryStore(idempotency.MemoryStoreConfig{})),
		})
		e.consume(t, mq.Chain(h, stack))
		e.produce(t, &mq.Message{ID: "pay-1", Body: []byte("a")})
		e.settled(t)
		e.produce(t, &mq.Message{ID: "pay-1", Body: []byte("a")}, &mq.Message{ID: "pay-2"}, &mq.Message{ID: "pay-1"})
		e.settled(t)
		if n := calls.Load(); n != 2 {
			t.Fatalf("handler ran %d times for pay-1, pay-1, pay-2, pay-1; want 2", n)
		}
		if msgs, _ := dl.snapshot(); len(msgs) != 0 {
			t.Fatalf("%d dead letters, want none", len(msgs))
		}
	})

	for _, holderFails := range []bool{false, true} {
		name := "delivered while the first runs: runs once"
		if holderFails {
			name = "delivered while the first runs, which then fails: succeeds once"
		}
		t.Run(name, func(t *testing.T) {
			e := newEnv(t)
			var dl deadLetters
			store := &spyStore{Store: idempotency.NewMemoryStore(idempotency.MemoryStoreConfig{}), busy: make(chan string, 100)}
			var calls, successes atomic.Int32
			h := mq.HandlerFunc(func(ctx context.Context, m *mq.Message) error {
				if calls.Add(1) == 1 {
					// The first call holds the claim until the duplicate
					// has found it busy three times: more than its
					// attempts, which busy waits must not use up.
					for range 3 {
						select {
						case <-store.busy:
						case <-time.After(10 * time.Second):
							return errors.New("the duplicate never found the claim busy")
						}
					}
					if holderFails {
						return errBoom
					}
				}
				successes.Add(1)
				return nil
			})
			retry := fastRetry
			retry.MaxAttempts = 2 // busy waits must not use attempts up
			stack := middleware.Stack(middleware.StackConfig{
				DeadLetter: dl.middleware(),
				Retry:      retry,
				Dedup:      newDedup(t, store),
			})
			e.consume(t, mq.Chain(h, stack), mq.WithConcurrency(4))
			// Same ID, different keys: the consumer runs them at once.
			e.produce(t, &mq.Message{ID: "pay-1", Key: "a"}, &mq.Message{ID: "pay-1", Key: "b"})
			e.settled(t)
			if n := successes.Load(); n != 1 {
				t.Fatalf("handler succeeded %d times, want 1", n)
			}
			want := int32(1)
			if holderFails {
				want = 2
			}
			if n := calls.Load(); n != want {
				t.Fatalf("handler ran %d times, want %d", n, want)
			}
			if msgs, errs := dl.snapshot(); len(msgs) != 0 {
				t.Fatalf("dead letters %v, want none", errs)
			}
		})
	}
}

// failOnceAfter fails the first call that its inner handler completed, as
// a failure after the work was done would (say, the ack or an outer
// transaction commit failing).
func failOnceAfter() mq.Middleware {
	var failed atomic.Bool
	return func(next mq.Handler) mq.Handler {
		return mq.HandlerFunc(func(ctx context.Context, m *mq.Message) error {
			if err := next.Handle(ctx, m); err != nil {
				return err
			}
			if failed.CompareAndSwap(false, true) {
				return errors.New("lost after the work was done")
			}
			return nil
		})
	}
}

func TestStackRetryDoesNotRerunCompletedWork(t *testing.T) {
	tests := []struct {
		name        string
		build       func(h mq.Handler, dedup mq.Middleware) mq.Handler
		wantAttempt int
	}{
		{"retried by Retry", func(h mq.Handler, dedup mq.Middleware) mq.Handler {
			return mq.Chain(h, middleware.Retry(fastRetry), failOnceAfter(), dedup, middleware.Recover())
		}, 2},
		{"redelivered by the consumer", func(h mq.Handler, dedup mq.Middleware) mq.Handler {
			return mq.Chain(h, failOnceAfter(), middleware.Stack(middleware.StackConfig{Retry: fastRetry, Dedup: dedup}))
		}, 2},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newEnv(t)
			var mu sync.Mutex
			var attempts []int
			var last int
			h := mq.HandlerFunc(func(_ context.Context, m *mq.Message) error {
				mu.Lock()
				defer mu.Unlock()
				attempts = append(attempts, m.Attempt)
				return nil
			})
			seen := mq.Middleware(func(next mq.Handler) mq.Handler {
				return mq.HandlerFunc(func(ctx context.Context, m *mq.Message) error {
					err := next.Handle(ctx, m)
					mu.Lock()
					last = m.Attempt
					mu.Unlock()
					return err
				})
			})
			dedup := newDedup(t, idempotency.NewMemoryStore(idempotency.MemoryStoreConfig{}))
			e.consume(t, mq.Chain(tt.build(h, dedup), seen))
			e.produce(t, &mq.Message{ID: "pay-1"})
			e.settled(t)
			mu.Lock()
			defer mu.Unlock()
			if fmt.Sprint(attempts) != "[1]" {
				t.Fatalf("handler ran at attempts %v, want once at [1]", attempts)
			}
			if last != tt.wantAttempt {
				t.Fatalf("message finished at attempt %d, want %d (one retry, skipped)", last, tt.wantAttempt)
			}
		})
	}
}

func TestStackShutdownDuringBackoff(t *testing.T) {
	e := newEnv(t)
	var dl deadLetters
	waiting := make(chan struct{}, 1)
	retry := middleware.RetryConfig{
		InitialInterval: time.Hour,
		OnRetry: func(context.Context, *mq.Message, error, time.Duration) {
			waiting <- struct{}{}
		},
	}
	var calls atomic.Int32
	h := mq.HandlerFunc(func(context.Context, *mq.Message) error { calls.Add(1); return errBoom })
	stack := middleware.Stack(middleware.StackConfig{
		DeadLetter: dl.middleware(),
		Retry:      retry,
		Dedup:      newDedup(t, idempotency.NewMemoryStore(idempotency.MemoryStoreConfig{})),
	})
	stop := e.consume(t, mq.Chain(h, stack), mq.WithShutdownTimeout(20*time.Millisecond))
	e.produce(t, &mq.Message{ID: "pay-1"})
	select {
	case <-waiting:
	case <-time.After(10 * time.Second):
		t.Fatal("Retry never started waiting")
	}
	// Consume must return once the shutdown timeout cancels the handler
	// context, not an hour later; stop fails the test after 20s.
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	if n := calls.Load(); n != 1 {
		t.Fatalf("handler ran %d times, want 1", n)
	}
	if msgs, _ := dl.snapshot(); len(msgs) != 0 {
		t.Fatal("a message interrupted by shutdown was dead-lettered")
	}
	for _, s := range e.b.Stats() {
		if s.Topic == e.topic && (s.Ready != 1 || s.Unacked != 0) {
			t.Fatalf("after shutdown: %+v, want the message back in the broker (ready 1)", s)
		}
	}
}

func TestStackThrottleOutermost(t *testing.T) {
	// With a burst of 2 and a rate that never refills within the test,
	// exactly two of five messages are handled, however often they fail
	// and are retried inside.
	e := newEnv(t)
	var calls atomic.Int32
	var handled sync.Map
	h := mq.HandlerFunc(func(_ context.Context, m *mq.Message) error {
		calls.Add(1)
		if m.Attempt < 3 {
			return errBoom
		}
		handled.Store(m.ID, true)
		return nil
	})
	stack := middleware.Stack(middleware.StackConfig{RatePerSecond: 0.001, Burst: 2, Retry: fastRetry})
	stop := e.consume(t, mq.Chain(h, stack), mq.WithShutdownTimeout(20*time.Millisecond))
	for i := range 5 {
		e.produce(t, &mq.Message{ID: fmt.Sprint(i), Key: "k"})
	}
	deadline := time.Now().Add(10 * time.Second)
	for calls.Load() < 6 && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	time.Sleep(50 * time.Millisecond) // would let a third message through if the throttle leaked
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	if n := calls.Load(); n != 6 {
		t.Fatalf("handler ran %d times, want 6 (two messages, three attempts each)", n)
	}
	n := 0
	handled.Range(func(any, any) bool { n++; return true })
	if n != 2 {
		t.Fatalf("%d messages handled, want 2", n)
	}
}
