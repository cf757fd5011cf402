// Package kafka is the Apache Kafka backend of mq, on IBM/sarama, registered
// as the kafka:// URL scheme:
//
//	import _ "github.com/mqkit/mq/kafka"
//
//	c, err := mq.Open(ctx, "kafka://broker1:9092,broker2:9092/?group=billing&concurrency=16")
//
// # Producing
//
// Produce returns after every message was acknowledged by all in-sync
// replicas (acks=all). sarama's idempotent producer is on by default, so its
// internal retries never write a message twice. Messages of one Produce call
// are pipelined. A message's Key is the record key and picks the partition
// with the Java client's murmur2 hash by default, so Go and Java producers
// put one key on one partition. The message ID travels in the record header
// "mq-id"; other headers are record headers.
//
// # Consuming
//
// A consumer is a member of a sarama consumer group. A message's offset is
// marked only after its handler finished, and a partition's committed offset
// never passes a message that has not finished, also while handlers run
// concurrently across keys inside one partition (the mq consumer's
// key-ordered concurrency). A handler error is retried in-process (Kafka has
// no broker-side nack), holding back only later messages of the same key.
// Kafka keeps no delivery count, so Attempt starts at 1 again after a
// restart or rebalance.
//
// # Rebalances
//
// When a rebalance revokes a partition, this member drains it: messages
// fetched but not yet handed to the portable consumer are dropped, and the
// member keeps the partition until the messages it handed out are settled,
// for at most Config.DrainTimeout. During the drain handlers keep running
// (the consumer may also start messages of the partition it already holds)
// and their acks are committed when it ends, so finished work is not
// redelivered. The drain ends when everything is settled, when the timeout
// passes, or at once when the subscription is closing. Then the claim is
// over: every delivery of the partition reports it through mq.Delivery's
// Lost channel (one per partition claim), so the portable consumer cancels
// the context of handlers still running, drops the partition's messages
// waiting in it and never acknowledges them; their offsets stay
// uncommitted and the partition's next owner delivers them again, from the
// committed offset, with Attempt 1. The finished offsets are committed and
// the partition is released only after that.
//
// Kafka cannot fence a member: a handler that ignores its context and is
// still running after the drain ended may overlap with the next owner
// handling the same message and the ones after it. Keep handlers shorter
// than Config.DrainTimeout or let them honour ctx; per-key order across
// members holds for handlers that do.
//
// # Errors
//
// Errors from a cluster that cannot be reached or cannot serve the request
// right now (no broker reachable, connections refused, reset or timed out,
// sarama's circuit breaker open, no partition leader, not enough in-sync
// replicas, a coordinator or controller moving) wrap mq.ErrUnavailable
// along with sarama's error, from Produce, mq.Open, Consumer, Lag and
// CreateTopic alike. A context that ends first gives the context's error
// instead. Produce during or after Close returns an error wrapping
// mq.ErrClosed.
//
// Records written by other clients are consumed too: a record without the
// "mq-id" header gets the ID "<topic>/<partition>/<offset>", stable across
// redeliveries.
//
// See ParseURL for the URL parameters, and Conn for lag and topic
// operations.
package kafka

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"strconv"
	"sync"
	"time"

	"github.com/IBM/sarama"
	"github.com/mqkit/mq"
)

func init() { mq.Register("kafka", driver{}) }

type driver struct{}

func (driver) Open(ctx context.Context, u *url.URL) (mq.Conn, error) {
	cfg, err := ParseURL(u)
	if err != nil {
		return nil, err
	}
	return NewConn(ctx, cfg)
}

// HeaderID is the record header that carries the message ID.
const HeaderID = "mq-id"

// Conn is a connection to a Kafka cluster: the mq.Conn of kafka:// URLs.
// Reach it from a client with FromClient.
type Conn struct {
	cfg    Config
	sc     *sarama.Config
	client sarama.Client

	prodOnce sync.Once
	prod     *producer
	prodErr  error

	adminOnce sync.Once
	admin     sarama.ClusterAdmin
	adminErr  error

	topicsMu sync.Mutex
	topics   map[string]bool // topics known to exist

	mu     sync.Mutex
	closed bool
	subs   map[*subscription]struct{}
}

