package kafka_test

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mqkit/mq"
	"github.com/mqkit/mq/integration/testbed"
	"github.com/mqkit/mq/kafka"
)

// This file holds the tests of what other clients see: Python's
// confluent-kafka (librdkafka) writes and reads the records, so nothing
// here only checks mqkit against itself. WIRE.md names these tests as the
// examples of each direction.

// consumeN consumes n messages of topic in group, one handler at a time,
// and returns copies of them in the order they were handled.
func consumeN(t *testing.T, c *mq.Client, topic, group string, n int) []*mq.Message {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	cons, err := c.Consumer(ctx, topic, mq.WithGroup(group), mq.WithConcurrency(1))
	if err != nil {
		t.Fatal(err)
	}
	defer cons.Close()
	var mu sync.Mutex
	var got []*mq.Message
	cctx, stop := context.WithCancel(ctx)
	err = cons.Consume(cctx, mq.HandlerFunc(func(_ context.Context, m *mq.Message) error {
		mu.Lock()
		defer mu.Unlock()
		got = append(got, m.Clone())
		if len(got) == n {
			stop()
		}
		return nil
	}))
	if err != nil {
		t.Fatalf("Consume: %v", err)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(got) < n {
		t.Fatalf("consumed %d of %d messages of %s before the timeout: %v", len(got), n, topic, got)
	}
	return got
}

// pyProduceForeign writes, with confluent-kafka, the records a foreign
// producer may write: a null value, an empty value, a null key, an empty
// key, duplicate header names, a null header value, an mq-id header and a
// stray mq-tombstone header on a record that has a value. It prints the
// partition and offset of each record, in order.
const pyProduceForeign = `
import sys
from confluent_kafka import Producer
brokers, topic = sys.argv[1], sys.argv[2]
p = Producer({"bootstrap.servers": brokers, "acks": "all", "enable.idempotence": True})
out = []
def report(err, msg):
    if err is not None:
        raise SystemExit("delivery failed: %s" % err)
    out.append("%d/%d" % (msg.partition(), msg.offset()))
records = [
    dict(key=b"k-tomb", value=None, headers=[("trace", b"t0")]),
    dict(key=b"k-empty", value=b""),
    dict(key=None, value=b"no-key", headers=[("dup", b"first"), ("dup", b"second"), ("nullh", None), ("mq-id", b"py-id-2")]),
    dict(key=b"", value=b"empty-key"),
    dict(key=b"k-stray", value=b"not a tombstone", headers=[("mq-tombstone", b"true")]),
]
for r in records:
    p.produce(topic, partition=0, on_delivery=report, **r)
if p.flush(60) != 0:
    raise SystemExit("flush timed out")
print(" ".join(out))
`

// testPythonToGo checks how records written by confluent-kafka are
// consumed: a null value arrives as a tombstone (HeaderTombstone "true",
// empty Body) and an empty value as an empty Body without that header;
// duplicate header names keep the last value, a null header value and a
// null key read as "", mq-id becomes the ID, records without it get
// "<topic>/<partition>/<offset>", and a stray mq-tombstone header on a
// record with a value is not taken for a tombstone.
func testPythonToGo(t *testing.T, b *testbed.Broker, c *mq.Client) {
	testbed.Python(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	topic := "py-in-" + mq.NewID()
	k, _ := kafka.FromClient(c)
	if err := k.CreateTopic(ctx, topic, 1, 0); err != nil {
		t.Fatal(err)
	}
	pos := strings.Fields(testbed.RunPython(t, pyProduceForeign, b.Addr, topic))
	if len(pos) != 5 {
		t.Fatalf("python reported %q, want 5 positions", pos)
	}
	got := consumeN(t, c, topic, "g", 5)
	id := func(i int) string { return topic + "/" + pos[i] }

	type want struct {
		id, key, body string
		headers       map[string]string
	}
	wants := []want{
		{id(0), "k-tomb", "", map[string]string{"trace": "t0", kafka.HeaderTombstone: "true"}},
		{id(1), "k-empty", "", nil},
		{"py-id-2", "", "no-key", map[string]string{"dup": "second", "nullh": ""}},
		{id(3), "", "empty-key", nil},
		{id(4), "k-stray", "not a tombstone", nil},
	}
	mismatches := 0
	for i, w := range wants {
		m := got[i]
		if m.ID != w.id || m.Key != w.key || string(m.Body) != w.body || !sameHeaders(m.Headers, w.headers) {
			mismatches++
			t.Errorf("record %d consumed as ID %q key %q body %q headers %v\nwant ID %q key %q body %q headers %v",
				i, m.ID, m.Key, m.Body, m.Headers, w.id, w.key, w.body, w.headers)
		}
	}
	t.Logf("confluent-kafka -> mqkit: %d records, %d intact, %d mismatches", len(wants), len(wants)-mismatches, mismatches)
}

func sameHeaders(a, b map[string]string) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if w, ok := b[k]; !ok || w != v {
			return false
		}
	}
	return true
}

