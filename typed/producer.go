package typed

import (
	"context"
	"errors"
	"fmt"

	"github.com/mqkit/mq"
)

// Handler returns an mq.Handler that decodes each message with c and
// calls f with the value and the message (for its ID, key and headers).
// A message that does not decode fails with Decode's permanent error
// without calling f.
func Handler[T any](c Codec[T], f func(ctx context.Context, v T, m *mq.Message) error) mq.Handler {
	return mq.HandlerFunc(func(ctx context.Context, m *mq.Message) error {
		v, err := Decode(c, m)
		if err != nil {
			return err
		}
		return f(ctx, v, m)
	})
}

// Publisher sends messages to topics: an mq.Producer, an outbox, or the
// outputs of a publishing handler (runner.Outputs).
type Publisher interface {
	// Produce sends msgs to topic (see mq.Producer.Produce).
	Produce(ctx context.Context, topic string, msgs ...*mq.Message) error
}

// IDAssigner is implemented by a Publisher that chooses the IDs of the
// messages given to it without one, such as runner.Outputs, which derives
// them from the input's. A Producer whose messages need their ID before
// Produce (for the CloudEvents id) asks it for one; other publishers get
// a new mq.NewID.
type IDAssigner interface {
	// AssignID sets m.ID if it is empty.
	AssignID(m *mq.Message)
}

// Producer sends values of type T to one topic, encoded by Codec. It is a
// plain configuration: set the fields, then call Produce; it is safe for
// concurrent use as long as the fields are not changed.
type Producer[T any] struct {
	// Publisher sends the messages. Required.
	Publisher Publisher
	// Topic is the topic sent to. Required.
	Topic string
	// Codec encodes the values. Required.
	Codec Codec[T]

	// Key, when set, returns the key of a value's message (see
	// mq.Message.Key).
	Key func(v T) string
	// ID, when set, returns the ID of a value's message. Without it a
	// message gets its ID from the Publisher (see mq.Producer.Produce, and
	// runner.Outputs for deterministic IDs of a handler's outputs).
	ID func(v T) string

	// Event, when set, returns the CloudEvents attributes of a value's
	// message, written to its headers by Binding in binary content mode.
	// An event without an ID takes the message's, and a message without
	// an ID the event's; when both are missing the Publisher assigns one
	// (IDAssigner), or mq.NewID does.
	Event func(v T) Event
	// Binding names the headers of Event. The zero value uses the "ce-"
	// prefix.
	Binding Binding
}

// Via returns a copy of p that sends through pub: for example the
// outputs of one handler call, with the same topic and codec.
func (p *Producer[T]) Via(pub Publisher) *Producer[T] {
	c := *p
	c.Publisher = pub
	return &c
}

// Message returns the message Produce would send for v.
func (p *Producer[T]) Message(v T) (*mq.Message, error) {
	if p.Codec == nil {
		return nil, errors.New("typed: Producer has no Codec")
	}
	m, err := Encode(p.Codec, v)
	if err != nil {
		return nil, err
	}
	if p.Key != nil {
		m.Key = p.Key(v)
	}
	if p.ID != nil {
		m.ID = p.ID(v)
	}
	if p.Event == nil {
		return m, nil
	}
	e := p.Event(v)
	if m.ID == "" {
		m.ID = e.ID
	}
	if m.ID == "" {
		if a, ok := p.Publisher.(IDAssigner); ok {
			a.AssignID(m)
		}
		if m.ID == "" {
			m.ID = mq.NewID()
		}
	}
	if err := p.Binding.Write(m, e); err != nil {
		return nil, fmt.Errorf("typed: message for topic %q: %w", p.Topic, err)
	}
	return m, nil
}

// Produce encodes vs and sends them to the topic in one Produce call of
// the Publisher. Nothing is sent when one of them cannot be encoded.
func (p *Producer[T]) Produce(ctx context.Context, vs ...T) error {
	if p.Publisher == nil || p.Topic == "" {
		return errors.New("typed: Producer needs a Publisher and a Topic")
	}
	msgs := make([]*mq.Message, len(vs))
	for i, v := range vs {
		m, err := p.Message(v)
		if err != nil {
			return err
		}
		msgs[i] = m
	}
	return p.Publisher.Produce(ctx, p.Topic, msgs...)
}
