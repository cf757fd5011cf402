package testbed

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/moby/moby/api/types/container"
	"github.com/moby/moby/api/types/network"
	"github.com/moby/moby/client"
	"github.com/testcontainers/testcontainers-go"
	tcexec "github.com/testcontainers/testcontainers-go/exec"
	tcnetwork "github.com/testcontainers/testcontainers-go/network"
)

// rabbitClusterSize is the number of nodes of RabbitMQCluster.
const rabbitClusterSize = 3

// rabbitClusterKind labels the Docker network of a RabbitMQ cluster, so
// that one left by a killed test process is removed.
const rabbitClusterKind = "rabbitmq-cluster"

// rabbitClusterCookie is the Erlang cookie every node shares (and
// rabbitmqctl in each container reads).
const rabbitClusterCookie = "mqkit-testbed-rabbitmq-cluster"

// rabbitClusterConf is the configuration of every node of RabbitMQCluster
// (the same file for all three: a node's name comes from its host name):
// the local image's settings, classic-config peer discovery of the three
// nodes, pause_minority (a node cut off from the other two stops serving
// and recovers by itself once it sees them again), a short net_ticktime so
// that a paused node is declared down within about 10s, and quorum queue
// leaders spread over the nodes.
const rabbitClusterConf = `loopback_users = none
log.console = true
log.console.level = info
log.file = false
listeners.tcp.default = 5672
cluster_formation.peer_discovery_backend = classic_config
cluster_formation.classic_config.nodes.1 = rabbit@mq-rabbit-1
cluster_formation.classic_config.nodes.2 = rabbit@mq-rabbit-2
cluster_formation.classic_config.nodes.3 = rabbit@mq-rabbit-3
cluster_formation.discovery_retry_limit = 2
cluster_formation.discovery_retry_interval = 500
cluster_partition_handling = pause_minority
net_ticktime = 10
queue_leader_locator = balanced
`

// rabbitClusterStart is the container's command: it installs the shared
// Erlang cookie (owned by rabbitmq, mode 0400), then runs the broker as
// the image would (the local image's start script, or the official
// image's entrypoint).
const rabbitClusterStart = `set -e
umask 077
printf %s "$MQ_ERLANG_COOKIE" > /var/lib/rabbitmq/.erlang.cookie
chown rabbitmq:rabbitmq /var/lib/rabbitmq/.erlang.cookie
chmod 400 /var/lib/rabbitmq/.erlang.cookie
if [ -x /usr/local/bin/mq-rabbitmq-start ]; then exec /usr/local/bin/mq-rabbitmq-start; fi
exec docker-entrypoint.sh rabbitmq-server`

// RabbitMQCluster starts a cluster of three RabbitMQ nodes and terminates
// it when the test ends. Node N (1-3) is the Erlang node rabbit@mq-rabbit-N
// and serves AMQP at 127.0.2.N:5672 (user guest/guest, vhost /, the
// consistent-hash exchange plugin enabled); URL is
// amqp://guest:guest@127.0.2.1:5672,127.0.2.2:5672,127.0.2.3:5672/. Use
// quorum queues (queue_type=quorum): classic queues live on one node.
//
// Unlike the Kafka and Redis clusters, the nodes do not use host
// networking: each Erlang node registers with the port mapper daemon (epmd)
// on 127.0.0.1 of its own machine, which nodes sharing the host's loopback
// cannot do under one name. Each node runs in a network namespace of its
// own (epmd and Erlang distribution on port 25672 there, as on separate
// machines) on a Docker bridge network of the cluster's, and publishes its
// AMQP port on its 127.0.2.N address only.
//
// Peer discovery is classic_config: node 1 starts first, then nodes 2 and
// 3 together join it. The cluster is ready when rabbitmqctl cluster_status
// lists the three nodes as running. Partition handling is pause_minority
// and net_ticktime is 10s. Stop, Kill, Pause and their Start or Unpause act
// on one node; its data survives (the container is kept).
func RabbitMQCluster(t testing.TB, opts ...Option) *Cluster {
	t.Helper()
	var o options
	for _, opt := range opts {
		opt(&o)
	}
	var nw *testcontainers.DockerNetwork
	t.Cleanup(func() {
		// Registered before clusterStart's cleanup, so it runs after the
		// nodes are terminated.
		if nw != nil {
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			if err := nw.Remove(ctx); err != nil {
				t.Logf("testbed: remove RabbitMQ cluster network: %v", err)
			}
		}
	})
	return clusterStart(t, KindRabbitMQ, func(ctx context.Context) (*Cluster, error) {
		c, n, err := startRabbitCluster(ctx, o)
		nw = n
		return c, err
	})
}

