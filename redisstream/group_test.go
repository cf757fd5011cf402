package redisstream_test

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/mqkit/mq"
	"github.com/mqkit/mq/redisstream"
)

// TestPing: a reachable Redis answers; an unreachable one, and one that
// does not answer in time, give mq.ErrUnavailable; a closed client
// mq.ErrClosed.
func TestPing(t *testing.T) {
	ctx := context.Background()
	c := open(t, "")
	if err := c.Ping(ctx); err != nil {
		t.Fatalf("Ping: %v", err)
	}
	// mq.Open pings; NewConn does not.
	deadClient := redis.NewClient(&redis.Options{Addr: "127.0.0.1:1", DialTimeout: 200 * time.Millisecond, MaxRetries: -1})
	defer deadClient.Close()
	deadConn, err := redisstream.NewConn(deadClient, redisstream.Config{})
	if err != nil {
		t.Fatal(err)
	}
	dead := mq.NewClient(deadConn)
	defer dead.Close()
	if err := dead.Ping(ctx); !errors.Is(err, mq.ErrUnavailable) {
		t.Errorf("Ping of a closed port = %v, want mq.ErrUnavailable", err)
	}
	expired, cancel := context.WithTimeout(ctx, -time.Second)
	defer cancel()
	if err := c.Ping(expired); !errors.Is(err, mq.ErrUnavailable) || !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Ping past its deadline = %v, want mq.ErrUnavailable and the deadline", err)
	}
	_ = c.Close()
	if err := c.Ping(ctx); !errors.Is(err, mq.ErrClosed) {
		t.Errorf("Ping after Close = %v, want mq.ErrClosed", err)
	}
}

// TestPartitionLag: Backlog, Unacked and OldestAge follow what the group
// was given and acknowledged, with ages from the entry IDs' time; an
// unknown group or topic is mq.ErrUnknownGroup, through Client.Lag and
// Conn.Lag alike.
func TestPartitionLag(t *testing.T) {
	ctx := context.Background()
	topic := topicName(t)
	raw := rawClient(t)
	c := open(t, "")
	conn := c.Conn().(*redisstream.Conn)
	if _, err := c.Lag(ctx, topic, "g"); !errors.Is(err, mq.ErrUnknownGroup) {
		t.Errorf("Lag of a missing topic = %v, want mq.ErrUnknownGroup", err)
	}
	// Five entries an hour old, one a minute old.
	hourAgo := time.Now().Add(-time.Hour).UnixMilli()
	for i := range 5 {
		if err := raw.XAdd(ctx, &redis.XAddArgs{Stream: topic, ID: fmt.Sprintf("%d-%d", hourAgo+int64(i), 0), Values: []any{"id", fmt.Sprint(i)}}).Err(); err != nil {
			t.Fatal(err)
		}
	}
	minuteAgo := time.Now().Add(-time.Minute).UnixMilli()
	if err := raw.XAdd(ctx, &redis.XAddArgs{Stream: topic, ID: fmt.Sprintf("%d-0", minuteAgo), Values: []any{"id", "5"}}).Err(); err != nil {
		t.Fatal(err)
	}
	sub, err := conn.Subscribe(ctx, topic, "g", mq.SubscribeOptions{MaxInFlight: 2, Concurrency: 1})
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Close()
	for _, group := range []string{"nope"} {
		if _, err := c.Lag(ctx, topic, group); !errors.Is(err, mq.ErrUnknownGroup) {
			t.Errorf("Lag of a missing group = %v, want mq.ErrUnknownGroup", err)
		}
		if _, _, err := conn.Lag(ctx, topic, group); !errors.Is(err, mq.ErrUnknownGroup) || !errors.Is(err, redis.Nil) {
			t.Errorf("Conn.Lag of a missing group = %v, want mq.ErrUnknownGroup and redis.Nil", err)
		}
	}
	check := func(what string, backlog, unacked int64, age time.Duration) {
		t.Helper()
		lag, err := c.Lag(ctx, topic, "g")
		if err != nil {
			t.Fatalf("%s: Lag: %v", what, err)
		}
		if len(lag) != 1 || lag[0].Partition != topic || lag[0].Backlog != backlog || lag[0].Unacked != unacked ||
			lag[0].OldestAge < age || lag[0].OldestAge > age+time.Minute {
			t.Errorf("%s: Lag = %+v, want %s backlog %d unacked %d age about %v", what, lag, topic, backlog, unacked, age)
		}
	}
	check("nothing delivered", 6, 0, time.Hour)
	ds, err := sub.Receive(ctx, 2)
	if err != nil || len(ds) != 2 {
		t.Fatalf("Receive: %d, %v", len(ds), err)
	}
	check("two delivered", 4, 2, time.Hour)
	var rest []mq.Delivery
	for len(rest) < 4 {
		more, err := sub.Receive(ctx, 4-len(rest))
		if err != nil {
			t.Fatal(err)
		}
		rest = append(rest, more...)
	}
	for _, d := range append(ds, rest[:3]...) {
		if err := d.Ack(ctx); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, "the acks", func() bool { p, _, _ := conn.Lag(ctx, topic, "g"); return p == 1 })
	check("one pending, a minute old", 0, 1, time.Minute)
	if err := rest[3].Ack(ctx); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the last ack", func() bool { p, _, _ := conn.Lag(ctx, topic, "g"); return p == 0 })
	check("all acknowledged", 0, 0, 0)
}

