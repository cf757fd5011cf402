package rabbit

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/mqkit/mq"
)

// Backlog is what waits for a consumer group, as Conn.Backlog reports it.
type Backlog struct {
	// Ready is the number of messages ready for delivery in the group's
	// queues, not counting those delivered and not yet acknowledged.
	Ready int
	// Unrouted is the number of messages in "<topic>.unrouted": produced
	// while the topic had no group bound, they go to the group that
	// subscribes next (see the package documentation), or with
	// unrouted=hold stay there for operators. Usually 0 once a group
	// exists.
	Unrouted int
}

// Lag returns the messages waiting for group on topic: the Ready and the
// Unrouted of Backlog, added up, so that a message kept aside in the
// unrouted queue is never invisible. See Backlog for the errors.
func (c *Conn) Lag(ctx context.Context, topic, group string) (int, error) {
	b, err := c.Backlog(ctx, topic, group)
	if err != nil {
		return 0, err
	}
	return b.Ready + b.Unrouted, nil
}

// Backlog returns what waits for group on topic, from passive
// queue.declare calls. It finds the group's queues whatever this
// connection's Shards: "<topic>.<group>" and "<topic>.<group>.shard-<i>".
// A group without any queue gives an error wrapping mq.ErrUnknownGroup
// and ErrNotFound. When the broker cannot be reached (within
// Config.ReconnectTimeout) the error wraps mq.ErrUnavailable.
func (c *Conn) Backlog(ctx context.Context, topic, group string) (Backlog, error) {
	var b Backlog
	err := c.withQueues(ctx, topic, group, func(conn *amqp.Connection, qs []amqp.Queue, commit func(func()) bool) error {
		if len(qs) == 0 {
			return fmt.Errorf("rabbit: group %q of topic %q has no queue %q: %w (%w)", group, topic, topic+"."+group, mq.ErrUnknownGroup, ErrNotFound)
		}
		var next Backlog
		for _, q := range qs {
			next.Ready += q.Messages
		}
		u, ok, err := inspectQueue(conn, unroutedName(topic))
		if err != nil {
			return err
		}
		if ok {
			next.Unrouted = u.Messages
		}
		commit(func() { b = next })
		return nil
	})
	return b, err
}

// DeleteGroup implements mq.GroupDeleter: it deletes the queues of group
// on topic (every shard, whatever this connection's Shards) and a sharded
// group's consistent-hash exchange, with the messages they hold. A group
// whose queues have consumers (members, or standby members of a sharded
// group) gives an error wrapping mq.ErrGroupActive and nothing is
// deleted. A
// group without queues is not an error. Once a topic has no group left,
// its messages go to the unrouted queue again, for the next group that
// subscribes.
func (c *Conn) DeleteGroup(ctx context.Context, topic, group string) error {
	if group == unroutedGroup {
		return fmt.Errorf("rabbit: group name %q is reserved: queue %q keeps the messages of a topic without groups", group, unroutedName(topic))
	}
	return c.withQueues(ctx, topic, group, func(conn *amqp.Connection, qs []amqp.Queue, _ func(func()) bool) error {
		for _, q := range qs {
			if q.Consumers > 0 {
				return fmt.Errorf("rabbit: queue %q of group %q has %d consumers; stop them first: %w", q.Name, group, q.Consumers, mq.ErrGroupActive)
			}
		}
		dropped := 0
		for _, q := range qs {
			ch, err := conn.Channel()
			if err != nil {
				return fmt.Errorf("rabbit: open channel: %w", err)
			}
			// if-unused: a consumer that attached since the check keeps
			// the queue.
			n, err := ch.QueueDelete(q.Name, true, false, false)
			_ = ch.Close()
			if err != nil {
				var ae *amqp.Error
				if errors.As(err, &ae) && ae.Code == amqp.PreconditionFailed {
					return fmt.Errorf("rabbit: queue %q of group %q got a consumer: %w: %w", q.Name, group, mq.ErrGroupActive, err)
				}
				return fmt.Errorf("rabbit: delete queue %q: %w", q.Name, err)
			}
			dropped += n
		}
		if len(qs) > 1 || (len(qs) == 1 && qs[0].Name != topic+"."+group) {
			ch, err := conn.Channel()
			if err != nil {
				return fmt.Errorf("rabbit: open channel: %w", err)
			}
			err = ch.ExchangeDelete(shardExchange(topic, group), false, false)
			_ = ch.Close()
			var ae *amqp.Error
			if err != nil && !(errors.As(err, &ae) && ae.Code == amqp.NotFound) {
				return fmt.Errorf("rabbit: delete exchange %q: %w", shardExchange(topic, group), err)
			}
		}
		if len(qs) > 0 {
			c.cfg.Logger.Info("rabbit: deleted consumer group", "topic", topic, "group", group, "queues", len(qs), "messages_dropped", dropped)
		}
		return nil
	})
}

// withQueues runs fn, through Conn.call (fn hands its results over with
// commit), on the consuming connection with the queues that group has on
// the broker (see groupQueues).
func (c *Conn) withQueues(ctx context.Context, topic, group string, fn func(*amqp.Connection, []amqp.Queue, func(func()) bool) error) error {
	if c.isClosed() {
		return mq.ErrClosed
	}
	// On the consuming connection: the broker never blocks it, as it
	// publishes nothing.
	o := c.newOutage(c.sub)
	cctx, cancel := o.connectCtx(ctx)
	conn, err := c.sub.get(cctx)
	err = o.connectErr(ctx, cctx, err)
	cancel()
	if err != nil {
		return unavailable(err)
	}
	err = c.call(ctx, func(commit func(func()) bool) error {
		qs, err := groupQueues(conn, topic, group)
		if err != nil {
			return err
		}
		return fn(conn, qs, commit)
	})
	return unavailable(err)
}

