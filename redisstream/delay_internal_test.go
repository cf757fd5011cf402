package redisstream

import (
	"context"
	"maps"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/mqkit/mq"
	"github.com/mqkit/mq/integration/testbed"
)

func TestHashTag(t *testing.T) {
	for key, want := range map[string]string{
		"orders":               "orders",
		"{orders}:0":           "orders",
		"a{b}c":                "b",
		"a{}b{c}":              "a{}b{c}", // an empty first tag: the whole key
		"x}y":                  "x}y",
		"{x}y}:delay":          "x",
		"{a{b}c}:delay":        "a{b",
		"open{":                "open{",
		"{tag}:a{tag}b":        "tag",
		"{user1000}.following": "user1000",
	} {
		if got := hashTag(key); got != want {
			t.Errorf("hashTag(%q) = %q, want %q", key, got, want)
		}
	}
}

// TestDelayKeysShareTheSlot: the schedule keys of a topic have the hash
// tag of its streams (one slot on a Redis Cluster), whatever its name,
// except where no key can, which delayKeysOf reports.
func TestDelayKeysShareTheSlot(t *testing.T) {
	for _, topic := range []string{"orders", "a{b}c", "{b}", "a{}b", "x}y", "x{y", "}{", "}x", "é{ü}"} {
		for _, shards := range []int{0, 4} {
			c := &Conn{cfg: Config{Shards: shards}}
			streams := c.StreamKeys(topic)
			k := delayKeysOf(topic, streams)
			want := hashTag(streams[0])
			same := hashTag(k.schedule) == want && hashTag(k.payloads) == want && hashTag(k.aside) == want
			for _, s := range streams {
				same = same && hashTag(s) == want
			}
			if same != k.sameSlot {
				t.Errorf("topic %q shards %d: keys %+v, stream tag %q: sameSlot %v, want %v", topic, shards, k, want, k.sameSlot, same)
			}
			impossible := (shards == 0 && strings.Contains(topic, "}") && hashTag(topic) == topic) ||
				(shards > 0 && strings.HasPrefix(topic, "}"))
			if same == impossible {
				t.Errorf("topic %q shards %d: schedule %q, stream tag %q: same slot %v", topic, shards, k.schedule, want, same)
			}
		}
	}
}

func TestDelayEntry(t *testing.T) {
	due := time.Unix(1700000000, 123456789)
	m := &mq.Message{ID: "id-1", Key: "k", Body: []byte("b\x00dy:"), DeliverAt: due,
		Headers: map[string]string{"a": "1", "b": "", "c:d": "2:x", "mq-deliver-at": due.UTC().Format(time.RFC3339Nano)}}
	member, payload := delayEntry(m, 3)
	for range 20 { // header order must not change the entry
		m2 := *m
		m2.Headers = maps.Clone(m.Headers)
		if mb, pl := delayEntry(&m2, 3); mb != member || pl != payload {
			t.Fatalf("entry not deterministic: %q/%q vs %q/%q", mb, pl, member, payload)
		}
	}
	if !strings.HasPrefix(member, "3:1700000000123456789:") || !strings.HasSuffix(member, ":id-1") {
		t.Fatalf("member %q", member)
	}
	if got := memberDue(member, 0); !got.Equal(due) {
		t.Fatalf("memberDue = %v, want %v", got, due)
	}
	want := "2:id4:id-13:key1:k3:h:a1:13:h:b0:5:h:c:d3:2:x15:h:mq-deliver-at" + "30:" + due.UTC().Format(time.RFC3339Nano) + "4:body5:b\x00dy:"
	if payload != want {
		t.Fatalf("payload\n%q, want\n%q", payload, want)
	}
	other := *m
	other.DeliverAt = due.Add(time.Nanosecond)
	if mb, _ := delayEntry(&other, 3); mb == member {
		t.Fatal("another due time gave the same member")
	}
}

func TestDueScore(t *testing.T) {
	for ns, want := range map[int64]int64{1_000_000: 1, 1_000_001: 2, 1_999_999: 2, 2_000_000: 2} {
		if got := dueScore(time.Unix(0, ns)); got != want {
			t.Errorf("dueScore(%dns) = %d, want %d", ns, got, want)
		}
	}
}

// TestMoverRefcount: a Conn runs one mover per topic subscribed, shared
// by the topic's subscriptions of every group, stopped by the last
// subscription's Close or by the Conn's Close.
func TestMoverRefcount(t *testing.T) {
	ctx := context.Background()
	opts, err := redis.ParseURL(testbed.SharedRedis(t).URL)
	if err != nil {
		t.Fatal(err)
	}
	client := redis.NewClient(opts)
	defer client.Close()
	c, err := NewConn(client, Config{})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	topic, other := "mover-refcount-a-"+t.Name(), "mover-refcount-b-"+t.Name()
	subscribe := func(topic, group string) mq.Subscription {
		s, err := c.Subscribe(ctx, topic, group, mq.SubscribeOptions{MaxInFlight: 1, Concurrency: 1})
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	s1, s2, s3 := subscribe(topic, "g1"), subscribe(topic, "g2"), subscribe(other, "g1")
	movers := func() map[string]*mover {
		c.moversMu.Lock()
		defer c.moversMu.Unlock()
		return maps.Clone(c.movers)
	}
	m := movers()
	if len(m) != 2 || m[topic] == nil || m[topic].refs != 2 || m[other].refs != 1 {
		t.Fatalf("movers after three subscriptions of two topics: %v", m)
	}
	mv, mv2 := m[topic], m[other]
	_ = s1.Close()
	select {
	case <-mv.done:
		t.Fatal("the mover stopped while a subscription of its topic is open")
	default:
	}
	_ = s2.Close()
	select {
	case <-mv.done:
	default:
		t.Fatal("the mover runs on after the last subscription of its topic closed")
	}
	_ = c.Close()
	select {
	case <-mv2.done:
	default:
		t.Fatal("a mover runs on after Conn.Close")
	}
	if m := movers(); len(m) != 0 {
		t.Fatalf("movers left after Close: %v", m)
	}
	_ = s3.Close()
}
