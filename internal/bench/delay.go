package bench

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/mqkit/mq"
	"github.com/mqkit/mq/middleware"
)

// DelayWorkload schedules Messages delayed messages, each due between
// Lead and Lead+Spread after it was produced, and consumes them as one
// group, to measure how late they arrive.
type DelayWorkload struct {
	Messages    int           // default 100,000
	Spread      time.Duration // default 1m
	Lead        time.Duration // shortest delay; default 1s
	Size        int           // body bytes, at least 8; default 256
	Producers   int           // goroutines scheduling at once; default 4
	Batch       int           // messages per Produce call; default 100
	Concurrency int           // consumer handlers; default 32
	Keys        int           // distinct keys; default 1000
	Grace       time.Duration // wait past the last due time for stragglers; default 60s
	Progress    io.Writer     // a progress line, when set
}

func (w DelayWorkload) defaults() DelayWorkload {
	w.Messages = cmpOr(w.Messages, 100000)
	w.Spread = cmpOr(w.Spread, time.Minute)
	w.Lead = cmpOr(w.Lead, time.Second)
	w.Size = max(cmpOr(w.Size, 256), 8)
	w.Producers = cmpOr(w.Producers, 4)
	w.Batch = cmpOr(w.Batch, 100)
	w.Concurrency = cmpOr(w.Concurrency, 32)
	w.Keys = cmpOr(w.Keys, 1000)
	w.Grace = cmpOr(w.Grace, time.Minute)
	return w
}

func cmpOr[T comparable](v, def T) T {
	var zero T
	if v == zero {
		return def
	}
	return v
}

// DelayResult is what RunDelay measured.
type DelayResult struct {
	Messages   int
	Scheduling time.Duration // from the first Produce to the last one returning
	Received   int           // distinct messages handled
	Early      int           // handled before DeliverAt: must be 0
	Duplicates int           // handler calls beyond the first per message
	Lost       int           // never handled within Grace after the last due time
	P50, P99   time.Duration // lateness: handled minus DeliverAt
	Max        time.Duration
}

// ScheduleRate is the messages scheduled per second.
func (r DelayResult) ScheduleRate() float64 {
	return float64(r.Messages) / r.Scheduling.Seconds()
}

