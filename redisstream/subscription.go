package redisstream

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/mqkit/mq"
)

// touchScript re-claims, for ARGV[2], the entries ARGV[4..] of stream
// KEYS[1] and group ARGV[1] that ARGV[2] still owns, setting their idle
// time to ARGV[3] ms without counting a delivery. Entries another consumer
// claimed meanwhile are left alone and returned; acknowledged ones are
// skipped. Atomic, so a live
// consumer never takes back an entry that was claimed from it.
var touchScript = redis.NewScript(`
local lost = {}
local mine = {}
for i = 4, #ARGV do
  local p = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[i], ARGV[i], 1)
  if p[1] then
    if p[1][2] == ARGV[2] then
      mine[#mine + 1] = ARGV[i]
    else
      lost[#lost + 1] = ARGV[i]
    end
  end
end
if #mine > 0 then
  redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, unpack(mine), 'IDLE', ARGV[3], 'JUSTID')
end
return lost
`)

// leaveScript deletes consumer ARGV[2] of group ARGV[1] on stream KEYS[1]
// only if it has no pending entries, so nothing pending is ever dropped.
var leaveScript = redis.NewScript(`
local p = redis.call('XPENDING', KEYS[1], ARGV[1], '-', '+', 1, ARGV[2])
if #p == 0 then
  return redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], ARGV[2])
end
return -1
`)

// Subscribe implements mq.Conn: it creates the group on every stream of
// the topic (XGROUP CREATE ... MKSTREAM; an existing group is kept) and
// returns a subscription with a consumer name of its own.
func (c *Conn) Subscribe(ctx context.Context, topic, group string, opts mq.SubscribeOptions) (mq.Subscription, error) {
	if c.isClosed() {
		return nil, mq.ErrClosed
	}
	if err := c.checkTopic(ctx, topic); err != nil {
		return nil, err
	}
	streams := c.StreamKeys(topic)
	if err := c.createGroup(ctx, streams, group); err != nil {
		return nil, err
	}
	s := &subscription{
		c:        c,
		topic:    topic,
		group:    group,
		consumer: c.consumerName(),
		streams:  streams,
		held:     map[string]map[string]struct{}{},
		cursor:   map[string]string{},
		ackLimit: max(opts.MaxInFlight, 16),
		window:   opts.MaxInFlight,
		conc:     opts.Concurrency,
		room:     make(chan struct{}, 1),
		ackWake:  make(chan struct{}, 1),
		done:     make(chan struct{}),
	}
	s.rd = &reader{client: c.client, key: streams[0], block: c.cfg.Block}
	if c.cfg.Shards > 0 {
		s.shards = newShardSet(s)
	}
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return nil, mq.ErrClosed
	}
	c.subs[s] = struct{}{}
	c.mu.Unlock()

	s.wg.Add(2)
	go s.keepAlive()
	go s.ackLoop()
	if s.shards != nil {
		s.wg.Add(1)
		go s.shards.run()
	}
	return s, nil
}

func (c *Conn) createGroup(ctx context.Context, streams []string, group string) error {
	start := "0"
	if c.cfg.StartLatest {
		start = "$"
	}
	pipe := c.client.Pipeline()
	cmds := make([]*redis.StatusCmd, len(streams))
	for i, s := range streams {
		cmds[i] = pipe.XGroupCreateMkStream(ctx, s, group, start)
	}
	_, _ = pipe.Exec(ctx)
	for i, cmd := range cmds {
		if err := cmd.Err(); err != nil && !strings.HasPrefix(err.Error(), "BUSYGROUP") {
			return fmt.Errorf("redisstream: XGROUP CREATE %q %q: %w", streams[i], group, mapErr(err))
		}
	}
	return nil
}

