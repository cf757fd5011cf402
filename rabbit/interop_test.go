package rabbit_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"

	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/mqkit/mq"
	"github.com/mqkit/mq/idempotency"
	"github.com/mqkit/mq/integration/testbed"
	"github.com/mqkit/mq/rabbit"
)

// This file holds the tests of what other clients see: Python's pika
// publishes and reads the messages, so nothing here only checks mqkit
// against itself. The RabbitMQ section of WIRE.md names these tests as
// the examples of each direction.

// pyPublishKeyed publishes, with pika, per messages for each of keys
// keys, the key as routing key and no x-mq-key header, in the order
// key-0:0, key-1:0, ..., key-0:1, ...; the body is "<key>:<i>" and the
// message_id "<key>-<i>". With "declare", it first declares the exchange
// as the package documentation says a foreign service must.
const pyPublishKeyed = `
import sys, pika
url, exchange, keys, per, declare = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
c = pika.BlockingConnection(pika.URLParameters(url))
ch = c.channel()
if declare == "declare":
    ch.exchange_declare(exchange, "topic", durable=True, arguments={"alternate-exchange": exchange + ".unrouted"})
ch.confirm_delivery()
for i in range(per):
    for k in range(keys):
        key = "key-%d" % k
        ch.basic_publish(exchange, key, ("%s:%d" % (key, i)).encode(),
                         pika.BasicProperties(message_id="%s-%d" % (key, i), delivery_mode=2), mandatory=True)
c.close()
`

// pyPublishNoID publishes n messages with pika's defaults: no
// message_id, no timestamp, not persistent. Every fifth body is "same",
// with the routing keys k0 to k6 in turn.
const pyPublishNoID = `
import sys, pika
url, exchange, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
c = pika.BlockingConnection(pika.URLParameters(url))
ch = c.channel()
ch.confirm_delivery()
for i in range(n):
    body = b"same" if i % 5 == 0 else ("m%d" % i).encode()
    ch.basic_publish(exchange, "k%d" % (i % 7), body, mandatory=True)
c.close()
`

// pyPublishTyped publishes one message with every basic property set
// and headers of every type pika writes (pika cannot write floats).
const pyPublishTyped = `
import sys, pika, decimal, datetime
url, exchange = sys.argv[1], sys.argv[2]
c = pika.BlockingConnection(pika.URLParameters(url))
ch = c.channel()
ch.confirm_delivery()
props = pika.BasicProperties(
    content_type="application/json", content_encoding="identity", correlation_id="corr-1",
    reply_to="replies", type="order.created", app_id="billing", user_id="guest",
    expiration="600000", priority=5, message_id="typed-1", timestamp=1700000000, delivery_mode=2,
    headers={"dec": decimal.Decimal("12.34"), "none": None, "list": [1, "a", True, None, decimal.Decimal("1.5")],
             "table": {"a": 1, "b": {"c": "d"}}, "ts": datetime.datetime(2024, 5, 6, 7, 8, 9),
             "int": 7, "big": 2**40, "bool": False, "bytes": b"\xff\x00", "str": "s"})
ch.basic_publish(exchange, "customer-1", b'{"order":7}', props, mandatory=True)
c.close()
`

// pyBindQueue declares the exchange as documented for foreign services,
// and a durable queue bound to it with "#".
const pyBindQueue = `
import sys, pika
url, exchange, queue = sys.argv[1], sys.argv[2], sys.argv[3]
c = pika.BlockingConnection(pika.URLParameters(url))
ch = c.channel()
ch.exchange_declare(exchange, "topic", durable=True, arguments={"alternate-exchange": exchange + ".unrouted"})
ch.queue_declare(queue, durable=True)
ch.queue_bind(queue, exchange, "#")
c.close()
`

