package rabbit

import (
	"errors"
	"math"
	"strings"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/mqkit/mq"
)

// TestHeaderText: every type of AMQP's field tables has a documented
// text form; none is dropped.
func TestHeaderText(t *testing.T) {
	ts := time.Date(2024, 5, 6, 7, 8, 9, 0, time.UTC)
	for _, tc := range []struct {
		v    any
		want string
	}{
		{"s", "s"},
		{[]byte{0xff, 'a'}, "\xffa"},
		{true, "true"},
		{int8(-8), "-8"}, {uint8(8), "8"}, {int16(-16), "-16"}, {uint16(16), "16"},
		{int32(-32), "-32"}, {uint32(32), "32"}, {int64(-1 << 40), "-1099511627776"},
		{float32(2.5), "2.5"}, {float64(0.1), "0.1"}, {math.Inf(-1), "-Inf"},
		{amqp.Decimal{Scale: 2, Value: 1234}, "12.34"},
		{amqp.Decimal{Scale: 3, Value: -5}, "-0.005"},
		{amqp.Decimal{Scale: 0, Value: 7}, "7"},
		{amqp.Decimal{Scale: 1, Value: math.MinInt32}, "-214748364.8"},
		{nil, ""},
		{ts, "2024-05-06T07:08:09Z"},
		{[]any{int32(1), "a", true, nil, 1.5, amqp.Decimal{Scale: 1, Value: 15}, []byte("b"), math.NaN()}, `[1,"a",true,null,1.5,1.5,"b","NaN"]`},
		{amqp.Table{"b": amqp.Table{"c": "<d>"}, "a": int64(1), "t": ts}, `{"a":1,"b":{"c":"<d>"},"t":"2024-05-06T07:08:09Z"}`},
	} {
		got, ok := headerText(tc.v)
		if !ok || got != tc.want {
			t.Errorf("headerText(%#v) = %q, %v; want %q", tc.v, got, ok, tc.want)
		}
	}
	if _, ok := headerText(struct{}{}); ok {
		t.Error("headerText accepted a type AMQP has not")
	}
}

