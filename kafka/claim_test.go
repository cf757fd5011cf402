package kafka_test

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/mqkit/mq"
	"github.com/mqkit/mq/integration/testbed"
)

// TestClaimKeepsItsFetchWhileWaiting: a consumer created before it calls
// Consume claims its partition at once; ConsumeClaim fills the in-flight
// queue and waits, and sarama's channel stays unread. sarama gives up a
// partition's fetch whose channel stays unread for
// Consumer.MaxProcessingTime (100 ms by default) and subscribes it again
// after a nap, which cost 15-25 % of the throughput of a busy consumer;
// the SDK's members wait 5 s, since all their partitions wait for the
// same window. Here Consume starts 3 s after Consumer: sarama must not
// have given the partition up, and every message arrives once.
func TestClaimKeepsItsFetchWhileWaiting(t *testing.T) {
	if testing.Short() {
		t.Skip("needs a Kafka broker; skipped with -short")
	}
	b := testbed.SharedKafka(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	c, err := mq.Open(ctx, b.URL+"/?create_topics=true&partitions=1")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	topic := "claim-patience-" + mq.NewID()
	const n = 3000 // several times the in-flight window and sarama's channel
	msgs := make([]*mq.Message, n)
	for i := range msgs {
		msgs[i] = &mq.Message{Key: fmt.Sprint(i % 100), Body: fmt.Appendf(nil, "%d", i)}
	}
	if err := c.Producer().Produce(ctx, topic, msgs...); err != nil {
		t.Fatal(err)
	}
	cons, err := c.Consumer(ctx, topic, mq.WithGroup("g"))
	if err != nil {
		t.Fatal(err)
	}
	defer cons.Close()
	time.Sleep(3 * time.Second) // the member joins and its claim waits

	var handled atomic.Int64
	var seen sync.Map // body -> true
	all := make(chan struct{})
	cctx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() {
		done <- cons.Consume(cctx, mq.HandlerFunc(func(_ context.Context, m *mq.Message) error {
			if _, dup := seen.LoadOrStore(string(m.Body), true); dup {
				t.Errorf("message %s handled twice", m.Body)
			}
			if handled.Add(1) == n {
				close(all)
			}
			return nil
		}))
	}()
	select {
	case <-all:
	case <-ctx.Done():
		t.Errorf("handled %d of %d messages", handled.Load(), n)
	}
	stop()
	if err := <-done; err != nil {
		t.Errorf("Consume: %v", err)
	}
	if got := handled.Load(); got != n {
		t.Errorf("handled %d messages, want %d", got, n)
	}
	if lines := saramaLines.matching(topic); len(lines) > 0 {
		t.Errorf("sarama gave up the partition's fetch %d times while the consumer waited: %q", len(lines), lines[0])
	}
}
