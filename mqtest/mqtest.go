// Package mqtest is the conformance suite every mq backend must pass. A
// backend's test calls Run with a Harness that opens clients to a broker:
//
//	func TestConformance(t *testing.T) {
//		mqtest.Run(t, mqtest.Harness{
//			Open: func(t testing.TB) *mq.Client { ... },
//		})
//	}
//
// The suite uses only the mq interfaces, so the same checks run on the
// memory backend and on real Kafka, RabbitMQ and Redis. Every subtest uses
// its own topic. Waits are bounded by Harness.Timeout and never assert on
// speed: a slow shared machine makes the suite slower, not flaky.
package mqtest

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mqkit/mq"
)

// Harness connects the suite to the backend under test.
type Harness struct {
	// Open returns a new client to the broker under test. All clients
	// opened during one Run reach the same broker. The suite closes them.
	Open func(t testing.TB) *mq.Client

	// MaxBodyBytes is the largest body the broker under test accepts; the
	// large-body test sends min(1 MiB, MaxBodyBytes). Zero means 1 MiB.
	MaxBodyBytes int

	// Timeout bounds each wait for messages. Default 60s.
	Timeout time.Duration

	// SettleTime is how long the suite waits to see that something does
	// NOT happen (no redelivery of an acknowledged message). Default 1s.
	SettleTime time.Duration

	// TopicPrefix starts every topic name the suite makes. Default "mqtest".
	TopicPrefix string

	// Features says what the backend keeps exact where backends differ;
	// the suite checks each claim (see Features).
	Features Features

	// DelayLateness bounds the 99th percentile of how late delayed
	// messages arrive after they were due, as a sanity check that catches
	// a message held back by another (a long delay ahead of a short one)
	// or moved by polling far too slow. Default 5s. The lateness a
	// backend promises is measured by `mq bench-delay`, not asserted by
	// a test on a shared machine.
	DelayLateness time.Duration
}

// Run runs the whole conformance suite as subtests of t.
func Run(t *testing.T, h Harness) {
	if h.Open == nil {
		t.Fatal("mqtest: Harness.Open is nil")
	}
	if h.Timeout == 0 {
		h.Timeout = 60 * time.Second
	}
	if h.SettleTime == 0 {
		h.SettleTime = time.Second
	}
	if h.MaxBodyBytes == 0 {
		h.MaxBodyBytes = 1 << 20
	}
	if h.DelayLateness == 0 {
		h.DelayLateness = 5 * time.Second
	}
	if h.TopicPrefix == "" {
		h.TopicPrefix = "mqtest"
	}
	s := &suite{h: h}
	tests := []struct {
		name string
		fn   func(*testing.T)
	}{
		{"RoundTrip", s.testRoundTrip},
		{"GeneratedIDs", s.testGeneratedIDs},
		{"NackRedelivers", s.testNackRedelivers},
		{"PanicRedelivers", s.testPanicRedelivers},
		{"GroupsShareAndFanOut", s.testGroups},
		{"KeyOrderUnderConcurrency", s.testKeyOrder},
		{"CloseMidHandlerLosesNothing", s.testCloseMidHandler},
		{"GracefulShutdownAcks", s.testGracefulShutdown},
		{"ConcurrentProducers", s.testConcurrentProducers},
		{"ProduceAfterClose", s.testProduceAfterClose},
		{"ConsumeAfterClose", s.testConsumeAfterClose},
		{"CloseIsIdempotent", s.testCloseIdempotent},
		{"InvalidInput", s.testInvalidInput},
		{"EarlyMessages", s.testEarlyMessages},
		{"AttemptsAcrossMembers", s.testAttemptsAcrossMembers},
		{"KeyOrderAcrossMembers", s.testKeyOrderAcrossMembers},
		{"BatchConsume", s.testBatchConsume},
		{"DelayRoundTrip", s.testDelayRoundTrip},
		{"DelayLateness", s.testDelayLateness},
		{"DelayLongDoesNotHoldShort", s.testDelayLongDoesNotHoldShort},
		{"DelayMovedOnce", s.testDelayMovedOnce},
		{"DelayStats", s.testDelayStats},
		{"DelayRetryLater", s.testDelayRetryLater},
	}
	for _, tc := range tests {
		t.Run(tc.name, tc.fn)
	}
}

