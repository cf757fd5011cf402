package redisstream_test

import (
	"bytes"
	"context"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/mqkit/mq"
	"github.com/mqkit/mq/idempotency"
	"github.com/mqkit/mq/integration/testbed"
	"github.com/mqkit/mq/redisstream"
)

// This file holds the tests of what other clients see: redis-py writes
// and reads the stream entries, so nothing here only checks mqkit against
// itself. The Redis section of WIRE.md names these tests as the examples
// of each direction.

// pyXAdd adds, with redis-py, the entries given as JSON in argv[2]: a
// list of {"stream": S, "fields": [[NAME_HEX, VALUE_HEX], ...]}, in
// order, and prints each new entry ID on a line.
const pyXAdd = `
import sys, json, redis
r = redis.Redis.from_url(sys.argv[1])
for e in json.loads(sys.argv[2]):
    print(r.xadd(e["stream"], {bytes.fromhex(f): bytes.fromhex(v) for f, v in e["fields"]}).decode())
`

// pyXReadGroup reads, with redis-py, every entry of stream argv[2] as a
// member of its own group argv[3] (created at 0), acknowledges each,
// and prints one JSON object per entry: {"id": ENTRY_ID, "fields":
// [[NAME_HEX, VALUE_HEX], ...]} in the entry's field order.
const pyXReadGroup = `
import sys, json, redis
r = redis.Redis.from_url(sys.argv[1])
stream, group = sys.argv[2], sys.argv[3]
r.xgroup_create(stream, group, id="0", mkstream=True)
while True:
    res = r.xreadgroup(group, "py", {stream: ">"}, count=100, block=500)
    if not res:
        break
    for eid, fields in res[0][1]:
        print(json.dumps({"id": eid.decode(), "fields": [[f.hex(), v.hex()] for f, v in fields.items()]}))
        r.xack(stream, group, eid)
`

// pyEntry is one entry for pyXAdd.
type pyEntry struct {
	Stream string      `json:"stream"`
	Fields [][2]string `json:"fields"`
}

func entry(stream string, pairs ...string) pyEntry {
	e := pyEntry{Stream: stream}
	for i := 0; i < len(pairs); i += 2 {
		e.Fields = append(e.Fields, [2]string{hex.EncodeToString([]byte(pairs[i])), hex.EncodeToString([]byte(pairs[i+1]))})
	}
	return e
}

// pyAdd runs pyXAdd and returns the entry IDs.
func pyAdd(t *testing.T, entries []pyEntry) []string {
	t.Helper()
	in, err := json.Marshal(entries)
	if err != nil {
		t.Fatal(err)
	}
	return strings.Fields(testbed.RunPython(t, pyXAdd, redisURL(t, ""), string(in)))
}

