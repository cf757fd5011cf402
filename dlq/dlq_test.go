package dlq_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/mqkit/mq"
	"github.com/mqkit/mq/dlq"
	"github.com/mqkit/mq/idempotency"
	"github.com/mqkit/mq/memory"
	"github.com/mqkit/mq/middleware"
)

// wait bounds every wait for something to happen; it is never an assertion
// about speed.
const wait = 20 * time.Second

// settle is how long a test watches for something that must not happen.
const settle = 300 * time.Millisecond

type env struct {
	b *memory.Broker
	c *mq.Client
}

func newEnv(t *testing.T) *env { return newEnvConfig(t, memory.Config{}) }

func newEnvConfig(t *testing.T, cfg memory.Config) *env {
	t.Helper()
	b := memory.NewBroker(cfg)
	c := mq.NewClient(b.Conn(), mq.WithNackBackoff(5*time.Millisecond, 20*time.Millisecond))
	t.Cleanup(func() {
		_ = c.Close()
		_ = b.Close()
	})
	return &env{b: b, c: c}
}

func testCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 2*wait)
	t.Cleanup(cancel)
	return ctx
}

// consume runs a consumer loop on topic in group until the test ends.
func (e *env) consume(t *testing.T, topic, group string, h mq.Handler) {
	t.Helper()
	cons, err := e.c.Consumer(testCtx(t), topic, mq.WithGroup(group))
	if err != nil {
		t.Fatalf("Consumer(%q, %q): %v", topic, group, err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- cons.Consume(ctx, h) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Consume(%q, %q): %v", topic, group, err)
		}
		_ = cons.Close()
	})
}

func (e *env) produce(t *testing.T, topic string, msgs ...*mq.Message) {
	t.Helper()
	if err := e.c.Producer().Produce(testCtx(t), topic, msgs...); err != nil {
		t.Fatalf("Produce(%q): %v", topic, err)
	}
}

// settled reports whether group on topic holds no message at all.
func (e *env) settled(topic, group string) bool {
	for _, s := range e.b.Stats() {
		if s.Topic == topic && s.Group == group {
			return s.Ready == 0 && s.Unacked == 0
		}
	}
	return false
}

// recorder collects the messages a handler sees.
type recorder struct {
	mu   sync.Mutex
	msgs []*mq.Message
	more chan struct{}
}

func newRecorder() *recorder { return &recorder{more: make(chan struct{}, 1)} }

func (r *recorder) Handle(_ context.Context, m *mq.Message) error {
	r.mu.Lock()
	r.msgs = append(r.msgs, m.Clone())
	r.mu.Unlock()
	select {
	case r.more <- struct{}{}:
	default:
	}
	return nil
}

func (r *recorder) snapshot() []*mq.Message {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.msgs)
}

// waitN waits until at least n messages arrived, then watches for settle
// to catch extra ones, and returns all of them.
func (r *recorder) waitN(t *testing.T, n int) []*mq.Message {
	t.Helper()
	deadline := time.After(wait)
	for len(r.snapshot()) < n {
		select {
		case <-r.more:
		case <-deadline:
			t.Fatalf("got %d messages, want %d", len(r.snapshot()), n)
		}
	}
	time.Sleep(settle)
	return r.snapshot()
}

// flakyProducer fails the first failures publishes, then delegates.
type flakyProducer struct {
	mq.Producer
	failures atomic.Int32
	calls    atomic.Int32
}

var errBrokerDown = errors.New("test: dead-letter broker unavailable")

func (p *flakyProducer) Produce(ctx context.Context, topic string, msgs ...*mq.Message) error {
	if p.calls.Add(1) <= p.failures.Load() {
		return errBrokerDown
	}
	return p.Producer.Produce(ctx, topic, msgs...)
}

func TestRetryHeaderName(t *testing.T) {
	if dlq.HeaderRetryFirstFailure != middleware.HeaderFirstFailure {
		t.Fatalf("dlq reads %q, middleware.Retry writes %q", dlq.HeaderRetryFirstFailure, middleware.HeaderFirstFailure)
	}
}

func TestNewRejectsBadConfig(t *testing.T) {
	e := newEnv(t)
	tests := []struct {
		name string
		cfg  dlq.Config
	}{
		{"neither client nor producer", dlq.Config{}},
		{"negative max attempts", dlq.Config{Producer: e.c.Producer(), MaxAttempts: -1}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			mw, err := dlq.New(tc.cfg)
			if !errors.Is(err, dlq.ErrInvalidConfig) || mw != nil {
				t.Fatalf("New = %v, %v; want nil, ErrInvalidConfig", mw != nil, err)
			}
		})
	}
}

