package rabbit

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"sync"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/mqkit/mq"
	"github.com/mqkit/mq/internal/backoff"
)

// The relay of a topic moves the messages of its due queue into the topic.
// A Conn runs one per topic it subscribes to, started by the first
// subscription of the topic and stopped by the last one's Close (or by
// Conn.Close, which waits for it). The due queue has a single active
// consumer: of all the relays of all the connections subscribed to the
// topic, one moves at a time, in queue order, and another takes over
// when its channel closes.
//
// The relay consumes with a prefetch of Config.ConfirmWindow and
// publishes each delivery at once on a publishing channel in confirm
// mode, keeping up to that many unconfirmed; as confirms come in, it
// acknowledges the deliveries whose copies were confirmed, many at a time
// (basic.ack with multiple). A relay cut off between a confirm and its
// acknowledgement leaves the delivery to be moved again by the next relay:
// the topic then gets the message twice, with the same ID.

// relay is the mover of one topic's due messages on one Conn.
type relay struct {
	c      *Conn
	topic  string
	refs   int // holders; guarded by c.delays.mu
	ctx    context.Context
	cancel context.CancelFunc
	done   chan struct{} // closed when run returns
}

// holdRelay starts the relay of topic on c, or counts one more holder of
// the running one, and returns the function that lets it go: the last
// holder's release stops the relay and waits for it.
func (c *Conn) holdRelay(topic string) (release func()) {
	d := &c.delays
	d.mu.Lock()
	r := d.relays[topic]
	if r == nil {
		r = &relay{c: c, topic: topic, done: make(chan struct{})}
		r.ctx, r.cancel = context.WithCancel(c.ctx)
		if d.relays == nil {
			d.relays = map[string]*relay{}
		}
		d.relays[topic] = r
		go r.run()
	}
	r.refs++
	d.mu.Unlock()
	var once sync.Once
	return func() {
		once.Do(func() {
			d.mu.Lock()
			r.refs--
			last := r.refs == 0
			if last && d.relays[topic] == r {
				delete(d.relays, topic)
			}
			d.mu.Unlock()
			if last {
				r.cancel()
				<-r.done
			}
		})
	}
}

// stopRelays stops every relay of c and waits for them (Close).
func (c *Conn) stopRelays() {
	d := &c.delays
	d.mu.Lock()
	rs := d.relays
	d.relays = nil
	d.mu.Unlock()
	for _, r := range rs {
		r.cancel()
	}
	for _, r := range rs {
		<-r.done
	}
}

// run keeps a relay session going, reconnecting with backoff, until the
// relay is stopped.
func (r *relay) run() {
	defer close(r.done)
	log := r.c.cfg.Logger.With("topic", r.topic, "queue", delayDueName(r.topic))
	failures := 0
	for {
		moved, err := r.session()
		if r.ctx.Err() != nil {
			return
		}
		if moved > 0 {
			failures = 0
		}
		if r.c.cfg.DisableDeclare && errors.Is(err, ErrNotFound) {
			// declare=false and the topic has no delay queues (yet): look
			// again now and then, quietly.
			r.c.logOnce("no due "+r.topic, "rabbit: the topic has no queue of due delayed messages (declare=false); its delayed messages are moved once it exists",
				"topic", r.topic, "queue", delayDueName(r.topic))
			if !backoff.Sleep(r.ctx, r.c.cfg.MaxReconnectBackoff, nil) {
				return
			}
			continue
		}
		failures++
		if failures == 1 || failures%10 == 0 {
			log.Warn("rabbit: relay of delayed messages interrupted; reconnecting", "attempts", failures, "error", err)
		}
		if !backoff.Sleep(r.ctx, r.c.backoff(failures), nil) {
			return
		}
	}
}

