package testbed

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/IBM/sarama"
	"github.com/jackc/pgx/v5"
	"github.com/moby/moby/api/types/container"
	"github.com/moby/moby/api/types/network"
	amqp "github.com/rabbitmq/amqp091-go"
	"github.com/redis/go-redis/v9"
	"github.com/testcontainers/testcontainers-go"
)

// spec describes how to run and probe one kind of broker.
type spec struct {
	kind         Kind
	envKey       string
	defaultImage string
	// request builds the container request; port is the client port on
	// 127.0.0.1, cport a second free port (Kafka's controller).
	request func(image string, port, cport int) testcontainers.ContainerRequest
	url     func(addr string) string
	// ready returns nil once the broker serves clients.
	ready func(ctx context.Context, b *Broker) error
	// addTLS, when set, adds a TLS listener on 127.0.0.1:port with the
	// certificates of a WriteCerts directory.
	addTLS func(req *testcontainers.ContainerRequest, port int, dir string) error
	// readyLine, when set, must appear in the logs once more per (re)start.
	readyLine    string
	startTimeout time.Duration
	stopTimeout  time.Duration
}

// redisDurable are the redis-server flags of every test Redis: reachable
// through a published port, and an append-only file synced on every write
// so that an XADD reply is durable and a restart keeps every confirmed
// entry.
var redisDurable = []string{"--protected-mode", "no", "--save", "", "--dir", "/tmp", "--appendonly", "yes", "--appendfsync", "always"}

// postgresSettings are the server settings of every test PostgreSQL:
// small, and durable (fsync and synchronous_commit on), so that a COMMIT
// that returned survives a restart.
var postgresSettings = []string{
	"-c", "shared_buffers=16MB", "-c", "max_connections=100", "-c", "fsync=on", "-c", "synchronous_commit=on",
}

