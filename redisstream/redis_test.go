package redisstream_test

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/mqkit/mq"
	"github.com/mqkit/mq/integration/testbed"
	"github.com/mqkit/mq/redisstream"
)

func topicName(t testing.TB) string {
	var b [4]byte
	_, _ = rand.Read(b[:])
	return fmt.Sprintf("%s-%x", strings.ReplaceAll(t.Name(), "/", "-"), b)
}

// rawClient is a go-redis client to the test Redis, as another program
// would have.
func rawClient(t testing.TB) *redis.Client {
	t.Helper()
	opts, err := redis.ParseURL(redisURL(t, ""))
	if err != nil {
		t.Fatal(err)
	}
	c := redis.NewClient(opts)
	t.Cleanup(func() { _ = c.Close() })
	return c
}

// collector records handled messages.
type collector struct {
	mu   sync.Mutex
	msgs []*mq.Message
	by   map[string]int
}

func newCollector() *collector { return &collector{by: map[string]int{}} }

func (c *collector) handle(_ context.Context, m *mq.Message) error {
	c.mu.Lock()
	c.msgs = append(c.msgs, m.Clone())
	c.by[m.ID]++
	c.mu.Unlock()
	return nil
}

// wait waits until every id was handled, failing after timeout.
func (c *collector) wait(t *testing.T, ids []string, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		c.mu.Lock()
		missing := 0
		for _, id := range ids {
			if c.by[id] == 0 {
				missing++
			}
		}
		c.mu.Unlock()
		if missing == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d of %d messages were not handled within %v", missing, len(ids), timeout)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// consume runs Consume in the background until the test ends.
func consume(t *testing.T, c *mq.Client, topic, group string, h mq.HandlerFunc, opts ...mq.Option) mq.Consumer {
	t.Helper()
	cons, err := c.Consumer(context.Background(), topic, append([]mq.Option{mq.WithGroup(group)}, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- cons.Consume(ctx, h) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Consume: %v", err)
		}
		_ = cons.Close()
	})
	return cons
}

