package kafka

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/IBM/sarama"
	"github.com/mqkit/mq"
	"github.com/mqkit/mq/internal/backoff"
)

// subscription is one member of a consumer group. A goroutine runs sarama's
// group session loop; each claimed partition feeds deliveries into a queue
// that Receive drains, and tracks which of its offsets have finished so it
// can commit the lowest contiguous one.
type subscription struct {
	conn    *Conn
	topic   string
	group   string
	client  sarama.Client
	cg      sarama.ConsumerGroup
	cancel  context.CancelFunc
	loop    chan struct{} // closed when the session loop has returned
	leaving chan struct{} // closed by Close: unsettled deliveries are given up, not drained

	mu     sync.Mutex
	queue  []*delivery   // fetched, not yet received; nacked ones first
	wake   chan struct{} // closed and replaced when queue grows while receiving is set
	space  chan struct{} // closed and replaced when queue shrinks while pushing is set
	max    int
	closed bool
	// receiving and pushing say that Receive or push waits on wake or
	// space: the channels are replaced only then, not for every message.
	receiving bool
	pushing   bool

	closeOnce sync.Once
	closeErr  error
}

// Subscribe joins group on topic.
func (c *Conn) Subscribe(ctx context.Context, topic, group string, opts mq.SubscribeOptions) (mq.Subscription, error) {
	if c.isClosed() {
		return nil, mq.ErrClosed
	}
	if err := c.ensureTopic(ctx, topic); err != nil {
		return nil, err
	}
	// Each member has its own sarama client: a group session owns its
	// connections, and closing it must not disturb the producer.
	msc := *c.sc
	if msc.Consumer.MaxProcessingTime == saramaMaxProcessingTime {
		msc.Consumer.MaxProcessingTime = claimPatience
	}
	client, err := newClient(ctx, c.cfg.Brokers, &msc)
	if err != nil {
		return nil, classify(fmt.Errorf("kafka: connect consumer: %w", err))
	}
	cg, err := sarama.NewConsumerGroupFromClient(group, client)
	if err != nil {
		_ = client.Close()
		return nil, classify(fmt.Errorf("kafka: consumer group %q: %w", group, err))
	}
	runCtx, cancel := context.WithCancel(context.Background())
	s := &subscription{
		conn: c, topic: topic, group: group, client: client, cg: cg, cancel: cancel,
		loop: make(chan struct{}), leaving: make(chan struct{}), wake: make(chan struct{}), space: make(chan struct{}),
		max: max(opts.MaxInFlight, 1),
	}
	// The topic's delayed-message relay runs while the Conn has a
	// subscription of it (delay_relay.go).
	if !c.acquireRelay(topic) {
		cancel()
		_ = cg.Close()
		_ = client.Close()
		return nil, mq.ErrClosed
	}
	if !c.subs.Add(s) {
		c.releaseRelay(topic)()
		cancel()
		_ = cg.Close()
		_ = client.Close()
		return nil, mq.ErrClosed
	}
	go s.run(runCtx)
	return s, nil
}

// run keeps the member in the group until the subscription is closed.
func (s *subscription) run(ctx context.Context) {
	defer close(s.loop)
	failures := 0
	for {
		err := s.cg.Consume(ctx, []string{s.topic}, s)
		if ctx.Err() != nil {
			return
		}
		if err == nil {
			failures = 0
			continue // a rebalance ended the session; join the next one
		}
		if errors.Is(err, sarama.ErrClosedConsumerGroup) {
			return
		}
		failures++
		// At most 2s: while a dead coordinator or leader is being fenced
		// (about 9s) a longer wait only adds to the consumer's stall.
		wait := backoff.Equal(backoff.Exp(failures, 200*time.Millisecond, 2*time.Second))
		s.log().Warn("kafka: consumer group session failed; rejoining", "group", s.group, "topic", s.topic, "error", classify(err), "retry_in", wait)
		if !backoff.Sleep(ctx, wait, nil) {
			return
		}
	}
}

