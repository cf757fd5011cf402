package redisstream

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"

	"github.com/mqkit/mq"
)

// delivery is one entry delivered to a subscription.
type delivery struct {
	s       *subscription
	stream  string
	id      string
	msg     *mq.Message
	lost    chan struct{} // its generation's or shard acquisition's
	settled atomic.Bool
}

// Message implements mq.Delivery.
func (d *delivery) Message() *mq.Message { return d.msg }

// Position implements mq.Positioner: the stream key and the entry ID.
func (d *delivery) Position() (partition, offset string) { return d.stream, d.id }

// Lost implements mq.Delivery. On a sharded topic it is the channel of
// the shard acquisition the delivery came under, closed when the lease is
// lost (a renewal finds it held by another member, or was not answered by
// the lease's local deadline), released or the subscription closed. On an
// unsharded topic it is the channel of the delivery's generation (see
// generation), closed when the entries it covers may be claimed by
// another member: no keep-alive covered them in time, or one of them was
// claimed by another consumer. Either way the subscription gives the
// deliveries up by its own clock, a margin before Redis would let another
// member take them.
func (d *delivery) Lost() <-chan struct{} { return d.lost }

// isLost reports whether d's Lost channel is closed.
func (d *delivery) isLost() bool {
	select {
	case <-d.lost:
		return true
	default:
		return false
	}
}

// Ack acknowledges the entry. It queues the entry's ID for the next XACK,
// which a background loop of the subscription sends for every ack queued
// meanwhile (one XACK per stream, pipelined), and returns without waiting
// for the reply: the portable consumer frees the in-flight slot at once and
// concurrent handlers share round trips. At-least-once delivery holds: an
// entry stays pending in the group until its XACK is answered, and the
// subscription keeps it alive (and its shard leased) until then, so a lost
// XACK (Redis failing, the process crashing) only means the entry is
// delivered again, as it would be if the process had crashed just before
// Ack. Close sends every queued ack before it hands entries back or leaves
// the group. When more than MaxInFlight acks are queued (Redis is slow to
// answer), Ack waits for their XACK and returns its error.
func (d *delivery) Ack(ctx context.Context) error {
	if !d.settled.CompareAndSwap(false, true) {
		return errors.New("redisstream: message already settled")
	}
	d.s.settled()
	return d.s.ack(ctx, d)
}

// ackBatch is a set of acks sent together.
type ackBatch struct {
	ids  map[string][]string // stream -> entry IDs
	ds   []*delivery
	n    int
	done chan struct{} // closed when the XACK was answered
	err  error
}

func (s *subscription) ack(ctx context.Context, d *delivery) error {
	s.ackMu.Lock()
	if s.ackClosed {
		// Closed: no loop sends it. Send it now (the entry was handed
		// back at Close, so this XACK may come too late to matter).
		s.ackMu.Unlock()
		b := &ackBatch{ids: map[string][]string{d.stream: {d.id}}, ds: []*delivery{d}, n: 1, done: make(chan struct{})}
		s.sendAcks(ctx, b)
		return b.err
	}
	if s.ackNext == nil {
		s.ackNext = &ackBatch{ids: map[string][]string{}, done: make(chan struct{})}
	}
	b := s.ackNext
	b.ids[d.stream] = append(b.ids[d.stream], d.id)
	b.ds = append(b.ds, d)
	b.n++
	full := b.n > s.ackLimit
	s.ackMu.Unlock()
	select {
	case s.ackWake <- struct{}{}:
	default:
	}
	if !full {
		return nil
	}
	select {
	case <-b.done:
		return b.err
	case <-ctx.Done():
		return ctx.Err()
	}
}

// takeAcks returns the queued acks, or nil.
func (s *subscription) takeAcks() *ackBatch {
	s.ackMu.Lock()
	defer s.ackMu.Unlock()
	b := s.ackNext
	s.ackNext = nil
	return b
}

// ackLoop sends queued acks until the subscription closes; Close sends the
// last ones.
func (s *subscription) ackLoop() {
	defer s.wg.Done()
	for {
		select {
		case <-s.done:
			return
		case <-s.ackWake:
		}
		if b := s.takeAcks(); b != nil {
			ctx, cancel := context.WithTimeout(context.Background(), s.c.cfg.ClaimIdle)
			s.sendAcks(ctx, b)
			cancel()
		}
	}
}

// sendAcks sends b's XACKs (pipelined, one per stream), then stops
// tracking its entries, whether the XACK succeeded or not: an entry whose
// XACK failed stays pending, untouched, and is claimed again after
// ClaimIdle.
func (s *subscription) sendAcks(ctx context.Context, b *ackBatch) {
	b.err = s.flushAcks(ctx, b.ids)
	s.ackDone(b)
}

// ackDone stops tracking b's entries and wakes the Acks waiting for it.
func (s *subscription) ackDone(b *ackBatch) {
	s.mu.Lock()
	for _, d := range b.ds {
		s.untrackLocked(d)
	}
	s.mu.Unlock()
	if b.err != nil {
		s.log().Warn("redisstream: XACK failed; the entries will be delivered again", "group", s.group, "entries", b.n, "error", b.err)
	}
	close(b.done)
}

func (s *subscription) flushAcks(ctx context.Context, ids map[string][]string) error {
	pipe := s.c.client.Pipeline()
	for stream, list := range ids {
		pipe.XAck(ctx, stream, s.group, list...)
	}
	if _, err := pipe.Exec(ctx); err != nil {
		return fmt.Errorf("redisstream: XACK: %w", s.c.mapErr(err))
	}
	return nil
}

// Nack leaves the entry pending in the group and makes it look idle for
// ClaimIdle, so the next claim by any member (this one included) takes it
// at once, with its delivery count one higher. The Nack of a lost
// delivery (see Lost) only stops tracking it: the entry may be another
// member's now, and is left alone.
func (d *delivery) Nack(ctx context.Context) error {
	if !d.settled.CompareAndSwap(false, true) {
		return errors.New("redisstream: message already settled")
	}
	d.s.settled()
	d.s.untrack(d)
	if d.isLost() {
		return nil
	}
	if _, err := d.s.touch(ctx, d.stream, d.s.c.cfg.ClaimIdle, []string{d.id}); err != nil {
		return fmt.Errorf("redisstream: handing back %q %s: %w", d.stream, d.id, err)
	}
	return nil
}

var (
	_ mq.Subscription = (*subscription)(nil)
	_ mq.Delivery     = (*delivery)(nil)
)
