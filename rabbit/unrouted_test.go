package rabbit_test

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mqkit/mq"
	"github.com/mqkit/mq/integration/testbed"
	"github.com/mqkit/mq/rabbit"
)

// produceKeyed produces per messages for each of keys keys as
// pyPublishKeyed does, in one Produce.
func produceKeyed(t *testing.T, c *mq.Client, topic string, keys, per int) {
	t.Helper()
	var msgs []*mq.Message
	for i := range per {
		for k := range keys {
			key := fmt.Sprintf("key-%d", k)
			msgs = append(msgs, &mq.Message{ID: fmt.Sprintf("%s-%d", key, i), Key: key, Body: fmt.Appendf(nil, "%s:%d", key, i)})
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := c.Producer().Produce(ctx, topic, msgs...); err != nil {
		t.Fatal(err)
	}
}

// TestUnroutedHandedToFirstGroup: the README's Quick start on RabbitMQ.
// Messages produced before any group exists go to the first group that
// subscribes, before those produced afterwards, each once and in key
// order; a group created later does not get them.
func TestUnroutedHandedToFirstGroup(t *testing.T) {
	b := testbed.SharedRabbitMQ(t)
	for _, params := range []string{"", "?shards=3", "?queue_type=quorum"} {
		t.Run("params="+params, func(t *testing.T) {
			c := openT(t, b.URL+params)
			topic := uniqueTopic("early")
			const keys, per = 3, 20
			produceKeyed(t, c, topic, keys, per)
			first := newCollector()
			consumeT(t, c, topic, first.handle, mq.WithGroup("first"), mq.WithConcurrency(4))
			// Produced once the group exists: comes after the early ones.
			if err := c.Producer().Produce(context.Background(), topic, &mq.Message{ID: "key-0-20", Key: "key-0", Body: []byte("key-0:20")}); err != nil {
				t.Fatal(err)
			}
			checkKeyedLoose(t, first.wait(t, keys*per+1), keys, per)

			later := newCollector()
			consumeT(t, c, topic, later.handle, mq.WithGroup("later"))
			if err := c.Producer().Produce(context.Background(), topic, &mq.Message{ID: "after-both"}); err != nil {
				t.Fatal(err)
			}
			later.wait(t, 1)
			first.wait(t, keys*per+2)
			time.Sleep(500 * time.Millisecond)
			if got := later.snapshot(); len(got) != 1 || got[0].ID != "after-both" {
				t.Errorf("the later group got %v, want only the message produced after it", got)
			}
			if n := len(first.snapshot()); n != keys*per+2 {
				t.Errorf("the first group handled %d messages, want %d (nothing twice)", n, keys*per+2)
			}
			conn := c.Conn().(*rabbit.Conn)
			if bl, err := conn.Backlog(context.Background(), topic, "later"); err != nil || bl != (rabbit.Backlog{}) {
				t.Errorf("Backlog of the later group = %+v, %v; want nothing waiting", bl, err)
			}
		})
	}
}

// checkKeyedLoose is checkKeyed for messages of produceKeyed followed by
// more of the same keys.
func checkKeyedLoose(t *testing.T, msgs []*mq.Message, keys, per int) {
	t.Helper()
	next := map[string]int{}
	seen := map[string]bool{}
	for _, m := range msgs {
		if seen[m.ID] {
			t.Errorf("message %s handled twice", m.ID)
		}
		seen[m.ID] = true
		key, i, _ := strings.Cut(string(m.Body), ":")
		if key != m.Key {
			t.Errorf("message %s has Key %q, body %q", m.ID, m.Key, m.Body)
		}
		if want := fmt.Sprint(next[key]); i != want {
			t.Errorf("key %s: message %s came when %s was due", key, i, want)
		}
		next[key]++
	}
	for k := range keys {
		if n := next[fmt.Sprintf("key-%d", k)]; n < per {
			t.Errorf("key-%d: %d messages, want at least %d", k, n, per)
		}
	}
}

// TestUnroutedConcurrentFirstGroups: two groups, and two members of one
// sharded group, subscribe at once to a topic with messages produced
// before any group: each message goes to exactly one group, once, and a
// sharded group's members keep key order.
func TestUnroutedConcurrentFirstGroups(t *testing.T) {
	b := testbed.SharedRabbitMQ(t)
	const keys, per = 4, 100
	for _, tc := range []struct {
		name, params string
		groups       []string
	}{
		{"two groups", "", []string{"a", "b"}},
		{"two members of a sharded group", "?shards=3", []string{"g", "g"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			topic := uniqueTopic("race")
			produceKeyed(t, openT(t, b.URL+tc.params), topic, keys, per)
			cols := make([]*collector, len(tc.groups))
			conss := make([]mq.Consumer, len(tc.groups))
			errs := make([]error, len(tc.groups))
			var wg sync.WaitGroup
			for i, g := range tc.groups {
				cols[i] = newCollector()
				c := openT(t, b.URL+tc.params)
				wg.Add(1)
				go func() {
					defer wg.Done()
					ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
					defer cancel()
					conss[i], errs[i] = c.Consumer(ctx, topic, mq.WithGroup(g), mq.WithConcurrency(4))
				}()
			}
			wg.Wait()
			for i, cons := range conss {
				if errs[i] != nil {
					t.Fatalf("Consumer %d: %v", i, errs[i])
				}
				ctx, cancel := context.WithCancel(context.Background())
				done := make(chan error, 1)
				go func() { done <- cons.Consume(ctx, mq.HandlerFunc(cols[i].handle)) }()
				t.Cleanup(func() {
					cancel()
					if err := <-done; err != nil {
						t.Errorf("Consume: %v", err)
					}
					_ = cons.Close()
				})
			}
			waitFor(t, 90*time.Second, "every early message", func() bool {
				n := 0
				for _, col := range cols {
					n += len(col.snapshot())
				}
				return n >= keys*per
			})
			time.Sleep(time.Second)
			for i, col := range cols {
				t.Logf("consumer %d (group %s) handled %d", i, tc.groups[i], len(col.snapshot()))
			}
			checkKeyed(t, sortedByMember(cols), keys, per)
		})
	}
}

// sortedByMember concatenates what each collector handled. A key is
// handled by one collector only (one group gets the early messages; a
// shard has one active consumer), so each key's order is one
// collector's.
func sortedByMember(cols []*collector) []*mq.Message {
	var out []*mq.Message
	for _, col := range cols {
		out = append(out, col.snapshot()...)
	}
	return out
}

// TestUnroutedHold: with unrouted=hold the early messages stay in the
// unrouted queue, delivered to no group, logged once and counted by Lag.
func TestUnroutedHold(t *testing.T) {
	b := testbed.SharedRabbitMQ(t)
	logs := &lockedBuffer{}
	c := dialT(t, b.URL+"?unrouted=hold", logs)
	topic := uniqueTopic("hold")
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := c.Producer().Produce(ctx, topic, &mq.Message{ID: "e1"}, &mq.Message{ID: "e2"}); err != nil {
		t.Fatal(err)
	}
	col := newCollector()
	consumeT(t, c, topic, col.handle, mq.WithGroup("g"))
	consumeT(t, c, topic, col.handle, mq.WithGroup("g"))
	conn := c.Conn().(*rabbit.Conn)
	bl, err := conn.Backlog(ctx, topic, "g")
	if err != nil || bl != (rabbit.Backlog{Ready: 0, Unrouted: 2}) {
		t.Errorf("Backlog = %+v, %v; want the 2 held messages as Unrouted", bl, err)
	}
	if n, err := conn.Lag(ctx, topic, "g"); err != nil || n != 2 {
		t.Errorf("Lag = %d, %v; want 2", n, err)
	}
	lag, err := c.Lag(ctx, topic, "g")
	if err != nil || len(lag) != 2 || lag[1].Partition != topic+".unrouted" || lag[1].Backlog != 2 || lag[0].Backlog != 0 {
		t.Errorf("Client.Lag = %+v, %v; want the group's queue with 0 and the unrouted queue with 2", lag, err)
	}
	time.Sleep(500 * time.Millisecond)
	if got := col.snapshot(); len(got) != 0 {
		t.Errorf("held messages delivered: %v", got)
	}
	if n := strings.Count(logs.String(), "unrouted=hold"); n != 1 {
		t.Errorf("held messages logged %d times, want once:\n%s", n, logs)
	}
}

// TestUnroutedMoverDies: a hand-over cut off midway (the broker closes
// every connection while it runs) loses nothing: what it had not
// acknowledged goes back to the unrouted queue, and the group gets every
// message, some perhaps twice, never none.
func TestUnroutedMoverDies(t *testing.T) {
	b := testbed.SharedRabbitMQ(t)
	// A broker busy after closing every connection may take a while to
	// accept new ones: this test is about the hand-over, not the bound.
	url := b.URL + "?reconnect_backoff=50ms&max_reconnect_backoff=500ms&reconnect_timeout=1m"
	c := openT(t, url)
	topic := uniqueTopic("mover-dies")
	const n = 5000
	msgs := make([]*mq.Message, n)
	for i := range msgs {
		msgs[i] = &mq.Message{ID: fmt.Sprintf("m-%05d", i), Body: make([]byte, 512)}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if err := c.Producer().Produce(ctx, topic, msgs...); err != nil {
		t.Fatal(err)
	}
	ch := rawChannel(t, b.URL)
	// Cut the connections once the hand-over has begun.
	cut := make(chan struct{})
	go func() {
		defer close(cut)
		for ctx.Err() == nil {
			q, err := ch.QueueDeclarePassive(topic+".unrouted", true, false, false, false, nil)
			if err != nil || q.Messages < n*9/10 {
				break
			}
			time.Sleep(5 * time.Millisecond)
		}
		if q, err := ch.QueueDeclarePassive(topic+".unrouted", true, false, false, false, nil); err == nil {
			t.Logf("cutting the connections with %d of %d messages still in the unrouted queue", q.Messages, n)
		}
		if err := rabbitmqctl(ctx, b, "close_all_connections", "mqkit test: the mover dies"); err != nil {
			t.Error(err)
		}
	}()
	sub := openT(t, url)
	var mu sync.Mutex
	seen := map[string]int{}
	// Subscribe rides out the cut by itself: it retries the hand-over on
	// a new connection.
	sctx, scancel := context.WithTimeout(ctx, time.Minute)
	cons, err := sub.Consumer(sctx, topic, mq.WithGroup("g"), mq.WithConcurrency(8))
	scancel()
	if err != nil {
		t.Fatal(err)
	}
	<-cut
	rctx, rcancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() {
		done <- cons.Consume(rctx, mq.HandlerFunc(func(_ context.Context, m *mq.Message) error {
			mu.Lock()
			seen[m.ID]++
			mu.Unlock()
			return nil
		}))
	}()
	defer func() {
		rcancel()
		<-done
		_ = cons.Close()
	}()
	waitFor(t, 90*time.Second, "every message", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(seen) == n
	})
	twice := 0
	mu.Lock()
	for _, k := range seen {
		if k > 1 {
			twice++
		}
	}
	mu.Unlock()
	t.Logf("%d messages delivered, %d of them more than once", n, twice)
}

// TestUnroutedHandOverStalledQueue: the unrouted quorum queue stops
// applying commands (its Raft server suspended, as a slow disk or a
// memory alarm would hold it) from the hand-over's first
// acknowledgement until 3 s later, so the move ends and closes its
// channel while its acknowledgements wait. RabbitMQ 3.13's channel holds
// back a quorum queue's settlements past 32 unapplied commands and drops
// them when the channel closes: with an ack per message the messages
// came back to the unrouted queue, and a later group got them again.
// Every message moved must stay acknowledged.
func TestUnroutedHandOverStalledQueue(t *testing.T) {
	b := testbed.SharedRabbitMQ(t)
	c := openT(t, b.URL+"?queue_type=quorum")
	conn := c.Conn().(*rabbit.Conn)
	topic := uniqueTopic("stalled")
	const keys, per = 4, 50
	produceKeyed(t, c, topic, keys, per)

	raft := func(op, queue string) error {
		// A quorum queue's Raft server is registered as <vhost>_<queue>.
		return rabbitmqctl(context.Background(), b, "eval",
			fmt.Sprintf(`sys:%s(whereis(binary_to_atom(<<"%%2F_%s">>))).`, op, queue))
	}
	resumed := make(chan error, 1)
	var once sync.Once
	rabbit.SetHandOverBeforeAck(conn, func(queue string) {
		once.Do(func() {
			if err := raft("suspend", queue); err != nil {
				resumed <- err
				return
			}
			go func() {
				time.Sleep(3 * time.Second)
				resumed <- raft("resume", queue)
			}()
		})
	})
	first := newCollector()
	consumeT(t, c, topic, first.handle, mq.WithGroup("first"), mq.WithConcurrency(4))
	checkKeyedLoose(t, first.wait(t, keys*per), keys, per)
	select {
	case err := <-resumed:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(time.Minute):
		t.Fatal("the hand-over sent no acknowledgement")
	}
	// What the broker takes back when the channel's consumer goes is back
	// in the unrouted queue as soon as the queue applies commands again
	// (while it does not, the broker counts its messages as 0).
	for deadline := time.Now().Add(3 * time.Second); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		bl, err := conn.Backlog(context.Background(), topic, "first")
		if err != nil {
			t.Fatal(err)
		}
		if bl.Unrouted != 0 {
			t.Fatalf("%d messages came back to the unrouted queue after the first group got all %d", bl.Unrouted, keys*per)
		}
	}

	later := newCollector()
	consumeT(t, c, topic, later.handle, mq.WithGroup("later"))
	if err := c.Producer().Produce(context.Background(), topic, &mq.Message{ID: "after-both"}); err != nil {
		t.Fatal(err)
	}
	later.wait(t, 1)
	time.Sleep(500 * time.Millisecond)
	if got := later.snapshot(); len(got) != 1 || got[0].ID != "after-both" {
		t.Errorf("the later group got %d messages, want only the one produced after it", len(got))
	}
}
