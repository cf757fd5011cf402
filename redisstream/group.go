package redisstream

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/mqkit/mq"
)

// This file holds what a Conn tells and does about a topic's consumer
// groups as a whole: Ping, Lag and PartitionLag, DeleteGroup.

// Ping implements mq.Pinger with one PING. A Redis that cannot be reached
// or is not serving, or that does not answer before ctx is done, gives an
// error wrapping mq.ErrUnavailable.
func (c *Conn) Ping(ctx context.Context) error {
	if c.isClosed() {
		return mq.ErrClosed
	}
	err := c.client.Ping(ctx).Err()
	switch {
	case err == nil:
		return nil
	case ctx.Err() != nil:
		return fmt.Errorf("redisstream: PING: %w: %w", mq.ErrUnavailable, ctx.Err())
	}
	return fmt.Errorf("redisstream: PING: %w", c.mapErr(err))
}

// topicStreams returns the stream keys of topic as the topic is laid
// out in Redis (its "{topic}:shards" key, whatever this Conn's Shards
// says), so that lag and group operations see every stream of a topic.
func (c *Conn) topicStreams(ctx context.Context, topic string) ([]string, error) {
	n, err := c.client.Get(ctx, shardCountKey(topic)).Int()
	switch {
	case errors.Is(err, redis.Nil):
		return []string{topic}, nil
	case err != nil:
		return nil, fmt.Errorf("redisstream: reading the shard count of %q: %w", topic, c.mapErr(err))
	case n < 1 || n > maxShards:
		return nil, fmt.Errorf("redisstream: topic %q has a shard count of %d (key %q), not from 1 to %d", topic, n, shardCountKey(topic), maxShards)
	}
	keys := make([]string, n)
	for i := range keys {
		keys[i] = shardKey(topic, i)
	}
	return keys, nil
}

// groupInfo is what XINFO GROUPS tells of one group on one stream.
type groupInfo struct {
	pending       int64
	lag           int64 // -1: Redis cannot tell (before Redis 7, or after deletions)
	lastDelivered string
}

// groupOf returns what XINFO GROUPS says of group on stream, or an error
// wrapping mq.ErrUnknownGroup (and redis.Nil) when the stream or the group
// does not exist.
func (c *Conn) groupOf(ctx context.Context, stream, group string) (groupInfo, error) {
	res, err := c.client.Do(ctx, "XINFO", "GROUPS", stream).Slice()
	if err != nil {
		if strings.Contains(err.Error(), "no such key") {
			return groupInfo{}, fmt.Errorf("redisstream: there is no stream %q: %w (%w)", stream, mq.ErrUnknownGroup, redis.Nil)
		}
		return groupInfo{}, fmt.Errorf("redisstream: XINFO GROUPS %q: %w", stream, c.mapErr(err))
	}
	for _, raw := range res {
		f := replyFields(raw)
		if name, _ := f["name"].(string); name != group {
			continue
		}
		g := groupInfo{lag: -1}
		g.pending, _ = f["pending"].(int64)
		g.lastDelivered, _ = f["last-delivered-id"].(string)
		if lag, ok := f["lag"].(int64); ok {
			g.lag = lag // absent before Redis 7, nil when Redis cannot tell
		}
		return g, nil
	}
	return groupInfo{}, fmt.Errorf("redisstream: stream %q has no group %q: %w (%w)", stream, group, mq.ErrUnknownGroup, redis.Nil)
}

// replyFields returns the fields of one map reply: a map in RESP3, a flat
// list of names and values in RESP2.
func replyFields(raw any) map[string]any {
	out := map[string]any{}
	switch v := raw.(type) {
	case map[any]any:
		for k, x := range v {
			if s, ok := k.(string); ok {
				out[s] = x
			}
		}
	case []any:
		for i := 0; i+1 < len(v); i += 2 {
			if s, ok := v[i].(string); ok {
				out[s] = v[i+1]
			}
		}
	}
	return out
}

