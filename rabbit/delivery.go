package rabbit

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync/atomic"

	"github.com/mqkit/mq"
)

// delivery is one message delivered on one channel (session).
type delivery struct {
	s      *subscription
	ss     *session
	queue  string // the queue it came from
	tag    uint64
	msg    *mq.Message
	reject atomic.Bool // set by DeadLetter: Ack rejects to the DLX
}

// errLost is the reason an Ack of a lost delivery fails.
var errLost = errors.New("its channel closed since delivery, so the broker delivers it again")

// Position implements mq.Positioner: the queue and the channel's delivery
// tag.
func (d *delivery) Position() (partition, offset string) {
	return d.queue, strconv.FormatUint(d.tag, 10)
}

// Message implements mq.Delivery.
func (d *delivery) Message() *mq.Message { return d.msg }

// Lost implements mq.Delivery: the channel is closed when the delivery's
// AMQP channel closes (or the subscription closes it), since the broker
// then requeues the message. Deliveries of one channel share it.
func (d *delivery) Lost() <-chan struct{} { return d.ss.lost }

// Ack acknowledges the delivery, or, when DeadLetter marked it, rejects it
// without requeue so the broker dead-letters it. The acknowledgement may
// wait up to Config.AckDelay to go out in one basic.ack (multiple) with
// the channel's later ones; if the channel drops meanwhile, the broker
// delivers the message again, as it does for an ack lost on the wire. A
// lost delivery (see Lost) is not acknowledged: Ack fails and the broker
// delivers the message again.
func (d *delivery) Ack(context.Context) error {
	d.s.c.untrack(d)
	if d.ss.isLost() {
		return fmt.Errorf("rabbit: ack message %s: %w", d.msg.ID, errLost)
	}
	var err error
	if d.reject.Load() {
		err = d.ss.acks.settle(d.tag, func() error { return d.ss.ch.Reject(d.tag, false) })
	} else {
		err = d.ss.acks.ack(d.tag)
	}
	return d.settleErr("ack", err)
}

// Nack returns the delivery to its queue (basic.nack with requeue). The
// portable consumer nacks a delivery it holds only when it shuts down, so
// Nack first pauses consuming: the broker then gives the message to
// another member rather than back to this idle one. Nack of a lost
// delivery only forgets it: the broker requeued it already, and consuming
// goes on.
func (d *delivery) Nack(context.Context) error {
	d.s.c.untrack(d)
	if d.ss.isLost() {
		return nil
	}
	d.s.pause()
	return d.settleErr("nack", d.ss.acks.settle(d.tag, func() error { return d.ss.ch.Nack(d.tag, false, true) }))
}

func (d *delivery) settleErr(op string, err error) error {
	if err == nil {
		return nil
	}
	if d.ss.ch.IsClosed() {
		return fmt.Errorf("rabbit: %s message %s: %w: %w", op, d.msg.ID, errLost, err)
	}
	return fmt.Errorf("rabbit: %s message %s: %w", op, d.msg.ID, err)
}

func (c *Conn) track(d *delivery) {
	c.mu.Lock()
	c.live[d.msg] = d
	c.mu.Unlock()
}

func (c *Conn) untrack(d *delivery) {
	c.mu.Lock()
	if c.live[d.msg] == d {
		delete(c.live, d.msg)
	}
	c.mu.Unlock()
}

// DeadLetter returns middleware that hands failing messages to RabbitMQ's
// native dead-lettering instead of retrying them in-process: when the
// handler returns a permanent error (see mq.Permanent), or fails at
// Attempt maxAttempts or later, the middleware returns nil and the
// consumer's acknowledgement rejects the message without requeue, so the
// broker routes it through Config.DeadLetterExchange with an x-death
// header (reason "rejected", queue, time, count).
//
// It is the broker-native alternative to package dlq's middleware; use one
// or the other. It only acts on messages received through this Conn while
// Config.DeadLetterExchange is set; otherwise it returns the handler's
// error unchanged (and the consumer retries it), so a message is never
// dropped for want of a dead-letter exchange. maxAttempts below 1 means 1.
func (c *Conn) DeadLetter(maxAttempts int) mq.Middleware {
	maxAttempts = max(maxAttempts, 1)
	return func(next mq.Handler) mq.Handler {
		return mq.HandlerFunc(func(ctx context.Context, m *mq.Message) error {
			err := next.Handle(ctx, m)
			if err == nil || c.cfg.DeadLetterExchange == "" || (!mq.IsPermanent(err) && m.Attempt < maxAttempts) {
				return err
			}
			c.mu.Lock()
			d := c.live[m]
			c.mu.Unlock()
			if d == nil {
				return err
			}
			d.reject.Store(true)
			c.cfg.Logger.Warn("rabbit: dead-lettering message", "id", m.ID, "topic", m.Topic, "attempt", m.Attempt,
				"dead_letter_exchange", c.cfg.DeadLetterExchange, "error", err)
			return nil
		})
	}
}

var (
	_ mq.Conn         = (*Conn)(nil)
	_ mq.Sizer        = (*Conn)(nil)
	_ mq.Subscription = (*subscription)(nil)
	_ mq.Delivery     = (*delivery)(nil)
)
