package mqtest

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"math/rand/v2"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/mqkit/mq"
	"github.com/mqkit/mq/middleware"
)

// The delayed-delivery subtests: messages produced with DeliverAt wait in
// the broker and are delivered never before it, within the harness's
// lateness bound, exactly once per group however many consumers move them.

// arrivals records when each message was handled, and how often.
type arrivals struct {
	mu   sync.Mutex
	at   map[string]time.Time // first arrival
	msg  map[string]*mq.Message
	n    map[string]int
	more chan struct{}
}

func newArrivals() *arrivals {
	return &arrivals{at: map[string]time.Time{}, msg: map[string]*mq.Message{}, n: map[string]int{}, more: make(chan struct{}, 1)}
}

func (a *arrivals) handler() mq.HandlerFunc {
	return func(_ context.Context, m *mq.Message) error {
		now := time.Now()
		a.mu.Lock()
		if a.n[m.ID] == 0 {
			a.at[m.ID] = now
			a.msg[m.ID] = m.Clone()
		}
		a.n[m.ID]++
		a.mu.Unlock()
		select {
		case a.more <- struct{}{}:
		default:
		}
		return nil
	}
}

// wait waits until every id arrived, or fails after timeout.
func (a *arrivals) wait(t *testing.T, timeout time.Duration, ids ...string) {
	t.Helper()
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	for {
		a.mu.Lock()
		missing := 0
		for _, id := range ids {
			if a.n[id] == 0 {
				missing++
			}
		}
		a.mu.Unlock()
		if missing == 0 {
			return
		}
		select {
		case <-a.more:
		case <-deadline.C:
			t.Fatalf("after %v, %d of %d delayed messages never arrived", timeout, missing, len(ids))
		}
	}
}

func (a *arrivals) get(id string) (time.Time, *mq.Message, int) {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.at[id], a.msg[id], a.n[id]
}

// scheduler returns whether the backend under test delays messages. When
// it does not, it checks that Produce says so and sends nothing.
func (s *suite) scheduler(t *testing.T, c *mq.Client) bool {
	t.Helper()
	if _, ok := c.Conn().(mq.Scheduler); ok {
		return true
	}
	p := c.Producer()
	defer p.Close()
	err := p.Produce(s.ctx(t), s.topic(t), (&mq.Message{Body: []byte("x")}).DeliverAfter(time.Minute))
	if !errors.Is(err, mq.ErrDelayUnsupported) {
		t.Fatalf("Produce of a delayed message on a backend without mq.Scheduler: %v, want mq.ErrDelayUnsupported", err)
	}
	return false
}

func (s *suite) testDelayRoundTrip(t *testing.T) {
	c := s.open(t)
	if !s.scheduler(t, c) {
		return
	}
	topic := s.topic(t)
	arr := newArrivals()
	s.start(t, c, topic, "g", arr.handler())
	p := c.Producer()
	defer p.Close()

	hdr := map[string]string{"trace": "abc", "empty": "", "x-Mixed": "ü"}
	long := &mq.Message{Key: "k1", Headers: hdr, Body: []byte("long")}
	long.DeliverAfter(1500 * time.Millisecond)
	short := (&mq.Message{Body: []byte("short")}).DeliverAfter(700 * time.Millisecond)
	now := &mq.Message{Key: "k1", Body: []byte("now")}
	past := &mq.Message{Key: "k2", Body: []byte("past"), DeliverAt: time.Now().Add(-time.Minute)}
	s.produce(t, p, topic, long, short, now, past)
	if _, ok := hdr[mq.HeaderDeliverAt]; ok || len(hdr) != 3 {
		t.Fatalf("Produce wrote into the caller's Headers map: %v", hdr)
	}
	for _, m := range []*mq.Message{long, short, now, past} {
		if m.ID == "" {
			t.Fatalf("Produce did not write the ID back into %q", m.Body)
		}
	}
	arr.wait(t, s.h.Timeout, now.ID, past.ID, short.ID, long.ID)

	for _, sent := range []*mq.Message{long, short, now, past} {
		at, got, n := arr.get(sent.ID)
		if n != 1 {
			t.Errorf("%q handled %d times, want 1", sent.Body, n)
		}
		if !sent.DeliverAt.IsZero() && at.Before(sent.DeliverAt) {
			t.Errorf("%q delivered %v early", sent.Body, sent.DeliverAt.Sub(at))
		}
		if !got.DeliverAt.Equal(sent.DeliverAt) {
			t.Errorf("%q: DeliverAt = %v on delivery, want %v", sent.Body, got.DeliverAt, sent.DeliverAt)
		}
		if got.Key != sent.Key || string(got.Body) != string(sent.Body) || got.Topic != topic || got.Attempt != 1 {
			t.Errorf("%q arrived as key %q body %q topic %q attempt %d", sent.Body, got.Key, got.Body, got.Topic, got.Attempt)
		}
		if !maps.Equal(got.Headers, sent.Headers) {
			t.Errorf("%q: headers %v on delivery, want %v", sent.Body, got.Headers, sent.Headers)
		}
	}
}

