package middleware

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mqkit/mq"
	"github.com/mqkit/mq/idempotency"
)

var errBoom = errors.New("boom")

// failing returns a handler that returns results[i] on its i-th call (nil
// after the last) and records the Attempt of each call.
func failing(results ...error) (mq.Handler, *[]int) {
	var attempts []int
	return mq.HandlerFunc(func(_ context.Context, m *mq.Message) error {
		attempts = append(attempts, m.Attempt)
		if i := len(attempts) - 1; i < len(results) {
			return results[i]
		}
		return nil
	}), &attempts
}

func repeat(err error, n int) []error {
	out := make([]error, n)
	for i := range out {
		out[i] = err
	}
	return out
}

func TestRetry(t *testing.T) {
	fast := RetryConfig{InitialInterval: time.Millisecond, MaxInterval: 2 * time.Millisecond, Jitter: JitterNone}
	with := func(f func(*RetryConfig)) RetryConfig { c := fast; f(&c); return c }
	busy := fmt.Errorf("claim: %w", idempotency.ErrBusy)
	down := fmt.Errorf("claim: %w: connection refused", mq.ErrUnavailable)

	tests := []struct {
		name         string
		cfg          RetryConfig
		attempt      int // m.Attempt on entry
		results      []error
		wantAttempts []int // Attempt seen by each call
		wantErr      error // errors.Is target; nil means success
		wantExhaust  bool  // a *RetryError
		wantHeader   bool  // HeaderFirstFailure set
	}{
		{name: "success first time", cfg: fast, attempt: 1,
			wantAttempts: []int{1}},
		{name: "success on third call", cfg: fast, attempt: 1, results: repeat(errBoom, 2),
			wantAttempts: []int{1, 2, 3}, wantHeader: true},
		{name: "default budget is five calls", cfg: fast, attempt: 1, results: repeat(errBoom, 10),
			wantAttempts: []int{1, 2, 3, 4, 5}, wantErr: errBoom, wantExhaust: true, wantHeader: true},
		{name: "MaxAttempts 4 exhausts with Attempt 4", cfg: with(func(c *RetryConfig) { c.MaxAttempts = 4 }), attempt: 1, results: repeat(errBoom, 10),
			wantAttempts: []int{1, 2, 3, 4}, wantErr: errBoom, wantExhaust: true, wantHeader: true},
		{name: "MaxAttempts 1 means no retry", cfg: with(func(c *RetryConfig) { c.MaxAttempts = 1 }), attempt: 1, results: repeat(errBoom, 10),
			wantAttempts: []int{1}, wantErr: errBoom, wantExhaust: true, wantHeader: true},
		{name: "permanent error is not retried", cfg: fast, attempt: 1, results: []error{mq.Permanent(errBoom)},
			wantAttempts: []int{1}, wantErr: errBoom, wantHeader: true},
		{name: "ShouldRetry false is not retried", cfg: with(func(c *RetryConfig) { c.ShouldRetry = func(err error) bool { return !errors.Is(err, errBoom) } }),
			attempt: 1, results: repeat(errBoom, 10),
			wantAttempts: []int{1}, wantErr: errBoom, wantHeader: true},
		{name: "ShouldRetry true is retried", cfg: with(func(c *RetryConfig) { c.ShouldRetry = func(err error) bool { return errors.Is(err, errBoom) } }),
			attempt: 1, results: repeat(errBoom, 1),
			wantAttempts: []int{1, 2}, wantHeader: true},
		{name: "redelivery continues the budget", cfg: with(func(c *RetryConfig) { c.MaxAttempts = 4 }), attempt: 3, results: repeat(errBoom, 10),
			wantAttempts: []int{3, 4}, wantErr: errBoom, wantExhaust: true, wantHeader: true},
		{name: "redelivery past the budget still gets one call", cfg: with(func(c *RetryConfig) { c.MaxAttempts = 2 }), attempt: 7, results: repeat(errBoom, 10),
			wantAttempts: []int{7}, wantErr: errBoom, wantExhaust: true, wantHeader: true},
		{name: "attempt 0 counts as the first", cfg: with(func(c *RetryConfig) { c.MaxAttempts = 2 }), attempt: 0, results: repeat(errBoom, 10),
			wantAttempts: []int{1, 2}, wantErr: errBoom, wantExhaust: true, wantHeader: true},
		{name: "busy waits without using attempts", cfg: with(func(c *RetryConfig) { c.MaxAttempts = 1 }), attempt: 1, results: repeat(busy, 3),
			wantAttempts: []int{1, 1, 1, 1}},
		{name: "busy then failures", cfg: with(func(c *RetryConfig) { c.MaxAttempts = 2 }), attempt: 1, results: []error{busy, errBoom, busy, errBoom},
			wantAttempts: []int{1, 1, 2, 2}, wantErr: errBoom, wantExhaust: true, wantHeader: true},
		{name: "in progress (any source) waits like busy", cfg: with(func(c *RetryConfig) { c.MaxAttempts = 1 }), attempt: 1, results: repeat(fmt.Errorf("lock: %w", mq.ErrInProgress), 3),
			wantAttempts: []int{1, 1, 1, 1}},
		{name: "unavailable waits without using attempts", cfg: with(func(c *RetryConfig) { c.MaxAttempts = 1 }), attempt: 1, results: repeat(down, 3),
			wantAttempts: []int{1, 1, 1, 1}},
		{name: "unavailable then failures", cfg: with(func(c *RetryConfig) { c.MaxAttempts = 2 }), attempt: 1, results: []error{down, errBoom, down, errBoom},
			wantAttempts: []int{1, 1, 2, 2}, wantErr: errBoom, wantExhaust: true, wantHeader: true},
		{name: "unavailable ignores ShouldRetry", cfg: with(func(c *RetryConfig) { c.ShouldRetry = func(error) bool { return false } }), attempt: 1, results: repeat(down, 2),
			wantAttempts: []int{1, 1, 1}},
		{name: "permanent unavailable is not retried", cfg: fast, attempt: 1, results: []error{mq.Permanent(down)},
			wantAttempts: []int{1}, wantErr: mq.ErrUnavailable, wantHeader: true},
		{name: "busy ignores ShouldRetry", cfg: with(func(c *RetryConfig) { c.ShouldRetry = func(error) bool { return false } }), attempt: 1, results: repeat(busy, 2),
			wantAttempts: []int{1, 1, 1}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h, attempts := failing(tt.results...)
			m := &mq.Message{ID: "m1", Attempt: tt.attempt}
			err := Retry(tt.cfg)(h).Handle(context.Background(), m)
			if fmt.Sprint(*attempts) != fmt.Sprint(tt.wantAttempts) {
				t.Errorf("calls saw attempts %v, want %v", *attempts, tt.wantAttempts)
			}
			if want := tt.wantAttempts[len(tt.wantAttempts)-1]; m.Attempt != want {
				t.Errorf("m.Attempt = %d after Retry, want %d", m.Attempt, want)
			}
			switch {
			case tt.wantErr == nil && err != nil:
				t.Fatalf("err = %v, want nil", err)
			case tt.wantErr != nil && !errors.Is(err, tt.wantErr):
				t.Fatalf("err = %v, want one wrapping %v", err, tt.wantErr)
			}
			var re *RetryError
			if got := errors.As(err, &re); got != tt.wantExhaust {
				t.Fatalf("err = %v (%T): RetryError %v, want %v", err, err, got, tt.wantExhaust)
			}
			if tt.wantExhaust {
				if !errors.Is(err, ErrRetriesExhausted) {
					t.Errorf("RetryError does not match ErrRetriesExhausted")
				}
				if re.Attempts != m.Attempt {
					t.Errorf("RetryError.Attempts = %d, want %d", re.Attempts, m.Attempt)
				}
				if want := fmt.Sprintf("after %d attempts", m.Attempt); !strings.Contains(err.Error(), want) {
					t.Errorf("error %q does not say %q", err, want)
				}
			}
			if tt.wantErr != nil && mq.IsPermanent(tt.results[0]) && !mq.IsPermanent(err) {
				t.Errorf("permanent mark lost: %v", err)
			}
			hdr := m.Header(HeaderFirstFailure)
			if (hdr != "") != tt.wantHeader {
				t.Fatalf("%s = %q, want set: %v", HeaderFirstFailure, hdr, tt.wantHeader)
			}
			if hdr != "" {
				ts, err := time.Parse(time.RFC3339Nano, hdr)
				if err != nil || ts.Location() != time.UTC || time.Since(ts) > time.Minute || time.Since(ts) < 0 {
					t.Errorf("%s = %q: not a recent UTC RFC 3339 time (%v)", HeaderFirstFailure, hdr, err)
				}
			}
		})
	}
}