var specs = map[Kind]*spec{
	KindRedis: {
		kind:         KindRedis,
		envKey:       EnvRedisImage,
		defaultImage: DefaultRedisImage,
		request: func(image string, port, _ int) testcontainers.ContainerRequest {
			return testcontainers.ContainerRequest{
				Image:        image,
				ExposedPorts: []string{"6379/tcp"},
				// Works with the local image and with the official one.
				Cmd:                append([]string{"redis-server"}, redisDurable...),
				HostConfigModifier: publishOnLoopback("6379/tcp", port),
			}
		},
		url:          func(addr string) string { return "redis://" + addr + "/0" },
		ready:        redisReady,
		addTLS:       addRedisTLS,
		startTimeout: 30 * time.Second,
		stopTimeout:  5 * time.Second,
	},
	KindRedisCluster: {
		kind:         KindRedisCluster,
		envKey:       EnvRedisImage,
		defaultImage: DefaultRedisImage,
		request: func(image string, port, _ int) testcontainers.ContainerRequest {
			return testcontainers.ContainerRequest{
				Image:        image,
				ExposedPorts: []string{"6379/tcp"},
				// Announcing 127.0.0.1 and the published port makes
				// CLUSTER SLOTS name an address the test may dial.
				Cmd: append(append([]string{"redis-server"}, redisDurable...),
					"--cluster-enabled", "yes", "--cluster-config-file", "/tmp/nodes.conf",
					"--cluster-announce-ip", "127.0.0.1", "--cluster-announce-port", strconv.Itoa(port)),
				HostConfigModifier: publishOnLoopback("6379/tcp", port),
			}
		},
		url:          func(addr string) string { return "redis+cluster://" + addr },
		ready:        redisClusterReady,
		startTimeout: 30 * time.Second,
		stopTimeout:  5 * time.Second,
	},
	KindRedisSentinel: {
		kind:         KindRedisSentinel,
		envKey:       EnvRedisImage,
		defaultImage: DefaultRedisImage,
		request: func(image string, port, cport int) testcontainers.ContainerRequest {
			// Host networking: the Sentinel hands out the primary's address,
			// which must be one the test can dial (127.0.0.1:cport).
			script := fmt.Sprintf(`set -e
redis-server --port %[2]d --bind 127.0.0.1 --protected-mode no --save "" --dir /tmp --appendonly yes --appendfsync always --daemonize yes
printf 'port %[1]d
bind 127.0.0.1
protected-mode no
dir /tmp
sentinel monitor mq 127.0.0.1 %[2]d 1
sentinel down-after-milliseconds mq 5000
' > /tmp/sentinel.conf
exec redis-server /tmp/sentinel.conf --sentinel`, port, cport)
			return testcontainers.ContainerRequest{
				Image:              image,
				Cmd:                []string{"sh", "-c", script},
				HostConfigModifier: func(hc *container.HostConfig) { hc.NetworkMode = "host" },
			}
		},
		url:          func(addr string) string { return "redis+sentinel://" + addr + "/0?master=mq" },
		ready:        redisSentinelReady,
		startTimeout: 30 * time.Second,
		stopTimeout:  5 * time.Second,
	},
	KindRabbitMQ: {
		kind:         KindRabbitMQ,
		envKey:       EnvRabbitMQImage,
		defaultImage: DefaultRabbitMQImage,
		request: func(image string, port, _ int) testcontainers.ContainerRequest {
			return testcontainers.ContainerRequest{
				Image:        image,
				ExposedPorts: []string{"5672/tcp"},
				Env: map[string]string{
					// Also in the local image; the official one needs it
					// (and then skips the management plugin: faster boot).
					"RABBITMQ_ENABLED_PLUGINS": "rabbitmq_consistent_hash_exchange",
				},
				// The node name, and so the data directory, comes from the
				// host name: fixed, so that a restart finds its data.
				ConfigModifier:     func(c *container.Config) { c.Hostname = "mq-rabbit" },
				HostConfigModifier: publishOnLoopback("5672/tcp", port),
			}
		},
		url:          func(addr string) string { return "amqp://guest:guest@" + addr + "/" },
		ready:        rabbitReady,
		addTLS:       addRabbitTLS,
		readyLine:    "Server startup complete",
		startTimeout: 120 * time.Second,
		stopTimeout:  15 * time.Second,
	},
	KindPostgres: {
		kind:         KindPostgres,
		envKey:       EnvPostgresImage,
		defaultImage: DefaultPostgresImage,
		request: func(image string, port, _ int) testcontainers.ContainerRequest {
			return testcontainers.ContainerRequest{
				Image:        image,
				ExposedPorts: []string{"5432/tcp"},
				// The official image creates the user and database from
				// these; the local one was initialised with them.
				Env: map[string]string{"POSTGRES_USER": "mq", "POSTGRES_PASSWORD": "mq", "POSTGRES_DB": "mq"},
				// Both images take the official image's command line.
				Cmd:                append([]string{"postgres"}, postgresSettings...),
				HostConfigModifier: publishOnLoopback("5432/tcp", port),
			}
		},
		url:          func(addr string) string { return "postgres://mq:mq@" + addr + "/mq?sslmode=disable" },
		ready:        postgresReady,
		startTimeout: 60 * time.Second,
		stopTimeout:  10 * time.Second,
	},
	KindKafka: {
		kind:         KindKafka,
		envKey:       EnvKafkaImage,
		defaultImage: DefaultKafkaImage,
		request:      kafkaRequest,
		url:          func(addr string) string { return "kafka://" + addr },
		ready:        kafkaReady,
		addTLS:       addKafkaTLS,
		startTimeout: 120 * time.Second,
		stopTimeout:  15 * time.Second,
	},
}

// publishOnLoopback binds the container port to 127.0.0.1:hostPort only.
func publishOnLoopback(containerPort string, hostPort int) func(*container.HostConfig) {
	return func(hc *container.HostConfig) {
		hc.PortBindings = network.PortMap{
			network.MustParsePort(containerPort): {{
				HostIP:   netip.MustParseAddr("127.0.0.1"),
				HostPort: strconv.Itoa(hostPort),
			}},
		}
	}
}

// kafkaClusterID is the KRaft cluster id of every test broker (the local
// image's data directory is pre-formatted with it).
const kafkaClusterID = "bXFraXQtdGVzdGJlZC0wMQ"

