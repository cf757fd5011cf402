package kafka

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"sync"
	"time"

	"github.com/IBM/sarama"
	"github.com/mqkit/mq"
	"github.com/mqkit/mq/internal/backoff"
)

// Output is one record a TransformFunc writes: Message produced to Topic.
// Message is encoded as Produce encodes it (Key, Body, ID in the "mq-id"
// header, other headers, HeaderTombstone); an empty ID gets a new one.
// A Message with DeliverAt in the future is scheduled as Produce would
// (see "Delayed delivery" in the package documentation), inside the
// transaction: it enters Topic once, when due, or never if the
// transaction aborts.
type Output struct {
	Topic   string
	Message *mq.Message
}

// TransformFunc turns one input message into the records to write for
// it, possibly none. It may be called more than once for one input (after
// a crash, a rebalance or an aborted transaction), but only the outputs of
// one call are ever committed. An error is retried after a backoff, unless
// it is marked with mq.Permanent, which ends Transform with that error.
// ctx ends when the input's partition is revoked or Transform stops.
// The input is read as a Consumer reads it: the SDK's delivery headers
// become DeliverAt and Attempt (mq.TakeDeliveryHeaders), and a retry copy
// addressed to another consumer group (middleware.RetryLater) is skipped
// without a call.
type TransformFunc func(ctx context.Context, in *mq.Message) ([]Output, error)

// TransformConfig configures Transform.
type TransformConfig struct {
	// Topic is the input topic. Required.
	Topic string
	// Group is the consumer group that reads Topic and whose offsets the
	// transactions commit. Required.
	Group string
	// TransactionalID identifies this instance's transactional producer.
	// Required. It must be unique among the instances running at once
	// and should stay the same across restarts of one instance (say, the
	// pod or host name): a restarted instance then fences its previous
	// incarnation and aborts its open transaction at once, instead of
	// leaving it to expire after the transaction timeout (a minute), during
	// which read_committed consumers of the output partitions it wrote to
	// wait.
	TransactionalID string
	// MaxBatch is the most inputs of one partition committed in one
	// transaction. Default 100.
	MaxBatch int
}

func (c TransformConfig) maxBatch() int {
	if c.MaxBatch <= 0 {
		return 100
	}
	return c.MaxBatch
}

// Transform consumes cfg.Topic as a member of cfg.Group and, for each
// batch of inputs of one partition (in offset order), writes the outputs fn
// returns for them and the group's offset past the batch in one Kafka
// transaction. A crash, a rebalance or a failed commit aborts the open
// transaction, and the inputs of an aborted transaction are transformed
// again from the committed offset, so readers with
// isolation.level=read_committed (the default of this package's consumers)
// see the outputs of every input exactly once. See "Exactly-once
// transforms" in the package documentation.
//
// Transform blocks until ctx ends, when it returns nil, or until fn
// returns a permanent error or the transform cannot go on, when it
// returns an error. It uses connections of its own (a transactional
// producer and a consumer group member, both configured from c's Config),
// which it closes before it returns; cancel ctx to stop it before closing
// c. It needs protocol version 2.5 or later (Config.Version): the
// transactions carry the group generation, so a member that lost its
// partitions in a rebalance cannot commit their offsets (KIP-447).
func Transform(ctx context.Context, c *Conn, cfg TransformConfig, fn TransformFunc) error {
	switch {
	case fn == nil:
		return errors.New("kafka: Transform needs a non-nil TransformFunc")
	case cfg.Topic == "" || cfg.Group == "" || cfg.TransactionalID == "":
		return errors.New("kafka: Transform needs TransformConfig.Topic, Group and TransactionalID")
	case !c.sc.Version.IsAtLeast(sarama.V2_5_0_0):
		return fmt.Errorf("kafka: Transform needs protocol version 2.5 or later (version=%s)", c.sc.Version)
	case c.isClosed():
		return mq.ErrClosed
	}
	if err := c.ensureTopic(ctx, cfg.Topic); err != nil {
		return err
	}
	sc := transformSarama(c.sc, cfg.TransactionalID)
	if err := sc.Validate(); err != nil {
		return fmt.Errorf("kafka: transform configuration: %w", err)
	}
	t := &transformer{conn: c, cfg: cfg, fn: fn, sc: sc}
	// The producer comes first: initialising it fences a previous
	// incarnation with the same transactional ID and ends its open
	// transaction before this member reads any committed offset.
	if err := t.newProducer(ctx); err != nil {
		return err
	}
	defer t.closeProducer()
	client, err := newClient(ctx, c.cfg.Brokers, sc)
	if err != nil {
		return classify(fmt.Errorf("kafka: transform: connect consumer: %w", err))
	}
	defer client.Close()
	cg, err := sarama.NewConsumerGroupFromClient(cfg.Group, client)
	if err != nil {
		return classify(fmt.Errorf("kafka: transform: consumer group %q: %w", cfg.Group, err))
	}
	defer cg.Close()
	return t.run(ctx, cg)
}

