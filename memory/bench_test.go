package memory_test

import (
	"context"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/mqkit/mq"
	"github.com/mqkit/mq/memory"
)

// BenchmarkProduce measures Produce of 1 KiB messages in batches of 100,
// with a consumer group draining them so the buffer never fills.
func BenchmarkProduce(b *testing.B) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	c := mq.NewClient(memory.NewBroker(memory.Config{Capacity: 1 << 20}).Conn())
	defer c.Close()
	cons, err := c.Consumer(ctx, "t", mq.WithGroup("g"), mq.WithConcurrency(4))
	if err != nil {
		b.Fatal(err)
	}
	go cons.Consume(ctx, mq.HandlerFunc(func(context.Context, *mq.Message) error { return nil }))
	body := make([]byte, 1024)
	batch := make([]*mq.Message, 100)
	p := c.Producer()
	b.SetBytes(int64(len(body) * len(batch)))
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		for i := range batch {
			batch[i] = &mq.Message{Key: "k", Body: body}
		}
		if err := p.Produce(ctx, "t", batch...); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.N*len(batch))/b.Elapsed().Seconds(), "msgs/s")
}

// BenchmarkConsume measures end-to-end consume of pre-produced 1 KiB
// messages at several handler concurrencies over 1000 keys.
func BenchmarkConsume(b *testing.B) {
	for _, conc := range []int{1, 8, 32} {
		b.Run(fmt.Sprintf("concurrency=%d", conc), func(b *testing.B) {
			benchConsume(b, conc, 0)
		})
	}
}

// BenchmarkConsumeSlowHandler shows what key-ordered concurrency buys: a
// handler that sleeps 2ms, 1000 keys, one topic. Serial would be 500 msgs/s.
func BenchmarkConsumeSlowHandler(b *testing.B) {
	benchConsume(b, 32, 2*time.Millisecond)
}

func benchConsume(b *testing.B, conc int, work time.Duration) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	c := mq.NewClient(memory.NewBroker(memory.Config{Capacity: 1 << 22}).Conn())
	defer c.Close()
	cons, err := c.Consumer(ctx, "t", mq.WithGroup("g"), mq.WithConcurrency(conc))
	if err != nil {
		b.Fatal(err)
	}
	body := make([]byte, 1024)
	p := c.Producer()
	for i := 0; i < b.N; i += 100 {
		batch := make([]*mq.Message, 0, 100)
		for j := i; j < min(i+100, b.N); j++ {
			batch = append(batch, &mq.Message{Key: fmt.Sprint(j % 1000), Body: body})
		}
		if err := p.Produce(ctx, "t", batch...); err != nil {
			b.Fatal(err)
		}
	}
	var n atomic.Int64
	done := make(chan struct{})
	b.SetBytes(int64(len(body)))
	b.ReportAllocs()
	b.ResetTimer()
	go func() {
		_ = cons.Consume(ctx, mq.HandlerFunc(func(context.Context, *mq.Message) error {
			if work > 0 {
				time.Sleep(work)
			}
			if n.Add(1) == int64(b.N) {
				close(done)
			}
			return nil
		}))
	}()
	<-done
	b.StopTimer()
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "msgs/s")
}
