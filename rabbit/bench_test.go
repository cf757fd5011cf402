package rabbit_test

import (
	"context"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/mqkit/mq"
	"github.com/mqkit/mq/integration/testbed"
)

// Run with: go test -run '^$' -bench . -benchtime 20000x ./rabbit/
// b.N counts messages.

// BenchmarkProduce sends 1 KiB persistent messages in batches of 100,
// each Produce waiting for the broker's publisher confirms.
func BenchmarkProduce(b *testing.B) {
	for _, qt := range []string{"classic", "quorum"} {
		b.Run(qt, func(b *testing.B) {
			c := benchClient(b, qt)
			topic := uniqueTopic("bench-produce")
			cons, err := c.Consumer(context.Background(), topic, mq.WithGroup("g")) // a queue to route to
			if err != nil {
				b.Fatal(err)
			}
			defer cons.Close()
			p := c.Producer()
			body := make([]byte, 1024)
			ctx := context.Background()
			b.SetBytes(1024)
			b.ResetTimer()
			for sent := 0; sent < b.N; sent += 100 {
				msgs := make([]*mq.Message, min(100, b.N-sent))
				for i := range msgs {
					msgs[i] = &mq.Message{Key: fmt.Sprint(i % 10), Body: body}
				}
				if err := p.Produce(ctx, topic, msgs...); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "msgs/s")
		})
	}
}

// BenchmarkConsume handles b.N 1 KiB messages, produced beforehand, with
// a no-op handler and 16 handlers at once (acks one by one).
func BenchmarkConsume(b *testing.B) {
	for _, qt := range []string{"classic", "quorum"} {
		b.Run(qt, func(b *testing.B) {
			c := benchClient(b, qt)
			topic := uniqueTopic("bench-consume")
			ctx := context.Background()
			cons, err := c.Consumer(ctx, topic, mq.WithGroup("g"), mq.WithConcurrency(16), mq.WithMaxInFlight(256))
			if err != nil {
				b.Fatal(err)
			}
			defer cons.Close()
			p := c.Producer()
			body := make([]byte, 1024)
			for sent := 0; sent < b.N; sent += 100 {
				msgs := make([]*mq.Message, min(100, b.N-sent))
				for i := range msgs {
					msgs[i] = &mq.Message{Key: fmt.Sprint(sent + i), Body: body}
				}
				if err := p.Produce(ctx, topic, msgs...); err != nil {
					b.Fatal(err)
				}
			}
			var n atomic.Int64
			all := make(chan struct{})
			b.SetBytes(1024)
			b.ResetTimer()
			runCtx, cancel := context.WithCancel(ctx)
			done := make(chan error, 1)
			go func() {
				done <- cons.Consume(runCtx, mq.HandlerFunc(func(context.Context, *mq.Message) error {
					if n.Add(1) == int64(b.N) {
						close(all)
					}
					return nil
				}))
			}()
			select {
			case <-all:
			case <-time.After(10 * time.Minute):
				b.Fatalf("consumed %d of %d", n.Load(), b.N)
			}
			b.StopTimer()
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "msgs/s")
			cancel()
			if err := <-done; err != nil {
				b.Fatal(err)
			}
		})
	}
}

func benchClient(b *testing.B, queueType string) *mq.Client {
	br := testbed.SharedRabbitMQ(b)
	return openT(b, br.URL+"?queue_type="+queueType)
}

// BenchmarkProduceParallel is BenchmarkProduce from 8 goroutines at once
// (each Produce on its own channel of the shared connection).
func BenchmarkProduceParallel(b *testing.B) {
	c := benchClient(b, "classic")
	topic := uniqueTopic("bench-produce-par")
	cons, err := c.Consumer(context.Background(), topic, mq.WithGroup("g"))
	if err != nil {
		b.Fatal(err)
	}
	defer cons.Close()
	p := c.Producer()
	body := make([]byte, 1024)
	b.SetBytes(1024)
	b.SetParallelism(4) // 4×GOMAXPROCS goroutines
	var left atomic.Int64
	left.Store(int64(b.N))
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
		}
		for {
			n := min(100, left.Add(-100)+100)
			if n <= 0 {
				return
			}
			msgs := make([]*mq.Message, n)
			for i := range msgs {
				msgs[i] = &mq.Message{Key: fmt.Sprint(i % 10), Body: body}
			}
			if err := p.Produce(context.Background(), topic, msgs...); err != nil {
				b.Error(err)
				return
			}
		}
	})
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "msgs/s")
}