// pyRead reads n messages from a queue and prints each as a JSON line:
// properties, headers (byte strings as {"bytes": hex}) and body.
const pyRead = `
import sys, json, time, pika
url, queue, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
def enc(v):
    if isinstance(v, bytes): return {"bytes": v.hex()}
    if isinstance(v, dict): return {k: enc(x) for k, x in v.items()}
    if isinstance(v, list): return [enc(x) for x in v]
    if v is None or isinstance(v, (bool, int, float, str)): return v
    return str(v)
c = pika.BlockingConnection(pika.URLParameters(url))
ch = c.channel()
got, deadline = 0, time.time() + 30
while got < n and time.time() < deadline:
    m, p, body = ch.basic_get(queue, auto_ack=True)
    if m is None:
        time.sleep(0.05)
        continue
    got += 1
    print(json.dumps({"exchange": m.exchange, "routing_key": m.routing_key, "message_id": p.message_id,
        "content_type": p.content_type, "content_encoding": p.content_encoding, "correlation_id": p.correlation_id,
        "reply_to": p.reply_to, "type": p.type, "app_id": p.app_id, "user_id": p.user_id,
        "expiration": p.expiration, "priority": p.priority, "delivery_mode": p.delivery_mode,
        "timestamp": p.timestamp, "headers": enc(p.headers or {}), "body": body.decode("utf-8", "replace")}))
c.close()
if got < n:
    sys.exit("read %d of %d messages" % (got, n))
`

// pyDeclare declares the exchange in each of the ways named in its
// arguments, each on a channel of its own, and prints "<way> ok" or
// "<way> <reply code> <reply text>".
const pyDeclare = `
import sys, pika
url, exchange = sys.argv[1], sys.argv[2]
c = pika.BlockingConnection(pika.URLParameters(url))
for way in sys.argv[3:]:
    ch = c.channel()
    try:
        if way == "plain":
            ch.exchange_declare(exchange, "topic", durable=True)
        elif way == "documented":
            ch.exchange_declare(exchange, "topic", durable=True, arguments={"alternate-exchange": exchange + ".unrouted"})
        elif way == "passive":
            ch.exchange_declare(exchange, passive=True)
        elif way == "direct":
            ch.exchange_declare(exchange, "direct", durable=True)
        print(way, "ok")
        ch.close()
    except pika.exceptions.ChannelClosedByBroker as e:
        print(way, e.reply_code, e.reply_text)
c.close()
`

// pyMessage is a message as pyRead prints it.
type pyMessage struct {
	Exchange        string         `json:"exchange"`
	RoutingKey      string         `json:"routing_key"`
	MessageID       string         `json:"message_id"`
	ContentType     string         `json:"content_type"`
	ContentEncoding string         `json:"content_encoding"`
	CorrelationID   string         `json:"correlation_id"`
	ReplyTo         string         `json:"reply_to"`
	Type            string         `json:"type"`
	AppID           string         `json:"app_id"`
	UserID          string         `json:"user_id"`
	Expiration      string         `json:"expiration"`
	Priority        int            `json:"priority"`
	Headers         map[string]any `json:"headers"`
	Body            string         `json:"body"`
}

func pyReadQueue(t *testing.T, url, queue string, n int) []pyMessage {
	t.Helper()
	out := testbed.RunPython(t, pyRead, url, queue, strconv.Itoa(n))
	var msgs []pyMessage
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		var m pyMessage
		if err := json.Unmarshal([]byte(line), &m); err != nil {
			t.Fatalf("pika printed %q: %v", line, err)
		}
		msgs = append(msgs, m)
	}
	return msgs
}

// collector records what a consumer handled, and whether two handlers
// ever ran one key at once.
type collector struct {
	mu      sync.Mutex
	msgs    []*mq.Message
	active  map[string]int
	overlap int
}

func newCollector() *collector { return &collector{active: map[string]int{}} }

