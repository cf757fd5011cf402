package redisstream

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/mqkit/mq"
)

// read runs one XREADGROUP ... > over streams (for shards, fenced by their
// leases: see readShards), for as many entries as
// the in-flight window has room for when it starts: often more than limit,
// which was the room when Receive was called (handlers finished since).
// Receive stashes the surplus, which counts against the window. After a
// failed read the streams' pending history is read again before new
// entries (see readHistory): Redis may have served the read, adding its
// entries to this consumer's pending list, without the reply arriving.
func (s *subscription) read(ctx context.Context, streams []string, limit int, acqs map[string]*shardState) ([]mq.Delivery, error) {
	args := make([]string, 0, 2*len(streams))
	args = append(args, streams...)
	for range streams {
		args = append(args, ">")
	}
	count := limit
	if s.window > 0 {
		count = max(limit, s.window-int(s.unsettled.Load()))
	}
	block := s.c.cfg.Block
	if s.shards == nil {
		// Entries are fenced from the time the read is sent (see
		// generation): a read must not wait so long that they are due
		// before they arrive.
		block = min(block, s.c.cfg.ClaimIdle/2)
	}
	sent := time.Now()
	perStream := int64(max(count/len(streams), 1))
	var res []redis.XStream
	var err error
	if s.shards != nil {
		res, err = s.readShards(ctx, streams, perStream, acqs)
	} else {
		res, err = s.rd.read(ctx, s.done, &redis.XReadGroupArgs{
			Group: s.group, Consumer: s.consumer, Streams: args, Count: perStream, Block: block,
		})
	}
	var out []mq.Delivery
	for _, st := range res {
		// Entries of a shard lost while reading are left pending for its
		// next holder, which claims them when it takes the shard.
		out = append(out, s.deliver(st.Stream, st.Messages, nil, sent, acqs[st.Stream], false)...)
	}
	if err != nil {
		for _, stream := range streams {
			s.history[stream] = "0"
		}
		if isNoGroup(err) {
			return out, s.c.createGroup(ctx, streams, s.group)
		}
		return out, fmt.Errorf("redisstream: XREADGROUP %q: %w", s.group, s.c.mapErr(err))
	}
	return out, nil
}

// historyMin and historyPage bound how many pending entries one history
// read asks for: what Receive has room for, but at least historyMin (the
// entries it holds are skipped, and paging through them one round trip
// per few entries would be slow; the surplus is stashed).
const (
	historyMin  = 100
	historyPage = 1000
)

// readHistory reads this consumer's own pending entries (XREADGROUP ... 0,
// paging) of the streams whose history is due, skipping those it holds,
// and delivers them. History is due at the start, after a failed read or
// claim (the entries of a command that Redis ran while its reply was lost
// are pending for this consumer, and it never saw them), and after a
// generation was fenced. Reading it before new entries keeps each key's
// entries in stream order across broker restarts; otherwise they would
// come back only by XAUTOCLAIM, after ClaimIdle, behind later entries of
// the same keys. Redis counts a delivery for each entry read this way (and
// resets its idle time); as the entry was delivered before, Attempt is one
// less than that count, at least 1.
func (s *subscription) readHistory(ctx context.Context, streams []string, limit int, acqs map[string]*shardState) ([]mq.Delivery, error) {
	s.mu.Lock()
	if s.reread {
		s.reread = false
		for _, stream := range s.streams {
			s.history[stream] = "0"
		}
	}
	s.mu.Unlock()
	if len(s.history) == 0 {
		return nil, nil
	}
	for stream := range s.history {
		if !slices.Contains(streams, stream) {
			delete(s.history, stream) // a shard given up: its next holder claims what is pending
		}
	}
	var out []mq.Delivery
	for _, stream := range streams {
		for len(out) < limit {
			start, due := s.history[stream]
			if !due {
				break
			}
			sent := time.Now()
			cl, err := s.rd.cmd(ctx)
			if err != nil {
				return out, fmt.Errorf("redisstream: connecting to read the pending history: %w", s.c.mapErr(err))
			}
			res, err := cl.XReadGroup(ctx, &redis.XReadGroupArgs{
				Group: s.group, Consumer: s.consumer, Streams: []string{stream, start},
				Count: int64(min(max(limit-len(out), historyMin), historyPage)), Block: -1,
			}).Result()
			s.rd.done(err)
			if err != nil && !errors.Is(err, redis.Nil) {
				if isNoGroup(err) {
					delete(s.history, stream)
					return out, s.c.createGroup(ctx, []string{stream}, s.group)
				}
				return out, fmt.Errorf("redisstream: XREADGROUP %q %q %s (pending history): %w", stream, s.group, start, s.c.mapErr(err))
			}
			var msgs []redis.XMessage
			if len(res) > 0 {
				msgs = res[0].Messages
			}
			if len(msgs) == 0 {
				delete(s.history, stream)
				break
			}
			s.history[stream] = msgs[len(msgs)-1].ID
			live := msgs[:0:0]
			var gone []string
			for _, x := range msgs {
				if x.Values == nil {
					gone = append(gone, x.ID)
					continue
				}
				live = append(live, x)
			}
			if len(gone) > 0 {
				s.log().Warn("redisstream: pending entries were deleted from the stream (trimmed?) before they were acknowledged; they cannot be delivered",
					"stream", stream, "group", s.group, "ids", gone)
			}
			if len(live) == 0 {
				continue
			}
			attempts := s.attempts(ctx, stream, live, -1, 1)
			out = append(out, s.deliver(stream, live, attempts, sent, acqs[stream], true)...)
		}
		if len(out) >= limit {
			break
		}
	}
	return out, nil
}

