package rabbit

import (
	"context"
	"errors"
	"fmt"
	"math/bits"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/mqkit/mq"
)

// Delayed delivery (mq.Scheduler) without the delayed-message plugin.
//
// A topic's waiting messages sit in "level" queues, each with one
// queue-wide TTL (x-message-ttl), so that each queue is FIFO in due
// order: per-message TTLs would expire only at the queue's head, and a
// long delay would hold back a short one behind it.
//
// A message due in R is written as its number of steps
// u = ceil(R/delayStep) in base 32, and published with a routing key of
// u's digits, lowest first ("9.a.3" is 9 + 10·32 + 3·1024 steps), to the
// exchange of its highest level. Level k is a topic exchange,
// "<topic>.mq-delay.level-<k>", and up to 31 quorum queues,
// "<topic>.mq-delay.<TTL in ms>" for the TTLs d·32^k steps (d = 1-31):
// the exchange routes a message whose digit k is d to queue d, and one
// whose digit k is 0 on to the exchange of level k-1; the queue
// dead-letters an expired message, with its routing key, to that same
// next exchange (level 0's to the due exchange). So the broker itself
// walks each message down its levels, waiting exactly u steps in all,
// with no client involved, in one hop per non-zero digit (one below 4 s,
// at most two below 2 minutes: each hop costs the broker a quorum-queue
// write and a dead-lettering, which is what bounds the rate of delayed
// messages; with the 64 ms steps in base 16 of before, a minute took
// three and 100,000 due over a minute arrived 7-10 s late). The
// quorum queues dead-letter at-least-once (x-dead-letter-strategy), so a
// broker crash loses none. At the end the message reaches the queue
// "<topic>.mq-delay.due", which the relay of the topic's subscriptions
// (delay_relay.go) moves into the topic as Send would have written it.
// Only the queues a message needs are declared, when it is scheduled.

const (
	// delayStep is the smallest TTL: the granularity of the levels. A
	// delay is rounded up to it: 64 ms late on average, well within the
	// 1 s the issue allows, for one hop fewer than 64 ms steps in base 16
	// from 16 s to 2 minutes.
	delayStep = 128 * time.Millisecond
	// delayDigitBits is the bits of one level: 32 queues a level (31
	// used, digit 0 routes on).
	delayDigitBits = 5
	delayRadix     = 1 << delayDigitBits
	// delayLevels is the number of levels: the TTL of level 4's digit
	// 31, 31·2^27 ms (48 days), is the largest within RabbitMQ's TTL limit
	// of 2^32-1 ms, and the levels add up to 2^25-1 steps (49.7 days). A
	// message due later goes through all of them and, back at the due
	// queue, the relay sends it down the levels again (at most 8 times
	// within mq.MaxDelay).
	delayLevels   = 5
	delayMaxSteps = 1<<25 - 1
	// delayMargin is added to every remaining delay: the broker counts a
	// TTL from its own millisecond clock, which can be up to a millisecond
	// behind the moment the producer measured.
	delayMargin = 2 * time.Millisecond
)

// delayBase is the prefix of a topic's delay objects; group names are
// refused that would make queues with it.
const delayBase = "mq-delay"

// delayTTL is the TTL of queue d of level k, in milliseconds.
func delayTTL(k, d int) int64 { return int64(d) * delayStep.Milliseconds() << (delayDigitBits * k) }

// delayQueueName is queue d of level k of topic: named by its TTL.
func delayQueueName(topic string, k, d int) string {
	return topic + "." + delayBase + "." + strconv.FormatInt(delayTTL(k, d), 10)
}

// delayExchangeName is the exchange of level k of topic.
func delayExchangeName(topic string, k int) string {
	return topic + "." + delayBase + ".level-" + strconv.Itoa(k)
}

// delayDueName is the fanout exchange and the queue where due messages
// wait for the relay.
func delayDueName(topic string) string { return topic + "." + delayBase + ".due" }

