package rabbit

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/mqkit/mq"
)

// Subscribe implements mq.Conn. It declares the group's queues (see
// QueueNames) and binds them to the topic's exchange before it returns, so
// the group keeps every message produced afterwards, then consumes them
// with manual acknowledgements and a prefetch of Config.Prefetch (default
// opts.MaxInFlight) per queue.
//
// When the channel or connection drops, the subscription reconnects with
// backoff, declares its topology again and resumes by itself. Deliveries
// received before the drop can no longer be acknowledged (their Ack
// returns an error) and the broker delivers them again.
func (c *Conn) Subscribe(ctx context.Context, topic, group string, opts mq.SubscribeOptions) (mq.Subscription, error) {
	if c.isClosed() {
		return nil, mq.ErrClosed
	}
	if err := checkName("topic", topic); err != nil {
		return nil, err
	}
	if group == unroutedGroup {
		return nil, fmt.Errorf("rabbit: group name %q is reserved: queue %q keeps the messages of a topic without groups", group, unroutedName(topic))
	}
	prefetch := c.cfg.Prefetch
	if prefetch == 0 {
		prefetch = opts.MaxInFlight
	}
	prefetch = min(max(prefetch, 1), 65535)
	n := len(c.QueueNames(topic, group))
	s := &subscription{
		c:        c,
		topic:    topic,
		group:    group,
		prefetch: prefetch,
		out:      make(chan *delivery, prefetch*n),
		errs:     make(chan error, 1),
		stop:     make(chan struct{}),
	}
	s.ctx, s.cancel = context.WithCancel(c.ctx)
	var ss *session
	for try := 1; ; try++ {
		var err error
		ss, err = s.connect(ctx)
		if err == nil {
			break
		}
		lastErr := err
		if !retriable(err) || ctx.Err() != nil || c.ctx.Err() != nil {
			s.cancel()
			if c.ctx.Err() != nil {
				return nil, mq.ErrClosed
			}
			return nil, err
		}
		if err := c.sleep(ctx, c.backoff(try)); err != nil {
			s.cancel()
			if errors.Is(err, mq.ErrClosed) {
				return nil, err
			}
			return nil, fmt.Errorf("rabbit: subscribe: %w (last failure: %w)", err, lastErr)
		}
	}
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		_ = ss.ch.Close()
		s.cancel()
		return nil, mq.ErrClosed
	}
	c.subs[s] = struct{}{}
	c.mu.Unlock()
	s.wg.Add(1)
	go s.run(ss)
	return s, nil
}

type subscription struct {
	c            *Conn
	topic, group string
	prefetch     int

	out  chan *delivery // from the forwarders to Receive
	errs chan error     // lasting reconnection failures, for Receive to report
	stop chan struct{}  // closed by Close

	ctx    context.Context // cancelled by Close or Conn.Close
	cancel context.CancelFunc

	wg        sync.WaitGroup // the supervisor and the forwarders
	closeOnce sync.Once

	mu   sync.Mutex
	cur  *session // the live channel, nil while reconnecting
	want bool     // consume: a Receive ran since the last pause
}

// session is one channel of a subscription, consuming the group's queues
// while the subscription is wanted.
type session struct {
	ch      *amqp.Channel
	closes  chan *amqp.Error
	cancels chan string
	queues  []string
	round   *round // the consumers, nil before the first Receive
	stale   bool   // paused: recycle before consuming again
}

// round is one basic.consume per queue.
type round struct {
	tags []string
}

// connect opens a channel, declares the topology and, if a consumer is
// receiving, starts consuming. It returns when ctx ends even if the broker
// does not answer.
func (s *subscription) connect(ctx context.Context) (*session, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stop := context.AfterFunc(s.ctx, cancel)
	defer stop()
	conn, err := s.c.sub.get(ctx)
	if err != nil {
		return nil, err
	}
	var ss *session
	err = s.c.call(ctx, func(commit func(func()) bool) error {
		ch, err := conn.Channel()
		if err != nil {
			return fmt.Errorf("rabbit: open channel: %w", err)
		}
		next := &session{
			ch:      ch,
			closes:  ch.NotifyClose(make(chan *amqp.Error, 1)),
			cancels: ch.NotifyCancel(make(chan string, s.c.cfg.Shards)),
		}
		next.queues, err = s.c.declareGroup(ch, s.topic, s.group)
		if err == nil {
			if err = ch.Qos(s.prefetch, 0, false); err != nil {
				err = fmt.Errorf("rabbit: set prefetch %d: %w", s.prefetch, err)
			}
		}
		if err == nil {
			s.mu.Lock()
			kept := commit(func() {
				if s.want {
					if err = s.consumeLocked(next); err != nil {
						return
					}
				}
				s.cur = next
				ss = next
			})
			s.mu.Unlock()
			if !kept && err == nil {
				err = errAbandoned // the caller gave up: release the channel
			}
		}
		if err != nil {
			_ = ch.Close()
		}
		return err
	})
	if err != nil {
		return nil, err
	}
	return ss, nil
}

