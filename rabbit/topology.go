package rabbit

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"

	amqp "github.com/rabbitmq/amqp091-go"
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
// alternate exchange and queue that keep messages no group receives. It
// works on channels of its own, since the broker closes a channel that
// declares an existing exchange with other arguments.
//
// An exchange declared already without mqkit's alternate exchange (by
// another client, or with unrouted=error) is used as it is: messages no
// group receives then fail Produce with ErrUnroutable (or go to that
// exchange's own alternate exchange), which is logged once. Any other
// difference (type, durability) is an error that names it.
func (c *Conn) declareExchange(conn *amqp.Connection, topic string) error {
	ch, err := conn.Channel()
	if err != nil {
		return fmt.Errorf("rabbit: open channel: %w", err)
	}
	defer func() { _ = ch.Close() }()
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
	err = ch.ExchangeDeclare(topic, c.cfg.ExchangeType, true, false, false, false, args)
	if err == nil {
		return nil
	}
	arg, reason := inequivalentArg(err)
	switch arg {
	case "":
		return fmt.Errorf("rabbit: declare exchange %q (type %s): %w", topic, c.cfg.ExchangeType, err)
	case "alternate-exchange":
	default:
		return fmt.Errorf("rabbit: exchange %q exists with another %s than this connection declares (type %s, durable; see the package documentation, \"Sharing exchanges with other clients\"): %w",
			topic, arg, c.cfg.ExchangeType, err)
	}
	ch2, err2 := conn.Channel()
	if err2 != nil {
		return fmt.Errorf("rabbit: open channel: %w", err2)
	}
	defer func() { _ = ch2.Close() }()
	if err2 := ch2.ExchangeDeclarePassive(topic, c.cfg.ExchangeType, true, false, false, false, nil); err2 != nil {
		return fmt.Errorf("rabbit: check exchange %q after %w: %w", topic, err, err2)
	}
	c.logOnce("exchange "+topic, "rabbit: the exchange exists with another alternate exchange than mqkit's (declared by another client?); "+
		"using it as it is: a message produced while the topic has no consumer group is not kept in the unrouted queue "+
		"but fails Produce with ErrUnroutable (or goes to the exchange's own alternate exchange)",
		"exchange", topic, "broker", reason)
	return nil
}

// inequivalentArg returns the argument named by a PRECONDITION_FAILED
// "inequivalent arg 'NAME' ..." error, and the broker's text.
func inequivalentArg(err error) (arg, reason string) {
	var ae *amqp.Error
	if !errors.As(err, &ae) || ae.Code != amqp.PreconditionFailed {
		return "", ""
	}
	const marker = "inequivalent arg '"
	i := strings.Index(ae.Reason, marker)
	if i < 0 {
		return "", ae.Reason
	}
	rest := ae.Reason[i+len(marker):]
	j := strings.IndexByte(rest, '\'')
	if j < 0 {
		return "", ae.Reason
	}
	return rest[:j], ae.Reason
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
// of group on topic on ch, a channel of conn, and returns the group's
// queues. The messages kept in the topic's unrouted queue are handed to
// the group before its queues are bound to the topic (see handOver), so
// they come before those produced afterwards.
func (c *Conn) declareGroup(ctx context.Context, conn *amqp.Connection, ch *amqp.Channel, topic, group string) ([]string, error) {
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
	if err := c.declareExchange(conn, topic); err != nil {
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
	target := handOverTarget{group: group, queue: queues[0]}
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
		source, key = sx, "1" // the binding key of a hash exchange is the weight
		target = handOverTarget{group: group, exchange: sx}
	}
	for _, q := range queues {
		if _, err := ch.QueueDeclare(q, true, false, false, false, c.queueArgs(sharded, true)); err != nil {
			return nil, fmt.Errorf("rabbit: declare queue %q: %w", q, err)
		}
		if err := ch.QueueBind(q, key, source, false, nil); err != nil {
			return nil, fmt.Errorf("rabbit: bind queue %q to %q: %w", q, source, err)
		}
	}
	// Messages kept before the group existed go first; then the binding
	// to the topic; then those that slipped into the unrouted queue
	// while it was being made.
	if err := c.handOver(ctx, conn, topic, target); err != nil {
		return nil, err
	}
	if sharded {
		if err := ch.ExchangeBind(target.exchange, c.bindingKey(), topic, false, nil); err != nil {
			return nil, fmt.Errorf("rabbit: bind exchange %q to %q: %w", target.exchange, topic, err)
		}
	} else if err := ch.QueueBind(queues[0], key, topic, false, nil); err != nil {
		return nil, fmt.Errorf("rabbit: bind queue %q to %q: %w", queues[0], topic, err)
	}
	if err := c.handOver(ctx, conn, topic, target); err != nil {
		return nil, err
	}
	return queues, nil
}
