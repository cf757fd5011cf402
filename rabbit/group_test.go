package rabbit_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/mqkit/mq"
	"github.com/mqkit/mq/integration/testbed"
	"github.com/mqkit/mq/rabbit"
)

// TestLagUnknownGroup: Lag and Backlog of a group that has no queue are
// errors wrapping ErrUnknownGroup (and ErrNotFound), not a lag of 0.
func TestLagUnknownGroup(t *testing.T) {
	b := testbed.SharedRabbitMQ(t)
	c := openT(t, b.URL)
	conn := c.Conn().(*rabbit.Conn)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	topic := uniqueTopic("lag-unknown")
	if err := c.Producer().Produce(ctx, topic, &mq.Message{}); err != nil {
		t.Fatal(err)
	}
	n, err := conn.Lag(ctx, topic, "never")
	if !errors.Is(err, mq.ErrUnknownGroup) || !errors.Is(err, rabbit.ErrNotFound) {
		t.Errorf("Lag of a group that never subscribed = %d, %v; want ErrUnknownGroup", n, err)
	}
	if lag, err := c.Lag(ctx, topic, "never"); !errors.Is(err, mq.ErrUnknownGroup) {
		t.Errorf("Client.Lag of a group that never subscribed = %+v, %v; want ErrUnknownGroup", lag, err)
	}
	if _, err := conn.Backlog(ctx, uniqueTopic("no-topic"), "never"); !errors.Is(err, mq.ErrUnknownGroup) {
		t.Errorf("Backlog on a topic that does not exist = %v; want ErrUnknownGroup", err)
	}
}

// TestDeleteGroup: Client.DeleteGroup refuses a group with consumers,
// deletes every queue of one without (all shards, whatever the deleting
// connection's shards setting) and the shard exchange, and is nil for a
// group that does not exist.
func TestDeleteGroup(t *testing.T) {
	b := testbed.SharedRabbitMQ(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	for _, params := range []string{"", "?shards=3"} {
		t.Run("params="+params, func(t *testing.T) {
			c := openT(t, b.URL+params)
			plain := openT(t, b.URL) // deletes with the default Shards
			topic := uniqueTopic("delete")
			stop := consumeT(t, c, topic, func(context.Context, *mq.Message) error { return errors.New("keep it") }, mq.WithGroup("g"))
			if err := c.Producer().Produce(ctx, topic, &mq.Message{ID: "kept-for-g"}); err != nil {
				t.Fatal(err)
			}
			err := plain.DeleteGroup(ctx, topic, "g")
			if !errors.Is(err, mq.ErrGroupActive) {
				t.Fatalf("DeleteGroup with a consumer attached = %v, want ErrGroupActive", err)
			}
			stop()
			conn := plain.Conn().(*rabbit.Conn)
			if _, err := conn.Lag(ctx, topic, "g"); err != nil {
				t.Fatalf("Lag after a refused delete = %v; the group must still exist", err)
			}
			if err := plain.DeleteGroup(ctx, topic, "g"); err != nil {
				t.Fatalf("DeleteGroup: %v", err)
			}
			if _, err := conn.Lag(ctx, topic, "g"); !errors.Is(err, mq.ErrUnknownGroup) {
				t.Errorf("Lag after DeleteGroup = %v, want ErrUnknownGroup", err)
			}
			if err := plain.DeleteGroup(ctx, topic, "g"); err != nil {
				t.Errorf("DeleteGroup of a deleted group = %v, want nil", err)
			}
			if err := plain.DeleteGroup(ctx, uniqueTopic("never"), "g"); err != nil {
				t.Errorf("DeleteGroup on a topic that never existed = %v, want nil", err)
			}
			// The topic has no group again: what is produced now waits for
			// the next group.
			if err := c.Producer().Produce(ctx, topic, &mq.Message{ID: "after-delete"}); err != nil {
				t.Fatal(err)
			}
			col := newCollector()
			consumeT(t, c, topic, col.handle, mq.WithGroup("g2"))
			if got := col.wait(t, 1); got[0].ID != "after-delete" {
				t.Errorf("the next group got %v, want after-delete", got)
			}
		})
	}
	if err := openT(t, b.URL).DeleteGroup(ctx, "t", "unrouted"); err == nil {
		t.Error("DeleteGroup of the reserved group name succeeded")
	}
}
