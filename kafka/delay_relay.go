package kafka

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"time"

	"github.com/IBM/sarama"
	"github.com/mqkit/mq"
	"github.com/mqkit/mq/internal/backoff"
)

// relay moves one topic's delayed messages: a member of the consumer
// group delayRelayGroup(topic) that reads the topic's level topics and,
// for each partition, waits (without reading on) until the record at its
// head is due at its level, then moves every due record in one Kafka
// transaction (exactly once, with the group offsets and KIP-447 fencing,
// as Transform does) into the topic or into a shorter level.
//
// A Conn runs one relay per topic it has subscriptions of (acquireRelay,
// releaseRelay). The relay joins its group only once level topics exist:
// a topic that never had a delayed message costs no group and no
// rebalance, only a share of the Conn's metadata poll.
type relay struct {
	conn  *Conn
	topic string
	refs  int // guarded by conn.delay.mu

	ctx    context.Context
	cancel context.CancelFunc
	done   chan struct{} // closed when run returned

	mu      sync.Mutex
	levels  []int         // existing level topics, ascending (set by the Conn's poller)
	changed chan struct{} // buffered(1): levels changed
	prepare chan struct{} // buffered(1): level topics are being made; make the member now
	end     context.CancelFunc

	// The group member, made when the first level topic appears and kept
	// until the relay stops. Used by run only, and by the session's
	// mover, which runs inside run's Consume call.
	sc     *sarama.Config
	txnID  string
	client sarama.Client
	cg     sarama.ConsumerGroup
	broken error // guarded by mu: the producer is unusable; replace it before the next session
	// The transactional producer is made in the background (the first one
	// of a cluster takes a while), so the member joins meanwhile: prod and
	// prodErr are set when prodDone is closed, and read only after that.
	prodDone chan struct{}
	prod     sarama.SyncProducer
	prodErr  error
}

func newRelay(c *Conn, topic string) *relay {
	ctx, cancel := context.WithCancel(context.Background())
	return &relay{conn: c, topic: topic, ctx: ctx, cancel: cancel, done: make(chan struct{}), changed: make(chan struct{}, 1), prepare: make(chan struct{}, 1)}
}

func (r *relay) start() { go r.run(r.ctx) }

// stop ends the relay and waits until it left its group and closed its
// connections. A move under way is finished (committed or aborted) first.
func (r *relay) stop() {
	r.cancel()
	<-r.done
}

func (r *relay) log() *slog.Logger {
	if r.conn.cfg.Logger == nil {
		return slog.Default()
	}
	return r.conn.cfg.Logger
}

// prepareMember asks run to make the group member now.
func (r *relay) prepareMember() {
	select {
	case r.prepare <- struct{}{}:
	default:
	}
}

// setLevels records the level topics that exist and wakes run when they
// changed.
func (r *relay) setLevels(levels []int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if slices.Equal(r.levels, levels) {
		return
	}
	r.levels = slices.Clone(levels)
	select {
	case r.changed <- struct{}{}:
	default:
	}
}

func (r *relay) currentLevels() []int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.levels
}

// run keeps the relay in its group, one session after another, while
// level topics exist, until ctx ends. A new level topic ends the session:
// the next one reads it too.
func (r *relay) run(ctx context.Context) {
	defer close(r.done)
	defer r.closeMember()
	failures := 0
	for {
		levels := r.currentLevels()
		if len(levels) == 0 {
			select {
			case <-r.changed:
			case <-r.prepare:
				// This Conn is making the first level topics: be
				// ready to join when they exist.
				if err := r.ensureMember(ctx); err != nil && ctx.Err() == nil {
					r.log().Debug("kafka: delay relay: could not prepare", "topic", r.topic, "error", err)
				}
			case <-ctx.Done():
				return
			}
			continue
		}
		err := r.ensureMember(ctx)
		if err == nil {
			err = r.session(ctx, levels)
		}
		if ctx.Err() != nil {
			return
		}
		if err == nil {
			failures = 0
			continue // a rebalance or new levels ended the session
		}
		failures++
		wait := backoff.Equal(backoff.Exp(failures, 200*time.Millisecond, 5*time.Second))
		r.log().Warn("kafka: delay relay failed; retrying", "topic", r.topic, "group", delayRelayGroup(r.topic), "error", err, "retry_in", wait)
		if !backoff.Sleep(ctx, wait, nil) {
			return
		}
	}
}

