package redisstream

import (
	"context"
	"fmt"
	"slices"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/mqkit/mq"
)

// claimIdle claims up to max entries of streams that have been idle for
// ClaimIdle (from crashed consumers, or handed back by Nack), every
// ClaimIdle/2 or sooner while an earlier scan stopped at max.
func (s *subscription) claimIdle(ctx context.Context, streams []string, limit int, acqs map[string]*shardState) ([]mq.Delivery, error) {
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
		ds, err := s.claim(ctx, stream, s.c.cfg.ClaimIdle, limit-len(out), acqs[stream])
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
func (s *subscription) claimFresh(ctx context.Context, streams []string, limit int, acqs map[string]*shardState) ([]mq.Delivery, error) {
	var out []mq.Delivery
	for _, stream := range streams {
		ds, err := s.claim(ctx, stream, 0, limit-len(out), acqs[stream])
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
// the delivery counts. After a failed claim the stream's pending history
// is read again (see readHistory): Redis may have claimed entries for
// this consumer without the reply arriving.
func (s *subscription) claim(ctx context.Context, stream string, minIdle time.Duration, limit int, acq *shardState) ([]mq.Delivery, error) {
	sent := time.Now()
	var msgs []redis.XMessage
	for len(msgs) < limit {
		start := s.cursor[stream]
		if start == "" {
			start = "0-0"
		}
		cl, err := s.rd.cmd(ctx)
		if err != nil {
			return s.deliver(stream, msgs, s.attempts(ctx, stream, msgs, 0, 2), sent, acq, false), fmt.Errorf("redisstream: connecting to claim entries: %w", s.c.mapErr(err))
		}
		got, next, deleted, err := cl.XAutoClaimWithDeleted(ctx, &redis.XAutoClaimArgs{
			Stream: stream, Group: s.group, Consumer: s.consumer,
			MinIdle: minIdle, Start: start, Count: int64(limit - len(msgs)),
		}).Result()
		s.rd.done(err)
		if err != nil {
			s.history[stream] = "0"
			if isNoGroup(err) {
				delete(s.cursor, stream)
				return s.deliver(stream, msgs, s.attempts(ctx, stream, msgs, 0, 2), sent, acq, false), s.c.createGroup(ctx, []string{stream}, s.group)
			}
			return s.deliver(stream, msgs, s.attempts(ctx, stream, msgs, 0, 2), sent, acq, false), fmt.Errorf("redisstream: XAUTOCLAIM %q: %w", stream, s.c.mapErr(err))
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
	return s.deliver(stream, msgs, s.attempts(ctx, stream, msgs, 0, 2), sent, acq, false), nil
}