// TestCrashedConsumerLosesNothing: a consumer reads entries and dies
// without acknowledging them (its connection closes, nothing is handed
// back). Another member of the group claims and handles every one.
func TestCrashedConsumerLosesNothing(t *testing.T) {
	ctx := context.Background()
	topic := topicName(t)
	raw := rawClient(t)
	if err := raw.XGroupCreateMkStream(ctx, topic, "g", "0").Err(); err != nil {
		t.Fatal(err)
	}
	c := open(t, "claim_idle=500ms")
	var msgs []*mq.Message
	for i := range 30 {
		msgs = append(msgs, &mq.Message{Key: fmt.Sprintf("k%d", i%3), Body: []byte(fmt.Sprint(i))})
	}
	if err := c.Producer().Produce(ctx, topic, msgs...); err != nil {
		t.Fatal(err)
	}

	// The doomed consumer takes 20 entries, then its process "dies".
	dead, _ := redis.ParseURL(redisURL(t, ""))
	deadClient := redis.NewClient(dead)
	res, err := deadClient.XReadGroup(ctx, &redis.XReadGroupArgs{Group: "g", Consumer: "dead", Streams: []string{topic, ">"}, Count: 20}).Result()
	if err != nil || len(res[0].Messages) != 20 {
		t.Fatalf("XREADGROUP as the doomed consumer: %v (%d entries)", err, len(res))
	}
	_ = deadClient.Close()

	col := newCollector()
	consume(t, c, topic, "g", col.handle, mq.WithConcurrency(4))
	var ids []string
	for _, m := range msgs {
		ids = append(ids, m.ID)
	}
	col.wait(t, ids, 30*time.Second)

	col.mu.Lock()
	byID := map[string]*mq.Message{}
	for _, m := range col.msgs {
		byID[m.ID] = m
	}
	col.mu.Unlock()
	for i, m := range msgs {
		got := byID[m.ID]
		if i < 20 && got.Attempt != 2 {
			t.Errorf("message %d was claimed from the dead consumer: Attempt = %d, want 2", i, got.Attempt)
		}
		if i >= 20 && got.Attempt != 1 {
			t.Errorf("message %d was never delivered before: Attempt = %d, want 1", i, got.Attempt)
		}
	}

	// Everything is acknowledged in the end.
	conn := c.Conn().(*redisstream.Conn)
	deadline := time.Now().Add(10 * time.Second)
	for {
		pending, lag, err := conn.Lag(ctx, topic, "g")
		if err != nil {
			t.Fatal(err)
		}
		if pending == 0 && lag == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("pending %d, lag %d after handling everything; want 0 and 0", pending, lag)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestLiveConsumerKeepsItsEntries: a handler that runs far longer than
// claim_idle keeps its entry; another member does not take it.
func TestLiveConsumerKeepsItsEntries(t *testing.T) {
	ctx := context.Background()
	topic := topicName(t)
	c1, c2 := open(t, "claim_idle=300ms"), open(t, "claim_idle=300ms")
	var mu sync.Mutex
	handled := map[string]int{}
	h := func(ctx context.Context, m *mq.Message) error {
		mu.Lock()
		handled[m.ID]++
		mu.Unlock()
		if m.ID == "slow" {
			time.Sleep(2 * time.Second) // ~7 claim_idle periods
		}
		return nil
	}
	consume(t, c1, topic, "g", h)
	if err := c1.Producer().Produce(ctx, topic, &mq.Message{ID: "slow"}); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(20 * time.Second)
	for {
		mu.Lock()
		n := handled["slow"]
		mu.Unlock()
		if n > 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("slow message never handled")
		}
		time.Sleep(10 * time.Millisecond)
	}
	consume(t, c2, topic, "g", h)
	time.Sleep(2500 * time.Millisecond)
	mu.Lock()
	defer mu.Unlock()
	if handled["slow"] != 1 {
		t.Errorf("the slow message was handled %d times; a live consumer's entry must not be claimed", handled["slow"])
	}
}

// TestInterop: entries added by a program that knows nothing of the SDK.
func TestInterop(t *testing.T) {
	ctx := context.Background()
	topic := topicName(t)
	raw := rawClient(t)
	c := open(t, "")
	col := newCollector()
	consume(t, c, topic, "g", col.handle)

	// As `redis-cli XADD stream '*' body hello` would.
	id1, err := raw.XAdd(ctx, &redis.XAddArgs{Stream: topic, Values: []any{"body", "hello"}}).Result()
	if err != nil {
		t.Fatal(err)
	}
	// Several plain fields: headers, and a JSON object of them as the body.
	id2, err := raw.XAdd(ctx, &redis.XAddArgs{Stream: topic, Values: []any{"event", "signup", "user", "42"}}).Result()
	if err != nil {
		t.Fatal(err)
	}
	col.wait(t, []string{id1, id2}, 30*time.Second)
	col.mu.Lock()
	defer col.mu.Unlock()
	for _, m := range col.msgs {
		switch m.ID {
		case id1:
			if string(m.Body) != "hello" || len(m.Headers) != 0 || m.Key != "" {
				t.Errorf("body-only entry: %v body %q headers %v", m, m.Body, m.Headers)
			}
		case id2:
			if string(m.Body) != `{"event":"signup","user":"42"}` || m.Header("event") != "signup" || m.Header("user") != "42" || m.Header(redisstream.HeaderBodyFrom) != "json" {
				t.Errorf("foreign entry: %v body %q headers %v", m, m.Body, m.Headers)
			}
		}
		if m.Timestamp.IsZero() || time.Since(m.Timestamp) > time.Minute {
			t.Errorf("%s: timestamp %v, want the entry ID's time", m.ID, m.Timestamp)
		}
	}
}

// TestWireFormat: what the SDK writes, as another program reads it.
func TestWireFormat(t *testing.T) {
	ctx := context.Background()
	topic := topicName(t)
	c := open(t, "")
	m := &mq.Message{ID: "id-1", Key: "order-7", Headers: map[string]string{"trace": "abc"}, Body: []byte{0, 1, 0xff}}
	if err := c.Producer().Produce(ctx, topic, m); err != nil {
		t.Fatal(err)
	}
	got, err := rawClient(t).XRange(ctx, topic, "-", "+").Result()
	if err != nil || len(got) != 1 {
		t.Fatalf("XRANGE: %v, %d entries", err, len(got))
	}
	want := map[string]any{"id": "id-1", "key": "order-7", "h:trace": "abc", "body": "\x00\x01\xff"}
	if fmt.Sprint(got[0].Values) != fmt.Sprint(want) {
		t.Errorf("entry fields = %q, want %q", got[0].Values, want)
	}
}

// TestShardedKeyOrderTwoConsumers: with shards, two consumers of a group
// (joining at different times, so shards move between them) handle every
// message, and each key's messages in produce order.
func TestShardedKeyOrderTwoConsumers(t *testing.T) {
	ctx := context.Background()
	topic := topicName(t)
	const params = "shards=8&shard_lease=600ms&claim_idle=2s"
	c1, c2 := open(t, params), open(t, params)
	const keys, perKey = 16, 60

	var mu sync.Mutex
	next := map[string]int{}
	seen := map[string]bool{}
	perConsumer := [2]int{}
	var failures []string
	handler := func(who int) mq.HandlerFunc {
		return func(_ context.Context, m *mq.Message) error {
			var seq int
			fmt.Sscan(string(m.Body), &seq)
			mu.Lock()
			defer mu.Unlock()
			if seen[m.ID] {
				return nil // a redelivery after a handled message is not an order violation
			}
			if want := next[m.Key]; seq != want && len(failures) < 10 {
				failures = append(failures, fmt.Sprintf("key %s: consumer %d got #%d, want #%d", m.Key, who, seq, want))
			}
			next[m.Key] = seq + 1
			seen[m.ID] = true
			perConsumer[who]++
			time.Sleep(time.Millisecond)
			return nil
		}
	}
	consume(t, c1, topic, "g", handler(0), mq.WithConcurrency(4))
	p := c1.Producer()
	var ids []string
	produceWave := func(from, to int) {
		var batch []*mq.Message
		for i := from; i < to; i++ {
			for k := range keys {
				batch = append(batch, &mq.Message{Key: fmt.Sprintf("key-%02d", k), Body: []byte(fmt.Sprint(i))})
			}
		}
		if err := p.Produce(ctx, topic, batch...); err != nil {
			t.Fatal(err)
		}
		for _, m := range batch {
			ids = append(ids, m.ID)
		}
	}
	produceWave(0, 20)
	consume(t, c2, topic, "g", handler(1), mq.WithConcurrency(4))
	for wave := 1; wave < 3; wave++ {
		time.Sleep(time.Second) // let the shards rebalance while messages flow
		produceWave(wave*20, (wave+1)*20)
	}

	deadline := time.Now().Add(60 * time.Second)
	for {
		mu.Lock()
		n := len(seen)
		mu.Unlock()
		if n == len(ids) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("handled %d of %d messages", n, len(ids))
		}
		time.Sleep(20 * time.Millisecond)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(failures) > 0 {
		t.Errorf("per-key order broken:\n%s", strings.Join(failures, "\n"))
	}
	for k := range keys {
		if got := next[fmt.Sprintf("key-%02d", k)]; got != perKey {
			t.Errorf("key-%02d: last handled #%d, want #%d", k, got-1, perKey-1)
		}
	}
	if perConsumer[1] == 0 {
		t.Errorf("the second consumer handled nothing (first: %d): shards were not shared", perConsumer[0])
	}
	t.Logf("consumer 1 handled %d, consumer 2 handled %d", perConsumer[0], perConsumer[1])
}

// TestShardMismatch: a producer or consumer with another shard count than
// the topic's is refused.
func TestShardMismatch(t *testing.T) {
	ctx := context.Background()
	topic := topicName(t)
	sharded, plain, other := open(t, "shards=4"), open(t, ""), open(t, "shards=2")
	if err := sharded.Producer().Produce(ctx, topic, &mq.Message{Key: "k"}); err != nil {
		t.Fatal(err)
	}
	if err := plain.Producer().Produce(ctx, topic, &mq.Message{Key: "k"}); !errors.Is(err, redisstream.ErrShardMismatch) {
		t.Errorf("unsharded Produce to a sharded topic = %v, want ErrShardMismatch", err)
	}
	if _, err := other.Consumer(ctx, topic, mq.WithGroup("g")); !errors.Is(err, redisstream.ErrShardMismatch) {
		t.Errorf("Consumer with shards=2 on a 4-shard topic = %v, want ErrShardMismatch", err)
	}
	keys := sharded.Conn().(*redisstream.Conn).StreamKeys(topic)
	if len(keys) != 4 || keys[0] != "{"+topic+"}:0" {
		t.Errorf("StreamKeys = %q", keys)
	}
}

// TestLagAndTrim: Lag counts undelivered and pending entries; maxlen trims.
func TestLagAndTrim(t *testing.T) {
	ctx := context.Background()
	topic := topicName(t)
	c := open(t, "maxlen=100")
	conn := c.Conn().(*redisstream.Conn)
	if _, _, err := conn.Lag(ctx, topic, "g"); !errors.Is(err, redis.Nil) {
		t.Errorf("Lag of a missing topic = %v, want an error wrapping redis.Nil", err)
	}
	cons, err := c.Consumer(ctx, topic, mq.WithGroup("g"))
	if err != nil {
		t.Fatal(err)
	}
	defer cons.Close()
	var msgs []*mq.Message
	for range 10 {
		msgs = append(msgs, &mq.Message{Body: []byte("x")})
	}
	if err := c.Producer().Produce(ctx, topic, msgs...); err != nil {
		t.Fatal(err)
	}
	pending, lag, err := conn.Lag(ctx, topic, "g")
	if err != nil || pending != 0 || lag != 10 {
		t.Errorf("Lag = %d pending, %d lag, %v; want 0, 10, nil", pending, lag, err)
	}
	if _, _, err := conn.Lag(ctx, topic, "nope"); !errors.Is(err, redis.Nil) {
		t.Errorf("Lag of a missing group = %v, want an error wrapping redis.Nil", err)
	}

	// Approximate trimming keeps at least maxlen entries and removes whole
	// nodes beyond it.
	var many []*mq.Message
	for range 1000 {
		many = append(many, &mq.Message{Body: []byte("y")})
	}
	if err := c.Producer().Produce(ctx, topic, many...); err != nil {
		t.Fatal(err)
	}
	n, err := rawClient(t).XLen(ctx, topic).Result()
	if err != nil || n < 100 || n >= 1010 {
		t.Errorf("XLEN after 1010 entries with maxlen=100 = %d (%v); want trimmed to about 100", n, err)
	}
}

// TestTooLarge: a message over the Conn's limit fails before sending.
func TestTooLarge(t *testing.T) {
	client := rawClient(t)
	conn, err := redisstream.NewConn(client, redisstream.Config{MaxMessageBytes: 1000})
	if err != nil {
		t.Fatal(err)
	}
	c := mq.NewClient(conn)
	defer c.Close()
	topic := topicName(t)
	err = c.Producer().Produce(context.Background(), topic, &mq.Message{Body: make([]byte, 1001)})
	if !errors.Is(err, mq.ErrMessageTooLarge) {
		t.Errorf("Produce over the limit = %v, want ErrMessageTooLarge", err)
	}
	if n, _ := client.Exists(context.Background(), topic).Result(); n != 0 {
		t.Error("the stream exists: something was sent")
	}
	if err := client.Ping(context.Background()).Err(); err != nil {
		t.Errorf("closing a Conn made with NewConn closed the caller's client: %v", err)
	}
}

// TestRedisRestart: a consumer keeps consuming after the server restarts
// (the test server keeps its data in an append-only file; the group is
// recreated if it was lost). TestRestartKeepsKeyOrder restarts under load.
func TestRedisRestart(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	br := testbed.Redis(t)
	c, err := mq.Open(ctx, br.URL+"?claim_idle=1s&block=500ms")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	topic := topicName(t)
	col := newCollector()
	consume(t, c, topic, "g", col.handle)
	p := c.Producer()
	m1 := &mq.Message{Body: []byte("before")}
	if err := p.Produce(ctx, topic, m1); err != nil {
		t.Fatal(err)
	}
	col.wait(t, []string{m1.ID}, 30*time.Second)

	if err := br.Restart(ctx); err != nil {
		t.Fatal(err)
	}
	m2 := &mq.Message{Body: []byte("after")}
	deadline := time.Now().Add(30 * time.Second)
	for {
		err := p.Produce(ctx, topic, m2)
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("Produce after the restart: %v", err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	col.wait(t, []string{m2.ID}, 30*time.Second)
}

// TestCloseRemovesConsumerName: a closed consumer with nothing pending
// leaves no consumer name behind; one whose messages were handed back
// keeps its name until they are claimed (its entries stay pending).
func TestCloseRemovesConsumerName(t *testing.T) {
	ctx := context.Background()
	topic := topicName(t)
	c := open(t, "claim_idle=30s")
	raw := rawClient(t)
	consumers := func() []redis.XInfoConsumer {
		cs, err := raw.XInfoConsumers(ctx, topic, "g").Result()
		if err != nil {
			t.Fatal(err)
		}
		return cs
	}

	col := newCollector()
	cons, err := c.Consumer(ctx, topic, mq.WithGroup("g"))
	if err != nil {
		t.Fatal(err)
	}
	cctx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- cons.Consume(cctx, mq.HandlerFunc(col.handle)) }()
	m := &mq.Message{Body: []byte("x")}
	if err := c.Producer().Produce(ctx, topic, m); err != nil {
		t.Fatal(err)
	}
	col.wait(t, []string{m.ID}, 30*time.Second)
	if n := len(consumers()); n != 1 {
		t.Fatalf("%d consumer names while consuming, want 1", n)
	}
	cancel()
	<-done
	if err := cons.Close(); err != nil {
		t.Fatal(err)
	}
	if cs := consumers(); len(cs) != 0 {
		t.Errorf("consumer names after Close with nothing pending: %+v, want none", cs)
	}

	// Now a consumer stopped mid-handler: its message is handed back, stays
	// pending under its name, and is claimable at once.
	block := make(chan struct{})
	cons2, err := c.Consumer(ctx, topic, mq.WithGroup("g"), mq.WithShutdownTimeout(50*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	started := make(chan struct{})
	go func() {
		_ = cons2.Consume(ctx, mq.HandlerFunc(func(hctx context.Context, m *mq.Message) error {
			close(started)
			select {
			case <-hctx.Done():
			case <-block:
			}
			return hctx.Err()
		}))
	}()
	m2 := &mq.Message{Body: []byte("y")}
	if err := c.Producer().Produce(ctx, topic, m2); err != nil {
		t.Fatal(err)
	}
	<-started
	if err := cons2.Close(); err != nil {
		t.Fatal(err)
	}
	if cs := consumers(); len(cs) != 1 || cs[0].Pending != 1 {
		t.Errorf("after handing back one message: %+v, want one consumer with 1 pending entry", cs)
	}
	pend, err := raw.XPendingExt(ctx, &redis.XPendingExtArgs{Stream: topic, Group: "g", Start: "-", End: "+", Count: 10}).Result()
	if err != nil || len(pend) != 1 || pend[0].Idle < 29*time.Second || pend[0].RetryCount != 1 {
		t.Errorf("pending entries after the hand-back: %+v (%v); want one, idle for claim_idle, delivered once", pend, err)
	}
	col2 := newCollector()
	consume(t, c, topic, "g", col2.handle)
	col2.wait(t, []string{m2.ID}, 30*time.Second)
}
