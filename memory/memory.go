// Package memory is an in-process message broker, registered as the mem://
// URL scheme. It is the SDK's embedded default: a service or a demo runs
// with no broker to install, and tests of handlers and middleware run in
// microseconds.
//
// It is a real broker, not a mock: topics, consumer groups that share a
// topic's messages while each group gets all of them, redelivery with a
// growing attempt count, per-key order across all members of a group,
// bounded buffers with backpressure, and graceful shutdown. Messages live in
// the process's memory and are gone when it exits: durability is that of
// the process.
//
// URL parameters (besides the portable ones of mq.Open):
//
//	capacity=N       unsettled messages a group may hold (default 10000)
//	when_full=block  Produce waits for room (default), or
//	when_full=error  Produce fails with mq.ErrBufferFull
//	max_message_bytes (portable): larger messages fail with mq.ErrMessageTooLarge
//
// Every mq.Open of mem:// makes a new, private broker. To share one broker
// between several clients in a process, make it with NewBroker and wrap it
// with mq.NewClient(broker.Conn()).
//
// A group receives every message produced after it was created. Messages
// produced while a topic has no group at all are kept (up to capacity) and
// handed to the first group that subscribes.
package memory

import (
	"bytes"
	"cmp"
	"context"
	"errors"
	"fmt"
	"maps"
	"net/url"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/mqkit/mq"
	"github.com/mqkit/mq/internal/urlparams"
)

func init() { mq.Register("mem", driver{}) }

type driver struct{}

func (driver) Open(_ context.Context, u *url.URL) (mq.Conn, error) {
	cfg := Config{}
	q := urlparams.New(u.Query())
	q.Int("capacity", &cfg.Capacity, 1)
	whenFull := "block"
	q.Enum("when_full", &whenFull, "block", "error")
	cfg.FailWhenFull = whenFull == "error"
	if err := q.Err("mem://"); err != nil {
		return nil, fmt.Errorf("%w: %w", mq.ErrInvalidURL, err)
	}
	if u.Host != "" || (u.Path != "" && u.Path != "/") {
		return nil, fmt.Errorf("%w: mem:// takes no host or path, got %q", mq.ErrInvalidURL, u.Host+u.Path)
	}
	b := NewBroker(cfg)
	return &conn{b: b, owns: true}, nil
}

// Config configures a Broker. The zero value is ready to use.
type Config struct {
	// Capacity bounds the unsettled messages (not yet acknowledged) each
	// consumer group holds, and the messages kept for a topic with no group
	// yet. Default 10000.
	Capacity int
	// FailWhenFull makes Produce fail with mq.ErrBufferFull when a group is
	// at capacity. By default Produce waits for room until its context
	// ends.
	FailWhenFull bool
}

// Broker is an in-process broker. It is safe for concurrent use.
type Broker struct {
	cfg Config

	mu     sync.Mutex
	topics map[string]*topic
	closed bool
	seq    uint64
	done   chan struct{}

	schedulers map[string]*scheduler // delayed messages per topic, made on first use
}

// NewBroker returns a new broker with no topics.
func NewBroker(cfg Config) *Broker {
	if cfg.Capacity <= 0 {
		cfg.Capacity = 10000
	}
	return &Broker{cfg: cfg, topics: map[string]*topic{}, done: make(chan struct{})}
}

// Conn returns a connection to b for mq.NewClient. Closing the connection
// does not close the broker.
func (b *Broker) Conn() mq.Conn { return &conn{b: b} }

// Close closes the broker: sends and receives fail with mq.ErrClosed.
// It stops the goroutines that move delayed messages (one per topic,
// started by its first one): close every broker made with NewBroker.
// Close is idempotent.
func (b *Broker) Close() error {
	b.mu.Lock()
	if !b.closed {
		b.closed = true
		close(b.done)
	}
	scheds := make([]*scheduler, 0, len(b.schedulers))
	for _, s := range b.schedulers {
		scheds = append(scheds, s)
	}
	b.mu.Unlock()
	for _, s := range scheds {
		s.cancel()
		s.mu.Lock()
		started := s.started
		s.mu.Unlock()
		if started {
			<-s.done // the mover returns once it sees done
		}
	}
	return nil
}

// Stats describes one consumer group of one topic.
type Stats struct {
	Topic, Group string
	// Ready counts messages waiting to be delivered.
	Ready int
	// Unacked counts messages delivered and not yet settled.
	Unacked int
	// Members counts the group's subscriptions.
	Members int
}

