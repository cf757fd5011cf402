package mq_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mqkit/mq"
)

// scriptConn is a backend whose subscription hands out the deliveries a
// test feeds it, each with the Lost channel the test chose, and records
// how every delivery was settled.
type scriptConn struct{ sub *scriptSub }

func (c *scriptConn) Send(context.Context, string, []*mq.Message) error { return nil }
func (c *scriptConn) Close() error                                      { return nil }
func (c *scriptConn) Subscribe(context.Context, string, string, mq.SubscribeOptions) (mq.Subscription, error) {
	return c.sub, nil
}

type scriptSub struct {
	feed chan *scriptDelivery

	mu      sync.Mutex
	settled map[string][]string // message ID -> "ack"/"nack", in order
}

func newScriptSub() *scriptSub {
	return &scriptSub{feed: make(chan *scriptDelivery, 100), settled: map[string][]string{}}
}

func (s *scriptSub) Receive(ctx context.Context, max int) ([]mq.Delivery, error) {
	select {
	case d := <-s.feed:
		out := []mq.Delivery{d}
		for len(out) < max {
			select {
			case d := <-s.feed:
				out = append(out, d)
			default:
				return out, nil
			}
		}
		return out, nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

func (s *scriptSub) Close() error { return nil }

func (s *scriptSub) add(id, key string, lost <-chan struct{}) {
	s.feed <- &scriptDelivery{s: s, m: &mq.Message{ID: id, Key: key, Topic: "t", Attempt: 1}, lost: lost}
}

func (s *scriptSub) settlements(id string) []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.settled[id]...)
}

type scriptDelivery struct {
	s    *scriptSub
	m    *mq.Message
	lost <-chan struct{}
}

func (d *scriptDelivery) Message() *mq.Message  { return d.m }
func (d *scriptDelivery) Lost() <-chan struct{} { return d.lost }
func (d *scriptDelivery) Ack(context.Context) error {
	d.record("ack")
	return nil
}
func (d *scriptDelivery) Nack(context.Context) error {
	d.record("nack")
	return nil
}
func (d *scriptDelivery) record(how string) {
	d.s.mu.Lock()
	d.s.settled[d.m.ID] = append(d.s.settled[d.m.ID], how)
	d.s.mu.Unlock()
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(time.Millisecond)
	}
}

// TestLostOwnership checks what the consumer does when a driver closes a
// delivery's Lost channel: the running handler's context is cancelled,
// the delivery is nacked (not acked) when the handler returns, everything
// queued or retrying under the same channel is dropped and nacked once,
// and deliveries of another channel go on untouched.
func TestLostOwnership(t *testing.T) {
	sub := newScriptSub()
	c := mq.NewClient(&scriptConn{sub: sub})
	defer c.Close()
	cons, err := c.Consumer(context.Background(), "t", mq.WithGroup("g"), mq.WithConcurrency(4),
		mq.WithNackBackoff(time.Hour, time.Hour)) // a failed message waits on its retry timer
	if err != nil {
		t.Fatal(err)
	}
	lostA := make(chan struct{})
	keepB := make(chan struct{})

	var mu sync.Mutex
	calls := map[string]int{}
	running := make(chan struct{})
	cancelled := make(chan error, 1)
	h := mq.HandlerFunc(func(ctx context.Context, m *mq.Message) error {
		mu.Lock()
		calls[m.ID]++
		mu.Unlock()
		switch m.ID {
		case "a-run": // runs until its ownership is lost, then returns nil anyway
			close(running)
			<-ctx.Done()
			cancelled <- ctx.Err()
			return nil
		case "a-retry": // fails once: waits an hour for its retry
			return errors.New("boom")
		}
		return nil
	})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- cons.Consume(ctx, h) }()

	sub.add("a-run", "k1", lostA)
	<-running
	sub.add("a-queued", "k1", lostA) // behind a-run on key k1
	sub.add("b-queued", "k1", keepB) // behind them, another owner
	sub.add("a-retry", "k2", lostA)
	waitFor(t, "a-retry to fail once", func() bool { mu.Lock(); defer mu.Unlock(); return calls["a-retry"] == 1 })

	close(lostA)
	select {
	case err := <-cancelled:
		if err == nil {
			t.Fatal("handler context not cancelled")
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the running handler's context was not cancelled after its ownership was lost")
	}
	waitFor(t, "b-queued to be acked", func() bool { return len(sub.settlements("b-queued")) == 1 })
	waitFor(t, "a-run to be settled", func() bool { return len(sub.settlements("a-run")) == 1 })
	sub.add("a-late", "k3", lostA) // received after the loss: never handled

	waitFor(t, "a-late to be settled", func() bool { return len(sub.settlements("a-late")) == 1 })
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	for id, want := range map[string]string{"a-run": "nack", "a-queued": "nack", "a-retry": "nack", "a-late": "nack", "b-queued": "ack"} {
		if got := sub.settlements(id); fmt.Sprint(got) != fmt.Sprint([]string{want}) {
			t.Errorf("%s settled %v, want [%s] exactly once", id, got, want)
		}
	}
	mu.Lock()
	defer mu.Unlock()
	for id, want := range map[string]int{"a-run": 1, "a-queued": 0, "a-retry": 1, "a-late": 0, "b-queued": 1} {
		if calls[id] != want {
			t.Errorf("handler ran %s %d times, want %d", id, calls[id], want)
		}
	}
}

// TestNotAnAttemptKeepsAttempt checks that an in-process redelivery after
// mq.ErrInProgress or mq.ErrUnavailable leaves Attempt as it was, while an
// ordinary error raises it.
func TestNotAnAttemptKeepsAttempt(t *testing.T) {
	sub := newScriptSub()
	c := mq.NewClient(&scriptConn{sub: sub})
	defer c.Close()
	cons, err := c.Consumer(context.Background(), "t", mq.WithGroup("g"), mq.WithNackBackoff(time.Millisecond, time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	results := []error{
		fmt.Errorf("claim held: %w", mq.ErrInProgress),
		fmt.Errorf("store down: %w", mq.ErrUnavailable),
		errors.New("bad"),
		nil,
	}
	var attempts []int
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	sub.add("m", "", nil)
	err = cons.Consume(ctx, mq.HandlerFunc(func(_ context.Context, m *mq.Message) error {
		attempts = append(attempts, m.Attempt)
		r := results[len(attempts)-1]
		if r == nil {
			cancel()
		}
		return r
	}))
	if err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(attempts) != "[1 1 1 2]" {
		t.Fatalf("attempts seen %v, want [1 1 1 2]: only the ordinary error counts", attempts)
	}
}

func TestNackBackoffFloor(t *testing.T) {
	for _, u := range []string{"mem://?group=g&nack_backoff=0", "mem://?group=g&nack_backoff=100us"} {
		c, err := mq.Open(context.Background(), u)
		if err == nil {
			c.Close()
			t.Errorf("Open(%q) succeeded; a nack backoff below 1ms must be refused", u)
		} else if want := "at least 1ms"; !strings.Contains(err.Error(), want) {
			t.Errorf("Open(%q) = %v, want it to say %q", u, err, want)
		}
	}
	c, err := mq.Open(context.Background(), "mem://?group=g")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Consumer(context.Background(), "t", mq.WithNackBackoff(0, 0)); err == nil {
		t.Error("WithNackBackoff(0, 0) accepted")
	}
}
