package redisstream

import (
	"context"
	"errors"
	"hash/fnv"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/mqkit/mq/internal/backoff"
)

// shardSet gives the shards of a sharded topic to the members of a group,
// one member per shard at a time. Each shard has a lease key holding its
// member's consumer name with an expiry, renewed every third of
// ShardLease; a members sorted set counts the live members, and each
// member holds at most ceil(shards/members) shards. A member with too many
// stops reading the extra ones and releases each once every entry it read
// from it is settled, so a key is never handled by two members at once.
type shardSet struct {
	s          *subscription
	lease      time.Duration
	membersKey string
	leaseKeys  []string

	kicks chan struct{} // asks run to balance now

	mu       sync.Mutex
	owned    map[string]*shardState // stream -> state
	changed  chan struct{}          // closed and replaced when owned changes
	released bool
}

// shardState is one acquisition of a shard: the member took its lease
// and holds it until the lease is lost or released. Its lost channel is
// the Lost of every delivery from the shard during the acquisition; a new
// acquisition of the same shard has a new one.
//
// The lease is fenced locally: deadline is when the member stops reading
// and handling the shard unless a renewal succeeded meanwhile, by its own
// clock: the time taken before sending the command that set or last
// renewed the lease, plus the lease, minus the fence margin. Redis cannot
// expire the lease before then, so no other member takes the shard while
// this one still may handle its entries. The fields are guarded by the
// shardSet's mu.
type shardState struct {
	index    int
	fresh    bool // acquired; its pending entries not yet claimed
	draining bool // to be released once its entries are settled
	lost     chan struct{}
	deadline time.Time
	timer    *time.Timer // fires at deadline
	ended    bool
}

func newShardSet(s *subscription) *shardSet {
	n := len(s.streams)
	ss := &shardSet{
		s:          s,
		lease:      s.c.cfg.ShardLease,
		membersKey: "{" + s.topic + "}:members:" + s.group,
		leaseKeys:  make([]string, n),
		owned:      map[string]*shardState{},
		changed:    make(chan struct{}),
		kicks:      make(chan struct{}, 1),
	}
	for i := range n {
		ss.leaseKeys[i] = "{" + s.topic + "}:lease:" + s.group + ":" + strconv.Itoa(i)
	}
	return ss
}

// readable returns the shard streams to read new entries from, those
// whose pending entries must be claimed first, and the acquisition of
// each (entries read under an acquisition are delivered only while it
// lasts). It marks them as being read (until the caller clears
// s.reading), so that none of them is released meanwhile.
func (ss *shardSet) readable() (streams, fresh []string, acqs map[string]*shardState) {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	acqs = make(map[string]*shardState, len(ss.owned))
	for stream, st := range ss.owned {
		switch {
		case st.fresh:
			fresh = append(fresh, stream)
		case !st.draining:
			streams = append(streams, stream)
		default:
			continue
		}
		acqs[stream] = st
	}
	slices.Sort(streams)
	slices.Sort(fresh)
	s := ss.s
	s.mu.Lock()
	s.reading = append(append(s.reading[:0:0], streams...), fresh...)
	s.mu.Unlock()
	return streams, fresh, acqs
}

// owns reports whether the member still holds the shard stream.
func (ss *shardSet) owns(stream string) bool {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	return ss.owned[stream] != nil
}

// acquiredLocked records a new acquisition of the shard at index, whose
// lease was set by a command sent at sent. ss.mu is held.
func (ss *shardSet) acquiredLocked(stream string, index int, sent time.Time) {
	st := &shardState{index: index, fresh: true, lost: make(chan struct{})}
	st.deadline = sent.Add(ss.lease - fenceMargin(ss.lease))
	st.timer = time.AfterFunc(time.Until(st.deadline), func() { ss.expire(stream, st) })
	ss.owned[stream] = st
	ss.signalLocked()
}

// renewedLocked moves st's deadline after a renewal sent at sent
// succeeded. ss.mu is held.
func (ss *shardSet) renewedLocked(st *shardState, sent time.Time) {
	if st.ended {
		return
	}
	if d := sent.Add(ss.lease - fenceMargin(ss.lease)); d.After(st.deadline) {
		st.deadline = d
		st.timer.Reset(time.Until(d))
	}
}

// expire fences st when its deadline passed without a renewal.
func (ss *shardSet) expire(stream string, st *shardState) {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	if st.ended || time.Until(st.deadline) > 0 {
		return // gone already, or renewed while the timer fired
	}
	ss.s.log().Warn("redisstream: shard lease not renewed by its local deadline (Redis unreachable or slow?); giving the shard up",
		"stream", stream, "group", ss.s.group, "shard_lease", ss.lease)
	ss.loseLocked(stream, st)
}