func (s *suite) testDelayLateness(t *testing.T) {
	c := s.open(t)
	if !s.scheduler(t, c) {
		return
	}
	topic := s.topic(t)
	arr := newArrivals()
	s.start(t, c, topic, "g", arr.handler(), mq.WithConcurrency(8))
	p := c.Producer()
	defer p.Close()

	const n = 300
	spread := 3 * time.Second
	msgs := make([]*mq.Message, n)
	start := time.Now()
	for i := range msgs {
		key := ""
		if i%3 != 0 {
			key = fmt.Sprintf("k%d", i%10)
		}
		msgs[i] = &mq.Message{Key: key, Body: []byte(fmt.Sprint(i)), DeliverAt: start.Add(200*time.Millisecond + rand.N(spread))}
	}
	for i := 0; i < n; i += 50 {
		s.produce(t, p, topic, msgs[i:i+50]...)
	}
	arr.wait(t, spread+s.h.Timeout, idsOf(msgs)...)

	late := make([]time.Duration, n)
	for i, m := range msgs {
		at, _, count := arr.get(m.ID)
		if count != 1 {
			t.Errorf("message %d handled %d times, want 1", i, count)
		}
		if at.Before(m.DeliverAt) {
			t.Errorf("message %d delivered %v early", i, m.DeliverAt.Sub(at))
		}
		late[i] = at.Sub(m.DeliverAt)
	}
	slices.Sort(late)
	p50, p99, worst := late[n/2], late[n*99/100], late[n-1]
	t.Logf("lateness of %d messages over %v: p50 %v, p99 %v, max %v", n, spread, p50.Round(time.Millisecond), p99.Round(time.Millisecond), worst.Round(time.Millisecond))
	if p99 > s.h.DelayLateness {
		t.Errorf("p99 lateness %v, over the bound of %v (Harness.DelayLateness)", p99, s.h.DelayLateness)
	}
}

func (s *suite) testDelayLongDoesNotHoldShort(t *testing.T) {
	c := s.open(t)
	if !s.scheduler(t, c) {
		return
	}
	topic := s.topic(t)
	arr := newArrivals()
	s.start(t, c, topic, "g", arr.handler())
	p := c.Producer()
	defer p.Close()
	long := (&mq.Message{Key: "k", Body: []byte("60s")}).DeliverAfter(time.Minute)
	s.produce(t, p, topic, long)
	short := (&mq.Message{Key: "k", Body: []byte("1s")}).DeliverAfter(time.Second)
	s.produce(t, p, topic, short)
	arr.wait(t, s.h.Timeout, short.ID)
	at, _, _ := arr.get(short.ID)
	if late := at.Sub(short.DeliverAt); late < 0 || late > 10*time.Second {
		t.Fatalf("1 s message scheduled after a 60 s one arrived %v after it was due (a long delay holds short ones back?)", late)
	}
	if _, _, n := arr.get(long.ID); n != 0 {
		t.Fatalf("60 s message delivered after %v", time.Since(long.DeliverAt.Add(-time.Minute)))
	}
}

func (s *suite) testDelayMovedOnce(t *testing.T) {
	c1 := s.open(t)
	if !s.scheduler(t, c1) {
		return
	}
	topic := s.topic(t)
	g1, g2 := newArrivals(), newArrivals()
	s.start(t, c1, topic, "g1", g1.handler(), mq.WithConcurrency(4))
	s.start(t, s.open(t), topic, "g1", g1.handler(), mq.WithConcurrency(4))
	s.start(t, s.open(t), topic, "g1", g1.handler(), mq.WithConcurrency(4))
	s.start(t, c1, topic, "g2", g2.handler(), mq.WithConcurrency(4))
	p := c1.Producer()
	defer p.Close()
	const n = 300
	msgs := make([]*mq.Message, n)
	start := time.Now()
	for i := range msgs {
		msgs[i] = &mq.Message{Key: fmt.Sprintf("k%d", i%20), Body: []byte(fmt.Sprint(i)), DeliverAt: start.Add(500*time.Millisecond + rand.N(1500*time.Millisecond))}
	}
	for i := 0; i < n; i += 100 {
		s.produce(t, p, topic, msgs[i:i+100]...)
	}
	ids := idsOf(msgs)
	g1.wait(t, s.h.Timeout, ids...)
	g2.wait(t, s.h.Timeout, ids...)
	time.Sleep(s.h.SettleTime)
	for _, g := range []struct {
		name string
		a    *arrivals
	}{{"g1 (3 members)", g1}, {"g2", g2}} {
		dups := 0
		for _, id := range ids {
			if _, _, k := g.a.get(id); k != 1 {
				dups++
			}
		}
		if dups > 0 {
			t.Errorf("group %s: %d of %d delayed messages handled more than once (moved twice?)", g.name, dups, n)
		}
	}
}