// kafkaRequest runs Kafka with host networking, listening on 127.0.0.1
// only, so the advertised listener is exactly what the test dials. The
// variables follow the apache/kafka image's convention (KAFKA_FOO_BAR ->
// foo.bar), which the local image's start script honours too.
func kafkaRequest(image string, port, cport int) testcontainers.ContainerRequest {
	listener := fmt.Sprintf("127.0.0.1:%d", port)
	controller := fmt.Sprintf("127.0.0.1:%d", cport)
	return testcontainers.ContainerRequest{
		Image: image,
		Env: map[string]string{
			"CLUSTER_ID":                                     kafkaClusterID,
			"KAFKA_NODE_ID":                                  "1",
			"KAFKA_PROCESS_ROLES":                            "broker,controller",
			"KAFKA_LISTENERS":                                "PLAINTEXT://" + listener + ",CONTROLLER://" + controller,
			"KAFKA_ADVERTISED_LISTENERS":                     "PLAINTEXT://" + listener,
			"KAFKA_CONTROLLER_LISTENER_NAMES":                "CONTROLLER",
			"KAFKA_CONTROLLER_QUORUM_VOTERS":                 "1@" + controller,
			"KAFKA_LISTENER_SECURITY_PROTOCOL_MAP":           "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
			"KAFKA_INTER_BROKER_LISTENER_NAME":               "PLAINTEXT",
			"KAFKA_AUTO_CREATE_TOPICS_ENABLE":                "true",
			"KAFKA_NUM_PARTITIONS":                           "1",
			"KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR":         "1",
			"KAFKA_OFFSETS_TOPIC_NUM_PARTITIONS":             "1",
			"KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR": "1",
			"KAFKA_TRANSACTION_STATE_LOG_MIN_ISR":            "1",
			"KAFKA_GROUP_INITIAL_REBALANCE_DELAY_MS":         "0",
			"KAFKA_HEAP_OPTS":                                "-Xmx512m -Xms128m",
		},
		HostConfigModifier: func(hc *container.HostConfig) { hc.NetworkMode = "host" },
	}
}

// addKafkaSASL adds a SASL_PLAINTEXT listener at addr to a Kafka request,
// with PLAIN users and the SCRAM mechanisms enabled.
func addKafkaSASL(req *testcontainers.ContainerRequest, addr string, plainUsers map[string]string) {
	env := req.Env
	env["KAFKA_LISTENERS"] += ",SASL_PLAINTEXT://" + addr
	env["KAFKA_ADVERTISED_LISTENERS"] += ",SASL_PLAINTEXT://" + addr
	env["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"] += ",SASL_PLAINTEXT:SASL_PLAINTEXT"
	env["KAFKA_SASL_ENABLED_MECHANISMS"] = "PLAIN,SCRAM-SHA-256,SCRAM-SHA-512"
	names := make([]string, 0, len(plainUsers))
	for u := range plainUsers {
		names = append(names, u)
	}
	sort.Strings(names)
	jaas := "org.apache.kafka.common.security.plain.PlainLoginModule required"
	for _, u := range names {
		jaas += fmt.Sprintf(" user_%s=%q", u, plainUsers[u])
	}
	// KAFKA_A__B___C -> a_b-c: listener.name.sasl_plaintext.<mech>.sasl.jaas.config
	env["KAFKA_LISTENER_NAME_SASL__PLAINTEXT_PLAIN_SASL_JAAS_CONFIG"] = jaas + ";"
	scram := "org.apache.kafka.common.security.scram.ScramLoginModule required;"
	env["KAFKA_LISTENER_NAME_SASL__PLAINTEXT_SCRAM___SHA___256_SASL_JAAS_CONFIG"] = scram
	env["KAFKA_LISTENER_NAME_SASL__PLAINTEXT_SCRAM___SHA___512_SASL_JAAS_CONFIG"] = scram
}

