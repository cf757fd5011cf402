package mq

import (
	"context"
	"fmt"
	"sync/atomic"
)

type producer struct {
	client *Client
	limit  int         // the smaller of WithMaxMessageBytes and the backend's limit; 0: none
	send   ProduceFunc // the backend's Send inside the produce middleware
	closed atomic.Bool
}

// newProducer settles the size limit once (the backend's limit, lowered by
// WithMaxMessageBytes) and the send chain.
func newProducer(c *Client, o options) *producer {
	limit := o.maxMessageBytes
	if s, ok := c.conn.(Sizer); ok {
		if bl := s.MaxMessageBytes(); bl > 0 && (limit == 0 || bl < limit) {
			limit = bl
		}
	}
	return &producer{client: c, limit: limit, send: chainProduce(c.conn.Send, o.produceMW)}
}

// Size returns the bytes m takes on the wire before backend framing: body,
// key, ID and header names and values. Size limits are checked against it.
func (m *Message) Size() int {
	n := len(m.Body) + len(m.Key) + len(m.ID)
	for k, v := range m.Headers {
		n += len(k) + len(v)
	}
	return n
}

func (p *producer) Produce(ctx context.Context, topic string, msgs ...*Message) error {
	if p.closed.Load() || p.client.isClosed() {
		return ErrClosed
	}
	if topic == "" {
		return fmt.Errorf("%w: empty topic name", ErrInvalidMessage)
	}
	if len(msgs) == 0 {
		return nil
	}
	limit := p.limit
	for i, m := range msgs {
		if m == nil {
			return fmt.Errorf("%w: message %d of %d is nil", ErrInvalidMessage, i+1, len(msgs))
		}
		if m.ID == "" {
			m.ID = NewID()
		}
		if limit > 0 {
			if n := m.Size(); n > limit {
				return fmt.Errorf("%w: message %s is %d bytes, the limit is %d", ErrMessageTooLarge, m.ID, n, limit)
			}
		}
	}
	if err := p.send(ctx, topic, msgs); err != nil {
		return fmt.Errorf("mq: produce to %q: %w", topic, err)
	}
	return nil
}

func (p *producer) Close() error {
	p.closed.Store(true)
	return nil
}