// TestDeadLetters runs a real consumer loop whose handler fails and checks
// the dead letter that results: one copy, every header, the original
// acknowledged.
func TestDeadLetters(t *testing.T) {
	errBoom := errors.New("boom")
	tests := []struct {
		name        string
		handler     mq.HandlerFunc
		pubFailures int32 // dead-letter publishes that fail first
		maxAttempts int
		inner       mq.Middleware // between the dead-letter layer and the handler
		wantReason  string
		wantError   string
		wantStack   bool
		wantCalls   int32 // handler calls
		wantAttempt string
	}{
		{
			name:        "error",
			handler:     func(context.Context, *mq.Message) error { return errBoom },
			wantReason:  dlq.ReasonError,
			wantError:   "boom",
			wantCalls:   1,
			wantAttempt: "1",
		},
		{
			name:        "permanent",
			handler:     func(context.Context, *mq.Message) error { return mq.Permanent(errBoom) },
			wantReason:  dlq.ReasonPermanent,
			wantError:   "boom",
			wantCalls:   1,
			wantAttempt: "1",
		},
		{
			name:        "panic",
			handler:     func(context.Context, *mq.Message) error { panic("kaboom") },
			wantReason:  dlq.ReasonPanic,
			wantError:   "kaboom",
			wantStack:   true,
			wantCalls:   1,
			wantAttempt: "1",
		},
		{
			name:        "retries exhausted",
			handler:     func(context.Context, *mq.Message) error { return errBoom },
			inner:       middleware.Retry(middleware.RetryConfig{MaxAttempts: 3, InitialInterval: time.Millisecond}),
			wantReason:  dlq.ReasonError,
			wantError:   "gave up after 3 attempts",
			wantCalls:   3,
			wantAttempt: "3",
		},
		{
			name:        "panic inside retry",
			handler:     func(context.Context, *mq.Message) error { panic("kaboom") },
			inner:       middleware.Stack(middleware.StackConfig{Retry: middleware.RetryConfig{MaxAttempts: 2, InitialInterval: time.Millisecond}}),
			wantReason:  dlq.ReasonPanic,
			wantError:   "kaboom",
			wantStack:   true,
			wantCalls:   2,
			wantAttempt: "2",
		},
		{
			name:        "publish fails then succeeds",
			handler:     func(context.Context, *mq.Message) error { return errBoom },
			pubFailures: 2,
			wantReason:  dlq.ReasonError,
			wantError:   "boom",
			wantCalls:   1, // the publish is retried, not the handler
			wantAttempt: "1",
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t)
			const src, group = "orders", "billing"
			dlqTopic := dlq.DefaultTopic(src)
			if err := dlq.Ensure(testCtx(t), e.c, dlqTopic); err != nil {
				t.Fatal(err)
			}
			dead := newRecorder()
			e.consume(t, dlqTopic, "check", dead)

			prod := &flakyProducer{Producer: e.c.Producer()}
			prod.failures.Store(tc.pubFailures)
			var notified atomic.Int32
			mw, err := dlq.New(dlq.Config{
				Producer:       prod,
				Group:          group,
				MaxAttempts:    tc.maxAttempts,
				PublishBackoff: time.Millisecond,
				OnDeadLetter:   func(context.Context, *mq.Message, error) { notified.Add(1) },
			})
			if err != nil {
				t.Fatal(err)
			}
			var calls atomic.Int32
			h := mq.HandlerFunc(func(ctx context.Context, m *mq.Message) error {
				calls.Add(1)
				return tc.handler(ctx, m)
			})
			e.consume(t, src, group, mq.Chain(h, mw, tc.inner))

			before := time.Now().UTC()
			orig := &mq.Message{ID: "order-1", Key: "customer-7", Body: []byte("\x00{\"total\":12}\xff"), Headers: map[string]string{"trace": "abc", "tenant": "t1"}}
			e.produce(t, src, orig)

			got := dead.waitN(t, 1)
			if len(got) != 1 {
				t.Fatalf("%d dead letters, want exactly 1", len(got))
			}
			d := got[0]
			if d.ID != orig.ID || d.Key != orig.Key || string(d.Body) != string(orig.Body) {
				t.Errorf("dead letter %q/%q/%q, want the original's ID, key and body", d.ID, d.Key, d.Body)
			}
			for k, v := range orig.Headers {
				if d.Header(k) != v {
					t.Errorf("header %s = %q, want %q", k, d.Header(k), v)
				}
			}
			info := dlq.Describe(d)
			if info.Topic != src || info.Group != group || info.Reason != tc.wantReason {
				t.Errorf("topic/group/reason = %q/%q/%q, want %q/%q/%q", info.Topic, info.Group, info.Reason, src, group, tc.wantReason)
			}
			if !strings.Contains(info.Error, tc.wantError) {
				t.Errorf("error header %q does not contain %q", info.Error, tc.wantError)
			}
			if d.Header(dlq.HeaderAttempts) != tc.wantAttempt {
				t.Errorf("attempts header %q, want %q", d.Header(dlq.HeaderAttempts), tc.wantAttempt)
			}
			if tc.wantStack != (info.PanicStack != "") {
				t.Errorf("panic stack present = %v, want %v", info.PanicStack != "", tc.wantStack)
			}
			if tc.wantStack && !strings.Contains(info.PanicStack, "goroutine") {
				t.Errorf("panic stack %q does not look like a stack", info.PanicStack)
			}
			if info.LastFailure.Before(before) || info.FirstFailure.After(info.LastFailure) {
				t.Errorf("first/last failure %v/%v, want first <= last, last after %v", info.FirstFailure, info.LastFailure, before)
			}
			if tc.inner != nil && !info.FirstFailure.Before(info.LastFailure) {
				t.Errorf("first failure %v not before last %v: Retry's first-failure header was not used", info.FirstFailure, info.LastFailure)
			}
			if d.Header(dlq.HeaderTimestamp) == "" {
				t.Error("no original timestamp header")
			}
			if _, ok := d.Headers[dlq.HeaderRetryFirstFailure]; ok {
				t.Errorf("dead letter carries retry bookkeeping header %s", dlq.HeaderRetryFirstFailure)
			}
			if c := calls.Load(); c != tc.wantCalls {
				t.Errorf("handler ran %d times, want %d", c, tc.wantCalls)
			}
			if n := notified.Load(); n != 1 {
				t.Errorf("OnDeadLetter called %d times, want 1", n)
			}
			if !e.settled(src, group) {
				t.Errorf("source group still holds the message: %+v", e.b.Stats())
			}
		})
	}
}