// delaySteps returns the steps of the levels a message due at due waits
// through when scheduled at now: at least 1, at most all of them.
func delaySteps(due, now time.Time) uint64 {
	r := due.Sub(now) + delayMargin
	if r <= 0 {
		return 1
	}
	u := uint64((r + delayStep - 1) / delayStep)
	return min(max(u, 1), delayMaxSteps)
}

// delayDigit is digit k of u: the queue of level k it waits in, 0 for
// none.
func delayDigit(u uint64, k int) int { return int(u >> (delayDigitBits * k) & (delayRadix - 1)) }

// delayTop returns the highest level of u.
func delayTop(u uint64) int { return (bits.Len64(u) - 1) / delayDigitBits }

// delayRoutingKey writes the digits of u for levels 0 to top, lowest
// first, dot-separated, in base 32 (0-9, a-v): the key routes the message down
// the levels.
func delayRoutingKey(u uint64, top int) string {
	var b strings.Builder
	b.Grow(2 * (top + 1))
	for k := 0; k <= top; k++ {
		if k > 0 {
			b.WriteByte('.')
		}
		b.WriteString(strconv.FormatInt(int64(delayDigit(u, k)), delayRadix))
	}
	return b.String()
}

// delayPattern is the binding key that matches digit k equal to d.
func delayPattern(k, d int) string {
	return strings.Repeat("*.", k) + strconv.FormatInt(int64(d), delayRadix) + ".#"
}

// delays is a Conn's delayed-delivery state: what it declared, and its
// relays.
type delays struct {
	mu       sync.Mutex
	conn     *amqp.Connection       // the connection the declarations below were made on
	declared map[string]*delayDecls // by topic
	noQuorum bool                   // the broker refused quorum level queues: classic ones
	relays   map[string]*relay

	moved atomic.Uint64 // messages relays moved into their topics
	back  atomic.Uint64 // messages relays sent back into the levels
}

// delayDecls is what was declared of one topic's levels on a connection.
type delayDecls struct {
	exchanges int          // levels 0 to exchanges-1 (and the due queue, if any)
	queues    map[int]bool // k*delayRadix + d
}

// missing returns the exchanges (from level from) and queues that steps
// need and conn has not declared; the top level they reach; and false if
// nothing is missing.
func (d *delays) missing(conn *amqp.Connection, topic string, steps []uint64) (from, top int, queues [][2]int, need bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	var have *delayDecls
	if d.conn == conn {
		have = d.declared[topic]
	}
	if have == nil {
		have = &delayDecls{}
	}
	seen := map[int]bool{}
	for _, u := range steps {
		top = max(top, delayTop(u))
		for k := 0; k <= delayTop(u); k++ {
			if dg := delayDigit(u, k); dg != 0 && !have.queues[k*delayRadix+dg] && !seen[k*delayRadix+dg] {
				seen[k*delayRadix+dg] = true
				queues = append(queues, [2]int{k, dg})
			}
		}
	}
	from = have.exchanges
	return from, top, queues, from <= top || len(queues) > 0
}

// setDeclared records declarations made on conn.
func (d *delays) setDeclared(conn *amqp.Connection, topic string, exchanges int, queues [][2]int) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.conn != conn {
		d.conn = conn
		d.declared = map[string]*delayDecls{}
	}
	have := d.declared[topic]
	if have == nil {
		have = &delayDecls{queues: map[int]bool{}}
		d.declared[topic] = have
	}
	have.exchanges = max(have.exchanges, exchanges)
	for _, q := range queues {
		have.queues[q[0]*delayRadix+q[1]] = true
	}
}

// covers reports whether the queues u steps wait in were declared on
// conn.
func (d *delays) covers(conn *amqp.Connection, topic string, u uint64) bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	have := d.declared[topic]
	if d.conn != conn || have == nil || have.exchanges <= delayTop(u) {
		return false
	}
	for k := 0; k <= delayTop(u); k++ {
		if dg := delayDigit(u, k); dg != 0 && !have.queues[k*delayRadix+dg] {
			return false
		}
	}
	return true
}

