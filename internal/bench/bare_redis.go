package bench

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
)

// bareRedis is the workload on go-redis alone: one stream per topic, the
// group created at its start.
type bareRedis struct {
	opts *redis.Options
}

// redisstreamParams are the SDK backend's own URL parameters, which
// go-redis does not know.
var redisstreamParams = []string{"claim_idle", "block", "maxlen", "max_age", "shards", "shard_lease", "start", "master", "sentinel_auth"}

func newBareRedis(u *url.URL) (System, error) {
	q := u.Query()
	for _, p := range redisstreamParams {
		if q.Has(p) && p != "block" && p != "claim_idle" {
			return nil, fmt.Errorf("bench: the bare Redis run does not support the %s parameter", p)
		}
		q.Del(p)
	}
	u.RawQuery = q.Encode()
	opts, err := redis.ParseURL(u.String())
	if err != nil {
		// go-redis errors may quote the URL; say only what went wrong.
		return nil, fmt.Errorf("bench: bare redis URL: %s", strings.ReplaceAll(err.Error(), u.String(), u.Redacted()))
	}
	return bareRedis{opts: opts}, nil
}

func (bareRedis) Name() string { return "bare" }

func (b bareRedis) Open(ctx context.Context, s Setup) (Session, error) {
	c := redis.NewClient(b.opts)
	if err := c.XGroupCreateMkStream(ctx, s.Topic, s.Group, "0").Err(); err != nil {
		_ = c.Close()
		return nil, err
	}
	return &redisSession{c: c, topic: s.Topic, group: s.Group, conc: s.Concurrency}, nil
}

type redisSession struct {
	c     *redis.Client
	topic string
	group string
	conc  int
}

// Produce pipelines one XADD per message and checks every reply.
func (r *redisSession) Produce(ctx context.Context, msgs []Message) error {
	pipe := r.c.Pipeline()
	cmds := make([]*redis.StringCmd, len(msgs))
	for i, m := range msgs {
		var v []any
		if m.Key != "" {
			v = []any{"k", m.Key, "b", m.Body}
		} else {
			v = []any{"b", m.Body}
		}
		cmds[i] = pipe.XAdd(ctx, &redis.XAddArgs{Stream: r.topic, Values: v})
	}
	if _, err := pipe.Exec(ctx); err != nil {
		return err
	}
	for _, c := range cmds {
		if err := c.Err(); err != nil {
			return err
		}
	}
	return nil
}

// Consume reads new entries with XREADGROUP, as many as there are free
// in-flight slots, hands them to workers by key, and acknowledges handled
// entries with one XACK per batch of whatever finished meanwhile.
func (r *redisSession) Consume(ctx context.Context, h Handler) (err error) {
	inflight := bareWindow(r.conc)
	slots := make(chan struct{}, inflight)
	acks := make(chan string, inflight)
	var ackErr error
	var acker sync.WaitGroup
	acker.Add(1)
	go func() {
		defer acker.Done()
		actx := context.WithoutCancel(ctx)
		ids := make([]string, 0, inflight)
		for id := range acks {
			ids = append(ids[:0], id)
		drain:
			for len(ids) < inflight {
				select {
				case id, ok := <-acks:
					if !ok {
						break drain
					}
					ids = append(ids, id)
				default:
					break drain
				}
			}
			if err := r.c.XAck(actx, r.topic, r.group, ids...).Err(); err != nil && ackErr == nil {
				ackErr = err
			}
		}
	}()
	w := startWorkers(r.conc, inflight, func(x redis.XMessage) {
		key, _ := x.Values["k"].(string)
		body, _ := x.Values["b"].(string)
		h(key, []byte(body))
		acks <- x.ID
		<-slots
	})
	defer func() {
		w.stop()
		close(acks)
		acker.Wait()
		if err == nil && ackErr != nil {
			err = fmt.Errorf("XACK: %w", ackErr)
		}
	}()
	release := func(n int) {
		for range n {
			<-slots
		}
	}
	for {
		select {
		case slots <- struct{}{}:
		case <-ctx.Done():
			return nil
		}
		n := 1
	more:
		for n < inflight {
			select {
			case slots <- struct{}{}:
				n++
			default:
				break more
			}
		}
		res, err := r.c.XReadGroup(ctx, &redis.XReadGroupArgs{
			Group: r.group, Consumer: "bench", Streams: []string{r.topic, ">"}, Count: int64(n), Block: time.Second,
		}).Result()
		if ctx.Err() != nil {
			release(n)
			return nil
		}
		if errors.Is(err, redis.Nil) {
			release(n)
			continue
		}
		if err != nil {
			release(n)
			return err
		}
		got := 0
		for _, st := range res {
			for _, x := range st.Messages {
				key, _ := x.Values["k"].(string)
				submit(w, key, x)
				got++
			}
		}
		release(n - got)
	}
}

func (r *redisSession) Close() error { return r.c.Close() }
