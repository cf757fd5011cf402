package redisstream

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"math"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/mqkit/mq"
	"github.com/mqkit/mq/internal/backoff"
)

// This file holds delayed delivery (mq.Scheduler): a message due later
// waits in a sorted set of its topic, scored by due time, and a mover of
// every subscription of the topic moves due ones into the topic's streams
// with one Lua script (see the package documentation, "Delayed
// delivery").

const (
	// movePoll is the longest a mover sleeps between two looks at the
	// schedule: messages scheduled by other processes (whose Schedule
	// cannot wake it) are noticed within it.
	movePoll = 200 * time.Millisecond
	// moveCount and moveBytes bound one run of the move script, which
	// blocks Redis while it runs: at most this many entries and, beyond
	// the first, about this many payload bytes.
	moveCount = 256
	moveBytes = 4 << 20
	// scheduleChunk bounds the messages of one MULTI/EXEC of Schedule.
	scheduleChunk = 500
	// maxDelayedHeaders bounds the headers of a scheduled message: the
	// move script passes an entry's fields to XADD as arguments of one
	// call, and Lua's stack takes about 8,000.
	maxDelayedHeaders = 3000
)

// delayKeys are the Redis keys of a topic's schedule. All live in the
// hash slot of the topic's streams, so the move script may touch them
// and the streams together on a Redis Cluster.
type delayKeys struct {
	schedule string // sorted set: member -> due time (unix ms, rounded up)
	payloads string // hash: member -> the entry's fields
	aside    string // hash: member -> payload of members that cannot be moved
	// sameSlot is false when these keys and the topic's streams are not
	// all in one hash slot: an unsharded topic whose name has a '}' but
	// no hash tag of its own (no other key name shares its slot by a hash
	// tag), or a sharded one whose name starts with '}' (its shard keys
	// "{}...}:N" have no tag). On a Redis Cluster such a topic cannot
	// have delayed delivery.
	sameSlot bool
}

// delayKeysOf returns the schedule keys of topic, whose streams are
// streams (Conn.StreamKeys). They start with the prefix "{topic}" of the
// shard streams (sharded topics), or the one of the same hash slot as the
// stream named topic: "{topic}" too for a topic without braces,
// "{TAG}:topic" for a topic with the hash tag {TAG}.
func delayKeysOf(topic string, streams []string) delayKeys {
	base := "{" + topic + "}"
	tag := hashTag(streams[0])
	if len(streams) == 1 && streams[0] == topic && hashTag(base+":delay") != tag {
		base = "{" + tag + "}:" + topic
	}
	k := delayKeys{
		schedule: base + ":delay",
		payloads: base + ":delay:msgs",
		aside:    base + ":delay:aside",
	}
	k.sameSlot = hashTag(k.schedule) == tag && hashTag(k.payloads) == tag && hashTag(k.aside) == tag
	for _, s := range streams {
		k.sameSlot = k.sameSlot && hashTag(s) == tag
	}
	return k
}

// hashTag returns the part of key that Redis Cluster hashes: the text
// between its first '{' and the first '}' after it, if not empty, else the
// whole key.
func hashTag(key string) string {
	i := strings.IndexByte(key, '{')
	if i < 0 {
		return key
	}
	j := strings.IndexByte(key[i+1:], '}')
	if j <= 0 {
		return key
	}
	return key[i+1 : i+1+j]
}