// TestPartitionLagSharded: one entry per shard stream, sorted, summing to
// what was produced; a Conn opened without shards= reads the topic's own
// layout.
func TestPartitionLagSharded(t *testing.T) {
	ctx := context.Background()
	topic := topicName(t)
	c := open(t, "shards=3")
	cons, err := c.Consumer(ctx, topic, mq.WithGroup("g"))
	if err != nil {
		t.Fatal(err)
	}
	_ = cons.Close()
	var msgs []*mq.Message
	for i := range 30 {
		msgs = append(msgs, &mq.Message{Key: fmt.Sprint("k", i)})
	}
	if err := c.Producer().Produce(ctx, topic, msgs...); err != nil {
		t.Fatal(err)
	}
	lag, err := open(t, "").Lag(ctx, topic, "g")
	if err != nil {
		t.Fatal(err)
	}
	var sum int64
	for i, pl := range lag {
		if want := fmt.Sprintf("{%s}:%d", topic, i); pl.Partition != want || pl.Unacked != 0 || (pl.Backlog > 0) != (pl.OldestAge > 0) {
			t.Errorf("entry %d: %+v, want partition %s, 0 unacked, an age when backlogged", i, pl, want)
		}
		sum += pl.Backlog
	}
	if len(lag) != 3 || sum != 30 {
		t.Errorf("Lag = %+v, want 3 shards with 30 entries in all", lag)
	}
}

