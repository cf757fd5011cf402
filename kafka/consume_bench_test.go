package kafka

import (
	"context"
	"strconv"
	"sync/atomic"
	"testing"

	"github.com/IBM/sarama"
	"github.com/mqkit/mq"
)

// benchSession is the group session of BenchmarkConsumeClaim: it counts
// commit marks and ends when the benchmark cancels it.
type benchSession struct {
	sarama.ConsumerGroupSession // nil: only the methods below are used
	ctx                         context.Context
	marks                       atomic.Int64
}

func (s *benchSession) MarkOffset(string, int32, int64, string) { s.marks.Add(1) }
func (s *benchSession) Commit()                                 {}
func (s *benchSession) Context() context.Context                { return s.ctx }

// benchClaim hands out records from a channel.
type benchClaim struct {
	sarama.ConsumerGroupClaim // nil: only the methods below are used
	ch                        chan *sarama.ConsumerMessage
}

func (c *benchClaim) Topic() string                            { return "t" }
func (c *benchClaim) Partition() int32                         { return 0 }
func (c *benchClaim) Messages() <-chan *sarama.ConsumerMessage { return c.ch }

// nopGroup and nopClient stand in for sarama's so Close works without a
// broker.
type nopGroup struct{ sarama.ConsumerGroup }

func (nopGroup) Close() error { return nil }

type nopClient struct{ sarama.Client }

func (nopClient) Close() error { return nil }

// benchConn is an mq.Conn whose Subscribe returns a prepared subscription.
type benchConn struct{ sub *subscription }

func (c benchConn) Send(context.Context, string, []*mq.Message) error { return nil }
func (c benchConn) Subscribe(_ context.Context, _, _ string, opts mq.SubscribeOptions) (mq.Subscription, error) {
	c.sub.max = max(opts.MaxInFlight, 1)
	return c.sub, nil
}
func (c benchConn) Close() error { return nil }

// BenchmarkConsumeClaim measures the SDK's own work per consumed Kafka
// record, without a broker: records as sarama delivers them (key, 1 KiB
// value, the mq-id header) go through ConsumeClaim's tracking and queue,
// the portable consumer at concurrency 1 and 32 over 1000 keys, a no-op handler,
// and the ack that marks the offset for commit.
func BenchmarkConsumeClaim(b *testing.B) {
	for _, conc := range []int{1, 32} {
		b.Run("concurrency="+strconv.Itoa(conc), func(b *testing.B) { benchConsumeClaim(b, conc) })
	}
}

func benchConsumeClaim(b *testing.B, concurrency int) {
	body := make([]byte, 1024)
	recs := make([]*sarama.ConsumerMessage, b.N)
	for i := range recs {
		recs[i] = &sarama.ConsumerMessage{
			Topic: "t", Offset: int64(i),
			Key:     []byte("key-" + strconv.Itoa(i%1000)),
			Value:   body,
			Headers: []*sarama.RecordHeader{{Key: []byte(HeaderID), Value: []byte("0123456789abcdefghijklmnop")}},
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	s := &subscription{
		conn: &Conn{}, topic: "t", group: "g", client: nopClient{}, cg: nopGroup{}, cancel: func() {},
		loop: make(chan struct{}), leaving: make(chan struct{}), wake: make(chan struct{}), space: make(chan struct{}), max: 1,
	}
	c := mq.NewClient(benchConn{s})
	defer c.Close()
	cons, err := c.Consumer(ctx, "t", mq.WithGroup("g"), mq.WithConcurrency(concurrency))
	if err != nil {
		b.Fatal(err)
	}
	var handled atomic.Int64
	all := make(chan struct{})
	n := int64(b.N)
	consumed := make(chan error, 1)
	go func() {
		consumed <- cons.Consume(ctx, mq.HandlerFunc(func(context.Context, *mq.Message) error {
			if handled.Add(1) == n {
				close(all)
			}
			return nil
		}))
	}()
	sess := &benchSession{ctx: ctx}
	claim := &benchClaim{ch: make(chan *sarama.ConsumerMessage, 256)}
	claimed := make(chan struct{})
	go func() {
		defer close(claimed)
		_ = s.ConsumeClaim(sess, claim)
	}()
	b.SetBytes(int64(len(body)))
	b.ReportAllocs()
	b.ResetTimer()
	for _, r := range recs {
		claim.ch <- r
	}
	<-all
	b.StopTimer()
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "msgs/s")
	cancel()
	<-claimed
	if err := <-consumed; err != nil {
		b.Fatal(err)
	}
	close(s.loop)
	if err := cons.Close(); err != nil {
		b.Fatal(err)
	}
	if sess.marks.Load() == 0 {
		b.Fatal("no offset was marked for commit")
	}
}