// transformSarama derives the configuration of a transform's producer and
// consumer group member from the connection's: a transactional producer,
// read_committed, no auto-commit (the transactions commit the offsets).
func transformSarama(base *sarama.Config, txnID string) *sarama.Config {
	sc := *base
	sc.Producer.Idempotent = true
	sc.Producer.RequiredAcks = sarama.WaitForAll
	sc.Producer.Return.Successes = true
	sc.Producer.Return.Errors = true
	sc.Producer.Transaction.ID = txnID
	sc.Net.MaxOpenRequests = 1
	sc.Consumer.IsolationLevel = sarama.ReadCommitted
	sc.Consumer.Offsets.AutoCommit.Enable = false
	return &sc
}

// transformer is one running Transform: a sarama consumer group handler
// whose claims share one transactional producer, one transaction at a
// time.
type transformer struct {
	conn *Conn
	cfg  TransformConfig
	fn   TransformFunc
	sc   *sarama.Config

	mu     sync.Mutex // held for a whole transaction; guards the fields below
	prod   sarama.SyncProducer
	broken error // the producer is in a fatal state: replace it before the next session
	failed error // fn returned a permanent error: Transform returns it
	end    context.CancelFunc
}

func (t *transformer) log() *slog.Logger {
	if t.conn.cfg.Logger == nil {
		return slog.Default()
	}
	return t.conn.cfg.Logger
}

// newProducer creates the transactional producer, which registers the
// transactional ID with its coordinator (InitProducerId), bounded by ctx.
func (t *transformer) newProducer(ctx context.Context) error {
	type result struct {
		p   sarama.SyncProducer
		err error
	}
	ch := make(chan result, 1)
	go func() {
		p, err := sarama.NewSyncProducer(t.conn.cfg.Brokers, t.sc)
		ch <- result{p, err}
	}()
	select {
	case r := <-ch:
		if r.err != nil {
			return classify(fmt.Errorf("kafka: transform: transactional producer %q: %w", t.cfg.TransactionalID, r.err))
		}
		t.mu.Lock()
		t.prod, t.broken = r.p, nil
		t.mu.Unlock()
		return nil
	case <-ctx.Done():
		go func() {
			if r := <-ch; r.p != nil {
				_ = r.p.Close()
			}
		}()
		return ctx.Err()
	}
}

func (t *transformer) closeProducer() {
	t.mu.Lock()
	p := t.prod
	t.prod = nil
	t.mu.Unlock()
	if p != nil {
		_ = p.Close()
	}
}

