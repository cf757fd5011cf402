package redisstream_test

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"maps"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/mqkit/mq"
	"github.com/mqkit/mq/integration/testbed"
	"github.com/mqkit/mq/redisstream"
)

// delayedBatch returns n messages with keys k0..k19, due at start plus
// from..from+spread, uniformly at random.
func delayedBatch(n int, start time.Time, from, spread time.Duration) []*mq.Message {
	msgs := make([]*mq.Message, n)
	for i := range msgs {
		msgs[i] = &mq.Message{Key: fmt.Sprintf("k%d", i%20), Body: []byte(fmt.Sprint(i)), DeliverAt: start.Add(from + rand.N(spread+1))}
	}
	return msgs
}

// produceAll produces msgs in batches of 500, failing the test on error.
func produceAll(t *testing.T, c *mq.Client, topic string, msgs []*mq.Message) {
	t.Helper()
	p := c.Producer()
	defer p.Close()
	for i := 0; i < len(msgs); i += 500 {
		if err := p.Produce(context.Background(), topic, msgs[i:min(i+500, len(msgs))]...); err != nil {
			t.Fatalf("Produce: %v", err)
		}
	}
}

func ids(msgs []*mq.Message) []string {
	out := make([]string, len(msgs))
	for i, m := range msgs {
		out[i] = m.ID
	}
	return out
}

// streamIDs returns the message IDs of every entry in the topic's
// streams, with the count of entries of each.
func streamIDs(t *testing.T, raw *redis.Client, streams []string) map[string]int {
	t.Helper()
	seen := map[string]int{}
	for _, s := range streams {
		xs, err := raw.XRange(context.Background(), s, "-", "+").Result()
		if err != nil {
			t.Fatalf("XRANGE %s: %v", s, err)
		}
		for _, x := range xs {
			id, _ := x.Values[redisstream.FieldID].(string)
			seen[id]++
		}
	}
	return seen
}

// checkOnce fails the test unless every message of msgs is in the streams
// exactly once and nothing else is there.
func checkOnce(t *testing.T, raw *redis.Client, streams []string, msgs []*mq.Message) {
	t.Helper()
	seen := streamIDs(t, raw, streams)
	missing, twice := 0, 0
	for _, m := range msgs {
		switch seen[m.ID] {
		case 0:
			missing++
		case 1:
		default:
			twice++
		}
	}
	if missing > 0 || twice > 0 || len(seen) != len(msgs) {
		t.Fatalf("streams hold %d distinct messages for %d scheduled: %d missing, %d moved more than once", len(seen), len(msgs), missing, twice)
	}
}

// TestDelayRedisRestart restarts Redis (append only, fsync always) while
// 500 delayed messages wait and the first of them are being moved:
// every one enters the topic exactly once, none early.
func TestDelayRedisRestart(t *testing.T) {
	br := testbed.Redis(t)
	for _, tc := range []struct{ name, params string }{
		{"unsharded", "?claim_idle=2s&block=300ms"},
		{"sharded", "?shards=4&shard_lease=2s&claim_idle=2s&block=300ms"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			prod, cons := openURL(t, br.URL+tc.params), openURL(t, br.URL+tc.params)
			topic := topicName(t)
			col := newCollector()
			var mu sync.Mutex
			early := 0
			consume(t, cons, topic, "g", func(ctx context.Context, m *mq.Message) error {
				if time.Now().Before(m.DeliverAt) {
					mu.Lock()
					early++
					mu.Unlock()
				}
				return col.handle(ctx, m)
			}, mq.WithConcurrency(8))
			msgs := delayedBatch(500, time.Now(), 700*time.Millisecond, 4*time.Second)
			produceAll(t, prod, topic, msgs)
			time.Sleep(time.Second) // some moved, most waiting
			rctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			begin := time.Now()
			err := br.Restart(rctx)
			cancel()
			if err != nil {
				t.Fatalf("restart: %v", err)
			}
			t.Logf("Redis restarted in %v", time.Since(begin).Round(time.Millisecond))
			col.wait(t, ids(msgs), 30*time.Second)

			opts, err := redis.ParseURL(br.URL)
			if err != nil {
				t.Fatal(err)
			}
			raw := redis.NewClient(opts)
			defer raw.Close()
			checkOnce(t, raw, cons.Conn().(*redisstream.Conn).StreamKeys(topic), msgs)
			col.mu.Lock()
			defer col.mu.Unlock()
			dups := 0
			for _, n := range col.by {
				dups += n - 1
			}
			t.Logf("500 messages, each moved once; %d handled again (acks lost in the restart are redelivered, as for any message)", dups)
			if early > 0 {
				t.Errorf("%d messages handled before they were due", early)
			}
		})
	}
}