func (col *collector) handle(_ context.Context, m *mq.Message) error {
	col.mu.Lock()
	col.msgs = append(col.msgs, m.Clone())
	if m.Key != "" {
		col.active[m.Key]++
		if col.active[m.Key] > 1 {
			col.overlap++
		}
	}
	col.mu.Unlock()
	time.Sleep(time.Millisecond)
	col.mu.Lock()
	if m.Key != "" {
		col.active[m.Key]--
	}
	col.mu.Unlock()
	return nil
}

func (col *collector) snapshot() []*mq.Message {
	col.mu.Lock()
	defer col.mu.Unlock()
	return append([]*mq.Message(nil), col.msgs...)
}

func (col *collector) wait(t *testing.T, n int) []*mq.Message {
	t.Helper()
	waitFor(t, 90*time.Second, fmt.Sprintf("%d messages", n), func() bool { return len(col.snapshot()) >= n })
	return col.snapshot()
}

// checkKeyed checks messages published by pyPublishKeyed (or as it
// does): every one once, with its key, each key's in order.
func checkKeyed(t *testing.T, msgs []*mq.Message, keys, per int) {
	t.Helper()
	if len(msgs) != keys*per {
		t.Errorf("%d messages, want %d", len(msgs), keys*per)
	}
	next := map[string]int{}
	seen := map[string]int{}
	for _, m := range msgs {
		seen[m.ID]++
		key, i, ok := strings.Cut(string(m.Body), ":")
		if !ok || key != m.Key {
			t.Errorf("message %s with body %q has Key %q, want the key it was published with", m.ID, m.Body, m.Key)
			continue
		}
		if n, _ := strconv.Atoi(i); n != next[key] {
			t.Errorf("key %s: message %d came when %d was due", key, n, next[key])
		} else {
			next[key]++
		}
	}
	for id, n := range seen {
		if n > 1 {
			t.Errorf("message %s handled %d times", id, n)
		}
	}
}

// TestInteropKeyFromRoutingKey: pika publishes with the key as routing
// key and no x-mq-key header; the messages arrive with that Key, and per
// key they are handled one at a time, in order, with 8 handlers, also on
// a sharded group (where the routing key is what the consistent-hash
// exchange hashes).
func TestInteropKeyFromRoutingKey(t *testing.T) {
	b := testbed.SharedRabbitMQ(t)
	testbed.Python(t)
	const keys, per = 4, 50
	for _, params := range []string{"", "?shards=3"} {
		t.Run("params="+params, func(t *testing.T) {
			c := openT(t, b.URL+params)
			topic := uniqueTopic("interop-key")
			col := newCollector()
			consumeT(t, c, topic, col.handle, mq.WithGroup("g"), mq.WithConcurrency(8))
			testbed.RunPython(t, pyPublishKeyed, b.URL, topic, strconv.Itoa(keys), strconv.Itoa(per), "")
			msgs := col.wait(t, keys*per)
			checkKeyed(t, msgs, keys, per)
			if col.overlap > 0 {
				t.Errorf("handlers ran one key at once %d times", col.overlap)
			}
			t.Logf("pika -> mqkit: %d messages, keys from routing keys", len(msgs))
		})
	}
}