// session is one group session over the level topics levels, which ends
// when the group rebalances, the set of level topics changes, the
// producer breaks or ctx ends.
func (r *relay) session(ctx context.Context, levels []int) error {
	sctx, end := context.WithCancel(ctx)
	defer end()
	r.mu.Lock()
	r.end = end
	r.mu.Unlock()
	watched := make(chan struct{})
	go func() {
		defer close(watched)
		for {
			select {
			case <-r.changed:
				if !slices.Equal(r.currentLevels(), levels) {
					end()
					return
				}
			case <-sctx.Done():
				return
			}
		}
	}()
	h := &relaySession{r: r, levelOf: make(map[string]time.Duration, len(levels))}
	topics := make([]string, len(levels))
	for j, i := range levels {
		topics[j] = levelTopic(r.topic, i)
		h.levelOf[topics[j]] = levelDuration(i)
	}
	err := r.cg.Consume(sctx, topics, h)
	end()
	<-watched
	if !slices.Equal(r.currentLevels(), levels) {
		select { // the watcher took the signal: give it back for the next round
		case r.changed <- struct{}{}:
		default:
		}
	}
	r.mu.Lock()
	broken := r.broken
	r.mu.Unlock()
	switch {
	case sctx.Err() != nil && broken == nil:
		return nil // stopped, or ended for new level topics
	case broken != nil:
		return broken
	case errors.Is(err, sarama.ErrClosedConsumerGroup):
		return fmt.Errorf("kafka: delay relay: %w", mq.ErrClosed)
	case err != nil:
		return classify(fmt.Errorf("kafka: delay relay session: %w", err))
	}
	return nil
}

// relaySarama derives the relay's configuration from the Conn's: a
// transactional producer and a read_committed group member without
// auto-commit (as Transform's), which starts at the oldest offset of a
// level (nothing scheduled before the group first joined is missed),
// notices rebalances within half a second, and spreads all level
// partitions over the members.
func relaySarama(base *sarama.Config, txnID string) *sarama.Config {
	sc := transformSarama(base, txnID)
	sc.Consumer.Offsets.Initial = sarama.OffsetOldest
	sc.Consumer.Group.Heartbeat.Interval = min(sc.Consumer.Group.Heartbeat.Interval, 500*time.Millisecond)
	sc.Consumer.Group.Rebalance.GroupStrategies = []sarama.BalanceStrategy{sarama.NewBalanceStrategyRoundRobin()}
	// As Kafka Streams does for exactly-once: a relay that dies with a
	// transaction open holds back read_committed readers of the
	// partitions it wrote to until the broker aborts it (after this
	// timeout, checked every 10 s by default).
	sc.Producer.Transaction.Timeout = 10 * time.Second
	// The next transaction's first AddPartitionsToTxn meets
	// CONCURRENT_TRANSACTIONS while the broker still writes the previous
	// one's commit markers (a few milliseconds): retry it soon, not after
	// sarama's 20 ms, which would slow every move down to that.
	sc.Producer.Transaction.Retry.BackoffFunc = func(retries, _ int) time.Duration {
		return min(time.Millisecond<<min(retries, 7), 100*time.Millisecond)
	}
	return sc
}

