package rabbit

import (
	"context"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/mqkit/mq"
	"github.com/mqkit/mq/internal/backoff"
)

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

// takeoverGrace is how long the consumer of a shard (a single active
// consumer queue) holds back its first delivery when that is a
// redelivery: the broker hands a shard's unacknowledged messages to the
// next consumer the moment the active one's channel dies, at about the
// moment the member that held them learns it (when it learns it at all:
// see the package documentation), and that member needs a moment to
// cancel the handlers still running them.
const takeoverGrace = 250 * time.Millisecond

// forward hands one consumer's deliveries to Receive, in order.
func (s *subscription) forward(ss *session, queue string, src <-chan amqp.Delivery) {
	defer s.wg.Done()
	first := true
	for d := range src {
		if first && d.Redelivered && s.c.cfg.Shards > 1 && !backoff.Sleep(s.ctx, takeoverGrace, s.stop) {
			return
		}
		first = false
		select {
		case s.out <- &delivery{s: s, ss: ss, queue: queue, tag: d.DeliveryTag, msg: s.toMessage(&d)}:
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
		if d.ss.isLost() || d.ss.ch.IsClosed() {
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
		// The channel closed (a failure, or a recycle below): the
		// supervisor consumes when it reconnects.
	case ss.stale:
		// Paused with deliveries unsettled here: close the channel, so the
		// broker requeues them in order, and let the supervisor consume
		// on a new one. Deliveries buffered from the old channel are
		// dropped by Receive.
		s.cur = nil
		ss.retire()
	default:
		// Connected, not consuming yet (Subscribe does not).
		return s.consumeLocked(ss)
	}
	return nil
}