// pyConsumeAll reads n records of a topic from the start with
// confluent-kafka and prints each as a JSON line: key and value in base64
// or null, headers as [name, base64-value-or-null] pairs.
const pyConsumeAll = `
import sys, json, time, base64
from confluent_kafka import Consumer
brokers, topic, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
c = Consumer({"bootstrap.servers": brokers, "group.id": "py-" + topic, "auto.offset.reset": "earliest", "enable.auto.commit": False})
c.subscribe([topic])
dec = lambda b: None if b is None else base64.b64encode(b).decode()
got, deadline = 0, time.time() + 60
while got < n and time.time() < deadline:
    m = c.poll(1.0)
    if m is None:
        continue
    if m.error():
        raise SystemExit("consume: %s" % m.error())
    print(json.dumps({"partition": m.partition(), "offset": m.offset(), "key": dec(m.key()), "value": dec(m.value()),
                      "headers": [[k, dec(v)] for k, v in (m.headers() or [])]}))
    got += 1
c.close()
if got < n:
    raise SystemExit("read %d of %d records" % (got, n))
`

type pyRecord struct {
	Partition int32        `json:"partition"`
	Offset    int64        `json:"offset"`
	Key       *string      `json:"key"`
	Value     *string      `json:"value"`
	Headers   [][2]*string `json:"headers"`
}

func pyRecords(t *testing.T, out string) []pyRecord {
	t.Helper()
	var recs []pyRecord
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		var r pyRecord
		if err := json.Unmarshal([]byte(line), &r); err != nil {
			t.Fatalf("python printed %q: %v", line, err)
		}
		recs = append(recs, r)
	}
	return recs
}

func (r pyRecord) header(name string) (string, bool) {
	for _, h := range r.Headers {
		if h[0] != nil && *h[0] == name {
			return show(h[1]), true
		}
	}
	return "", false
}

// show renders a base64 value printed by Python as Python would: None, or
// the bytes quoted.
func show(s *string) string {
	if s == nil {
		return "None"
	}
	b, err := base64.StdEncoding.DecodeString(*s)
	if err != nil {
		return "bad base64 " + *s
	}
	return fmt.Sprintf("b%q", b)
}

// b64 is the form show reads.
func b64(s string) *string {
	e := base64.StdEncoding.EncodeToString([]byte(s))
	return &e
}