type suite struct{ h Harness }

func (s *suite) open(t *testing.T) *mq.Client {
	t.Helper()
	c := s.h.Open(t)
	if c == nil {
		t.Fatal("mqtest: Harness.Open returned nil")
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}

// topic returns a topic name unique to this run and test.
func (s *suite) topic(t *testing.T) string {
	var b [4]byte
	_, _ = rand.Read(b[:])
	name := strings.NewReplacer("/", "-", " ", "-").Replace(t.Name())
	return fmt.Sprintf("%s-%s-%x", s.h.TopicPrefix, strings.ToLower(name), b)
}

func (s *suite) ctx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 5*s.h.Timeout)
	t.Cleanup(cancel)
	return ctx
}

// running is a Consume loop started by the suite.
type running struct {
	cons   mq.Consumer
	cancel context.CancelFunc
	done   chan error
}

// start subscribes (synchronously, so later messages are kept for the
// group) and runs Consume in a goroutine. The test fails if Consume returns
// an error.
func (s *suite) start(t *testing.T, c *mq.Client, topic, group string, h mq.HandlerFunc, opts ...mq.Option) *running {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	opts = append([]mq.Option{mq.WithGroup(group), mq.WithNackBackoff(50*time.Millisecond, 200*time.Millisecond)}, opts...)
	cons, err := c.Consumer(s.ctx(t), topic, opts...)
	if err != nil {
		cancel()
		t.Fatalf("Consumer(%q, group %q): %v", topic, group, err)
	}
	r := &running{cons: cons, cancel: cancel, done: make(chan error, 1)}
	go func() { r.done <- cons.Consume(ctx, h) }()
	t.Cleanup(func() {
		r.stop(t)
		_ = cons.Close()
	})
	return r
}

// stop cancels Consume and waits for it to return.
func (r *running) stop(t *testing.T) {
	t.Helper()
	r.cancel()
	if err, ok := <-r.done; ok {
		close(r.done)
		if err != nil {
			t.Errorf("Consume returned %v after cancel, want nil", err)
		}
	}
}

func (s *suite) produce(t *testing.T, p mq.Producer, topic string, msgs ...*mq.Message) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), s.h.Timeout)
	defer cancel()
	if err := p.Produce(ctx, topic, msgs...); err != nil {
		t.Fatalf("Produce(%q, %d messages): %v", topic, len(msgs), err)
	}
}

// recorder collects handled messages, safe for concurrent handlers.
type recorder struct {
	mu   sync.Mutex
	msgs []*mq.Message
	ids  map[string]int
	more chan struct{}
}

func newRecorder() *recorder {
	return &recorder{ids: map[string]int{}, more: make(chan struct{}, 1)}
}

func (r *recorder) add(m *mq.Message) {
	r.mu.Lock()
	r.msgs = append(r.msgs, m.Clone())
	r.ids[m.ID]++
	r.mu.Unlock()
	select {
	case r.more <- struct{}{}:
	default:
	}
}

func (r *recorder) handler() mq.HandlerFunc {
	return func(_ context.Context, m *mq.Message) error {
		r.add(m)
		return nil
	}
}

// waitIDs waits until every id was recorded at least once.
func (r *recorder) waitIDs(t *testing.T, timeout time.Duration, ids []string) {
	t.Helper()
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	for {
		r.mu.Lock()
		var missing []string
		for _, id := range ids {
			if r.ids[id] == 0 {
				missing = append(missing, id)
			}
		}
		r.mu.Unlock()
		if len(missing) == 0 {
			return
		}
		select {
		case <-r.more:
		case <-deadline.C:
			show := missing
			if len(show) > 5 {
				show = show[:5]
			}
			t.Fatalf("after %v, %d of %d messages never arrived (first: %v)", timeout, len(missing), len(ids), show)
		}
	}
}

func (r *recorder) snapshot() []*mq.Message {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]*mq.Message(nil), r.msgs...)
}

func (r *recorder) count(id string) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.ids[id]
}

func idsOf(msgs []*mq.Message) []string {
	ids := make([]string, len(msgs))
	for i, m := range msgs {
		ids[i] = m.ID
	}
	return ids
}

var uuidV7 = regexp.MustCompile(`^[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$`)

