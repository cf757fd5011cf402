package cluster_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/mqkit/mq/integration/testbed"
)

// TestRabbitMQClusterFaults fails nodes of a 3-node RabbitMQ cluster under
// steady load, the group's queue a quorum queue of 3 members (what the
// rabbit package documentation gives as the setting for clusters), the
// clients given every node in the URL: the node leading the queue is
// SIGKILLed and, once another member leads, started again; the node the
// consumer is connected to is stopped gracefully and started again; the
// queue's leader is paused for 15s (longer than the cluster's net_ticktime
// of 10s, after which the others count it down and elect a new leader, and
// than the clients' heartbeat timeout) and unpaused (pause_minority: it
// stops serving until it sees the others, then rejoins). Nothing
// acknowledged may be lost.
func TestRabbitMQClusterFaults(t *testing.T) {
	c := testbed.RabbitMQCluster(t)
	const topic, queue = "orders", "orders.g"
	const setting = "quorum queue, 3 members, publisher confirms"
	url := c.URL + "?queue_type=quorum&heartbeat=2&reconnect_backoff=100ms&max_reconnect_backoff=1s&reconnect_timeout=10s"
	// Order is reported, not required: once in CI, with the queue's
	// leader hung, 246 of 4,180 messages came after a later one of their
	// key (0 in other runs; likely the order in which RabbitMQ 3.10 hands
	// back a cut-off consumer's messages, not yet confirmed); see
	// "Clusters" in the rabbit package documentation.
	w := startLoad(t, url, topic, loadOptions{OrderReported: true})
	checkQuorumQueue(t, c, queue)

	w.Fault(t, "kill the queue leader, start it", func(ctx context.Context) error {
		leader, err := quorumLeader(ctx, c, queue, nil)
		if err != nil {
			return err
		}
		n := c.RabbitMQNode(leader)
		if err := n.Kill(ctx); err != nil {
			return err
		}
		// Down until another member leads: a failover, not a restart the
		// leader comes back from.
		moved, err := quorumLeader(ctx, c, queue, n)
		if err != nil {
			return err
		}
		t.Logf("%s: leader %s killed, new leader %s", queue, leader, moved)
		if err := n.Start(ctx); err != nil {
			return err
		}
		return waitQueueOnline(ctx, c, queue)
	})

	w.Fault(t, "stop the consumer's node, start it", func(ctx context.Context) error {
		node, err := consumerNode(ctx, c)
		if err != nil {
			return err
		}
		leader, _ := quorumLeader(ctx, c, queue, nil)
		t.Logf("stopping %s, the consumer's node (queue leader %s)", node, leader)
		n := c.RabbitMQNode(node)
		if err := n.Stop(ctx); err != nil {
			return err
		}
		if err := n.Start(ctx); err != nil {
			return err
		}
		return waitQueueOnline(ctx, c, queue)
	})

	w.Fault(t, "pause the consumer's node for 15s", func(ctx context.Context) error {
		node, err := consumerNode(ctx, c)
		if err != nil {
			return err
		}
		leader, _ := quorumLeader(ctx, c, queue, nil)
		t.Logf("pausing %s, the consumer's node (queue leader %s)", node, leader)
		return pauseNode(ctx, t, c, c.RabbitMQNode(node), queue)
	})

	w.Fault(t, "pause the queue leader for 15s", func(ctx context.Context) error {
		leader, err := quorumLeader(ctx, c, queue, nil)
		if err != nil {
			return err
		}
		return pauseNode(ctx, t, c, c.RabbitMQNode(leader), queue)
	})

	w.Finish(t, "rabbitmq 3 nodes", setting, true)
}

// pauseNode freezes node n for 15s, longer than net_ticktime (10s), then
// thaws it and logs what the partition handling did.
func pauseNode(ctx context.Context, t *testing.T, c *testbed.Cluster, n *testbed.Broker, queue string) error {
	if err := n.Pause(ctx); err != nil {
		return err
	}
	time.Sleep(15 * time.Second)
	leader, err := quorumLeader(ctx, c, queue, n)
	t.Logf("%s paused for 15s; %s leader now %s (%v)", testbed.RabbitMQNodeName(n), queue, leader, err)
	mark := len(n.Logs(ctx))
	if err := n.Unpause(ctx); err != nil {
		return err
	}
	if err := waitQueueOnline(ctx, c, queue); err != nil {
		// Seen once in CI after two pauses in a row (Mnesia reported a
		// partitioned network and rabbitmqctl stopped answering): the
		// ledger at Finish still judges what was lost, so the load goes
		// on and this is reported rather than ending the test.
		t.Logf("%s: queue %s not seen online again after the pause: %v", testbed.RabbitMQNodeName(n), queue, err)
		return nil
	}
	for _, line := range strings.Split(n.Logs(ctx)[mark:], "\n") {
		if strings.Contains(line, "minority") || strings.Contains(line, "partition") {
			t.Logf("%s after the pause: %s", testbed.RabbitMQNodeName(n), strings.TrimSpace(line))
		}
	}
	return nil
}