// NewConn connects to the cluster cfg names.
func NewConn(ctx context.Context, cfg Config) (*Conn, error) {
	if len(cfg.Brokers) == 0 {
		return nil, fmt.Errorf("%w: no Kafka brokers", mq.ErrInvalidURL)
	}
	sc, err := cfg.sarama()
	if err != nil {
		return nil, err
	}
	client, err := newClient(ctx, cfg.Brokers, sc)
	if err != nil {
		return nil, classify(fmt.Errorf("kafka: connect to %v: %w", cfg.Brokers, err))
	}
	return &Conn{cfg: cfg, sc: sc, client: client, topics: map[string]bool{}, subs: map[*subscription]struct{}{}}, nil
}

// newClient is sarama.NewClient bounded by ctx: sarama's own dial and
// metadata timeouts still apply, and a ctx that ends first abandons the
// attempt (its client is closed when it finishes).
func newClient(ctx context.Context, brokers []string, sc *sarama.Config) (sarama.Client, error) {
	type result struct {
		c   sarama.Client
		err error
	}
	ch := make(chan result, 1)
	go func() {
		c, err := sarama.NewClient(brokers, sc)
		ch <- result{c, err}
	}()
	select {
	case r := <-ch:
		return r.c, r.err
	case <-ctx.Done():
		go func() {
			if r := <-ch; r.c != nil {
				_ = r.c.Close()
			}
		}()
		return nil, ctx.Err()
	}
}

// FromClient returns the Kafka connection of a client opened with a kafka://
// URL.
func FromClient(c *mq.Client) (*Conn, bool) {
	k, ok := c.Conn().(*Conn)
	return k, ok
}

// Sarama returns the underlying sarama client, for operations this package
// does not offer. Do not close it.
func (c *Conn) Sarama() sarama.Client { return c.client }

// MaxMessageBytes is the producer's size limit (Config.MaxMessageBytes),
// checked by Produce before sending.
func (c *Conn) MaxMessageBytes() int { return c.cfg.maxMessageBytes() }

// Close closes consumers, the producer and the connection. It is
// idempotent.
func (c *Conn) Close() error {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return nil
	}
	c.closed = true
	subs := make([]*subscription, 0, len(c.subs))
	for s := range c.subs {
		subs = append(subs, s)
	}
	c.mu.Unlock()
	var errs []error
	for _, s := range subs {
		errs = append(errs, s.Close())
	}
	c.prodOnce.Do(func() { c.prodErr = mq.ErrClosed })
	if c.prod != nil {
		errs = append(errs, c.prod.close())
	}
	c.adminOnce.Do(func() { c.adminErr = mq.ErrClosed })
	if c.admin != nil {
		errs = append(errs, c.admin.Close()) // closes c.client too
	}
	if err := c.client.Close(); !errors.Is(err, sarama.ErrClosedClient) {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

func (c *Conn) isClosed() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.closed
}

func (c *Conn) adminClient() (sarama.ClusterAdmin, error) {
	c.adminOnce.Do(func() {
		c.admin, c.adminErr = sarama.NewClusterAdminFromClient(c.client)
	})
	return c.admin, c.adminErr
}

// ErrNoTopic is returned (wrapped) when a topic does not exist and
// Config.CreateTopics is off.
var ErrNoTopic = errors.New("kafka: topic does not exist")

// ensureTopic makes sure topic exists, creating it when configured to.
func (c *Conn) ensureTopic(ctx context.Context, topic string) error {
	c.topicsMu.Lock()
	known := c.topics[topic]
	c.topicsMu.Unlock()
	if known {
		return nil
	}
	exists, err := c.topicExists(topic)
	if err != nil {
		return err
	}
	if !exists {
		if !c.cfg.CreateTopics {
			return fmt.Errorf("%w: %q (create it, or set create_topics=true to create topics on first use)", ErrNoTopic, topic)
		}
		if err := c.CreateTopic(ctx, topic, c.cfg.Partitions, c.cfg.ReplicationFactor); err != nil {
			return err
		}
	}
	c.topicsMu.Lock()
	c.topics[topic] = true
	c.topicsMu.Unlock()
	return nil
}