// TestProperties: delivered properties become the amqp-* headers, and
// Produce sends those headers back as properties (but user-id and
// expiration, which stay headers).
func TestProperties(t *testing.T) {
	s := &subscription{topic: "t"}
	d := &amqp.Delivery{
		MessageId: "m", ContentType: "application/json", ContentEncoding: "gzip", CorrelationId: "c-1",
		ReplyTo: "replies", Type: "order.created", AppId: "billing", UserId: "guest", Expiration: "60000", Priority: 5,
		Headers: amqp.Table{HeaderContentType: "shadowed", "plain": "p"},
	}
	m := s.toMessage(d)
	want := map[string]string{
		HeaderContentType: "application/json", HeaderContentEncoding: "gzip", HeaderCorrelationID: "c-1",
		HeaderReplyTo: "replies", HeaderType: "order.created", HeaderAppID: "billing", HeaderUserID: "guest",
		HeaderExpiration: "60000", HeaderPriority: "5", "plain": "p",
	}
	for k, v := range want {
		if m.Headers[k] != v {
			t.Errorf("header %s = %q, want %q", k, m.Headers[k], v)
		}
	}
	p, err := toPublishing(m, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	if p.ContentType != "application/json" || p.ContentEncoding != "gzip" || p.CorrelationId != "c-1" ||
		p.ReplyTo != "replies" || p.Type != "order.created" || p.AppId != "billing" || p.Priority != 5 {
		t.Errorf("properties not sent back: %+v", p)
	}
	if p.UserId != "" || p.Expiration != "" {
		t.Errorf("user-id %q and expiration %q sent as properties; want headers only", p.UserId, p.Expiration)
	}
	if p.Headers[HeaderUserID] != "guest" || p.Headers[HeaderExpiration] != "60000" || p.Headers["plain"] != "p" {
		t.Errorf("headers table %v", p.Headers)
	}
	if _, ok := p.Headers[HeaderContentType]; ok {
		t.Errorf("%s sent both as property and header", HeaderContentType)
	}
	for _, bad := range []string{"256", "-1", "high"} {
		_, err := toPublishing(&mq.Message{ID: "x", Headers: map[string]string{HeaderPriority: bad}}, time.Now())
		if !errors.Is(err, mq.ErrInvalidMessage) || !strings.Contains(err.Error(), HeaderPriority) {
			t.Errorf("priority %q: %v, want ErrInvalidMessage naming the header", bad, err)
		}
	}
}

// TestKeyFallback: without x-mq-key the routing key is the key, but not
// when it is the message-id (how earlier producers sent no key); an
// x-mq-key header, even empty, wins.
func TestKeyFallback(t *testing.T) {
	s := &subscription{topic: "t"}
	for _, tc := range []struct {
		name string
		d    amqp.Delivery
		want string
	}{
		{"foreign", amqp.Delivery{RoutingKey: "customer-42"}, "customer-42"},
		{"foreign with ID", amqp.Delivery{MessageId: "id-1", RoutingKey: "customer-42"}, "customer-42"},
		{"mqkit without key, before x-mq-key was always set", amqp.Delivery{MessageId: "id-1", RoutingKey: "id-1"}, ""},
		{"mqkit without key", amqp.Delivery{MessageId: "id-1", RoutingKey: "id-1", Headers: amqp.Table{headerKey: ""}}, ""},
		{"mqkit long key", amqp.Delivery{MessageId: "id-1", RoutingKey: "sha256:ab", Headers: amqp.Table{headerKey: "long"}}, "long"},
	} {
		if got := s.toMessage(&tc.d).Key; got != tc.want {
			t.Errorf("%s: Key %q, want %q", tc.name, got, tc.want)
		}
	}
	p, err := toPublishing(&mq.Message{ID: "id-1"}, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	if v, ok := p.Headers[headerKey]; !ok || v != "" {
		t.Errorf("a message without a key has x-mq-key %v (present %v); want it present and empty", v, ok)
	}
}

// TestDerivedID: a message without a message-id gets an ID marked not
// unique, the same on every redelivery (whatever counts the broker
// adds), and different when anything the broker keeps differs.
func TestDerivedID(t *testing.T) {
	s := &subscription{topic: "t"}
	base := amqp.Delivery{RoutingKey: "k", Body: []byte("same"), Headers: amqp.Table{"n": int32(1)}}
	m := s.toMessage(&base)
	if m.Header(mq.HeaderIDNotUnique) != "true" || !strings.HasPrefix(m.ID, "sha256:") {
		t.Fatalf("derived ID %q, header %q", m.ID, m.Header(mq.HeaderIDNotUnique))
	}
	again := base
	again.Redelivered = true
	again.Headers = amqp.Table{"n": int32(1), headerDeliveryCount: int64(3), "x-death": []any{amqp.Table{"count": int64(1)}}}
	if id := s.toMessage(&again).ID; id != m.ID {
		t.Errorf("redelivery got ID %q, first delivery %q", id, m.ID)
	}
	for name, change := range map[string]func(*amqp.Delivery){
		"body":      func(d *amqp.Delivery) { d.Body = []byte("other") },
		"key":       func(d *amqp.Delivery) { d.RoutingKey = "k2" },
		"header":    func(d *amqp.Delivery) { d.Headers = amqp.Table{"n": int32(2)} },
		"type":      func(d *amqp.Delivery) { d.Headers = amqp.Table{"n": "1"} },
		"property":  func(d *amqp.Delivery) { d.CorrelationId = "c" },
		"timestamp": func(d *amqp.Delivery) { d.Timestamp = time.Unix(1, 0) },
	} {
		d := base
		change(&d)
		if id := s.toMessage(&d).ID; id == m.ID {
			t.Errorf("a different %s gave the same ID", name)
		}
	}
	if m := s.toMessage(&amqp.Delivery{MessageId: "given"}); m.Header(mq.HeaderIDNotUnique) != "" {
		t.Errorf("a message-id from the publisher is marked not unique")
	}
}

// TestHandOverPublishing: the copy handOver makes keeps the message and
// its key, not the broker's counts, and carries user-id as a header.
func TestHandOverPublishing(t *testing.T) {
	d := &amqp.Delivery{
		MessageId: "m", RoutingKey: "customer-1", UserId: "other", ContentType: "text/plain", Priority: 3,
		Timestamp: time.Unix(5, 0), Body: []byte("b"), Headers: amqp.Table{headerDeliveryCount: int64(1), "h": "v"},
	}
	p := handOverPublishing(d)
	if p.Headers[headerKey] != "customer-1" || p.Headers["h"] != "v" || p.Headers[HeaderUserID] != "other" {
		t.Errorf("headers %v", p.Headers)
	}
	if _, ok := p.Headers[headerDeliveryCount]; ok || p.UserId != "" {
		t.Errorf("copy carries the delivery count or user-id property: %+v", p)
	}
	if p.MessageId != "m" || p.ContentType != "text/plain" || p.Priority != 3 || !p.Timestamp.Equal(d.Timestamp) || string(p.Body) != "b" {
		t.Errorf("copy lost properties: %+v", p)
	}
}