// TestDeleteGroup: a running consumer, or one that crashed less than
// claim_idle ago, makes DeleteGroup refuse with mq.ErrGroupActive; one
// that closed (handing back what it held) does not. Deleting removes the
// group and its pending entries and leaves other groups alone; a group or
// topic that does not exist is nil.
func TestDeleteGroup(t *testing.T) {
	ctx := context.Background()
	topic := topicName(t)
	raw := rawClient(t)
	c := open(t, "claim_idle=1s")
	if err := c.DeleteGroup(ctx, topic, "g"); err != nil {
		t.Errorf("DeleteGroup of a missing topic: %v", err)
	}
	for _, g := range []string{"g", "other"} {
		cons, err := c.Consumer(ctx, topic, mq.WithGroup(g))
		if err != nil {
			t.Fatal(err)
		}
		_ = cons.Close()
	}
	if err := c.Producer().Produce(ctx, topic, &mq.Message{Body: []byte("a")}, &mq.Message{Body: []byte("b")}); err != nil {
		t.Fatal(err)
	}

	// Running.
	cctx, stop := context.WithCancel(ctx)
	cons, err := c.Consumer(ctx, topic, mq.WithGroup("g"), mq.WithShutdownTimeout(50*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() {
		done <- cons.Consume(cctx, mq.HandlerFunc(func(ctx context.Context, _ *mq.Message) error { <-ctx.Done(); return ctx.Err() }))
	}()
	waitFor(t, "the consumer to take both", func() bool { p, _, _ := c.Conn().(*redisstream.Conn).Lag(ctx, topic, "g"); return p == 2 })
	if err := c.DeleteGroup(ctx, topic, "g"); !errors.Is(err, mq.ErrGroupActive) {
		t.Errorf("DeleteGroup with a running consumer = %v, want mq.ErrGroupActive", err)
	}
	// Closed, its entries handed back: deletable at once.
	stop()
	<-done
	if err := cons.Close(); err != nil {
		t.Fatal(err)
	}
	// Crashed a moment ago: a consumer name seen just now, holding an entry.
	if err := raw.XReadGroup(ctx, &redis.XReadGroupArgs{Group: "g", Consumer: "crashed", Streams: []string{topic, "0"}, Count: 1}).Err(); err != nil {
		t.Fatal(err)
	}
	if err := raw.XClaim(ctx, &redis.XClaimArgs{Stream: topic, Group: "g", Consumer: "crashed", Messages: firstPending(t, raw, topic)}).Err(); err != nil {
		t.Fatal(err)
	}
	if err := c.DeleteGroup(ctx, topic, "g"); !errors.Is(err, mq.ErrGroupActive) {
		t.Errorf("DeleteGroup right after a consumer crashed = %v, want mq.ErrGroupActive", err)
	}
	time.Sleep(1200 * time.Millisecond) // claim_idle
	if err := c.DeleteGroup(ctx, topic, "g"); err != nil {
		t.Fatalf("DeleteGroup after claim_idle: %v", err)
	}
	groups, err := raw.XInfoGroups(ctx, topic).Result()
	if err != nil || len(groups) != 1 || groups[0].Name != "other" {
		t.Errorf("groups after the delete: %+v, %v; want only other", groups, err)
	}
	if err := c.DeleteGroup(ctx, topic, "g"); err != nil {
		t.Errorf("DeleteGroup again: %v", err)
	}
	if _, err := c.Lag(ctx, topic, "g"); !errors.Is(err, mq.ErrUnknownGroup) {
		t.Errorf("Lag of the deleted group = %v, want mq.ErrUnknownGroup", err)
	}
}

// TestDeleteGroupSharded: a member holding shards makes DeleteGroup
// refuse; once it closed, the group goes from every shard with its lease
// keys and members set.
func TestDeleteGroupSharded(t *testing.T) {
	ctx := context.Background()
	topic := topicName(t)
	raw := rawClient(t)
	c := open(t, "shards=2&claim_idle=1s&shard_lease=1s")
	col := newCollector()
	cons, err := c.Consumer(ctx, topic, mq.WithGroup("g"))
	if err != nil {
		t.Fatal(err)
	}
	cctx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- cons.Consume(cctx, mq.HandlerFunc(col.handle)) }()
	waitFor(t, "the shard leases", func() bool {
		n, _ := raw.Exists(ctx, "{"+topic+"}:lease:g:0", "{"+topic+"}:lease:g:1").Result()
		return n == 2
	})
	if err := c.DeleteGroup(ctx, topic, "g"); !errors.Is(err, mq.ErrGroupActive) {
		t.Errorf("DeleteGroup with a member holding shards = %v, want mq.ErrGroupActive", err)
	}
	stop()
	<-done
	_ = cons.Close()
	if err := c.DeleteGroup(ctx, topic, "g"); err != nil {
		t.Fatalf("DeleteGroup after the member closed: %v", err)
	}
	for i := range 2 {
		if groups, _ := raw.XInfoGroups(ctx, fmt.Sprintf("{%s}:%d", topic, i)).Result(); len(groups) != 0 {
			t.Errorf("shard %d still has groups %+v", i, groups)
		}
	}
	if n, _ := raw.Exists(ctx, "{"+topic+"}:lease:g:0", "{"+topic+"}:lease:g:1", "{"+topic+"}:members:g").Result(); n != 0 {
		t.Errorf("%d lease or members keys left", n)
	}
}

func firstPending(t *testing.T, raw *redis.Client, stream string) []string {
	t.Helper()
	p, err := raw.XPendingExt(context.Background(), &redis.XPendingExtArgs{Stream: stream, Group: "g", Start: "-", End: "+", Count: 1}).Result()
	if err != nil || len(p) == 0 {
		t.Fatalf("XPENDING: %v, %d entries", err, len(p))
	}
	return []string{p[0].ID}
}

// waitFor polls cond until it holds, failing the test after 20s.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
