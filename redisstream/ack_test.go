package redisstream_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/mqkit/mq"
	"github.com/mqkit/mq/redisstream"
)

// TestWindowAndBatchedAcks drives a subscription directly: a read fetches
// as many entries as the in-flight window has room for (more than Receive
// asked for), never more than the window; acks are queued and sent by the
// subscription, and Close sends every queued ack before it hands back what
// it still holds, so acknowledged entries are never delivered again and
// the stashed ones stay pending for the group.
func TestWindowAndBatchedAcks(t *testing.T) {
	for _, tc := range []struct {
		name   string
		shards int
	}{
		{"unsharded", 0},
		{"sharded", 2},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			topic := topicName(t)
			raw := rawClient(t)
			conn, err := redisstream.NewConn(raw, redisstream.Config{Shards: tc.shards})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { _ = conn.Close() })
			const n, window, limit = 200, 64, 10
			msgs := make([]*mq.Message, n)
			for i := range msgs {
				msgs[i] = &mq.Message{ID: fmt.Sprintf("m%03d", i), Key: "k", Body: []byte("x")}
			}
			sub, err := conn.Subscribe(ctx, topic, "g", mq.SubscribeOptions{MaxInFlight: window, Concurrency: 1})
			if err != nil {
				t.Fatal(err)
			}
			if err := conn.Send(ctx, topic, msgs); err != nil {
				t.Fatal(err)
			}
			pending := func() int64 {
				var total int64
				for _, key := range conn.StreamKeys(topic) {
					p, err := raw.XPending(ctx, key, "g").Result()
					if err != nil {
						t.Fatal(err)
					}
					total += p.Count
				}
				return total
			}

			// Three Receives of at most limit, nothing settled.
			var got []mq.Delivery
			for len(got) < 3*limit {
				rctx, cancel := context.WithTimeout(ctx, 30*time.Second)
				ds, err := sub.Receive(rctx, limit)
				cancel()
				if err != nil {
					t.Fatal(err)
				}
				if len(ds) > limit {
					t.Fatalf("Receive(%d) returned %d deliveries", limit, len(ds))
				}
				got = append(got, ds...)
				if p := pending(); p > window {
					t.Fatalf("%d entries pending with a window of %d", p, window)
				}
			}
			read := pending()
			if read <= int64(len(got)) {
				t.Errorf("%d entries read for %d delivered; want reads sized by the window", read, len(got))
			}
			for i, d := range got {
				if want := fmt.Sprintf("m%03d", i); d.Message().ID != want {
					t.Fatalf("delivery %d is %s, want %s (one key: produce order)", i, d.Message().ID, want)
				}
				if err := d.Ack(ctx); err != nil {
					t.Fatal(err)
				}
			}
			if err := sub.Close(); err != nil {
				t.Fatal(err)
			}
			if err := got[0].Ack(ctx); err == nil {
				t.Error("second Ack of a delivery succeeded")
			}
			// Acked entries are gone; the stash was handed back.
			if p, want := pending(), read-int64(len(got)); p != want {
				t.Errorf("%d entries pending after Close, want %d (read %d, acked %d)", p, want, read, len(got))
			}
		})
	}
}