// TestInteropForeignProducer: redis-py writes entries the way programs
// that never heard of mqkit do (a payload or data field, an id field of
// the application's, several plain fields) and entries in mqkit's own
// encoding. Every one reaches a handler behind dedup middleware with
// what it holds: no value is dropped for want of a body field, and the
// two entries with id=42 are two messages, both handled.
func TestInteropForeignProducer(t *testing.T) {
	testbed.Python(t)
	topic := topicName(t)
	c := open(t, "")
	dedup, err := idempotency.New(idempotency.NewMemoryStore(idempotency.MemoryStoreConfig{}), idempotency.Config{Namespace: "g"})
	if err != nil {
		t.Fatal(err)
	}
	col := newCollector()
	consume(t, c, topic, "g", mq.Chain(mq.HandlerFunc(col.handle), dedup).Handle)

	type want struct {
		id      string // "" : the entry ID
		key     string
		body    string
		headers map[string]string
	}
	cases := []struct {
		pairs []string
		want  want
	}{
		{[]string{"payload", `{"order":7}`}, want{body: `{"order":7}`, headers: map[string]string{redisstream.HeaderBodyFrom: "field:payload"}}},
		{[]string{"data", "\x00\xff bin"}, want{body: "\x00\xff bin", headers: map[string]string{redisstream.HeaderBodyFrom: "field:data"}}},
		{[]string{"id", "42", "payload", "first"}, want{body: "first", headers: map[string]string{"id": "42", redisstream.HeaderBodyFrom: "field:payload"}}},
		{[]string{"id", "42", "payload", "second"}, want{body: "second", headers: map[string]string{"id": "42", redisstream.HeaderBodyFrom: "field:payload"}}},
		{[]string{"event", "signup", "user", "u-1"}, want{body: `{"event":"signup","user":"u-1"}`,
			headers: map[string]string{"event": "signup", "user": "u-1", redisstream.HeaderBodyFrom: "json"}}},
		{[]string{"body", "hello", "source", "cli"}, want{body: "hello", headers: map[string]string{"source": "cli"}}},
		{[]string{"key", "k-1", "value", "v"}, want{key: "k-1", body: "v", headers: map[string]string{redisstream.HeaderBodyFrom: "field:value"}}},
		// mqkit's encoding, written by hand: read exactly, id included.
		{[]string{"id", "py-native-1", "key", "k-2", "h:trace", "t-9", "body", "\xfe\x00native"},
			want{id: "py-native-1", key: "k-2", body: "\xfe\x00native", headers: map[string]string{"trace": "t-9"}}},
		{[]string{"id", "py-native-2"}, want{id: "py-native-2"}},
	}
	var entries []pyEntry
	for _, tc := range cases {
		entries = append(entries, entry(topic, tc.pairs...))
	}
	eids := pyAdd(t, entries)
	if len(eids) != len(cases) {
		t.Fatalf("redis-py added %d entries, want %d", len(eids), len(cases))
	}
	wantIDs := make([]string, len(cases))
	for i, tc := range cases {
		wantIDs[i] = tc.want.id
		if wantIDs[i] == "" {
			wantIDs[i] = eids[i]
		}
	}
	col.wait(t, wantIDs, 20*time.Second)
	time.Sleep(300 * time.Millisecond) // nothing more may come
	col.mu.Lock()
	defer col.mu.Unlock()
	byID := map[string]*mq.Message{}
	for _, m := range col.msgs {
		byID[m.ID] = m
	}
	mismatches := 0
	for i, tc := range cases {
		m := byID[wantIDs[i]]
		wantTime := time.UnixMilli(mustMillis(t, eids[i]))
		if m == nil || m.Key != tc.want.key || string(m.Body) != tc.want.body || !maps.Equal(m.Headers, tc.want.headers) ||
			!m.Timestamp.Equal(wantTime) || m.Header(mq.HeaderIDNotUnique) != "" {
			mismatches++
			t.Errorf("entry %v: got %+v, want ID %s %+v", tc.pairs, m, wantIDs[i], tc.want)
		}
	}
	if len(col.msgs) != len(cases) {
		t.Errorf("handled %d messages, want %d", len(col.msgs), len(cases))
	}
	t.Logf("redis-py -> mqkit: %d entries, %d handled, %d mismatches", len(cases), len(col.msgs), mismatches)
}

func mustMillis(t *testing.T, entryID string) int64 {
	ms, _, _ := strings.Cut(entryID, "-")
	n, err := strconv.ParseInt(ms, 10, 64)
	if err != nil {
		t.Fatalf("entry ID %q: %v", entryID, err)
	}
	return n
}