// TestDelayRacingMovers: three clients (separate mq.Open) consume one
// group, so three movers race for 2,000 messages due within one second:
// each message enters the stream once and is handled once.
func TestDelayRacingMovers(t *testing.T) {
	for _, params := range []string{"claim_idle=5s", "claim_idle=5s&shards=4"} {
		t.Run(params, func(t *testing.T) {
			topic := topicName(t)
			col := newCollector()
			var members []*mq.Client
			for range 3 {
				c := open(t, params)
				members = append(members, c)
				consume(t, c, topic, "g", col.handle, mq.WithConcurrency(8))
			}
			msgs := delayedBatch(2000, time.Now(), time.Second, time.Second)
			produceAll(t, open(t, params), topic, msgs)
			col.wait(t, ids(msgs), 30*time.Second)
			time.Sleep(time.Second)
			checkOnce(t, rawClient(t), members[0].Conn().(*redisstream.Conn).StreamKeys(topic), msgs)
			col.mu.Lock()
			defer col.mu.Unlock()
			for _, m := range msgs {
				if n := col.by[m.ID]; n != 1 {
					t.Fatalf("message %s handled %d times", m.ID, n)
				}
			}
			if st, err := members[1].Scheduled(context.Background(), topic); err != nil || st.Waiting != 0 || !st.NextDue.IsZero() {
				t.Fatalf("Scheduled after all moved: %+v, %v", st, err)
			}
		})
	}
}

// TestDelayExactRoundTrip: delayed messages with binary bodies (zero
// bytes, invalid UTF-8, digits and colons that look like the payload's
// framing), empty and large ones, odd headers and keys arrive exactly.
func TestDelayExactRoundTrip(t *testing.T) {
	for _, params := range []string{"", "shards=3"} {
		t.Run("params="+params, func(t *testing.T) {
			topic := topicName(t)
			c := open(t, params)
			col := newCollector()
			consume(t, c, topic, "g", col.handle)
			big := make([]byte, 1<<20)
			for i := range big {
				big[i] = byte(i * 7)
			}
			due := time.Now().Add(500 * time.Millisecond)
			msgs := []*mq.Message{
				{Body: []byte("\x00\xff\xfe12:34:"), Key: "\x00k:1", Headers: map[string]string{"3:h": "4:v\x00", "": "empty name", "e": ""}},
				{Body: nil, Key: ""},
				{Body: big, Key: "big", Headers: map[string]string{"id": "not the ID", "key": "not the key", "body": "x"}},
				{ID: "custom:id:with:colons", Body: []byte("0:")},
			}
			for _, m := range msgs {
				m.DeliverAt = due
			}
			produceAll(t, c, topic, msgs)
			col.wait(t, ids(msgs), 20*time.Second)
			col.mu.Lock()
			defer col.mu.Unlock()
			got := map[string]*mq.Message{}
			for _, m := range col.msgs {
				got[m.ID] = m
			}
			for i, m := range msgs {
				g := got[m.ID]
				if g.Key != m.Key || !bytes.Equal(g.Body, m.Body) || !maps.Equal(g.Headers, m.Headers) || !g.DeliverAt.Equal(m.DeliverAt) {
					t.Errorf("message %d: got key %q headers %v body %d bytes due %v; want key %q headers %v body %d bytes due %v",
						i, g.Key, g.Headers, len(g.Body), g.DeliverAt, m.Key, m.Headers, len(m.Body), m.DeliverAt)
				}
			}
		})
	}
}

