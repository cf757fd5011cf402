package rabbit

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"hash"
	"slices"
	"strings"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/mqkit/mq"
)

// toMessage maps an AMQP delivery onto an mq.Message (see the package
// documentation, "Messages from other clients").
func (s *subscription) toMessage(d *amqp.Delivery) *mq.Message {
	m := &mq.Message{
		ID:        d.MessageId,
		Body:      d.Body,
		Topic:     s.topic,
		Timestamp: d.Timestamp,
		Attempt:   1,
	}
	if m.Body == nil {
		m.Body = []byte{}
	}
	if m.Timestamp.IsZero() {
		m.Timestamp = time.Now()
	}
	if d.Redelivered {
		m.Attempt = 2 // all a classic queue tells
	}
	key, hasKey := deliveryKey(d)
	for k, v := range d.Headers {
		switch k {
		case headerKey:
			continue
		case headerDeliveryCount, headerAcquiredCount:
			// Quorum queues count earlier deliveries: x-delivery-count
			// all of them before RabbitMQ 4.3, only the failed ones
			// (basic.reject, a dead channel) from 4.3, which counts them
			// all in x-acquired-count. The highest count is the exact
			// one; a value that is not a sane count (from a foreign
			// publisher) is ignored.
			if n, ok := headerInt(v); ok && n >= 0 && n < 1<<31-1 {
				m.Attempt = max(m.Attempt, int(n)+1)
			}
			continue
		}
		sv, ok := headerText(v)
		if !ok {
			// Not a type of AMQP's field tables: nothing to lose but
			// the type, yet say so once.
			sv = fmt.Sprint(v)
			s.c.logOnce("header "+k, "rabbit: header of an unexpected type carried as fmt.Sprint text",
				"header", k, "type", fmt.Sprintf("%T", v), "topic", s.topic)
		}
		m.SetHeader(k, sv)
	}
	m.Key = key
	if !hasKey {
		m.Key = routedKey(d)
	}
	propsToHeaders(d, m)
	if m.ID == "" {
		// Published without a message-id (not through mq): derive an ID
		// that stays the same on redelivery, but tell dedup it may be
		// shared by distinct messages.
		m.ID = derivedID(s.topic, m.Key, d)
		m.SetHeader(mq.HeaderIDNotUnique, "true")
	}
	return m
}

// deliveryKey returns the x-mq-key header of d and whether it has one.
func deliveryKey(d *amqp.Delivery) (string, bool) {
	v, ok := d.Headers[headerKey]
	if !ok {
		return "", false
	}
	return headerString(v), true
}

// routedKey is the key of a message without an x-mq-key header: its
// routing key, which is what a consistent-hash exchange hashes, so the
// messages one shard holds share it. A routing key equal to the
// message-id is how producers of mqkit before x-mq-key was always set
// sent a message without a key: it means no key.
func routedKey(d *amqp.Delivery) string {
	if d.RoutingKey == d.MessageId {
		return ""
	}
	return d.RoutingKey
}

// derivedID is the ID of a message published without a message-id: a
// hash of what the broker keeps of it and does not change on redelivery
// (the topic, the key, the timestamp and other properties, the headers
// but those starting with "x-", which brokers add, and the body).
// Distinct messages that agree on all of it share the ID.
func derivedID(topic, key string, d *amqp.Delivery) string {
	h := sha256.New()
	field := func(s string) {
		writeLen(h, len(s))
		h.Write([]byte(s))
	}
	field(topic)
	field(key)
	if !d.Timestamp.IsZero() {
		field(d.Timestamp.UTC().Format(time.RFC3339Nano))
	} else {
		field("")
	}
	for _, p := range propertyHeaders {
		field(p.get(d))
	}
	names := make([]string, 0, len(d.Headers))
	for k := range d.Headers {
		if !strings.HasPrefix(k, "x-") {
			names = append(names, k)
		}
	}
	slices.Sort(names)
	writeLen(h, len(names))
	for _, k := range names {
		field(k)
		v, _ := headerText(d.Headers[k])
		field(fmt.Sprintf("%T:%s", d.Headers[k], v))
	}
	writeLen(h, len(d.Body))
	h.Write(d.Body)
	return "sha256:" + hex.EncodeToString(h.Sum(nil)[:16])
}

func writeLen(h hash.Hash, n int) {
	var b [8]byte
	binary.BigEndian.PutUint64(b[:], uint64(n))
	h.Write(b[:])
}
