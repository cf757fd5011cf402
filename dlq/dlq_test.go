package dlq_test

import (
	"context"
	"errors"
	"fmt"
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
		{"nil producer", dlq.Config{}},
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
			wantCalls:   3, // nacked twice, redelivered, handled again
			wantAttempt: "3",
		},
		{
			name:        "max attempts stops a loop",
			handler:     func(context.Context, *mq.Message) error { return errBoom },
			pubFailures: 2,
			maxAttempts: 2,
			wantReason:  dlq.ReasonMaxAttempts,
			wantError:   "above MaxAttempts 2",
			wantCalls:   2, // the third delivery skips the handler
			wantAttempt: "2",
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
				Producer:     prod,
				Group:        group,
				MaxAttempts:  tc.maxAttempts,
				OnDeadLetter: func(context.Context, *mq.Message, error) { notified.Add(1) },
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

func TestPublishFailureWrapsBoth(t *testing.T) {
	e := newEnv(t)
	prod := &flakyProducer{Producer: e.c.Producer()}
	prod.failures.Store(1)
	mw, err := dlq.New(dlq.Config{Producer: prod})
	if err != nil {
		t.Fatal(err)
	}
	errBoom := errors.New("boom")
	h := mw(mq.HandlerFunc(func(context.Context, *mq.Message) error { return mq.Permanent(errBoom) }))
	err = h.Handle(context.Background(), &mq.Message{ID: "m1", Topic: "t", Attempt: 1})
	if !errors.Is(err, errBrokerDown) || !errors.Is(err, errBoom) {
		t.Fatalf("Handle = %v, want an error wrapping both the publish and the handler error", err)
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

// TestInProgressIsNotDeadLettered: a message another consumer is handling
// right now (dedup reports its claim busy) is not failing; it must come back,
// never land in the DLQ.
func TestInProgressIsNotDeadLettered(t *testing.T) {
	var published int
	mw, err := dlq.New(dlq.Config{Producer: producerFunc(func(context.Context, string, ...*mq.Message) error {
		published++
		return nil
	})})
	if err != nil {
		t.Fatal(err)
	}
	busy := fmt.Errorf("claim held: %w", mq.ErrInProgress)
	h := mw(mq.HandlerFunc(func(context.Context, *mq.Message) error { return busy }))
	err = h.Handle(context.Background(), &mq.Message{ID: "m", Topic: "t", Attempt: 1})
	if !errors.Is(err, mq.ErrInProgress) {
		t.Errorf("Handle = %v, want the in-progress error back so the message is redelivered", err)
	}
	if published != 0 {
		t.Errorf("published %d dead letters for a message in progress elsewhere", published)
	}
}

type producerFunc func(ctx context.Context, topic string, msgs ...*mq.Message) error

func (f producerFunc) Produce(ctx context.Context, topic string, msgs ...*mq.Message) error {
	return f(ctx, topic, msgs...)
}
func (producerFunc) Close() error { return nil }