// queueInfo is a queue as rabbitmqctl list_queues --formatter json shows
// it (members and online are "" for a classic queue).
type queueInfo struct {
	Name    string `json:"name"`
	Type    string `json:"type"`
	Leader  string `json:"leader"`
	Members any    `json:"members"`
	Online  any    `json:"online"`
}

// listQueues lists the queues through the first node of c that is not
// one of skip and answers.
func listQueues(ctx context.Context, c *testbed.Cluster, skip ...*testbed.Broker) ([]queueInfo, error) {
	var last error
	for _, n := range c.Nodes {
		if slices.Contains(skip, n) {
			continue
		}
		// A node that does not know yet that another one is down (up to
		// net_ticktime) waits for it: ask the next one.
		cctx, cancel := context.WithTimeout(ctx, 15*time.Second)
		out, err := testbed.RabbitMQCtl(cctx, n, "list_queues", "--timeout", "10", "name", "type", "leader", "members", "online", "--formatter", "json")
		cancel()
		if err != nil {
			last = err
			continue
		}
		var qs []queueInfo
		if err := json.Unmarshal([]byte(out), &qs); err != nil {
			return nil, fmt.Errorf("list_queues: %w: %q", err, out)
		}
		return qs, nil
	}
	return nil, fmt.Errorf("no node answered list_queues: %w", last)
}

// quorumLeader returns the leader of quorum queue name, asking the nodes
// but not: once it names a leader other than not, polling until then.
func quorumLeader(ctx context.Context, c *testbed.Cluster, name string, not *testbed.Broker) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	for {
		qs, err := listQueues(ctx, c, not)
		if err == nil {
			for _, q := range qs {
				if q.Name == name && q.Leader != "" && (not == nil || q.Leader != testbed.RabbitMQNodeName(not)) &&
					c.RabbitMQNode(q.Leader) != nil {
					return q.Leader, nil
				}
			}
			err = fmt.Errorf("queue %s has no leader but %s yet", name, testbed.RabbitMQNodeName(not))
		}
		select {
		case <-ctx.Done():
			return "", fmt.Errorf("leader of %s: %w (%v)", name, ctx.Err(), err)
		case <-time.After(500 * time.Millisecond):
		}
	}
}

// waitQueueOnline waits until quorum queue name has its three members
// online again, so that the next fault finds the cluster whole.
func waitQueueOnline(ctx context.Context, c *testbed.Cluster, name string) error {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	for {
		qs, err := listQueues(ctx, c)
		if err == nil {
			err = fmt.Errorf("queue %s not listed", name)
			for _, q := range qs {
				if online, _ := q.Online.([]any); q.Name == name {
					if len(online) == 3 {
						return nil
					}
					err = fmt.Errorf("queue %s has members %v online", name, online)
				}
			}
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%w (%v)", ctx.Err(), err)
		case <-time.After(500 * time.Millisecond):
		}
	}
}

// checkQuorumQueue fails t unless queue is a quorum queue with the three
// nodes as members, all online.
func checkQuorumQueue(t *testing.T, c *testbed.Cluster, queue string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	qs, err := listQueues(ctx, c)
	if err != nil {
		t.Fatal(err)
	}
	for _, q := range qs {
		if q.Name != queue {
			continue
		}
		members, _ := q.Members.([]any)
		online, _ := q.Online.([]any)
		if q.Type != "quorum" || len(members) != 3 || len(online) != 3 {
			t.Fatalf("queue %s: %+v, want a quorum queue with 3 members online", queue, q)
		}
		t.Logf("queue %s: quorum, leader %s, members %v", queue, q.Leader, members)
		return
	}
	t.Fatalf("queue %s not found in %+v", queue, qs)
}

// consumerNode returns the node that the consuming connection of the load
// ("mqkit consume", the connection_name the rabbit package gives it) is
// connected to: the node whose container has the connection's server-side
// address (its name is "client ip:port -> server ip:port").
func consumerNode(ctx context.Context, c *testbed.Cluster) (string, error) {
	var out string
	var err error
	for _, n := range c.Nodes {
		if out, err = testbed.RabbitMQCtl(ctx, n, "list_connections", "name", "client_properties", "--formatter", "json"); err == nil {
			break
		}
	}
	if err != nil {
		return "", err
	}
	var conns []struct {
		Name  string          `json:"name"`
		Props json.RawMessage `json:"client_properties"`
	}
	if err := json.Unmarshal([]byte(out), &conns); err != nil {
		return "", fmt.Errorf("list_connections: %w: %q", err, out)
	}
	for _, conn := range conns {
		_, server, ok := strings.Cut(conn.Name, " -> ")
		if !ok || !bytes.Contains(conn.Props, []byte("mqkit consume")) {
			continue
		}
		host, _, err := net.SplitHostPort(server)
		if err != nil {
			return "", fmt.Errorf("connection %q: %w", conn.Name, err)
		}
		for _, n := range c.Nodes {
			if ip, err := n.Container().ContainerIP(ctx); err == nil && ip == host {
				return testbed.RabbitMQNodeName(n), nil
			}
		}
		return "", fmt.Errorf("no node has address %s (connection %q)", host, conn.Name)
	}
	return "", fmt.Errorf("no consuming connection in %s", out)
}
