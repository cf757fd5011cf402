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
)

// renewScript extends the leases KEYS that ARGV[1] holds to ARGV[2] ms and
// returns, per key, 1 if it was renewed and 0 if it is held by another
// member or expired.
var renewScript = redis.NewScript(`
local out = {}
for i, k in ipairs(KEYS) do
  if redis.call('GET', k) == ARGV[1] then
    redis.call('PEXPIRE', k, ARGV[2])
    out[i] = 1
  else
    out[i] = 0
  end
end
return out
`)

// releaseScript deletes the leases KEYS that ARGV[1] holds.
var releaseScript = redis.NewScript(`
local n = 0
for _, k in ipairs(KEYS) do
  if redis.call('GET', k) == ARGV[1] then
    redis.call('DEL', k)
    n = n + 1
  end
end
return n
`)

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

type shardState struct {
	index    int
	fresh    bool // acquired; its pending entries not yet claimed
	draining bool // to be released once its entries are settled
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

// readable returns the shard streams to read new entries from, and those
// whose pending entries must be claimed first. It marks them as being
// read (until the caller clears s.reading), so that none of them is
// released meanwhile.
func (ss *shardSet) readable() (streams, fresh []string) {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	for stream, st := range ss.owned {
		switch {
		case st.fresh:
			fresh = append(fresh, stream)
		case !st.draining:
			streams = append(streams, stream)
		}
	}
	slices.Sort(streams)
	slices.Sort(fresh)
	s := ss.s
	s.mu.Lock()
	s.reading = append(append(s.reading[:0:0], streams...), fresh...)
	s.mu.Unlock()
	return streams, fresh
}

// owns reports whether the member still holds the shard stream.
func (ss *shardSet) owns(stream string) bool {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	return ss.owned[stream] != nil
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

// active reports whether the subscription is being consumed: a Receive is
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
	for {
		ctx, cancel := context.WithTimeout(context.Background(), tick)
		if err := ss.balance(ctx, offset); err != nil && !errors.Is(err, redis.ErrClosed) {
			ss.s.log().Warn("redisstream: shard lease upkeep failed", "topic", ss.s.topic, "group", ss.s.group, "error", err)
		}
		cancel()
		select {
		case <-ss.s.done:
			return
		case <-ss.kicks:
		case <-time.After(tick):
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
		keys := make([]string, 0, len(ss.owned))
		for _, st := range ss.owned {
			keys = append(keys, ss.leaseKeys[st.index])
		}
		clear(ss.owned)
		ss.signalLocked()
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

	// Renew what we hold; forget what we lost.
	ss.mu.Lock()
	var keys, streams []string
	for stream, st := range ss.owned {
		keys = append(keys, ss.leaseKeys[st.index])
		streams = append(streams, stream)
	}
	ss.mu.Unlock()
	if len(keys) > 0 {
		res, err := renewScript.Run(ctx, c, keys, me, ss.lease.Milliseconds()).Int64Slice()
		if err != nil {
			return err
		}
		ss.mu.Lock()
		for i, ok := range res {
			if ok == 0 && ss.owned[streams[i]] != nil {
				ss.s.log().Warn("redisstream: shard lease lost (renewal came too late); another member takes the shard", "stream", streams[i], "group", ss.s.group)
				delete(ss.owned, streams[i])
				ss.signalLocked()
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
		keys := make([]string, len(release))
		for i, stream := range release {
			keys[i] = ss.leaseKeys[ss.indexOf(stream)]
		}
		if err := releaseScript.Run(ctx, c, keys, me).Err(); err != nil {
			return err
		}
		ss.mu.Lock()
		for _, stream := range release {
			delete(ss.owned, stream)
		}
		ss.signalLocked()
		ss.mu.Unlock()
	}

	// Take free shards up to our fair share.
	for i := 0; i < n && active < fair; i++ {
		idx := (offset + i) % n
		stream := ss.s.streams[idx]
		if ss.owns(stream) {
			continue
		}
		ok, err := c.SetNX(ctx, ss.leaseKeys[idx], me, ss.lease).Result()
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
		ss.owned[stream] = &shardState{index: idx, fresh: true}
		ss.signalLocked()
		ss.mu.Unlock()
		active++
	}
	return nil
}

func (ss *shardSet) indexOf(stream string) int {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	if st := ss.owned[stream]; st != nil {
		return st.index
	}
	return slices.Index(ss.s.streams, stream)
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
	keys := make([]string, 0, len(ss.owned))
	for _, st := range ss.owned {
		keys = append(keys, ss.leaseKeys[st.index])
	}
	clear(ss.owned)
	ss.mu.Unlock()
	c := ss.s.c.client
	if len(keys) > 0 {
		if err := releaseScript.Run(ctx, c, keys, ss.s.consumer).Err(); err != nil && !errors.Is(err, redis.ErrClosed) {
			ss.s.log().Warn("redisstream: releasing shard leases failed; they expire by themselves", "error", err)
		}
	}
	_ = c.ZRem(ctx, ss.membersKey, ss.s.consumer).Err()
}