// rabbitNodeAddr is node i's (from 0) client address.
func rabbitNodeAddr(i int) string { return fmt.Sprintf("127.0.2.%d:5672", i+1) }

// RabbitMQNodeName returns the Erlang node name (rabbit@mq-rabbit-N) of a
// node of RabbitMQCluster, as rabbitmqctl prints it (e.g. a quorum queue's
// leader), or "" for another broker.
func RabbitMQNodeName(b *Broker) string {
	for i := range rabbitClusterSize {
		if b != nil && b.Kind == KindRabbitMQ && b.Addr == rabbitNodeAddr(i) {
			return fmt.Sprintf("rabbit@mq-rabbit-%d", i+1)
		}
	}
	return ""
}

// RabbitMQNode returns the node of a RabbitMQCluster whose Erlang node
// name is name (see RabbitMQNodeName), or nil.
func (c *Cluster) RabbitMQNode(name string) *Broker {
	for _, n := range c.Nodes {
		if RabbitMQNodeName(n) == name {
			return n
		}
	}
	return nil
}

// RabbitMQCtl runs rabbitmqctl with args in b's container (which talks to
// its own node, or with -n to another one) and returns its standard
// output, or an error with its output and exit code.
func RabbitMQCtl(ctx context.Context, b *Broker, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	code, r, err := b.Container().Exec(ctx, append([]string{"rabbitmqctl", "-q"}, args...), tcexec.Multiplexed())
	if err != nil {
		return "", fmt.Errorf("rabbitmqctl %s: %w", strings.Join(args, " "), err)
	}
	out, err := io.ReadAll(r)
	if err != nil {
		return "", fmt.Errorf("rabbitmqctl %s: read output: %w", strings.Join(args, " "), err)
	}
	if code != 0 {
		return "", fmt.Errorf("rabbitmqctl %s: exit code %d: %s", strings.Join(args, " "), code, strings.TrimSpace(string(out)))
	}
	return string(out), nil
}

// startRabbitCluster starts the cluster's network and nodes and waits
// until the three nodes run as one cluster. On failure it terminates what
// it started but the network, which it returns for the caller to remove.
func startRabbitCluster(ctx context.Context, o options) (*Cluster, *testcontainers.DockerNetwork, error) {
	image, err := clusterImage(ctx, KindRabbitMQ)
	if err != nil {
		return nil, nil, err
	}
	reapRabbitNetworks(ctx)
	addrs := make([]string, rabbitClusterSize)
	for i := range addrs {
		addrs[i] = rabbitNodeAddr(i)
	}
	if err := loopbackFree(addrs...); err != nil {
		return nil, nil, err
	}
	nw, err := tcnetwork.New(ctx, tcnetwork.WithLabels(map[string]string{
		labelTestbed: "1",
		labelKind:    rabbitClusterKind,
		labelPID:     strconv.Itoa(os.Getpid()),
	}))
	if err != nil {
		return nil, nil, fmt.Errorf("testbed: RabbitMQ cluster network: %w", err)
	}
	sp := &spec{
		kind:         KindRabbitMQ,
		ready:        rabbitReady,
		readyLine:    "Server startup complete",
		startTimeout: 120 * time.Second,
		stopTimeout:  15 * time.Second,
	}
	c := &Cluster{Kind: KindRabbitMQ, Nodes: make([]*Broker, rabbitClusterSize)}
	start := func(i int) error {
		b, err := startNode(ctx, sp, image, rabbitNodeRequest(i, nw.Name, o), addrs[i], "amqp://guest:guest@"+addrs[i]+"/")
		if err != nil {
			return fmt.Errorf("testbed: RabbitMQ node %d: %w", i+1, err)
		}
		c.Nodes[i] = b
		return nil
	}
	// Node 1 forms the cluster; the others, started together, join it
	// (two blank nodes booting at once could each form a cluster alone).
	err = start(0)
	if err == nil {
		var wg sync.WaitGroup
		errs := make([]error, rabbitClusterSize)
		for i := 1; i < rabbitClusterSize; i++ {
			wg.Go(func() { errs[i] = start(i) })
		}
		wg.Wait()
		err = errors.Join(errs...)
	}
	if err == nil {
		err = waitFor(ctx, "RabbitMQ cluster of 3 running nodes", func(ctx context.Context) error {
			return rabbitClusterRunning(ctx, c.Nodes[0])
		})
	}
	if err != nil {
		live := &Cluster{Kind: KindRabbitMQ}
		for _, b := range c.Nodes {
			if b != nil {
				live.Nodes = append(live.Nodes, b)
			}
		}
		if len(live.Nodes) > 0 {
			err = live.Nodes[0].withLogs(ctx, err)
		}
		_ = live.Terminate(context.WithoutCancel(ctx))
		return nil, nw, err
	}
	c.URL = "amqp://guest:guest@" + strings.Join(addrs, ",") + "/"
	return c, nw, nil
}