// log returns the connection's logger.
func (s *subscription) log() *slog.Logger {
	if s.conn == nil || s.conn.cfg.Logger == nil {
		return slog.Default()
	}
	return s.conn.cfg.Logger
}

// Setup is called by sarama at the start of a group session.
func (s *subscription) Setup(sarama.ConsumerGroupSession) error { return nil }

// Cleanup is called by sarama at the end of a group session, after every
// ConsumeClaim returned.
func (s *subscription) Cleanup(sarama.ConsumerGroupSession) error { return nil }

// ConsumeClaim feeds one partition's messages to the queue until the
// session ends, then drains: it waits (bounded) for the handlers of the
// messages it handed out, ends the claim (closing its Lost channel, so the
// portable consumer cancels what still runs and drops what waits), commits
// what finished, and gives up the rest to the partition's next owner.
func (s *subscription) ConsumeClaim(sess sarama.ConsumerGroupSession, claim sarama.ConsumerGroupClaim) error {
	pt := newPartition(s, sess, claim.Topic(), claim.Partition())
	ctx := sess.Context()
	msgs := claim.Messages()
	batch := make([]*delivery, 0, claimBatch)
feed:
	for {
		select {
		case msg, ok := <-msgs:
			if !ok {
				break feed
			}
			// Take what else sarama has buffered already, without
			// waiting, and queue it all at once: one lock and one wake-up
			// of Receive for many records, not one per record.
			batch = append(batch[:0], pt.track(msg))
			open := true
		more:
			for len(batch) < cap(batch) {
				select {
				case msg, ok := <-msgs:
					if !ok {
						open = false
						break more
					}
					batch = append(batch, pt.track(msg))
				default:
					break more
				}
			}
			if !s.push(ctx, batch) || !open {
				break feed
			}
		case <-ctx.Done():
			break feed
		}
	}
	// From here a nacked message of this partition is given up, not
	// queued again. Messages still queued were never handed to a handler:
	// drop them so the next owner gets them from the committed offset.
	pt.startDraining()
	s.dropQueued(pt)
	pt.drain(s.conn.cfg.drainTimeout(), s.leaving)
	sess.Commit()
	return nil
}

// claimBatch is the most records ConsumeClaim queues at once.
const claimBatch = 64

// claimPatience is sarama's Consumer.MaxProcessingTime for the members
// of Subscribe (not for the delay relay or a transform), unless
// Config.Sarama set another: how long a partition's records may wait to
// be read from sarama's channel before sarama gives up the partition's
// fetch and subscribes it again. sarama fetches a broker's partitions in
// lock step, so giving up a partition that makes no progress lets the
// others of its broker fetch again. Here every partition of a member
// feeds one queue bounded by the consumer's in-flight window, and
// ConsumeClaim waits while it is full: all partitions wait together,
// for moments at a time with busy handlers, and for as long as a
// consumer created before it calls Consume waits. Given up after
// sarama's 100 ms, a partition cost a fetch round trip and up to two
// 100 ms naps each time, 15-25 % of the throughput with a no-op handler
// (BENCHMARKS.md). A partition that moves nothing for claimPatience is
// still given up.
const claimPatience = 5 * time.Second

// saramaMaxProcessingTime is sarama's default Consumer.MaxProcessingTime.
const saramaMaxProcessingTime = 100 * time.Millisecond

// push queues ds in order, waiting while the queue is full. When it
// cannot queue them all (the subscription closed or the session ended) it
// gives up those it did not queue, since nobody else will settle them, and
// returns false.
func (s *subscription) push(ctx context.Context, ds []*delivery) bool {
	for len(ds) > 0 {
		s.mu.Lock()
		if s.closed {
			s.mu.Unlock()
			break
		}
		if n := min(s.max-len(s.queue), len(ds)); n > 0 {
			s.queue = append(s.queue, ds[:n]...)
			ds = ds[n:]
			s.wakeLocked()
			s.mu.Unlock()
			continue
		}
		s.pushing = true
		space := s.space
		s.mu.Unlock()
		select {
		case <-space:
			continue
		case <-ctx.Done():
		}
		break
	}
	for _, d := range ds {
		d.pt.giveUp() // never queued
	}
	return len(ds) == 0
}

