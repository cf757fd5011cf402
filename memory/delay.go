package memory

import (
	"container/heap"
	"context"
	"maps"
	"sync"
	"time"

	"github.com/mqkit/mq"
)

// scheduler keeps one topic's delayed messages in a heap ordered by due
// time, and one goroutine (started with the topic's first scheduled
// message, stopped by Broker.Close) moves each into the topic when due. A
// topic of its own each: one topic full to capacity holds back only its
// own due messages. Being in process, it is as durable as the broker
// itself.
type scheduler struct {
	b      *Broker
	topic  string
	ctx    context.Context // cancelled by Broker.Close: a move waiting for room gives up
	cancel context.CancelFunc

	mu      sync.Mutex
	items   delayHeap
	moving  []*delayed // taken off items, not yet in the topic (waiting for room)
	started bool
	wake    chan struct{} // buffered(1): an earlier item was added
	done    chan struct{} // closed when the mover returns
}

type delayed struct {
	due time.Time
	seq uint64 // FIFO among equal due times
	e   *entry
}

type delayHeap []*delayed

func (h delayHeap) Len() int { return len(h) }
func (h delayHeap) Less(i, j int) bool {
	if !h[i].due.Equal(h[j].due) {
		return h[i].due.Before(h[j].due)
	}
	return h[i].seq < h[j].seq
}
func (h delayHeap) Swap(i, j int) { h[i], h[j] = h[j], h[i] }
func (h *delayHeap) Push(x any)   { *h = append(*h, x.(*delayed)) }
func (h *delayHeap) Pop() any {
	old := *h
	x := old[len(old)-1]
	old[len(old)-1] = nil
	*h = old[:len(old)-1]
	return x
}

// Schedule implements mq.Scheduler: msgs wait in the broker's heap, not in
// any group, until due.
func (c *conn) Schedule(_ context.Context, topicName string, msgs []*mq.Message) error {
	if _, err := c.b.topic(topicName, true); err != nil {
		return err
	}
	s := c.b.sched(topicName)
	s.mu.Lock()
	defer s.mu.Unlock()
	c.b.mu.Lock()
	closed := c.b.closed
	c.b.mu.Unlock()
	if closed {
		return mq.ErrClosed
	}
	var top time.Time // the earliest due before these
	if len(s.items) > 0 {
		top = s.items[0].due
	}
	earliest := false
	for _, m := range msgs {
		c.b.mu.Lock()
		c.b.seq++
		seq := c.b.seq
		c.b.mu.Unlock()
		heap.Push(&s.items, &delayed{due: m.DeliverAt, seq: seq, e: &entry{msg: mq.Message{
			ID:      m.ID,
			Key:     m.Key,
			Headers: maps.Clone(m.Headers),
			Body:    append([]byte{}, m.Body...),
			Topic:   topicName,
		}}})
		if top.IsZero() || m.DeliverAt.Before(top) {
			earliest = true
		}
	}
	if !s.started {
		s.started = true
		go s.run()
	}
	if earliest {
		select {
		case s.wake <- struct{}{}:
		default:
		}
	}
	return nil
}

// Scheduled implements mq.Scheduler.
func (c *conn) Scheduled(_ context.Context, topicName string) (mq.ScheduleStats, error) {
	c.b.mu.Lock()
	closed := c.b.closed
	c.b.mu.Unlock()
	if closed {
		return mq.ScheduleStats{}, mq.ErrClosed
	}
	c.b.mu.Lock()
	s := c.b.schedulers[topicName] // asking makes none
	c.b.mu.Unlock()
	var st mq.ScheduleStats
	if s == nil {
		return st, nil
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	st.Waiting = int64(len(s.items) + len(s.moving))
	switch {
	case len(s.moving) > 0:
		st.NextDue = s.moving[0].due // due already, ahead of the heap
	case len(s.items) > 0:
		st.NextDue = s.items[0].due
	}
	return st, nil
}

// sched returns the scheduler of topic, made on first use.
func (b *Broker) sched(topic string) *scheduler {
	b.mu.Lock()
	defer b.mu.Unlock()
	s := b.schedulers[topic]
	if s == nil {
		if b.schedulers == nil {
			b.schedulers = map[string]*scheduler{}
		}
		ctx, cancel := context.WithCancel(context.Background())
		s = &scheduler{b: b, topic: topic, ctx: ctx, cancel: cancel, wake: make(chan struct{}, 1), done: make(chan struct{})}
		b.schedulers[topic] = s
	}
	return s
}

// run moves due messages into the topic until the broker closes.
func (s *scheduler) run() {
	defer close(s.done)
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	for {
		s.mu.Lock()
		var batch []*delayed
		now := time.Now()
		for len(s.items) > 0 && !s.items[0].due.After(now) && len(batch) < 1024 {
			batch = append(batch, heap.Pop(&s.items).(*delayed))
		}
		s.moving = batch
		wait := time.Hour
		if len(s.items) > 0 {
			wait = time.Until(s.items[0].due)
		}
		s.mu.Unlock()
		if len(batch) > 0 {
			if !s.move(batch) {
				return
			}
			continue
		}
		timer.Reset(wait)
		select {
		case <-s.b.done:
			return
		case <-s.wake:
		case <-timer.C:
		}
		if !timer.Stop() {
			select {
			case <-timer.C:
			default:
			}
		}
	}
}

// move appends due messages to the topic, waiting for room as Send
// does. It reports false once the broker is closed.
func (s *scheduler) move(batch []*delayed) bool {
	t, err := s.b.topic(s.topic, true)
	if err != nil {
		return false
	}
	for _, d := range batch {
		d.e.msg.Timestamp = time.Now()
		for es := []*entry{d.e}; len(es) > 0; {
			n, err := t.append(s.ctx, es, false) // due messages wait for room, whatever when_full says
			if err != nil {
				return false
			}
			es = es[n:]
		}
		s.mu.Lock()
		s.moving = s.moving[1:]
		s.mu.Unlock()
	}
	return true
}
