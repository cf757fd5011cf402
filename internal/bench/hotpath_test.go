package bench

import (
	"context"
	"fmt"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/mqkit/mq"
	"github.com/mqkit/mq/dlq"
	"github.com/mqkit/mq/idempotency"
	"github.com/mqkit/mq/memory"
	"github.com/mqkit/mq/middleware"
)

// BenchmarkMiddlewareStack measures what the middleware adds to every
// message on the happy path (the handler succeeds at once): retry, dedup
// with the in-memory store, dead-lettering and recover, composed by
// middleware.Stack, against the bare handler. Every message has a new ID,
// so each one claims and completes a dedup key. Target: under 2 µs and a
// few allocations per message.
func BenchmarkMiddlewareStack(b *testing.B) {
	ctx := context.Background()
	c := mq.NewClient(memory.NewBroker(memory.Config{}).Conn())
	defer c.Close()
	dead, err := dlq.New(dlq.Config{Producer: c.Producer(), Group: "bench"})
	if err != nil {
		b.Fatal(err)
	}
	dedup, err := idempotency.New(idempotency.NewMemoryStore(idempotency.MemoryStoreConfig{}), idempotency.Config{Namespace: "bench"})
	if err != nil {
		b.Fatal(err)
	}
	handler := mq.HandlerFunc(func(context.Context, *mq.Message) error { return nil })
	stacks := []struct {
		name string
		h    mq.Handler
	}{
		{"handler", handler},
		{"retry", mq.Chain(handler, middleware.Stack(middleware.StackConfig{}))},
		{"retry+dedup", mq.Chain(handler, middleware.Stack(middleware.StackConfig{Dedup: dedup}))},
		{"retry+dedup+dlq", mq.Chain(handler, middleware.Stack(middleware.StackConfig{Dedup: dedup, DeadLetter: dead}))},
		{"retry+dedup+dlq+timeout", mq.Chain(handler, middleware.Stack(middleware.StackConfig{Dedup: dedup, DeadLetter: dead, Timeout: time.Minute}))},
	}
	for _, s := range stacks {
		b.Run(s.name, func(b *testing.B) {
			// IDs made up front: a fresh dedup key per message without
			// counting its formatting.
			ids := make([]string, b.N)
			for i := range ids {
				ids[i] = s.name + "-" + strconv.Itoa(i)
			}
			m := &mq.Message{Topic: "orders", Key: "k", Body: make([]byte, 1024)}
			b.ReportAllocs()
			b.ResetTimer()
			for i := range b.N {
				m.ID, m.Attempt = ids[i], 1
				if err := s.h.Handle(ctx, m); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkKeyOrderedDispatch measures the portable consumer's key-ordered
// dispatcher through the memory backend: one topic, 1000 keys, messages
// produced up front. With a handler that sleeps 2 ms and concurrency 32,
// a serial consumer would do 500 msg/s and a perfect one 16,000; the
// target is 10,000.
func BenchmarkKeyOrderedDispatch(b *testing.B) {
	for _, tc := range []struct {
		conc  int
		sleep time.Duration
	}{
		{1, 0},
		{32, 0},
		{32, 2 * time.Millisecond},
	} {
		b.Run(fmt.Sprintf("concurrency=%d/sleep=%v", tc.conc, tc.sleep), func(b *testing.B) {
			benchDispatch(b, tc.conc, tc.sleep)
		})
	}
}

func benchDispatch(b *testing.B, conc int, sleep time.Duration) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	c := mq.NewClient(memory.NewBroker(memory.Config{Capacity: max(b.N, 1000)}).Conn())
	defer c.Close()
	cons, err := c.Consumer(ctx, "t", mq.WithGroup("g"), mq.WithConcurrency(conc))
	if err != nil {
		b.Fatal(err)
	}
	keys := make([]string, 1000)
	for i := range keys {
		keys[i] = "key-" + strconv.Itoa(i)
	}
	body := make([]byte, 1024)
	p := c.Producer()
	for i := 0; i < b.N; i += 100 {
		batch := make([]*mq.Message, 0, 100)
		for j := i; j < min(i+100, b.N); j++ {
			batch = append(batch, &mq.Message{Key: keys[j%len(keys)], Body: body})
		}
		if err := p.Produce(ctx, "t", batch...); err != nil {
			b.Fatal(err)
		}
	}
	var n atomic.Int64
	done := make(chan struct{})
	consumed := make(chan error, 1)
	b.SetBytes(int64(len(body)))
	b.ReportAllocs()
	b.ResetTimer()
	go func() {
		consumed <- cons.Consume(ctx, mq.HandlerFunc(func(context.Context, *mq.Message) error {
			if sleep > 0 {
				time.Sleep(sleep)
			}
			if n.Add(1) == int64(b.N) {
				close(done)
			}
			return nil
		}))
	}()
	select {
	case <-done:
	case err := <-consumed:
		b.Fatalf("Consume returned early: %v", err)
	}
	b.StopTimer()
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "msgs/s")
	cancel()
	<-consumed
}