// wakeLocked wakes a Receive waiting for the queue to grow. s.mu is held.
func (s *subscription) wakeLocked() {
	if s.receiving {
		s.receiving = false
		close(s.wake)
		s.wake = make(chan struct{})
	}
}

// spaceLocked wakes a push waiting for the queue to shrink. s.mu is held.
func (s *subscription) spaceLocked() {
	if s.pushing {
		s.pushing = false
		close(s.space)
		s.space = make(chan struct{})
	}
}

func (s *subscription) dropQueued(pt *partition) {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := len(s.queue)
	s.queue = slices.DeleteFunc(s.queue, func(d *delivery) bool {
		if d.pt == pt {
			pt.giveUp()
			return true
		}
		return false
	})
	if len(s.queue) < n {
		s.spaceLocked() // another partition's push may wait for room
	}
}

// Receive returns up to max queued deliveries, waiting for at least one.
func (s *subscription) Receive(ctx context.Context, max int) ([]mq.Delivery, error) {
	for {
		s.mu.Lock()
		if s.closed {
			s.mu.Unlock()
			return nil, mq.ErrClosed
		}
		if n := min(max, len(s.queue)); n > 0 {
			out := make([]mq.Delivery, n)
			for i, d := range s.queue[:n] {
				out[i] = d
			}
			// Move the rest to the front rather than reslicing, so that
			// push appends into the same array instead of growing a new one.
			rest := copy(s.queue, s.queue[n:])
			clear(s.queue[rest:])
			s.queue = s.queue[:rest]
			s.spaceLocked()
			s.mu.Unlock()
			return out, nil
		}
		s.receiving = true
		wake := s.wake
		s.mu.Unlock()
		select {
		case <-wake:
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-s.loop:
			return nil, mq.ErrClosed
		}
	}
}

// requeue puts a nacked delivery back at the front of the queue, keeping
// offset order per partition, so the portable consumer receives it again.
func (s *subscription) requeue(d *delivery) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed || d.pt.revoked() {
		d.pt.giveUp()
		return
	}
	d.msg.Attempt++
	// Nacked messages go before everything fetched later; among themselves
	// they keep their partition's offset order: insert before the first
	// nacked message of the same partition with a higher offset, or at the
	// end of the nacked prefix.
	i := 0
	for i < len(s.queue) && s.queue[i].nacked && !(s.queue[i].pt == d.pt && s.queue[i].offset > d.offset) {
		i++
	}
	d.nacked = true
	s.queue = slices.Insert(s.queue, i, d)
	s.wakeLocked()
}

// Close leaves the group: claims end, finished offsets are committed, and
// unfinished messages stay uncommitted for the group's other members.
func (s *subscription) Close() error {
	s.closeOnce.Do(func() {
		// The topic's relay, when this was its last subscription, stops
		// while the subscription does.
		relayStopped := s.conn.releaseRelay(s.topic)
		defer relayStopped()
		s.mu.Lock()
		s.closed = true
		close(s.leaving)
		for _, d := range s.queue {
			d.pt.giveUp()
		}
		s.queue = nil
		close(s.space)
		s.space = make(chan struct{})
		s.mu.Unlock()
		s.cancel()
		err := s.cg.Close()
		<-s.loop
		s.closeErr = errors.Join(err, s.client.Close())
		s.conn.subs.Remove(s)
	})
	return s.closeErr
}

