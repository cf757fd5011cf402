package redisstream

import "time"

// This file holds the local fencing of an unsharded subscription: the
// entries it holds are its own only as long as no other member of the
// group can claim them, that is until they have been idle for ClaimIdle
// (keepAlive resets their idle time). A subscription does not wait to
// learn that it lost them: it gives them up by its own clock, a margin
// before the earliest time another member could claim them. (Sharded
// topics fence by shard lease instead: see shard.go.)

// fenceMargin is how long before Redis could pass on what a subscription
// holds for a period d (ClaimIdle or ShardLease) the subscription gives it
// up: a fifth of d, at least 10ms and at most half of d. It covers the
// drift between the local clock and Redis's, and the time a cancelled
// handler takes to notice.
func fenceMargin(d time.Duration) time.Duration {
	return min(max(d/5, 10*time.Millisecond), d/2)
}

// A generation is the right to settle the entries an unsharded
// subscription delivered since its last fencing event. Its deliveries
// share its lost channel (their Lost), closed when the generation is
// fenced: its deadline passed without a keep-alive that covered its
// entries, or a keep-alive found one of them claimed by another consumer.
// Deliveries from then on get a new generation.
//
// The deadline is the earliest time at which one of its entries could have
// been idle for ClaimIdle, minus the fence margin, as this process's clock
// sees it: for an entry delivered by a command sent at t (XREADGROUP,
// XAUTOCLAIM: Redis resets its idle time when it runs the command, after
// t), t + ClaimIdle - margin; after a keep-alive sent at t that reset the
// idle time of every entry held when it was sent, t + ClaimIdle - margin,
// or earlier if entries delivered since are older. Every field is guarded
// by the subscription's mu.
type generation struct {
	lost     chan struct{}
	deadline time.Time
	timer    *time.Timer
	since    time.Time // the earliest send time of deliveries since the last keep-alive snapshot; zero: none
	ended    bool
}

// end closes the generation's lost channel and stops its timer. s.mu is
// held. It reports whether the generation was still open.
func (g *generation) end() bool {
	if g.ended {
		return false
	}
	g.ended = true
	g.timer.Stop()
	close(g.lost)
	return true
}

// genLocked returns the generation for entries delivered by a command sent
// at at, making a new one if the last was fenced, and moving its deadline
// earlier if these entries' own is earlier. It returns nil when their
// deadline has passed already: they may be claimed by another member by
// now, and must not be delivered (they stay pending, for whoever claims
// them: this subscription's next pending history read, or another
// member's XAUTOCLAIM). s.mu is held.
func (s *subscription) genLocked(at time.Time) *generation {
	idle := s.c.cfg.ClaimIdle
	deadline := at.Add(idle - fenceMargin(idle))
	wait := time.Until(deadline)
	if wait <= 0 {
		s.reread = true
		return nil
	}
	g := s.gen
	if g == nil || g.ended {
		g = &generation{lost: make(chan struct{}), deadline: deadline}
		g.timer = time.AfterFunc(wait, func() { s.expire(g) })
		s.gen = g
	} else if deadline.Before(g.deadline) {
		g.deadline = deadline
		g.timer.Reset(wait)
	}
	if g.since.IsZero() || at.Before(g.since) {
		g.since = at
	}
	return g
}

// snapshotGenLocked starts a keep-alive round: deliveries from now on are not
// covered by it. It returns the current generation (nil: none). s.mu is
// held.
func (s *subscription) snapshotGenLocked() *generation {
	g := s.gen
	if g != nil && !g.ended {
		g.since = time.Time{}
		return g
	}
	return nil
}

// renewGen moves g's deadline after a keep-alive sent at sent succeeded
// for every entry held when it was sent.
func (s *subscription) renewGen(g *generation, sent time.Time) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if g.ended || s.gen != g {
		return
	}
	idle := s.c.cfg.ClaimIdle
	margin := fenceMargin(idle)
	deadline := sent.Add(idle - margin)
	if !g.since.IsZero() && g.since.Before(sent) {
		// Delivered while the keep-alive was under way, by a command sent
		// before it: not covered, safe only from its own send time.
		deadline = g.since.Add(idle - margin)
	}
	if deadline.Before(g.deadline) {
		return // never earlier than the deliveries' own deadline
	}
	g.deadline = deadline
	g.timer.Reset(time.Until(deadline))
}

// expire fences g when its deadline has passed (its timer fired).
func (s *subscription) expire(g *generation) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if g.ended || time.Until(g.deadline) > 0 {
		return // fenced already, or renewed while the timer fired
	}
	if !s.holdsOfLocked(g) {
		// Every delivery of g was settled: nothing to give up.
		g.end()
		if s.gen == g {
			s.gen = nil
		}
		return
	}
	s.fenceGenLocked(g)
	s.log().Warn("redisstream: entries being handled were not kept alive in time (Redis unreachable or slow?); giving them up, as another consumer may claim them now",
		"topic", s.topic, "group", s.group, "claim_idle", s.c.cfg.ClaimIdle)
}

// fenceGenLocked ends g: its deliveries are lost to the subscription,
// which stops keeping their entries alive and reads its pending history
// again before new entries (entries still pending for it come back in
// order; those claimed by others are theirs). s.mu is held.
func (s *subscription) fenceGenLocked(g *generation) {
	if !g.end() {
		return
	}
	if s.gen == g {
		s.gen = nil
	}
	for _, m := range s.held {
		for id, d := range m {
			if d.lost == g.lost {
				delete(m, id)
			}
		}
	}
	s.reread = true
}

// holdsOfLocked reports whether an entry is held by a delivery of g.
// s.mu is held.
func (s *subscription) holdsOfLocked(g *generation) bool {
	for _, m := range s.held {
		for _, d := range m {
			if d.lost == g.lost {
				return true
			}
		}
	}
	return false
}