// Stats returns the state of every consumer group, sorted by topic and
// group.
func (b *Broker) Stats() []Stats {
	b.mu.Lock()
	ts := slices.Collect(maps.Values(b.topics))
	b.mu.Unlock()
	var out []Stats
	for _, t := range ts {
		t.mu.Lock()
		for _, g := range t.groups {
			out = append(out, Stats{Topic: t.name, Group: g.name, Ready: len(g.ready), Unacked: g.unacked, Members: g.members})
		}
		t.mu.Unlock()
	}
	slices.SortFunc(out, func(a, b Stats) int {
		return cmp.Or(strings.Compare(a.Topic, b.Topic), strings.Compare(a.Group, b.Group))
	})
	return out
}

func (b *Broker) topic(name string, create bool) (*topic, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		return nil, mq.ErrClosed
	}
	t := b.topics[name]
	if t == nil && create {
		t = &topic{b: b, name: name, groups: map[string]*group{}, room: make(chan struct{})}
		b.topics[name] = t
	}
	return t, nil
}

// entry is one produced message, shared read-only by every group: each
// delivery copies it.
type entry struct {
	seq uint64
	msg mq.Message // Topic and Timestamp set; Attempt not used
}

type topic struct {
	b    *Broker
	name string

	mu      sync.Mutex
	groups  map[string]*group
	backlog []*entry      // kept while the topic has no group
	room    chan struct{} // closed and replaced when a group frees room for waiting producers
	waiting int           // producers waiting on room
}

// pending is a message waiting in, or delivered from, one group.
type pending struct {
	e       *entry
	attempt int
}

type group struct {
	name    string
	ready   []pending // sorted by seq
	unacked int
	members int
	subs    map[*subscription]struct{} // the members, for Lag
	// owner maps a key to the subscription holding its unsettled messages,
	// so one key is never handled by two members at once.
	owner map[string]*owned
	wake  chan struct{} // closed and replaced when ready grows
}

type owned struct {
	sub *subscription
	n   int
}

func (g *group) signal() {
	close(g.wake)
	g.wake = make(chan struct{})
}

// conn is the mq.Conn of a broker.
type conn struct {
	b      *Broker
	owns   bool
	closed sync.Once
}

func (c *conn) Broker() *Broker { return c.b }

func (c *conn) Close() error {
	if c.owns {
		c.closed.Do(func() { _ = c.b.Close() })
	}
	return nil
}

func (c *conn) Send(ctx context.Context, topicName string, msgs []*mq.Message) error {
	t, err := c.b.topic(topicName, true)
	if err != nil {
		return err
	}
	entries := make([]*entry, len(msgs))
	now := time.Now()
	for i, m := range msgs {
		e := &entry{msg: mq.Message{
			ID:        m.ID,
			Key:       m.Key,
			Headers:   maps.Clone(m.Headers),
			Body:      append([]byte{}, m.Body...),
			Topic:     topicName,
			Timestamp: now,
		}}
		entries[i] = e
	}
	for len(entries) > 0 {
		n, err := t.append(ctx, entries, t.b.cfg.FailWhenFull)
		if err != nil {
			return err
		}
		entries = entries[n:]
	}
	return nil
}

// append adds as many entries as every group has room for (at least one,
// waiting for room if needed, or failing with mq.ErrBufferFull when
// failWhenFull) and returns how many it added.
func (t *topic) append(ctx context.Context, es []*entry, failWhenFull bool) (int, error) {
	capacity := t.b.cfg.Capacity
	for {
		t.mu.Lock()
		free := capacity - len(t.backlog)
		if len(t.groups) > 0 {
			free = capacity
			for _, g := range t.groups {
				free = min(free, capacity-len(g.ready)-g.unacked)
			}
		}
		if free > 0 {
			n := min(free, len(es))
			t.b.mu.Lock()
			if t.b.closed {
				t.b.mu.Unlock()
				t.mu.Unlock()
				return 0, mq.ErrClosed
			}
			for _, e := range es[:n] {
				t.b.seq++
				e.seq = t.b.seq
			}
			t.b.mu.Unlock()
			if len(t.groups) == 0 {
				t.backlog = append(t.backlog, es[:n]...)
			}
			for _, g := range t.groups {
				for _, e := range es[:n] {
					g.ready = append(g.ready, pending{e: e, attempt: 1})
				}
				g.signal()
			}
			t.mu.Unlock()
			return n, nil
		}
		if failWhenFull {
			t.mu.Unlock()
			return 0, fmt.Errorf("%w: topic %q has %d unsettled messages in its slowest group", mq.ErrBufferFull, t.name, capacity)
		}
		room := t.room
		t.waiting++
		t.mu.Unlock()
		var err error
		select {
		case <-room:
		case <-ctx.Done():
			err = fmt.Errorf("memory: waiting for room in topic %q: %w", t.name, ctx.Err())
		case <-t.b.done:
			err = mq.ErrClosed
		}
		t.mu.Lock()
		t.waiting--
		t.mu.Unlock()
		if err != nil {
			return 0, err
		}
	}
}