// partition tracks one claimed partition's offsets between fetch and
// commit. Offsets come in increasing order (with gaps where the log has
// none); a handler's ack marks its offset finished, and the commit position
// advances over the finished prefix only, so it never passes a message that
// has not finished.
type partition struct {
	s       *subscription
	sess    sarama.ConsumerGroupSession
	topic   string
	id      int32
	settled chan struct{} // a token each time an offset is settled
	lost    chan struct{} // closed when the claim ends: what its deliveries' Lost returns

	mu sync.Mutex
	// offsets[head:] are the offsets fetched and not yet committed,
	// ascending; done[i] says offsets[i] finished. The finished prefix is
	// dropped by moving head, and the arrays are reused once empty (or
	// compacted once mostly dropped), so tracking allocates nothing in a
	// steady state.
	offsets  []int64
	done     []bool
	head     int
	waiting  int  // handed out and neither acked nor given up
	draining bool // the session ended: drain waits for settled tokens, and nacks are given up, not requeued
	ended    bool // the claim is over: lost is closed and late acks are refused
}

func newPartition(s *subscription, sess sarama.ConsumerGroupSession, topic string, id int32) *partition {
	return &partition{s: s, sess: sess, topic: topic, id: id, settled: make(chan struct{}, 1), lost: make(chan struct{})}
}

func (p *partition) track(msg *sarama.ConsumerMessage) *delivery {
	d := &delivery{pt: p, offset: msg.Offset}
	fillMessage(&d.msg, msg)
	p.mu.Lock()
	if p.head > 0 && p.head >= len(p.offsets)/2 && len(p.offsets) == cap(p.offsets) {
		// Full array, at least half of it committed: slide the rest down
		// instead of growing.
		n := copy(p.offsets, p.offsets[p.head:])
		copy(p.done, p.done[p.head:])
		p.offsets, p.done, p.head = p.offsets[:n], p.done[:n], 0
	}
	p.offsets = append(p.offsets, msg.Offset)
	p.done = append(p.done, false)
	p.waiting++
	p.mu.Unlock()
	return d
}

// revoked reports whether the claim is over or being drained: a message
// given back now goes to the partition's next owner, not to this member.
func (p *partition) revoked() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.ended || p.draining
}

// startDraining marks the claim as ending (see revoked).
func (p *partition) startDraining() {
	p.mu.Lock()
	p.draining = true
	p.mu.Unlock()
}

// ack marks offset finished and marks the finished prefix for commit.
func (p *partition) ack(offset int64) error {
	p.mu.Lock()
	if p.ended {
		p.mu.Unlock()
		return fmt.Errorf("kafka: partition %s/%d was revoked before offset %d finished; its next owner will deliver it again", p.topic, p.id, offset)
	}
	i, found := slices.BinarySearch(p.offsets[p.head:], offset)
	if !found || p.done[p.head+i] {
		p.mu.Unlock()
		return fmt.Errorf("kafka: offset %d of partition %s/%d acknowledged twice or never fetched", offset, p.topic, p.id)
	}
	p.done[p.head+i] = true
	p.waiting--
	if i == 0 {
		n := p.head
		for n < len(p.offsets) && p.done[n] {
			n++
		}
		// The commit position is the next offset to read: one past the
		// last message of the finished prefix.
		p.sess.MarkOffset(p.topic, p.id, p.offsets[n-1]+1, "")
		if n == len(p.offsets) {
			p.offsets, p.done, p.head = p.offsets[:0], p.done[:0], 0
		} else {
			p.head = n
		}
	}
	signal := p.draining
	p.mu.Unlock()
	if signal {
		p.signal()
	}
	return nil
}

// giveUp stops waiting for an offset that will not be handled here. It
// stays in offsets unfinished, so the commit position never passes it and
// the partition's next owner delivers it again.
func (p *partition) giveUp() {
	p.mu.Lock()
	p.waiting--
	signal := p.draining
	p.mu.Unlock()
	if signal {
		p.signal()
	}
}

func (p *partition) signal() {
	select {
	case p.settled <- struct{}{}:
	default:
	}
}

// end ends the claim: from now on acks are refused, nacks give up, and
// the deliveries' Lost channel is closed. It is idempotent.
func (p *partition) end() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if !p.ended {
		p.ended = true
		close(p.lost)
	}
}