func (s *suite) testDelayStats(t *testing.T) {
	c := s.open(t)
	if !s.scheduler(t, c) {
		return
	}
	topic := s.topic(t)
	s.start(t, c, topic, "g", func(context.Context, *mq.Message) error { return nil })
	p := c.Producer()
	defer p.Close()
	first := time.Now().Add(30 * time.Second)
	s.produce(t, p, topic,
		&mq.Message{Body: []byte("a"), DeliverAt: first.Add(20 * time.Second)},
		&mq.Message{Body: []byte("b"), DeliverAt: first},
		&mq.Message{Body: []byte("c"), DeliverAt: first.Add(10 * time.Second)})
	var st mq.ScheduleStats
	deadline := time.Now().Add(s.h.Timeout)
	for {
		var err error
		st, err = c.Scheduled(s.ctx(t), topic)
		if err != nil {
			t.Fatalf("Scheduled: %v", err)
		}
		if st.Waiting == 3 || st.Waiting == -1 || time.Now().After(deadline) {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if st.Waiting != 3 && st.Waiting != -1 {
		t.Fatalf("Scheduled: Waiting = %d, want 3 (or -1: unknown)", st.Waiting)
	}
	if !st.NextDue.IsZero() && (st.NextDue.Before(time.Now().Add(-time.Second)) || st.NextDue.After(first.Add(time.Second))) {
		t.Fatalf("Scheduled: NextDue = %v, want between now and %v (or zero: unknown)", st.NextDue, first)
	}
	t.Logf("Scheduled: %d waiting, next due %v", st.Waiting, st.NextDue)
	if st, err := c.Scheduled(s.ctx(t), s.topic(t)); err != nil || st.Waiting > 0 {
		t.Fatalf("Scheduled of a topic with nothing scheduled: %+v, %v", st, err)
	}
}

func (s *suite) testDelayRetryLater(t *testing.T) {
	c := s.open(t)
	if !s.scheduler(t, c) {
		return
	}
	topic := s.topic(t)
	p := c.Producer()
	defer p.Close()

	var (
		mu        sync.Mutex
		attempts  []int       // of "bad", in call order
		failedAt  []time.Time // when each call of "bad" failed
		exhausted []error
	)
	goods := newArrivals()
	fail := mq.HandlerFunc(func(ctx context.Context, m *mq.Message) error {
		if string(m.Body) != "bad" {
			return goods.handler()(ctx, m)
		}
		mu.Lock()
		defer mu.Unlock()
		attempts = append(attempts, m.Attempt)
		failedAt = append(failedAt, time.Now())
		return errors.New("always fails")
	})
	retry := middleware.RetryLater(middleware.RetryLaterConfig{
		Producer: p, MaxAttempts: 3, InitialInterval: 300 * time.Millisecond, MaxInterval: 300 * time.Millisecond, Jitter: middleware.JitterNone,
	})
	h := mq.HandlerFunc(func(ctx context.Context, m *mq.Message) error {
		err := retry(fail).Handle(ctx, m)
		if errors.Is(err, middleware.ErrRetriesExhausted) {
			mu.Lock()
			exhausted = append(exhausted, err)
			mu.Unlock()
			return nil // the test's dead-letter topic
		}
		return err
	})
	other := newArrivals()
	s.start(t, c, topic, "g1", h)
	s.start(t, c, topic, "g2", other.handler())

	bad := &mq.Message{Key: "k", Body: []byte("bad"), Headers: map[string]string{"h": "v"}}
	msgs := []*mq.Message{bad}
	for i := range 20 {
		msgs = append(msgs, &mq.Message{Key: "k", Body: []byte(fmt.Sprint("good-", i))})
	}
	s.produce(t, p, topic, msgs...)
	goods.wait(t, s.h.Timeout, idsOf(msgs[1:])...)
	mu.Lock()
	early := slices.Clone(attempts)
	mu.Unlock()
	if len(early) > 1 {
		t.Errorf("the key's later messages waited for the retries: %d calls of the failing message before they were all handled", len(early))
	}
	deadline := time.Now().Add(s.h.Timeout)
	for {
		mu.Lock()
		n := len(exhausted)
		mu.Unlock()
		if n > 0 || time.Now().After(deadline) {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	time.Sleep(s.h.SettleTime)
	other.wait(t, s.h.Timeout, idsOf(msgs)...)
	mu.Lock()
	defer mu.Unlock()
	if !slices.Equal(attempts, []int{1, 2, 3}) {
		t.Fatalf("failing message called with attempts %v, want [1 2 3]", attempts)
	}
	if len(exhausted) != 1 {
		t.Fatalf("retries exhausted %d times, want once", len(exhausted))
	}
	for i := 1; i < len(failedAt); i++ {
		if gap := failedAt[i].Sub(failedAt[i-1]); gap < 300*time.Millisecond {
			t.Errorf("retry %d came %v after the failure, before its 300ms delay", i, gap)
		}
	}
	for _, m := range msgs {
		if _, _, n := other.get(m.ID); n != 1 {
			t.Errorf("group g2 handled %q %d times, want once (retries are for g1 only)", m.Body, n)
		}
	}
	if _, got, _ := other.get(bad.ID); got != nil && !maps.Equal(got.Headers, bad.Headers) {
		t.Errorf("g2 saw headers %v, want %v", got.Headers, bad.Headers)
	}
}
