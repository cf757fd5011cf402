package bench

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"sort"
	"strconv"
	"sync"
	"time"

	"github.com/IBM/sarama"

	"github.com/mqkit/mq/kafka"
)

// bareKafka is the workload on sarama alone.
type bareKafka struct {
	cfg kafka.Config
}

func newBareKafka(u *url.URL) (System, error) {
	cfg, err := kafka.ParseURL(u)
	if err != nil {
		return nil, err
	}
	if cfg.TLS != nil || cfg.SASLMechanism != "" {
		return nil, errors.New("bench: the bare Kafka run supports plaintext brokers only")
	}
	return bareKafka{cfg: cfg}, nil
}

func (bareKafka) Name() string { return "bare" }

// saramaConfig is what an expert configures for at-least-once with the
// durability of the SDK: acks=all, idempotent, successes awaited; offsets
// marked after handling, committed every second.
func (b bareKafka) saramaConfig() *sarama.Config {
	sc := sarama.NewConfig()
	sc.ClientID = "mqbench-bare"
	sc.Version = sarama.V2_8_0_0
	if b.cfg.Version != (sarama.KafkaVersion{}) {
		sc.Version = b.cfg.Version
	}
	sc.Producer.RequiredAcks = sarama.WaitForAll
	sc.Producer.Idempotent = true
	sc.Net.MaxOpenRequests = 1
	sc.Producer.Return.Successes = true
	sc.Producer.Return.Errors = true
	sc.Producer.Retry.Max = 10
	sc.Producer.Retry.Backoff = 200 * time.Millisecond
	sc.Producer.Compression = b.cfg.Compression
	sc.Producer.Flush.Frequency = b.cfg.Linger
	sc.Producer.Flush.Bytes = b.cfg.BatchBytes
	if b.cfg.MaxMessageBytes > 0 {
		sc.Producer.MaxMessageBytes = b.cfg.MaxMessageBytes
	}
	sc.Consumer.Offsets.Initial = sarama.OffsetOldest
	sc.Consumer.Offsets.AutoCommit.Enable = true
	sc.Consumer.Offsets.AutoCommit.Interval = time.Second
	if b.cfg.SessionTimeout > 0 {
		sc.Consumer.Group.Session.Timeout = b.cfg.SessionTimeout
		sc.Consumer.Group.Heartbeat.Interval = b.cfg.SessionTimeout / 3
	}
	return sc
}