// forget drops what is known of topic's levels, so they are declared
// again.
func (d *delays) forget(topic string) {
	d.mu.Lock()
	defer d.mu.Unlock()
	delete(d.declared, topic)
}

// Schedule implements mq.Scheduler. It publishes msgs, as persistent,
// mandatory messages with publisher confirms, into the delay levels of
// topic (declared on first use, see the package documentation, "Delayed
// delivery"), and returns after the broker confirmed every one. Like Send
// it reconnects and publishes unconfirmed messages again, bounded by ctx
// and Config.ReconnectTimeout; the delay left is computed again for
// each attempt.
func (c *Conn) Schedule(ctx context.Context, topic string, msgs []*mq.Message) error {
	if c.isClosed() {
		return mq.ErrClosed
	}
	if err := checkName("topic", topic); err != nil {
		return err
	}
	if len(msgs) == 0 {
		return nil
	}
	if err := checkName("delay queue", delayDueName(topic)); err != nil {
		return err
	}
	pubs := make([]amqp.Publishing, len(msgs))
	dues := make([]time.Time, len(msgs))
	keys := make([]string, len(msgs))
	now := time.Now()
	for i, m := range msgs {
		if n := m.Size(); n > c.cfg.MaxMessageSize {
			return fmt.Errorf("%w: message %s is %d bytes, max_message_size is %d", mq.ErrMessageTooLarge, m.ID, n, c.cfg.MaxMessageSize)
		}
		due := m.DeliverAt
		if due.IsZero() {
			var ok bool
			if due, ok = parseDeliverAt(m.Headers[mq.HeaderDeliverAt]); !ok {
				return fmt.Errorf("%w: message %s to schedule has no DeliverAt", mq.ErrInvalidMessage, m.ID)
			}
		}
		p, err := toPublishing(m, now)
		if err != nil {
			return err
		}
		if _, ok := p.Headers[mq.HeaderDeliverAt]; !ok {
			p.Headers[mq.HeaderDeliverAt] = due.UTC().Format(time.RFC3339Nano)
		}
		p.Expiration = "" // a per-message TTL would cut the levels' short
		pubs[i], dues[i] = p, due
	}
	return c.publishAll(ctx, topic, "delayed messages", pubs, keys, msgs, func(ctx context.Context, pc *pubChan, pending []int) (string, error) {
		top, err := c.routeDelays(ctx, pc.conn, topic, dues, pending, keys)
		return delayExchangeName(topic, top), err
	}, func(err error) {
		if errors.Is(err, ErrUnroutable) {
			// The levels were deleted under us: declare them again next
			// time.
			c.delays.forget(topic)
		}
	})
}

// parseDeliverAt reads the mq-deliver-at header.
func parseDeliverAt(v string) (time.Time, bool) {
	if v == "" {
		return time.Time{}, false
	}
	t, err := time.Parse(time.RFC3339Nano, v)
	return t, err == nil
}

