package rabbit

import (
	"log/slog"
	"sync"
	"time"
)

// DefaultAckDelay is how long an acknowledgement waits, at most, to be
// sent together with later ones (see Config.AckDelay).
const DefaultAckDelay = time.Millisecond

// maxAckSpan bounds the delivery tags a channel's acks track past the
// oldest unsettled one. Past it (one delivery held for millions of
// others) acknowledgements are sent one by one, as without coalescing.
const maxAckSpan = 1 << 20

// Settlement states of a delivery tag in acks.state.
const (
	tagOpen  uint8 = iota // not settled (or not delivered yet)
	tagAcked              // acknowledged by its handler, not yet on the wire
	tagSent               // settled on the wire
)

// acks coalesces the acknowledgements of one consuming channel into
// basic.ack frames with the multiple flag: one frame, and one write to
// the socket, for a run of deliveries handled in order, instead of one
// each. A channel's delivery tags count 1, 2, 3, ... in the order the
// broker delivered; a multiple ack of tag t settles every delivery up to
// t still unsettled, so it is sent only for a t at or below which every
// tag is settled here (acknowledged, or sent on its own). Acks that do
// not join such a run are sent on their own at the next flush.
//
// A flush happens when every acknowledgements wait, when the oldest
// waits delay, and before the channel is closed by its subscription
// (retire); no acknowledgement waits longer than delay. Every frame that settles a tag of the channel, the nacks and
// rejects included, is written under mu: a multiple ack never overtakes
// the reject of a tag it covers.
type acks struct {
	ch    ackSender
	log   *slog.Logger
	delay time.Duration // <= 0: no coalescing
	every int

	mu      sync.Mutex
	base    uint64  // the oldest tag not known settled; 1 at first
	state   []uint8 // state[i] is tag base+i's
	waiting []uint64
	timer   *time.Timer
	armed   bool
	closed  bool
	warned  bool
}

// ackSender sends basic.ack frames: an *amqp.Channel.
type ackSender interface {
	Ack(tag uint64, multiple bool) error
}

// newAcks returns the acks of channel ch, whose prefetch is prefetch per
// queue (per consumer: a member may be active on one shard queue only).
func newAcks(ch ackSender, log *slog.Logger, delay time.Duration, prefetch int) *acks {
	// A quarter of one queue's window at most waits, so that the broker,
	// which counts unsent acks against the prefetch, keeps delivering.
	every := min(64, max(1, prefetch/4))
	if every == 1 {
		delay = 0
	}
	return &acks{ch: ch, log: log, delay: delay, every: every, base: 1}
}

// ack acknowledges tag, now or at the next flush. It fails only when the
// ack is sent at once and its write fails.
func (a *acks) ack(tag uint64) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.delay <= 0 || a.closed {
		return a.ch.Ack(tag, false)
	}
	if !a.mark(tag, tagAcked) {
		return a.ch.Ack(tag, false)
	}
	a.waiting = append(a.waiting, tag)
	if len(a.waiting) >= a.every {
		a.flushLocked(false)
	}
	if len(a.waiting) > 0 && !a.armed {
		a.armed = true
		if a.timer == nil {
			a.timer = time.AfterFunc(a.delay, a.flushLater)
		} else {
			a.timer.Reset(a.delay)
		}
	}
	return nil
}

// settle sends a frame that settles tag on its own (a nack, a reject).
func (a *acks) settle(tag uint64, send func() error) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	err := send()
	if a.delay > 0 && !a.closed {
		a.mark(tag, tagSent)
		if tag == a.base && len(a.waiting) == 0 {
			a.advance() // nothing waits: only keep the span short
		}
	}
	return err
}

// advance moves base past the settled run it starts, and returns the
// offset (from the old base) of the last tag in that run that waits for
// its ack, or -1. a.mu is held.
func (a *acks) advance() int {
	n, last := 0, -1
	for n < len(a.state) && a.state[n] != tagOpen {
		if a.state[n] == tagAcked {
			last = n
		}
		n++
	}
	a.base += uint64(n)
	rest := copy(a.state, a.state[n:])
	clear(a.state[rest:])
	a.state = a.state[:rest]
	return last
}

// mark records tag's state. It reports false when tag is beyond the span
// tracked (it is then not recorded).
func (a *acks) mark(tag uint64, s uint8) bool {
	if tag < a.base {
		return true // below the oldest unsettled: settled already
	}
	i := tag - a.base
	if i >= maxAckSpan {
		return false
	}
	for uint64(len(a.state)) <= i {
		a.state = append(a.state, tagOpen)
	}
	a.state[i] = s
	return true
}

func (a *acks) flushLater() {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.armed = false
	if !a.closed {
		a.flushLocked(true)
	}
}

// flushLocked sends the waiting acks in the settled run from base as one
// multiple ack. The others (a delivery before them is unsettled) are
// sent one by one when force is set (the delay passed, the channel
// closes) or when as many wait as trigger a flush; until then they may
// still join a run. a.mu is held.
func (a *acks) flushLocked(force bool) {
	if len(a.waiting) == 0 {
		return
	}
	old := a.base
	var err error
	if last := a.advance(); last >= 0 {
		err = a.ch.Ack(old+uint64(last), true)
	}
	rest := a.waiting[:0]
	for _, t := range a.waiting {
		if t >= a.base {
			rest = append(rest, t)
		}
	}
	if force || len(rest) >= a.every {
		for _, t := range rest {
			if e := a.ch.Ack(t, false); e != nil && err == nil {
				err = e
			}
			a.state[t-a.base] = tagSent
		}
		rest = rest[:0]
	}
	a.waiting = rest
	if err != nil && !a.warned {
		// The channel is closing: the broker delivers these again.
		a.warned = true
		a.log.Warn("rabbit: sending acknowledgements failed; the broker delivers the messages again", "error", err)
	}
}

// close stops coalescing; with flush set it first sends the waiting
// acks (the channel is still the subscription's), otherwise drops them
// (the channel is gone: the broker requeued their deliveries). Acks after
// close are sent at once. It is idempotent.
func (a *acks) close(flush bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.closed {
		return
	}
	if flush {
		a.flushLocked(true)
	}
	a.waiting = nil
	a.closed = true
	if a.timer != nil {
		a.timer.Stop()
	}
}