// session consumes the due queue on a channel of the consuming connection
// and moves what it gets until the channel or the publishing channel
// closes, or the relay stops. It returns how many messages it moved.
func (r *relay) session() (int, error) {
	c := r.c
	conn, err := c.sub.get(r.ctx)
	if err != nil {
		return 0, err
	}
	window := min(c.cfg.ConfirmWindow, 65535)
	m := &relayMover{r: r, window: window, returned: map[string]int{}}
	err = c.call(r.ctx, func(commit func(func()) bool) error {
		if err := c.declareDue(conn, r.topic); err != nil {
			return err
		}
		ch, err := conn.Channel()
		if err != nil {
			return fmt.Errorf("rabbit: open channel: %w", err)
		}
		closes := ch.NotifyClose(make(chan *amqp.Error, 1))
		if err := ch.Qos(window, 0, false); err != nil {
			_ = ch.Close()
			return fmt.Errorf("rabbit: set prefetch %d: %w", window, err)
		}
		q := delayDueName(r.topic)
		tag := fmt.Sprintf("mqkit-delay-%d", c.tags.Add(1))
		deliveries, err := ch.Consume(q, tag, false, false, false, false, nil)
		if err != nil {
			_ = ch.Close()
			return describe(fmt.Errorf("rabbit: consume queue %q: %w", q, err), fmt.Sprintf("queue %q", q))
		}
		if !commit(func() { m.ch, m.closes, m.deliveries = ch, closes, deliveries }) {
			_ = ch.Close()
		}
		return nil
	})
	if err != nil {
		return 0, err
	}
	if m.ch == nil {
		return 0, errAbandoned
	}
	// Closing the channel gives back what was not acknowledged.
	defer c.closeChannel(m.ch)
	m.pc, err = c.getPubChan(r.ctx)
	if err != nil {
		return 0, err
	}
	defer func() {
		if len(m.pending) == 0 && !m.pc.ch.IsClosed() && c.ctx.Err() == nil {
			c.putPubChan(m.pc)
		} else {
			c.closeChannel(m.pc.ch)
		}
	}()
	if err := c.declareForPublish(r.ctx, m.pc, r.topic); err != nil {
		return 0, err
	}
	err = m.loop()
	// Whatever ended it, the copies confirmed still get their
	// acknowledgement, if the channels allow: else they would be moved
	// again.
	m.drain()
	return m.moved, err
}

// relayMover is one relay session: the consuming channel, the publishing
// channel, and the copies awaiting their confirm, in delivery order.
type relayMover struct {
	r          *relay
	window     int
	ch         *amqp.Channel
	closes     chan *amqp.Error
	deliveries <-chan amqp.Delivery
	pc         *pubChan
	pending    []relayed
	returned   map[string]int // message IDs the broker returned, not yet settled
	moved      int
	nacked     bool
}

// relayed is a due delivery whose copy awaits its confirm.
type relayed struct {
	tag  uint64
	dc   *amqp.DeferredConfirmation
	id   string
	back bool // sent back into the levels (it came early), not moved
}

// loop moves deliveries until something closes or the relay stops.
func (m *relayMover) loop() error {
	for {
		in := m.deliveries
		if len(m.pending) >= m.window {
			in = nil
		}
		var head <-chan struct{}
		if len(m.pending) > 0 {
			head = m.pending[0].dc.Done()
		}
		select {
		case d, ok := <-in:
			if !ok {
				return fmt.Errorf("rabbit: consumer of %q closed", delayDueName(m.r.topic))
			}
			if m.r.ctx.Err() != nil {
				return nil // stopping: d goes back to the due queue
			}
			if err := m.forward(&d); err != nil {
				return err
			}
		case <-head:
			if err := m.settle(); err != nil {
				return err
			}
			if m.nacked {
				// The broker refused copies: give it a moment before
				// they come round again.
				m.nacked = false
				if !backoff.Sleep(m.r.ctx, 100*time.Millisecond, nil) {
					return nil
				}
			}
		case ret, ok := <-m.pc.returns:
			if !ok {
				return fmt.Errorf("rabbit: publish delayed messages to %q: %w", m.r.topic, m.pc.closeReason())
			}
			m.returned[ret.MessageId]++
		case e := <-m.closes:
			if e == nil {
				return amqp.ErrClosed
			}
			return e
		case <-m.r.ctx.Done():
			return nil
		}
	}
}

// forward publishes a copy of d: to the topic if it is due, else back
// into the levels for what is left.
func (m *relayMover) forward(d *amqp.Delivery) error {
	r, c := m.r, m.r.c
	p := relayPublishing(d)
	now := time.Now()
	due, ok := parseDeliverAt(headerString(d.Headers[mq.HeaderDeliverAt]))
	var exchange, key string
	back := false
	if ok && due.After(now) {
		// Early (a delay beyond what the levels add up to, or a broker
		// clock a step ahead): wait again.
		keys := []string{""}
		top, err := c.routeDelays(r.ctx, m.pc.conn, r.topic, []time.Time{due}, []int{0}, keys)
		if err != nil {
			return err
		}
		exchange, key, back = delayExchangeName(r.topic, top), keys[0], true
	} else {
		if !ok {
			c.logOnce("deliver-at "+r.topic, "rabbit: a message in the due queue has no valid "+mq.HeaderDeliverAt+" header; moved into the topic now",
				"queue", delayDueName(r.topic), "id", d.MessageId)
		}
		// As Send writes it: the topic's exchange, the routing key of
		// the key (or the ID), the time it enters the topic.
		p.Timestamp = now
		k, _ := deliveryKey(d)
		exchange, key = r.topic, routingKey(&mq.Message{ID: d.MessageId, Key: k})
	}
	if err := c.pub.waitUnblocked(r.ctx); err != nil {
		return err
	}
	dc, err := m.pc.ch.PublishWithDeferredConfirmWithContext(r.ctx, exchange, key, true, false, p)
	if err != nil {
		if reason := m.pc.closeReason(); reason != nil {
			err = reason
		}
		return fmt.Errorf("rabbit: move a delayed message to %q: %w", exchange, err)
	}
	m.pending = append(m.pending, relayed{tag: d.DeliveryTag, dc: dc, id: d.MessageId, back: back})
	return nil
}