func TestDirectHandle(t *testing.T) {
	errBoom := errors.New("boom")
	cancelled, cancel := context.WithCancel(context.Background())
	cancel()
	tests := []struct {
		name        string
		ctx         context.Context
		attempt     int
		topic       string
		handlerErr  error
		wantErr     error // errors.Is target; nil means success
		wantCalls   int
		wantPublish int
	}{
		{"success passes through", context.Background(), 1, "t", nil, nil, 1, 0},
		{"failure is dead-lettered", context.Background(), 1, "t", errBoom, nil, 1, 1},
		{"shutdown is not dead-lettered", cancelled, 1, "t", context.Canceled, context.Canceled, 1, 0},
		{"over max attempts skips the handler", context.Background(), 4, "t", nil, nil, 0, 1},
		{"no topic is an error, not a drop", context.Background(), 1, "", errBoom, errBoom, 1, 0},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t)
			prod := &flakyProducer{Producer: e.c.Producer()}
			mw, err := dlq.New(dlq.Config{Producer: prod, MaxAttempts: 3})
			if err != nil {
				t.Fatal(err)
			}
			calls := 0
			h := mq.Chain(mq.HandlerFunc(func(context.Context, *mq.Message) error {
				calls++
				return tc.handlerErr
			}), mw)
			err = h.Handle(tc.ctx, &mq.Message{ID: "m1", Topic: tc.topic, Attempt: tc.attempt})
			if (tc.wantErr == nil) != (err == nil) || (tc.wantErr != nil && !errors.Is(err, tc.wantErr)) {
				t.Errorf("Handle = %v, want %v", err, tc.wantErr)
			}
			if calls != tc.wantCalls || int(prod.calls.Load()) != tc.wantPublish {
				t.Errorf("handler calls %d, publishes %d; want %d, %d", calls, prod.calls.Load(), tc.wantCalls, tc.wantPublish)
			}
		})
	}
}

// TestPublishFailureWrapsBoth: when the dead-letter publish cannot succeed
// (a final error, or the context ends while it is retried), the error
// returned wraps both the publish error and the handler's.
func TestPublishFailureWrapsBoth(t *testing.T) {
	errBoom := errors.New("boom")
	tests := []struct {
		name      string
		pubErr    error
		timeout   time.Duration
		wantCalls int32 // publish attempts; 0 means more than one
	}{
		{"final publish error", fmt.Errorf("too big: %w", mq.ErrMessageTooLarge), 0, 1},
		{"context ends while retrying", errBrokerDown, 200 * time.Millisecond, 0},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var calls atomic.Int32
			prod := producerFunc(func(context.Context, string, ...*mq.Message) error { calls.Add(1); return tc.pubErr })
			mw, err := dlq.New(dlq.Config{Producer: prod, PublishBackoff: time.Millisecond, MaxPublishBackoff: 10 * time.Millisecond, Logger: discard})
			if err != nil {
				t.Fatal(err)
			}
			ctx := context.Background()
			if tc.timeout > 0 {
				var cancel context.CancelFunc
				ctx, cancel = context.WithTimeout(ctx, tc.timeout)
				defer cancel()
			}
			h := mw(mq.HandlerFunc(func(context.Context, *mq.Message) error { return mq.Permanent(errBoom) }))
			err = h.Handle(ctx, &mq.Message{ID: "m1", Topic: "t", Attempt: 1})
			if !errors.Is(err, tc.pubErr) || !errors.Is(err, errBoom) {
				t.Fatalf("Handle = %v, want an error wrapping both the publish and the handler error", err)
			}
			if n := calls.Load(); (tc.wantCalls > 0 && n != tc.wantCalls) || (tc.wantCalls == 0 && n < 2) {
				t.Fatalf("%d publish attempts, want %d (0: several)", n, tc.wantCalls)
			}
		})
	}
}