// delayEntry returns the schedule member and payload of m, bound for
// shard. The member is "SHARD:DUE_NS:DIGEST:ID" (the move script reads
// SHARD; Scheduled reads DUE_NS); the payload is the stream entry's
// fields as Send writes them (id first, headers sorted), each a netstring
// without the trailing comma: "LEN:BYTES". The digest covers both, so
// the same message scheduled again (a retried Schedule) is stored once,
// while a message with the same ID and other content or due time is
// another entry.
func delayEntry(m *mq.Message, shard int) (member, payload string) {
	var b strings.Builder
	b.Grow(encodedSize(m) + 16 + 8*len(m.Headers))
	put := func(s string) {
		b.WriteString(strconv.Itoa(len(s)))
		b.WriteByte(':')
		b.WriteString(s)
	}
	put(FieldID)
	put(m.ID)
	if m.Key != "" {
		put(FieldKey)
		put(m.Key)
	}
	names := make([]string, 0, len(m.Headers))
	for k := range m.Headers {
		names = append(names, k)
	}
	slices.Sort(names)
	for _, k := range names {
		put(HeaderPrefix + k)
		put(m.Headers[k])
	}
	if len(m.Body) > 0 {
		put(FieldBody)
		put(string(m.Body))
	}
	payload = b.String()
	due := strconv.FormatInt(m.DeliverAt.UnixNano(), 10)
	prefix := strconv.Itoa(shard) + ":" + due + ":"
	h := sha256.New()
	h.Write([]byte(prefix))
	h.Write([]byte(payload))
	sum := h.Sum(nil)
	return prefix + hex.EncodeToString(sum[:8]) + ":" + m.ID, payload
}

// dueScore returns t in unix milliseconds, rounded up: a mover whose
// clock (in whole milliseconds, rounded down) has reached the score is
// past t.
func dueScore(t time.Time) int64 {
	ns := t.UnixNano()
	ms := ns / 1e6
	if ns%1e6 > 0 {
		ms++
	}
	return ms
}

// Schedule implements mq.Scheduler: each message is a member of the
// topic's schedule (a sorted set scored by due time) with its stream
// entry's fields in a hash, both written in one MULTI/EXEC per up to 500
// messages. It returns after every EXEC was answered (and, with
// WaitReplicas, acknowledged by that many replicas): with the persistence
// Redis is configured for, as durable as Send.
func (c *Conn) Schedule(ctx context.Context, topic string, msgs []*mq.Message) error {
	if c.isClosed() {
		return mq.ErrClosed
	}
	for _, m := range msgs {
		if n := encodedSize(m); n > c.cfg.MaxMessageBytes {
			return fmt.Errorf("%w: message %s is %d bytes encoded, the limit is %d", mq.ErrMessageTooLarge, m.ID, n, c.cfg.MaxMessageBytes)
		}
		if len(m.Headers) > maxDelayedHeaders {
			return fmt.Errorf("%w: message %s has %d headers; a delayed message may have at most %d", mq.ErrInvalidMessage, m.ID, len(m.Headers), maxDelayedHeaders)
		}
	}
	if err := c.checkTopic(ctx, topic); err != nil {
		return err
	}
	keys := delayKeysOf(topic, c.StreamKeys(topic))
	if err := c.checkDelaySlot(topic, keys); err != nil {
		return err
	}
	earliest := int64(-1)
	for start := 0; start < len(msgs); start += scheduleChunk {
		chunk := msgs[start:min(start+scheduleChunk, len(msgs))]
		queue := func(pipe redis.Pipeliner) error {
			for _, m := range chunk {
				shard := 0
				if c.cfg.Shards > 0 {
					shard = shardOf(m, c.cfg.Shards)
				}
				member, payload := delayEntry(m, shard)
				score := dueScore(m.DeliverAt)
				if earliest < 0 || score < earliest {
					earliest = score
				}
				pipe.HSet(ctx, keys.payloads, member, payload)
				pipe.ZAdd(ctx, keys.schedule, redis.Z{Score: float64(score), Member: member})
			}
			return nil
		}
		var err error
		if c.cfg.WaitReplicas > 0 {
			err = c.execReplicated(ctx, keys.schedule, queue)
		} else {
			cmds, terr := c.client.TxPipelined(ctx, queue)
			if terr = txCause(cmds, terr); terr != nil {
				err = c.mapErr(terr)
			}
		}
		if err != nil {
			return fmt.Errorf("redisstream: scheduling on %q failed (%d messages scheduled before this batch): %w", topic, start, err)
		}
	}
	if earliest >= 0 {
		c.wakeMover(topic, earliest)
	}
	return nil
}