// errAbandoned releases what a call made after its caller gave up; no
// caller sees it.
var errAbandoned = errors.New("rabbit: abandoned")

// consumeLocked starts consuming ss's queues. s.mu is held.
func (s *subscription) consumeLocked(ss *session) error {
	r := &round{}
	ss.round = r
	for _, q := range ss.queues {
		tag := fmt.Sprintf("mqkit-%d", s.c.tags.Add(1))
		d, err := ss.ch.Consume(q, tag, false, false, false, false, nil)
		if err != nil {
			return describe(fmt.Errorf("rabbit: consume queue %q: %w", q, err), fmt.Sprintf("queue %q", q))
		}
		r.tags = append(r.tags, tag)
		s.wg.Add(1)
		go s.forward(ss.ch, d)
	}
	return nil
}

// pause stops handing out deliveries: the portable consumer stopped
// receiving (its Receive context ended) or is shutting down (it nacks).
//
// On a plain queue it cancels the consumers, so the broker gives the
// group's messages to other members while no Consume runs here. On the
// single-active-consumer queues of Shards it keeps them, so no other
// member becomes active while this one still holds messages. Either way
// the deliveries buffered here stay unacknowledged, and the next Receive
// closes the channel and consumes on a new one: the broker then requeues
// them in queue order, after the nacks of the messages handed out, which
// keeps per-key order.
func (s *subscription) pause() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.want {
		return
	}
	s.want = false
	ss := s.cur
	if ss == nil || ss.round == nil {
		return
	}
	ss.stale = true
	if s.c.cfg.Shards > 1 {
		return
	}
	for _, tag := range ss.round.tags {
		// After cancel-ok no more deliveries come.
		_ = ss.ch.Cancel(tag, false)
	}
}

// run supervises the subscription: when the channel drops it reconnects
// with backoff until Close.
func (s *subscription) run(ss *session) {
	defer s.wg.Done()
	log := s.c.cfg.Logger.With("topic", s.topic, "group", s.group)
	for {
		var reason error
		select {
		case <-s.stop:
			_ = ss.ch.Close()
			return
		case e := <-ss.closes:
			reason = errors.New("channel closed")
			if e != nil {
				reason = e
			}
		case tag := <-ss.cancels:
			reason = fmt.Errorf("the broker cancelled consumer %s (queue deleted?)", tag)
			_ = ss.ch.Close()
		}
		s.mu.Lock()
		s.cur = nil
		recycled := ss.stale && s.want
		s.mu.Unlock()
		first := 1
		if recycled {
			first = 0 // closed by resume: consume again at once
		} else {
			log.Warn("rabbit: consumer interrupted; reconnecting", "error", reason)
		}
		for try := first; ; try++ {
			if try > 0 && s.c.sleep(s.ctx, s.c.backoff(try)) != nil {
				return
			}
			next, err := s.connect(s.ctx)
			if err == nil {
				ss = next
				select {
				case <-s.errs: // stale news
				default:
				}
				if try > 0 {
					log.Info("rabbit: consumer resumed", "attempts", try)
				}
				break
			}
			if s.ctx.Err() != nil {
				return
			}
			if try <= 1 || try%10 == 0 {
				log.Warn("rabbit: consumer reconnection failed; retrying", "attempts", try, "error", err)
			}
			if !retriable(err) {
				// A configuration problem (a missing queue, a precondition,
				// access): worth the portable consumer's log too.
				select {
				case s.errs <- fmt.Errorf("rabbit: consumer reconnecting (attempt %d): %w", try, err):
				default:
				}
			}
		}
	}
}

// forward hands one consumer's deliveries to Receive, in order.
func (s *subscription) forward(ch *amqp.Channel, src <-chan amqp.Delivery) {
	defer s.wg.Done()
	for d := range src {
		select {
		case s.out <- &delivery{s: s, ch: ch, tag: d.DeliveryTag, msg: s.toMessage(&d)}:
		case <-s.stop:
			return
		}
	}
}