// Lag returns, summed over the topic's streams, the group's pending entries
// (delivered and not yet acknowledged) and its lag (entries not yet
// delivered to the group). lag is -1 when Redis cannot tell (before Redis
// 7, or after entries were deleted from the middle of a stream). The
// error wraps mq.ErrUnknownGroup, and redis.Nil, when the topic or the
// group does not exist. PartitionLag tells more, per stream.
func (c *Conn) Lag(ctx context.Context, topic, group string) (pending, lag int64, err error) {
	if c.isClosed() {
		return 0, 0, mq.ErrClosed
	}
	streams, err := c.topicStreams(ctx, topic)
	if err != nil {
		return 0, 0, err
	}
	for _, stream := range streams {
		g, err := c.groupOf(ctx, stream, group)
		if err != nil {
			return 0, 0, err
		}
		pending += g.pending
		if g.lag < 0 || lag < 0 {
			lag = -1
		} else {
			lag += g.lag
		}
	}
	return pending, lag, nil
}

// PartitionLag implements mq.Lagger with one entry per stream of the
// topic (the topic's own, or one per shard, as the topic is laid out in
// Redis), Partition being the stream key: Backlog is the group's lag
// (XINFO GROUPS: entries not yet delivered to it; -1 when Redis cannot
// tell, before Redis 7 or after entries were deleted from the middle of
// the stream), Unacked its pending entries, and OldestAge the age of its
// oldest pending entry or, when none is pending, of the first entry not
// yet delivered to it (0 when there is neither). Ages come from the time
// in the entry IDs, against the clock of Redis (TIME), so an entry whose
// ID a producer chose has the age its ID says. A topic or group that does
// not exist gives an error wrapping mq.ErrUnknownGroup.
func (c *Conn) PartitionLag(ctx context.Context, topic, group string) ([]mq.PartitionLag, error) {
	if c.isClosed() {
		return nil, mq.ErrClosed
	}
	streams, err := c.topicStreams(ctx, topic)
	if err != nil {
		return nil, err
	}
	now, err := c.client.Time(ctx).Result()
	if err != nil {
		return nil, fmt.Errorf("redisstream: TIME: %w", c.mapErr(err))
	}
	out := make([]mq.PartitionLag, 0, len(streams))
	for _, stream := range streams {
		g, err := c.groupOf(ctx, stream, group)
		if err != nil {
			return nil, err
		}
		pl := mq.PartitionLag{Partition: stream, Backlog: g.lag, Unacked: g.pending}
		var oldest string
		if g.pending > 0 {
			p, err := c.client.XPending(ctx, stream, group).Result()
			if err != nil {
				return nil, fmt.Errorf("redisstream: XPENDING %q %q: %w", stream, group, c.mapErr(err))
			}
			oldest = p.Lower
		}
		if oldest == "" && g.lag != 0 {
			start := "-"
			if g.lastDelivered != "" && g.lastDelivered != "0-0" {
				start = "(" + g.lastDelivered
			}
			next, err := c.client.XRangeN(ctx, stream, start, "+", 1).Result()
			if err != nil {
				return nil, fmt.Errorf("redisstream: XRANGE %q: %w", stream, c.mapErr(err))
			}
			if len(next) > 0 {
				oldest = next[0].ID
			}
		}
		if oldest != "" {
			if ms, ok := entryMillis(oldest); ok {
				pl.OldestAge = max(now.Sub(time.UnixMilli(ms)), 0)
			}
		}
		out = append(out, pl)
	}
	slices.SortFunc(out, func(a, b mq.PartitionLag) int { return strings.Compare(a.Partition, b.Partition) })
	return out, nil
}

// entryMillis returns the time part of an entry ID.
func entryMillis(id string) (int64, bool) {
	ms, _, _ := strings.Cut(id, "-")
	n, err := strconv.ParseInt(ms, 10, 64)
	return n, err == nil
}