// Scheduled implements mq.Scheduler: Waiting is the number of messages
// ready in topic's level queues and due queue (passive queue.declare of
// each), not counting the few a relay holds while it moves them. NextDue
// is always zero: the broker does not tell when the messages of a queue
// expire.
func (c *Conn) Scheduled(ctx context.Context, topic string) (mq.ScheduleStats, error) {
	if c.isClosed() {
		return mq.ScheduleStats{}, mq.ErrClosed
	}
	if err := checkName("topic", topic); err != nil {
		return mq.ScheduleStats{}, err
	}
	// On the consuming connection, as Lag: the broker never blocks it.
	o := c.newOutage(c.sub)
	cctx, cancel := o.connectCtx(ctx)
	conn, err := c.sub.get(cctx)
	err = o.connectErr(ctx, cctx, err)
	cancel()
	if err != nil {
		return mq.ScheduleStats{}, unavailable(err)
	}
	var st mq.ScheduleStats
	err = c.call(ctx, func(commit func(func()) bool) error {
		var n int64
		// Destinations before sources: a message moving meanwhile is
		// missed rather than counted twice.
		q, ok, err := inspectQueue(conn, delayDueName(topic))
		if err != nil {
			return err
		}
		if ok {
			n += int64(q.Messages)
		}
		p := &prober{conn: conn}
		defer p.close()
		// Level exchanges are declared from 0 up: the first missing one
		// ends them; a level's queues exist for the digits used.
		for k := range delayLevels {
			ok, err := p.exchange(delayExchangeName(topic, k))
			if err != nil || !ok {
				if err != nil {
					return err
				}
				break
			}
			for d := 1; d < delayRadix && delayTTL(k, d) <= maxTTL; d++ {
				q, ok, err := p.queue(delayQueueName(topic, k, d))
				if err != nil {
					return err
				}
				if ok {
					n += int64(q.Messages)
				}
			}
		}
		commit(func() { st.Waiting = n })
		return nil
	})
	if err != nil {
		return mq.ScheduleStats{}, unavailable(err)
	}
	return st, nil
}

// maxTTL is the largest TTL RabbitMQ takes, in milliseconds.
const maxTTL = 1<<32 - 1