// RunDelay runs w on c, on a new topic, and reports lateness.
func RunDelay(ctx context.Context, c *mq.Client, w DelayWorkload) (DelayResult, error) {
	w = w.defaults()
	if _, ok := c.Conn().(mq.Scheduler); !ok {
		return DelayResult{}, mq.ErrDelayUnsupported
	}
	topic := fmt.Sprintf("bench-delay-%x", rand.Uint32())
	cons, err := c.Consumer(ctx, topic, mq.WithGroup("bench"), mq.WithConcurrency(w.Concurrency))
	if err != nil {
		return DelayResult{}, err
	}
	defer cons.Close()

	due := make([]atomic.Int64, w.Messages)  // DeliverAt, Unix ns
	late := make([]atomic.Int64, w.Messages) // handled minus due, first call
	calls := make([]atomic.Int32, w.Messages)
	var received, early atomic.Int64
	allIn := make(chan struct{})
	cctx, stop := context.WithCancel(ctx)
	defer stop()
	consumed := make(chan error, 1)
	go func() {
		consumed <- cons.Consume(cctx, mq.HandlerFunc(func(_ context.Context, m *mq.Message) error {
			now := time.Now()
			if len(m.Body) < 8 {
				return nil // not ours
			}
			i := int(binary.BigEndian.Uint64(m.Body))
			if i < 0 || i >= w.Messages {
				return nil
			}
			if calls[i].Add(1) > 1 {
				return nil
			}
			d := now.Sub(time.Unix(0, due[i].Load())) // the due time it was given, not what came back
			if d < 0 {
				early.Add(1)
			}
			late[i].Store(int64(d))
			if received.Add(1) == int64(w.Messages) {
				close(allIn)
			}
			return nil
		}))
	}()

	start := time.Now()
	var lastDue atomic.Int64
	var wg sync.WaitGroup
	errs := make(chan error, w.Producers)
	var next atomic.Int64
	for range w.Producers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			p := c.Producer()
			defer p.Close()
			rnd := rand.New(rand.NewPCG(rand.Uint64(), 1))
			for {
				lo := int(next.Add(int64(w.Batch))) - w.Batch
				if lo >= w.Messages {
					return
				}
				hi := min(lo+w.Batch, w.Messages)
				msgs := make([]*mq.Message, 0, hi-lo)
				now := time.Now()
				for i := lo; i < hi; i++ {
					body := make([]byte, w.Size)
					binary.BigEndian.PutUint64(body, uint64(i))
					at := now.Add(w.Lead + time.Duration(rnd.Int64N(int64(w.Spread))))
					due[i].Store(at.UnixNano())
					for {
						old := lastDue.Load()
						if at.UnixNano() <= old || lastDue.CompareAndSwap(old, at.UnixNano()) {
							break
						}
					}
					msgs = append(msgs, &mq.Message{Key: fmt.Sprintf("k%d", i%w.Keys), Body: body, DeliverAt: at})
				}
				if err := p.Produce(ctx, topic, msgs...); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	res := DelayResult{Messages: w.Messages, Scheduling: time.Since(start)}
	close(errs)
	if err := <-errs; err != nil {
		return res, fmt.Errorf("scheduling: %w", err)
	}

	deadline := time.NewTimer(time.Until(time.Unix(0, lastDue.Load())) + w.Grace)
	defer deadline.Stop()
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
wait:
	for {
		select {
		case <-allIn:
			break wait
		case <-deadline.C:
			break wait
		case <-ctx.Done():
			return res, ctx.Err()
		case <-tick.C:
			if w.Progress != nil {
				fmt.Fprintf(w.Progress, "\rdelay: %d of %d delivered", received.Load(), w.Messages)
			}
		}
	}
	if w.Progress != nil {
		fmt.Fprintln(w.Progress)
	}
	stop()
	if err := <-consumed; err != nil && !errors.Is(err, context.Canceled) {
		return res, err
	}
	var lat []time.Duration
	for i := range w.Messages {
		n := int(calls[i].Load())
		if n == 0 {
			res.Lost++
			continue
		}
		res.Duplicates += n - 1
		lat = append(lat, time.Duration(late[i].Load()))
	}
	res.Received = len(lat)
	res.Early = int(early.Load())
	if len(lat) > 0 {
		slices.Sort(lat)
		res.P50, res.P99, res.Max = lat[len(lat)/2], lat[len(lat)*99/100], lat[len(lat)-1]
	}
	return res, nil
}

// RetryWorkload measures how the good messages of a topic flow while
// some messages fail every time: with in-process retries
// (middleware.Retry, the handler slot and key wait through the backoff)
// and with retries through the broker (middleware.RetryLater).
type RetryWorkload struct {
	Messages    int           // good messages; default 2,000
	FailEvery   int           // one message in FailEvery fails always; default 100
	Concurrency int           // consumer handlers; default 1
	Keys        int           // distinct keys; default 10
	Attempts    int           // MaxAttempts of both retries; default 4
	Backoff     time.Duration // first retry delay, doubling; default 200ms
	Work        time.Duration // handler time per message; default 1ms
}

// RetryResult is one retry mode's run.
type RetryResult struct {
	Mode      string        // "none", "retry" or "retry-later"
	Good      int           // good messages handled
	Elapsed   time.Duration // until the last good message was handled
	Exhausted int           // failing messages given up on
}

// Rate is the good messages handled per second.
func (r RetryResult) Rate() float64 { return float64(r.Good) / r.Elapsed.Seconds() }

// RunRetry runs w three times on c: with no failing messages, with
// middleware.Retry and with middleware.RetryLater.
func RunRetry(ctx context.Context, c *mq.Client, w RetryWorkload) ([]RetryResult, error) {
	w.Messages = cmpOr(w.Messages, 2000)
	w.FailEvery = cmpOr(w.FailEvery, 100)
	w.Concurrency = cmpOr(w.Concurrency, 1)
	w.Keys = cmpOr(w.Keys, 10)
	w.Attempts = cmpOr(w.Attempts, 4)
	w.Backoff = cmpOr(w.Backoff, 200*time.Millisecond)
	w.Work = cmpOr(w.Work, time.Millisecond)
	var out []RetryResult
	for _, mode := range []string{"none", "retry", "retry-later"} {
		r, err := runRetryMode(ctx, c, w, mode)
		if err != nil {
			return out, fmt.Errorf("%s: %w", mode, err)
		}
		out = append(out, r)
	}
	return out, nil
}

func runRetryMode(ctx context.Context, c *mq.Client, w RetryWorkload, mode string) (RetryResult, error) {
	topic := fmt.Sprintf("bench-retry-%s-%x", mode, rand.Uint32())
	cons, err := c.Consumer(ctx, topic, mq.WithGroup("bench"), mq.WithConcurrency(w.Concurrency))
	if err != nil {
		return RetryResult{}, err
	}
	defer cons.Close()
	p := c.Producer()
	defer p.Close()

	var good, exhausted atomic.Int64
	done := make(chan struct{})
	var start time.Time
	var elapsed atomic.Int64
	inner := mq.HandlerFunc(func(ctx context.Context, m *mq.Message) error {
		time.Sleep(w.Work)
		if string(m.Body) == "fail" {
			return errors.New("fails always")
		}
		if good.Add(1) == int64(w.Messages) {
			elapsed.Store(int64(time.Since(start)))
			close(done)
		}
		return nil
	})
	var h mq.Handler = inner
	switch mode {
	case "retry":
		h = middleware.Retry(middleware.RetryConfig{MaxAttempts: w.Attempts, InitialInterval: w.Backoff, MaxInterval: 8 * w.Backoff, Jitter: middleware.JitterNone})(inner)
	case "retry-later":
		h = middleware.RetryLater(middleware.RetryLaterConfig{Producer: p, MaxAttempts: w.Attempts, InitialInterval: w.Backoff, MaxInterval: 8 * w.Backoff, Jitter: middleware.JitterNone})(inner)
	}
	outer := mq.HandlerFunc(func(ctx context.Context, m *mq.Message) error {
		if err := h.Handle(ctx, m); err != nil {
			exhausted.Add(1)
		}
		return nil // a dead-letter topic would take it
	})

	var msgs []*mq.Message
	for i := range w.Messages {
		if mode != "none" && i%w.FailEvery == 0 {
			msgs = append(msgs, &mq.Message{Key: fmt.Sprintf("k%d", i%w.Keys), Body: []byte("fail")})
		}
		msgs = append(msgs, &mq.Message{Key: fmt.Sprintf("k%d", i%w.Keys), Body: []byte("ok")})
	}
	for i := 0; i < len(msgs); i += 500 {
		if err := p.Produce(ctx, topic, msgs[i:min(i+500, len(msgs))]...); err != nil {
			return RetryResult{}, err
		}
	}
	cctx, stop := context.WithCancel(ctx)
	defer stop()
	consumed := make(chan error, 1)
	start = time.Now()
	go func() { consumed <- cons.Consume(cctx, outer) }()
	select {
	case <-done:
	case <-ctx.Done():
		return RetryResult{}, ctx.Err()
	}
	stop()
	if err := <-consumed; err != nil {
		return RetryResult{}, err
	}
	return RetryResult{Mode: mode, Good: int(good.Load()), Elapsed: time.Duration(elapsed.Load()), Exhausted: int(exhausted.Load())}, nil
}