// addKafkaTLS adds an SSL listener on 127.0.0.1:port to a Kafka request,
// with the key and certificates of dir/server.pem (mounted at /mq-tls).
func addKafkaTLS(req *testcontainers.ContainerRequest, port int, dir string) error {
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	env := req.Env
	env["KAFKA_LISTENERS"] += ",SSL://" + addr
	env["KAFKA_ADVERTISED_LISTENERS"] += ",SSL://" + addr
	env["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"] += ",SSL:SSL"
	env["KAFKA_SSL_KEYSTORE_TYPE"] = "PEM"
	env["KAFKA_SSL_KEYSTORE_LOCATION"] = "/mq-tls/server.pem"
	env["KAFKA_SSL_CLIENT_AUTH"] = "none"
	prev := req.HostConfigModifier
	req.HostConfigModifier = func(hc *container.HostConfig) {
		if prev != nil {
			prev(hc)
		}
		hc.Binds = append(hc.Binds, dir+":/mq-tls:ro")
	}
	return nil
}

// addRedisTLS adds a TLS port (6380 in the container, hostPort on
// 127.0.0.1) to a Redis request, with the certificates of dir (mounted at
// /mq-tls).
func addRedisTLS(req *testcontainers.ContainerRequest, hostPort int, dir string) error {
	req.Cmd = append(req.Cmd, "--tls-port", "6380", "--tls-cert-file", "/mq-tls/server.crt",
		"--tls-key-file", "/mq-tls/server.key", "--tls-ca-cert-file", "/mq-tls/ca.crt", "--tls-auth-clients", "no")
	req.ExposedPorts = append(req.ExposedPorts, "6380/tcp")
	prev := req.HostConfigModifier
	req.HostConfigModifier = func(hc *container.HostConfig) {
		if prev != nil {
			prev(hc)
		}
		hc.PortBindings[network.MustParsePort("6380/tcp")] = []network.PortBinding{{
			HostIP:   netip.MustParseAddr("127.0.0.1"),
			HostPort: strconv.Itoa(hostPort),
		}}
		hc.Binds = append(hc.Binds, dir+":/mq-tls:ro")
	}
	return nil
}

// rabbitTLSConf is the configuration of a RabbitMQ with a TLS listener: the
// local image's settings plus the listener.
const rabbitTLSConf = `loopback_users = none
log.console = true
log.console.level = info
log.file = false
listeners.tcp.default = 5672
listeners.ssl.default = 5671
ssl_options.cacertfile = /mq-tls/ca.crt
ssl_options.certfile = /mq-tls/server.crt
ssl_options.keyfile = /mq-tls/server.key
ssl_options.verify = verify_none
ssl_options.fail_if_no_peer_cert = false
`

// addRabbitTLS adds a TLS listener (5671 in the container, hostPort on
// 127.0.0.1) to a RabbitMQ request, with the certificates of dir (mounted
// at /mq-tls), where it writes the configuration file too.
func addRabbitTLS(req *testcontainers.ContainerRequest, hostPort int, dir string) error {
	if err := os.WriteFile(filepath.Join(dir, "rabbitmq-tls.conf"), []byte(rabbitTLSConf), 0o644); err != nil {
		return fmt.Errorf("testbed: RabbitMQ TLS configuration: %w", err)
	}
	req.Env["RABBITMQ_CONFIG_FILE"] = "/mq-tls/rabbitmq-tls.conf"
	req.ExposedPorts = append(req.ExposedPorts, "5671/tcp")
	prev := req.HostConfigModifier
	req.HostConfigModifier = func(hc *container.HostConfig) {
		if prev != nil {
			prev(hc)
		}
		hc.PortBindings[network.MustParsePort("5671/tcp")] = []network.PortBinding{{
			HostIP:   netip.MustParseAddr("127.0.0.1"),
			HostPort: strconv.Itoa(hostPort),
		}}
		hc.Binds = append(hc.Binds, dir+":/mq-tls:ro")
	}
	return nil
}

