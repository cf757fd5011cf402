package rabbit

import (
	"crypto/sha256"
	"encoding/hex"
	"strconv"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/mqkit/mq"
)

// toMessage maps an AMQP delivery onto an mq.Message.
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
	for k, v := range d.Headers {
		switch k {
		case headerKey:
			m.Key = headerString(v)
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
		// Headers sent through mq are strings; the broker adds others
		// (x-death is a list of tables): keep those with a text form.
		if sv, ok := headerText(v); ok {
			m.SetHeader(k, sv)
		}
	}
	if m.ID == "" {
		// Published without a message-id (not through mq): derive a
		// stable ID from the content, so redeliveries share it.
		h := sha256.New()
		h.Write([]byte(d.Exchange + "\x00" + d.RoutingKey + "\x00" + d.Timestamp.String() + "\x00"))
		h.Write(d.Body)
		m.ID = "sha256:" + hex.EncodeToString(h.Sum(nil)[:16])
	}
	return m
}

func headerString(v any) string {
	s, _ := headerText(v)
	return s
}

func headerText(v any) (string, bool) {
	switch x := v.(type) {
	case string:
		return x, true
	case []byte:
		return string(x), true
	case bool:
		return strconv.FormatBool(x), true
	case time.Time:
		return x.UTC().Format(time.RFC3339), true
	}
	if n, ok := headerInt(v); ok {
		return strconv.FormatInt(n, 10), true
	}
	return "", false
}

func headerInt(v any) (int64, bool) {
	switch x := v.(type) {
	case int:
		return int64(x), true
	case int8:
		return int64(x), true
	case int16:
		return int64(x), true
	case int32:
		return int64(x), true
	case int64:
		return x, true
	case uint8:
		return int64(x), true
	case uint16:
		return int64(x), true
	case uint32:
		return int64(x), true
	}
	return 0, false
}