// subscription is one consumer of a group: it reads new entries with
// XREADGROUP, claims idle entries of the group with XAUTOCLAIM, and keeps
// its own unsettled entries from being claimed.
type subscription struct {
	c        *Conn
	topic    string
	group    string
	consumer string
	streams  []string
	shards   *shardSet // nil without sharding
	rd       *reader

	window    int           // SubscribeOptions.MaxInFlight: the most entries delivered and not settled (0: no bound but Receive's)
	conc      int           // SubscribeOptions.Concurrency
	unsettled atomic.Int64  // entries delivered (the stash included) and not yet acked or nacked
	waiting   atomic.Bool   // Receive waits in awaitRoom
	room      chan struct{} // an Ack or Nack made room while waiting was set

	recvMu    sync.Mutex    // held by Receive
	stash     []mq.Delivery // read beyond the limit of a Receive: returned first by the next
	lastClaim time.Time
	lastPrune time.Time
	cursor    map[string]string // stream -> XAUTOCLAIM cursor of an unfinished scan

	mu      sync.Mutex
	held    map[string]map[string]struct{} // stream -> IDs delivered and not settled or whose XACK is not answered yet
	reading []string                       // streams of the XREADGROUP in progress
	inRecv  bool                           // a Receive is running
	endRecv time.Time                      // when the last Receive returned
	closed  bool

	ackMu     sync.Mutex
	ackNext   *ackBatch     // acks waiting for the next XACK
	ackClosed bool          // ackLoop is gone: Ack sends its XACK itself
	ackLimit  int           // acks queued beyond this make Ack wait for their XACK
	ackWake   chan struct{} // wakes ackLoop

	done      chan struct{}
	wg        sync.WaitGroup
	closeOnce sync.Once
	closeErr  error
}

func (s *subscription) log() *slog.Logger { return s.c.cfg.Logger }

func (s *subscription) track(stream, id string) {
	m := s.held[stream]
	if m == nil {
		m = map[string]struct{}{}
		s.held[stream] = m
	}
	m[id] = struct{}{}
}

func (s *subscription) untrack(stream, id string) {
	s.mu.Lock()
	delete(s.held[stream], id)
	s.mu.Unlock()
}

// Receive implements mq.Subscription. Entries claimed from the group come
// before new ones; new entries of one stream come in stream order.
func (s *subscription) Receive(ctx context.Context, limit int) ([]mq.Delivery, error) {
	s.recvMu.Lock()
	defer s.recvMu.Unlock()
	limit = min(max(limit, 1), 10000)
	s.mu.Lock()
	s.inRecv = true
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		s.inRecv, s.endRecv, s.reading = false, time.Now(), nil
		s.mu.Unlock()
	}()
	if len(s.stash) > 0 {
		return s.fromStash(ctx, nil, limit), nil
	}
	for {
		s.doneReading()
		select {
		case <-s.done:
			return nil, mq.ErrClosed
		default:
		}
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		streams := s.streams
		if s.shards != nil {
			var fresh []string
			streams, fresh = s.shards.readable()
			if len(fresh) > 0 {
				ds, err := s.claimFresh(ctx, fresh, limit)
				if err != nil || len(ds) > 0 {
					return ds, err
				}
				continue
			}
			if len(streams) == 0 {
				s.shards.kick()
				if err := s.shards.waitChange(ctx, s.done, s.c.cfg.Block); err != nil {
					return nil, err
				}
				continue
			}
		}
		if ds, err := s.claimIdle(ctx, streams, limit); err != nil || len(ds) > 0 {
			return ds, err
		}
		s.awaitRoom(ctx)
		ds, err := s.read(ctx, streams, limit)
		if err != nil || len(ds) > 0 {
			return s.fromStash(ctx, ds, limit), err
		}
	}
}

// fromStash returns the first limit of the stash followed by ds, and
// stashes the rest. (A read over several streams may return up to COUNT
// entries from each.) Once ctx is done it returns everything: the consumer
// is stopping and hands back what it gets, and a stash left behind would
// be kept alive, unhandled, while the subscription stays open.
func (s *subscription) fromStash(ctx context.Context, ds []mq.Delivery, limit int) []mq.Delivery {
	all := append(s.stash, ds...)
	if len(all) <= limit || ctx.Err() != nil {
		s.stash = nil
		return all
	}
	out := slices.Clone(all[:limit])
	s.stash = slices.Clone(all[limit:])
	return out
}

// claimIdle claims up to max entries of streams that have been idle for
// ClaimIdle (from crashed consumers, or handed back by Nack), every
// ClaimIdle/2 or sooner while an earlier scan stopped at max.
func (s *subscription) claimIdle(ctx context.Context, streams []string, limit int) ([]mq.Delivery, error) {
	every := s.c.cfg.ClaimIdle / 2
	for stream := range s.cursor {
		if !slices.Contains(streams, stream) {
			delete(s.cursor, stream) // a shard given up meanwhile
		}
	}
	if len(s.cursor) == 0 && time.Since(s.lastClaim) < every {
		return nil, nil
	}
	var out []mq.Delivery
	for _, stream := range streams {
		ds, err := s.claim(ctx, stream, s.c.cfg.ClaimIdle, limit-len(out))
		out = append(out, ds...)
		if err != nil {
			return out, err
		}
		if len(out) >= limit {
			return out, nil
		}
	}
	if len(s.cursor) == 0 {
		s.lastClaim = time.Now()
		if time.Since(s.lastPrune) >= pruneEvery {
			s.lastPrune = time.Now()
			for _, stream := range streams {
				s.pruneConsumers(ctx, stream)
			}
		}
	}
	return out, nil
}