// TestPublishRetriedNotHandler: a dead-letter publish that fails N times is
// retried in place until it is accepted; the handler, whose side effects
// already happened, runs once, and every failure is logged. Before, the
// whole chain was retried: the handler ran N+1 times.
func TestPublishRetriedNotHandler(t *testing.T) {
	const failures = 4
	e := newEnv(t)
	const src, group = "orders", "billing"
	dlqTopic := dlq.DefaultTopic(src)
	if err := dlq.Ensure(testCtx(t), e.c, dlqTopic); err != nil {
		t.Fatal(err)
	}
	dead := newRecorder()
	e.consume(t, dlqTopic, "check", dead)
	prod := &flakyProducer{Producer: e.c.Producer()}
	prod.failures.Store(failures)
	var logs syncBuffer
	mw, err := dlq.New(dlq.Config{
		Producer: prod, Group: group, PublishBackoff: time.Millisecond, MaxPublishBackoff: 20 * time.Millisecond,
		Logger: slog.New(slog.NewTextHandler(&logs, nil)),
	})
	if err != nil {
		t.Fatal(err)
	}
	var calls atomic.Int32
	e.consume(t, src, group, mq.Chain(mq.HandlerFunc(func(context.Context, *mq.Message) error {
		calls.Add(1) // say, the card was charged, then the receipt failed
		return errors.New("receipt service down")
	}), mw))
	e.produce(t, src, &mq.Message{ID: "pay-1"})
	got := dead.waitN(t, 1)
	if len(got) != 1 || got[0].ID != "pay-1" {
		t.Fatalf("dead letters %v, want exactly pay-1", ids(got))
	}
	if n := calls.Load(); n != 1 {
		t.Errorf("handler ran %d times, want 1: a failed dead-letter publish re-ran it", n)
	}
	if n := prod.calls.Load(); n != failures+1 {
		t.Errorf("%d publishes, want %d", n, failures+1)
	}
	if n := strings.Count(logs.String(), "dead-letter publish failed; retrying"); n != failures {
		t.Errorf("%d publish failures logged, want %d:\n%s", n, failures, logs.String())
	}
	if got[0].Header(dlq.HeaderAttempts) != "1" {
		t.Errorf("attempts header %q, want 1", got[0].Header(dlq.HeaderAttempts))
	}
	if !e.settled(src, group) {
		t.Errorf("source group still holds the message: %+v", e.b.Stats())
	}
}

// TestPublishRetryStopsAtShutdown: a dead-letter publish that keeps failing
// is retried until the consumer shuts down; then the message goes back to
// the broker, unacknowledged, and Consume returns promptly.
func TestPublishRetryStopsAtShutdown(t *testing.T) {
	e := newEnv(t)
	var pubs atomic.Int32
	prod := producerFunc(func(context.Context, string, ...*mq.Message) error { pubs.Add(1); return errBrokerDown })
	mw, err := dlq.New(dlq.Config{Producer: prod, PublishBackoff: time.Millisecond, MaxPublishBackoff: 5 * time.Millisecond, Logger: discard})
	if err != nil {
		t.Fatal(err)
	}
	cons, err := e.c.Consumer(testCtx(t), "t", mq.WithGroup("g"), mq.WithShutdownTimeout(wait))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	var calls atomic.Int32
	go func() {
		done <- cons.Consume(ctx, mw(mq.HandlerFunc(func(context.Context, *mq.Message) error { calls.Add(1); return errors.New("boom") })))
	}()
	e.produce(t, "t", &mq.Message{ID: "m1"})
	deadline := time.Now().Add(wait)
	for pubs.Load() < 5 && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(wait / 2):
		t.Fatal("Consume did not return: the publish retry ignored the shutdown")
	}
	if n := calls.Load(); n != 1 {
		t.Errorf("handler ran %d times, want 1", n)
	}
	for _, s := range e.b.Stats() {
		if s.Topic == "t" && (s.Ready != 1 || s.Unacked != 0) {
			t.Errorf("after shutdown %+v, want the message back (ready 1)", s)
		}
	}
}

func TestHeadersAreTruncated(t *testing.T) {
	e := newEnv(t)
	if err := dlq.Ensure(testCtx(t), e.c, "t.dlq"); err != nil {
		t.Fatal(err)
	}
	mw, err := dlq.New(dlq.Config{Producer: e.c.Producer()})
	if err != nil {
		t.Fatal(err)
	}
	long := strings.Repeat("é", 10000) // 20000 bytes, two per rune
	h := mw(mq.HandlerFunc(func(context.Context, *mq.Message) error { return errors.New(long) }))
	if err := h.Handle(context.Background(), &mq.Message{ID: "m1", Topic: "t", Attempt: 1}); err != nil {
		t.Fatal(err)
	}
	got, err := dlq.List(testCtx(t), e.c, "t.dlq", 0, dlq.WithIdle(settle))
	if err != nil || len(got) != 1 {
		t.Fatalf("List = %d, %v", len(got), err)
	}
	msg := got[0].Header(dlq.HeaderError)
	if len(msg) > 2048 || !utf8.ValidString(msg) || !strings.HasSuffix(msg, "[truncated]") {
		t.Errorf("error header is %d bytes, valid UTF-8 %v, ends %q", len(msg), utf8.ValidString(msg), msg[max(0, len(msg)-20):])
	}
}

// deadLetter publishes a dead letter for a message of topic src, as the
// middleware would.
func deadLetter(t *testing.T, e *env, src string, id string, headers map[string]string) *mq.Message {
	t.Helper()
	mw, err := dlq.New(dlq.Config{Producer: e.c.Producer(), Group: "g"})
	if err != nil {
		t.Fatal(err)
	}
	m := &mq.Message{ID: id, Key: "k-" + id, Body: []byte("body " + id), Headers: headers, Topic: src, Attempt: 1}
	h := mw(mq.HandlerFunc(func(context.Context, *mq.Message) error { return errors.New("failed " + id) }))
	if err := h.Handle(context.Background(), m.Clone()); err != nil {
		t.Fatal(err)
	}
	return m
}

func ids(ms []*mq.Message) []string {
	out := make([]string, len(ms))
	for i, m := range ms {
		out[i] = m.ID
	}
	return out
}