func TestRetryKeepsExistingFirstFailure(t *testing.T) {
	h, _ := failing(errBoom)
	m := &mq.Message{Attempt: 1, Headers: map[string]string{HeaderFirstFailure: "2001-02-03T04:05:06Z"}}
	if err := Retry(RetryConfig{InitialInterval: time.Millisecond})(h).Handle(context.Background(), m); err != nil {
		t.Fatal(err)
	}
	if got := m.Header(HeaderFirstFailure); got != "2001-02-03T04:05:06Z" {
		t.Fatalf("%s = %q, want the earlier failure kept", HeaderFirstFailure, got)
	}
}

func TestRetryOnRetry(t *testing.T) {
	type call struct {
		attempt int
		err     error
		wait    time.Duration
	}
	var calls []call
	cfg := RetryConfig{
		MaxAttempts: 4, InitialInterval: time.Millisecond, Multiplier: 3, Jitter: JitterNone,
		OnRetry: func(_ context.Context, m *mq.Message, err error, wait time.Duration) {
			calls = append(calls, call{m.Attempt, err, wait})
		},
	}
	h, _ := failing(repeat(errBoom, 10)...)
	_ = Retry(cfg)(h).Handle(context.Background(), &mq.Message{Attempt: 1})
	want := []call{{1, errBoom, time.Millisecond}, {2, errBoom, 3 * time.Millisecond}, {3, errBoom, 9 * time.Millisecond}}
	if fmt.Sprint(calls) != fmt.Sprint(want) {
		t.Fatalf("OnRetry calls = %v, want %v", calls, want)
	}
}