// redisClusterReady gives a fresh one-node cluster every slot, then waits
// for cluster_state:ok.
func redisClusterReady(ctx context.Context, b *Broker) error {
	c := redis.NewClient(&redis.Options{Addr: b.Addr, DialTimeout: 2 * time.Second, MaxRetries: -1, DisableIdentity: true})
	defer func() { _ = c.Close() }()
	info, err := c.ClusterInfo(ctx).Result()
	if err != nil {
		return err
	}
	if strings.Contains(info, "cluster_slots_assigned:0") {
		if err := c.Do(ctx, "CLUSTER", "ADDSLOTSRANGE", "0", "16383").Err(); err != nil {
			return fmt.Errorf("CLUSTER ADDSLOTSRANGE: %w", err)
		}
	}
	if !strings.Contains(info, "cluster_state:ok") {
		return errors.New("cluster_state is not ok yet")
	}
	return nil
}

// redisSentinelReady waits until the Sentinel names the primary and the
// primary answers PING.
func redisSentinelReady(ctx context.Context, b *Broker) error {
	s := redis.NewSentinelClient(&redis.Options{Addr: b.Addr, DialTimeout: 2 * time.Second, MaxRetries: -1, DisableIdentity: true})
	defer func() { _ = s.Close() }()
	addr, err := s.GetMasterAddrByName(ctx, "mq").Result()
	if err != nil {
		return fmt.Errorf("sentinel get-master-addr-by-name: %w", err)
	}
	m := redis.NewClient(&redis.Options{Addr: addr[0] + ":" + addr[1], DialTimeout: 2 * time.Second, MaxRetries: -1, DisableIdentity: true})
	defer func() { _ = m.Close() }()
	return m.Ping(ctx).Err()
}

// postgresReady connects with the harness's credentials and runs a query.
func postgresReady(ctx context.Context, b *Broker) error {
	conn, err := pgx.Connect(ctx, b.URL)
	if err != nil {
		return err
	}
	defer func() { _ = conn.Close(context.WithoutCancel(ctx)) }()
	var one int
	return conn.QueryRow(ctx, "SELECT 1").Scan(&one)
}

func redisReady(ctx context.Context, b *Broker) error {
	c := redis.NewClient(&redis.Options{
		Addr:            b.Addr,
		DialTimeout:     2 * time.Second,
		ReadTimeout:     2 * time.Second,
		WriteTimeout:    2 * time.Second,
		MaxRetries:      -1,
		DisableIdentity: true,
	})
	defer func() { _ = c.Close() }()
	return c.Ping(ctx).Err()
}

func rabbitReady(ctx context.Context, b *Broker) error {
	if n := strings.Count(b.Logs(ctx), b.spec.readyLine); n <= b.startMark {
		return errors.New(`no "Server startup complete" in the log yet`)
	}
	deadline, _ := ctx.Deadline()
	conn, err := amqp.DialConfig(b.URL, amqp.Config{
		Dial: amqp.DefaultDial(time.Until(deadline)),
	})
	if err != nil {
		return err
	}
	defer func() { _ = conn.Close() }()
	ch, err := conn.Channel()
	if err != nil {
		return err
	}
	return ch.Close()
}

func kafkaReady(ctx context.Context, b *Broker) error {
	cfg := sarama.NewConfig()
	cfg.ClientID = "mqkit-testbed"
	cfg.Net.DialTimeout = 2 * time.Second
	cfg.Net.ReadTimeout = 3 * time.Second
	cfg.Net.WriteTimeout = 3 * time.Second
	cfg.Metadata.Retry.Max = 0
	cfg.Metadata.Full = false
	done := make(chan error, 1)
	go func() {
		client, err := sarama.NewClient([]string{b.Addr}, cfg)
		if err != nil {
			done <- err
			return
		}
		defer func() { _ = client.Close() }()
		if err := client.RefreshMetadata(); err != nil {
			done <- err
			return
		}
		if len(client.Brokers()) == 0 {
			done <- errors.New("metadata lists no broker yet")
			return
		}
		if _, err := client.Controller(); err != nil {
			done <- fmt.Errorf("no controller yet: %w", err)
			return
		}
		done <- nil
	}()
	select {
	case err := <-done:
		return err
	case <-ctx.Done():
		return ctx.Err()
	}
}
