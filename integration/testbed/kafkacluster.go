package testbed

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/IBM/sarama"
	"github.com/moby/moby/api/types/container"
	"github.com/testcontainers/testcontainers-go"
)

// kafkaClusterNodes is the number of nodes of KafkaCluster.
const kafkaClusterNodes = 3

// kafkaNodeHost is the loopback address of node n (1-based) of
// KafkaCluster.
func kafkaNodeHost(n int) string { return fmt.Sprintf("127.0.1.%d", n) }

// KafkaCluster starts a 3-node Apache Kafka cluster and terminates it when
// the test ends. Every node is a KRaft broker and controller (combined
// mode; the three are the controller quorum's voters), in a container of
// its own with host networking: node N (NODE_ID N) listens for clients on
// 127.0.1.N:9092 and for its peers' controller traffic on 127.0.1.N:9093.
// URL is kafka://127.0.1.1:9092,127.0.1.2:9092,127.0.1.3:9092.
//
// The brokers are set up so that an acknowledged write (acks=all)
// survives the loss of one node: default.replication.factor=3 and
// min.insync.replicas=2 for topics, replication factor 3 and a minimum ISR
// of 2 for the consumer offsets and transaction state topics, and
// unclean.leader.election.enable=false. Auto-created topics have 3
// partitions; a group's first rebalance is not delayed. Each JVM has a
// 384 MB heap. opts (WithEnv) apply to every node.
//
// The cluster is ready: a metadata request lists the three brokers and a
// controller. Each node's Stop, Kill, Pause, Start, Unpause and Restart act
// on that node alone and keep its data; Start and Unpause return once the
// node answers a metadata request that lists itself, that is once it has
// rejoined the cluster (the controller unfenced it).
func KafkaCluster(t testing.TB, opts ...Option) *Cluster {
	t.Helper()
	return clusterStart(t, KindKafka, func(ctx context.Context) (*Cluster, error) {
		return startKafkaCluster(ctx, opts)
	})
}

// startKafkaCluster starts the nodes of KafkaCluster at once (a node's
// controller waits for a majority of the voters) and waits for the whole.
func startKafkaCluster(ctx context.Context, opts []Option) (*Cluster, error) {
	var o options
	for _, opt := range opts {
		opt(&o)
	}
	var addrs, voters []string
	for n := 1; n <= kafkaClusterNodes; n++ {
		addrs = append(addrs, kafkaNodeHost(n)+":9092", kafkaNodeHost(n)+":9093")
		voters = append(voters, fmt.Sprintf("%d@%s:9093", n, kafkaNodeHost(n)))
	}
	if err := loopbackFree(addrs...); err != nil {
		return nil, err
	}
	image, err := clusterImage(ctx, KindKafka)
	if err != nil {
		return nil, err
	}

	nodes := make([]*Broker, kafkaClusterNodes)
	errs := make([]error, kafkaClusterNodes)
	var wg sync.WaitGroup
	for i := range nodes {
		wg.Add(1)
		go func() {
			defer wg.Done()
			n := i + 1
			addr := kafkaNodeHost(n) + ":9092"
			req := kafkaNodeRequest(n, strings.Join(voters, ","))
			for k, v := range o.env {
				req.Env[k] = v
			}
			sp := &spec{
				kind:         KindKafka,
				ready:        kafkaNodeReady,
				startTimeout: 120 * time.Second,
				stopTimeout:  15 * time.Second,
			}
			nodes[i], errs[i] = startNode(ctx, sp, image, req, addr, "kafka://"+addr)
			if errs[i] != nil {
				errs[i] = fmt.Errorf("testbed: kafka node %d: %w", n, errs[i])
			}
		}()
	}
	wg.Wait()
	c := &Cluster{Kind: KindKafka}
	for _, b := range nodes {
		if b != nil {
			c.Nodes = append(c.Nodes, b)
		}
	}
	if err := errors.Join(errs...); err != nil {
		_ = c.Terminate(context.WithoutCancel(ctx))
		return nil, err
	}
	c.URL = "kafka://" + strings.Join(c.Addrs(), ",")
	err = waitFor(ctx, "kafka cluster of 3 brokers", func(ctx context.Context) error {
		return kafkaClusterReady(ctx, c.Addrs())
	})
	if err != nil {
		_ = c.Terminate(context.WithoutCancel(ctx))
		return nil, err
	}
	return c, nil
}

