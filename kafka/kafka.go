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
// put one key on one partition (librdkafka clients, such as
// confluent-kafka and kcat, hash with CRC32 unless configured with
// partitioner=murmur2_random). The message ID travels in the record header
// "mq-id"; other headers are record headers.
//
// # Records
//
// A message is one record: Key is the record key (an empty Key is a null
// key, which the partitioner spreads instead of hashing), Body the value,
// ID the "mq-id" header, and every other header a record header. An empty
// Body is an empty value, never a null one: a null value is a tombstone,
// which deletes the key from a compacted topic, and is written only when
// asked for with the header HeaderTombstone ("mq-tombstone: true", the
// body empty; the header itself is not written). Consuming a record with a
// null value gives a message with that header set to "true" and an empty
// Body, so an empty value and a tombstone stay apart, and producing such a
// message again writes a tombstone again.
//
// Records written by other clients are consumed too: a record without the
// "mq-id" header (or with an empty one) gets the ID
// "<topic>/<partition>/<offset>", stable across redeliveries. What a record
// can hold and a message cannot is mapped as follows: of several headers
// with one name the last is kept (as Java's Headers.lastHeader reads
// them), a null header value and a null key read as "", header order is
// not kept, and a record header named "mq-tombstone" is ignored (the
// header on a delivered message says only that the value was null).
// Timestamp is the record's timestamp (its producer's CreateTime, or the
// broker's LogAppendTime if the topic is configured so; the time of
// delivery for a record that has none).
//
// Consumers read only records of committed transactions by default
// (isolation.level=read_committed): records of aborted or still-open
// transactions of other clients are never handed to a handler. Set
// Config.ReadUncommitted (isolation=read_uncommitted) to read them all.
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
// # Exactly-once transforms
//
// A handler that produces outputs and then returns (runner.Publishing,
// or a plain Produce inside a handler) is at least once: a crash or a
// rebalance after the outputs were written and before the input's offset
// was committed writes them again. Transform is the opt-in alternative
// for consume-transform-produce within one Kafka cluster: it consumes a
// topic as a member of a group and, per batch of inputs of one partition
// (in offset order), writes the outputs and commits the group's offset
// past the batch in one Kafka transaction, with sarama's transactional
// producer (Producer.Transaction.ID, idempotent, one request in flight).
// A crash, a rebalance or a failed commit aborts the transaction, and its
// inputs are transformed again from the committed offset, so a consumer
// reading the outputs with read_committed (this package's default) sees
// each input's outputs exactly once:
//
//	err := kafka.Transform(ctx, conn, kafka.TransformConfig{
//		Topic: "orders", Group: "enricher", TransactionalID: "enricher-" + hostname,
//	}, func(ctx context.Context, in *mq.Message) ([]kafka.Output, error) {
//		out := &mq.Message{ID: "enriched-" + in.ID, Key: in.Key, Body: enrich(in.Body)}
//		return []kafka.Output{{Topic: "orders-enriched", Message: out}}, nil
//	})
//
// Zombies are fenced two ways. A restarted instance with the same
// TransactionalID fences its previous incarnation and aborts its open
// transaction when it starts. A member that lost a partition in a
// rebalance cannot commit its offsets any more, because each transaction
// carries the group's generation and member ID (KIP-447, protocol version
// 2.5 or later), and a new owner waits for a pending transactional commit
// of the partition's offset before it reads from there (OffsetFetch with
// require_stable).
//
// What stays at least once: the TransformFunc itself may run more than
// once for an input (only one run's outputs are committed), so side
// effects outside Kafka, such as a database write or an HTTP call, are
// not covered; and consumers with isolation=read_uncommitted see the
// records of aborted transactions too. The input and output topics must
// be on the cluster of the Conn.
//
// RabbitMQ and Redis Streams have no such transaction: there is no way
// to publish and acknowledge atomically. There, runner.Publishing
// (outputs are published before the input is acknowledged, so none is
// lost) with deterministic output IDs (derived from the input's ID, as in
// the example) and a consumer that drops IDs it has seen (package
// idempotency) gives effectively-once processing: duplicates are written
// after a crash but handled once. The same holds on Kafka for outputs
// that go anywhere else than the Conn's cluster.
//
// # Delayed delivery
//
// A message produced with DeliverAt in the future (mq.Scheduler) waits in
// Kafka, in level topics of its topic: "<topic>.mq-delay-0ms" and
// "<topic>.mq-delay-<100·2^k>ms" for k from 0 to 28 (up to about 311
// days). A record waits in a level exactly the level's duration from the
// time the broker appended it: the level topics are created with
// message.timestamp.type=LogAppendTime, so along a partition records
// fall due in offset order, and the partition's head is the next one due
// there (give or take the last 100 ms, see below). A message with r left
// goes to the longest level not over r; when that level's wait is over it
// goes on to the level of what is left then, and with less than 100 ms
// left it waits out its own due time in place; then it enters the topic.
// That is about log2(r/100ms)/2 steps, each a record written and read.
// Level topics are made on first use (a Schedule call makes every level
// up to its longest delay at once, whatever create_topics says: they are
// this package's own, as a consumer group's offsets are) with one
// partition each, the replication of created topics,
// cleanup.policy=delete and a retention of the level's duration plus 7
// days. Do not produce to them.
//
// What moves messages is a relay that runs inside a Conn's subscriptions:
// one per Conn and topic, started by the first Consumer of the topic and
// stopped (Close waits for it) when the last one closes or the Conn
// does. It joins the consumer group "mq-delay.<topic>" only once level
// topics of the topic exist (it looks when it starts, once a second, and
// at once when its own Conn makes them), so a topic that never had a
// delayed message costs no group and no rebalance. Relays of any number
// of processes share the group (and so the topic's levels), whatever
// consumer groups their subscriptions are in. For each level it holds, a
// relay waits until the head record is due, without reading on (it holds
// about 2,000 records and a fetch of each level at most); then it moves
// all due records, of all its levels at once, in one Kafka transaction with
// the group offsets past them, with KIP-447 fencing, as Transform does:
// into the topic, with the record's key, value and headers (ID,
// HeaderDeliverAt and tombstones included, and so to the partition that
// Send picks for the key), or into the next level. No message is moved
// twice or lost when a relay is SIGKILLed, a relay joins or leaves, or the
// broker restarts (tested), for readers with read_committed, this
// package's default: readers with isolation=read_uncommitted also see the
// records of moves that were aborted, with the same ID.
//
// A message enters the topic once it is due by the relay's clock (the
// relay compares HeaderDeliverAt with its own clock, never with the
// broker's), so never before DeliverAt when the producer's and relays'
// clocks agree; a broker clock that differs from the relays' only makes
// the steps, not the delivery, earlier or later. Measured on a one-broker
// test bed (2 shared cores): of 100,000 messages due over a minute, half
// arrived within 0.1 s after they were due and 99 % within 0.4 s; 10,000
// due at one instant were all in the topic 0.5 s later. The first
// delayed message of a topic waits for the relay to join its group
// (a few hundred milliseconds).
//
// Scheduled counts what waits in the level topics past the relay group's
// committed offsets, and reads the earliest due time from them (see
// Conn.Scheduled for when it is a bound rather than exact).
//
// The limits:
//   - Delayed messages of a topic move only while some Conn has a
//     Consumer of the topic; until then they wait in the levels.
//   - The first use of a longer level, and a relay joining or leaving,
//     rebalances the relay group: moves pause for up to about a second.
//   - A relay that dies with a transaction open holds back read_committed
//     readers of the partitions it was writing to, the topic's among them,
//     until the broker aborts the transaction: after the relay's
//     transaction timeout (10 s), checked every
//     transaction.abort.timed.out.transaction.cleanup.interval.ms (10 s by
//     default).
//   - Records are deleted from a level 7 days after they were due there:
//     a message whose relays were all gone that long is lost. Kafka drops
//     the relay group's offsets offsets.retention.minutes (7 days by
//     default) after its last relay left; a relay joining after that
//     moves the messages still kept in the levels again, with the same IDs.
//   - It needs protocol version 2.5 or later, and a topic name of at most
//     226 characters (the level topic names add up to 23).
//   - Each move is a transaction: the relays need the ACLs to create,
//     write and read the level topics, to write the topic, to read and
//     commit as the group "mq-delay.<topic>", and to use transactional IDs
//     starting with "mq-delay.<topic>.".
//
// # Clusters
//
// Name several brokers in the URL (kafka://k1:9092,k2:9092,k3:9092/?...):
// the client bootstraps from any of them that answers and then follows the
// cluster's metadata, so one live broker is enough, also for a service
// that starts during an outage. Produce always waits for acks=all with the
// idempotent producer, but acks=all means "every replica now in sync",
// which may be the leader alone. What makes an acknowledged write survive
// the loss of a node is the topic's min.insync.replicas: with replication
// factor 3 set it to at least 2 (the brokers' min.insync.replicas, or
// min_insync_replicas=2 for the topics this package creates, next to
// replication=3). A write is then acknowledged only once two replicas hold
// it, and a partition left with one replica in sync refuses writes (an
// error wrapping mq.ErrUnavailable) rather than acknowledge what the next
// failure would take with it. Keep unclean.leader.election.enable=false,
// Kafka's default: with it on, a replica that fell behind may become the
// leader and drop acknowledged writes.
//
// Leader changes are followed without a restart: the producer retries a
// write on the partition's new leader once the metadata names it, and
// consumers fetch from the new leader and rejoin their group where its
// coordinator moved. A node loss costs the cluster's own failover time: a
// crashed broker's partitions move once the controller fences it, after
// broker.session.timeout.ms (9 s by default); a broker stopped cleanly
// hands them over at once (controlled shutdown). A hung broker (a frozen
// process, a partitioned machine) is fenced the same way, but this client
// gives up a connection to it only after Config.RequestTimeout (24 s by
// default), and more than once when its metadata or coordinator lookups
// land on the hung broker too. A hung group coordinator also costs
// duplicates: the offsets a member commits while it hangs are lost when
// the member's session expires, so what it handled since its last commit
// before the hang is delivered again. Measured on a 3-node test bed under
// steady load (integration/cluster; session_timeout=6s, so a 15 s request
// timeout), with nothing acknowledged lost and no key out of order in any
// run: producing and consuming resumed 7-16 s after the SIGKILL of a
// partition leader and within 0.5 s when a follower was stopped; with a
// leader paused for 25-35 s, producing resumed 15 s into the pause in half
// of the runs and only once it was unpaused in the others; with the group
// coordinator paused as well, up to everything handled during the pause
// was delivered again (6,831 of 8,900 messages in one 35 s pause).
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
// See ParseURL for the URL parameters, and Conn for lag, group and topic
// operations.
package kafka

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"sync"
	"time"

	"github.com/IBM/sarama"
	"github.com/mqkit/mq"
	"github.com/mqkit/mq/internal/closeset"
)