// attempts returns the Attempt of claimed or re-read entries: their
// delivery count in the group (XPENDING) plus adjust, at least floor. On
// error it returns nil: the caller's default.
func (s *subscription) attempts(ctx context.Context, stream string, msgs []redis.XMessage, adjust, floor int) map[string]int {
	if len(msgs) == 0 {
		return nil
	}
	pend, err := s.c.client.XPendingExt(ctx, &redis.XPendingExtArgs{
		Stream: stream, Group: s.group, Start: msgs[0].ID, End: msgs[len(msgs)-1].ID,
		Count: int64(len(msgs)) + 1000, Consumer: s.consumer,
	}).Result()
	if err != nil {
		return nil
	}
	out := make(map[string]int, len(pend))
	for _, p := range pend {
		out[p.ID] = max(int(p.RetryCount)+adjust, floor)
	}
	return out
}

func (s *subscription) doneReading() {
	s.mu.Lock()
	s.reading = nil
	s.mu.Unlock()
}

func isNoGroup(err error) bool { return err != nil && strings.HasPrefix(err.Error(), "NOGROUP") }

// deliver turns entries into tracked deliveries. attempts holds the
// Attempt of claimed or re-read entries (missing: 2); nil means new
// entries (Attempt 1). sent is when the command that delivered them was
// sent, which bounds how long they are this subscription's (see
// generation). For a sharded topic acq is the acquisition of the shard
// the command was sent under: if it has ended, nothing is delivered (the
// entries stay pending for the shard's next holder, which claims them).
//
// Entries that are not from the pending history are not delivered either
// while the history is due (a generation was fenced, or a command failed,
// while the command that returned them was under way): they are pending
// for this consumer, after the history entries, so the history read
// delivers them in order. Receive's caller holds recvMu.
func (s *subscription) deliver(stream string, msgs []redis.XMessage, attempts map[string]int, sent time.Time, acq *shardState, history bool) []mq.Delivery {
	if len(msgs) == 0 {
		return nil
	}
	var lost chan struct{}
	if s.shards != nil {
		ss := s.shards
		ss.mu.Lock()
		defer ss.mu.Unlock()
		if acq == nil || acq.ended || ss.owned[stream] != acq {
			return nil
		}
		lost = acq.lost
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if !history {
		if _, due := s.history[stream]; due || s.reread {
			if !due {
				s.history[stream] = "0"
			}
			return nil
		}
	}
	if s.shards == nil {
		g := s.genLocked(sent)
		if g == nil {
			return nil
		}
		lost = g.lost
	}
	out := make([]mq.Delivery, 0, len(msgs))
	for _, x := range msgs {
		if _, dup := s.held[stream][x.ID]; dup {
			// Claimed or re-read while held (keepAlive ran late, or a
			// history read): the entry is already being handled here.
			continue
		}
		m := decode(s.topic, stream, x)
		if attempts != nil {
			m.Attempt = 2
			if n, ok := attempts[x.ID]; ok {
				m.Attempt = n
			}
		}
		d := &delivery{s: s, stream: stream, id: x.ID, msg: m, lost: lost}
		s.track(d)
		out = append(out, d)
	}
	s.unsettled.Add(int64(len(out)))
	return out
}