// TestInteropForeignProducerSharded: redis-py writes mqkit's encoding to
// the shard streams of a topic with shards=4, picking each entry's shard
// as the package documentation says (FNV-1a 32 of the key, modulo the
// shard count): mqkit reads every entry with its ID, key and headers,
// each key's entries in order. A foreign entry on a shard gets an ID
// naming its stream, so equal entry IDs of two shards stay two messages.
func TestInteropForeignProducerSharded(t *testing.T) {
	testbed.Python(t)
	const shards, keys, per = 4, 8, 25
	topic := topicName(t)
	c := open(t, "shards=4")
	col := newCollector()
	consume(t, c, topic, "g", col.handle, mq.WithConcurrency(4))
	prog := `
import sys, redis
r = redis.Redis.from_url(sys.argv[1])
topic, shards, keys, per = sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
def fnv1a32(b):
    h = 0x811c9dc5
    for x in b:
        h = ((h ^ x) * 0x01000193) & 0xffffffff
    return h
# Two foreign entries with one entry ID on two shards (empty yet).
r.xadd("{%s}:0" % topic, {"payload": "on shard 0"}, id="1-1")
r.xadd("{%s}:1" % topic, {"payload": "on shard 1"}, id="1-1")
p = r.pipeline(transaction=False)
for i in range(per):
    for k in range(keys):
        key = "key-%d" % k
        p.xadd("{%s}:%d" % (topic, fnv1a32(key.encode()) % shards),
               {"id": "%s-%d" % (key, i), "key": key, "h:seq": str(i), "body": "%s:%d" % (key, i)})
p.execute()
`
	testbed.RunPython(t, prog, redisURL(t, ""), topic, strconv.Itoa(shards), strconv.Itoa(keys), strconv.Itoa(per))
	var ids []string
	for i := range per {
		for k := range keys {
			ids = append(ids, fmt.Sprintf("key-%d-%d", k, i))
		}
	}
	foreign := []string{"{" + topic + "}:0/1-1", "{" + topic + "}:1/1-1"}
	col.wait(t, append(slices.Clone(ids), foreign...), 30*time.Second)
	col.mu.Lock()
	defer col.mu.Unlock()
	next := map[string]int{}
	bad := 0
	for _, m := range col.msgs {
		if strings.HasPrefix(m.ID, "{") {
			continue
		}
		i := next[m.Key]
		if m.ID != fmt.Sprintf("%s-%d", m.Key, i) || string(m.Body) != fmt.Sprintf("%s:%d", m.Key, i) || m.Header("seq") != strconv.Itoa(i) {
			bad++
			t.Errorf("key %s: got %s (body %q, seq %q), want entry %d", m.Key, m.ID, m.Body, m.Header("seq"), i)
		}
		next[m.Key] = i + 1
	}
	if len(col.msgs) != len(ids)+len(foreign) {
		t.Errorf("handled %d messages, want %d", len(col.msgs), len(ids)+len(foreign))
	}
	t.Logf("redis-py -> mqkit (shards=4): %d entries, %d handled, %d mismatches or reorders", len(ids)+len(foreign), len(col.msgs), bad)
}

// TestInteropForeignConsumer: mqkit produces messages with keys,
// headers, empty, binary and 1 MiB bodies; redis-py reads them with
// XREADGROUP in a group of its own and sees exactly the fields the
// package documentation lists: id, key (absent when empty), h:NAME per
// header, body (absent when empty), nothing else.
func TestInteropForeignConsumer(t *testing.T) {
	testbed.Python(t)
	ctx := context.Background()
	topic := topicName(t)
	c := open(t, "")
	big := bytes.Repeat([]byte("0123456789abcdef"), 1<<16)
	msgs := []*mq.Message{
		{Key: "k-1", Body: []byte(`{"order":7}`), Headers: map[string]string{"trace": "t-1", "content-type": "application/json"}},
		{Body: []byte{0, 0xff, 0xfe, '\n'}},
		{Key: "k\xff-bin", Headers: map[string]string{"empty": "", "h:nested": "x"}},
		{},
		{ID: "my-own-id", Key: "k-1", Body: big},
	}
	for i := range 20 {
		msgs = append(msgs, &mq.Message{Key: fmt.Sprintf("k-%d", i%3), Body: []byte(fmt.Sprint(i))})
	}
	if err := c.Producer().Produce(ctx, topic, msgs...); err != nil {
		t.Fatal(err)
	}
	out := testbed.RunPython(t, pyXReadGroup, redisURL(t, ""), topic, "py")
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) != len(msgs) {
		t.Fatalf("redis-py read %d entries, want %d", len(lines), len(msgs))
	}
	mismatches := 0
	for i, line := range lines {
		var e struct {
			ID     string      `json:"id"`
			Fields [][2]string `json:"fields"`
		}
		if err := json.Unmarshal([]byte(line), &e); err != nil {
			t.Fatal(err)
		}
		got := map[string]string{}
		for _, f := range e.Fields {
			name, _ := hex.DecodeString(f[0])
			val, _ := hex.DecodeString(f[1])
			got[string(name)] = string(val)
		}
		m := msgs[i]
		want := map[string]string{"id": m.ID}
		if m.Key != "" {
			want["key"] = m.Key
		}
		if len(m.Body) > 0 {
			want["body"] = string(m.Body)
		}
		for k, v := range m.Headers {
			want["h:"+k] = v
		}
		if !maps.Equal(got, want) || (len(e.Fields) > 0 && e.Fields[0][0] != hex.EncodeToString([]byte("id"))) {
			mismatches++
			names := slices.Sorted(maps.Keys(got))
			t.Errorf("entry %d (%s): fields %q, want %d fields, id first", i, e.ID, names, len(want))
		}
	}
	t.Logf("mqkit -> redis-py: %d messages, %d read, %d mismatches", len(msgs), len(lines), mismatches)
}