// routeDelays works out the routing keys of msgs[idx...] due at dues, for
// the exchange of the level it returns, after declaring (once per
// connection) what they need: the due exchange and queue, the exchanges
// of levels 0 to that level (a message entering there may pass through
// any), and the queues of their digits. After a declaration, a message's
// key is worked out again, so that the time it took is not waited again,
// as far as the queues that exist allow (rather than making more queues,
// it arrives up to that much later). Each key is written for the entry
// level (a message that needs fewer levels has zeros above).
func (c *Conn) routeDelays(ctx context.Context, conn *amqp.Connection, topic string, dues []time.Time, idx []int, keys []string) (int, error) {
	steps := make([]uint64, len(idx))
	now := time.Now()
	for n, i := range idx {
		steps[n] = delaySteps(dues[i], now)
	}
	from, top, queues, missing := c.delays.missing(conn, topic, steps)
	if missing {
		err := c.call(ctx, func(func(func()) bool) error {
			if from == 0 {
				if err := c.declareDue(conn, topic); err != nil {
					return err
				}
			}
			for k := from; k <= top; k++ {
				if err := c.declareLevelExchange(conn, topic, k); err != nil {
					return err
				}
			}
			for _, q := range queues {
				if err := c.declareLevelQueue(conn, topic, q[0], q[1]); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			return 0, err
		}
		c.delays.setDeclared(conn, topic, max(from, top+1), queues)
		now := time.Now()
		for n, i := range idx {
			// The fewest steps, from what is left now, whose queues exist.
			for u := delaySteps(dues[i], now); u < steps[n] && u+64 > steps[n]; u++ {
				if c.delays.covers(conn, topic, u) {
					steps[n] = u
					break
				}
			}
		}
	}
	for n, i := range idx {
		keys[i] = delayRoutingKey(steps[n], top)
	}
	return top, nil
}

// delayNext is the exchange where level k sends what it is done with.
func delayNext(topic string, k int) string {
	if k == 0 {
		return delayDueName(topic)
	}
	return delayExchangeName(topic, k-1)
}

// declareDue declares the due exchange and queue of topic on a channel of
// its own: a fanout exchange and a durable queue with a single active
// consumer (so one relay at a time moves them, in order), a quorum queue
// where the groups' queues are (queue_type=quorum: on a cluster it must
// not live on one node), else classic. A due queue that exists with other
// arguments (made by an earlier version, or with another queue_type) is
// used as it is.
func (c *Conn) declareDue(conn *amqp.Connection, topic string) error {
	name := delayDueName(topic)
	if c.cfg.DisableDeclare {
		if _, ok, err := inspectQueue(conn, name); err != nil || !ok {
			if err == nil {
				err = fmt.Errorf("%w: queue %q of delayed messages does not exist (declare=false: declare the topic's delay topology first, with a connection that may)", ErrNotFound, name)
			}
			return err
		}
		return nil
	}
	ch, err := conn.Channel()
	if err != nil {
		return fmt.Errorf("rabbit: open channel: %w", err)
	}
	defer func() { _ = ch.Close() }()
	if err := ch.ExchangeDeclare(name, amqp.ExchangeFanout, true, false, false, false, nil); err != nil {
		return fmt.Errorf("rabbit: declare exchange %q: %w", name, err)
	}
	args := amqp.Table{amqp.SingleActiveConsumerArg: true}
	if c.cfg.QueueType == Quorum {
		args[amqp.QueueTypeArg] = amqp.QueueTypeQuorum
	}
	_, err = ch.QueueDeclare(name, true, false, false, false, args)
	if err != nil {
		if arg, _ := inequivalentArg(err); arg == "" {
			return fmt.Errorf("rabbit: declare queue %q: %w", name, err)
		}
		if _, ok, err2 := inspectQueue(conn, name); err2 != nil || !ok {
			return fmt.Errorf("rabbit: declare queue %q: %w", name, err)
		}
		if ch, err = conn.Channel(); err != nil {
			return fmt.Errorf("rabbit: open channel: %w", err)
		}
		defer func() { _ = ch.Close() }()
	}
	if err := ch.QueueBind(name, "", name, false, nil); err != nil {
		return fmt.Errorf("rabbit: bind queue %q: %w", name, err)
	}
	return nil
}

// declareLevelExchange declares the exchange of level k of topic, bound
// to the next one below for digit 0. With DisableDeclare it checks that it
// exists.
func (c *Conn) declareLevelExchange(conn *amqp.Connection, topic string, k int) error {
	name := delayExchangeName(topic, k)
	if err := checkName("delay exchange", name); err != nil {
		return err
	}
	ch, err := conn.Channel()
	if err != nil {
		return fmt.Errorf("rabbit: open channel: %w", err)
	}
	defer func() { _ = ch.Close() }()
	if c.cfg.DisableDeclare {
		if err := ch.ExchangeDeclarePassive(name, amqp.ExchangeTopic, true, false, false, false, nil); err != nil {
			return describe(fmt.Errorf("rabbit: check exchange %q of delayed messages (declare=false: declare the topic's delay topology first, with a connection that may): %w", name, err), fmt.Sprintf("exchange %q", name))
		}
		return nil
	}
	if err := ch.ExchangeDeclare(name, amqp.ExchangeTopic, true, false, false, false, nil); err != nil {
		return fmt.Errorf("rabbit: declare exchange %q: %w", name, err)
	}
	if err := ch.ExchangeBind(delayNext(topic, k), delayPattern(k, 0), name, false, nil); err != nil {
		return fmt.Errorf("rabbit: bind exchange %q to %q: %w", delayNext(topic, k), name, err)
	}
	return nil
}

// declareLevelQueue declares queue d of level k of topic (a quorum queue
// with at-least-once dead-lettering, or where the broker refuses that, a
// classic one, logged once), bound to the level's exchange for digit d
// and dead-lettering to the next exchange below. With DisableDeclare it
// checks that it exists.
func (c *Conn) declareLevelQueue(conn *amqp.Connection, topic string, k, d int) error {
	name := delayQueueName(topic, k, d)
	if err := checkName("delay queue", name); err != nil {
		return err
	}
	if c.cfg.DisableDeclare {
		_, ok, err := inspectQueue(conn, name)
		if err == nil && !ok {
			err = fmt.Errorf("%w: queue %q of delayed messages does not exist (declare=false: declare the topic's delay topology first, with a connection that may)", ErrNotFound, name)
		}
		return err
	}
	ch, err := conn.Channel()
	if err != nil {
		return fmt.Errorf("rabbit: open channel: %w", err)
	}
	defer func() { _ = ch.Close() }()
	ttl, next := delayTTL(k, d), delayNext(topic, k)
	classic := amqp.Table{"x-message-ttl": ttl, "x-dead-letter-exchange": next, "x-queue-mode": "lazy"}
	quorum := amqp.Table{
		amqp.QueueTypeArg: amqp.QueueTypeQuorum, "x-message-ttl": ttl, "x-dead-letter-exchange": next,
		"x-dead-letter-strategy": "at-least-once", "x-overflow": "reject-publish",
	}
	c.delays.mu.Lock()
	noQuorum := c.delays.noQuorum
	c.delays.mu.Unlock()
	first, second := quorum, classic
	if noQuorum {
		first, second = classic, quorum
	}
	_, err = ch.QueueDeclare(name, true, false, false, false, first)
	if err != nil {
		// The broker refuses the arguments (a quorum queue with a TTL
		// before 3.10), or the queue exists with the other kind.
		var ae *amqp.Error
		if !errors.As(err, &ae) || (ae.Code != amqp.PreconditionFailed && ae.Code != amqp.CommandInvalid && ae.Code != amqp.NotImplemented) {
			return fmt.Errorf("rabbit: declare queue %q: %w", name, err)
		}
		ch2, err2 := conn.Channel()
		if err2 != nil {
			return fmt.Errorf("rabbit: open channel: %w", err2)
		}
		defer func() { _ = ch2.Close() }()
		if _, err2 := ch2.QueueDeclare(name, true, false, false, false, second); err2 != nil {
			return fmt.Errorf("rabbit: declare queue %q: %w (and as the other type: %w)", name, err, err2)
		}
		if !noQuorum {
			c.delays.mu.Lock()
			c.delays.noQuorum = true
			c.delays.mu.Unlock()
			c.logOnce("delay classic", "rabbit: the broker refuses quorum delay queues with a message TTL (RabbitMQ before 3.10?); using classic queues, "+
				"whose dead-lettering is at-most-once: a broker crash can lose delayed messages in transit between levels",
				"queue", name, "error", err)
		}
		ch = ch2
	}
	if err := ch.QueueBind(name, delayPattern(k, d), delayExchangeName(topic, k), false, nil); err != nil {
		return fmt.Errorf("rabbit: bind queue %q: %w", name, err)
	}
	return nil
}

// prober checks that exchanges and queues exist on one channel, opened
// again after each that does not (the broker closes the channel).
type prober struct {
	conn *amqp.Connection
	ch   *amqp.Channel
}

func (p *prober) channel() (*amqp.Channel, error) {
	if p.ch == nil || p.ch.IsClosed() {
		ch, err := p.conn.Channel()
		if err != nil {
			return nil, fmt.Errorf("rabbit: open channel: %w", err)
		}
		p.ch = ch
	}
	return p.ch, nil
}

func (p *prober) close() {
	if p.ch != nil {
		_ = p.ch.Close()
	}
}

func notFound(err error) bool {
	var ae *amqp.Error
	return errors.As(err, &ae) && ae.Code == amqp.NotFound
}

func (p *prober) exchange(name string) (bool, error) {
	ch, err := p.channel()
	if err != nil {
		return false, err
	}
	if err := ch.ExchangeDeclarePassive(name, amqp.ExchangeTopic, true, false, false, false, nil); err != nil {
		if notFound(err) {
			return false, nil
		}
		return false, fmt.Errorf("rabbit: inspect exchange %q: %w", name, err)
	}
	return true, nil
}

func (p *prober) queue(name string) (amqp.Queue, bool, error) {
	ch, err := p.channel()
	if err != nil {
		return amqp.Queue{}, false, err
	}
	q, err := ch.QueueDeclarePassive(name, true, false, false, false, nil)
	if err != nil {
		if notFound(err) {
			return amqp.Queue{}, false, nil
		}
		return amqp.Queue{}, false, fmt.Errorf("rabbit: inspect queue %q: %w", name, err)
	}
	return q, true, nil
}
