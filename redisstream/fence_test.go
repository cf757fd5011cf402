package redisstream_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/mqkit/mq"
	"github.com/mqkit/mq/integration/testbed"
	"github.com/mqkit/mq/redisstream"
)

// TestLostClosesByLocalDeadline: a delivery's Lost channel closes by the
// subscription's own clock while Redis does not answer at all (paused):
// for a sharded topic before the shard lease could expire in Redis, for
// an unsharded one before the entry could have been idle for claim_idle.
// It is measured from the moment Redis stopped answering, which is after
// the last renewal or keep-alive could have been sent, so the bound is
// the lease (or claim_idle) itself. A Nack of the lost delivery then
// returns at once without talking to Redis.
func TestLostClosesByLocalDeadline(t *testing.T) {
	br := testbed.Redis(t)
	for _, tc := range []struct {
		name   string
		cfg    redisstream.Config
		period time.Duration // lease or claim_idle
	}{
		{"sharded", redisstream.Config{Shards: 1, ShardLease: 1500 * time.Millisecond, ClaimIdle: 10 * time.Second}, 1500 * time.Millisecond},
		{"unsharded", redisstream.Config{ClaimIdle: 1500 * time.Millisecond}, 1500 * time.Millisecond},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			c, err := mq.Open(ctx, br.URL)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			raw := c.Conn().(*redisstream.Conn).Client()
			conn, err := redisstream.NewConn(raw, tc.cfg)
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			topic := topicName(t)
			sub, err := conn.Subscribe(ctx, topic, "g", mq.SubscribeOptions{MaxInFlight: 8, Concurrency: 1})
			if err != nil {
				t.Fatal(err)
			}
			defer sub.Close()
			if err := conn.Send(ctx, topic, []*mq.Message{{ID: "m1", Key: "k"}}); err != nil {
				t.Fatal(err)
			}
			rctx, cancel := context.WithTimeout(ctx, 20*time.Second)
			ds, err := sub.Receive(rctx, 1)
			cancel()
			if err != nil || len(ds) != 1 {
				t.Fatalf("Receive: %d deliveries, %v", len(ds), err)
			}
			d := ds[0]
			if d.Lost() == nil {
				t.Fatal("Lost() is nil: the delivery is never fenced")
			}
			// Held well past the period while Redis answers: renewals and
			// keep-alives keep it.
			select {
			case <-d.Lost():
				t.Fatal("Lost closed while Redis was answering")
			case <-time.After(2 * tc.period):
			}

			if err := br.Pause(ctx); err != nil {
				t.Fatal(err)
			}
			paused := time.Now()
			defer func() {
				uctx, cancel := context.WithTimeout(ctx, 30*time.Second)
				defer cancel()
				if err := br.Unpause(uctx); err != nil {
					t.Errorf("unpause: %v", err)
				}
			}()
			select {
			case <-d.Lost():
			case <-time.After(3 * tc.period):
				t.Fatalf("Lost not closed %v after Redis stopped answering", 3*tc.period)
			}
			took := time.Since(paused)
			t.Logf("Lost closed %v after Redis stopped answering (period %v)", took.Round(time.Millisecond), tc.period)
			if took >= tc.period {
				t.Errorf("Lost closed %v after Redis stopped answering: later than the %v after which Redis may give the entry to another member", took, tc.period)
			}
			nctx, cancel := context.WithTimeout(ctx, 500*time.Millisecond)
			defer cancel()
			if err := d.Nack(nctx); err != nil {
				t.Errorf("Nack of a lost delivery: %v (it must not talk to Redis)", err)
			}
			if errors.Is(nctx.Err(), context.DeadlineExceeded) {
				t.Error("Nack of a lost delivery waited for Redis")
			}
		})
	}
}