// TestInteropNoMessageID: 1,000 pika messages without message_id (pika
// sets no timestamp either), a fifth of them with the same body and
// routing key, all reach a handler behind dedup middleware, each marked
// mq.HeaderIDNotUnique.
func TestInteropNoMessageID(t *testing.T) {
	b := testbed.SharedRabbitMQ(t)
	testbed.Python(t)
	const n = 1000
	c := openT(t, b.URL)
	topic := uniqueTopic("interop-noid")
	dedup, err := idempotency.New(idempotency.NewMemoryStore(idempotency.MemoryStoreConfig{}), idempotency.Config{Namespace: "g"})
	if err != nil {
		t.Fatal(err)
	}
	col := newCollector()
	h := mq.Chain(mq.HandlerFunc(col.handle), dedup)
	consumeT(t, c, topic, h.Handle, mq.WithGroup("g"), mq.WithConcurrency(8))
	testbed.RunPython(t, pyPublishNoID, b.URL, topic, strconv.Itoa(n))
	col.wait(t, n)
	time.Sleep(500 * time.Millisecond) // nothing more may come
	msgs := col.snapshot()
	ids, same, unmarked := map[string]bool{}, 0, 0
	for _, m := range msgs {
		ids[m.ID] = true
		if string(m.Body) == "same" {
			same++
		}
		if m.Header(mq.HeaderIDNotUnique) != "true" || !strings.HasPrefix(m.ID, "sha256:") {
			unmarked++
		}
	}
	if len(msgs) != n || same != n/5 || unmarked != 0 {
		t.Errorf("handled %d messages (%d with the shared body, %d not marked), want %d (%d), 0", len(msgs), same, unmarked, n, n/5)
	}
	t.Logf("pika -> mqkit: %d messages without message_id, %d distinct derived IDs, all handled", len(msgs), len(ids))
}

// TestInteropExchangeDeclaredFirst: pika declares the topic's exchange
// plainly (no alternate exchange) before mqkit uses it. mqkit uses it as
// it is, says so once, and refuses (ErrUnroutable) what no group would
// get; once a group exists, messages of both clients arrive. An exchange
// of another type is an error that names the argument.
func TestInteropExchangeDeclaredFirst(t *testing.T) {
	b := testbed.SharedRabbitMQ(t)
	testbed.Python(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	topic := uniqueTopic("interop-plain")
	if out := testbed.RunPython(t, pyDeclare, b.URL, topic, "plain"); strings.TrimSpace(out) != "plain ok" {
		t.Fatalf("pika: %s", out)
	}
	logs := &lockedBuffer{}
	c := dialT(t, b.URL, logs)
	err := c.Producer().Produce(ctx, topic, &mq.Message{ID: "before-any-group"})
	if !errors.Is(err, rabbit.ErrUnroutable) {
		t.Errorf("Produce before any group to a plain exchange = %v, want ErrUnroutable", err)
	}
	col := newCollector()
	consumeT(t, c, topic, col.handle, mq.WithGroup("g"))
	for i := range 3 {
		if err := c.Producer().Produce(ctx, topic, &mq.Message{ID: fmt.Sprint("go-", i), Key: "key-0", Body: []byte(fmt.Sprint("key-0:", i))}); err != nil {
			t.Fatal(err)
		}
	}
	testbed.RunPython(t, pyPublishKeyed, b.URL, topic, "1", "2", "")
	msgs := col.wait(t, 5)
	if len(msgs) != 5 {
		t.Errorf("%d messages, want 5", len(msgs))
	}
	if n := strings.Count(logs.String(), "another alternate exchange"); n != 1 {
		t.Errorf("the plain exchange was logged %d times, want once:\n%s", n, logs)
	}

	other := uniqueTopic("interop-direct")
	testbed.RunPython(t, pyDeclare, b.URL, other, "direct")
	_, err = c.Consumer(ctx, other, mq.WithGroup("g"))
	if err == nil || !strings.Contains(err.Error(), "another type") || !strings.Contains(err.Error(), other) {
		t.Errorf("Consumer on a direct exchange = %v, want an error naming the exchange and its type", err)
	}
}

// TestInteropExchangeDeclaredAfter: mqkit declares the exchange first;
// pika's plain declare then fails (406, alternate-exchange), while the
// declare the package documentation gives, and a passive one, succeed.
func TestInteropExchangeDeclaredAfter(t *testing.T) {
	b := testbed.SharedRabbitMQ(t)
	testbed.Python(t)
	c := openT(t, b.URL)
	topic := uniqueTopic("interop-after")
	if err := c.Producer().Produce(context.Background(), topic, &mq.Message{}); err != nil {
		t.Fatal(err)
	}
	out := testbed.RunPython(t, pyDeclare, b.URL, topic, "plain", "documented", "passive")
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) != 3 || !strings.HasPrefix(lines[0], "plain 406") || !strings.Contains(lines[0], "alternate-exchange") ||
		lines[1] != "documented ok" || lines[2] != "passive ok" {
		t.Errorf("pika's declares after mqkit:\n%s\nwant plain to fail with 406 on alternate-exchange, documented and passive ok", out)
	}
}