// groupQueues returns the queues of group on topic that exist:
// "<topic>.<group>" and the shards "<topic>.<group>.shard-<i>" from 0 up
// to the first missing one.
func groupQueues(conn *amqp.Connection, topic, group string) ([]amqp.Queue, error) {
	base := topic + "." + group
	var qs []amqp.Queue
	q, ok, err := inspectQueue(conn, base)
	if err != nil {
		return nil, err
	}
	if ok {
		qs = append(qs, q)
	}
	for i := 0; ; i++ {
		q, ok, err := inspectQueue(conn, base+".shard-"+strconv.Itoa(i))
		if err != nil {
			return nil, err
		}
		if !ok {
			return qs, nil
		}
		qs = append(qs, q)
	}
}

// inspectQueue returns the state of queue name from a passive declare on
// a channel of its own (the broker closes the channel of one that fails),
// and false if the queue does not exist.
func inspectQueue(conn *amqp.Connection, name string) (amqp.Queue, bool, error) {
	ch, err := conn.Channel()
	if err != nil {
		return amqp.Queue{}, false, fmt.Errorf("rabbit: open channel: %w", err)
	}
	defer func() { _ = ch.Close() }()
	q, err := ch.QueueDeclarePassive(name, true, false, false, false, nil)
	if err != nil {
		var ae *amqp.Error
		if errors.As(err, &ae) && ae.Code == amqp.NotFound {
			return amqp.Queue{}, false, nil
		}
		return amqp.Queue{}, false, fmt.Errorf("rabbit: inspect queue %q: %w", name, err)
	}
	return q, true, nil
}

// PartitionLag implements mq.Lagger: one entry per queue of the group
// (Backlog: its ready messages; Unacked and OldestAge: -1, which a
// passive queue.declare does not tell), and, when it holds messages, one
// for "<topic>.unrouted" (see Backlog.Unrouted), sorted by queue name. A
// group without queues gives an error wrapping mq.ErrUnknownGroup.
func (c *Conn) PartitionLag(ctx context.Context, topic, group string) ([]mq.PartitionLag, error) {
	var out []mq.PartitionLag
	err := c.withQueues(ctx, topic, group, func(conn *amqp.Connection, qs []amqp.Queue, commit func(func()) bool) error {
		if len(qs) == 0 {
			return fmt.Errorf("rabbit: group %q of topic %q has no queue %q: %w (%w)", group, topic, topic+"."+group, mq.ErrUnknownGroup, ErrNotFound)
		}
		u, ok, err := inspectQueue(conn, unroutedName(topic))
		if err != nil {
			return err
		}
		if ok && u.Messages > 0 {
			qs = append(qs, u)
		}
		lag := make([]mq.PartitionLag, len(qs))
		for i, q := range qs {
			lag[i] = mq.PartitionLag{Partition: q.Name, Backlog: int64(q.Messages), Unacked: -1, OldestAge: -1}
		}
		slices.SortFunc(lag, func(a, b mq.PartitionLag) int { return strings.Compare(a.Partition, b.Partition) })
		commit(func() { out = lag })
		return nil
	})
	return out, err
}

// Ping implements mq.Pinger: it returns nil when the publishing
// connection is open (or can be dialed within ctx and
// Config.ReconnectTimeout) and the broker answers a channel open and
// close on it within ctx, and an error wrapping mq.ErrUnavailable
// otherwise.
func (c *Conn) Ping(ctx context.Context) error {
	if c.isClosed() {
		return mq.ErrClosed
	}
	o := c.newOutage(c.pub)
	cctx, cancel := o.connectCtx(ctx)
	defer cancel()
	conn, err := c.pub.get(cctx)
	if err = o.connectErr(ctx, cctx, err); err != nil {
		return unavailable(err)
	}
	if conn.IsClosed() {
		return fmt.Errorf("rabbit: connection to %s closed: %w", c.redacted, mq.ErrUnavailable)
	}
	// One round trip (channel.open/close): an open TCP connection to a
	// hung broker answers nothing. amqp091 takes no context, so the call
	// runs apart, and while one is unanswered no other starts: a probe
	// every second cannot pile up calls on a hung broker.
	if !c.pinging.CompareAndSwap(false, true) {
		return fmt.Errorf("rabbit: %s has not answered the last ping: %w", c.redacted, mq.ErrUnavailable)
	}
	done := make(chan error, 1)
	go func() {
		defer c.pinging.Store(false)
		ch, err := conn.Channel()
		if err == nil {
			err = ch.Close()
		}
		done <- err
	}()
	select {
	case err := <-done:
		if err != nil {
			return unavailable(fmt.Errorf("rabbit: ping %s: %w", c.redacted, err))
		}
		return nil
	case <-ctx.Done():
		return fmt.Errorf("rabbit: ping %s: %w: %w", c.redacted, mq.ErrUnavailable, ctx.Err())
	}
}

var (
	_ mq.GroupDeleter = (*Conn)(nil)
	_ mq.Lagger       = (*Conn)(nil)
	_ mq.Pinger       = (*Conn)(nil)
)