// pruneEvery is how often a subscription looks for abandoned consumer names.
const pruneEvery = 10 * time.Minute

// pruneConsumers deletes consumer names of the group that have nothing
// pending and have not been seen for max(10×ClaimIdle, 1h): names of
// crashed consumers, whose entries were claimed by others. Every
// subscription uses a new name, so without this they would pile up with
// every restart. The check for pending entries and the delete are atomic
// (leaveScript); a consumer that was only quiet is recreated by its next
// read and loses nothing.
func (s *subscription) pruneConsumers(ctx context.Context, stream string) {
	cs, err := s.c.client.XInfoConsumers(ctx, stream, s.group).Result()
	if err != nil {
		return
	}
	threshold := max(10*s.c.cfg.ClaimIdle, time.Hour)
	for _, c := range cs {
		if c.Name != s.consumer && c.Pending == 0 && c.Idle > threshold {
			_ = leaveScript.Run(ctx, s.c.client, []string{stream}, s.group, c.Name).Err()
		}
	}
}

// claimFresh claims every pending entry of newly acquired shards, whoever
// holds them: the shard's previous holder is gone or finished.
func (s *subscription) claimFresh(ctx context.Context, streams []string, limit int) ([]mq.Delivery, error) {
	var out []mq.Delivery
	for _, stream := range streams {
		ds, err := s.claim(ctx, stream, 0, limit-len(out))
		out = append(out, ds...)
		if err != nil {
			return out, err
		}
		if _, more := s.cursor[stream]; !more {
			s.shards.claimed(stream)
		}
		if len(out) >= limit {
			break
		}
	}
	return out, nil
}

// claim runs XAUTOCLAIM on one stream from its saved cursor until the scan
// ends or max entries were claimed, and delivers them with Attempt from
// the delivery counts.
func (s *subscription) claim(ctx context.Context, stream string, minIdle time.Duration, limit int) ([]mq.Delivery, error) {
	var msgs []redis.XMessage
	for len(msgs) < limit {
		start := s.cursor[stream]
		if start == "" {
			start = "0-0"
		}
		got, next, deleted, err := s.c.client.XAutoClaimWithDeleted(ctx, &redis.XAutoClaimArgs{
			Stream: stream, Group: s.group, Consumer: s.consumer,
			MinIdle: minIdle, Start: start, Count: int64(limit - len(msgs)),
		}).Result()
		if err != nil {
			if isNoGroup(err) {
				delete(s.cursor, stream)
				return s.deliver(stream, msgs, nil), s.c.createGroup(ctx, []string{stream}, s.group)
			}
			return s.deliver(stream, msgs, nil), fmt.Errorf("redisstream: XAUTOCLAIM %q: %w", stream, mapErr(err))
		}
		if len(deleted) > 0 {
			s.log().Warn("redisstream: pending entries were deleted from the stream (trimmed?) before they were acknowledged; they cannot be delivered",
				"stream", stream, "group", s.group, "ids", deleted)
		}
		msgs = append(msgs, got...)
		if next == "0-0" || next == "" {
			delete(s.cursor, stream)
			break
		}
		s.cursor[stream] = next
	}
	if len(msgs) == 0 {
		return nil, nil
	}
	// Delivery counts (XAUTOCLAIM counted this delivery already).
	counts := map[string]int64{}
	pend, err := s.c.client.XPendingExt(ctx, &redis.XPendingExtArgs{
		Stream: stream, Group: s.group, Start: msgs[0].ID, End: msgs[len(msgs)-1].ID,
		Count: int64(len(msgs)) + 1000, Consumer: s.consumer,
	}).Result()
	if err == nil {
		for _, p := range pend {
			counts[p.ID] = p.RetryCount
		}
	}
	return s.deliver(stream, msgs, counts), nil
}

// roomGap is how long awaitRoom waits for the next settlement before it
// gives up waiting for more room.
const roomGap = time.Millisecond