// checkDelaySlot refuses delayed delivery on a Redis Cluster for a topic
// whose schedule cannot share its stream's slot.
func (c *Conn) checkDelaySlot(topic string, keys delayKeys) error {
	if keys.sameSlot {
		return nil
	}
	if _, cluster := c.client.(*redis.ClusterClient); !cluster {
		return nil
	}
	return fmt.Errorf("%w: the name of topic %q puts its schedule and its streams in different hash slots of the Redis Cluster (a '}' without a hash tag, or a sharded name starting with '}'); use a name without braces or with a hash tag {TAG}", mq.ErrDelayUnsupported, topic)
}

// Scheduled implements mq.Scheduler: Waiting is the size of the topic's
// schedule (ZCARD) and NextDue the due time of its first member. Members
// that the mover sets aside (see the package documentation) count until
// it has done so.
func (c *Conn) Scheduled(ctx context.Context, topic string) (mq.ScheduleStats, error) {
	if c.isClosed() {
		return mq.ScheduleStats{}, mq.ErrClosed
	}
	keys := delayKeysOf(topic, c.StreamKeys(topic))
	pipe := c.client.Pipeline()
	card := pipe.ZCard(ctx, keys.schedule)
	first := pipe.ZRangeWithScores(ctx, keys.schedule, 0, 0)
	if _, err := pipe.Exec(ctx); err != nil {
		return mq.ScheduleStats{}, c.mapErr(err)
	}
	st := mq.ScheduleStats{Waiting: card.Val()}
	if z := first.Val(); len(z) > 0 {
		st.NextDue = memberDue(fmt.Sprint(z[0].Member), z[0].Score)
	}
	return st, nil
}

// memberDue returns the due time a member carries, or score's when it
// carries none (a member not written by Schedule).
func memberDue(member string, score float64) time.Time {
	parts := strings.SplitN(member, ":", 3)
	if len(parts) == 3 {
		if ns, err := strconv.ParseInt(parts[1], 10, 64); err == nil {
			return time.Unix(0, ns)
		}
	}
	return time.UnixMilli(int64(score))
}

// moveScript moves the due entries of a topic's schedule into its
// streams. KEYS[1] is the schedule (sorted set), KEYS[2] the payloads
// (hash), KEYS[3] the hash of members set aside, KEYS[4..] the topic's
// streams by shard. ARGV[1] is now (unix ms), ARGV[2] the most entries,
// ARGV[3] the payload bytes after which no further entry is taken,
// ARGV[4] and ARGV[5] the trimming of XADD ("" for none, MAXLEN or MINID,
// and its threshold).
//
// Each due member (by score, oldest first) is parsed: its shard from the
// member, its fields from the payload. A good one is XADDed to its
// shard's stream; one that cannot be (a foreign member, no payload, a
// garbled payload, one of more fields than one XADD call may take in Lua)
// is copied to KEYS[3]. Either way it leaves the
// schedule and the payloads in the same step, so concurrent movers never
// move one twice nor skip one, and a bad member cannot block the ones
// behind it. It returns the count moved, the score of the first member
// left (or ""), and the members set aside.
//
// A failing XADD (a key of the wrong type, out of memory) raises: the
// entries moved before it stay moved, it and the rest stay scheduled.
var moveScript = redis.NewScript(`
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
local nstreams = #KEYS - 3
local budget = tonumber(ARGV[3])
local moved, bytes, aside = 0, 0, {}
for _, m in ipairs(due) do
  if moved > 0 and bytes >= budget then
    break
  end
  local p = redis.call('HGET', KEYS[2], m)
  local shard = tonumber(string.match(m, '^(%d%d?%d?%d?):'))
  local args = nil
  if p and shard then
    args = {'XADD', KEYS[4 + shard % nstreams]}
    if ARGV[4] ~= '' then
      args[#args + 1] = ARGV[4]
      args[#args + 1] = '~'
      args[#args + 1] = ARGV[5]
    end
    args[#args + 1] = '*'
    local first = #args + 1
    local pos, n = 1, #p
    while pos <= n do
      local digits = string.match(p, '^(%d%d?%d?%d?%d?%d?%d?%d?%d?%d?):', pos)
      if not digits then
        args = nil
        break
      end
      local from = pos + #digits + 1
      local len = tonumber(digits)
      if from + len - 1 > n then
        args = nil
        break
      end
      args[#args + 1] = string.sub(p, from, from + len - 1)
      pos = from + len
    end
    if args and (#args < first + 1 or #args > 7000 or (#args - first + 1) % 2 ~= 0 or args[first] ~= 'id' or args[first + 1] == '') then
      args = nil
    end
  end
  if args then
    redis.call(unpack(args))
    moved = moved + 1
    bytes = bytes + #p
  else
    redis.call('HSET', KEYS[3], m, p or '')
    aside[#aside + 1] = m
  end
  redis.call('ZREM', KEYS[1], m)
  redis.call('HDEL', KEYS[2], m)
end
local nxt = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
return {moved, nxt[2] or '', aside}
`)

