package kafka

import (
	"context"
	"fmt"
	"strconv"
	"time"

	"github.com/IBM/sarama"
	"github.com/mqkit/mq"
)

// Ping implements mq.Pinger: it refreshes the cluster metadata, one round
// trip to a live broker of the bootstrap list, bounded by ctx.
func (c *Conn) Ping(ctx context.Context) error {
	if c.isClosed() {
		return mq.ErrClosed
	}
	done := make(chan error, 1)
	go func() { done <- c.client.RefreshMetadata() }() // bounded by sarama's own timeouts too
	select {
	case err := <-done:
		if err != nil {
			return classify(fmt.Errorf("kafka: ping: %w", err))
		}
		return nil
	case <-ctx.Done():
		return fmt.Errorf("kafka: ping: %w: %w", mq.ErrUnavailable, ctx.Err())
	}
}

// PartitionLag implements mq.Lagger over Lag: per partition, Backlog is
// what the group has not committed yet (handled but uncommitted messages
// included: Kafka knows no more), Unacked is -1, and OldestAge is the age
// of the record at the committed offset, read from the partition.
func (c *Conn) PartitionLag(ctx context.Context, topic, group string) ([]mq.PartitionLag, error) {
	parts, err := c.Lag(ctx, topic, group)
	if err != nil {
		return nil, err
	}
	out := make([]mq.PartitionLag, len(parts))
	var cons sarama.Consumer
	defer func() {
		if cons != nil {
			_ = cons.Close()
		}
	}()
	for i, p := range parts {
		out[i] = mq.PartitionLag{Partition: strconv.Itoa(int(p.Partition)), Backlog: p.Lag, Unacked: -1}
		if p.Lag <= 0 {
			continue
		}
		if cons == nil {
			if cons, err = sarama.NewConsumerFromClient(c.client); err != nil {
				return nil, classify(fmt.Errorf("kafka: consumer for lag: %w", err))
			}
		}
		out[i].OldestAge = c.oldestAge(ctx, cons, topic, p)
	}
	return out, nil
}

// oldestAge reads the first record the group has not committed and
// returns its age, or -1 when it cannot be read in time.
func (c *Conn) oldestAge(ctx context.Context, cons sarama.Consumer, topic string, p PartitionLag) time.Duration {
	from := p.Committed
	if from < 0 {
		from = sarama.OffsetOldest
	}
	pc, err := cons.ConsumePartition(topic, p.Partition, from)
	if err != nil {
		return -1
	}
	defer pc.AsyncClose()
	wait := time.NewTimer(5 * time.Second)
	defer wait.Stop()
	select {
	case m, ok := <-pc.Messages():
		if !ok || m.Timestamp.IsZero() {
			return -1
		}
		return max(time.Since(m.Timestamp), time.Nanosecond)
	case <-wait.C:
	case <-ctx.Done():
	}
	return -1
}

// Position implements mq.Positioner: the partition number and offset.
func (d *delivery) Position() (partition, offset string) {
	return strconv.Itoa(int(d.pt.id)), strconv.FormatInt(d.offset, 10)
}

var (
	_ mq.Pinger     = (*Conn)(nil)
	_ mq.Lagger     = (*Conn)(nil)
	_ mq.Positioner = (*delivery)(nil)
)
