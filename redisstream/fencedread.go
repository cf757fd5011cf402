package redisstream

import (
	"context"
	"fmt"

	"github.com/redis/go-redis/v9"
)

// fencedReadScript reads new entries of shard streams for a member, but
// only of the shards whose lease it holds: KEYS are n lease keys followed
// by their n streams, ARGV[1] the member's consumer name (the value of
// its leases), ARGV[2] the group, ARGV[3] the COUNT per stream. It returns
// the XREADGROUP ... > result of the shards read, and the ID of every
// stream's last entry ("0-0" when empty): when nothing was read, every
// entry up to it was delivered to the group, and an XREAD from it waits
// for the next one.
//
// The lease check and the read are one atomic step, which no blocking
// XREADGROUP can be: a read blocked in Redis when the member lost its
// lease (Redis paused or cut off longer than the lease) would be served
// afterwards, taking new entries of a shard that has another holder by
// then, which had claimed the shard's pending entries already: those
// entries would wait for claim_idle, behind later entries of their keys.
var fencedReadScript = redis.NewScript(`
local n = #KEYS / 2
local got, last = {}, {}
for i = 1, n do
  local stream = KEYS[n + i]
  if redis.call('GET', KEYS[i]) == ARGV[1] then
    local r = redis.call('XREADGROUP', 'GROUP', ARGV[2], ARGV[1], 'COUNT', ARGV[3], 'STREAMS', stream, '>')
    if r then
      got[#got + 1] = r[1]
    end
  end
  local e = redis.call('XREVRANGE', stream, '+', '-', 'COUNT', 1)
  if e[1] then
    last[i] = e[1][1]
  else
    last[i] = '0-0'
  end
end
return {got, last}
`)

// readShards reads new entries of the shard streams, fenced by their
// leases in Redis (see fencedReadScript), and when there are none waits
// up to the block time for more with a plain XREAD, which takes nothing:
// a wait that outlives the lease does no harm. It returns no entries after
// a wait; the caller reads again.
func (s *subscription) readShards(ctx context.Context, streams []string, count int64, acqs map[string]*shardState) ([]redis.XStream, error) {
	keys := make([]string, 0, 2*len(streams))
	for _, stream := range streams {
		keys = append(keys, s.shards.leaseKeys[acqs[stream].index])
	}
	keys = append(keys, streams...)
	cl, err := s.rd.cmd(ctx)
	if err != nil {
		return nil, err
	}
	v, err := fencedReadScript.Run(ctx, cl, keys, s.consumer, s.group, count).Slice()
	s.rd.done(err)
	if err != nil {
		return nil, err
	}
	res, last, err := parseFencedRead(v, len(streams))
	if err != nil {
		return nil, err
	}
	if len(res) > 0 {
		return res, nil
	}
	args := make([]string, 0, 2*len(streams))
	args = append(append(args, streams...), last...)
	_, err = s.rd.blocking(ctx, s.done, func(c redis.Cmdable, bg context.Context) *redis.XStreamSliceCmd {
		return c.XRead(bg, &redis.XReadArgs{Streams: args, Count: 1, Block: s.c.cfg.Block})
	})
	return nil, err
}

// parseFencedRead decodes fencedReadScript's reply.
func parseFencedRead(v []any, n int) ([]redis.XStream, []string, error) {
	bad := func(what string) error {
		return fmt.Errorf("redisstream: unexpected reply of the shard read script: %s", what)
	}
	if len(v) != 2 {
		return nil, nil, bad("not a pair")
	}
	got, ok1 := v[0].([]any)
	lastV, ok2 := v[1].([]any)
	if !ok1 || !ok2 || len(lastV) != n {
		return nil, nil, bad("not two arrays")
	}
	last := make([]string, n)
	for i, x := range lastV {
		if last[i], ok1 = x.(string); !ok1 {
			return nil, nil, bad("a last ID is not a string")
		}
	}
	var res []redis.XStream
	for _, sv := range got {
		pair, ok := sv.([]any)
		if !ok || len(pair) != 2 {
			return nil, nil, bad("a stream is not a pair")
		}
		name, ok1 := pair[0].(string)
		entries, ok2 := pair[1].([]any)
		if !ok1 || !ok2 {
			return nil, nil, bad("a stream's name or entries")
		}
		st := redis.XStream{Stream: name, Messages: make([]redis.XMessage, 0, len(entries))}
		for _, ev := range entries {
			e, ok := ev.([]any)
			if !ok || len(e) != 2 {
				return nil, nil, bad("an entry is not a pair")
			}
			id, ok1 := e[0].(string)
			fields, ok2 := e[1].([]any)
			if !ok1 || !ok2 || len(fields)%2 != 0 {
				return nil, nil, bad("an entry's ID or fields")
			}
			values := make(map[string]any, len(fields)/2)
			for i := 0; i < len(fields); i += 2 {
				f, ok := fields[i].(string)
				if !ok {
					return nil, nil, bad("a field name")
				}
				values[f] = fields[i+1]
			}
			st.Messages = append(st.Messages, redis.XMessage{ID: id, Values: values})
		}
		res = append(res, st)
	}
	return res, last, nil
}