// syncBuffer is a bytes.Buffer for a logger written from many goroutines.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// TestDelayForeignMembersSetAside: members of a topic's schedule that the
// SDK did not write (no payload, a garbled one, one without an id) are
// moved to the schedule's aside hash with a warning, and the messages
// scheduled around them arrive; a member due never (+inf) only waits.
func TestDelayForeignMembersSetAside(t *testing.T) {
	ctx := context.Background()
	topic := topicName(t)
	raw := rawClient(t)
	var logs syncBuffer
	c := open(t, "", mq.WithLogger(slog.New(slog.NewTextHandler(&logs, nil))))
	sched, payloads, aside := "{"+topic+"}:delay", "{"+topic+"}:delay:msgs", "{"+topic+"}:delay:aside"
	now := float64(time.Now().UnixMilli())
	bad := map[string]string{
		"hello":                "",             // no payload at all
		"0:1:00:no-payload":    "",             // the SDK's shape, payload missing
		"0:2:00:garbled":       "nonsense",     // not netstrings
		"0:3:00:short":         "2:id9:abc",    // a length past the end
		"0:4:00:empty-id":      "2:id0:",       // an empty id
		"0:5:00:odd":           "2:id1:x3:key", // a field without a value
		"0:6:00:not-id-first":  "3:key1:k2:id1:x",
		"99999:7:00:big-shard": "2:id1:x", // shard not a number of up to 4 digits
		// More fields than Lua passes to one XADD call.
		"0:8:00:too-many-fields": "2:id1:x" + strings.Repeat("1:a1:b", 3600),
	}
	pipe := raw.TxPipeline()
	for m, p := range bad {
		pipe.ZAdd(ctx, sched, redis.Z{Score: now, Member: m})
		if p != "" {
			pipe.HSet(ctx, payloads, m, p)
		}
	}
	pipe.ZAdd(ctx, sched, redis.Z{Score: float64(1 << 62), Member: "far"})
	pipe.Do(ctx, "ZADD", sched, "+inf", "never")
	if _, err := pipe.Exec(ctx); err != nil {
		t.Fatal(err)
	}
	col := newCollector()
	consume(t, c, topic, "g", col.handle)
	msgs := delayedBatch(50, time.Now(), 300*time.Millisecond, 500*time.Millisecond)
	produceAll(t, c, topic, msgs)
	col.wait(t, ids(msgs), 20*time.Second)

	got, err := raw.HGetAll(ctx, aside).Result()
	if err != nil {
		t.Fatal(err)
	}
	for m, p := range bad {
		if v, ok := got[m]; !ok || v != p {
			t.Errorf("member %q: aside holds %q (present %v), want %q", m, v, ok, p)
		}
	}
	if len(got) != len(bad) {
		t.Errorf("aside holds %d members, want %d: %v", len(got), len(bad), got)
	}
	if st, err := c.Scheduled(ctx, topic); err != nil || st.Waiting != 2 {
		t.Errorf("Scheduled: %+v, %v; want the 2 far members waiting", st, err)
	}
	if n, _ := raw.HLen(ctx, payloads).Result(); n != 0 {
		t.Errorf("%d payloads left", n)
	}
	if !strings.Contains(logs.String(), "set aside") || !strings.Contains(logs.String(), "garbled") {
		t.Errorf("no warning naming the members set aside; log:\n%s", logs.String())
	}
	col.mu.Lock()
	defer col.mu.Unlock()
	if len(col.msgs) != len(msgs) {
		t.Errorf("%d messages handled, want %d", len(col.msgs), len(msgs))
	}
}

// TestDelayTrims: moved messages are trimmed like sent ones (maxlen): a
// backlog of 400 moved at once into a stream with maxlen=50 leaves it
// trimmed (entries not yet read included, as Send's trimming does).
func TestDelayTrims(t *testing.T) {
	ctx := context.Background()
	topic := topicName(t)
	c := open(t, "maxlen=50")
	sub, err := c.Conn().Subscribe(ctx, topic, "g", mq.SubscribeOptions{MaxInFlight: 1, Concurrency: 1})
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Close()
	msgs := delayedBatch(400, time.Now(), 300*time.Millisecond, 0)
	produceAll(t, c, topic, msgs)
	waitFor(t, "the schedule to empty", func() bool {
		st, err := c.Scheduled(ctx, topic)
		return err == nil && st.Waiting == 0
	})
	n, err := rawClient(t).XLen(ctx, topic).Result()
	if err != nil || n >= 400 {
		t.Fatalf("stream holds %d entries (%v) after 400 moved with maxlen=50: not trimmed", n, err)
	}
	t.Logf("stream length after 400 moves with maxlen=50 (approximate trimming): %d", n)
}

