package redisstream_test

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/mqkit/mq"
	"github.com/mqkit/mq/integration/testbed"
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

// BenchmarkProduceReplicated measures what wait_replicas=1 costs: 1 KiB
// messages produced one per call and 100 per call (one pipeline, one WAIT
// each), on a Sentinel-managed primary with one replica and on a Redis
// Cluster of three primaries with a replica each (testbed.RedisSentinelHA
// and RedisClusterHA, on fixed loopback addresses: run it alone). The
// calls alternate between a client without wait_replicas and one with
// wait_replicas=1, so that both see the same load of the machine; it
// reports the messages/s of each and their ratio.
func BenchmarkProduceReplicated(b *testing.B) {
	for _, set := range []struct {
		name  string
		start func(testing.TB, ...testbed.Option) *testbed.Cluster
	}{
		{"sentinel", testbed.RedisSentinelHA},
		{"cluster", testbed.RedisClusterHA},
	} {
		b.Run(set.name, func(b *testing.B) {
			c := set.start(b)
			for _, batch := range []int{1, 100} {
				b.Run(fmt.Sprintf("batch=%d", batch), func(b *testing.B) {
					benchWaitCost(b, c.URL, batch)
				})
			}
		})
	}
}

// benchWaitCost produces b.N 1 KiB messages on rawURL, batch per Produce
// call, alternating between wait_replicas=0 and wait_replicas=1.
func benchWaitCost(b *testing.B, rawURL string, batch int) {
	ctx := context.Background()
	sep := "?"
	if strings.Contains(rawURL, "?") {
		sep = "&"
	}
	var producers [2]mq.Producer
	for k := range producers {
		cl, err := mq.Open(ctx, rawURL+sep+"wait_replicas="+strconv.Itoa(k))
		if err != nil {
			b.Fatal(err)
		}
		defer cl.Close()
		producers[k] = cl.Producer()
	}
	topic := topicName(b)
	body := make([]byte, 1024)
	var took [2]time.Duration
	var sent [2]int
	b.SetBytes(1024)
	b.ResetTimer()
	for i := 0; i < b.N; i += batch {
		k := (i / batch) % 2
		msgs := make([]*mq.Message, min(batch, b.N-i))
		for j := range msgs {
			msgs[j] = &mq.Message{Key: "k", Body: body}
		}
		start := time.Now()
		if err := producers[k].Produce(ctx, topic, msgs...); err != nil {
			b.Fatal(err)
		}
		took[k] += time.Since(start)
		sent[k] += len(msgs)
	}
	b.StopTimer()
	if took[0] > 0 && took[1] > 0 {
		r0, r1 := float64(sent[0])/took[0].Seconds(), float64(sent[1])/took[1].Seconds()
		b.ReportMetric(r0, "msgs/s-wait0")
		b.ReportMetric(r1, "msgs/s-wait1")
		b.ReportMetric(r1/r0, "wait1/wait0")
	}
}