func TestListLosesNothing(t *testing.T) {
	e := newEnv(t)
	const src = "orders"
	dlqTopic := dlq.DefaultTopic(src)
	if err := dlq.Ensure(testCtx(t), e.c, dlqTopic); err != nil {
		t.Fatal(err)
	}
	var want []string
	for i := range 5 {
		m := deadLetter(t, e, src, fmt.Sprintf("id-%d", i), map[string]string{"n": fmt.Sprint(i)})
		want = append(want, m.ID)
	}
	opt := dlq.WithIdle(settle)
	tests := []struct {
		name  string
		limit int
		want  []string
	}{
		{"all", 0, want},
		{"again, nothing lost", 100, want},
		{"limit", 2, want[:2]},
		{"after a limited list", 0, want},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := dlq.List(testCtx(t), e.c, dlqTopic, tc.limit, opt)
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(ids(got), tc.want) {
				t.Fatalf("List = %v, want %v", ids(got), tc.want)
			}
			for _, m := range got {
				if dlq.Describe(m).Topic != src || !strings.HasPrefix(dlq.Describe(m).Error, "failed ") {
					t.Errorf("%s: info %+v", m.ID, dlq.Describe(m))
				}
			}
		})
	}
	for _, s := range e.b.Stats() {
		if s.Topic == dlqTopic && (s.Ready != len(want) || s.Unacked != 0 || s.Members != 0) {
			t.Errorf("after List: %+v, want %d ready, 0 unacked, no members", s, len(want))
		}
	}
}

func TestRedriveRoundTrip(t *testing.T) {
	e := newEnv(t)
	const src = "orders"
	dlqTopic := dlq.DefaultTopic(src)
	if err := dlq.Ensure(testCtx(t), e.c, dlqTopic); err != nil {
		t.Fatal(err)
	}
	mw, err := dlq.New(dlq.Config{Producer: e.c.Producer(), Group: "svc"})
	if err != nil {
		t.Fatal(err)
	}
	// The handler fails the first time it sees each message (a bug, since
	// fixed), then succeeds.
	var mu sync.Mutex
	failed := map[string]bool{}
	ok := newRecorder()
	h := mq.HandlerFunc(func(ctx context.Context, m *mq.Message) error {
		mu.Lock()
		first := !failed[m.ID]
		failed[m.ID] = true
		mu.Unlock()
		if first {
			return mq.Permanent(errors.New("bug"))
		}
		return ok.Handle(ctx, m)
	})
	e.consume(t, src, "svc", mq.Chain(h, mw))
	orig := &mq.Message{ID: "order-42", Key: "cust-1", Body: []byte{0, 1, 2, 0xff}, Headers: map[string]string{"trace": "t-1", "unicode": "ünï"}}
	e.produce(t, src, orig.Clone())

	// Wait for the dead letter without consuming it.
	var listed []*mq.Message
	for deadline := time.Now().Add(wait); len(listed) == 0; {
		if time.Now().After(deadline) {
			t.Fatal("no dead letter")
		}
		if listed, err = dlq.List(testCtx(t), e.c, dlqTopic, 0, dlq.WithIdle(50*time.Millisecond)); err != nil {
			t.Fatal(err)
		}
	}
	res, err := dlq.Redrive(testCtx(t), e.c, dlqTopic, nil, dlq.WithIdle(settle))
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(res.Moved, []string{orig.ID}) || res.Kept != 0 {
		t.Fatalf("Redrive = %+v, want moved [%s]", res, orig.ID)
	}
	got := ok.waitN(t, 1)
	if len(got) != 1 {
		t.Fatalf("handled %d times after redrive, want 1", len(got))
	}
	m := got[0]
	want := maps.Clone(orig.Headers)
	want[dlq.HeaderRedriveCount] = "1"
	if m.ID != orig.ID || m.Key != orig.Key || string(m.Body) != string(orig.Body) || !maps.Equal(m.Headers, want) {
		t.Errorf("redriven message %q %q %q %v, want %q %q %q %v", m.ID, m.Key, m.Body, m.Headers, orig.ID, orig.Key, orig.Body, want)
	}
	if left, err := dlq.List(testCtx(t), e.c, dlqTopic, 0, dlq.WithIdle(settle)); err != nil || len(left) != 0 {
		t.Errorf("after redrive the DLQ holds %v (%v), want nothing", ids(left), err)
	}
}

