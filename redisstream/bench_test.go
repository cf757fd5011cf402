package redisstream_test

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	"github.com/mqkit/mq"
)

// BenchmarkProduce sends 1 KiB messages in Produce calls of 100 (one
// pipelined round trip each).
func BenchmarkProduce(b *testing.B) {
	ctx := context.Background()
	c := open(b, "")
	p := c.Producer()
	topic := topicName(b)
	body := make([]byte, 1024)
	b.SetBytes(1024)
	b.ResetTimer()
	for i := 0; i < b.N; i += 100 {
		batch := make([]*mq.Message, min(100, b.N-i))
		for j := range batch {
			batch[j] = &mq.Message{Key: "k", Body: body}
		}
		if err := p.Produce(ctx, topic, batch...); err != nil {
			b.Fatal(err)
		}
	}
	b.StopTimer()
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "msgs/s")
}

// BenchmarkConsume handles b.N 1 KiB messages produced beforehand, with
// 16 handlers over 64 keys (each acknowledged with its own XACK).
func BenchmarkConsume(b *testing.B) {
	for _, conc := range []int{1, 16} {
		b.Run(map[int]string{1: "concurrency=1", 16: "concurrency=16"}[conc], func(b *testing.B) {
			ctx := context.Background()
			c := open(b, "")
			topic := topicName(b)
			cons, err := c.Consumer(ctx, topic, mq.WithGroup("g"), mq.WithConcurrency(conc), mq.WithMaxInFlight(256))
			if err != nil {
				b.Fatal(err)
			}
			body := make([]byte, 1024)
			p := c.Producer()
			keys := []string{}
			for k := range 64 {
				keys = append(keys, string(rune('A'+k%26))+string(rune('a'+k/26)))
			}
			for i := 0; i < b.N; i += 100 {
				batch := make([]*mq.Message, min(100, b.N-i))
				for j := range batch {
					batch[j] = &mq.Message{Key: keys[(i+j)%len(keys)], Body: body}
				}
				if err := p.Produce(ctx, topic, batch...); err != nil {
					b.Fatal(err)
				}
			}
			var n atomic.Int64
			done := make(chan struct{})
			cctx, cancel := context.WithCancel(ctx)
			b.SetBytes(1024)
			b.ResetTimer()
			go func() {
				_ = cons.Consume(cctx, mq.HandlerFunc(func(context.Context, *mq.Message) error {
					if n.Add(1) == int64(b.N) {
						close(done)
					}
					return nil
				}))
			}()
			select {
			case <-done:
			case <-time.After(5 * time.Minute):
				b.Fatalf("consumed %d of %d", n.Load(), b.N)
			}
			b.StopTimer()
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "msgs/s")
			cancel()
			_ = cons.Close()
		})
	}
}