// DeleteGroup implements mq.GroupDeleter: XGROUP DESTROY of group on every
// stream of the topic, which drops its pending entries, and, for a
// sharded topic, the group's lease keys and members set. A group that
// does not exist is nil.
//
// It refuses, with an error wrapping mq.ErrGroupActive, while a member may
// be running, by what Redis shows: a consumer of the group that was seen
// (XINFO CONSUMERS idle) less than ClaimIdle ago, unless each of its
// pending entries has been idle for ClaimIdle, as a closed subscription
// leaves those it handed back (a running one keeps every entry it holds
// from being idle that long); and, on a sharded topic, a shard lease of
// the group or a member whose membership has not expired. A crashed
// consumer therefore blocks the delete for up to ClaimIdle (ShardLease on
// a sharded topic), and this Conn's ClaimIdle should be the consumers'.
// A member that starts between the check and the delete creates the
// group again: stop the group's consumers first.
func (c *Conn) DeleteGroup(ctx context.Context, topic, group string) error {
	if c.isClosed() {
		return mq.ErrClosed
	}
	streams, err := c.topicStreams(ctx, topic)
	if err != nil {
		return err
	}
	var exists []string
	for _, stream := range streams {
		cs, err := c.client.XInfoConsumers(ctx, stream, group).Result()
		if err != nil {
			if isNoGroup(err) || strings.Contains(err.Error(), "no such key") {
				continue
			}
			return fmt.Errorf("redisstream: XINFO CONSUMERS %q %q: %w", stream, group, c.mapErr(err))
		}
		exists = append(exists, stream)
		for _, cons := range cs {
			live, err := c.consumerLive(ctx, stream, group, cons)
			if err != nil {
				return err
			}
			if live {
				return fmt.Errorf("redisstream: %w: consumer %q of group %q on %q was seen %v ago (claim_idle %v); stop the group's consumers and try again",
					mq.ErrGroupActive, cons.Name, group, stream, cons.Idle.Round(time.Millisecond), c.cfg.ClaimIdle)
			}
		}
	}
	var shardKeys []string
	if len(streams) > 1 || streams[0] != topic {
		membersKey := "{" + topic + "}:members:" + group
		leases := make([]string, len(streams))
		for i := range leases {
			leases[i] = "{" + topic + "}:lease:" + group + ":" + strconv.Itoa(i)
		}
		now, err := c.client.Time(ctx).Result()
		if err != nil {
			return fmt.Errorf("redisstream: TIME: %w", c.mapErr(err))
		}
		pipe := c.client.Pipeline()
		live := pipe.ZCount(ctx, membersKey, "("+strconv.FormatInt(now.UnixMilli(), 10), "+inf")
		held := pipe.Exists(ctx, leases...)
		if _, err := pipe.Exec(ctx); err != nil {
			return fmt.Errorf("redisstream: reading the shard leases of group %q on %q: %w", group, topic, c.mapErr(err))
		}
		if live.Val() > 0 || held.Val() > 0 {
			return fmt.Errorf("redisstream: %w: group %q on %q has %d live members and %d shard leases; stop its consumers and try again (leases expire after shard_lease)",
				mq.ErrGroupActive, group, topic, live.Val(), held.Val())
		}
		shardKeys = append(leases, membersKey)
	}
	pipe := c.client.Pipeline()
	destroys := make([]*redis.IntCmd, len(exists))
	for i, stream := range exists {
		destroys[i] = pipe.XGroupDestroy(ctx, stream, group)
	}
	if len(shardKeys) > 0 {
		pipe.Del(ctx, shardKeys...)
	}
	if len(exists) == 0 && len(shardKeys) == 0 {
		return nil
	}
	if _, err := pipe.Exec(ctx); err != nil {
		for i, cmd := range destroys {
			if err := cmd.Err(); err != nil && !strings.Contains(err.Error(), "no such key") {
				return fmt.Errorf("redisstream: XGROUP DESTROY %q %q: %w", exists[i], group, c.mapErr(err))
			}
		}
		return fmt.Errorf("redisstream: deleting group %q of %q: %w", group, topic, c.mapErr(err))
	}
	return nil
}

// consumerLive reports whether a consumer of the group may still be
// running (see DeleteGroup).
func (c *Conn) consumerLive(ctx context.Context, stream, group string, cons redis.XInfoConsumer) (bool, error) {
	idle := c.cfg.ClaimIdle
	if cons.Idle >= idle {
		return false, nil
	}
	if cons.Pending == 0 || cons.Pending > 10000 {
		return true, nil
	}
	// Were all of its pending entries handed back? XPENDING ... IDLE
	// lists those idle for at least ClaimIdle.
	handedBack, err := c.client.XPendingExt(ctx, &redis.XPendingExtArgs{
		Stream: stream, Group: group, Idle: idle, Start: "-", End: "+", Count: cons.Pending, Consumer: cons.Name,
	}).Result()
	if err != nil {
		return false, fmt.Errorf("redisstream: XPENDING %q %q %q: %w", stream, group, cons.Name, c.mapErr(err))
	}
	return int64(len(handedBack)) < cons.Pending, nil
}

var (
	_ mq.GroupDeleter = (*Conn)(nil)
	_ mq.Lagger       = (*Conn)(nil)
	_ mq.Pinger       = (*Conn)(nil)
)