// loseLocked ends the acquisition st of stream: it stops reading the
// shard, closes the deliveries' Lost channel and stops keeping their
// entries alive (the shard's next holder claims them). ss.mu is held; it
// takes the subscription's lock.
func (ss *shardSet) loseLocked(stream string, st *shardState) {
	if ss.owned[stream] == st {
		delete(ss.owned, stream)
		ss.signalLocked()
	}
	if st.ended {
		return
	}
	st.ended = true
	st.timer.Stop()
	close(st.lost)
	s := ss.s
	s.mu.Lock()
	for id, d := range s.held[stream] {
		if d.lost == st.lost {
			delete(s.held[stream], id)
		}
	}
	s.mu.Unlock()
}

// loseAllLocked ends every acquisition and returns their lease keys.
// ss.mu is held.
func (ss *shardSet) loseAllLocked() []string {
	keys := make([]string, 0, len(ss.owned))
	for stream, st := range ss.owned {
		keys = append(keys, ss.leaseKeys[st.index])
		ss.loseLocked(stream, st)
	}
	return keys
}

// claimed records that a fresh shard's pending entries were claimed.
func (ss *shardSet) claimed(stream string) {
	ss.mu.Lock()
	if st := ss.owned[stream]; st != nil {
		st.fresh = false
	}
	ss.mu.Unlock()
}

// kick asks the balancing loop to run now.
func (ss *shardSet) kick() {
	select {
	case ss.kicks <- struct{}{}:
	default:
	}
}

// activeLocked reports whether the subscription is being consumed: a Receive is
// running or returned lately, or deliveries are unsettled. A subscription
// whose Consume stopped (but which was not closed) holds no shards, so
// other members get them. ss.mu is held.
func (ss *shardSet) activeLocked(grace time.Duration) bool {
	s := ss.s
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.inRecv || time.Since(s.endRecv) < grace {
		return true
	}
	for _, ids := range s.held {
		if len(ids) > 0 {
			return true
		}
	}
	return false
}

func (ss *shardSet) signalLocked() {
	close(ss.changed)
	ss.changed = make(chan struct{})
}

// waitChange waits for the owned shards to change, up to d.
func (ss *shardSet) waitChange(ctx context.Context, stop <-chan struct{}, d time.Duration) error {
	ss.mu.Lock()
	ch := ss.changed
	ss.mu.Unlock()
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ch:
	case <-t.C:
	case <-ctx.Done():
		return ctx.Err()
	case <-stop:
	}
	return nil
}

// run balances and renews the member's shards until the subscription
// closes.
func (ss *shardSet) run() {
	defer ss.s.wg.Done()
	// A member-specific starting point spreads first acquisitions.
	h := fnv.New32a()
	_, _ = h.Write([]byte(ss.s.consumer))
	offset := int(h.Sum32() % uint32(len(ss.leaseKeys)))
	tick := max(ss.lease/3, 10*time.Millisecond)
	failures := 0
	for {
		ctx, cancel := context.WithTimeout(context.Background(), tick)
		err := ss.balance(ctx, offset)
		cancel()
		wait := tick
		if err != nil {
			// Retry soon: a lease not renewed by its local deadline is
			// given up (see shardState).
			failures++
			wait = backoff.Equal(backoff.Exp(failures, tick/8, tick))
			if !errors.Is(err, redis.ErrClosed) {
				ss.s.log().Warn("redisstream: shard lease upkeep failed", "topic", ss.s.topic, "group", ss.s.group, "error", err, "retry_in", wait)
			}
		} else {
			failures = 0
		}
		select {
		case <-ss.s.done:
			return
		case <-ss.kicks:
		case <-time.After(wait):
		}
	}
}

