package rabbit

import (
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
)

// FuzzToMessage: any AMQP delivery, from mq or from a program that knows
// nothing of it, becomes a message with an ID and its exact body, without
// a panic, whatever the header table holds.
func FuzzToMessage(f *testing.F) {
	f.Add("id-1", []byte("body"), "k", "trace", "abc", int64(2), true)
	f.Add("", []byte{}, "", "x-death", "", int64(-1), false)
	f.Add("", []byte{0xff, 0x00}, "\xff", "", "\x00", int64(1<<40), true)
	s := &subscription{topic: "t"}
	f.Fuzz(func(t *testing.T, id string, body []byte, key, hname, hval string, count int64, redelivered bool) {
		d := &amqp.Delivery{
			MessageId:   id,
			Body:        body,
			Redelivered: redelivered,
			Timestamp:   time.Unix(0, count),
			Headers: amqp.Table{
				headerKey:           key,
				headerDeliveryCount: count,
				hname:               hval,
				"nested":            amqp.Table{"a": []any{int32(1), "b", nil}},
				"list":              []any{amqp.Table{"reason": "rejected"}},
				"bytes":             []byte(hval),
				"decimal":           amqp.Decimal{Scale: 2, Value: 12345},
			},
		}
		m := s.toMessage(d)
		if m.ID == "" {
			t.Fatal("message without an ID")
		}
		if id != "" && m.ID != id {
			t.Fatalf("ID %q came out as %q", id, m.ID)
		}
		if string(m.Body) != string(body) {
			t.Fatal("body changed")
		}
		if m.Attempt < 1 {
			t.Fatalf("Attempt %d", m.Attempt)
		}
		again := s.toMessage(d)
		if again.ID != m.ID {
			t.Fatalf("a redelivery of the same delivery got another ID: %q then %q", m.ID, again.ID)
		}
	})
}

// TestAttemptHeaders: Attempt from what each queue type and RabbitMQ
// version tells, never 1 for a redelivery.
func TestAttemptHeaders(t *testing.T) {
	s := &subscription{topic: "t"}
	for _, tc := range []struct {
		name        string
		redelivered bool
		headers     amqp.Table
		want        int
	}{
		{"first delivery", false, nil, 1},
		{"classic redelivery", true, nil, 2},
		{"quorum before 4.3, third delivery", true, amqp.Table{headerDeliveryCount: int64(2)}, 3},
		{"quorum 4.3, returned twice without failure", true, amqp.Table{headerDeliveryCount: int64(0), headerAcquiredCount: int64(2)}, 3},
		{"quorum 4.3, one failure of three returns", true, amqp.Table{headerDeliveryCount: int64(1), headerAcquiredCount: int64(3)}, 4},
		{"a zero count on a redelivery", true, amqp.Table{headerDeliveryCount: int32(0)}, 2},
		{"a foreign, insane count", true, amqp.Table{headerDeliveryCount: int64(-5)}, 2},
	} {
		d := &amqp.Delivery{MessageId: "m", Redelivered: tc.redelivered, Headers: tc.headers}
		if got := s.toMessage(d).Attempt; got != tc.want {
			t.Errorf("%s: Attempt %d, want %d", tc.name, got, tc.want)
		}
	}
}