// TestDelayCluster runs delayed delivery on a Redis Cluster for topics
// whose names have braces: the schedule shares the stream's hash slot
// (else the move script fails with CROSSSLOT), and a topic whose
// schedule cannot is refused.
func TestDelayCluster(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a Redis Cluster; skipped with -short")
	}
	u := testbed.RedisCluster(t).URL
	for _, tc := range []struct{ topic, params string }{
		{"plain-" + topicName(t), "?claim_idle=2s"},
		{"tag{" + topicName(t) + "}tail", "?claim_idle=2s"},
		{"x}y-" + topicName(t), "?claim_idle=2s&shards=3"},
	} {
		t.Run(tc.topic+tc.params, func(t *testing.T) {
			c := openURL(t, u+tc.params)
			col := newCollector()
			consume(t, c, tc.topic, "g", col.handle)
			msgs := delayedBatch(100, time.Now(), 200*time.Millisecond, 500*time.Millisecond)
			produceAll(t, c, tc.topic, msgs)
			col.wait(t, ids(msgs), 20*time.Second)
		})
	}
	c := openURL(t, u)
	err := c.Producer().Produce(context.Background(), "x}y", (&mq.Message{}).DeliverAfter(time.Second))
	if err == nil || !strings.Contains(err.Error(), "hash tag") {
		t.Fatalf("Produce of a delayed message to unsharded topic x}y on a cluster: %v, want a refusal naming the hash tag", err)
	}
}

// TestDelayThroughputAndLateness measures (reports, does not assert) how
// fast one mover moves a backlog that is all due at once, and how late
// 20,000 messages spread over 10 s arrive at a consumer.
func TestDelayThroughputAndLateness(t *testing.T) {
	if testing.Short() {
		t.Skip("a 15 s measurement; skipped with -short")
	}
	ctx := context.Background()
	raw := rawClient(t)
	t.Run("move", func(t *testing.T) {
		const n = 20000
		topic := topicName(t)
		c := open(t, "")
		due := time.Now().Add(3 * time.Second)
		msgs := make([]*mq.Message, n)
		for i := range msgs {
			msgs[i] = &mq.Message{Key: fmt.Sprintf("k%d", i%100), Body: bytes.Repeat([]byte("x"), 100), DeliverAt: due}
		}
		begin := time.Now()
		produceAll(t, c, topic, msgs)
		t.Logf("scheduled %d messages in %v (%.0f/s)", n, time.Since(begin).Round(time.Millisecond), n/time.Since(begin).Seconds())
		// A subscription without a consumer: its mover runs, nothing reads.
		sub, err := c.Conn().Subscribe(ctx, topic, "g", mq.SubscribeOptions{MaxInFlight: 1, Concurrency: 1})
		if err != nil {
			t.Fatal(err)
		}
		defer sub.Close()
		var first time.Time
		for {
			l, err := raw.XLen(ctx, topic).Result()
			if err != nil {
				t.Fatal(err)
			}
			if l > 0 && first.IsZero() {
				first = time.Now()
			}
			if l == n {
				break
			}
			if time.Since(due) > 30*time.Second {
				t.Fatalf("%d of %d moved 30s after due", l, n)
			}
			time.Sleep(2 * time.Millisecond)
		}
		end := time.Now()
		t.Logf("one mover moved %d messages (100-byte bodies) in %v after they were due (first after %v): %.0f messages/s",
			n, end.Sub(due).Round(time.Millisecond), first.Sub(due).Round(time.Millisecond), n/end.Sub(first).Seconds())
	})
	t.Run("lateness", func(t *testing.T) {
		const n = 20000
		spread := 10 * time.Second
		topic := topicName(t)
		c := open(t, "")
		var mu sync.Mutex
		late := make([]time.Duration, 0, n)
		consume(t, c, topic, "g", func(_ context.Context, m *mq.Message) error {
			d := time.Since(m.DeliverAt)
			mu.Lock()
			late = append(late, d)
			mu.Unlock()
			return nil
		}, mq.WithConcurrency(16))
		msgs := delayedBatch(n, time.Now(), 2*time.Second, spread)
		produceAll(t, open(t, ""), topic, msgs)
		deadline := time.Now().Add(spread + 40*time.Second)
		for {
			mu.Lock()
			k := len(late)
			mu.Unlock()
			if k >= n {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("%d of %d arrived", k, n)
			}
			time.Sleep(50 * time.Millisecond)
		}
		mu.Lock()
		defer mu.Unlock()
		slices.Sort(late)
		if late[0] < 0 {
			t.Errorf("a message arrived %v early", -late[0])
		}
		t.Logf("lateness of %d messages spread over %v (one consumer, its mover): p50 %v, p99 %v, max %v",
			n, spread, late[n/2].Round(100*time.Microsecond), late[n*99/100].Round(100*time.Microsecond), late[n-1].Round(100*time.Microsecond))
	})
}