func init() { mq.Register("kafka", driver{}) }

type driver struct{}

func (driver) Open(ctx context.Context, u *url.URL) (mq.Conn, error) {
	cfg, err := ParseURL(u)
	if err != nil {
		return nil, err
	}
	cfg.Logger = mq.LoggerFrom(ctx)
	return NewConn(ctx, cfg)
}

// HeaderID is the record header that carries the message ID.
const HeaderID = "mq-id"

// HeaderTombstone marks a tombstone: a record with a null value, which
// deletes its key from a compacted topic. Produce writes a message whose
// Headers have HeaderTombstone set to "true" (and whose Body is empty) as
// a record with a null value, without this header; any other value of the
// header, or a body, is an error wrapping mq.ErrInvalidMessage. A
// delivered message has it set to "true" exactly when the record's value
// was null, whoever wrote it; its Body is then empty.
const HeaderTombstone = "mq-tombstone"

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

	subs closeset.Set[*subscription] // closed by Close: then the Conn is closed

	delay delayState // delayed delivery: level topics known, relays (delay.go)
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
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	client, err := newClient(ctx, cfg.Brokers, sc)
	if err != nil {
		return nil, classify(fmt.Errorf("kafka: connect to %v: %w", cfg.Brokers, err))
	}
	return &Conn{cfg: cfg, sc: sc, client: client, topics: map[string]bool{}}, nil
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
	first, err := c.subs.CloseAll()
	if !first {
		return nil
	}
	errs := []error{err}
	c.delay.close() // the subscriptions released their relays; this waits for any left
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

