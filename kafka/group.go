package kafka

import (
	"context"
	"errors"
	"fmt"
	"slices"

	"github.com/IBM/sarama"
	"github.com/mqkit/mq"
)

// ErrUnknownGroup is returned (wrapped) by Conn.Lag for a consumer group
// the cluster does not know.
// It is mq.ErrUnknownGroup.
var ErrUnknownGroup = mq.ErrUnknownGroup

// ErrGroupActive is returned (wrapped) by Conn.DeleteGroup for a consumer
// group that still has members: stop its consumers first.
// It is mq.ErrGroupActive.
var ErrGroupActive = mq.ErrGroupActive

// groupState returns the coordinator's state of group: "Dead" for a group
// it does not know, else "Empty", "Stable", "PreparingRebalance" or
// "CompletingRebalance".
func (c *Conn) groupState(ctx context.Context, admin sarama.ClusterAdmin, group string) (string, error) {
	if err := ctx.Err(); err != nil {
		return "", err
	}
	descs, err := admin.DescribeConsumerGroups([]string{group})
	if err != nil {
		if errors.Is(err, sarama.ErrGroupIDNotFound) {
			return "Dead", nil
		}
		return "", classify(fmt.Errorf("kafka: describe group %q: %w", group, err))
	}
	for _, d := range descs {
		if d.GroupId != group {
			continue
		}
		switch {
		case errors.Is(d.Err, sarama.ErrGroupIDNotFound):
			// DescribeGroups v6 (Kafka 4.0) says so; older versions
			// answer with the state Dead.
			return "Dead", nil
		case !errors.Is(d.Err, sarama.ErrNoError):
			return "", classify(fmt.Errorf("kafka: describe group %q: %w", group, d.Err))
		}
		return d.State, nil
	}
	return "", fmt.Errorf("kafka: describe group %q: %w", group, sarama.ErrIncompleteResponse)
}

// checkGroupKnown returns an error wrapping ErrUnknownGroup when the
// cluster does not know group.
func (c *Conn) checkGroupKnown(ctx context.Context, admin sarama.ClusterAdmin, group string) error {
	state, err := c.groupState(ctx, admin, group)
	if err != nil {
		return err
	}
	if state == "Dead" {
		return fmt.Errorf("%w: %q", ErrUnknownGroup, group)
	}
	return nil
}

// DeleteGroup deletes what the cluster keeps for group on topic: the
// group's committed offsets of topic's partitions. A group with no
// committed offsets of other topics is deleted altogether (Kafka's
// DeleteGroups); one that also reads other topics keeps them and loses
// only topic's offsets (OffsetDelete, Kafka 2.4 or later). Messages are
// not deleted: Kafka keeps them for every group, and a group of the same
// name that joins again starts where a new group starts (Config.StartNewest).
//
// A group the cluster does not know is not an error. A group that still
// has members gives an error wrapping ErrGroupActive, and nothing is
// deleted: Kafka refuses to delete offsets a live member may be
// committing.
func (c *Conn) DeleteGroup(ctx context.Context, topic, group string) error {
	if c.isClosed() {
		return fmt.Errorf("kafka: delete group %q: %w", group, mq.ErrClosed)
	}
	admin, err := c.adminClient()
	if err != nil {
		return classify(fmt.Errorf("kafka: admin client: %w", err))
	}
	state, err := c.groupState(ctx, admin, group)
	switch {
	case err != nil:
		return err
	case state == "Dead":
		return nil
	case state != "Empty":
		return fmt.Errorf("%w: %q is %s; stop its consumers and try again", ErrGroupActive, group, state)
	}
	offs, err := admin.ListConsumerGroupOffsets(group, nil) // every topic
	if err != nil {
		return classify(fmt.Errorf("kafka: offsets of group %q: %w", group, err))
	}
	var parts []int32
	others := false
	for t, blocks := range offs.Blocks {
		for p, b := range blocks {
			if b == nil || b.Offset < 0 {
				continue
			}
			if t == topic {
				parts = append(parts, p)
			} else {
				others = true
			}
		}
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	if !others {
		err := admin.DeleteConsumerGroup(group)
		switch {
		case err == nil, errors.Is(err, sarama.ErrGroupIDNotFound):
			return nil
		case errors.Is(err, sarama.ErrNonEmptyGroup):
			return fmt.Errorf("%w: %q: %w", ErrGroupActive, group, err)
		}
		return classify(fmt.Errorf("kafka: delete group %q: %w", group, err))
	}
	slices.Sort(parts)
	for _, p := range parts {
		if err := ctx.Err(); err != nil {
			return err
		}
		err := admin.DeleteConsumerGroupOffset(group, topic, p)
		switch {
		case err == nil, errors.Is(err, sarama.ErrGroupIDNotFound), errors.Is(err, sarama.ErrUnknownTopicOrPartition):
		case errors.Is(err, sarama.ErrGroupSubscribedToTopic), errors.Is(err, sarama.ErrNonEmptyGroup):
			return fmt.Errorf("%w: %q: %w", ErrGroupActive, group, err)
		default:
			return classify(fmt.Errorf("kafka: delete offsets of group %q on %s/%d: %w", group, topic, p, err))
		}
	}
	return nil
}