// freed wakes producers waiting for room. t.mu is held.
func (t *topic) freed() {
	if t.waiting > 0 {
		close(t.room)
		t.room = make(chan struct{})
	}
}

// Ping implements mq.Pinger: it fails only once the broker is closed.
func (c *conn) Ping(context.Context) error {
	c.b.mu.Lock()
	defer c.b.mu.Unlock()
	if c.b.closed {
		return mq.ErrClosed
	}
	return nil
}

// PartitionLag implements mq.Lagger with one entry (Partition "") for the
// group: its ready messages as Backlog, what its members hold as Unacked,
// and the age of the oldest of all of them.
func (c *conn) PartitionLag(_ context.Context, topicName, groupName string) ([]mq.PartitionLag, error) {
	t, err := c.b.topic(topicName, false)
	if err != nil {
		return nil, err
	}
	if t == nil {
		return nil, fmt.Errorf("memory: %w: no topic %q", mq.ErrUnknownGroup, topicName)
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	g := t.groups[groupName]
	if g == nil {
		return nil, fmt.Errorf("memory: %w: %q on topic %q", mq.ErrUnknownGroup, groupName, topicName)
	}
	var oldest time.Time
	older := func(ts time.Time) {
		if oldest.IsZero() || ts.Before(oldest) {
			oldest = ts
		}
	}
	if len(g.ready) > 0 {
		older(g.ready[0].e.msg.Timestamp) // ready is in produce order
	}
	for sub := range g.subs {
		for d := range sub.held {
			older(d.p.e.msg.Timestamp)
		}
	}
	l := mq.PartitionLag{Backlog: int64(len(g.ready)), Unacked: int64(g.unacked)}
	if !oldest.IsZero() {
		l.OldestAge = max(time.Since(oldest), time.Nanosecond)
	}
	return []mq.PartitionLag{l}, nil
}

// DeleteGroup implements mq.GroupDeleter: the group and the messages kept
// for it are dropped. A group with members still subscribed is refused.
func (c *conn) DeleteGroup(_ context.Context, topicName, groupName string) error {
	t, err := c.b.topic(topicName, false)
	if err != nil || t == nil {
		return err
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	g := t.groups[groupName]
	if g == nil {
		return nil
	}
	if g.members > 0 {
		return fmt.Errorf("memory: %w: group %q of topic %q has %d members subscribed; close them first", mq.ErrGroupActive, groupName, topicName, g.members)
	}
	delete(t.groups, groupName)
	t.freed() // its messages no longer hold producers back
	return nil
}

func (c *conn) Subscribe(_ context.Context, topicName, groupName string, _ mq.SubscribeOptions) (mq.Subscription, error) {
	t, err := c.b.topic(topicName, true)
	if err != nil {
		return nil, err
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	g := t.groups[groupName]
	if g == nil {
		g = &group{name: groupName, owner: map[string]*owned{}, wake: make(chan struct{})}
		if len(t.groups) == 0 {
			for _, e := range t.backlog {
				g.ready = append(g.ready, pending{e: e, attempt: 1})
			}
			t.backlog = nil
		}
		t.groups[groupName] = g
	}
	g.members++
	sub := &subscription{t: t, g: g, held: map[*delivery]struct{}{}}
	if g.subs == nil {
		g.subs = map[*subscription]struct{}{}
	}
	g.subs[sub] = struct{}{}
	return sub, nil
}

type subscription struct {
	t *topic
	g *group

	// guarded by t.mu
	held   map[*delivery]struct{}
	closed bool
}

type delivery struct {
	s       *subscription
	p       pending
	msg     *mq.Message
	settled bool
}

func (d *delivery) Message() *mq.Message { return d.msg }

func (d *delivery) Ack(context.Context) error { return d.settle(false) }

func (d *delivery) Nack(context.Context) error { return d.settle(true) }

// Lost returns nil: a member keeps its deliveries until it settles them or
// closes.
func (d *delivery) Lost() <-chan struct{} { return nil }

func (d *delivery) settle(requeue bool) error {
	t := d.s.t
	t.mu.Lock()
	defer t.mu.Unlock()
	if d.settled {
		return errors.New("memory: message already settled")
	}
	if d.s.closed {
		// Leaving the group already returned it.
		return mq.ErrClosed
	}
	d.s.settleLocked(d, requeue)
	return nil
}

// settleLocked acknowledges d, or returns it to the group. t.mu is held.
func (s *subscription) settleLocked(d *delivery, requeue bool) {
	g := s.g
	d.settled = true
	delete(s.held, d)
	g.unacked--
	if k := d.p.e.msg.Key; k != "" {
		if o := g.owner[k]; o != nil && o.sub == s {
			o.n--
			if o.n == 0 {
				delete(g.owner, k)
			}
		}
	}
	if requeue {
		p := d.p
		p.attempt++
		i, _ := slices.BinarySearchFunc(g.ready, p.e.seq, func(x pending, seq uint64) int {
			switch {
			case x.e.seq < seq:
				return -1
			case x.e.seq > seq:
				return 1
			}
			return 0
		})
		g.ready = slices.Insert(g.ready, i, p)
		g.signal()
	} else {
		s.t.freed()
	}
}

func (s *subscription) Receive(ctx context.Context, max int) ([]mq.Delivery, error) {
	t := s.t
	for {
		t.mu.Lock()
		if s.closed {
			t.mu.Unlock()
			return nil, mq.ErrClosed
		}
		out := s.takeLocked(max)
		wake := s.g.wake
		t.mu.Unlock()
		if len(out) > 0 {
			return out, nil
		}
		select {
		case <-wake:
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-t.b.done:
			return nil, mq.ErrClosed
		}
	}
}

// takeLocked delivers up to max ready messages to s, skipping messages whose
// key is held by another member. t.mu is held.
func (s *subscription) takeLocked(max int) []mq.Delivery {
	g := s.g
	var out []mq.Delivery
	var blocked map[string]bool
	var kept []pending
	i := 0
	for ; i < len(g.ready) && len(out) < max; i++ {
		p := g.ready[i]
		k := p.e.msg.Key
		if k != "" {
			o := g.owner[k]
			if (o != nil && o.sub != s) || blocked[k] {
				// Another member holds this key: leave the message, and
				// every later one of the key, for it to finish first.
				if blocked == nil {
					blocked = map[string]bool{}
				}
				blocked[k] = true
				kept = append(kept, p)
				continue
			}
			if o == nil {
				o = &owned{sub: s}
				g.owner[k] = o
			}
			o.n++
		}
		// Copy: every delivery gets its own Message, Headers and Body, so a
		// handler that edits them in place changes neither what another
		// group receives nor what a redelivery carries.
		m := p.e.msg
		m.Headers = maps.Clone(m.Headers)
		m.Body = bytes.Clone(m.Body)
		m.Attempt = p.attempt
		d := &delivery{s: s, p: p, msg: &m}
		s.held[d] = struct{}{}
		g.unacked++
		out = append(out, d)
	}
	// Put the skipped messages back just before the untouched rest, in
	// order, and drop the delivered ones from the front.
	start := i - len(kept)
	copy(g.ready[start:i], kept)
	clear(g.ready[:start])
	g.ready = g.ready[start:]
	return out
}

func (s *subscription) Close() error {
	t := s.t
	t.mu.Lock()
	defer t.mu.Unlock()
	if s.closed {
		return nil
	}
	// Return what this member holds, in produce order, so the group's
	// other members (or a later one) get it.
	held := slices.Collect(maps.Keys(s.held))
	slices.SortFunc(held, func(a, b *delivery) int {
		if a.p.e.seq < b.p.e.seq {
			return -1
		}
		return 1
	})
	for _, d := range held {
		s.settleLocked(d, true)
	}
	s.closed = true
	s.g.members--
	delete(s.g.subs, s)
	s.g.signal()
	return nil
}

var (
	_ mq.Conn         = (*conn)(nil)
	_ mq.GroupDeleter = (*conn)(nil)
	_ mq.Pinger       = (*conn)(nil)
	_ mq.Lagger       = (*conn)(nil)
	_ mq.Subscription = (*subscription)(nil)
	_ mq.Delivery     = (*delivery)(nil)
)