func (b bareKafka) Open(ctx context.Context, s Setup) (Session, error) {
	sc := b.saramaConfig()
	client, err := sarama.NewClient(b.cfg.Brokers, sc)
	if err != nil {
		return nil, err
	}
	// The topic the SDK creates with create_topics=true: same partitions,
	// replication and max.message.bytes.
	admin, err := sarama.NewClusterAdminFromClient(client)
	if err != nil {
		_ = client.Close()
		return nil, err
	}
	detail := &sarama.TopicDetail{NumPartitions: max(b.cfg.Partitions, 1), ReplicationFactor: -1}
	if b.cfg.ReplicationFactor > 0 {
		detail.ReplicationFactor = b.cfg.ReplicationFactor
	}
	if b.cfg.MaxMessageBytes > 0 {
		v := strconv.Itoa(b.cfg.MaxMessageBytes + 1024)
		detail.ConfigEntries = map[string]*string{"max.message.bytes": &v}
	}
	if err := admin.CreateTopic(s.Topic, detail, false); err != nil {
		_ = client.Close()
		return nil, fmt.Errorf("create topic: %w", err)
	}
	for {
		if err := client.RefreshMetadata(s.Topic); err == nil {
			if parts, err := client.Partitions(s.Topic); err == nil && len(parts) > 0 {
				break
			}
		}
		select {
		case <-ctx.Done():
			_ = client.Close()
			return nil, ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
	ap, err := sarama.NewAsyncProducerFromClient(client)
	if err != nil {
		_ = client.Close()
		return nil, err
	}
	cg, err := sarama.NewConsumerGroup(b.cfg.Brokers, s.Group, sc)
	if err != nil {
		ap.AsyncClose()
		_ = client.Close()
		return nil, err
	}
	ks := &kafkaSession{client: client, ap: ap, cg: cg, topic: s.Topic, conc: s.Concurrency, results: make(chan struct{})}
	go ks.route()
	return ks, nil
}

type kafkaSession struct {
	client  sarama.Client
	ap      sarama.AsyncProducer
	cg      sarama.ConsumerGroup
	topic   string
	conc    int
	results chan struct{} // closed when route has returned
	once    sync.Once
}

// kafkaBatch is one Produce call waiting for its acknowledgements.
type kafkaBatch struct {
	wg  sync.WaitGroup
	mu  sync.Mutex
	err error
}

// route hands every result to the batch that waits for it.
func (k *kafkaSession) route() {
	defer close(k.results)
	succ, errs := k.ap.Successes(), k.ap.Errors()
	for succ != nil || errs != nil {
		select {
		case m, ok := <-succ:
			if !ok {
				succ = nil
				continue
			}
			m.Metadata.(*kafkaBatch).wg.Done()
		case e, ok := <-errs:
			if !ok {
				errs = nil
				continue
			}
			b := e.Msg.Metadata.(*kafkaBatch)
			b.mu.Lock()
			b.err = e.Err
			b.mu.Unlock()
			b.wg.Done()
		}
	}
}

// Produce hands msgs to the shared AsyncProducer and waits for every
// acknowledgement. Like the SDK, it keeps no message after returning; it
// does not give up early when ctx ends, since sarama may still hold the
// bodies.
func (k *kafkaSession) Produce(_ context.Context, msgs []Message) error {
	b := &kafkaBatch{}
	pms := make([]sarama.ProducerMessage, len(msgs))
	b.wg.Add(len(msgs))
	for i, m := range msgs {
		pm := &pms[i]
		pm.Topic = k.topic
		if m.Key != "" {
			pm.Key = sarama.StringEncoder(m.Key)
		}
		pm.Value = sarama.ByteEncoder(m.Body) // kept until acknowledged: safe
		pm.Metadata = b
		k.ap.Input() <- pm
	}
	b.wg.Wait()
	return b.err
}

func (k *kafkaSession) Consume(ctx context.Context, h Handler) error {
	g := &kafkaGroup{h: h, conc: k.conc}
	for ctx.Err() == nil {
		if err := k.cg.Consume(ctx, []string{k.topic}, g); err != nil {
			if errors.Is(err, sarama.ErrClosedConsumerGroup) {
				return err
			}
			select {
			case <-ctx.Done():
			case <-time.After(200 * time.Millisecond):
			}
		}
	}
	return nil
}

func (k *kafkaSession) Close() error {
	var err error
	k.once.Do(func() {
		err = k.cg.Close()
		k.ap.AsyncClose()
		<-k.results
		err = errors.Join(err, k.client.Close())
	})
	return err
}

// kafkaGroup consumes each claimed partition with conc workers by key
// hash, marking an offset once it and every earlier one were handled.
type kafkaGroup struct {
	h    Handler
	conc int
}

func (*kafkaGroup) Setup(sarama.ConsumerGroupSession) error   { return nil }
func (*kafkaGroup) Cleanup(sarama.ConsumerGroupSession) error { return nil }

func (g *kafkaGroup) ConsumeClaim(sess sarama.ConsumerGroupSession, claim sarama.ConsumerGroupClaim) error {
	inflight := bareWindow(g.conc)
	slots := make(chan struct{}, inflight)
	tr := &offsetTracker{mark: func(next int64) { sess.MarkOffset(claim.Topic(), claim.Partition(), next, "") }}
	w := startWorkers(g.conc, inflight, func(m *sarama.ConsumerMessage) {
		g.h(string(m.Key), m.Value)
		tr.done(m.Offset)
		<-slots
	})
	defer w.stop()
	for {
		select {
		case m, ok := <-claim.Messages():
			if !ok {
				return nil
			}
			select {
			case slots <- struct{}{}:
			case <-sess.Context().Done():
				return nil
			}
			tr.add(m.Offset)
			submit(w, m.Key, m)
		case <-sess.Context().Done():
			return nil
		}
	}
}

// offsetTracker holds a partition's handed-out offsets in order and marks
// the next offset to read past the finished prefix, so a commit never
// passes a message still being handled.
type offsetTracker struct {
	mark func(next int64)

	mu   sync.Mutex
	offs []int64 // ascending
	fin  []bool
}

func (t *offsetTracker) add(off int64) {
	t.mu.Lock()
	t.offs = append(t.offs, off)
	t.fin = append(t.fin, false)
	t.mu.Unlock()
}

func (t *offsetTracker) done(off int64) {
	t.mu.Lock()
	defer t.mu.Unlock()
	i := sort.Search(len(t.offs), func(i int) bool { return t.offs[i] >= off })
	if i == len(t.offs) || t.offs[i] != off {
		return
	}
	t.fin[i] = true
	n := 0
	for n < len(t.fin) && t.fin[n] {
		n++
	}
	if n == 0 {
		return
	}
	t.mark(t.offs[n-1] + 1)
	t.offs = append(t.offs[:0], t.offs[n:]...)
	t.fin = append(t.fin[:0], t.fin[n:]...)
}