func (c *Conn) isClosed() bool { return c.subs.Closed() }

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

// CreateTopic creates topic with the given partitions and replication
// factor, with max.message.bytes set to Config.MaxMessageBytes and
// min.insync.replicas to Config.MinInsyncReplicas when those were
// configured. Zero (or less) means the broker's default: its
// num.partitions and default.replication.factor, which the broker applies
// from Kafka 2.4 on (KIP-464; with an older broker, or Config.Version
// below 2.4, give both). An existing topic is not an error, whatever its
// partitions. It returns once the topic's metadata is visible.
func (c *Conn) CreateTopic(ctx context.Context, topic string, partitions int32, replication int16) error {
	if (partitions <= 0 || replication <= 0) && !c.sc.Version.IsAtLeast(sarama.V2_4_0_0) {
		return fmt.Errorf("kafka: create topic %q: the broker's default partitions and replication need protocol version 2.4 or later (version=%s): set partitions= and replication=", topic, c.sc.Version)
	}
	if m := c.cfg.MinInsyncReplicas; replication > 0 && m > int(replication) {
		return fmt.Errorf("kafka: create topic %q: min_insync_replicas=%d is more than its replication factor %d: every write would be refused", topic, m, replication)
	}
	admin, err := c.adminClient()
	if err != nil {
		return classify(fmt.Errorf("kafka: admin client: %w", err))
	}
	detail := c.topicDetail(partitions, replication)
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

// topicDetail describes a topic to create: partitions and replication
// (zero or less: the broker's defaults), max.message.bytes set to
// Config.MaxMessageBytes and min.insync.replicas to
// Config.MinInsyncReplicas when those were configured.
func (c *Conn) topicDetail(partitions int32, replication int16) *sarama.TopicDetail {
	if partitions <= 0 {
		partitions = -1 // the broker's num.partitions
	}
	if replication <= 0 {
		replication = -1 // the broker's default.replication.factor
	}
	return &sarama.TopicDetail{NumPartitions: partitions, ReplicationFactor: replication, ConfigEntries: c.cfg.topicConfig()}
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
// committed yet. A group the cluster does not know gives an error wrapping
// ErrUnknownGroup rather than the whole topic as lag: a group that never
// joined, was deleted, or was forgotten (Kafka drops a group without
// members at its next offsets cleanup once it has no committed offsets
// left: those expire after offsets.retention.minutes, 7 days by default).
//
// Records of transactions count as they sit in the log: a committed
// transaction's commit marker takes an offset that consumers skip, so a
// group that handled everything a transactional producer wrote may show a
// lag of 1 on the partition until more records follow.
func (c *Conn) Lag(ctx context.Context, topic, group string) ([]PartitionLag, error) {
	admin, err := c.adminClient()
	if err != nil {
		return nil, classify(fmt.Errorf("kafka: admin client: %w", err))
	}
	if err := c.checkGroupKnown(ctx, admin, group); err != nil {
		return nil, err
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

var (
	_ mq.Conn         = (*Conn)(nil)
	_ mq.Sizer        = (*Conn)(nil)
	_ mq.GroupDeleter = (*Conn)(nil)
)
