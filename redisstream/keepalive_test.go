package redisstream_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/mqkit/mq"
)

// TestKeepAliveCoversEveryHeldEntry: a subscription holding several
// entries for three times claim_idle keeps every one of them: another
// member of the group claims none, and none of the deliveries is lost.
// (The keep-alive script passed only the first entry ID to XCLAIM, so the
// others went idle and were claimed while still being handled.)
func TestKeepAliveCoversEveryHeldEntry(t *testing.T) {
	ctx := context.Background()
	topic := topicName(t)
	a, b := open(t, "claim_idle=600ms"), open(t, "claim_idle=600ms")
	subA, err := a.Conn().Subscribe(ctx, topic, "g", mq.SubscribeOptions{MaxInFlight: 5, Concurrency: 1})
	if err != nil {
		t.Fatal(err)
	}
	defer subA.Close()
	var msgs []*mq.Message
	for i := range 5 {
		msgs = append(msgs, &mq.Message{Key: fmt.Sprint(i)})
	}
	if err := a.Producer().Produce(ctx, topic, msgs...); err != nil {
		t.Fatal(err)
	}
	var held []mq.Delivery
	for len(held) < 5 {
		ds, err := subA.Receive(ctx, 5-len(held))
		if err != nil {
			t.Fatal(err)
		}
		held = append(held, ds...)
	}
	subB, err := b.Conn().Subscribe(ctx, topic, "g", mq.SubscribeOptions{MaxInFlight: 5, Concurrency: 1})
	if err != nil {
		t.Fatal(err)
	}
	defer subB.Close()
	rctx, cancel := context.WithTimeout(ctx, 1800*time.Millisecond)
	defer cancel()
	for rctx.Err() == nil {
		ds, _ := subB.Receive(rctx, 5)
		for _, d := range ds {
			t.Errorf("the other member was handed %s while the first still held it", d.Message().ID)
		}
	}
	for _, d := range held {
		select {
		case <-d.Lost():
			t.Errorf("delivery %s lost while kept alive", d.Message().ID)
		default:
		}
	}
	pend, err := rawClient(t).XPendingExt(ctx, &redis.XPendingExtArgs{Stream: topic, Group: "g", Start: "-", End: "+", Count: 10}).Result()
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range pend {
		if p.RetryCount != 1 || p.Idle >= 600*time.Millisecond {
			t.Errorf("entry %s: delivered %d times, idle %v; want once, kept alive", p.ID, p.RetryCount, p.Idle)
		}
	}
	for _, d := range held {
		if err := d.Ack(ctx); err != nil {
			t.Fatal(err)
		}
	}
}