// run keeps the member in the group, one session after another, until ctx
// ends or the transform fails. A producer in a fatal state (fenced, or
// failed in a way a transaction abort cannot repair) ends the session and
// is replaced before the member rejoins.
func (t *transformer) run(ctx context.Context, cg sarama.ConsumerGroup) error {
	failures := 0
	for {
		sctx, end := context.WithCancel(ctx)
		t.mu.Lock()
		t.end = end
		t.mu.Unlock()
		err := cg.Consume(sctx, []string{t.cfg.Topic}, t)
		end()
		if ctx.Err() != nil {
			return nil
		}
		t.mu.Lock()
		failed, broken := t.failed, t.broken
		t.mu.Unlock()
		if failed != nil {
			return failed
		}
		if errors.Is(err, sarama.ErrClosedConsumerGroup) {
			return fmt.Errorf("kafka: transform: %w", mq.ErrClosed)
		}
		if t.conn.isClosed() {
			return mq.ErrClosed
		}
		if err == nil && broken == nil {
			failures = 0
			continue // a rebalance ended the session; join the next one
		}
		failures++
		wait := backoff.Equal(backoff.Exp(failures, 200*time.Millisecond, 5*time.Second))
		if broken != nil {
			t.log().Warn("kafka: transform: transactional producer failed; replacing it and rejoining",
				"group", t.cfg.Group, "topic", t.cfg.Topic, "transactional_id", t.cfg.TransactionalID, "error", broken, "retry_in", wait)
		} else {
			t.log().Warn("kafka: transform: consumer group session failed; rejoining",
				"group", t.cfg.Group, "topic", t.cfg.Topic, "error", classify(err), "retry_in", wait)
		}
		if !backoff.Sleep(ctx, wait, nil) {
			return nil
		}
		if broken != nil {
			t.closeProducer()
			if err := t.newProducer(ctx); err != nil {
				if ctx.Err() != nil {
					return nil
				}
				// Keep the nil producer marked broken: the next session
				// ends at once and the loop tries again.
				t.mu.Lock()
				t.broken = err
				t.mu.Unlock()
			}
		}
	}
}

// Setup is called by sarama at the start of a group session.
func (t *transformer) Setup(sarama.ConsumerGroupSession) error { return nil }

// Cleanup is called by sarama at the end of a group session.
func (t *transformer) Cleanup(sarama.ConsumerGroupSession) error { return nil }

// ConsumeClaim transforms one partition, a batch per transaction, until
// the session ends. A transaction under way when the session ends is still
// committed: the group's generation cannot change before this member
// rejoins, which it does only after every claim returned.
func (t *transformer) ConsumeClaim(sess sarama.ConsumerGroupSession, claim sarama.ConsumerGroupClaim) error {
	ctx := sess.Context()
	meta := &sarama.ConsumerGroupMetadata{GroupID: t.cfg.Group, GenerationID: sess.GenerationID(), MemberID: sess.MemberID()}
	batch := make([]*sarama.ConsumerMessage, 0, t.cfg.maxBatch())
	for {
		batch = batch[:0]
		select {
		case msg, ok := <-claim.Messages():
			if !ok {
				return nil
			}
			batch = append(batch, msg)
		case <-ctx.Done():
			return nil
		}
	fill:
		for len(batch) < cap(batch) {
			select {
			case msg, ok := <-claim.Messages():
				if !ok {
					break fill
				}
				batch = append(batch, msg)
			default:
				break fill
			}
		}
		if err := t.process(ctx, meta, batch); err != nil {
			if ctx.Err() != nil {
				return nil // the session ended; the next owner starts from the committed offset
			}
			return err
		}
	}
}

// process transforms batch and commits its outputs and offset in one
// transaction, retrying until that succeeds, the session ends or the
// transform fails. An error means the session must end.
func (t *transformer) process(ctx context.Context, meta *sarama.ConsumerGroupMetadata, batch []*sarama.ConsumerMessage) error {
	var outs []Output
	for _, msg := range batch {
		o, err := t.transform(ctx, msg)
		if err != nil {
			return err
		}
		outs = append(outs, o...)
	}
	for _, o := range outs {
		if o.Message == nil || o.Topic == "" {
			return t.fail(fmt.Errorf("kafka: transform: %w: an Output needs a Topic and a Message", mq.ErrInvalidMessage))
		}
		if o.Message.ID == "" {
			o.Message.ID = mq.NewID()
		}
		if err := t.conn.ensureTopic(ctx, o.Topic); err != nil {
			if errors.Is(err, ErrNoTopic) {
				return t.fail(fmt.Errorf("kafka: transform: %w", err))
			}
			return err
		}
	}
	if err := t.ensureDelayLevels(ctx, outs); err != nil {
		return err
	}
	last := batch[len(batch)-1]
	offsets := map[string][]*sarama.PartitionOffsetMetadata{
		last.Topic: {{Partition: last.Partition, Offset: last.Offset + 1}},
	}
	for attempt := 1; ; attempt++ {
		err := t.commit(outs, offsets, meta)
		if err == nil {
			return nil
		}
		if t.isFailed() {
			return err
		}
		wait := backoff.Equal(backoff.Exp(attempt, 100*time.Millisecond, 5*time.Second))
		t.log().Warn("kafka: transform: transaction aborted; transforming the batch again",
			"topic", last.Topic, "partition", last.Partition, "offset", batch[0].Offset, "inputs", len(batch), "error", err, "retry_in", wait)
		if !backoff.Sleep(ctx, wait, nil) {
			return ctx.Err()
		}
	}
}