// Receive implements mq.Subscription. Deliveries of one queue come in the
// queue's order. Deliveries of a channel that has since closed are
// dropped: the broker delivers them again on the new channel. The first
// Receive starts consuming; when ctx ends, consuming pauses until the next
// Receive.
func (s *subscription) Receive(ctx context.Context, max int) ([]mq.Delivery, error) {
	if err := s.resume(); err != nil {
		return nil, err
	}
	var out []mq.Delivery
	take := func(d *delivery) {
		if d.ch.IsClosed() {
			return
		}
		s.c.track(d)
		out = append(out, d)
	}
	for len(out) == 0 {
		select {
		case d := <-s.out:
			take(d)
		case err := <-s.errs:
			return nil, err
		case <-ctx.Done():
			s.pause()
			return nil, ctx.Err()
		case <-s.stop:
			return nil, mq.ErrClosed
		}
	more:
		for len(out) < max {
			select {
			case d := <-s.out:
				take(d)
			default:
				break more
			}
		}
	}
	return out, nil
}

// resume starts consuming if a pause (or Subscribe) left it stopped.
func (s *subscription) resume() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	select {
	case <-s.stop:
		return mq.ErrClosed
	default:
	}
	if s.want {
		return nil
	}
	s.want = true
	ss := s.cur
	switch {
	case ss == nil:
		// The supervisor consumes when it reconnects.
	case ss.stale:
		// Paused with deliveries unsettled here: close the channel, so the
		// broker requeues them in order, and let the supervisor consume
		// on a new one. Deliveries buffered from the old channel are
		// dropped by Receive.
		s.cur = nil
		_ = ss.ch.Close()
	default:
		// The channel is closed by a failure; the supervisor reconnects.
		return s.consumeLocked(ss)
	}
	return nil
}

// Close implements mq.Subscription: it closes the channel, so the broker
// takes back every unacknowledged delivery, and stops the subscription's
// goroutines. Close is idempotent.
func (s *subscription) Close() error {
	s.closeOnce.Do(func() {
		s.mu.Lock() // a resume in progress finishes starting its forwarders
		close(s.stop)
		s.mu.Unlock()
		s.cancel()
		s.wg.Wait()
		s.c.mu.Lock()
		delete(s.c.subs, s)
		for m, d := range s.c.live {
			if d.s == s {
				delete(s.c.live, m)
			}
		}
		s.c.mu.Unlock()
	})
	return nil
}

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
		m.Attempt = 2
	}
	for k, v := range d.Headers {
		switch k {
		case headerKey:
			m.Key = headerString(v)
			continue
		case headerDeliveryCount:
			// Quorum queues count earlier deliveries; a value that is not a
			// sane count (from a foreign publisher) is ignored.
			if n, ok := headerInt(v); ok && n >= 0 && n < 1<<31-1 {
				m.Attempt = int(n) + 1
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

// delivery is one message delivered on one channel.
type delivery struct {
	s      *subscription
	ch     *amqp.Channel
	tag    uint64
	msg    *mq.Message
	reject atomic.Bool // set by DeadLetter: Ack rejects to the DLX
}

func (d *delivery) Message() *mq.Message { return d.msg }

// Ack acknowledges the delivery, or, when DeadLetter marked it, rejects it
// without requeue so the broker dead-letters it. On a channel that closed
// since the delivery it fails: the broker delivers the message again.
func (d *delivery) Ack(context.Context) error {
	d.s.c.untrack(d)
	var err error
	if d.reject.Load() {
		err = d.ch.Reject(d.tag, false)
	} else {
		err = d.ch.Ack(d.tag, false)
	}
	return d.settleErr("ack", err)
}

// Nack returns the delivery to its queue (basic.nack with requeue). The
// portable consumer nacks only when it shuts down, so Nack first pauses
// consuming: the broker then gives the message to another member rather
// than back to this idle one.
func (d *delivery) Nack(context.Context) error {
	d.s.c.untrack(d)
	d.s.pause()
	return d.settleErr("nack", d.ch.Nack(d.tag, false, true))
}

func (d *delivery) settleErr(op string, err error) error {
	if err == nil {
		return nil
	}
	if d.ch.IsClosed() {
		return fmt.Errorf("rabbit: %s message %s: its channel closed since delivery, so the broker delivers it again: %w", op, d.msg.ID, err)
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