// TestInteropProperties: properties and typed headers both ways. pika
// publishes every basic property and headers of every type; mqkit
// delivers them as the documented headers and text forms, a handler
// produces the message again, and pika reads it back with its
// properties. A message produced by mqkit with amqp-* headers reaches
// pika with those properties.
func TestInteropProperties(t *testing.T) {
	b := testbed.SharedRabbitMQ(t)
	testbed.Python(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	c := openT(t, b.URL)
	in, out := uniqueTopic("interop-props-in"), uniqueTopic("interop-props-out")
	testbed.RunPython(t, pyBindQueue, b.URL, out, out+".pika")
	col := newCollector()
	consumeT(t, c, in, func(ctx context.Context, m *mq.Message) error {
		_ = col.handle(ctx, m)
		fwd := &mq.Message{ID: m.ID, Key: m.Key, Headers: m.Headers, Body: m.Body}
		return c.Producer().Produce(ctx, out, fwd)
	}, mq.WithGroup("g"))
	testbed.RunPython(t, pyPublishTyped, b.URL, in)
	m := col.wait(t, 1)[0]
	want := map[string]string{
		"dec": "12.34", "none": "", "list": `[1,"a",true,null,1.5]`, "table": `{"a":1,"b":{"c":"d"}}`,
		"ts": "2024-05-06T07:08:09Z", "int": "7", "big": "1099511627776", "bool": "false",
		"bytes": "\xff\x00", "str": "s",
		rabbit.HeaderContentType: "application/json", rabbit.HeaderContentEncoding: "identity",
		rabbit.HeaderCorrelationID: "corr-1", rabbit.HeaderReplyTo: "replies", rabbit.HeaderType: "order.created",
		rabbit.HeaderAppID: "billing", rabbit.HeaderUserID: "guest", rabbit.HeaderExpiration: "600000",
		rabbit.HeaderPriority: "5",
	}
	mismatches := 0
	for k, v := range want {
		if got, ok := m.Headers[k]; !ok || got != v {
			mismatches++
			t.Errorf("pika -> mqkit: header %s = %q (present %v), want %q", k, got, ok, v)
		}
	}
	if len(m.Headers) != len(want) {
		t.Errorf("pika -> mqkit: headers %q, want exactly %q", m.Headers, want)
	}
	if m.ID != "typed-1" || m.Key != "customer-1" || string(m.Body) != `{"order":7}` || m.Timestamp.Unix() != 1700000000 {
		t.Errorf("pika -> mqkit: %v body %q timestamp %v", m, m.Body, m.Timestamp)
	}
	t.Logf("pika -> mqkit: 1 message, %d properties and typed headers, %d mismatches", len(want), mismatches)

	// mqkit -> pika, directly.
	direct := &mq.Message{ID: "go-1", Key: "k1", Body: []byte("hi"), Headers: map[string]string{
		rabbit.HeaderContentType: "text/plain", rabbit.HeaderCorrelationID: "c-9", rabbit.HeaderPriority: "7",
		rabbit.HeaderAppID: "go-app", "trace": "t1",
	}}
	if err := c.Producer().Produce(ctx, out, direct); err != nil {
		t.Fatal(err)
	}
	got := pyReadQueue(t, b.URL, out+".pika", 2)
	fwd, dm := got[0], got[1]
	if fwd.MessageID != "typed-1" {
		fwd, dm = dm, fwd
	}
	// Forwarded: Go -> Go -> pika keeps the properties; user-id and
	// expiration are headers.
	if fwd.ContentType != "application/json" || fwd.ContentEncoding != "identity" || fwd.CorrelationID != "corr-1" ||
		fwd.ReplyTo != "replies" || fwd.Type != "order.created" || fwd.AppID != "billing" || fwd.Priority != 5 ||
		fwd.UserID != "" || fwd.Expiration != "" || fwd.Body != `{"order":7}` {
		t.Errorf("mqkit -> pika, forwarded: %+v", fwd)
	}
	for k, v := range map[string]string{rabbit.HeaderUserID: "guest", rabbit.HeaderExpiration: "600000", "dec": "12.34", "x-mq-key": "customer-1"} {
		if fwd.Headers[k] != v {
			t.Errorf("mqkit -> pika, forwarded: header %s = %v, want %q", k, fwd.Headers[k], v)
		}
	}
	if _, ok := fwd.Headers[rabbit.HeaderContentType]; ok {
		t.Errorf("mqkit -> pika: %s sent as a header too", rabbit.HeaderContentType)
	}
	if dm.ContentType != "text/plain" || dm.CorrelationID != "c-9" || dm.Priority != 7 || dm.AppID != "go-app" ||
		dm.Headers["trace"] != "t1" || dm.Headers["x-mq-key"] != "k1" || dm.RoutingKey != "k1" || dm.MessageID != "go-1" {
		t.Errorf("mqkit -> pika, direct: %+v", dm)
	}
	t.Logf("mqkit -> pika: 2 messages (1 forwarded, 1 direct) read with their properties")
}

// TestInteropUnroutedFromPika: pika publishes before any group (to the
// exchange an mqkit producer declared); the first group gets the
// messages, with keys from the routing keys, in order.
func TestInteropUnroutedFromPika(t *testing.T) {
	b := testbed.SharedRabbitMQ(t)
	testbed.Python(t)
	c := openT(t, b.URL)
	topic := uniqueTopic("interop-early")
	// mqkit's first use declares the exchange and its alternate exchange
	// and queue; pika's declare is the documented one.
	if err := c.Producer().Produce(context.Background(), topic, &mq.Message{ID: "go-early", Key: "go", Body: []byte("go:0")}); err != nil {
		t.Fatal(err)
	}
	testbed.RunPython(t, pyPublishKeyed, b.URL, topic, "3", "10", "declare")
	col := newCollector()
	consumeT(t, c, topic, col.handle, mq.WithGroup("g"), mq.WithConcurrency(4))
	msgs := col.wait(t, 31)
	var pika []*mq.Message
	for _, m := range msgs {
		if m.ID != "go-early" {
			pika = append(pika, m)
		}
	}
	checkKeyed(t, pika, 3, 10)
	t.Logf("pika -> mqkit before any group: %d messages handed to the first group", len(pika))
}

// TestInteropFloatHeaders: pika cannot write float headers, so a raw
// amqp091-go publisher (not through mqkit) sends them: they arrive in
// their text form, inside tables too.
func TestInteropFloatHeaders(t *testing.T) {
	b := testbed.SharedRabbitMQ(t)
	c := openT(t, b.URL)
	topic := uniqueTopic("interop-float")
	col := newCollector()
	consumeT(t, c, topic, col.handle, mq.WithGroup("g"))
	ch := rawChannel(t, b.URL)
	err := ch.PublishWithContext(context.Background(), topic, "k", false, false, amqp.Publishing{
		MessageId: "floats",
		Headers: amqp.Table{
			"f32": float32(2.5), "f64": 0.1,
			"table": amqp.Table{"price": 9.99},
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	m := col.wait(t, 1)[0]
	for k, v := range map[string]string{"f32": "2.5", "f64": "0.1", "table": `{"price":9.99}`} {
		if m.Headers[k] != v {
			t.Errorf("header %s = %q, want %q", k, m.Headers[k], v)
		}
	}
}
