// Package testbed starts real brokers (Redis, RabbitMQ, Apache Kafka) and
// PostgreSQL in Docker containers for tests, with testcontainers-go, and
// finds the tools beside them that the test command installs (the Python
// interop clients, a Prometheus server).
//
//	func TestSomething(t *testing.T) {
//		rd := testbed.Redis(t)       // redis://127.0.0.1:PORT/0
//		rb := testbed.RabbitMQ(t)    // amqp://guest:guest@127.0.0.1:PORT/
//		kf := testbed.Kafka(t)       // kafka://127.0.0.1:PORT
//		pg := testbed.Postgres(t)    // postgres://mq:mq@127.0.0.1:PORT/mq?sslmode=disable
//		c, err := mq.Open(ctx, rd.URL) // or rb.URL, kf.URL
//	}
//
// Each call starts a fresh container, waits until the broker really serves
// clients (Redis PING, an AMQP connection and channel after RabbitMQ logs
// "Server startup complete", a Kafka metadata request that lists the
// broker) and terminates it in t.Cleanup. Every port is on 127.0.0.1:
// Redis and RabbitMQ publish their port on a free loopback port chosen by
// the harness (kept across Restart); Kafka runs with host networking and
// listens on 127.0.0.1 only, so its advertised listener is the address the
// test dials.
//
// # Clusters
//
// KafkaCluster (3 KRaft nodes, replication factor 3, min.insync.replicas
// 2), RabbitMQCluster (3 nodes, for quorum queues), RedisClusterHA (3
// primaries, 3 replicas) and RedisSentinelHA (a primary, a replica and 3
// sentinels) start replicated brokers for the fault tests of
// integration/cluster, each node at an address of its own on the loopback
// network (127.0.1.N Kafka, 127.0.2.N RabbitMQ, 127.0.3.N Redis Cluster,
// 127.0.4.N Sentinel). Cluster.URL names every node; each node is a
// *Broker whose Stop, Kill, Pause and Start act on it alone. The addresses
// are fixed, so only one cluster of a kind runs on a machine at a time
// (and, on a small machine, one cluster at all).
//
// # Images
//
// The images come from the environment, defaulting to the official public
// images:
//
//	MQ_TEST_REDIS_IMAGE     redis:7
//	MQ_TEST_RABBITMQ_IMAGE  rabbitmq:3.13-management
//	MQ_TEST_KAFKA_IMAGE     apache/kafka:3.9.2
//	MQ_TEST_POSTGRES_IMAGE  postgres:15
//	MQ_TEST_PYTHON          a python with confluent-kafka, pika, redis-py (scripts/interop.sh)
//	MQ_TEST_PROMETHEUS      a prometheus 2.x binary (scripts/prometheus.sh)
//
// scripts/testbed.sh builds local images from Debian packages (and Kafka's
// jars from Maven Central) for machines that reach no image registry, and
// writes their names to .testbed.env at the repository root. The harness
// reads that file for variables that are not set already, so after one run
// of scripts/testbed.sh a plain `go test ./...` uses the local images.
//
// The harness never pulls an image unless MQ_TEST_PULL=true (a pull from a
// machine without registry access only hangs or fails): pull the public
// images yourself, set MQ_TEST_PULL=true, or run scripts/testbed.sh.
//
// # Docker missing
//
// When Docker is unreachable or an image is missing, the test is skipped
// with a message that says what to run, except when CI=true: then a missing
// broker fails the test. A broker that does not come up fails the test with
// the container's logs in the message.
//
// # Environment
//
// The package sets TESTCONTAINERS_RYUK_DISABLED=true (the reaper image
// cannot be pulled here; containers are terminated in t.Cleanup, and
// containers left by a killed test process are removed the next time the
// harness runs) and TESTCONTAINERS_HOST_OVERRIDE=127.0.0.1 when they are
// unset. MQ_TEST_VERBOSE=true shows testcontainers' own log lines.
//
// # Sharing
//
// SharedRedis, SharedRabbitMQ and SharedKafka start one broker per test
// binary and hand the same one to every caller. They need TestMain to call
// Main, which terminates them after the tests; without it they behave like
// Redis, RabbitMQ and Kafka. Do not Restart or Pause a shared broker.
package testbed
