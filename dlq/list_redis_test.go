package dlq_test

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"testing"
	"time"

	"github.com/mqkit/mq"
	"github.com/mqkit/mq/dlq"
	"github.com/mqkit/mq/integration/testbed"
	_ "github.com/mqkit/mq/redisstream"
)

// TestListRedisAgreesWithRedrive runs, on a real Redis, what an operator
// does with the CLI, each step from a client of its own as separate
// processes would: List twice within claim_idle, then Redrive, then List
// and Lag. Every List sees every dead letter, Redrive moves them all, and
// nothing is left pending in the inspection group. (A List handed its
// letters back with only the first one's idle time set, so the next List
// saw one letter and the rest stayed hidden, pending, until claim_idle.)
func TestListRedisAgreesWithRedrive(t *testing.T) {
	if testing.Short() {
		t.Skip("needs a Redis server; skipped with -short")
	}
	b := testbed.SharedRedis(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	open := func() *mq.Client {
		c, err := mq.Open(ctx, b.URL) // claim_idle 30s, the default
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = c.Close() })
		return c
	}
	c := open()
	src := "list-src-" + mq.NewID()
	dlqTopic := dlq.DefaultTopic(src)
	if err := dlq.Ensure(ctx, c, dlqTopic); err != nil {
		t.Fatal(err)
	}
	var letters []*mq.Message
	for i := range 5 {
		letters = append(letters, &mq.Message{Key: fmt.Sprint("k", i%2), Body: []byte(fmt.Sprint(i)),
			Headers: map[string]string{dlq.HeaderTopic: src, dlq.HeaderReason: dlq.ReasonError}})
	}
	if err := c.Producer().Produce(ctx, dlqTopic, letters...); err != nil {
		t.Fatal(err)
	}
	var want []string
	for _, m := range letters {
		want = append(want, m.ID)
	}
	ids := func(ms []*mq.Message) []string {
		var out []string
		for _, m := range ms {
			out = append(out, m.ID)
		}
		return out
	}
	for i := range 3 {
		got, err := dlq.List(ctx, open(), dlqTopic, 0, dlq.WithIdle(time.Second))
		if err != nil {
			t.Fatalf("list %d: %v", i+1, err)
		}
		if !slices.Equal(ids(got), want) {
			t.Errorf("list %d: %d dead letters %v, want %d %v", i+1, len(got), ids(got), len(want), want)
		}
	}
	lag, err := open().Lag(ctx, dlqTopic, dlq.InspectGroup)
	if err != nil || len(lag) != 1 || lag[0].Unacked+lag[0].Backlog != int64(len(want)) {
		t.Errorf("lag after the lists = %+v, %v; want %d dead letters kept", lag, err, len(want))
	}
	res, err := dlq.Redrive(ctx, open(), dlqTopic, nil, dlq.WithIdle(time.Second))
	if err != nil {
		t.Fatalf("redrive: %v", err)
	}
	if !slices.Equal(slices.Sorted(slices.Values(res.Moved)), slices.Sorted(slices.Values(want))) || res.Kept != 0 || res.Left != 0 {
		t.Errorf("redrive = %+v, want all %d moved, none kept or left", res, len(want))
	}
	if got, err := dlq.List(ctx, open(), dlqTopic, 0, dlq.WithIdle(time.Second)); err != nil || len(got) != 0 {
		t.Errorf("list after the redrive: %v, %v; want none", ids(got), err)
	}
	lag, err = open().Lag(ctx, dlqTopic, dlq.InspectGroup)
	if err != nil || len(lag) != 1 || lag[0].Unacked != 0 || lag[0].Backlog != 0 {
		t.Errorf("lag after the redrive = %+v, %v; want nothing pending or waiting", lag, err)
	}
	// What reached the source topic: each letter once.
	got := map[string]int{}
	sub, err := c.Conn().Subscribe(ctx, src, "check", mq.SubscribeOptions{MaxInFlight: 100, Concurrency: 1})
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Close()
	for n := 0; n < len(want); {
		ds, err := sub.Receive(ctx, 100)
		if err != nil {
			t.Fatal(err)
		}
		for _, d := range ds {
			got[d.Message().ID]++
			_ = d.Ack(ctx)
		}
		n += len(ds)
	}
	for _, id := range want {
		if got[id] != 1 {
			t.Errorf("%s reached %s %d times, want once (got %v)", id, src, got[id], slices.Sorted(maps.Keys(got)))
		}
	}
}