// ensureMember starts making the transactional producer (when there is
// none or it broke) and makes the group member (once).
func (r *relay) ensureMember(ctx context.Context) error {
	if r.sc == nil {
		r.txnID = "mq-delay." + r.topic + "." + mq.NewID()
		r.sc = relaySarama(r.conn.sc, r.txnID)
		if err := r.sc.Validate(); err != nil {
			return fmt.Errorf("kafka: delay relay configuration: %w", err)
		}
	}
	r.mu.Lock()
	broken := r.broken
	r.broken = nil
	r.mu.Unlock()
	if broken != nil && r.prodDone != nil {
		r.closeProducer()
	}
	if r.prodDone == nil {
		done := make(chan struct{})
		r.prodDone = done
		go func() {
			defer close(done)
			p, err := newTxnProducer(ctx, r.conn.cfg.Brokers, r.sc)
			if err != nil {
				err = classify(fmt.Errorf("kafka: delay relay: transactional producer: %w", err))
			}
			r.prod, r.prodErr = p, err
		}()
	}
	if r.cg == nil {
		// The member's connections need not be idempotent producers':
		// several requests in flight let a new session find the start
		// offsets of all its partitions at once.
		sc := *r.sc
		sc.Producer.Idempotent = false
		sc.Producer.Transaction.ID = ""
		sc.Net.MaxOpenRequests = 5
		client, err := newClient(ctx, r.conn.cfg.Brokers, &sc)
		if err != nil {
			return classify(fmt.Errorf("kafka: delay relay: connect: %w", err))
		}
		cg, err := sarama.NewConsumerGroupFromClient(delayRelayGroup(r.topic), client)
		if err != nil {
			_ = client.Close()
			return classify(fmt.Errorf("kafka: delay relay: consumer group %q: %w", delayRelayGroup(r.topic), err))
		}
		r.client, r.cg = client, cg
	}
	return nil
}

// closeProducer waits for the producer being made and closes it.
func (r *relay) closeProducer() {
	<-r.prodDone
	if r.prod != nil {
		_ = r.prod.Close()
	}
	r.prod, r.prodErr, r.prodDone = nil, nil, nil
}

// newTxnProducer creates a transactional producer, which registers its
// transactional ID with the coordinator, bounded by ctx.
func newTxnProducer(ctx context.Context, brokers []string, sc *sarama.Config) (sarama.SyncProducer, error) {
	type result struct {
		p   sarama.SyncProducer
		err error
	}
	ch := make(chan result, 1)
	go func() {
		p, err := sarama.NewSyncProducer(brokers, sc)
		ch <- result{p, err}
	}()
	select {
	case res := <-ch:
		return res.p, res.err
	case <-ctx.Done():
		go func() {
			if res := <-ch; res.p != nil {
				_ = res.p.Close()
			}
		}()
		return nil, ctx.Err()
	}
}

func (r *relay) closeMember() {
	if r.cg != nil {
		_ = r.cg.Close()
		_ = r.client.Close()
	}
	if r.prodDone != nil {
		r.closeProducer() // run's ctx is done: one being made gives up
	}
}

// endSession ends the current session after the producer broke.
func (r *relay) endSession(cause error) {
	r.mu.Lock()
	if r.broken == nil {
		r.broken = cause
	}
	end := r.end
	r.mu.Unlock()
	if end != nil {
		end()
	}
}

// relaySession handles one group session: a goroutine per claimed level
// partition (ConsumeClaim) waits for its head record and hands due
// records to the session's mover, which moves what all claims handed it
// in one transaction at a time.
type relaySession struct {
	r       *relay
	levelOf map[string]time.Duration // level topic -> its wait
	mv      *mover
}

// Setup starts the session's mover.
func (h *relaySession) Setup(sess sarama.ConsumerGroupSession) error {
	h.mv = &mover{
		r: h.r, sess: sess, prodDone: h.r.prodDone,
		meta: &sarama.ConsumerGroupMetadata{GroupID: delayRelayGroup(h.r.topic), GenerationID: sess.GenerationID(), MemberID: sess.MemberID()},
		in:   make(chan *moveReq), stop: make(chan struct{}), done: make(chan struct{}),
	}
	go h.mv.run()
	return nil
}

// Cleanup stops the mover, once every ConsumeClaim returned.
func (h *relaySession) Cleanup(sarama.ConsumerGroupSession) error {
	close(h.mv.stop)
	<-h.mv.done
	return nil
}

// relayBatch is the most records of one partition moved in one
// transaction; a claim holds at most twice as many read records before
// it pauses fetching its partition.
const relayBatch = 1000

