package bench

import (
	"context"
	"fmt"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"

	"github.com/mqkit/mq"
)

// BatchWorkload consumes Messages messages into a sink that costs
// SinkCost per call whatever the number of rows and takes one call at a
// time (a bulk insert over one database connection): one message per
// call, then batches of BatchSize.
type BatchWorkload struct {
	Messages    int           // default 20,000
	BatchSize   int           // default 100
	Concurrency int           // of the single-message run; default 32
	SinkCost    time.Duration // default 1ms
	Keys        int           // default 1000
}

// BatchResult is one run of BatchWorkload.
type BatchResult struct {
	Mode    string // "single" or "batch"
	Calls   int    // sink calls
	Elapsed time.Duration
}

// Rate is the messages handled per second.
func (r BatchResult) Rate(n int) float64 { return float64(n) / r.Elapsed.Seconds() }

// RunBatch runs w twice on c, each on a new topic: single messages, then
// mq.Batch.
func RunBatch(ctx context.Context, c *mq.Client, w BatchWorkload) ([]BatchResult, error) {
	w.Messages = cmpOr(w.Messages, 20000)
	w.BatchSize = cmpOr(w.BatchSize, 100)
	w.Concurrency = cmpOr(w.Concurrency, 32)
	w.SinkCost = cmpOr(w.SinkCost, time.Millisecond)
	w.Keys = cmpOr(w.Keys, 1000)
	var out []BatchResult
	for _, mode := range []string{"single", "batch"} {
		r, err := runBatchMode(ctx, c, w, mode)
		if err != nil {
			return out, fmt.Errorf("%s: %w", mode, err)
		}
		out = append(out, r)
	}
	return out, nil
}

func runBatchMode(ctx context.Context, c *mq.Client, w BatchWorkload, mode string) (BatchResult, error) {
	topic := fmt.Sprintf("bench-batch-%s-%x", mode, rand.Uint32())
	conc := w.Concurrency
	if mode == "batch" {
		conc = w.BatchSize
	}
	cons, err := c.Consumer(ctx, topic, mq.WithGroup("bench"), mq.WithConcurrency(conc))
	if err != nil {
		return BatchResult{}, err
	}
	defer cons.Close()
	p := c.Producer()
	defer p.Close()
	var sink sync.Mutex // one connection: one call at a time
	var calls, rows atomic.Int64
	done := make(chan struct{})
	write := func(n int) {
		sink.Lock()
		time.Sleep(w.SinkCost)
		sink.Unlock()
		calls.Add(1)
		if rows.Add(int64(n)) == int64(w.Messages) {
			close(done)
		}
	}
	var h mq.Handler = mq.HandlerFunc(func(_ context.Context, _ *mq.Message) error {
		write(1)
		return nil
	})
	if mode == "batch" {
		h = mq.Batch(mq.BatchHandlerFunc(func(_ context.Context, ms []*mq.Message) error {
			write(len(ms))
			return nil
		}), mq.BatchOptions{Size: w.BatchSize})
	}
	cctx, stop := context.WithCancel(ctx)
	defer stop()
	consumed := make(chan error, 1)
	start := time.Now()
	go func() { consumed <- cons.Consume(cctx, h) }()
	// Produce while consuming: a bounded broker (mem://) could not hold
	// them all at once.
	body := make([]byte, 256)
	for i := 0; i < w.Messages; i += 500 {
		var msgs []*mq.Message
		for j := i; j < min(i+500, w.Messages); j++ {
			msgs = append(msgs, &mq.Message{Key: fmt.Sprint("k", j%w.Keys), Body: body})
		}
		if err := p.Produce(ctx, topic, msgs...); err != nil {
			return BatchResult{}, err
		}
	}
	select {
	case <-done:
	case <-ctx.Done():
		return BatchResult{}, ctx.Err()
	}
	elapsed := time.Since(start)
	stop()
	if err := <-consumed; err != nil {
		return BatchResult{}, err
	}
	return BatchResult{Mode: mode, Calls: int(calls.Load()), Elapsed: elapsed}, nil
}