func TestRedriveFilter(t *testing.T) {
	tests := []struct {
		name      string
		filter    func(*mq.Message) bool
		wantMoved []string
		wantKept  []string
	}{
		{"by ID", func(m *mq.Message) bool { return m.ID == "id-1" || m.ID == "id-3" }, []string{"id-1", "id-3"}, []string{"id-0", "id-2", "id-4"}},
		{"by header", func(m *mq.Message) bool { return m.Header("tenant") == "a" }, []string{"id-0", "id-2", "id-4"}, []string{"id-1", "id-3"}},
		{"none", func(*mq.Message) bool { return false }, nil, []string{"id-0", "id-1", "id-2", "id-3", "id-4"}},
		{"all", nil, []string{"id-0", "id-1", "id-2", "id-3", "id-4"}, nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t)
			const src = "payments"
			dlqTopic := dlq.DefaultTopic(src)
			if err := dlq.Ensure(testCtx(t), e.c, dlqTopic); err != nil {
				t.Fatal(err)
			}
			back := newRecorder()
			e.consume(t, src, "svc", back)
			originals := map[string]*mq.Message{}
			for i := range 5 {
				tenant := map[bool]string{true: "a", false: "b"}[i%2 == 0]
				m := deadLetter(t, e, src, fmt.Sprintf("id-%d", i), map[string]string{"tenant": tenant})
				originals[m.ID] = m
			}
			before, err := dlq.List(testCtx(t), e.c, dlqTopic, 0, dlq.WithIdle(settle))
			if err != nil {
				t.Fatal(err)
			}
			res, err := dlq.Redrive(testCtx(t), e.c, dlqTopic, tc.filter, dlq.WithIdle(settle))
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(res.Moved, tc.wantMoved) || res.Kept != len(tc.wantKept) {
				t.Errorf("Redrive = %+v, want moved %v, kept %d", res, tc.wantMoved, len(tc.wantKept))
			}
			got := back.waitN(t, len(tc.wantMoved))
			if !slices.Equal(ids(got), tc.wantMoved) {
				t.Errorf("source topic got %v, want %v", ids(got), tc.wantMoved)
			}
			for _, m := range got {
				o := originals[m.ID]
				if m.Key != o.Key || string(m.Body) != string(o.Body) || m.Header("tenant") != o.Header("tenant") || m.Header(dlq.HeaderTopic) != "" {
					t.Errorf("redriven %s: %q %q %v", m.ID, m.Key, m.Body, m.Headers)
				}
			}
			left, err := dlq.List(testCtx(t), e.c, dlqTopic, 0, dlq.WithIdle(settle))
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(ids(left), tc.wantKept) {
				t.Errorf("DLQ holds %v, want %v", ids(left), tc.wantKept)
			}
			// The kept dead letters are unchanged, headers and all.
			prev := map[string]*mq.Message{}
			for _, m := range before {
				prev[m.ID] = m
			}
			for _, m := range left {
				p := prev[m.ID]
				if m.Key != p.Key || string(m.Body) != string(p.Body) || !maps.Equal(m.Headers, p.Headers) {
					t.Errorf("kept %s changed: %v, was %v", m.ID, m.Headers, p.Headers)
				}
			}
		})
	}
}

// TestRedriveDuplicateIDs checks that a dead letter whose ID appears twice
// (an at-least-once duplicate) is moved once per call and never lost.
func TestRedriveDuplicateIDs(t *testing.T) {
	e := newEnv(t)
	dlqTopic := dlq.DefaultTopic("t")
	if err := dlq.Ensure(testCtx(t), e.c, dlqTopic); err != nil {
		t.Fatal(err)
	}
	back := newRecorder()
	e.consume(t, "t", "svc", back)
	deadLetter(t, e, "t", "dup", nil)
	deadLetter(t, e, "t", "dup", nil)
	deadLetter(t, e, "t", "other", nil)
	for i, want := range [][]string{{"dup", "other"}, {"dup"}, nil} {
		res, err := dlq.Redrive(testCtx(t), e.c, dlqTopic, nil, dlq.WithIdle(settle))
		if err != nil {
			t.Fatal(err)
		}
		if !slices.Equal(res.Moved, want) {
			t.Errorf("redrive %d moved %v, want %v", i+1, res.Moved, want)
		}
	}
	if got := back.waitN(t, 3); len(got) != 3 {
		t.Errorf("source topic got %v, want dup twice and other once", ids(got))
	}
}

func TestRedriveUnroutableStays(t *testing.T) {
	e := newEnv(t)
	dlqTopic := "junk.dlq"
	if err := dlq.Ensure(testCtx(t), e.c, dlqTopic); err != nil {
		t.Fatal(err)
	}
	e.produce(t, dlqTopic, &mq.Message{ID: "no-origin", Body: []byte("x")})
	res, err := dlq.Redrive(testCtx(t), e.c, dlqTopic, nil, dlq.WithIdle(settle))
	if err != nil || len(res.Moved) != 0 || res.Kept != 1 || res.Unroutable != 1 {
		t.Fatalf("Redrive = %+v, %v; want 1 kept, unroutable", res, err)
	}
	left, err := dlq.List(testCtx(t), e.c, dlqTopic, 0, dlq.WithIdle(settle))
	if err != nil || !slices.Equal(ids(left), []string{"no-origin"}) {
		t.Fatalf("List = %v, %v", ids(left), err)
	}
}

// TestRedrivePublishFailure checks that a dead letter whose move fails stays
// in the DLQ.
func TestRedrivePublishFailure(t *testing.T) {
	// Topics hold two messages; the source topic is full, so moving a
	// dead letter back fails.
	e := newEnvConfig(t, memory.Config{Capacity: 2, FailWhenFull: true})
	dlqTopic := dlq.DefaultTopic("t")
	if err := dlq.Ensure(testCtx(t), e.c, dlqTopic); err != nil {
		t.Fatal(err)
	}
	deadLetter(t, e, "t", "a", nil)
	deadLetter(t, e, "t", "b", nil)
	if _, err := e.c.Consumer(testCtx(t), "t", mq.WithGroup("svc")); err != nil {
		t.Fatal(err)
	}
	e.produce(t, "t", &mq.Message{}, &mq.Message{})
	res, err := dlq.Redrive(testCtx(t), e.c, dlqTopic, nil, dlq.WithIdle(settle))
	if !errors.Is(err, mq.ErrBufferFull) || len(res.Moved) != 0 {
		t.Fatalf("Redrive into a full topic = %+v, %v; want ErrBufferFull and nothing moved", res, err)
	}
	left, err := dlq.List(testCtx(t), e.c, dlqTopic, 0, dlq.WithIdle(settle))
	if err != nil || !slices.Equal(ids(left), []string{"a", "b"}) {
		t.Fatalf("List = %v, %v; want [a b]", ids(left), err)
	}
}