// mover moves the due messages of one topic for a Conn. The Conn's
// subscriptions of the topic share it (refs); the last one to close stops
// it and waits for it.
type mover struct {
	c     *Conn
	topic string
	keys  []string // the move script's KEYS

	refs int           // subscriptions using it; guarded by c.moversMu
	next atomic.Int64  // unix ms at which it looks at the schedule next by itself
	wake chan struct{} // buffered(1): a Schedule of this Conn added an earlier entry
	stop chan struct{}
	done chan struct{}
}

// acquireMover returns the topic's mover, started if it is the first
// subscription of the topic on this Conn. It returns nil when the topic
// cannot have delayed delivery on this deployment (see checkDelaySlot).
func (c *Conn) acquireMover(topic string) *mover {
	keys := delayKeysOf(topic, c.StreamKeys(topic))
	if c.checkDelaySlot(topic, keys) != nil {
		return nil
	}
	c.moversMu.Lock()
	defer c.moversMu.Unlock()
	if c.movers == nil {
		c.movers = map[string]*mover{}
	}
	mv := c.movers[topic]
	if mv == nil {
		mv = &mover{
			c:     c,
			topic: topic,
			keys:  append([]string{keys.schedule, keys.payloads, keys.aside}, c.StreamKeys(topic)...),
			wake:  make(chan struct{}, 1),
			stop:  make(chan struct{}),
			done:  make(chan struct{}),
		}
		mv.next.Store(math.MaxInt64) // any Schedule wakes it until it has looked
		c.movers[topic] = mv
		go mv.run()
	}
	mv.refs++
	return mv
}

// releaseMover drops a reference to mv (nil: none) and, for the last one,
// stops it and waits until it has returned.
func (c *Conn) releaseMover(mv *mover) {
	if mv == nil {
		return
	}
	c.moversMu.Lock()
	mv.refs--
	last := mv.refs == 0
	if last {
		delete(c.movers, mv.topic)
	}
	c.moversMu.Unlock()
	if last {
		close(mv.stop)
		<-mv.done
	}
}

// wakeMover makes this Conn's mover of topic, if any, look at the
// schedule now when an entry due at score (unix ms) is due before it
// would look by itself.
func (c *Conn) wakeMover(topic string, score int64) {
	c.moversMu.Lock()
	mv := c.movers[topic]
	c.moversMu.Unlock()
	if mv == nil || score >= mv.next.Load() {
		return
	}
	select {
	case mv.wake <- struct{}{}:
	default:
	}
}