func (c *Conn) topicExists(topic string) (bool, error) {
	err := c.client.RefreshMetadata(topic)
	switch {
	case err == nil:
		parts, err := c.client.Partitions(topic)
		return err == nil && len(parts) > 0, nil
	case errors.Is(err, sarama.ErrUnknownTopicOrPartition):
		return false, nil
	default:
		return false, classify(fmt.Errorf("kafka: metadata for %q: %w", topic, err))
	}
}

// CreateTopic creates topic with the given partitions (0 means 1) and
// replication factor (0 means the broker's default), with max.message.bytes
// set to Config.MaxMessageBytes when that was configured. An existing topic
// is not an error. It returns once the topic's metadata is visible.
func (c *Conn) CreateTopic(ctx context.Context, topic string, partitions int32, replication int16) error {
	admin, err := c.adminClient()
	if err != nil {
		return classify(fmt.Errorf("kafka: admin client: %w", err))
	}
	if partitions <= 0 {
		partitions = 1
	}
	if replication <= 0 {
		replication = -1
	}
	detail := &sarama.TopicDetail{NumPartitions: partitions, ReplicationFactor: replication}
	if c.cfg.MaxMessageBytes > 0 {
		v := strconv.Itoa(c.cfg.MaxMessageBytes + 1024) // room for the batch framing
		detail.ConfigEntries = map[string]*string{"max.message.bytes": &v}
	}
	// A *sarama.TopicError unwraps to its KError, so errors.Is sees it.
	if err := admin.CreateTopic(topic, detail, false); err != nil && !errors.Is(err, sarama.ErrTopicAlreadyExists) {
		return classify(fmt.Errorf("kafka: create topic %q: %w", topic, err))
	}
	for {
		if ok, err := c.topicExists(topic); err == nil && ok {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("kafka: waiting for new topic %q: %w", topic, ctx.Err())
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// PartitionLag is how far a consumer group is behind on one partition.
type PartitionLag struct {
	Partition int32
	// Committed is the group's committed offset (-1 when it has none).
	Committed int64
	// End is the partition's log end offset (the next offset to be written).
	End int64
	// Lag is End minus Committed; with no commit, End minus the oldest
	// retained offset.
	Lag int64
}

// Lag returns, for each partition of topic, how many messages group has not
// committed yet.
func (c *Conn) Lag(ctx context.Context, topic, group string) ([]PartitionLag, error) {
	admin, err := c.adminClient()
	if err != nil {
		return nil, classify(fmt.Errorf("kafka: admin client: %w", err))
	}
	if err := c.client.RefreshMetadata(topic); err != nil {
		return nil, classify(fmt.Errorf("kafka: metadata for %q: %w", topic, err))
	}
	parts, err := c.client.Partitions(topic)
	if err != nil {
		return nil, classify(fmt.Errorf("kafka: partitions of %q: %w", topic, err))
	}
	offs, err := admin.ListConsumerGroupOffsets(group, map[string][]int32{topic: parts})
	if err != nil {
		return nil, classify(fmt.Errorf("kafka: offsets of group %q: %w", group, err))
	}
	if offs.Err != sarama.ErrNoError {
		return nil, classify(fmt.Errorf("kafka: offsets of group %q: %w", group, offs.Err))
	}
	out := make([]PartitionLag, 0, len(parts))
	for _, p := range parts {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		end, err := c.client.GetOffset(topic, p, sarama.OffsetNewest)
		if err != nil {
			return nil, classify(fmt.Errorf("kafka: end offset of %s/%d: %w", topic, p, err))
		}
		pl := PartitionLag{Partition: p, Committed: -1, End: end}
		if b := offs.GetBlock(topic, p); b != nil && b.Offset >= 0 {
			pl.Committed = b.Offset
			pl.Lag = end - b.Offset
		} else {
			oldest, err := c.client.GetOffset(topic, p, sarama.OffsetOldest)
			if err != nil {
				return nil, classify(fmt.Errorf("kafka: oldest offset of %s/%d: %w", topic, p, err))
			}
			pl.Lag = end - oldest
		}
		out = append(out, pl)
	}
	return out, nil
}

var _ mq.Conn = (*Conn)(nil)
var _ mq.Sizer = (*Conn)(nil)