// drain waits until every offset handed out was acked or given up, the
// timeout passes, or the subscription is leaving (its owner settled what it
// meant to), and then ends the claim. Until then the member still owns the
// partition: handlers keep running and their acks are committed.
func (p *partition) drain(timeout time.Duration, leaving <-chan struct{}) {
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	defer p.end()
	p.mu.Lock()
	p.draining = true
	p.mu.Unlock()
	for {
		p.mu.Lock()
		left := p.waiting
		p.mu.Unlock()
		if left <= 0 {
			return
		}
		select {
		case <-p.settled:
		case <-leaving:
			return
		case <-deadline.C:
			p.s.log().Warn("kafka: partition revoked with handlers still running; cancelling them, their messages will be delivered again by the partition's next owner",
				"topic", p.topic, "partition", p.id, "unfinished", left, "drain_timeout", timeout)
			return
		}
	}
}

// delivery is one fetched record. The Message lives inside it, so a record
// costs one allocation for both.
type delivery struct {
	pt     *partition
	offset int64
	nacked bool
	msg    mq.Message
}

func (d *delivery) Message() *mq.Message { return &d.msg }

func (d *delivery) Ack(context.Context) error { return d.pt.ack(d.offset) }

// Nack gives the message back. While this member holds the partition and
// is not draining it, the message is queued again for Receive (before
// everything fetched later). Once the partition is draining or its claim
// ended, or the subscription is closed, Nack only gives the message up:
// its offset stays uncommitted and the partition's next owner delivers it.
func (d *delivery) Nack(context.Context) error {
	d.pt.s.requeue(d)
	return nil
}

// Lost returns the partition claim's channel, closed when the claim ends:
// when the drain after a revoke ends (everything settled, Config.DrainTimeout
// passed, or the subscription is leaving), and so at the latest when the
// subscription closes. Every delivery of one claim returns the same channel.
func (d *delivery) Lost() <-chan struct{} { return d.pt.lost }

// toMessage converts a record into a new Message.
func toMessage(r *sarama.ConsumerMessage) *mq.Message {
	m := new(mq.Message)
	fillMessage(m, r)
	return m
}

// fillMessage converts a record into m. Records from other clients (no
// mq-id header) get a stable ID from their position. A null value (a
// tombstone) gets the header HeaderTombstone and an empty Body; a record
// header of that name is not read, so the header means exactly that the
// value was null. Of record headers sharing a name the last one is kept; a
// null header value reads as "".
func fillMessage(m *mq.Message, r *sarama.ConsumerMessage) {
	*m = mq.Message{
		Body:      r.Value,
		Topic:     r.Topic,
		Timestamp: r.Timestamp,
		Attempt:   1,
	}
	tomb := r.Value == nil
	var id []byte
	hasID, others := false, 0
	for _, h := range r.Headers {
		switch {
		case h == nil, string(h.Key) == HeaderTombstone:
		case string(h.Key) == HeaderID:
			id, hasID = h.Value, true // the last one wins, as in a map
		default:
			others++
		}
	}
	if tomb {
		others++
	}
	if others > 0 {
		m.Headers = make(map[string]string, others)
		for _, h := range r.Headers {
			if h != nil && string(h.Key) != HeaderID && string(h.Key) != HeaderTombstone {
				m.Headers[string(h.Key)] = string(h.Value)
			}
		}
		if tomb {
			m.Headers[HeaderTombstone] = "true"
		}
	}
	if hasID && len(id) > 0 {
		// Key and ID share one string: one allocation instead of two.
		ks := string(append(append(make([]byte, 0, len(r.Key)+len(id)), r.Key...), id...))
		m.Key, m.ID = ks[:len(r.Key)], ks[len(r.Key):]
	} else {
		m.Key = string(r.Key)
		m.ID = r.Topic + "/" + strconv.Itoa(int(r.Partition)) + "/" + strconv.FormatInt(r.Offset, 10)
	}
	if m.Timestamp.IsZero() {
		m.Timestamp = time.Now()
	}
}