// awaitRoom waits, before a read, until half the in-flight window is
// free, as long as handlers keep settling deliveries (each within roomGap)
// and more deliveries are unsettled than handlers run at once: one read
// then fetches many entries instead of a read per few freed slots, which
// costs a round trip each, and the handlers do not run dry meanwhile. It
// does not wait when settling stalls (deliveries held back for an
// in-process retry, say), nor when the window is no larger than the
// concurrency.
func (s *subscription) awaitRoom(ctx context.Context) {
	if !s.tooFull() {
		return
	}
	s.waiting.Store(true)
	defer s.waiting.Store(false)
	t := time.NewTimer(roomGap)
	defer t.Stop()
	for s.tooFull() {
		select {
		case <-s.room:
			t.Reset(roomGap)
		case <-t.C:
			return
		case <-ctx.Done():
			return
		case <-s.done:
			return
		}
	}
}

// tooFull reports whether awaitRoom should wait.
func (s *subscription) tooFull() bool {
	if s.window <= 0 {
		return false
	}
	n := int(s.unsettled.Load())
	return n > s.conc && s.window-n < (s.window+1)/2
}

// settled counts a delivery as settled and wakes awaitRoom.
func (s *subscription) settled() {
	s.unsettled.Add(-1)
	if s.waiting.Load() {
		select {
		case s.room <- struct{}{}:
		default:
		}
	}
}

// read runs one XREADGROUP ... > over streams, for as many entries as
// the in-flight window has room for when it starts: often more than limit,
// which was the room when Receive was called (handlers finished since).
// Receive stashes the surplus, which counts against the window.
func (s *subscription) read(ctx context.Context, streams []string, limit int) ([]mq.Delivery, error) {
	args := make([]string, 0, 2*len(streams))
	args = append(args, streams...)
	for range streams {
		args = append(args, ">")
	}
	count := limit
	if s.window > 0 {
		count = max(limit, s.window-int(s.unsettled.Load()))
	}
	res, err := s.rd.read(ctx, s.done, &redis.XReadGroupArgs{
		Group: s.group, Consumer: s.consumer, Streams: args, Count: int64(max(count/len(streams), 1)), Block: s.c.cfg.Block,
	})
	var out []mq.Delivery
	for _, st := range res {
		if s.shards != nil && !s.shards.owns(st.Stream) {
			// The shard was lost while reading: leave its entries
			// pending for the new holder, which claims them at once.
			continue
		}
		out = append(out, s.deliver(st.Stream, st.Messages, nil)...)
	}
	if err != nil {
		if isNoGroup(err) {
			return out, s.c.createGroup(ctx, streams, s.group)
		}
		return out, fmt.Errorf("redisstream: XREADGROUP %q: %w", s.group, mapErr(err))
	}
	return out, nil
}

func (s *subscription) doneReading() {
	s.mu.Lock()
	s.reading = nil
	s.mu.Unlock()
}

func isNoGroup(err error) bool { return err != nil && strings.HasPrefix(err.Error(), "NOGROUP") }

// deliver turns entries into tracked deliveries. counts holds delivery
// counts of claimed entries; nil means fresh entries (Attempt 1).
func (s *subscription) deliver(stream string, msgs []redis.XMessage, counts map[string]int64) []mq.Delivery {
	if len(msgs) == 0 {
		return nil
	}
	out := make([]mq.Delivery, 0, len(msgs))
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, x := range msgs {
		if _, dup := s.held[stream][x.ID]; dup {
			// Claimed back from ourselves (keepAlive ran late): the
			// entry is already being handled here.
			continue
		}
		m := decode(s.topic, x)
		if counts != nil {
			m.Attempt = int(max(counts[x.ID], 2))
		}
		s.track(stream, x.ID)
		out = append(out, &delivery{s: s, stream: stream, id: x.ID, msg: m})
	}
	s.unsettled.Add(int64(len(out)))
	return out
}