// kafkaNodeRequest is the container of node n of KafkaCluster, whose
// controller quorum is voters. The image's data directory is formatted
// for node 1; the other nodes format a directory of their own on first
// start (start.sh formats a log.dirs that has no meta.properties), which
// the container keeps across Stop and Kill.
func kafkaNodeRequest(n int, voters string) testcontainers.ContainerRequest {
	listener := kafkaNodeHost(n) + ":9092"
	controller := kafkaNodeHost(n) + ":9093"
	env := map[string]string{
		"CLUSTER_ID":                                     kafkaClusterID,
		"KAFKA_NODE_ID":                                  fmt.Sprint(n),
		"KAFKA_PROCESS_ROLES":                            "broker,controller",
		"KAFKA_LISTENERS":                                "PLAINTEXT://" + listener + ",CONTROLLER://" + controller,
		"KAFKA_ADVERTISED_LISTENERS":                     "PLAINTEXT://" + listener,
		"KAFKA_CONTROLLER_LISTENER_NAMES":                "CONTROLLER",
		"KAFKA_CONTROLLER_QUORUM_VOTERS":                 voters,
		"KAFKA_LISTENER_SECURITY_PROTOCOL_MAP":           "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
		"KAFKA_INTER_BROKER_LISTENER_NAME":               "PLAINTEXT",
		"KAFKA_AUTO_CREATE_TOPICS_ENABLE":                "true",
		"KAFKA_NUM_PARTITIONS":                           "3",
		"KAFKA_DEFAULT_REPLICATION_FACTOR":               "3",
		"KAFKA_MIN_INSYNC_REPLICAS":                      "2",
		"KAFKA_UNCLEAN_LEADER_ELECTION_ENABLE":           "false",
		"KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR":         "3",
		"KAFKA_OFFSETS_TOPIC_NUM_PARTITIONS":             "3",
		"KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR": "3",
		"KAFKA_TRANSACTION_STATE_LOG_MIN_ISR":            "2",
		"KAFKA_TRANSACTION_STATE_LOG_NUM_PARTITIONS":     "3",
		"KAFKA_GROUP_INITIAL_REBALANCE_DELAY_MS":         "0",
		"KAFKA_HEAP_OPTS":                                "-Xmx384m -Xms128m",
	}
	if n != 1 {
		// The image's pre-formatted directory says node.id=1.
		env["KAFKA_LOG_DIRS"] = fmt.Sprintf("/var/lib/kafka/node-%d", n)
	}
	return testcontainers.ContainerRequest{
		Env:                env,
		HostConfigModifier: func(hc *container.HostConfig) { hc.NetworkMode = "host" },
	}
}

// kafkaMetadata asks the broker at addr alone for the cluster's metadata
// and returns the client addresses of the brokers it lists (those the
// controller has not fenced) and whether it names a controller.
func kafkaMetadata(ctx context.Context, addr string) (brokers []string, controller bool, err error) {
	cfg := sarama.NewConfig()
	cfg.ClientID = "mqkit-testbed"
	cfg.Net.DialTimeout = 2 * time.Second
	cfg.Net.ReadTimeout = 3 * time.Second
	cfg.Net.WriteTimeout = 3 * time.Second
	cfg.Metadata.Retry.Max = 0
	cfg.Metadata.Full = false
	type result struct {
		brokers    []string
		controller bool
		err        error
	}
	done := make(chan result, 1)
	go func() {
		b := sarama.NewBroker(addr)
		if err := b.Open(cfg); err != nil {
			done <- result{err: err}
			return
		}
		defer func() { _ = b.Close() }()
		resp, err := b.GetMetadata(&sarama.MetadataRequest{Version: 1})
		if err != nil {
			done <- result{err: err}
			return
		}
		var r result
		for _, mb := range resp.Brokers {
			r.brokers = append(r.brokers, mb.Addr())
		}
		r.controller = resp.ControllerID >= 0
		done <- r
	}()
	select {
	case r := <-done:
		return r.brokers, r.controller, r.err
	case <-ctx.Done():
		return nil, false, ctx.Err()
	}
}

// kafkaNodeReady accepts a node of KafkaCluster once it answers a metadata
// request that lists itself: it is registered with the controller quorum
// and not fenced, so it has rejoined the cluster.
func kafkaNodeReady(ctx context.Context, b *Broker) error {
	brokers, _, err := kafkaMetadata(ctx, b.Addr)
	if err != nil {
		return err
	}
	for _, a := range brokers {
		if a == b.Addr {
			return nil
		}
	}
	return fmt.Errorf("%s is not in the cluster's broker list yet (%v)", b.Addr, brokers)
}

// kafkaClusterReady returns nil once a metadata request through one of
// addrs lists all of them and names a controller.
func kafkaClusterReady(ctx context.Context, addrs []string) error {
	var last error
	for _, a := range addrs {
		brokers, controller, err := kafkaMetadata(ctx, a)
		switch {
		case err != nil:
			last = err
		case len(brokers) < len(addrs):
			last = fmt.Errorf("metadata from %s lists %d of %d brokers (%v)", a, len(brokers), len(addrs), brokers)
		case !controller:
			last = fmt.Errorf("metadata from %s names no controller", a)
		default:
			return nil
		}
	}
	return last
}
