package rabbit_test

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/mqkit/mq"
	"github.com/mqkit/mq/integration/testbed"
	"github.com/mqkit/mq/rabbit"
)

// handledSet records the IDs a handler saw, failing the test on a second
// sight or a redelivery: with coalesced acks a wrong multiple ack closes
// the channel (unknown delivery tag) and the broker delivers again.
type handledSet struct {
	t  *testing.T
	mu sync.Mutex
	m  map[string]bool
}

func (h *handledSet) add(m *mq.Message) int {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.m[m.ID] || m.Attempt > 1 {
		h.t.Errorf("message %s handled again (attempt %d)", m.ID, m.Attempt)
	}
	h.m[m.ID] = true
	return len(h.m)
}

func (h *handledSet) len() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return len(h.m)
}

// queueReady returns the ready messages of queue (unacknowledged ones of
// a closed channel are ready again).
func queueReady(t *testing.T, url, queue string) int {
	t.Helper()
	ch := rawChannel(t, url)
	q, err := ch.QueueDeclarePassive(queue, true, false, false, false, nil)
	if err != nil {
		t.Fatal(err)
	}
	return q.Messages
}

// TestAckCoalescing runs consumers whose acknowledgements go out as
// multiple acks (the default) on a real broker: handled out of order at
// concurrency 8 with some messages dead-lettered, every message is
// handled once and, after the consumer stops, none is left in the queue
// (the acks still waiting were sent before the channel closed); and a
// delivery held by a slow handler does not hold the window: the others
// flow past it.
func TestAckCoalescing(t *testing.T) {
	b := testbed.SharedRabbitMQ(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	t.Run("StopFlushes", func(t *testing.T) {
		dlx := uniqueTopic("acks-dlx")
		// Acks wait for a run of 64 or the close: the last ones only
		// go out if stopping sends them.
		c := openT(t, b.URL+"?ack_delay=1h&dead_letter_exchange="+dlx)
		conn := c.Conn().(*rabbit.Conn)
		topic := uniqueTopic("acks")
		const n = 2000
		seen := &handledSet{t: t, m: map[string]bool{}}
		h := mq.Chain(mq.HandlerFunc(func(_ context.Context, m *mq.Message) error {
			seen.add(m)
			if m.Key == "k-7" {
				return mq.Permanent(fmt.Errorf("poison"))
			}
			return nil
		}), conn.DeadLetter(1))
		cons, err := c.Consumer(ctx, topic, mq.WithGroup("g"), mq.WithConcurrency(8))
		if err != nil {
			t.Fatal(err)
		}
		msgs := make([]*mq.Message, n)
		for i := range msgs {
			msgs[i] = &mq.Message{ID: fmt.Sprint("m", i), Key: fmt.Sprint("k-", i%50)}
		}
		if err := c.Producer().Produce(ctx, topic, msgs...); err != nil {
			t.Fatal(err)
		}
		cctx, stop := context.WithCancel(ctx)
		done := make(chan error, 1)
		go func() { done <- cons.Consume(cctx, h) }()
		waitFor(t, time.Minute, "every message handled", func() bool { return seen.len() == n })
		stop() // at once: the last acks are still waiting
		if err := <-done; err != nil {
			t.Fatal(err)
		}
		if err := cons.Close(); err != nil {
			t.Fatal(err)
		}
		queue := conn.QueueNames(topic, "g")[0]
		if ready := queueReady(t, b.URL, queue); ready != 0 {
			t.Errorf("%d messages back in the queue after the consumer stopped: acks not sent", ready)
		}
		if dead := queueReady(t, b.URL, dlx); dead != n/50 {
			t.Errorf("%d dead letters, want %d", dead, n/50)
		}
	})

	t.Run("SlowDeliveryHoldsNothing", func(t *testing.T) {
		c := openT(t, b.URL)
		topic := uniqueTopic("acks-slow")
		release := make(chan struct{})
		seen := &handledSet{t: t, m: map[string]bool{}}
		cons, err := c.Consumer(ctx, topic, mq.WithGroup("g"), mq.WithConcurrency(4), mq.WithMaxInFlight(16))
		if err != nil {
			t.Fatal(err)
		}
		defer cons.Close()
		cctx, stop := context.WithCancel(ctx)
		defer stop()
		go func() {
			_ = cons.Consume(cctx, mq.HandlerFunc(func(ctx context.Context, m *mq.Message) error {
				if m.Key == "slow" {
					select {
					case <-release:
					case <-ctx.Done():
						return ctx.Err()
					}
				}
				seen.add(m)
				return nil
			}))
		}()
		msgs := []*mq.Message{{ID: "slow", Key: "slow"}}
		for i := range 300 {
			msgs = append(msgs, &mq.Message{ID: fmt.Sprint("m", i), Key: fmt.Sprint("k-", i)})
		}
		if err := c.Producer().Produce(ctx, topic, msgs...); err != nil {
			t.Fatal(err)
		}
		// 300 messages through a prefetch of 16 while the first is held:
		// the acks behind it must not wait for it.
		waitFor(t, 30*time.Second, "the 300 messages behind the held one", func() bool { return seen.len() == 300 })
		close(release)
		waitFor(t, 10*time.Second, "the held message", func() bool { return seen.len() == 301 })
	})
}