// keepAlive resets the idle time of this consumer's unsettled entries every
// ClaimIdle/3, so other members do not claim entries still being handled.
func (s *subscription) keepAlive() {
	defer s.wg.Done()
	t := time.NewTicker(max(s.c.cfg.ClaimIdle/3, 5*time.Millisecond))
	defer t.Stop()
	for {
		select {
		case <-s.done:
			return
		case <-t.C:
		}
		s.mu.Lock()
		batch := map[string][]string{}
		for stream, ids := range s.held {
			for id := range ids {
				batch[stream] = append(batch[stream], id)
			}
		}
		s.mu.Unlock()
		for stream, ids := range batch {
			ctx, cancel := context.WithTimeout(context.Background(), s.c.cfg.ClaimIdle)
			lost, err := s.touch(ctx, stream, 0, ids)
			cancel()
			if err != nil && !errors.Is(err, mq.ErrClosed) {
				s.log().Warn("redisstream: keeping entries alive failed; they may be claimed by another consumer", "stream", stream, "group", s.group, "error", err)
			}
			if len(lost) > 0 {
				s.log().Warn("redisstream: entries being handled were claimed by another consumer (was this process paused longer than claim_idle?); they will be handled twice",
					"stream", stream, "group", s.group, "ids", lost)
			}
		}
	}
}

// touch re-claims ids for this consumer with the given idle time (see
// touchScript) and returns the ids it no longer owns.
func (s *subscription) touch(ctx context.Context, stream string, idle time.Duration, ids []string) ([]string, error) {
	var lost []string
	for len(ids) > 0 {
		chunk := ids[:min(len(ids), 1000)] // Lua's unpack takes a few thousand at most
		ids = ids[len(chunk):]
		args := make([]any, 0, 3+len(chunk))
		args = append(args, s.group, s.consumer, idle.Milliseconds())
		for _, id := range chunk {
			args = append(args, id)
		}
		res, err := touchScript.Run(ctx, s.c.client, []string{stream}, args...).StringSlice()
		if err != nil && !errors.Is(err, redis.Nil) {
			return lost, mapErr(err)
		}
		lost = append(lost, res...)
	}
	return lost, nil
}

// Close implements mq.Subscription: it stops reading and the background
// work, hands entries it still holds back to the group (their idle time
// set to ClaimIdle, so another member claims them at once), releases its
// shards, and deletes its consumer name from the group if nothing is
// pending on it. Idempotent.
func (s *subscription) Close() error {
	s.closeOnce.Do(func() {
		s.mu.Lock()
		s.closed = true
		s.mu.Unlock()
		close(s.done)
		s.wg.Wait()
		s.recvMu.Lock()
		s.rd.close()
		s.stash = nil // still held: handed back below
		s.recvMu.Unlock()

		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		var errs []error
		// Acks first: entries acknowledged must not be handed back (or
		// their shard released) before their XACK was answered.
		s.ackMu.Lock()
		s.ackClosed = true
		s.ackMu.Unlock()
		if b := s.takeAcks(); b != nil {
			s.sendAcks(ctx, b)
			if b.err != nil {
				errs = append(errs, b.err)
			}
		}
		s.mu.Lock()
		held := s.held
		s.held = map[string]map[string]struct{}{}
		s.mu.Unlock()
		for stream, ids := range held {
			if len(ids) == 0 {
				continue
			}
			list := make([]string, 0, len(ids))
			for id := range ids {
				list = append(list, id)
			}
			slices.Sort(list)
			if _, err := s.touch(ctx, stream, s.c.cfg.ClaimIdle, list); err != nil {
				errs = append(errs, fmt.Errorf("redisstream: handing back %d entries of %q: %w", len(list), stream, err))
			}
		}
		if s.shards != nil {
			s.shards.releaseAll(ctx)
		}
		for _, stream := range s.streams {
			if err := leaveScript.Run(ctx, s.c.client, []string{stream}, s.group, s.consumer).Err(); err != nil && !isNoGroup(err) && !errors.Is(err, redis.ErrClosed) {
				s.log().Warn("redisstream: removing the consumer name failed", "stream", stream, "consumer", s.consumer, "error", err)
			}
		}
		s.c.forget(s)
		s.closeErr = errors.Join(errs...)
	})
	return s.closeErr
}

// delivery is one entry delivered to a subscription.
type delivery struct {
	s       *subscription
	stream  string
	id      string
	msg     *mq.Message
	settled atomic.Bool
}

func (d *delivery) Message() *mq.Message { return d.msg }

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
	return d.s.ack(ctx, d.stream, d.id)
}

// ackBatch is a set of acks sent together.
type ackBatch struct {
	ids  map[string][]string // stream -> entry IDs
	n    int
	done chan struct{} // closed when the XACK was answered
	err  error
}

