package rabbit

import (
	"context"
	"errors"
	"fmt"
	"strconv"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/mqkit/mq"
)

// Names of the broker objects of a topic and a group.

// unroutedGroup is the group name that would clash with the unrouted
// queue.
const unroutedGroup = "unrouted"

// unroutedName is the alternate exchange, and its queue, of a topic.
func unroutedName(topic string) string { return topic + "." + unroutedGroup }

// QueueNames returns the queues of group on topic under this connection's
// configuration: "<topic>.<group>", or with Shards = N,
// "<topic>.<group>.shard-0" to "<topic>.<group>.shard-<N-1>".
func (c *Conn) QueueNames(topic, group string) []string {
	base := topic + "." + group
	if c.cfg.Shards <= 1 {
		return []string{base}
	}
	names := make([]string, c.cfg.Shards)
	for i := range names {
		names[i] = base + ".shard-" + strconv.Itoa(i)
	}
	return names
}

// shardExchange is the consistent-hash exchange of a sharded group.
func shardExchange(topic, group string) string { return topic + "." + group + ".shards" }

// declareExchange declares the topic's exchange and, unless disabled, the
// alternate exchange and queue that keep messages no group receives.
func (c *Conn) declareExchange(ch *amqp.Channel, topic string) error {
	var args amqp.Table
	if !c.cfg.DisableUnroutedQueue {
		ae := unroutedName(topic)
		if err := checkName("unrouted queue", ae); err != nil {
			return err
		}
		if err := ch.ExchangeDeclare(ae, amqp.ExchangeFanout, true, false, false, false, nil); err != nil {
			return fmt.Errorf("rabbit: declare exchange %q: %w", ae, err)
		}
		if _, err := ch.QueueDeclare(ae, true, false, false, false, c.queueArgs(false, false)); err != nil {
			return fmt.Errorf("rabbit: declare queue %q: %w", ae, err)
		}
		if err := ch.QueueBind(ae, "", ae, false, nil); err != nil {
			return fmt.Errorf("rabbit: bind queue %q: %w", ae, err)
		}
		args = amqp.Table{"alternate-exchange": ae}
	}
	if err := ch.ExchangeDeclare(topic, c.cfg.ExchangeType, true, false, false, false, args); err != nil {
		return fmt.Errorf("rabbit: declare exchange %q (type %s): %w", topic, c.cfg.ExchangeType, err)
	}
	return nil
}

// queueArgs returns the arguments of a group queue.
func (c *Conn) queueArgs(singleActive, groupQueue bool) amqp.Table {
	args := amqp.Table{}
	if c.cfg.QueueType == Quorum {
		args[amqp.QueueTypeArg] = amqp.QueueTypeQuorum
		if c.cfg.DeliveryLimit > 0 && groupQueue {
			args["x-delivery-limit"] = int64(c.cfg.DeliveryLimit)
		}
	}
	if singleActive {
		args[amqp.SingleActiveConsumerArg] = true
	}
	if groupQueue && c.cfg.DeadLetterExchange != "" {
		args["x-dead-letter-exchange"] = c.cfg.DeadLetterExchange
	}
	return args
}

// bindingKey is the key that binds a group to every message of the topic.
func (c *Conn) bindingKey() string {
	if c.cfg.ExchangeType == amqp.ExchangeFanout {
		return ""
	}
	return "#"
}