func (ss *shardSet) balance(ctx context.Context, offset int) error {
	c := ss.s.c.client
	me := ss.s.consumer
	now := time.Now()

	ss.mu.Lock()
	if !ss.activeLocked(2 * max(ss.lease/3, 10*time.Millisecond)) {
		// Not consumed: leave the membership and give the shards up
		// (nothing read from them is unsettled). Checked under ss.mu, so
		// a Receive starting now finds no shards rather than lost ones.
		keys := ss.loseAllLocked()
		ss.mu.Unlock()
		if len(keys) > 0 {
			if err := releaseScript.Run(ctx, c, keys, me).Err(); err != nil {
				return err
			}
		}
		return c.ZRem(ctx, ss.membersKey, me).Err()
	}
	ss.mu.Unlock()

	// Membership: announce ourselves, drop members whose heartbeat
	// expired, count the rest.
	pipe := c.Pipeline()
	pipe.ZAdd(ctx, ss.membersKey, redis.Z{Score: float64(now.Add(ss.lease).UnixMilli()), Member: me})
	pipe.ZRemRangeByScore(ctx, ss.membersKey, "-inf", strconv.FormatInt(now.UnixMilli(), 10))
	card := pipe.ZCard(ctx, ss.membersKey)
	if _, err := pipe.Exec(ctx); err != nil {
		return err
	}
	members := max(int(card.Val()), 1)
	n := len(ss.leaseKeys)
	fair := (n + members - 1) / members

	// Renew what we hold; forget what we lost. The time is taken before
	// the renewal is sent: Redis extends the lease later than that.
	ss.mu.Lock()
	var keys, streams []string
	var states []*shardState
	for stream, st := range ss.owned {
		keys = append(keys, ss.leaseKeys[st.index])
		streams = append(streams, stream)
		states = append(states, st)
	}
	ss.mu.Unlock()
	if len(keys) > 0 {
		sent := time.Now()
		res, err := renewScript.Run(ctx, c, keys, me, ss.lease.Milliseconds()).Int64Slice()
		if err != nil {
			return err
		}
		ss.mu.Lock()
		for i, ok := range res {
			st := states[i]
			if ok == 1 {
				ss.renewedLocked(st, sent)
			} else if !st.ended {
				ss.s.log().Warn("redisstream: shard lease lost (held by another member, or expired); giving the shard up", "stream", streams[i], "group", ss.s.group)
				ss.loseLocked(streams[i], st)
			}
		}
		ss.mu.Unlock()
	}

	// Release drained shards; mark extra ones to drain.
	ss.mu.Lock()
	active := 0
	var release []string
	for stream, st := range ss.owned {
		if st.draining {
			if ss.idleLocked(stream) {
				release = append(release, stream)
			}
			continue
		}
		active++
	}
	if active > fair {
		var order []string
		for stream, st := range ss.owned {
			if !st.draining {
				order = append(order, stream)
			}
		}
		slices.Sort(order)
		for _, stream := range order[:active-fair] {
			ss.owned[stream].draining = true
		}
		active = fair
		ss.signalLocked()
	}
	ss.mu.Unlock()
	if len(release) > 0 {
		// Given up here first, then in Redis: nobody else can take a
		// shard while this member may still use it.
		keys := make([]string, 0, len(release))
		ss.mu.Lock()
		for _, stream := range release {
			if st := ss.owned[stream]; st != nil {
				keys = append(keys, ss.leaseKeys[st.index])
				ss.loseLocked(stream, st)
			}
		}
		ss.mu.Unlock()
		if err := releaseScript.Run(ctx, c, keys, me).Err(); err != nil {
			return err
		}
	}

	// Take free shards up to our fair share.
	for i := 0; i < n && active < fair; i++ {
		idx := (offset + i) % n
		stream := ss.s.streams[idx]
		if ss.owns(stream) {
			continue
		}
		sent := time.Now()
		ok, err := acquireScript.Run(ctx, c, []string{ss.leaseKeys[idx]}, me, ss.lease.Milliseconds()).Bool()
		if err != nil {
			return err
		}
		if !ok {
			continue
		}
		ss.mu.Lock()
		if ss.released {
			ss.mu.Unlock()
			_ = releaseScript.Run(ctx, c, []string{ss.leaseKeys[idx]}, me).Err()
			return nil
		}
		ss.acquiredLocked(stream, idx, sent)
		ss.mu.Unlock()
		active++
	}
	return nil
}

// idleLocked reports whether nothing read from stream is unsettled or being
// read. ss.mu is held; it takes the subscription's lock.
func (ss *shardSet) idleLocked(stream string) bool {
	s := ss.s
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.held[stream]) == 0 && !slices.Contains(s.reading, stream)
}

// releaseAll gives up every shard and the membership (at Close, after the
// entries held were handed back).
func (ss *shardSet) releaseAll(ctx context.Context) {
	ss.mu.Lock()
	ss.released = true
	keys := ss.loseAllLocked()
	ss.mu.Unlock()
	c := ss.s.c.client
	if len(keys) > 0 {
		if err := releaseScript.Run(ctx, c, keys, ss.s.consumer).Err(); err != nil && !errors.Is(err, redis.ErrClosed) {
			ss.s.log().Warn("redisstream: releasing shard leases failed; they expire by themselves", "error", err)
		}
	}
	_ = c.ZRem(ctx, ss.membersKey, ss.s.consumer).Err()
}
