package mq_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/mqkit/mq"
)

// 7 of 8 in-flight slots held by messages retrying in backoff; the 8th
// settles. A message fed afterwards must still be handled.
func TestInFlightRoomWithFailingKeys(t *testing.T) {
	sub := newScriptSub()
	c := mq.NewClient(&scriptConn{sub: sub})
	defer c.Close()
	cons, err := c.Consumer(context.Background(), "t", mq.WithGroup("g"), mq.WithConcurrency(8), mq.WithMaxInFlight(8),
		mq.WithNackBackoff(10*time.Millisecond, 50*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	h := mq.HandlerFunc(func(ctx context.Context, m *mq.Message) error {
		if strings.HasPrefix(m.ID, "bad") {
			return errors.New("downstream rejects")
		}
		return nil
	})
	for i := 0; i < 7; i++ {
		sub.add(fmt.Sprintf("bad%d", i), fmt.Sprintf("k%d", i), nil)
	}
	sub.add("ok", "kok", nil)
	consumeUntilNext(t, sub, cons, h)
}

// The same with the last settlement before the stall seen while failed
// messages were runnable again, and failures slower than their backoff, so
// that some failed key is always runnable: the slot the settlement frees is
// filled only because a failure wakes fetch when anything is free.
func TestInFlightRoomAfterFailures(t *testing.T) {
	sub := newScriptSub()
	c := mq.NewClient(&scriptConn{sub: sub})
	defer c.Close()
	cons, err := c.Consumer(context.Background(), "t", mq.WithGroup("g"), mq.WithConcurrency(1), mq.WithMaxInFlight(8),
		mq.WithNackBackoff(time.Millisecond, 2*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	h := mq.HandlerFunc(func(ctx context.Context, m *mq.Message) error {
		switch {
		case strings.HasPrefix(m.ID, "bad"):
			// Longer than the backoff: other failed keys are due again by
			// the time this one fails, so something is always runnable.
			time.Sleep(10 * time.Millisecond)
			return errors.New("downstream times out")
		case m.ID == "ok":
			time.Sleep(30 * time.Millisecond) // the failed ones are due again meanwhile
		}
		return nil
	})
	sub.add("ok", "kok", nil)
	for i := 0; i < 7; i++ {
		sub.add(fmt.Sprintf("bad%d", i), fmt.Sprintf("k%d", i), nil)
	}
	consumeUntilNext(t, sub, cons, h)
}

// consumeUntilNext runs cons until "ok" is acked, then feeds "next" and
// fails unless it is handled within 3 s (its own poll loop, not waitFor's
// 10 s): with one in-flight slot free, fetch must wake for it.
func consumeUntilNext(t *testing.T, sub *scriptSub, cons mq.Consumer, h mq.Handler) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- cons.Consume(ctx, h) }()
	waitFor(t, "ok acked", func() bool { return len(sub.settlements("ok")) == 1 })
	sub.add("next", "knext", nil)
	deadline := time.Now().Add(3 * time.Second)
	for len(sub.settlements("next")) == 0 {
		if time.Now().After(deadline) {
			t.Fatal("fetch never woke: 'next' not handled with 1 of 8 in-flight slots free")
		}
		time.Sleep(5 * time.Millisecond)
	}
	cancel()
	<-done
}