func TestRetryBackoff(t *testing.T) {
	base := RetryConfig{InitialInterval: 100 * time.Millisecond, MaxInterval: time.Second}
	tests := []struct {
		name   string
		jitter Jitter
		mult   float64
		n      int
		lo, hi time.Duration
	}{
		{"none first", JitterNone, 0, 1, 100 * time.Millisecond, 100 * time.Millisecond},
		{"none doubles", JitterNone, 0, 3, 400 * time.Millisecond, 400 * time.Millisecond},
		{"none capped", JitterNone, 0, 10, time.Second, time.Second},
		{"none huge n capped", JitterNone, 0, 100000, time.Second, time.Second},
		{"constant when multiplier below 1", JitterNone, 0.5, 5, 100 * time.Millisecond, 100 * time.Millisecond},
		{"equal", JitterEqual, 0, 2, 100 * time.Millisecond, 200 * time.Millisecond},
		{"equal capped", JitterEqual, 0, 50, 500 * time.Millisecond, time.Second},
		{"full", JitterFull, 0, 2, 0, 200 * time.Millisecond},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := base
			cfg.Jitter, cfg.Multiplier = tt.jitter, tt.mult
			r := Retry(cfg)(nil).(*retry)
			var seen = map[time.Duration]bool{}
			for range 200 {
				d := r.backoff(tt.n)
				if d < tt.lo || d > tt.hi {
					t.Fatalf("backoff(%d) = %v, want within [%v, %v]", tt.n, d, tt.lo, tt.hi)
				}
				seen[d] = true
			}
			if tt.lo != tt.hi && len(seen) < 10 {
				t.Fatalf("backoff(%d) took only %d distinct values in 200 draws: not jittered", tt.n, len(seen))
			}
		})
	}
}

func TestRetryMaxElapsedTime(t *testing.T) {
	h, attempts := failing(repeat(errBoom, 1000)...)
	cfg := RetryConfig{MaxAttempts: 1000, InitialInterval: 10 * time.Millisecond, Multiplier: 1, Jitter: JitterNone, MaxElapsedTime: 60 * time.Millisecond}
	err := Retry(cfg)(h).Handle(context.Background(), &mq.Message{Attempt: 1})
	var re *RetryError
	if !errors.As(err, &re) || !errors.Is(err, errBoom) {
		t.Fatalf("err = %v, want a RetryError wrapping errBoom", err)
	}
	if n := len(*attempts); n < 1 || n > 7 {
		t.Fatalf("%d calls: MaxElapsedTime 60ms with 10ms waits allows at most 7", n)
	}
}