func (s *suite) testRoundTrip(t *testing.T) {
	c := s.open(t)
	topic := s.topic(t)
	rec := newRecorder()
	s.start(t, c, topic, "g", rec.handler())

	binary := make([]byte, 256)
	for i := range binary {
		binary[i] = byte(i)
	}
	large := make([]byte, min(1<<20, s.h.MaxBodyBytes))
	_, _ = rand.Read(large)
	many := map[string]string{}
	for i := range 100 {
		many[fmt.Sprintf("h-%03d", i)] = strings.Repeat("v", i)
	}
	sent := []*mq.Message{
		{ID: "rt-binary", Key: "k1", Body: binary, Headers: map[string]string{"content-type": "application/octet-stream"}},
		{ID: "rt-empty", Key: "k2", Body: []byte{}},
		{ID: "rt-nil", Key: "", Body: nil},
		{ID: "rt-large", Key: "k3", Body: large},
		{ID: "rt-unicode", Key: "ключ-🔑", Body: []byte("héllo, 世界 🌍"), Headers: map[string]string{"ünïcödé": "värde ✓", "empty": ""}},
		{ID: "rt-many-headers", Key: "k4", Body: []byte("x"), Headers: many},
		{ID: "rt-not-utf8", Key: "k\xff\xfe", Body: []byte{0xff, 0xfe, 0x00, 0xc3, 0x28}},
	}
	p := c.Producer()
	for _, m := range sent {
		s.produce(t, p, topic, m)
	}
	rec.waitIDs(t, s.h.Timeout, idsOf(sent))

	got := map[string]*mq.Message{}
	for _, m := range rec.snapshot() {
		got[m.ID] = m
	}
	for _, want := range sent {
		m := got[want.ID]
		if m.Key != want.Key {
			t.Errorf("%s: Key = %q, want %q", want.ID, m.Key, want.Key)
		}
		if !bytes.Equal(m.Body, want.Body) {
			t.Errorf("%s: Body differs: got %d bytes, want %d", want.ID, len(m.Body), len(want.Body))
		}
		if len(m.Headers) != len(want.Headers) {
			t.Errorf("%s: %d headers, want %d: %v", want.ID, len(m.Headers), len(want.Headers), m.Headers)
		}
		for k, v := range want.Headers {
			if gv, ok := m.Headers[k]; !ok || gv != v {
				t.Errorf("%s: header %q = %q (present %v), want %q", want.ID, k, gv, ok, v)
			}
		}
		if m.Topic != topic {
			t.Errorf("%s: Topic = %q, want %q", want.ID, m.Topic, topic)
		}
		if m.Timestamp.IsZero() {
			t.Errorf("%s: Timestamp is zero", want.ID)
		}
		if m.Attempt != 1 {
			t.Errorf("%s: Attempt = %d, want 1", want.ID, m.Attempt)
		}
	}
}

func (s *suite) testGeneratedIDs(t *testing.T) {
	c := s.open(t)
	topic := s.topic(t)
	rec := newRecorder()
	s.start(t, c, topic, "g", rec.handler())
	msgs := []*mq.Message{{Body: []byte("a")}, {Body: []byte("b")}, {Body: []byte("c")}}
	s.produce(t, c.Producer(), topic, msgs...)
	seen := map[string]bool{}
	for _, m := range msgs {
		if !uuidV7.MatchString(m.ID) {
			t.Errorf("generated ID %q is not a UUIDv7", m.ID)
		}
		if seen[m.ID] {
			t.Errorf("generated ID %q twice", m.ID)
		}
		seen[m.ID] = true
	}
	rec.waitIDs(t, s.h.Timeout, idsOf(msgs))
}

func (s *suite) testNackRedelivers(t *testing.T) {
	c := s.open(t)
	topic := s.topic(t)
	var mu sync.Mutex
	var attempts []int
	done := make(chan struct{})
	s.start(t, c, topic, "g", func(_ context.Context, m *mq.Message) error {
		mu.Lock()
		defer mu.Unlock()
		if m.ID != "nack-1" {
			return nil
		}
		attempts = append(attempts, m.Attempt)
		if len(attempts) < 3 {
			return errors.New("mqtest: failing on purpose")
		}
		if len(attempts) == 3 {
			close(done)
		}
		return nil
	})
	s.produce(t, c.Producer(), topic, &mq.Message{ID: "nack-1", Key: "k", Body: []byte("retry me")})
	select {
	case <-done:
	case <-time.After(s.h.Timeout):
		t.Fatalf("message not delivered 3 times; attempts seen: %v", attempts)
	}
	time.Sleep(s.h.SettleTime)
	mu.Lock()
	defer mu.Unlock()
	if fmt.Sprint(attempts) != "[1 2 3]" {
		t.Errorf("attempts = %v, want [1 2 3] (an acked message must not come back)", attempts)
	}
}