// transform calls fn for one input, retrying errors that are not
// permanent.
func (t *transformer) transform(ctx context.Context, msg *sarama.ConsumerMessage) ([]Output, error) {
	for attempt := 1; ; attempt++ {
		in := toMessage(msg)
		in.Attempt = attempt
		if !mq.TakeDeliveryHeaders(in, t.cfg.Group) {
			return nil, nil // another group's retry copy (middleware.RetryLater): not ours, no outputs
		}
		outs, err := t.fn(ctx, in)
		if err == nil {
			return outs, nil
		}
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		if mq.IsPermanent(err) {
			return nil, t.fail(fmt.Errorf("kafka: transform of message %s (%s/%d/%d): %w", in.ID, msg.Topic, msg.Partition, msg.Offset, err))
		}
		wait := backoff.Equal(backoff.Exp(attempt, 100*time.Millisecond, 10*time.Second))
		t.log().Warn("kafka: transform failed; retrying", "id", in.ID, "topic", msg.Topic, "partition", msg.Partition, "offset", msg.Offset, "attempt", attempt, "error", err, "retry_in", wait)
		if !backoff.Sleep(ctx, wait, nil) {
			return nil, ctx.Err()
		}
	}
}

// fail records a permanent error and ends the session; Transform returns
// err.
func (t *transformer) fail(err error) error {
	t.mu.Lock()
	if t.failed == nil {
		t.failed = err
	}
	end := t.end
	t.mu.Unlock()
	end()
	return err
}

func (t *transformer) isFailed() bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.failed != nil || t.broken != nil
}

// commit runs one transaction: outs, then the offsets, then the commit.
// On failure the transaction is aborted; a producer that cannot abort is
// marked broken and the session ended.
func (t *transformer) commit(outs []Output, offsets map[string][]*sarama.PartitionOffsetMetadata, meta *sarama.ConsumerGroupMetadata) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	p := t.prod
	if t.broken != nil || p == nil {
		t.end()
		return fmt.Errorf("kafka: transform: transactional producer unusable: %w", t.broken)
	}
	// Records are built afresh for each attempt: sarama keeps per-attempt
	// state in a ProducerMessage.
	pms := make([]*sarama.ProducerMessage, len(outs))
	now := time.Now()
	for i, o := range outs {
		o = delayedOutput(o, now)
		pm, err := record(o.Topic, o.Message, t.conn.cfg.maxMessageBytes())
		if err != nil {
			t.failed = err
			t.end()
			return err
		}
		pms[i] = pm
	}
	broken, err := commitTxn(p, fmt.Sprintf("kafka: transform %q", t.cfg.TransactionalID), pms, offsets, meta)
	if broken {
		t.broken = err
		t.end()
	}
	return err
}

