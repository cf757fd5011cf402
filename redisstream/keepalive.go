package redisstream

import (
	"context"
	"errors"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/mqkit/mq"

	"github.com/mqkit/mq/internal/backoff"
)

// keepAlive resets the idle time of this consumer's unsettled entries every
// ClaimIdle/3, so other members do not claim entries still being handled.
// A round that succeeded for every entry moves the deadline of the
// current generation (see generation); a failed one is retried sooner. An
// entry found claimed by another consumer ends the ownership of the
// deliveries it belongs with (their generation, or shard acquisition).
func (s *subscription) keepAlive() {
	defer s.wg.Done()
	every := max(s.c.cfg.ClaimIdle/3, 5*time.Millisecond)
	wait, failures := every, 0
	for backoff.Sleep(context.Background(), wait, s.done) {
		sent := time.Now() // before the snapshot: Redis runs the touch later
		s.mu.Lock()
		g := s.snapshotGenLocked()
		batch := map[string][]string{}
		for stream, m := range s.held {
			for id := range m {
				batch[stream] = append(batch[stream], id)
			}
		}
		s.mu.Unlock()
		ok := true
		for stream, ids := range batch {
			ctx, cancel := context.WithTimeout(context.Background(), s.c.cfg.ClaimIdle)
			lost, err := s.touch(ctx, stream, 0, ids)
			cancel()
			if err != nil {
				ok = false
				if !errors.Is(err, mq.ErrClosed) {
					s.log().Warn("redisstream: keeping entries alive failed; they may be claimed by another consumer", "stream", stream, "group", s.group, "error", err)
				}
			}
			if len(lost) > 0 {
				s.log().Warn("redisstream: entries being handled were claimed by another consumer (was this process or Redis paused longer than claim_idle?); giving up the deliveries they belong with",
					"stream", stream, "group", s.group, "ids", lost)
				s.claimedByOthers(stream, lost)
			}
		}
		if ok {
			failures, wait = 0, every
			if g != nil {
				s.renewGen(g, sent)
			}
		} else {
			failures++
			wait = backoff.Equal(backoff.Exp(failures, every/8, every))
		}
	}
}

// claimedByOthers ends the ownership of the deliveries of stream that ids
// (entries another consumer claimed) were held by: their shard
// acquisition, or their generation.
func (s *subscription) claimedByOthers(stream string, ids []string) {
	if ss := s.shards; ss != nil {
		ss.mu.Lock()
		defer ss.mu.Unlock()
		if st := ss.owned[stream]; st != nil && s.holdsAny(stream, ids, st.lost) {
			ss.loseLocked(stream, st)
		}
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if g := s.gen; g != nil && s.holdsAnyLocked(stream, ids, g.lost) {
		s.fenceGenLocked(g)
	}
}

// holdsAny reports whether one of ids is held by a delivery whose Lost is
// lost.
func (s *subscription) holdsAny(stream string, ids []string, lost chan struct{}) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.holdsAnyLocked(stream, ids, lost)
}

func (s *subscription) holdsAnyLocked(stream string, ids []string, lost chan struct{}) bool {
	for _, id := range ids {
		if d := s.held[stream][id]; d != nil && d.lost == lost {
			return true
		}
	}
	return false
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
			return lost, s.c.mapErr(err)
		}
		lost = append(lost, res...)
	}
	return lost, nil
}