func (s *suite) testPanicRedelivers(t *testing.T) {
	c := s.open(t)
	topic := s.topic(t)
	rec := newRecorder()
	s.start(t, c, topic, "g", func(ctx context.Context, m *mq.Message) error {
		if m.ID == "panic-1" && m.Attempt == 1 {
			panic("mqtest: panicking on purpose")
		}
		rec.add(m)
		return nil
	})
	msgs := []*mq.Message{{ID: "panic-1", Key: "k"}, {ID: "after-panic", Key: "other"}}
	s.produce(t, c.Producer(), topic, msgs...)
	rec.waitIDs(t, s.h.Timeout, idsOf(msgs))
	for _, m := range rec.snapshot() {
		if m.ID == "panic-1" && m.Attempt != 2 {
			t.Errorf("panicked message handled with Attempt %d, want 2", m.Attempt)
		}
	}
}

func (s *suite) testGroups(t *testing.T) {
	c := s.open(t)
	topic := s.topic(t)
	a1, a2, b := newRecorder(), newRecorder(), newRecorder()
	s.start(t, c, topic, "group-a", a1.handler())
	s.start(t, s.open(t), topic, "group-a", a2.handler())
	s.start(t, c, topic, "group-b", b.handler())
	var msgs []*mq.Message
	for i := range 60 {
		msgs = append(msgs, &mq.Message{Key: fmt.Sprintf("k%d", i%10), Body: []byte(fmt.Sprint(i))})
	}
	s.produce(t, c.Producer(), topic, msgs...)
	ids := idsOf(msgs)
	b.waitIDs(t, s.h.Timeout, ids)
	deadline := time.Now().Add(s.h.Timeout)
	for {
		missing := 0
		for _, id := range ids {
			if a1.count(id)+a2.count(id) == 0 {
				missing++
			}
		}
		if missing == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("group-a (two members) is missing %d of %d messages", missing, len(ids))
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Logf("group-a members handled %d and %d messages; group-b handled %d", len(a1.snapshot()), len(a2.snapshot()), len(b.snapshot()))
}

func (s *suite) testKeyOrder(t *testing.T) {
	c := s.open(t)
	topic := s.topic(t)
	const keys, perKey = 40, 25
	var mu sync.Mutex
	next := map[string]int{}
	var running, peak int
	var failures []string
	rec := newRecorder()
	s.start(t, c, topic, "g", func(_ context.Context, m *mq.Message) error {
		mu.Lock()
		running++
		peak = max(peak, running)
		want := next[m.Key]
		var seq int
		fmt.Sscan(string(m.Body), &seq)
		if seq != want && len(failures) < 10 {
			failures = append(failures, fmt.Sprintf("key %s: got #%d, want #%d", m.Key, seq, want))
		}
		if seq == want {
			next[m.Key] = want + 1
		}
		mu.Unlock()
		time.Sleep(time.Millisecond) // let other keys overlap
		mu.Lock()
		running--
		mu.Unlock()
		rec.add(m)
		return nil
	}, mq.WithConcurrency(16))

	var msgs []*mq.Message
	for i := range perKey {
		for k := range keys {
			msgs = append(msgs, &mq.Message{Key: fmt.Sprintf("key-%02d", k), Body: []byte(fmt.Sprint(i))})
		}
	}
	p := c.Producer()
	for i := 0; i < len(msgs); i += 100 {
		s.produce(t, p, topic, msgs[i:min(i+100, len(msgs))]...)
	}
	rec.waitIDs(t, s.h.Timeout, idsOf(msgs))
	mu.Lock()
	defer mu.Unlock()
	if len(failures) > 0 {
		t.Errorf("per-key order broken:\n%s", strings.Join(failures, "\n"))
	}
	if peak < 2 {
		t.Errorf("at most %d handler ran at once with concurrency 16 over %d keys; want parallelism across keys", peak, keys)
	}
	t.Logf("%d messages over %d keys, peak concurrency %d", len(msgs), keys, peak)
}

func (s *suite) testCloseMidHandler(t *testing.T) {
	c := s.open(t)
	topic := s.topic(t)
	started := make(chan struct{})
	var once sync.Once
	ctx := s.ctx(t)
	cons, err := c.Consumer(ctx, topic, mq.WithGroup("g"), mq.WithShutdownTimeout(200*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	consumed := make(chan error, 1)
	go func() {
		consumed <- cons.Consume(context.Background(), mq.HandlerFunc(func(hctx context.Context, m *mq.Message) error {
			once.Do(func() { close(started) })
			<-hctx.Done() // a handler that only stops when told to
			return hctx.Err()
		}))
	}()
	var msgs []*mq.Message
	for i := range 5 {
		msgs = append(msgs, &mq.Message{ID: fmt.Sprintf("close-%d", i), Key: "k", Body: []byte(fmt.Sprint(i))})
	}
	s.produce(t, c.Producer(), topic, msgs...)
	select {
	case <-started:
	case <-time.After(s.h.Timeout):
		t.Fatal("handler never started")
	}
	closed := make(chan error, 1)
	go func() { closed <- cons.Close() }()
	select {
	case err := <-closed:
		if err != nil {
			t.Errorf("Close: %v", err)
		}
	case <-time.After(s.h.Timeout):
		t.Fatal("Close did not return: the shutdown timeout should cancel the handler's context")
	}
	if err := <-consumed; err != nil {
		t.Errorf("Consume after Close returned %v, want nil", err)
	}

	// A new member of the group gets every message, the interrupted one too.
	rec := newRecorder()
	s.start(t, s.open(t), topic, "g", rec.handler())
	rec.waitIDs(t, s.h.Timeout, idsOf(msgs))
}

func (s *suite) testGracefulShutdown(t *testing.T) {
	c := s.open(t)
	topic := s.topic(t)
	rec := newRecorder()
	started := make(chan struct{})
	finished := make(chan struct{})
	var once sync.Once
	r := s.start(t, c, topic, "g", func(_ context.Context, m *mq.Message) error {
		if m.ID == "slow" {
			once.Do(func() {
				close(started)
				time.Sleep(300 * time.Millisecond)
				close(finished)
			})
			rec.add(m)
			return nil
		}
		rec.add(m)
		return nil
	})
	p := c.Producer()
	s.produce(t, p, topic, &mq.Message{ID: "slow", Key: "k"})
	select {
	case <-started:
	case <-time.After(s.h.Timeout):
		t.Fatal("handler never started")
	}
	r.stop(t)
	select {
	case <-finished:
	default:
		t.Fatal("Consume returned before the running handler finished")
	}
	// A service shutting down closes its consumer too: it leaves the group
	// (on Kafka, a member that stays holds its partitions).
	if err := r.cons.Close(); err != nil {
		t.Errorf("Close after graceful shutdown: %v", err)
	}

	// The finished message was acknowledged: a new member does not get it
	// again, while it does get a later one.
	rec2 := newRecorder()
	s.start(t, s.open(t), topic, "g", rec2.handler())
	s.produce(t, p, topic, &mq.Message{ID: "marker", Key: "k"})
	rec2.waitIDs(t, s.h.Timeout, []string{"marker"})
	time.Sleep(s.h.SettleTime)
	if n := rec2.count("slow"); n != 0 {
		t.Errorf("message finished during graceful shutdown was delivered again %d times; it should have been acknowledged", n)
	}
}

func (s *suite) testConcurrentProducers(t *testing.T) {
	c := s.open(t)
	topic := s.topic(t)
	rec := newRecorder()
	s.start(t, c, topic, "g", rec.handler(), mq.WithConcurrency(4))
	const producers, each = 8, 50
	ids := make([][]string, producers)
	var wg sync.WaitGroup
	errs := make(chan error, producers)
	for i := range producers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			p := c.Producer()
			ctx, cancel := context.WithTimeout(context.Background(), s.h.Timeout)
			defer cancel()
			for j := range each {
				m := &mq.Message{Key: fmt.Sprintf("p%d", i), Body: []byte(fmt.Sprint(j))}
				if err := p.Produce(ctx, topic, m); err != nil {
					errs <- err
					return
				}
				ids[i] = append(ids[i], m.ID)
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatalf("concurrent Produce: %v", err)
	}
	var all []string
	for _, x := range ids {
		all = append(all, x...)
	}
	rec.waitIDs(t, s.h.Timeout, all)
}

func (s *suite) testProduceAfterClose(t *testing.T) {
	c := s.open(t)
	topic := s.topic(t)
	p := c.Producer()
	s.produce(t, p, topic, &mq.Message{Body: []byte("before close")})
	if err := p.Close(); err != nil {
		t.Fatalf("Producer.Close: %v", err)
	}
	if err := p.Produce(context.Background(), topic, &mq.Message{}); !errors.Is(err, mq.ErrClosed) {
		t.Errorf("Produce after Producer.Close = %v, want ErrClosed", err)
	}
	p2 := c.Producer()
	if err := c.Close(); err != nil {
		t.Fatalf("Client.Close: %v", err)
	}
	if err := p2.Produce(context.Background(), topic, &mq.Message{}); !errors.Is(err, mq.ErrClosed) {
		t.Errorf("Produce after Client.Close = %v, want ErrClosed", err)
	}
}

func (s *suite) testConsumeAfterClose(t *testing.T) {
	c := s.open(t)
	topic := s.topic(t)
	cons, err := c.Consumer(s.ctx(t), topic, mq.WithGroup("g"))
	if err != nil {
		t.Fatal(err)
	}
	if err := cons.Close(); err != nil {
		t.Fatalf("Consumer.Close: %v", err)
	}
	if err := cons.Consume(context.Background(), mq.HandlerFunc(func(context.Context, *mq.Message) error { return nil })); !errors.Is(err, mq.ErrClosed) {
		t.Errorf("Consume after Close = %v, want ErrClosed", err)
	}
	_ = c.Close()
	if _, err := c.Consumer(s.ctx(t), topic, mq.WithGroup("g")); !errors.Is(err, mq.ErrClosed) {
		t.Errorf("Consumer on closed client = %v, want ErrClosed", err)
	}
}

func (s *suite) testCloseIdempotent(t *testing.T) {
	c := s.open(t)
	topic := s.topic(t)
	rec := newRecorder()
	r := s.start(t, c, topic, "g", rec.handler())
	s.produce(t, c.Producer(), topic, &mq.Message{ID: "x"})
	rec.waitIDs(t, s.h.Timeout, []string{"x"})
	var wg sync.WaitGroup
	for range 8 {
		wg.Add(2)
		go func() { defer wg.Done(); _ = r.cons.Close() }()
		go func() { defer wg.Done(); _ = c.Close() }()
	}
	wg.Wait()
	if err := c.Close(); err != nil {
		t.Errorf("Client.Close again: %v", err)
	}
	if err := r.cons.Close(); err != nil {
		t.Errorf("Consumer.Close again: %v", err)
	}
}

func (s *suite) testInvalidInput(t *testing.T) {
	c := s.open(t)
	p := c.Producer()
	ctx := s.ctx(t)
	if err := p.Produce(ctx, "", &mq.Message{}); !errors.Is(err, mq.ErrInvalidMessage) {
		t.Errorf("Produce to empty topic = %v, want ErrInvalidMessage", err)
	}
	if err := p.Produce(ctx, s.topic(t), nil); !errors.Is(err, mq.ErrInvalidMessage) {
		t.Errorf("Produce(nil message) = %v, want ErrInvalidMessage", err)
	}
	big := &mq.Message{Body: make([]byte, 2048)}
	small := c.Producer(mq.WithMaxMessageBytes(1024))
	if err := small.Produce(ctx, s.topic(t), big); !errors.Is(err, mq.ErrMessageTooLarge) {
		t.Errorf("Produce over WithMaxMessageBytes = %v, want ErrMessageTooLarge", err)
	}
	if _, err := c.Consumer(ctx, s.topic(t)); !errors.Is(err, mq.ErrNoGroup) {
		t.Errorf("Consumer without group = %v, want ErrNoGroup", err)
	}
	if _, err := c.Consumer(ctx, "", mq.WithGroup("g")); !errors.Is(err, mq.ErrInvalidMessage) {
		t.Errorf("Consumer on empty topic = %v, want ErrInvalidMessage", err)
	}
}