// commitTxn writes pms and the consumer group offsets in one transaction
// of p (Transform's outputs, the delay relay's moves). On failure it
// aborts what it opened and returns the cause, prefixed with who; broken
// reports that p could not abort (or hit a fatal error) and must be
// replaced.
func commitTxn(p sarama.SyncProducer, who string, pms []*sarama.ProducerMessage, offsets map[string][]*sarama.PartitionOffsetMetadata, meta *sarama.ConsumerGroupMetadata) (broken bool, err error) {
	fail := func(cause error) (bool, error) {
		cause = classify(fmt.Errorf("%s: %w", who, cause))
		if p.TxnStatus()&sarama.ProducerTxnFlagFatalError == 0 {
			if p.TxnStatus()&sarama.ProducerTxnFlagReady != 0 {
				return false, cause // nothing open
			}
			aerr := p.AbortTxn()
			if aerr == nil {
				return false, cause
			}
			cause = fmt.Errorf("%w; abort: %w", cause, aerr)
		}
		return true, cause
	}
	if err := p.BeginTxn(); err != nil {
		return fail(fmt.Errorf("begin transaction: %w", err))
	}
	if len(pms) > 0 {
		if err := p.SendMessages(pms); err != nil {
			return fail(fmt.Errorf("produce %d records: %w", len(pms), firstProducerError(err)))
		}
	}
	if err := p.AddOffsetsToTxnWithGroupMetadata(offsets, meta); err != nil {
		return fail(fmt.Errorf("add offsets to transaction: %w", err))
	}
	if err := p.CommitTxn(); err != nil {
		return fail(fmt.Errorf("commit transaction: %w", err))
	}
	return false, nil
}

// firstProducerError unwraps sarama's ProducerErrors to the first one, so
// the error says what went wrong rather than how many failed.
func firstProducerError(err error) error {
	var pe sarama.ProducerErrors
	if errors.As(err, &pe) && len(pe) > 0 {
		return fmt.Errorf("%d failed, first: %w", len(pe), produceError(pe[0]))
	}
	return err
}

// record encodes m for topic as Send does.
func record(topic string, m *mq.Message, limit int) (*sarama.ProducerMessage, error) {
	pm := &sarama.ProducerMessage{}
	if err := fillRecord(pm, topic, m, limit); err != nil {
		return nil, err
	}
	return pm, nil
}

// ensureDelayLevels makes the delay level topics that the outputs due later
// (Message.DeliverAt in the future) need, failing the transform for one
// beyond mq.MaxDelay or a topic that cannot have delayed messages.
func (t *transformer) ensureDelayLevels(ctx context.Context, outs []Output) error {
	now := time.Now()
	top := map[string]int{} // per output topic, the longest level needed
	for _, o := range outs {
		d := o.Message.DeliverAt.Sub(now)
		if o.Message.DeliverAt.IsZero() || d <= 0 {
			continue
		}
		if d > mq.MaxDelay {
			return t.fail(fmt.Errorf("kafka: transform: %w: output %s is due in %v, more than mq.MaxDelay (%v)", mq.ErrInvalidMessage, o.Message.ID, d.Round(time.Second), mq.MaxDelay))
		}
		if err := t.conn.delayCheck(o.Topic); err != nil {
			return t.fail(fmt.Errorf("kafka: transform: %w", err))
		}
		if l, ok := top[o.Topic]; !ok || levelFor(d) > l {
			top[o.Topic] = levelFor(d)
		}
	}
	for topic, level := range top {
		if err := t.conn.ensureLevels(ctx, topic, level); err != nil {
			return err
		}
	}
	return nil
}

// delayedOutput returns what to write for o at now: o itself, or for a
// message with DeliverAt a copy carrying mq.HeaderDeliverAt (the caller's
// Headers are not written) and, while it is not due, addressed to the
// delay level topic of what is left of its delay. The level topics exist
// (ensureDelayLevels chose the longest, and the delay left only shrinks);
// in the transaction, the scheduling commits or aborts with the inputs'
// offsets, and the relay moves it into o.Topic exactly once when due.
func delayedOutput(o Output, now time.Time) Output {
	m := o.Message
	if m.DeliverAt.IsZero() {
		return o
	}
	cp := *m
	cp.Headers = maps.Clone(m.Headers)
	cp.SetHeader(mq.HeaderDeliverAt, m.DeliverAt.UTC().Format(time.RFC3339Nano))
	if d := m.DeliverAt.Sub(now); d > 0 {
		return Output{Topic: levelTopic(o.Topic, levelFor(d)), Message: &cp}
	}
	return Output{Topic: o.Topic, Message: &cp}
}
