package rabbit

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/mqkit/mq"
)

// Subscribe implements mq.Conn. It declares the group's queues (see
// QueueNames) and binds them to the topic's exchange before it returns, so
// the group keeps every message produced afterwards, then consumes them
// with manual acknowledgements and a prefetch of Config.Prefetch (default
// opts.MaxInFlight) per queue. While the connection has a subscription of
// the topic, it moves the topic's due delayed messages into it (see the
// package documentation, "Delayed delivery").
//
// While the broker cannot be reached, Subscribe retries for at most
// Config.ReconnectTimeout and then fails with an error wrapping
// mq.ErrUnavailable. Once subscribed, when the channel or connection
// drops, the subscription reconnects with backoff (for as long as it
// takes), declares its topology again and resumes by itself. Deliveries
// received before the drop are lost (see mq.Delivery.Lost): the broker
// requeues them, and their Ack fails.
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
	if strings.HasPrefix(group, delayBase+".") {
		return nil, fmt.Errorf("rabbit: group names starting with %q are reserved: queues %q keep the topic's delayed messages", delayBase+".", topic+"."+delayBase+".*")
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
	o := c.newOutage(c.sub)
	var ss *session
	var lastErr error
	for try := 1; ; try++ {
		cctx, cancel := o.connectCtx(ctx)
		next, err := s.connect(cctx)
		err = o.connectErr(ctx, cctx, err)
		cancel()
		if err == nil {
			ss = next
			break
		}
		if c.ctx.Err() != nil {
			s.cancel()
			return nil, mq.ErrClosed
		}
		if ctx.Err() != nil && lastErr != nil {
			err = fmt.Errorf("rabbit: subscribe: %w (last failure: %w)", err, unavailable(lastErr))
		}
		if !retriable(err) || ctx.Err() != nil {
			s.cancel()
			return nil, err
		}
		o.failed()
		lastErr = err
		if o.left() <= 0 {
			s.cancel()
			return nil, fmt.Errorf("rabbit: subscribe: the broker unreachable for %v: %w",
				time.Since(o.start()).Round(time.Millisecond), unavailable(err))
		}
		if err := c.sleep(ctx, min(c.backoff(try), max(o.left(), 0))); err != nil {
			s.cancel()
			if errors.Is(err, mq.ErrClosed) {
				return nil, err
			}
			return nil, fmt.Errorf("rabbit: subscribe: %w (last failure: %w)", err, unavailable(lastErr))
		}
	}
	// The topic's delayed messages are moved while it has subscriptions.
	s.releaseRelay = c.holdRelay(topic)
	if c.isClosed() || !c.subs.Add(s) {
		ss.retire()
		s.cancel()
		s.releaseRelay()
		return nil, mq.ErrClosed
	}
	s.wg.Add(1)
	go s.run(ss)
	return s, nil
}

// subscription is one consumer's membership of a group: a supervisor
// (run) keeps a session open on the consuming connection.
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

	releaseRelay func() // lets the topic's relay of delayed messages go

	mu   sync.Mutex
	cur  *session // the live channel, nil while reconnecting
	want bool     // consume: a Receive ran since the last pause
}

// session is one channel of a subscription, consuming the group's queues
// while the subscription is wanted.
//
// Its deliveries can be settled only on its channel: once the channel
// closes, for whatever reason, the broker requeues every delivery not yet
// acknowledged and may already be handing it to another member. So a
// session's lost channel, which all its deliveries return from Lost, is
// closed (by retire, or by run) as soon as the subscription learns that
// the channel closed or decides to close it, before it does.
type session struct {
	ch      *amqp.Channel
	closes  chan *amqp.Error
	cancels chan string
	queues  []string
	round   *round // the consumers, nil before the first Receive; guarded by subscription.mu
	stale   bool   // paused: recycle before consuming again; guarded by subscription.mu

	acks *acks // settles the deliveries on ch

	lost     chan struct{} // closed by lose
	loseOnce sync.Once
}

// newSession watches the new channel ch of subscription s.
func (s *subscription) newSession(ch *amqp.Channel) *session {
	cfg := &s.c.cfg
	return &session{
		ch:      ch,
		closes:  ch.NotifyClose(make(chan *amqp.Error, 1)),
		cancels: ch.NotifyCancel(make(chan string, cfg.Shards)),
		acks:    newAcks(ch, cfg.Logger, cfg.AckDelay, s.prefetch),
		lost:    make(chan struct{}),
	}
}

// lose closes ss.lost: the subscription no longer holds the right to
// settle the session's deliveries, and acknowledgements still waiting to
// be sent are dropped (the broker delivers those messages again). It is
// idempotent.
func (ss *session) lose() {
	ss.loseOnce.Do(func() { close(ss.lost) })
	ss.acks.close(false)
}

// isLost reports whether lose was called.
func (ss *session) isLost() bool {
	select {
	case <-ss.lost:
		return true
	default:
		return false
	}
}

// retire gives up ss and closes its channel, waiting for the broker's
// close-ok (or the connection's end): the acknowledgements waiting to be
// sent go first, then its deliveries are lost, so no later
// acknowledgement races the broker's requeueing.
func (ss *session) retire() {
	ss.acks.close(true)
	ss.lose()
	_ = ss.ch.Close()
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
		next := s.newSession(ch)
		next.queues, err = s.c.declareGroup(ctx, conn, ch, s.topic, s.group)
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
			// Consumers that started before the failure may have handed
			// out deliveries already.
			next.retire()
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
		go s.forward(ss, q, d)
	}
	return nil
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
			ss.retire()
			return
		case e := <-ss.closes:
			// The broker requeues what the channel held: another member
			// may be handling it already.
			ss.lose()
			reason = errors.New("channel closed")
			if e != nil {
				reason = e
			}
		case tag := <-ss.cancels:
			reason = fmt.Errorf("the broker cancelled consumer %s (queue deleted?)", tag)
			ss.retire()
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
		s.releaseRelay()
		s.c.subs.Remove(s)
		s.c.mu.Lock()
		for m, d := range s.c.live {
			if d.s == s {
				delete(s.c.live, m)
			}
		}
		s.c.mu.Unlock()
	})
	return nil
}
