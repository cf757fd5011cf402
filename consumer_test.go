package mq_test

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/mqkit/mq"
)

// greedyConn is a backend whose Receive ignores max and hands out batches
// three times larger: the consumer must cope without blocking.
type greedyConn struct{ total int }

func (c *greedyConn) Send(context.Context, string, []*mq.Message) error { return nil }
func (c *greedyConn) Close() error                                      { return nil }
func (c *greedyConn) Subscribe(_ context.Context, topic, _ string, _ mq.SubscribeOptions) (mq.Subscription, error) {
	return &greedySub{left: c.total, topic: topic}, nil
}

type greedySub struct {
	mu    sync.Mutex
	left  int
	n     int
	topic string
	acks  atomic.Int64
}

func (s *greedySub) Receive(ctx context.Context, max int) ([]mq.Delivery, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.left == 0 {
		<-ctx.Done()
		return nil, ctx.Err()
	}
	var out []mq.Delivery
	for range min(3*max, s.left) {
		s.n++
		s.left--
		out = append(out, &greedyDelivery{s: s, m: &mq.Message{ID: fmt.Sprint(s.n), Key: fmt.Sprint(s.n % 7), Topic: s.topic, Attempt: 1}})
	}
	return out, nil
}
func (s *greedySub) Close() error { return nil }

type greedyDelivery struct {
	s *greedySub
	m *mq.Message
}

func (d *greedyDelivery) Message() *mq.Message { return d.m }
func (d *greedyDelivery) Ack(context.Context) error {
	d.s.acks.Add(1)
	return nil
}
func (d *greedyDelivery) Nack(context.Context) error { return nil }
func (d *greedyDelivery) Lost() <-chan struct{}      { return nil }

func TestConsumerSurvivesOversizedBatches(t *testing.T) {
	conn := &greedyConn{total: 500}
	c := mq.NewClient(conn)
	defer c.Close()
	cons, err := c.Consumer(context.Background(), "t", mq.WithGroup("g"), mq.WithConcurrency(2), mq.WithMaxInFlight(4))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var handled atomic.Int64
	err = cons.Consume(ctx, mq.HandlerFunc(func(context.Context, *mq.Message) error {
		if handled.Add(1) == 500 {
			cancel()
		}
		return nil
	}))
	if err != nil {
		t.Fatal(err)
	}
	if handled.Load() != 500 {
		t.Fatalf("handled %d of 500 before the deadline: the consumer stalled", handled.Load())
	}
}