// settle acknowledges, with one basic.ack for the lot, the deliveries at
// the head of pending whose copies the broker confirmed.
func (m *relayMover) settle() error {
	r, c := m.r, m.r.c
	// A return comes before the confirm of its message.
	for drained := false; !drained; {
		select {
		case ret, ok := <-m.pc.returns:
			if !ok {
				drained = true
				break
			}
			m.returned[ret.MessageId]++
		default:
			drained = true
		}
	}
	var ackTag uint64
	flush := func() error {
		if ackTag == 0 {
			return nil
		}
		err := m.ch.Ack(ackTag, true)
		ackTag = 0
		if err != nil {
			return fmt.Errorf("rabbit: acknowledge delayed messages of %q: %w", delayDueName(r.topic), err)
		}
		return nil
	}
	n := 0
scan:
	for n < len(m.pending) {
		f := m.pending[n]
		select {
		case <-f.dc.Done():
		default:
			break scan
		}
		n++
		returned := m.returned[f.id] > 0
		if returned {
			if m.returned[f.id]--; m.returned[f.id] == 0 {
				delete(m.returned, f.id)
			}
		}
		switch {
		case !f.dc.Acked() && m.pc.closeReason() != nil:
			// The publishing channel closed: this one and the rest go
			// back to the due queue with the consuming channel.
			m.pending = m.pending[n-1:]
			if err := flush(); err != nil {
				return err
			}
			return fmt.Errorf("rabbit: move delayed messages of %q: %w", r.topic, m.pc.closeReason())
		case !f.dc.Acked() || (returned && f.back):
			// Refused, or the levels are gone: back to the due queue.
			if returned {
				c.delays.forget(r.topic)
			}
			if err := flush(); err != nil {
				return err
			}
			if err := m.ch.Nack(f.tag, false, true); err != nil {
				return fmt.Errorf("rabbit: return a delayed message to %q: %w", delayDueName(r.topic), err)
			}
			m.nacked = true
		case returned:
			// No queue is bound to the topic for it: dropped, as a
			// message Send could not route would have failed.
			c.logOnce("unroutable delayed "+r.topic, "rabbit: a due message reached no queue of the topic (no group bound and unrouted=error, or bindings that do not match it); dropped",
				"topic", r.topic, "id", f.id)
			ackTag = f.tag
		default:
			if f.back {
				c.delays.back.Add(1)
			} else {
				c.delays.moved.Add(1)
				m.moved++
			}
			ackTag = f.tag
		}
	}
	m.pending = m.pending[n:]
	return flush()
}

// drain waits a little for the confirms of what was sent and
// acknowledges those deliveries, when a session ends; the rest go back to
// the due queue when the channel closes.
func (m *relayMover) drain() {
	if len(m.pending) == 0 {
		return
	}
	deadline := time.NewTimer(5 * time.Second)
	defer deadline.Stop()
	for len(m.pending) > 0 {
		select {
		case <-m.pending[0].dc.Done():
			if m.settle() != nil {
				return
			}
		case <-deadline.C:
			return
		case <-m.r.c.ctx.Done():
			return
		case <-m.closes:
			return
		}
	}
}

// deathHeaders are the headers the broker adds to a dead-lettered
// message: the relay's copy drops them (they would also make the broker
// drop the copy as a dead-letter cycle when it goes back into the
// levels).
var deathHeaders = []string{
	"x-death", "x-first-death-exchange", "x-first-death-queue", "x-first-death-reason",
	"x-last-death-exchange", "x-last-death-queue", "x-last-death-reason",
	headerDeliveryCount, headerAcquiredCount,
}

// relayPublishing is the copy of a due delivery: the message as Schedule
// (toPublishing, as Send) wrote it, without what dead-lettering added.
func relayPublishing(d *amqp.Delivery) amqp.Publishing {
	h := maps.Clone(d.Headers)
	for _, k := range deathHeaders {
		delete(h, k)
	}
	return amqp.Publishing{
		Headers:         h,
		ContentType:     d.ContentType,
		ContentEncoding: d.ContentEncoding,
		DeliveryMode:    d.DeliveryMode,
		Priority:        d.Priority,
		CorrelationId:   d.CorrelationId,
		ReplyTo:         d.ReplyTo,
		MessageId:       d.MessageId,
		Timestamp:       d.Timestamp,
		Type:            d.Type,
		AppId:           d.AppId,
		Body:            d.Body,
	}
}