// testGoToPython checks what confluent-kafka reads of messages produced
// here: an empty or nil Body is an empty value (b"", not None), a message
// with HeaderTombstone "true" is a null value (None) without that header,
// the key is the record key (an empty Key a null key), the ID is the
// mq-id header and other headers are record headers.
func testGoToPython(t *testing.T, b *testbed.Broker, c *mq.Client) {
	testbed.Python(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	topic := "py-out-" + mq.NewID()
	k, _ := kafka.FromClient(c)
	if err := k.CreateTopic(ctx, topic, 1, 0); err != nil {
		t.Fatal(err)
	}
	msgs := []*mq.Message{
		{Key: "k-empty", Body: []byte{}, Headers: map[string]string{"h": "v"}},
		{Key: "k-nil"},
		{Key: "k-tomb", Headers: map[string]string{kafka.HeaderTombstone: "true", "why": "deleted"}},
		{Body: []byte("no key \xff")},
	}
	if err := c.Producer().Produce(ctx, topic, msgs...); err != nil {
		t.Fatal(err)
	}
	recs := pyRecords(t, testbed.RunPython(t, pyConsumeAll, b.Addr, topic, fmt.Sprint(len(msgs))))
	type want struct {
		key, value *string
		headers    map[string]string
	}
	wants := []want{
		{b64("k-empty"), b64(""), map[string]string{kafka.HeaderID: msgs[0].ID, "h": "v"}},
		{b64("k-nil"), b64(""), map[string]string{kafka.HeaderID: msgs[1].ID}},
		{b64("k-tomb"), nil, map[string]string{kafka.HeaderID: msgs[2].ID, "why": "deleted"}},
		{nil, b64("no key \xff"), map[string]string{kafka.HeaderID: msgs[3].ID}},
	}
	mismatches := 0
	for i, w := range wants {
		r := recs[i]
		bad := show(r.Key) != show(w.key) || show(r.Value) != show(w.value) || len(r.Headers) != len(w.headers)
		for name, v := range w.headers {
			if got, ok := r.header(name); !ok || got != show(b64(v)) {
				bad = true
			}
		}
		if bad {
			mismatches++
			t.Errorf("message %d read by confluent-kafka as key %s value %s headers %s\nwant key %s value %s headers %v",
				i, show(r.Key), show(r.Value), showHeaders(r.Headers), show(w.key), show(w.value), w.headers)
		}
	}
	t.Logf("mqkit -> confluent-kafka: %d messages, %d intact, %d mismatches", len(wants), len(wants)-mismatches, mismatches)

	// And back: the tombstone and the empty values stay apart when read here.
	got := consumeN(t, c, topic, "g", len(msgs))
	for i, m := range got {
		tomb := m.Header(kafka.HeaderTombstone) == "true"
		if tomb != (i == 2) || len(m.Body) != len(msgs[i].Body) || m.ID != msgs[i].ID {
			t.Errorf("message %d read back as ID %q body %q headers %v", i, m.ID, m.Body, m.Headers)
		}
	}
}

func showHeaders(hs [][2]*string) string {
	var parts []string
	for _, h := range hs {
		name := "None"
		if h[0] != nil {
			name = *h[0]
		}
		parts = append(parts, name+"="+show(h[1]))
	}
	return "[" + strings.Join(parts, " ") + "]"
}

// testTombstoneRejected checks the misuses of HeaderTombstone: a body with
// it, or a value other than "true", is ErrInvalidMessage before anything
// is sent.
func testTombstoneRejected(t *testing.T, c *mq.Client) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	topic := "tomb-bad-" + mq.NewID()
	for _, m := range []*mq.Message{
		{Key: "k", Body: []byte("x"), Headers: map[string]string{kafka.HeaderTombstone: "true"}},
		{Key: "k", Headers: map[string]string{kafka.HeaderTombstone: "yes"}},
	} {
		if err := c.Producer().Produce(ctx, topic, m); !errors.Is(err, mq.ErrInvalidMessage) {
			t.Errorf("Produce(%v) = %v, want ErrInvalidMessage", m.Headers, err)
		}
	}
}

// pyTransactions writes, with a transactional confluent-kafka producer,
// three transactions to partition 0: c1 c2 committed, a1 a2 aborted, c3
// committed.
const pyTransactions = `
import sys
from confluent_kafka import Producer
brokers, topic = sys.argv[1], sys.argv[2]
p = Producer({"bootstrap.servers": brokers, "transactional.id": "tx-" + topic})
p.init_transactions(60)
for bodies, commit in ((["c1", "c2"], True), (["a1", "a2"], False), (["c3"], True)):
    p.begin_transaction()
    for b in bodies:
        p.produce(topic, value=b.encode(), key=b"k", partition=0)
    if commit:
        p.commit_transaction(60)
    else:
        p.flush(60)  # the aborted records are in the log, then aborted
        p.abort_transaction(60)
print("ok")
`