// TestRetryMaxElapsedTimeNotAnAttempt: when MaxElapsedTime runs out on an
// error that was not an attempt (a claim busy elsewhere, a store down),
// Retry returns that error as it is: never a RetryError, never "retries
// exhausted", and Attempt is untouched. Before, a busy claim came back as
// a RetryError, and a store outage used up attempts.
func TestRetryMaxElapsedTimeNotAnAttempt(t *testing.T) {
	for _, notAttempt := range []error{
		fmt.Errorf("claim: %w", idempotency.ErrBusy),
		fmt.Errorf("claim: %w", mq.ErrUnavailable),
	} {
		h, attempts := failing(repeat(notAttempt, 1000)...)
		cfg := RetryConfig{MaxAttempts: 2, InitialInterval: 10 * time.Millisecond, Multiplier: 1, Jitter: JitterNone, MaxElapsedTime: 60 * time.Millisecond}
		m := &mq.Message{Attempt: 1}
		err := Retry(cfg)(h).Handle(context.Background(), m)
		var re *RetryError
		if err != notAttempt || errors.As(err, &re) || errors.Is(err, ErrRetriesExhausted) {
			t.Fatalf("err = %v (%T), want %v itself", err, err, notAttempt)
		}
		if n := len(*attempts); n < 2 || m.Attempt != 1 || m.Header(HeaderFirstFailure) != "" {
			t.Fatalf("%d calls, Attempt %d, first failure %q: want several calls at Attempt 1, no failure recorded", n, m.Attempt, m.Header(HeaderFirstFailure))
		}
	}
}

func TestRetryStopsWhenContextEnds(t *testing.T) {
	t.Run("during the wait", func(t *testing.T) {
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		waiting := make(chan struct{})
		cfg := RetryConfig{InitialInterval: time.Hour, OnRetry: func(context.Context, *mq.Message, error, time.Duration) { close(waiting) }}
		h, attempts := failing(repeat(errBoom, 10)...)
		m := &mq.Message{Attempt: 1}
		done := make(chan error, 1)
		go func() { done <- Retry(cfg)(h).Handle(ctx, m) }()
		<-waiting
		cancel()
		select {
		case err := <-done:
			if !errors.Is(err, errBoom) || errors.Is(err, ErrRetriesExhausted) {
				t.Fatalf("err = %v, want the last handler error", err)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("Retry still waiting 10s after its context was cancelled")
		}
		if len(*attempts) != 1 || m.Attempt != 1 {
			t.Fatalf("calls %v, Attempt %d: want one call", *attempts, m.Attempt)
		}
	})
	t.Run("during the call", func(t *testing.T) {
		ctx, cancel := context.WithCancel(context.Background())
		var calls int
		h := mq.HandlerFunc(func(ctx context.Context, m *mq.Message) error {
			calls++
			cancel()
			return ctx.Err()
		})
		err := Retry(RetryConfig{InitialInterval: time.Millisecond})(h).Handle(ctx, &mq.Message{Attempt: 1})
		if !errors.Is(err, context.Canceled) || calls != 1 {
			t.Fatalf("err = %v after %d calls, want context.Canceled after 1", err, calls)
		}
	})
}

func TestRetryConcurrentMessages(t *testing.T) {
	// One Retry middleware serves many messages at once: no shared state.
	h := mq.HandlerFunc(func(_ context.Context, m *mq.Message) error {
		if m.Attempt < 3 {
			return errBoom
		}
		return nil
	})
	rh := Retry(RetryConfig{InitialInterval: time.Millisecond})(h)
	var wg sync.WaitGroup
	for i := range 20 {
		wg.Go(func() {
			m := &mq.Message{ID: fmt.Sprint(i), Attempt: 1}
			if err := rh.Handle(context.Background(), m); err != nil || m.Attempt != 3 {
				t.Errorf("message %d: err %v, attempt %d", i, err, m.Attempt)
			}
		})
	}
	wg.Wait()
}
