package rabbit

import (
	"context"
	"errors"
	"fmt"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/mqkit/mq"
)

// Messages produced while a topic has no consumer group go, through the
// exchange's alternate exchange, to the queue "<topic>.unrouted". The
// group that subscribes next gets them: before its queues are bound to
// the topic, Subscribe moves them there (handOver), so they come before
// everything produced after the group exists, as on mem://.

// handOverTarget is where handOver moves the messages: the group's queue,
// through the default exchange, or a sharded group's consistent-hash
// exchange, which puts each on the shard of its routing key.
type handOverTarget struct {
	group    string
	queue    string // unsharded
	exchange string // sharded
}

// errHandOverBusy means the unrouted queue has another consumer: most
// likely another member moving its messages.
var errHandOverBusy = errors.New("rabbit: the unrouted queue has another consumer")

// handOverPatience is how long handOver waits for another consumer of
// the unrouted queue (another member handing its messages over) that
// makes no progress.
const handOverPatience = 10 * time.Second

// handOver moves the messages of topic's unrouted queue to t. Only one
// connection moves them at a time (it consumes the queue exclusively);
// others wait while it makes progress, so that no group is bound to the
// topic before the move ends. Each message is acknowledged on the
// unrouted queue only after the broker confirmed its copy, so a move
// that dies midway loses nothing: what it had not acknowledged goes back
// to the unrouted queue for the next Subscribe (a message confirmed and
// not yet acknowledged then arrives twice).
//
// The acknowledgements go as a few basic.ack frames with the multiple
// flag: one per half window of messages, one after a second without
// deliveries, one before the basic.cancel that ends the move and one for
// the deliveries that come after it. On a quorum queue the broker's
// channel (RabbitMQ 3.13) holds back a queue's settlements while 32 of
// its commands await the queue's log, and drops those held back when the
// channel closes: a move that sent an ack per message while the queue
// was slow (a slow disk, a memory alarm) gave the tail of its messages,
// already moved, to the next group too. Settlements sent before the
// channel closes are applied before the broker takes back what its
// consumer held.
func (c *Conn) handOver(ctx context.Context, conn *amqp.Connection, topic string, t handOverTarget) error {
	if c.cfg.DisableUnroutedQueue || c.cfg.DisableDeclare {
		return nil
	}
	uq := unroutedName(topic)
	last, since := -1, time.Now()
	for {
		left, err := c.moveUnrouted(ctx, conn, uq, t)
		if !errors.Is(err, errHandOverBusy) {
			return err
		}
		if left != last {
			last, since = left, time.Now()
		}
		if time.Since(since) > handOverPatience {
			c.logOnce("busy "+uq, "rabbit: another consumer holds the unrouted queue and does not drain it; the group subscribes without its messages",
				"queue", uq, "messages", left, "group", t.group)
			return nil
		}
		if err := c.sleep(ctx, 100*time.Millisecond); err != nil {
			return err
		}
	}
}