// testTransactions checks that a consumer reads only committed records of
// a transactional producer by default, and every record with
// isolation=read_uncommitted.
func testTransactions(t *testing.T, b *testbed.Broker, c *mq.Client, open func(t testing.TB, params string) *mq.Client) {
	testbed.Python(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	topic := "tx-" + mq.NewID()
	k, _ := kafka.FromClient(c)
	if err := k.CreateTopic(ctx, topic, 1, 0); err != nil {
		t.Fatal(err)
	}
	testbed.RunPython(t, pyTransactions, b.Addr, topic)

	bodies := func(ms []*mq.Message) string {
		var s []string
		for _, m := range ms {
			s = append(s, string(m.Body))
		}
		return strings.Join(s, " ")
	}
	// One partition, in order: c3 arriving third means a1 and a2 were
	// skipped, not late.
	if got := bodies(consumeN(t, c, topic, "committed", 3)); got != "c1 c2 c3" {
		t.Errorf("read committed (the default) consumed %q, want \"c1 c2 c3\"", got)
	}
	if got := bodies(consumeN(t, open(t, "&isolation=read_uncommitted"), topic, "uncommitted", 5)); got != "c1 c2 a1 a2 c3" {
		t.Errorf("isolation=read_uncommitted consumed %q, want \"c1 c2 a1 a2 c3\"", got)
	}
	lag, err := k.Lag(ctx, topic, "committed")
	if err != nil {
		t.Fatal(err)
	}
	// Everything was handled; only the last commit marker, which no
	// consumer sees, may remain (see Conn.Lag).
	if len(lag) != 1 || lag[0].Lag > 1 {
		t.Errorf("lag of the read-committed group after the last transaction = %+v, want at most the commit marker", lag)
	}
	t.Logf("lag of the read-committed group after the last transaction: %+v", lag)
}

// testBrokerDefaultPartitions checks that create_topics=true without
// partitions= creates topics with the broker's num.partitions (3 on this
// broker), and that partitions= still overrides it.
func testBrokerDefaultPartitions(t *testing.T, open func(t testing.TB, params string) *mq.Client) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	for _, tc := range []struct {
		params string
		want   int
	}{{"", 3}, {"&partitions=2", 2}} {
		c := open(t, tc.params)
		topic := "parts-" + mq.NewID()
		if err := c.Producer().Produce(ctx, topic, &mq.Message{Body: []byte("x")}); err != nil {
			t.Fatal(err)
		}
		k, _ := kafka.FromClient(c)
		parts, err := k.Sarama().Partitions(topic)
		if err != nil {
			t.Fatal(err)
		}
		if len(parts) != tc.want {
			t.Errorf("create_topics=true%s created %d partitions, want %d", tc.params, len(parts), tc.want)
		}
	}
}

// testLagUnknownGroup checks that Lag of a group that never joined is an
// error wrapping ErrUnknownGroup, not the whole topic as lag.
func testLagUnknownGroup(t *testing.T, c *mq.Client) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	topic := "lag-unknown-" + mq.NewID()
	if err := c.Producer().Produce(ctx, topic, &mq.Message{Body: []byte("x")}); err != nil {
		t.Fatal(err)
	}
	k, _ := kafka.FromClient(c)
	lag, err := k.Lag(ctx, topic, "never-joined-"+mq.NewID())
	if !errors.Is(err, kafka.ErrUnknownGroup) {
		t.Errorf("Lag of a group that never joined = %+v, %v; want an error wrapping ErrUnknownGroup", lag, err)
	}
}

// testDeleteGroup checks Conn.DeleteGroup through mq.Client.DeleteGroup:
// a group that does not exist is nil; a group with a live member is
// ErrGroupActive and keeps its offsets; a stopped group is deleted (Lag
// then says it is unknown, and the group reads the topic from the start
// again); and a group that also reads another topic loses only the named
// topic's offsets.
func testDeleteGroup(t *testing.T, c *mq.Client) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	k, _ := kafka.FromClient(c)
	topic, other := "del-"+mq.NewID(), "del-other-"+mq.NewID()
	group := "del-" + mq.NewID() // group names are cluster-wide: one no other test uses
	if err := c.DeleteGroup(ctx, topic, "no-such-group-"+mq.NewID()); err != nil {
		t.Errorf("DeleteGroup of a group that does not exist = %v, want nil", err)
	}

	m := &mq.Message{Key: "k", Body: []byte("once")}
	if err := c.Producer().Produce(ctx, topic, m); err != nil {
		t.Fatal(err)
	}
	if err := c.Producer().Produce(ctx, other, &mq.Message{Key: "k", Body: []byte("other")}); err != nil {
		t.Fatal(err)
	}

	// A live member: not deleted.
	cons, err := c.Consumer(ctx, topic, mq.WithGroup(group))
	if err != nil {
		t.Fatal(err)
	}
	handled := make(chan struct{}, 1)
	cctx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() {
		done <- cons.Consume(cctx, mq.HandlerFunc(func(context.Context, *mq.Message) error {
			select {
			case handled <- struct{}{}:
			default:
			}
			return nil
		}))
	}()
	select {
	case <-handled:
	case <-ctx.Done():
		t.Fatal("message never handled")
	}
	if err := c.DeleteGroup(ctx, topic, group); !errors.Is(err, kafka.ErrGroupActive) {
		t.Errorf("DeleteGroup of a group with a live member = %v, want ErrGroupActive", err)
	}
	stop()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if err := cons.Close(); err != nil {
		t.Fatal(err)
	}
	if lag, err := k.Lag(ctx, topic, group); err != nil || lag[0].Committed != 1 {
		t.Fatalf("Lag after the member left = %+v, %v; want offset 1 committed", lag, err)
	}

	// Stopped: deleted, and read from the start again.
	if err := c.DeleteGroup(ctx, topic, group); err != nil {
		t.Fatalf("DeleteGroup of a stopped group: %v", err)
	}
	if _, err := k.Lag(ctx, topic, group); !errors.Is(err, kafka.ErrUnknownGroup) {
		t.Errorf("Lag after DeleteGroup = %v, want ErrUnknownGroup", err)
	}
	if again := consumeN(t, c, topic, group, 1); again[0].ID != m.ID {
		t.Errorf("after DeleteGroup the group read %s, want %s again from the start", again[0].ID, m.ID)
	}

	// A group with offsets of two topics keeps the other topic's.
	consumeN(t, c, other, group, 1)
	if err := c.DeleteGroup(ctx, topic, group); err != nil {
		t.Fatalf("DeleteGroup of a group that reads two topics: %v", err)
	}
	if lag, err := k.Lag(ctx, topic, group); err != nil || lag[0].Committed != -1 {
		t.Errorf("Lag of the deleted topic = %+v, %v; want no committed offset", lag, err)
	}
	if lag, err := k.Lag(ctx, other, group); err != nil || lag[0].Committed != 1 {
		t.Errorf("Lag of the other topic = %+v, %v; want its offset 1 kept", lag, err)
	}
}