// ConsumeClaim moves one level partition's records as they fall due. The
// partition's records are due in offset order at the level (append time
// plus the level's wait, growing along the log), except that a record
// whose message is due less than delayGranularity after that waits on for
// its own due time, so its last step is exact: the record at the head
// waits, and what follows it waits behind it.
//
// The claim reads sarama's channel all the time, into a queue of its own,
// and pauses fetching the partition while that queue holds 2·relayBatch
// records: a channel left unread stalls the fetches of every partition of
// the member for sarama's Consumer.MaxProcessingTime each time. The head
// waits in the queue; due records go to the mover, one batch of the
// partition at a time, and leave the queue once committed.
func (h *relaySession) ConsumeClaim(sess sarama.ConsumerGroupSession, claim sarama.ConsumerGroupClaim) error {
	ctx := sess.Context()
	level := h.levelOf[claim.Topic()]
	tp := map[string][]int32{claim.Topic(): {claim.Partition()}}
	h.r.cg.Resume(tp) // pauses outlive sessions in sarama
	defer h.r.cg.Resume(tp)
	paused := false
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	var (
		queue    []*sarama.ConsumerMessage // read, not yet committed; queue[:moving] are being moved
		moving   int
		result   chan error // of the batch being moved; nil when none
		messages = claim.Messages()
	)
	for {
		var wake <-chan time.Time
		if result == nil && len(queue) > 0 {
			now := time.Now()
			if wait := actAt(queue[0], level).Sub(now); wait > 0 {
				timer.Reset(wait)
				wake = timer.C
			} else {
				n := 1
				for n < len(queue) && n < relayBatch && !actAt(queue[n], level).After(now) {
					n++
				}
				moving = n
				result = h.mv.submit(claim.Topic(), claim.Partition(), level, queue[:n:n])
			}
		}
		select {
		case m, ok := <-messages:
			if !ok {
				messages = nil // the session is ending; wait for ctx
				continue
			}
			queue = append(queue, m)
			if !paused && len(queue) >= 2*relayBatch {
				h.r.cg.Pause(tp)
				paused = true
			}
		case err := <-result:
			result = nil
			if err != nil {
				return nil // the session ends; the partition's next owner starts at the committed offset
			}
			queue = queue[moving:]
			if len(queue) == 0 {
				queue = nil // let the moved records go
			}
			if paused && len(queue) < relayBatch {
				h.r.cg.Resume(tp)
				paused = false
			}
		case <-wake:
		case <-ctx.Done():
			if result != nil {
				<-result // a transaction under way is still committed or aborted
			}
			return nil
		}
		if wake != nil {
			timer.Stop() // no stale fire after Stop since Go 1.23
		}
	}
}

// actAt is when the relay acts on a record of a level that waits level:
// when the level's wait has passed since the record was appended, or, if
// the message is due less than delayGranularity after that, when it is
// due. A record without a readable HeaderDeliverAt is due when its level
// wait ends.
func actAt(m *sarama.ConsumerMessage, level time.Duration) time.Time {
	ready := m.Timestamp.Add(level)
	due, ok := deliverAtOf(m)
	if !ok || due.Sub(ready) >= delayGranularity {
		return ready
	}
	if due.After(ready) {
		return due
	}
	return ready
}

// moveReq is one claim's batch of due records, answered on done.
type moveReq struct {
	topic     string
	partition int32
	level     time.Duration
	recs      []*sarama.ConsumerMessage
	done      chan error
}

// mover commits the batches of a session's claims, all that are waiting
// in one transaction.
type mover struct {
	r        *relay
	sess     sarama.ConsumerGroupSession
	prodDone chan struct{} // the relay's producer is made (or failed)
	meta     *sarama.ConsumerGroupMetadata
	in       chan *moveReq
	stop     chan struct{} // closed by Cleanup, after every claim returned
	done     chan struct{}
}

// submit hands a batch to the mover. The channel it returns gets nil
// once the batch is committed, or an error once it was given up (the
// session must end).
func (m *mover) submit(topic string, partition int32, level time.Duration, recs []*sarama.ConsumerMessage) chan error {
	q := &moveReq{topic: topic, partition: partition, level: level, recs: recs, done: make(chan error, 1)}
	go func() {
		select {
		case m.in <- q:
		case <-m.sess.Context().Done():
			q.done <- m.sess.Context().Err()
		}
	}()
	return q.done
}

