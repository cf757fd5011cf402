package rabbit

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/mqkit/mq"
)

// AMQP header names this package reserves on the wire.
const (
	// headerKey carries mq.Message.Key exactly (the routing key is limited
	// to 255 bytes).
	headerKey = "x-mq-key"
	// headerDeliveryCount is set by quorum queues on redelivery.
	headerDeliveryCount = "x-delivery-count"
	// headerAcquiredCount is set by quorum queues of RabbitMQ 4.3 and
	// later on redelivery, counting every earlier delivery.
	headerAcquiredCount = "x-acquired-count"
	// reservedPrefix starts header names users may not send.
	reservedPrefix = "x-mq-"
)

// maxIdleChannels bounds the publishing channels kept for reuse.
const maxIdleChannels = 16

// pubChan is a publishing channel in confirm mode, used by one Send at a
// time.
type pubChan struct {
	ch      *amqp.Channel
	conn    *amqp.Connection
	returns chan amqp.Return
	closes  chan *amqp.Error
	reason  error // why ch closed, once known
}

// getPubChan returns an idle publishing channel or opens one.
func (c *Conn) getPubChan(ctx context.Context) (*pubChan, error) {
	c.poolMu.Lock()
	for len(c.pool) > 0 {
		pc := c.pool[len(c.pool)-1]
		c.pool = c.pool[:len(c.pool)-1]
		if !pc.ch.IsClosed() {
			c.poolMu.Unlock()
			return pc, nil
		}
	}
	c.poolMu.Unlock()
	conn, err := c.pub.get(ctx)
	if err != nil {
		return nil, err
	}
	var pc *pubChan
	err = c.call(ctx, func(commit func(keep func()) bool) error {
		ch, err := conn.Channel()
		if err != nil {
			return fmt.Errorf("rabbit: open channel: %w", err)
		}
		p := &pubChan{
			ch:   ch,
			conn: conn,
			// A return arrives before the confirm of its message, and Send
			// keeps at most ConfirmWindow messages unconfirmed, reading
			// returns while it waits: this buffer never fills, so the
			// connection's reader never waits on it.
			returns: ch.NotifyReturn(make(chan amqp.Return, c.cfg.ConfirmWindow+1)),
			closes:  ch.NotifyClose(make(chan *amqp.Error, 1)),
		}
		if err := ch.Confirm(false); err != nil {
			_ = ch.Close()
			return fmt.Errorf("rabbit: enable publisher confirms: %w", err)
		}
		if !commit(func() { pc = p }) {
			_ = ch.Close()
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return pc, nil
}

// putPubChan keeps a channel with nothing outstanding for reuse.
func (c *Conn) putPubChan(pc *pubChan) {
	c.poolMu.Lock()
	if len(c.pool) < maxIdleChannels && c.ctx.Err() == nil && !pc.ch.IsClosed() {
		c.pool = append(c.pool, pc)
		pc = nil
	}
	c.poolMu.Unlock()
	if pc != nil {
		c.closeChannel(pc.ch)
	}
}

// closeReason returns why pc's channel closed, or nil if it is open.
func (pc *pubChan) closeReason() error {
	if pc.reason != nil || !pc.ch.IsClosed() {
		return pc.reason
	}
	// The channel sends its close error before it fails its pending
	// confirms, so the error is here by now (none if closed by us).
	pc.reason = amqp.ErrClosed
	select {
	case e, ok := <-pc.closes:
		if ok && e != nil {
			pc.reason = e
		}
	default:
	}
	return pc.reason
}

// Send implements mq.Conn. It publishes msgs to the exchange named topic as
// persistent, mandatory messages on a channel in confirm mode, keeping up
// to Config.ConfirmWindow of them in flight, and returns after the broker
// confirmed every one. A message the broker returns (unroutable) or nacks
// fails Send with ErrUnroutable or ErrNacked.
//
// If the connection drops, Send reconnects and publishes the unconfirmed
// messages again (some may then arrive twice) until they are confirmed,
// ctx ends, or the broker has been unreachable for Config.ReconnectTimeout:
// then the error wraps mq.ErrUnavailable (see Config.ReconnectTimeout). It
// never returns nil for a message the broker did not confirm.
func (c *Conn) Send(ctx context.Context, topic string, msgs []*mq.Message) error {
	if c.isClosed() {
		return mq.ErrClosed
	}
	if err := checkName("topic", topic); err != nil {
		return err
	}
	pubs := make([]amqp.Publishing, len(msgs))
	keys := make([]string, len(msgs))
	now := time.Now()
	for i, m := range msgs {
		if n := m.Size(); n > c.cfg.MaxMessageSize {
			return fmt.Errorf("%w: message %s is %d bytes, max_message_size is %d", mq.ErrMessageTooLarge, m.ID, n, c.cfg.MaxMessageSize)
		}
		p, err := toPublishing(m, now)
		if err != nil {
			return err
		}
		pubs[i] = p
		keys[i] = routingKey(m)
	}
	return c.publishAll(ctx, topic, "messages", pubs, keys, msgs, func(ctx context.Context, pc *pubChan, _ []int) (string, error) {
		return topic, c.declareForPublish(ctx, pc, topic)
	}, nil)
}

// publishAll publishes pubs (routing keys keys; msgs are their messages)
// until the broker has confirmed every one, publishing the unconfirmed
// ones again on a new channel after a failure, until the outage budget
// (Config.ReconnectTimeout) is used up. prepare runs first on each
// attempt's channel, bounded by the connect deadline, and returns the
// exchange to publish to; failed, when set, sees each attempt's error.
// noun names the messages in errors and logs. Send and Schedule use it.
func (c *Conn) publishAll(ctx context.Context, topic, noun string, pubs []amqp.Publishing, keys []string, msgs []*mq.Message,
	prepare func(ctx context.Context, pc *pubChan, pending []int) (exchange string, err error), failed func(error)) error {
	pending := make([]int, len(msgs))
	for i := range pending {
		pending[i] = i
	}
	o := c.newOutage(c.pub)
	var lastErr error
	for try := 0; ; try++ {
		if try > 0 {
			// The last attempt comes when the outage's time is up.
			if err := c.sleep(ctx, min(c.backoff(try), max(o.left(), 0))); err != nil {
				if errors.Is(err, mq.ErrClosed) {
					return err
				}
				return fmt.Errorf("rabbit: %d of %d %s unconfirmed: %w (last failure: %w)", len(pending), len(msgs), noun, err, unavailable(lastErr))
			}
		}
		before := len(pending)
		cctx, cancel := o.connectCtx(ctx)
		pc, err := c.getPubChan(cctx)
		exchange := ""
		if err == nil {
			exchange, err = prepare(cctx, pc, pending)
		}
		err = o.connectErr(ctx, cctx, err)
		cancel()
		if err == nil {
			var clean bool
			pending, clean, err = c.publish(ctx, pc, exchange, pubs, keys, msgs, pending)
			if clean {
				c.putPubChan(pc)
				pc = nil
			}
			if err != nil && failed != nil {
				failed(err)
			}
		}
		if pc != nil {
			c.closeChannel(pc.ch)
		}
		if err == nil {
			return nil
		}
		if c.ctx.Err() != nil {
			return mq.ErrClosed
		}
		if ctx.Err() != nil {
			if lastErr != nil {
				return fmt.Errorf("rabbit: %d of %d %s unconfirmed: %w (last failure: %w)", len(pending), len(msgs), noun, err, unavailable(lastErr))
			}
			return fmt.Errorf("rabbit: %d of %d %s unconfirmed: %w", len(pending), len(msgs), noun, err)
		}
		if !retriable(err) {
			return err
		}
		if len(pending) < before {
			o.progressed()
		}
		o.failed()
		lastErr = err
		if o.left() <= 0 {
			return fmt.Errorf("rabbit: %d of %d %s unconfirmed, the broker unreachable for %v: %w",
				len(pending), len(msgs), noun, time.Since(o.start()).Round(time.Millisecond), unavailable(err))
		}
		if try == 0 || try%10 == 0 {
			c.cfg.Logger.Warn("rabbit: publish interrupted; retrying unconfirmed messages", "topic", topic, "what", noun, "unconfirmed", len(pending), "error", err)
		}
	}
}

// declareForPublish declares the topic's exchange once per connection.
func (c *Conn) declareForPublish(ctx context.Context, pc *pubChan, topic string) error {
	if c.cfg.DisableDeclare || c.pub.isDeclared(pc.conn, topic) {
		return nil
	}
	if err := c.call(ctx, func(func(func()) bool) error { return c.declareExchange(pc.conn, topic) }); err != nil {
		return err
	}
	c.pub.setDeclared(pc.conn, topic)
	return nil
}

// publish sends msgs[pending...] on pc and waits for their confirms. It
// returns the indexes still unconfirmed (in order) and whether pc may be
// reused (nothing outstanding, channel open).
func (c *Conn) publish(ctx context.Context, pc *pubChan, topic string, pubs []amqp.Publishing, keys []string, msgs []*mq.Message, pending []int) ([]int, bool, error) {
	type inflight struct {
		i  int
		dc *amqp.DeferredConfirmation
	}
	window := c.cfg.ConfirmWindow
	queue := make([]inflight, 0, min(window, len(pending)))
	head := 0
	var unconfirmed []int
	returned := map[string]amqp.Return{}
	var failed []error
	drain := func() {
		for {
			select {
			case r, ok := <-pc.returns:
				if !ok {
					return
				}
				returned[r.MessageId] = r
			default:
				return
			}
		}
	}
	// waitOne waits for the oldest confirm; false if publishing must stop.
	var stopErr error
	waitOne := func() bool {
		f := queue[head]
		for {
			select {
			case <-f.dc.Done():
			case r, ok := <-pc.returns:
				if ok {
					returned[r.MessageId] = r
				}
				continue
			case <-ctx.Done():
				stopErr = ctx.Err()
				return false
			case <-c.ctx.Done():
				stopErr = mq.ErrClosed
				return false
			}
			break
		}
		head++
		drain() // a return precedes the confirm of its message
		m := msgs[f.i]
		switch {
		case f.dc.Acked():
			if r, ok := returned[m.ID]; ok {
				failed = append(failed, fmt.Errorf("%w: message %s to exchange %q, routing key %q: %d %s",
					ErrUnroutable, m.ID, topic, r.RoutingKey, r.ReplyCode, r.ReplyText))
			}
		case pc.closeReason() != nil:
			unconfirmed = append(unconfirmed, f.i)
			if stopErr == nil {
				stopErr = pc.closeReason()
			}
		default:
			failed = append(failed, fmt.Errorf("%w: message %s to exchange %q", ErrNacked, m.ID, topic))
		}
		return true
	}

	sent := 0
	for _, i := range pending {
		if stopErr != nil {
			break
		}
		for len(queue)-head >= window && stopErr == nil {
			if !waitOne() {
				break
			}
		}
		if stopErr != nil {
			break
		}
		if err := c.pub.waitUnblocked(ctx); err != nil {
			stopErr = err
			break
		}
		dc, err := pc.ch.PublishWithDeferredConfirmWithContext(ctx, topic, keys[i], true, false, pubs[i])
		if err != nil {
			stopErr = err
			if reason := pc.closeReason(); reason != nil {
				stopErr = reason
			}
			break
		}
		if head >= window {
			n := copy(queue, queue[head:])
			queue, head = queue[:n], 0
		}
		queue = append(queue, inflight{i: i, dc: dc})
		sent++
	}
	for head < len(queue) {
		if !waitOne() {
			break
		}
	}
	// Everything not confirmed, in produce order: confirms lost to a
	// closed channel, publishes waited for no longer, publishes not sent.
	for _, f := range queue[head:] {
		unconfirmed = append(unconfirmed, f.i)
	}
	unconfirmed = append(unconfirmed, pending[sent:]...)
	slices.Sort(unconfirmed)

	clean := head == len(queue) && stopErr == nil && !pc.ch.IsClosed()
	if len(failed) > 0 {
		if len(unconfirmed) > 0 {
			failed = append(failed, fmt.Errorf("rabbit: %d messages unconfirmed: %w", len(unconfirmed), stopErr))
		}
		// Not retried: the broker refused these messages.
		return unconfirmed, clean, errors.Join(failed...)
	}
	if stopErr != nil {
		if errors.Is(stopErr, mq.ErrClosed) || ctx.Err() != nil {
			return unconfirmed, false, stopErr
		}
		return unconfirmed, false, describe(fmt.Errorf("rabbit: publish to exchange %q: %w", topic, stopErr), fmt.Sprintf("exchange %q", topic))
	}
	return nil, clean, nil
}

// toPublishing maps m onto an AMQP message: ID to message-id, Key to the
// x-mq-key header (also when empty, so that consumers know the routing
// key is not the key), the property headers (see HeaderContentType) to
// their properties, the other Headers to the headers table as strings.
func toPublishing(m *mq.Message, now time.Time) (amqp.Publishing, error) {
	if len(m.ID) > 255 {
		return amqp.Publishing{}, fmt.Errorf("%w: message ID is %d bytes; AMQP's message-id holds at most 255", mq.ErrInvalidMessage, len(m.ID))
	}
	p := amqp.Publishing{
		Headers:      make(amqp.Table, len(m.Headers)+1),
		DeliveryMode: amqp.Persistent,
		MessageId:    m.ID,
		Timestamp:    now,
		Body:         m.Body,
	}
	for k, v := range m.Headers {
		switch {
		case len(k) > 255:
			return amqp.Publishing{}, fmt.Errorf("%w: message %s: header name of %d bytes; AMQP allows 255", mq.ErrInvalidMessage, m.ID, len(k))
		case strings.HasPrefix(k, reservedPrefix) || k == headerDeliveryCount || k == headerAcquiredCount:
			return amqp.Publishing{}, fmt.Errorf("%w: message %s: header %q is reserved by the rabbit backend", mq.ErrInvalidMessage, m.ID, k)
		}
		prop, err := setProperty(&p, k, v)
		if err != nil {
			return amqp.Publishing{}, fmt.Errorf("%w: message %s: %w", mq.ErrInvalidMessage, m.ID, err)
		}
		if !prop {
			p.Headers[k] = v
		}
	}
	p.Headers[headerKey] = m.Key
	return p, nil
}

// routingKey is the message's key, or its ID when the key is empty (so a
// consistent-hash exchange spreads keyless messages). A key over AMQP's
// 255 bytes is replaced by its SHA-256.
func routingKey(m *mq.Message) string {
	k := m.Key
	if k == "" {
		k = m.ID
	}
	if len(k) > 255 {
		sum := sha256.Sum256([]byte(k))
		k = "sha256:" + hex.EncodeToString(sum[:])
	}
	return k
}

// checkName rejects names AMQP cannot carry.
func checkName(what, name string) error {
	if len(name) > 255 {
		return fmt.Errorf("%w: %s name is %d bytes; RabbitMQ allows 255", mq.ErrInvalidMessage, what, len(name))
	}
	return nil
}