// rabbitNodeRequest is the container of node i (from 0).
func rabbitNodeRequest(i int, networkName string, o options) testcontainers.ContainerRequest {
	host := fmt.Sprintf("mq-rabbit-%d", i+1)
	env := map[string]string{
		"MQ_ERLANG_COOKIE":         rabbitClusterCookie,
		"RABBITMQ_ENABLED_PLUGINS": "rabbitmq_consistent_hash_exchange",
		// Schedulers that sleep when idle rather than spin: three nodes
		// share two cores with the test.
		"RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": "+sbwt none +sbwtdcpu none +sbwtdio none",
	}
	for k, v := range o.env {
		env[k] = v
	}
	ip := netip.MustParseAddr(fmt.Sprintf("127.0.2.%d", i+1))
	return testcontainers.ContainerRequest{
		Entrypoint:     []string{"/bin/sh", "-c", rabbitClusterStart},
		Env:            env,
		ExposedPorts:   []string{"5672/tcp"},
		Networks:       []string{networkName},
		NetworkAliases: map[string][]string{networkName: {host}},
		Files: []testcontainers.ContainerFile{{
			Reader:            strings.NewReader(rabbitClusterConf),
			ContainerFilePath: "/etc/rabbitmq/rabbitmq.conf",
			FileMode:          0o644,
		}},
		// The node name, and so its data directory, comes from the host
		// name: fixed, so that a restarted node finds its data.
		ConfigModifier: func(c *container.Config) { c.Hostname = host },
		HostConfigModifier: func(hc *container.HostConfig) {
			hc.PortBindings = network.PortMap{
				network.MustParsePort("5672/tcp"): {{HostIP: ip, HostPort: "5672"}},
			}
		},
	}
}

// rabbitClusterRunning checks, through node b, that the three nodes are
// running as one cluster.
func rabbitClusterRunning(ctx context.Context, b *Broker) error {
	out, err := RabbitMQCtl(ctx, b, "cluster_status", "--formatter", "json")
	if err != nil {
		return err
	}
	var st struct {
		RunningNodes []string `json:"running_nodes"`
	}
	if err := json.Unmarshal([]byte(out), &st); err != nil {
		return fmt.Errorf("rabbitmqctl cluster_status: %w: %q", err, out)
	}
	for i := range rabbitClusterSize {
		if name := fmt.Sprintf("rabbit@mq-rabbit-%d", i+1); !slices.Contains(st.RunningNodes, name) {
			return fmt.Errorf("%s is not running in the cluster yet (running: %v)", name, st.RunningNodes)
		}
	}
	return nil
}

// reapRabbitNetworks removes the cluster networks of dead test processes
// (their containers are gone already: docker reaps them first).
func reapRabbitNetworks(ctx context.Context) {
	cli, err := docker(ctx)
	if err != nil {
		return
	}
	res, err := cli.NetworkList(ctx, client.NetworkListOptions{
		Filters: make(client.Filters).Add("label", labelKind+"="+rabbitClusterKind),
	})
	if err != nil {
		return
	}
	for _, n := range res.Items {
		pid, err := strconv.Atoi(n.Labels[labelPID])
		if err != nil || pid <= 0 || processAlive(pid) {
			continue
		}
		_, _ = cli.NetworkRemove(ctx, n.ID, client.NetworkRemoveOptions{})
	}
}