func (m *mover) run() {
	defer close(m.done)
	for {
		var reqs []*moveReq
		select {
		case q := <-m.in:
			reqs = append(reqs, q)
		case <-m.stop:
			return
		}
	more:
		for {
			select {
			case q := <-m.in:
				reqs = append(reqs, q)
			default:
				break more
			}
		}
		err := m.commit(reqs)
		for _, q := range reqs {
			q.done <- err
		}
	}
}

// commit moves reqs in one transaction, trying again after a failure
// while the session lasts.
func (m *mover) commit(reqs []*moveReq) error {
	ctx := m.sess.Context()
	for attempt := 1; ; attempt++ {
		if err := ctx.Err(); err != nil {
			return err
		}
		err := m.txn(ctx, reqs)
		if err == nil {
			return nil
		}
		m.r.mu.Lock()
		broken := m.r.broken
		m.r.mu.Unlock()
		if broken != nil {
			return err
		}
		wait := backoff.Equal(backoff.Exp(attempt, 100*time.Millisecond, 5*time.Second))
		m.r.log().Warn("kafka: delay relay: move aborted; trying again", "topic", m.r.topic, "batches", len(reqs), "error", err, "retry_in", wait)
		if !backoff.Sleep(ctx, wait, nil) {
			return ctx.Err()
		}
	}
}

// txn runs one transaction: each record to the topic (due now) or to the
// level of what it has left, then the group offsets past every batch,
// then the commit. The decision is made here, by this process's clock,
// so a record never enters the topic before its HeaderDeliverAt.
func (m *mover) txn(ctx context.Context, reqs []*moveReq) error {
	r := m.r
	now := time.Now()
	n := 0
	for _, q := range reqs {
		n += len(q.recs)
	}
	pms := make([]*sarama.ProducerMessage, 0, n)
	offsets := make(map[string][]*sarama.PartitionOffsetMetadata, len(reqs))
	top := -1
	for _, q := range reqs {
		for _, rec := range q.recs {
			due, ok := deliverAtOf(rec)
			if !ok {
				due = rec.Timestamp.Add(q.level)
			}
			dest := r.topic
			if left := due.Sub(now); left > 0 {
				i := levelFor(left)
				top = max(top, i)
				dest = levelTopic(r.topic, i)
			}
			pms = append(pms, forward(dest, rec))
		}
		offsets[q.topic] = append(offsets[q.topic], &sarama.PartitionOffsetMetadata{Partition: q.partition, Offset: q.recs[len(q.recs)-1].Offset + 1})
	}
	if top >= 0 {
		if err := r.conn.ensureLevels(ctx, r.topic, top); err != nil {
			return err
		}
	}
	select {
	case <-m.prodDone:
	case <-ctx.Done():
		return ctx.Err()
	}
	if r.prodErr != nil {
		r.endSession(r.prodErr) // run makes another after a backoff
		return r.prodErr
	}
	// A producer that cannot abort ends the session: run replaces it.
	broken, err := commitTxn(r.prod, fmt.Sprintf("kafka: delay relay of %q", r.topic), pms, offsets, m.meta)
	if broken {
		r.endSession(err)
	}
	return err
}

// forward makes the record that carries rec on to topic: the same key
// (so the partitioner puts it where Send would), value (a null one stays
// a tombstone) and headers, ID and HeaderDeliverAt included.
func forward(topic string, rec *sarama.ConsumerMessage) *sarama.ProducerMessage {
	pm := &sarama.ProducerMessage{Topic: topic}
	if len(rec.Key) > 0 {
		pm.Key = sarama.ByteEncoder(rec.Key)
	}
	if rec.Value != nil {
		pm.Value = sarama.ByteEncoder(rec.Value)
	}
	pm.Headers = make([]sarama.RecordHeader, 0, len(rec.Headers))
	for _, h := range rec.Headers {
		if h != nil {
			pm.Headers = append(pm.Headers, *h)
		}
	}
	return pm
}
