package cluster_test

import (
	"context"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/IBM/sarama"
	"github.com/mqkit/mq/integration/testbed"
)

// TestKafkaClusterFaults fails nodes of a 3-node KRaft cluster under steady
// load, on a topic of 3 partitions with replication factor 3 and
// min.insync.replicas=2 (the setting kafka's package documentation gives
// for clusters), one fault after the other:
//   - the leader of partition 0 is SIGKILLed and, once the cluster moved
//     its partitions, started again;
//   - a node leading no partition (else one not leading partition 0) is
//     stopped gracefully and started again;
//   - the leader of partition 1 is paused for 25 s and unpaused: longer
//     than the consumer session (6 s), the brokers' session with the
//     controller (9 s, after which its partitions move) and the client's
//     request timeout (15 s with these settings), so the clients may follow
//     the new leaders while the old one still holds their connections.
//
// Which node is the group coordinator is logged: a hung coordinator costs
// many duplicates (the offsets committed during the hang are lost with the
// member's session), a crashed one few.
//
// Nothing acknowledged may be lost.
func TestKafkaClusterFaults(t *testing.T) {
	c := testbed.KafkaCluster(t)
	const topic = "orders"
	const setting = "RF 3, min.insync.replicas=2, acks=all"
	url := c.URL + "/?create_topics=true&partitions=3&replication=3&min_insync_replicas=2&session_timeout=6s&drain_timeout=5s"
	w := startLoad(t, url, topic, loadOptions{})
	checkTopic(t, c, topic)

	w.Fault(t, "kill leader of partition 0", func(ctx context.Context) error {
		leader, err := kafkaLeader(ctx, c, topic, 0, nil)
		if err != nil {
			return err
		}
		n := c.Node(leader)
		coord := coordinator(ctx, c, nil)
		if err := n.Kill(ctx); err != nil {
			return err
		}
		// Down until the cluster moved the partition: the outage is a
		// failover, not a quick restart the leader comes back from.
		moved, err := kafkaLeader(ctx, c, topic, 0, n)
		if err != nil {
			return err
		}
		t.Logf("partition 0: leader %s killed (group coordinator %s), new leader %s", leader, coord, moved)
		return n.Start(ctx)
	})

	w.Fault(t, "stop a follower, start it", func(ctx context.Context) error {
		leaders, err := kafkaLeaders(ctx, c, topic, nil)
		if err != nil {
			return err
		}
		// A node that leads nothing, else one that does not lead partition 0.
		var follower *testbed.Broker
		for _, n := range c.Nodes {
			if n.Addr == leaders[0] {
				continue
			}
			if follower == nil || !slices.Contains(leaders, n.Addr) {
				follower = n
			}
		}
		t.Logf("stopping %s (partition leaders %v, group coordinator %s)", follower.Addr, leaders, coordinator(ctx, c, nil))
		if err := follower.Stop(ctx); err != nil {
			return err
		}
		return follower.Start(ctx)
	})

	w.Fault(t, "pause leader of partition 1 for 25s", func(ctx context.Context) error {
		leader, err := kafkaLeader(ctx, c, topic, 1, nil)
		if err != nil {
			return err
		}
		n := c.Node(leader)
		t.Logf("pausing %s (group coordinator %s)", leader, coordinator(ctx, c, nil))
		if err := n.Pause(ctx); err != nil {
			return err
		}
		time.Sleep(25 * time.Second)
		for _, o := range c.Nodes {
			if o != n {
				leaders, err := leadersFrom(ctx, o.Addr, topic)
				t.Logf("partition leaders after %s was paused for 25s, as %s sees them: %v (%v)", leader, o.Addr, leaders, err)
				break
			}
		}
		return n.Unpause(ctx)
	})

	w.Finish(t, "kafka 3 nodes", setting, true)
}