func TestOptionsValidated(t *testing.T) {
	e := newEnv(t)
	for _, opt := range []dlq.Option{dlq.WithIdle(0), dlq.WithMaxScan(-1)} {
		if _, err := dlq.List(testCtx(t), e.c, "x.dlq", 0, opt); err == nil {
			t.Error("List accepted an invalid option")
		}
		if _, err := dlq.Redrive(testCtx(t), e.c, "x.dlq", nil, opt); err == nil {
			t.Error("Redrive accepted an invalid option")
		}
	}
}

// TestNotAnAttemptIsNotDeadLettered: a message another consumer is handling
// right now, or that could not be handled because a store or broker is
// down, is not failing: it must come back, never land in the DLQ, also not
// through MaxAttempts after coming back many times.
func TestNotAnAttemptIsNotDeadLettered(t *testing.T) {
	errs := map[string]error{
		"in progress":            fmt.Errorf("claim held: %w", mq.ErrInProgress),
		"store down":             fmt.Errorf("claim: %w: dial tcp 127.0.0.1:1: connection refused", mq.ErrUnavailable),
		"store down after retry": &middleware.RetryError{Attempts: 1, Err: fmt.Errorf("x: %w", mq.ErrUnavailable)},
	}
	for name, handlerErr := range errs {
		t.Run(name, func(t *testing.T) {
			var published int
			counter := idempotency.NewMemoryStore(idempotency.MemoryStoreConfig{})
			mw, err := dlq.New(dlq.Config{
				Producer: producerFunc(func(context.Context, string, ...*mq.Message) error {
					published++
					return nil
				}),
				Group:          "g",
				MaxAttempts:    2,
				AttemptCounter: counter,
			})
			if err != nil {
				t.Fatal(err)
			}
			calls := 0
			h := mw(mq.HandlerFunc(func(context.Context, *mq.Message) error { calls++; return handlerErr }))
			for range 10 { // the consumer does not bump Attempt for these errors
				err = h.Handle(context.Background(), &mq.Message{ID: "m", Topic: "t", Attempt: 1})
				if !errors.Is(err, handlerErr) {
					t.Fatalf("Handle = %v, want the handler's error back so the message is redelivered", err)
				}
			}
			if published != 0 || calls != 10 {
				t.Errorf("published %d dead letters, handler ran %d times; want 0 and 10", published, calls)
			}
			if n, _ := counter.CountAttempt(context.Background(), "g:t:m", time.Minute); n != 1 {
				t.Errorf("the counter holds %d deliveries, want none counted", n-1)
			}
		})
	}
}

// TestAttemptCounterEndsCrashLoop emulates a broker that keeps no
// delivery count (Kafka: Attempt is 1 again after a restart) and a message
// that kills its consumer on every delivery: each "process" is a consumer
// whose handler shuts it down before returning. Without an AttemptCounter
// MaxAttempts never fires and the loop goes on; with one, the fourth
// delivery is dead-lettered (reason max-attempts, attempts 3) and the
// handler ran three times.
func TestAttemptCounterEndsCrashLoop(t *testing.T) {
	for _, withCounter := range []bool{false, true} {
		t.Run(fmt.Sprintf("counter=%v", withCounter), func(t *testing.T) {
			e := newEnv(t)
			const src, group = "orders", "billing"
			dlqTopic := dlq.DefaultTopic(src)
			if err := dlq.Ensure(testCtx(t), e.c, dlqTopic); err != nil {
				t.Fatal(err)
			}
			dead := newRecorder()
			e.consume(t, dlqTopic, "check", dead)
			cfg := dlq.Config{Producer: e.c.Producer(), Group: group, MaxAttempts: 3, Logger: discard}
			store := idempotency.NewMemoryStore(idempotency.MemoryStoreConfig{})
			if withCounter {
				cfg.AttemptCounter = store
			}
			mw, err := dlq.New(cfg)
			if err != nil {
				t.Fatal(err)
			}
			forgetful := mq.Middleware(func(next mq.Handler) mq.Handler { // the broker's count died with the process
				return mq.HandlerFunc(func(ctx context.Context, m *mq.Message) error { m.Attempt = 1; return next.Handle(ctx, m) })
			})
			cons, err := e.c.Consumer(testCtx(t), src, mq.WithGroup(group), mq.WithShutdownTimeout(wait))
			if err != nil {
				t.Fatal(err)
			}
			e.produce(t, src, &mq.Message{ID: "poison"})
			calls := 0
			for life := 1; life <= 6 && len(dead.snapshot()) == 0; life++ {
				ctx, crash := context.WithCancel(context.Background())
				crashed := make(chan struct{})
				h := mq.HandlerFunc(func(ctx context.Context, _ *mq.Message) error {
					calls++
					crash() // the process dies while handling the message
					<-mq.ShuttingDown(ctx)
					close(crashed)
					return errors.New("killed")
				})
				done := make(chan error, 1)
				go func() { done <- cons.Consume(ctx, mq.Chain(h, forgetful, mw)) }()
				select {
				case <-crashed:
				case <-dead.more:
					dead.more <- struct{}{}
				case <-time.After(wait):
					t.Fatal("neither handled nor dead-lettered")
				}
				crash()
				if err := <-done; err != nil {
					t.Fatal(err)
				}
			}
			_ = cons.Close()
			letters := dead.snapshot()
			if !withCounter {
				if len(letters) != 0 || calls != 6 {
					t.Fatalf("without a counter: %d dead letters, %d calls; want the loop to go on (0, 6)", len(letters), calls)
				}
				return
			}
			if len(letters) != 1 || calls != 3 {
				t.Fatalf("%d dead letters after %d handler calls, want 1 after 3", len(letters), calls)
			}
			info := dlq.Describe(letters[0])
			if info.Reason != dlq.ReasonMaxAttempts || letters[0].Header(dlq.HeaderAttempts) != "3" {
				t.Errorf("dead letter reason %q attempts %q, want %q and 3", info.Reason, letters[0].Header(dlq.HeaderAttempts), dlq.ReasonMaxAttempts)
			}
			if n, _ := store.CountAttempt(context.Background(), group+":"+src+":poison", time.Minute); n != 1 {
				t.Errorf("count %d after dead-lettering, want it forgotten", n-1)
			}
		})
	}
}