// pyPartitions prints, for each key, the partition confluent-kafka's
// producer picks with the partitioner named in argv[3].
const pyPartitions = `
import sys
from confluent_kafka import Producer
brokers, topic, partitioner, keys = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:]
p = Producer({"bootstrap.servers": brokers, "partitioner": partitioner})
out = {}
def report(err, msg):
    if err is not None:
        raise SystemExit("delivery failed: %s" % err)
    out[msg.key().decode()] = msg.partition()
for k in keys:
    p.produce(topic, key=k.encode(), value=b"x", on_delivery=report)
if p.flush(60) != 0:
    raise SystemExit("flush timed out")
print(" ".join("%d" % out[k] for k in keys))
`

// testPythonPartitioner checks that a librdkafka producer configured with
// partitioner=murmur2_random puts every key on the partition mqkit's
// default partitioner (the Java client's murmur2) picks, so both keep one
// key in one partition's order; and shows that librdkafka's default
// (consistent_random, CRC32) does not.
func testPythonPartitioner(t *testing.T, b *testbed.Broker, c *mq.Client) {
	testbed.Python(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	topic := "py-parts-" + mq.NewID()
	const parts = 6
	k, _ := kafka.FromClient(c)
	if err := k.CreateTopic(ctx, topic, parts, 0); err != nil {
		t.Fatal(err)
	}
	var keys []string
	msgs := make([]*mq.Message, 40)
	for i := range msgs {
		keys = append(keys, fmt.Sprintf("customer-%d", i))
		msgs[i] = &mq.Message{Key: keys[i], Body: []byte("x")}
	}
	if err := c.Producer().Produce(ctx, topic, msgs...); err != nil {
		t.Fatal(err)
	}
	// Where mqkit put each key, as confluent-kafka reads it.
	goPart := map[string]string{}
	for _, r := range pyRecords(t, testbed.RunPython(t, pyConsumeAll, b.Addr, topic, fmt.Sprint(len(msgs)))) {
		key, _ := base64.StdEncoding.DecodeString(*r.Key)
		goPart[string(key)] = fmt.Sprint(r.Partition)
	}
	for _, key := range keys {
		if want := fmt.Sprint(kafka.JavaPartition([]byte(key), parts)); goPart[key] != want {
			t.Errorf("mqkit put key %q on partition %s, the Java partitioner's is %s", key, goPart[key], want)
		}
	}
	for _, partitioner := range []string{"murmur2_random", "consistent_random"} {
		got := strings.Fields(testbed.RunPython(t, pyPartitions, append([]string{b.Addr, topic, partitioner}, keys...)...))
		same := 0
		for i, key := range keys {
			if got[i] == goPart[key] {
				same++
			}
		}
		t.Logf("confluent-kafka partitioner=%s: %d of %d keys on mqkit's partition", partitioner, same, len(keys))
		if partitioner == "murmur2_random" && same != len(keys) {
			t.Errorf("partitioner=murmur2_random put %d of %d keys elsewhere than mqkit", len(keys)-same, len(keys))
		}
	}
}