// run moves due messages until stopped: it runs the move script until
// nothing is due, then sleeps until the next entry is due, at most
// movePoll, or a Schedule of this Conn wakes it.
func (mv *mover) run() {
	defer close(mv.done)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		select {
		case <-mv.stop:
			cancel()
		case <-ctx.Done():
		}
	}()
	failures := 0
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	for {
		wait, err := mv.moveDue(ctx)
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			failures++
			wait = backoff.Equal(backoff.Exp(failures, 50*time.Millisecond, 5*time.Second))
			if !errors.Is(err, mq.ErrClosed) {
				mv.c.cfg.Logger.Warn("redisstream: moving due delayed messages failed; they wait until a retry succeeds", "topic", mv.topic, "error", err, "retry_in", wait)
			}
		} else {
			failures = 0
		}
		mv.next.Store(time.Now().Add(wait).UnixMilli())
		timer.Reset(wait)
		select {
		case <-mv.stop:
			return
		case <-mv.wake: // Reset above drops a pending fire (Go 1.23 timers)
		case <-timer.C:
		}
	}
}

// moveDue runs the move script until nothing more is due and returns how
// long to sleep before the next look: until the next entry is due, at
// most movePoll.
func (mv *mover) moveDue(ctx context.Context) (time.Duration, error) {
	trim, threshold := "", ""
	if cfg := mv.c.cfg; cfg.MaxLen > 0 {
		trim, threshold = "MAXLEN", strconv.FormatInt(cfg.MaxLen, 10)
	} else if cfg.MaxAge > 0 {
		trim = "MINID"
	}
	for {
		select {
		case <-mv.stop:
			return 0, ctx.Err()
		default:
		}
		now := time.Now()
		if trim == "MINID" {
			threshold = strconv.FormatInt(now.Add(-mv.c.cfg.MaxAge).UnixMilli(), 10) + "-0"
		}
		rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		res, err := moveScript.Run(rctx, mv.c.client, mv.keys, now.UnixMilli(), moveCount, moveBytes, trim, threshold).Slice()
		cancel()
		if err != nil {
			return 0, mv.c.mapErr(err)
		}
		moved, next, aside, err := parseMove(res)
		if err != nil {
			return 0, err
		}
		if len(aside) > 0 {
			mv.c.cfg.Logger.Warn("redisstream: schedule members that are not delayed messages of this SDK (no payload, or a garbled one) were set aside, not delivered",
				"topic", mv.topic, "schedule", mv.keys[0], "aside", mv.keys[2], "members", aside)
		}
		if moved+len(aside) >= moveCount {
			continue // more may be due
		}
		if next < 0 {
			return movePoll, nil
		}
		// The next entry is due once the clock, in whole milliseconds,
		// reaches its score: at the start of millisecond next.
		wait := time.Until(time.UnixMilli(next))
		if wait <= 0 {
			if moved > 0 || len(aside) > 0 {
				continue // the byte budget ended the run
			}
			wait = time.Millisecond // due within this millisecond
		}
		return min(wait, movePoll), nil
	}
}

// parseMove reads the move script's reply: the count moved, the next
// score (-1: none), the members set aside.
func parseMove(res []any) (moved int, next int64, aside []string, err error) {
	if len(res) != 3 {
		return 0, 0, nil, fmt.Errorf("redisstream: unexpected reply of the move script: %v", res)
	}
	n, _ := res[0].(int64)
	next = -1
	if s, _ := res[1].(string); s != "" {
		f, err := strconv.ParseFloat(s, 64)
		if err != nil || math.IsNaN(f) {
			return 0, 0, nil, fmt.Errorf("redisstream: unexpected score %q in the schedule: %v", s, err)
		}
		// A foreign member may have any score, +inf included.
		next = int64(min(max(f, 0), 1<<50))
	}
	if list, ok := res[2].([]any); ok {
		for _, a := range list {
			aside = append(aside, str(a))
		}
	}
	return int(n), next, aside, nil
}

var _ mq.Scheduler = (*Conn)(nil)

// moversState is embedded in Conn: its movers by topic.
type moversState struct {
	moversMu sync.Mutex
	movers   map[string]*mover
}
