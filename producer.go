package mq

import (
	"context"
	"fmt"
	"maps"
	"sync/atomic"
)

type producer struct {
	client *Client
	limit  int         // the smaller of WithMaxMessageBytes and the backend's limit; 0: none
	send   ProduceFunc // the size check and the backend's Send, inside the produce middleware
	copies bool        // produce middleware is installed: it gets copies of the messages
	delays bool        // the backend is a Scheduler: messages due later go to Schedule
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
	p := &producer{client: c, limit: limit, copies: len(o.produceMW) > 0}
	_, p.delays = c.conn.(Scheduler)
	p.send = chainProduce(p.checkedSend, o.produceMW)
	return p
}

// checkedSend checks the size limit, after any produce middleware added
// its headers, and sends.
func (p *producer) checkedSend(ctx context.Context, topic string, msgs []*Message) error {
	if p.limit > 0 {
		for _, m := range msgs {
			if n := m.Size(); n > p.limit {
				return fmt.Errorf("%w: message %s is %d bytes, the limit is %d", ErrMessageTooLarge, m.ID, n, p.limit)
			}
		}
	}
	if p.delays {
		return p.sendOrSchedule(ctx, topic, msgs)
	}
	return p.client.conn.Send(ctx, topic, msgs)
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
	for i, m := range msgs {
		if m == nil {
			return fmt.Errorf("%w: message %d of %d is nil", ErrInvalidMessage, i+1, len(msgs))
		}
		if m.ID == "" {
			m.ID = NewID()
		}
	}
	send, err := p.prepareDelayed(msgs)
	if err != nil {
		return fmt.Errorf("mq: produce to %q: %w", topic, err)
	}
	if p.copies {
		// Middleware may add headers: to copies, so a caller's Headers
		// map (shared between messages, or goroutines) is never written.
		orig := send
		send = make([]*Message, len(orig))
		cp := make([]Message, len(orig))
		for i, m := range orig {
			cp[i] = *m
			cp[i].Headers = maps.Clone(m.Headers)
			send[i] = &cp[i]
		}
	}
	if err := p.send(ctx, topic, send); err != nil {
		return fmt.Errorf("mq: produce to %q: %w", topic, err)
	}
	return nil
}

func (p *producer) Close() error {
	p.closed.Store(true)
	return nil
}