// checkTopic fails t unless topic has 3 partitions, each with 3 replicas,
// and min.insync.replicas 2 in its own configuration.
func checkTopic(t *testing.T, c *testbed.Cluster, topic string) {
	t.Helper()
	sc := sarama.NewConfig()
	sc.Version = sarama.V2_8_0_0
	admin, err := sarama.NewClusterAdmin(c.Addrs(), sc)
	if err != nil {
		t.Fatalf("admin client: %v", err)
	}
	defer func() { _ = admin.Close() }()
	meta, err := admin.DescribeTopics([]string{topic})
	if err != nil || len(meta) != 1 {
		t.Fatalf("describe topic %s: %v", topic, err)
	}
	if len(meta[0].Partitions) != 3 {
		t.Errorf("topic %s has %d partitions, want 3", topic, len(meta[0].Partitions))
	}
	for _, p := range meta[0].Partitions {
		if len(p.Replicas) != 3 {
			t.Errorf("partition %d has replicas %v, want 3", p.ID, p.Replicas)
		}
	}
	res, err := admin.DescribeConfigs([]*sarama.ConfigResource{{Type: sarama.TopicResource, Name: topic, ConfigNames: []string{"min.insync.replicas"}}}, sarama.DescribeConfigsOptions{})
	if err != nil || len(res) != 1 || res[0].ErrorCode != sarama.ErrNoError || len(res[0].Configs) != 1 {
		t.Fatalf("describe config of %s: %+v %v", topic, res, err)
	}
	e := res[0].Configs[0]
	// Set on the topic by min_insync_replicas=2, not inherited from the
	// brokers' (equal) default.
	if e.Value != "2" || e.Source != sarama.SourceTopic {
		t.Errorf("topic %s: min.insync.replicas=%s from %v, want 2 set on the topic", topic, e.Value, e.Source)
	}
	t.Logf("topic %s: 3 partitions × 3 replicas, min.insync.replicas=%s (source %v)", topic, e.Value, e.Source)
}

// kafkaLeaders asks the nodes of c other than down, one after the other,
// for topic's partition leaders, until one answers with a leader for every
// partition none of which is down. It returns their client addresses by
// partition.
func kafkaLeaders(ctx context.Context, c *testbed.Cluster, topic string, down *testbed.Broker) ([]string, error) {
	var last error
	for {
		for _, n := range c.Nodes {
			if n == down {
				continue
			}
			leaders, err := leadersFrom(ctx, n.Addr, topic)
			if err == nil && down != nil && slices.Contains(leaders, down.Addr) {
				err = fmt.Errorf("%s still leads a partition of %s (%v)", down.Addr, topic, leaders)
			}
			if err == nil {
				return leaders, nil
			}
			last = err
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("partition leaders of %s: %v (%w)", topic, last, ctx.Err())
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// kafkaLeader is the client address of the leader of topic's partition,
// from kafkaLeaders.
func kafkaLeader(ctx context.Context, c *testbed.Cluster, topic string, partition int, down *testbed.Broker) (string, error) {
	leaders, err := kafkaLeaders(ctx, c, topic, down)
	if err != nil {
		return "", err
	}
	return leaders[partition], nil
}

// leadersFrom asks the broker at addr alone for topic's partition leaders,
// with short timeouts (the broker may be paused).
func leadersFrom(ctx context.Context, addr, topic string) ([]string, error) {
	sc := sarama.NewConfig()
	sc.Net.DialTimeout = 2 * time.Second
	sc.Net.ReadTimeout = 2 * time.Second
	sc.Net.WriteTimeout = 2 * time.Second
	b := sarama.NewBroker(addr)
	if err := b.Open(sc); err != nil {
		return nil, err
	}
	defer func() { _ = b.Close() }()
	resp, err := b.GetMetadata(&sarama.MetadataRequest{Version: 1, Topics: []string{topic}})
	if err != nil {
		return nil, err
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	addrs := map[int32]string{}
	for _, mb := range resp.Brokers {
		addrs[mb.ID()] = mb.Addr()
	}
	if len(resp.Topics) != 1 || resp.Topics[0].Err != sarama.ErrNoError {
		return nil, fmt.Errorf("metadata of %s from %s: %+v", topic, addr, resp.Topics)
	}
	leaders := make([]string, len(resp.Topics[0].Partitions))
	for _, p := range resp.Topics[0].Partitions {
		a, ok := addrs[p.Leader]
		if !ok || int(p.ID) >= len(leaders) {
			return nil, fmt.Errorf("metadata of %s from %s: partition %d has leader %d, not a live broker", topic, addr, p.ID, p.Leader)
		}
		leaders[p.ID] = a
	}
	return leaders, nil
}

// coordinator names the group coordinator of the load's consumer group
// ("g") as a node of c other than skip sees it, for the log.
func coordinator(ctx context.Context, c *testbed.Cluster, skip *testbed.Broker) string {
	sc := sarama.NewConfig()
	sc.Net.DialTimeout = 2 * time.Second
	sc.Net.ReadTimeout = 2 * time.Second
	sc.Net.WriteTimeout = 2 * time.Second
	for _, n := range c.Nodes {
		if n == skip || ctx.Err() != nil {
			continue
		}
		b := sarama.NewBroker(n.Addr)
		if err := b.Open(sc); err != nil {
			continue
		}
		resp, err := b.FindCoordinator(&sarama.FindCoordinatorRequest{CoordinatorKey: "g", CoordinatorType: sarama.CoordinatorGroup})
		_ = b.Close()
		if err == nil && resp.Err == sarama.ErrNoError && resp.Coordinator != nil {
			return resp.Coordinator.Addr()
		}
	}
	return "unknown"
}