// declareGroup declares (or, with DisableDeclare, checks) the topology
// of group on topic and returns the group's queues.
func (c *Conn) declareGroup(ch *amqp.Channel, topic, group string) ([]string, error) {
	queues := c.QueueNames(topic, group)
	for _, q := range queues {
		if err := checkName("queue", q); err != nil {
			return nil, err
		}
	}
	if c.cfg.DisableDeclare {
		for _, q := range queues {
			if _, err := ch.QueueDeclarePassive(q, true, false, false, false, nil); err != nil {
				return nil, describe(fmt.Errorf("rabbit: check queue %q: %w", q, err), fmt.Sprintf("queue %q of group %q", q, group))
			}
		}
		return queues, nil
	}
	if err := c.declareExchange(ch, topic); err != nil {
		return nil, err
	}
	if dlx := c.cfg.DeadLetterExchange; dlx != "" {
		if err := ch.ExchangeDeclare(dlx, amqp.ExchangeFanout, true, false, false, false, nil); err != nil {
			return nil, fmt.Errorf("rabbit: declare dead-letter exchange %q: %w", dlx, err)
		}
		if _, err := ch.QueueDeclare(dlx, true, false, false, false, c.queueArgs(false, false)); err != nil {
			return nil, fmt.Errorf("rabbit: declare dead-letter queue %q: %w", dlx, err)
		}
		if err := ch.QueueBind(dlx, "", dlx, false, nil); err != nil {
			return nil, fmt.Errorf("rabbit: bind dead-letter queue %q: %w", dlx, err)
		}
	}
	sharded := len(queues) > 1
	source, key := topic, c.bindingKey()
	if sharded {
		// topic -> consistent-hash exchange -> one queue per shard.
		sx := shardExchange(topic, group)
		if err := checkName("exchange", sx); err != nil {
			return nil, err
		}
		if err := ch.ExchangeDeclare(sx, "x-consistent-hash", true, false, false, false, nil); err != nil {
			var ae *amqp.Error
			if errors.As(err, &ae) && ae.Code == amqp.CommandInvalid {
				return nil, fmt.Errorf("rabbit: declare consistent-hash exchange %q for shards=%d: %w (is the rabbitmq_consistent_hash_exchange plugin enabled?)", sx, len(queues), err)
			}
			return nil, fmt.Errorf("rabbit: declare exchange %q: %w", sx, err)
		}
		if err := ch.ExchangeBind(sx, key, topic, false, nil); err != nil {
			return nil, fmt.Errorf("rabbit: bind exchange %q to %q: %w", sx, topic, err)
		}
		source, key = sx, "1" // the binding key of a hash exchange is the weight
	}
	for _, q := range queues {
		if _, err := ch.QueueDeclare(q, true, false, false, false, c.queueArgs(sharded, true)); err != nil {
			return nil, fmt.Errorf("rabbit: declare queue %q: %w", q, err)
		}
		if err := ch.QueueBind(q, key, source, false, nil); err != nil {
			return nil, fmt.Errorf("rabbit: bind queue %q to %q: %w", q, source, err)
		}
	}
	return queues, nil
}

// Lag returns the number of messages ready for delivery (not counting
// those delivered and not yet acknowledged) in the queues of group on
// topic, from a passive queue.declare. The queues must exist: otherwise the
// error wraps ErrNotFound. When the broker cannot be reached (within
// Config.ReconnectTimeout) the error wraps mq.ErrUnavailable.
func (c *Conn) Lag(ctx context.Context, topic, group string) (int, error) {
	if c.isClosed() {
		return 0, mq.ErrClosed
	}
	// On the consuming connection: the broker never blocks it, as it
	// publishes nothing.
	o := c.newOutage(c.sub)
	cctx, cancel := o.connectCtx(ctx)
	conn, err := c.sub.get(cctx)
	err = o.connectErr(ctx, cctx, err)
	cancel()
	if err != nil {
		return 0, unavailable(err)
	}
	total := 0
	err = c.call(ctx, func(commit func(func()) bool) error {
		n := 0
		for _, q := range c.QueueNames(topic, group) {
			ch, err := conn.Channel()
			if err != nil {
				return fmt.Errorf("rabbit: open channel: %w", err)
			}
			qi, err := ch.QueueDeclarePassive(q, true, false, false, false, nil)
			_ = ch.Close()
			if err != nil {
				return describe(fmt.Errorf("rabbit: inspect queue %q: %w", q, err), fmt.Sprintf("queue %q", q))
			}
			n += qi.Messages
		}
		commit(func() { total = n })
		return nil
	})
	if err != nil {
		return 0, unavailable(err)
	}
	return total, nil
}