// moveUnrouted moves to t at least the messages ready in queue uq when it
// starts. It returns errHandOverBusy, and the messages ready, when uq
// has another consumer.
func (c *Conn) moveUnrouted(ctx context.Context, conn *amqp.Connection, uq string, t handOverTarget) (int, error) {
	ch, err := conn.Channel()
	if err != nil {
		return 0, fmt.Errorf("rabbit: open channel: %w", err)
	}
	// Closing the channel returns what was not acknowledged, in order.
	defer func() { _ = ch.Close() }()
	q, err := ch.QueueDeclarePassive(uq, true, false, false, false, nil)
	if err != nil {
		var ae *amqp.Error
		if errors.As(err, &ae) && ae.Code == amqp.NotFound {
			return 0, nil // a topic declared with unrouted=error
		}
		return 0, fmt.Errorf("rabbit: inspect queue %q: %w", uq, err)
	}
	if q.Messages == 0 {
		return 0, nil
	}
	if c.cfg.HoldUnrouted {
		c.logOnce("held "+uq, "rabbit: messages produced while the topic had no consumer group are held in the unrouted queue (unrouted=hold): no group gets them",
			"queue", uq, "messages", q.Messages, "group", t.group)
		return 0, nil
	}
	window := min(c.cfg.ConfirmWindow, 65535)
	if err := ch.Qos(window, 0, false); err != nil {
		return 0, fmt.Errorf("rabbit: set prefetch %d: %w", window, err)
	}
	tag := fmt.Sprintf("mqkit-handover-%d", c.tags.Add(1))
	deliveries, err := ch.Consume(uq, tag, false, true, false, false, nil)
	if err != nil {
		var ae *amqp.Error
		if errors.As(err, &ae) && ae.Code == amqp.AccessRefused {
			return q.Messages, errHandOverBusy
		}
		return 0, fmt.Errorf("rabbit: consume queue %q: %w", uq, err)
	}
	log := c.cfg.Logger.With("queue", uq, "group", t.group)
	log.Info("rabbit: handing the messages produced before any consumer group to the new group", "messages", q.Messages)
	pc, err := c.getPubChan(ctx)
	if err != nil {
		return 0, err
	}
	clean := false
	defer func() {
		if clean {
			c.putPubChan(pc)
		} else {
			c.closeChannel(pc.ch)
		}
	}()
	m := &mover{c: c, ctx: ctx, ch: ch, pc: pc, uq: uq, t: t}
	cancelled := false
	cancel := func() error {
		if cancelled {
			return nil
		}
		// Settled first: see handOver.
		if err := m.settleAll(); err != nil {
			return err
		}
		cancelled = true
		// Deliveries sent before cancel-ok still arrive, then
		// deliveries closes.
		if err := ch.Cancel(tag, false); err != nil {
			return fmt.Errorf("rabbit: cancel consumer of %q: %w", uq, err)
		}
		return nil
	}
	for {
		if !cancelled && m.moved+len(m.pending) >= q.Messages {
			// The messages there at the start: enough, or a producer
			// that outpaces the move would keep the group from ever
			// being bound. The rest goes in the pass after the binding.
			if err := cancel(); err != nil {
				return 0, err
			}
		}
		var d amqp.Delivery
		var ok bool
		select {
		case d, ok = <-deliveries:
		default:
			// Nothing buffered: stop if nothing is ready, the rest
			// being on its way to this consumer. Not settled here,
			// where deliveries can trickle in one by one: a settle
			// is a command for the queue's log (see handOver).
			if !cancelled {
				now, err := ch.QueueDeclarePassive(uq, true, false, false, false, nil)
				if err != nil {
					return 0, fmt.Errorf("rabbit: inspect queue %q: %w", uq, err)
				}
				if now.Messages == 0 {
					if err := cancel(); err != nil {
						return 0, err
					}
				}
			}
			select {
			case d, ok = <-deliveries:
			case <-time.After(time.Second):
				// Idle: settle what was sent.
				if err := m.settleAll(); err != nil {
					return 0, err
				}
				continue
			case <-ctx.Done():
				return 0, ctx.Err()
			case <-c.ctx.Done():
				return 0, mq.ErrClosed
			}
		}
		if !ok {
			if !cancelled || ch.IsClosed() {
				return 0, fmt.Errorf("rabbit: hand over the messages of %q: %w", uq, amqp.ErrClosed)
			}
			break
		}
		if err := m.send(&d, window); err != nil {
			return 0, err
		}
	}
	if err := m.settleAll(); err != nil {
		return 0, err
	}
	clean = true
	log.Info("rabbit: handed over the messages produced before any consumer group", "messages", m.moved)
	return 0, nil
}

// mover copies deliveries of the unrouted queue to a group and
// acknowledges them, a run at a time with one multiple ack, once the
// broker confirmed their copies.
type mover struct {
	c       *Conn
	ctx     context.Context
	ch      *amqp.Channel // consuming the unrouted queue
	pc      *pubChan
	uq      string
	t       handOverTarget
	pending []held // in delivery order: every delivery not acknowledged
	moved   int
}