// TestAttemptCounterSettles: a handled message's count is forgotten; a
// counter outage does not call the handler, does not dead-letter, and
// returns an error wrapping mq.ErrUnavailable.
func TestAttemptCounterSettles(t *testing.T) {
	ctx := context.Background()
	store := idempotency.NewMemoryStore(idempotency.MemoryStoreConfig{})
	var published int
	prod := producerFunc(func(context.Context, string, ...*mq.Message) error { published++; return nil })
	mw, err := dlq.New(dlq.Config{Producer: prod, Group: "g", MaxAttempts: 1, AttemptCounter: store})
	if err != nil {
		t.Fatal(err)
	}
	ok := mw(mq.HandlerFunc(func(context.Context, *mq.Message) error { return nil }))
	for range 3 { // MaxAttempts 1: a count left behind would dead-letter the second
		if err := ok.Handle(ctx, &mq.Message{ID: "m", Topic: "t", Attempt: 1}); err != nil {
			t.Fatal(err)
		}
	}
	if published != 0 {
		t.Fatalf("%d dead letters for handled messages: their counts were not forgotten", published)
	}

	down := &downCounter{err: errors.New("dial tcp 127.0.0.1:1: connection refused")}
	mw, err = dlq.New(dlq.Config{Producer: prod, Group: "g", MaxAttempts: 1, AttemptCounter: down})
	if err != nil {
		t.Fatal(err)
	}
	calls := 0
	err = mw(mq.HandlerFunc(func(context.Context, *mq.Message) error { calls++; return nil })).
		Handle(ctx, &mq.Message{ID: "m", Topic: "t", Attempt: 1})
	if !errors.Is(err, mq.ErrUnavailable) || !errors.Is(err, down.err) || calls != 0 || published != 0 {
		t.Fatalf("counter down: Handle = %v, %d calls, %d dead letters; want ErrUnavailable, 0, 0", err, calls, published)
	}
	if _, err := dlq.New(dlq.Config{Producer: prod, AttemptCounter: store}); !errors.Is(err, dlq.ErrInvalidConfig) {
		t.Fatalf("New with a counter and no Group = %v, want ErrInvalidConfig", err)
	}
}

type downCounter struct{ err error }

func (c *downCounter) CountAttempt(context.Context, string, time.Duration) (int, error) {
	return 0, c.err
}
func (c *downCounter) UndoAttempt(context.Context, string) error    { return c.err }
func (c *downCounter) ForgetAttempts(context.Context, string) error { return c.err }

var discard = slog.New(slog.DiscardHandler)

// syncBuffer is a bytes.Buffer safe for a logger and the test at once.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

type producerFunc func(ctx context.Context, topic string, msgs ...*mq.Message) error

func (f producerFunc) Produce(ctx context.Context, topic string, msgs ...*mq.Message) error {
	return f(ctx, topic, msgs...)
}
func (producerFunc) Close() error { return nil }

// TestClientEnsuresOnFirstUse: a middleware given the consumer's client
// makes InspectGroup exist on the dead-letter topic before its first dead
// letter, so a service that never called Ensure still has every letter
// kept for List and Redrive.
func TestClientEnsuresOnFirstUse(t *testing.T) {
	e := newEnv(t)
	ctx := testCtx(t)
	mw, err := dlq.New(dlq.Config{Client: e.c, Group: "billing"})
	if err != nil {
		t.Fatal(err)
	}
	h := mw(mq.HandlerFunc(func(context.Context, *mq.Message) error { return mq.Permanent(errors.New("bad order")) }))
	inspected := func() bool {
		for _, s := range e.b.Stats() {
			if s.Topic == "orders.dlq" && s.Group == dlq.InspectGroup {
				return true
			}
		}
		return false
	}
	if inspected() {
		t.Fatal("the inspect group exists before any dead letter")
	}
	for i := range 3 {
		if err := h.Handle(ctx, &mq.Message{ID: fmt.Sprint("o", i), Topic: "orders"}); err != nil {
			t.Fatal(err)
		}
	}
	if !inspected() {
		t.Fatal("no inspect group on orders.dlq after the first dead letter")
	}
	letters, err := dlq.List(ctx, e.c, "orders.dlq", 0, dlq.WithIdle(settle))
	if err != nil {
		t.Fatal(err)
	}
	if len(letters) != 3 {
		t.Fatalf("List found %d dead letters, want 3", len(letters))
	}
}