func (s *subscription) ack(ctx context.Context, stream, id string) error {
	s.ackMu.Lock()
	if s.ackClosed {
		// Closed: no loop sends it. Send it now (the entry was handed
		// back at Close, so this XACK may come too late to matter).
		s.ackMu.Unlock()
		b := &ackBatch{ids: map[string][]string{stream: {id}}, n: 1, done: make(chan struct{})}
		s.sendAcks(ctx, b)
		return b.err
	}
	if s.ackNext == nil {
		s.ackNext = &ackBatch{ids: map[string][]string{}, done: make(chan struct{})}
	}
	b := s.ackNext
	b.ids[stream] = append(b.ids[stream], id)
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
	for stream, ids := range b.ids {
		for _, id := range ids {
			delete(s.held[stream], id)
		}
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
		return fmt.Errorf("redisstream: XACK: %w", mapErr(err))
	}
	return nil
}

// Nack leaves the entry pending in the group and makes it look idle for
// ClaimIdle, so the next claim by any member (this one included) takes it
// at once, with its delivery count one higher.
func (d *delivery) Nack(ctx context.Context) error {
	if !d.settled.CompareAndSwap(false, true) {
		return errors.New("redisstream: message already settled")
	}
	d.s.settled()
	d.s.untrack(d.stream, d.id)
	if _, err := d.s.touch(ctx, d.stream, d.s.c.cfg.ClaimIdle, []string{d.id}); err != nil {
		return fmt.Errorf("redisstream: handing back %q %s: %w", d.stream, d.id, err)
	}
	return nil
}

// reader runs blocking XREADGROUPs on a connection of its own, so that a
// cancelled Receive can interrupt the wait with CLIENT UNBLOCK instead of
// waiting for the block time to pass.
type reader struct {
	client redis.UniversalClient
	key    string // a stream key, to find the Cluster node
	block  time.Duration

	node *redis.Client // the server the connection is on; nil: no dedicated connection
	conn *redis.Conn
	id   int64
}

func (r *reader) connect(ctx context.Context) {
	var node *redis.Client
	switch cl := r.client.(type) {
	case *redis.Client:
		node = cl
	case *redis.ClusterClient:
		n, err := cl.MasterForKey(ctx, r.key)
		if err != nil {
			return
		}
		node = n
	default:
		return
	}
	conn := node.Conn()
	id, err := conn.ClientID(ctx).Result()
	if err != nil {
		_ = conn.Close()
		return
	}
	r.node, r.conn, r.id = node, conn, id
}

func (r *reader) close() {
	if r.conn != nil {
		_ = r.conn.Close()
		r.node, r.conn = nil, nil
	}
}

// read runs a blocking XREADGROUP. When ctx is done or stop is closed while
// it waits, it interrupts the wait and returns what the read returned
// (entries delivered in the meantime are not lost: the caller delivers
// them). A timeout gives no entries and no error.
func (r *reader) read(ctx context.Context, stop <-chan struct{}, a *redis.XReadGroupArgs) ([]redis.XStream, error) {
	if r.conn == nil {
		r.connect(ctx)
	}
	var cmd *redis.XStreamSliceCmd
	bg := context.WithoutCancel(ctx)
	if r.conn == nil {
		// No dedicated connection (an unknown client type, or connecting
		// failed): a plain read, not interruptible.
		a.Block = min(a.Block, time.Second)
		cmd = r.client.XReadGroup(bg, a)
	} else {
		done := make(chan struct{})
		conn := r.conn
		go func() {
			defer close(done)
			cmd = conn.XReadGroup(bg, a)
		}()
		select {
		case <-done:
		case <-ctx.Done():
			r.interrupt(done)
		case <-stop:
			r.interrupt(done)
		}
	}
	res, err := cmd.Result()
	if errors.Is(err, redis.Nil) {
		return nil, nil
	}
	if err != nil && r.conn != nil && !isNoGroup(err) {
		// The connection may be broken or point at a server that is no
		// longer the right one: make a new one next time.
		r.close()
	}
	return res, err
}

// interrupt unblocks the read until it returns.
func (r *reader) interrupt(done <-chan struct{}) {
	for {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		_ = r.node.ClientUnblock(ctx, r.id).Err()
		cancel()
		select {
		case <-done:
			return
		case <-time.After(20 * time.Millisecond):
		}
	}
}

var (
	_ mq.Subscription = (*subscription)(nil)
	_ mq.Delivery     = (*delivery)(nil)
)