// held is a delivery whose copy awaits its confirm.
type held struct {
	tag uint64
	dc  *amqp.DeferredConfirmation
}

// send publishes a copy of d to the target, keeping fewer than window
// copies unconfirmed: when window are, it settles the older half.
func (m *mover) send(d *amqp.Delivery, window int) error {
	exchange, key := "", m.t.queue
	if m.t.exchange != "" {
		exchange, key = m.t.exchange, d.RoutingKey
	}
	if err := m.c.pub.waitUnblocked(m.ctx); err != nil {
		return err
	}
	dc, err := m.pc.ch.PublishWithDeferredConfirmWithContext(m.ctx, exchange, key, true, false, handOverPublishing(d))
	if err != nil {
		return fmt.Errorf("rabbit: hand over a message of %q to group %q: %w", m.uq, m.t.group, err)
	}
	m.pending = append(m.pending, held{tag: d.DeliveryTag, dc: dc})
	if len(m.pending) >= window {
		return m.settle(max(1, window/2))
	}
	return nil
}

// settleAll settles every pending delivery.
func (m *mover) settleAll() error { return m.settle(len(m.pending)) }

// settle waits for the confirms of the copies of the oldest n pending
// deliveries and acknowledges those deliveries with one multiple ack:
// it covers every delivery of the channel up to the newest of them, and
// pending holds every delivery not acknowledged, in order.
func (m *mover) settle(n int) error {
	if n == 0 {
		return nil
	}
	for _, h := range m.pending[:n] {
		select {
		case <-h.dc.Done():
		case <-m.ctx.Done():
			return m.ctx.Err()
		case <-m.c.ctx.Done():
			return mq.ErrClosed
		}
		// A return comes before the confirm of its message.
		select {
		case r, ok := <-m.pc.returns:
			if ok { // closed when the channel closes
				return fmt.Errorf("%w: handing a message of %q over to group %q: %d %s", ErrUnroutable, m.uq, m.t.group, r.ReplyCode, r.ReplyText)
			}
		default:
		}
		if !h.dc.Acked() {
			if reason := m.pc.closeReason(); reason != nil {
				return fmt.Errorf("rabbit: hand over the messages of %q: %w", m.uq, reason)
			}
			return fmt.Errorf("%w: handing a message of %q over to group %q", ErrNacked, m.uq, m.t.group)
		}
	}
	if f := m.c.handOverBeforeAck; f != nil {
		f(m.uq)
	}
	if err := m.ch.Ack(m.pending[n-1].tag, true); err != nil {
		return fmt.Errorf("rabbit: acknowledge messages of %q: %w", m.uq, err)
	}
	m.moved += n
	m.pending = m.pending[:copy(m.pending, m.pending[n:])]
	return nil
}

// handOverPublishing is the copy of d that handOver publishes: the same
// message, with its key in x-mq-key (its routing key becomes the queue's
// name), without the broker's delivery counts, and with user-id as a
// header, since the broker refuses a user-id that is not the publisher's.
func handOverPublishing(d *amqp.Delivery) amqp.Publishing {
	h := make(amqp.Table, len(d.Headers)+2)
	for k, v := range d.Headers {
		if k != headerDeliveryCount && k != headerAcquiredCount {
			h[k] = v
		}
	}
	if _, ok := h[headerKey]; !ok {
		h[headerKey] = routedKey(d)
	}
	if _, ok := h[HeaderUserID]; !ok && d.UserId != "" {
		h[HeaderUserID] = d.UserId
	}
	return amqp.Publishing{
		Headers:         h,
		ContentType:     d.ContentType,
		ContentEncoding: d.ContentEncoding,
		DeliveryMode:    d.DeliveryMode,
		Priority:        d.Priority,
		CorrelationId:   d.CorrelationId,
		ReplyTo:         d.ReplyTo,
		Expiration:      d.Expiration,
		MessageId:       d.MessageId,
		Timestamp:       d.Timestamp,
		Type:            d.Type,
		AppId:           d.AppId,
		Body:            d.Body,
	}
}
