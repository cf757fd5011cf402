package redisstream_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/mqkit/mq"
	"github.com/mqkit/mq/redisstream"
)

// TestWaitReplicasWithoutReplica: on a Redis with no replica,
// wait_replicas=1 fails Produce after wait_timeout with an error wrapping
// ErrNotReplicated and mq.ErrUnavailable, for sent and for scheduled
// messages, while the writes were made (the caller retries, consumers
// deduplicate); wait_replicas=0 is off.
func TestWaitReplicasWithoutReplica(t *testing.T) {
	ctx := context.Background()
	c := open(t, "wait_replicas=1&wait_timeout=100ms")
	topic := topicName(t)
	begin := time.Now()
	err := c.Producer().Produce(ctx, topic, &mq.Message{ID: "a", Body: []byte("x")})
	if !errors.Is(err, redisstream.ErrNotReplicated) || !errors.Is(err, mq.ErrUnavailable) {
		t.Fatalf("Produce = %v, want an error wrapping ErrNotReplicated and mq.ErrUnavailable", err)
	}
	t.Logf("Produce: %v", err)
	if d := time.Since(begin); d < 100*time.Millisecond || d > 5*time.Second {
		t.Errorf("Produce failed after %v, want about wait_timeout (100ms)", d)
	}
	raw := rawClient(t)
	if n, err := raw.XLen(ctx, topic).Result(); err != nil || n != 1 {
		t.Errorf("XLEN = %d, %v: want the entry written although not replicated", n, err)
	}

	err = c.Producer().Produce(ctx, topic, &mq.Message{ID: "b", Body: []byte("y"), DeliverAt: time.Now().Add(time.Hour)})
	if !errors.Is(err, redisstream.ErrNotReplicated) {
		t.Fatalf("Produce of a delayed message = %v, want an error wrapping ErrNotReplicated", err)
	}
	t.Logf("Produce (delayed): %v", err)
	st, err := c.Conn().(*redisstream.Conn).Scheduled(ctx, topic)
	if err != nil || st.Waiting != 1 {
		t.Errorf("Scheduled = %+v, %v: want the message scheduled although not replicated", st, err)
	}

	off := open(t, "wait_replicas=0")
	if err := off.Producer().Produce(ctx, topic, &mq.Message{ID: "c"}); err != nil {
		t.Errorf("Produce with wait_replicas=0: %v", err)
	}
}
