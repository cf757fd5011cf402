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
		held:     map[string]map[string]*delivery{},
		cursor:   map[string]string{},
		history:  map[string]string{},
		ackLimit: max(opts.MaxInFlight, 16),
		window:   opts.MaxInFlight,
		conc:     opts.Concurrency,
		room:     make(chan struct{}, 1),
		ackWake:  make(chan struct{}, 1),
		done:     make(chan struct{}),
	}
	s.rd = &reader{client: c.client, key: streams[0]}
	if c.cfg.Shards > 0 {
		s.shards = newShardSet(s)
	} else {
		// A consumer name is new to the group, so its pending history is
		// empty; reading it costs one round trip and keeps Receive's
		// invariant simple: history before new entries.
		s.history[streams[0]] = "0"
	}
	// The topic's mover of delayed messages, before the subscription is
	// in the set that Conn.Close closes, whose Close releases it.
	s.mover = c.acquireMover(topic)
	if !c.subs.Add(s) {
		c.releaseMover(s.mover)
		return nil, mq.ErrClosed // nothing else started yet: nothing to close
	}

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
			return fmt.Errorf("redisstream: XGROUP CREATE %q %q: %w", streams[i], group, c.mapErr(err))
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
	mover    *mover // the Conn's mover of the topic's delayed messages, shared (delay.go)

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
	history   map[string]string // stream -> where to go on reading this consumer's pending history (see readHistory)

	mu      sync.Mutex
	held    map[string]map[string]*delivery // stream -> ID -> delivered and not settled, or its XACK not answered yet
	reading []string                        // streams of the XREADGROUP in progress
	inRecv  bool                            // a Receive is running
	endRecv time.Time                       // when the last Receive returned
	closed  bool
	gen     *generation // the ownership of entries delivered lately (unsharded topics); nil: none yet or fenced
	reread  bool        // a generation was fenced: read the pending history again

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

// track records d as held. s.mu is held.
func (s *subscription) track(d *delivery) {
	m := s.held[d.stream]
	if m == nil {
		m = map[string]*delivery{}
		s.held[d.stream] = m
	}
	m[d.id] = d
}

// untrack forgets d, unless its entry is held by a later delivery.
func (s *subscription) untrack(d *delivery) {
	s.mu.Lock()
	s.untrackLocked(d)
	s.mu.Unlock()
}

func (s *subscription) untrackLocked(d *delivery) {
	if s.held[d.stream][d.id] == d {
		delete(s.held[d.stream], d.id)
	}
}

// Receive implements mq.Subscription. Entries of this consumer's own
// pending history (when due: see readHistory) come first, then entries
// claimed from the group, then new ones; new entries of one stream come
// in stream order.
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
		var acqs map[string]*shardState
		if s.shards != nil {
			var fresh []string
			streams, fresh, acqs = s.shards.readable()
			if len(fresh) > 0 {
				ds, err := s.claimFresh(ctx, fresh, limit, acqs)
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
		// The history before claims too: a history read counts a
		// delivery of every entry it returns, held ones included, and
		// an entry just claimed would be counted twice.
		if ds, err := s.readHistory(ctx, streams, limit, acqs); err != nil || len(ds) > 0 {
			return s.fromStash(ctx, ds, limit), err
		}
		if ds, err := s.claimIdle(ctx, streams, limit, acqs); err != nil || len(ds) > 0 {
			return ds, err
		}
		s.awaitRoom(ctx)
		ds, err := s.read(ctx, streams, limit, acqs)
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

// Close implements mq.Subscription: it stops reading and the background
// work, hands entries it still holds back to the group (their idle time
// set to ClaimIdle, so another member claims them at once), releases its
// shards, ends the Lost channels of its deliveries, and deletes its
// consumer name from the group if nothing is pending on it. Idempotent.
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
		s.held = map[string]map[string]*delivery{}
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
		// Handed back: the deliveries still out (the portable consumer nacks
		// every one before Close) are lost to this subscription.
		s.mu.Lock()
		if s.gen != nil {
			s.gen.end()
			s.gen = nil
		}
		s.mu.Unlock()
		if s.shards != nil {
			s.shards.releaseAll(ctx)
		}
		for _, stream := range s.streams {
			if err := leaveScript.Run(ctx, s.c.client, []string{stream}, s.group, s.consumer).Err(); err != nil && !isNoGroup(err) && !errors.Is(err, redis.ErrClosed) {
				s.log().Warn("redisstream: removing the consumer name failed", "stream", stream, "consumer", s.consumer, "error", err)
			}
		}
		s.c.forget(s)
		s.c.releaseMover(s.mover)
		s.closeErr = errors.Join(errs...)
	})
	return s.closeErr
}
