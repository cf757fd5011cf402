package testbed

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/moby/moby/client"
	"github.com/testcontainers/testcontainers-go"
	tclog "github.com/testcontainers/testcontainers-go/log"
)

// Kind names a broker type.
type Kind string

// The broker kinds the harness can start.
const (
	KindRedis Kind = "redis"
	// KindRedisCluster is a one-node Redis Cluster owning every slot.
	KindRedisCluster Kind = "redis-cluster"
	// KindRedisSentinel is a Redis primary watched by one Sentinel.
	KindRedisSentinel Kind = "redis-sentinel"
	KindRabbitMQ      Kind = "rabbitmq"
	KindKafka         Kind = "kafka"
	// KindPostgres is a PostgreSQL server (not a broker: the database of
	// package outbox and idempotency/pgstore), run by the same harness.
	KindPostgres Kind = "postgres"
)

// Broker is a running broker in a container, started by Redis, RabbitMQ,
// Kafka (or their Shared variants, or Start).
type Broker struct {
	// Kind is the broker type.
	Kind Kind
	// URL is what mq.Open takes: redis://127.0.0.1:PORT/0,
	// amqp://guest:guest@127.0.0.1:PORT/ or kafka://127.0.0.1:PORT. For
	// PostgreSQL it is what pgx and database/sql drivers take:
	// postgres://mq:mq@127.0.0.1:PORT/mq?sslmode=disable.
	URL string
	// Addr is the client address, 127.0.0.1:PORT. It stays the same across
	// Restart.
	Addr string
	// Image is the image the container runs.
	Image string
	// SASLAddr is the address of the SASL_PLAINTEXT listener that
	// WithKafkaSASL adds ("" without it).
	SASLAddr string
	// TLSAddr is the address of the TLS listener that WithKafkaTLS,
	// WithRedisTLS or WithRabbitMQTLS adds ("" without one).
	TLSAddr string

	spec *spec
	ctr  testcontainers.Container

	mu sync.Mutex
	// startMark: how many readiness log lines the logs held before the last
	// (re)start; readiness needs one more (RabbitMQ).
	startMark int
}

// Option adjusts a broker before it starts.
type Option func(*options)

type options struct {
	env       map[string]string
	kafkaSASL map[string]string // PLAIN users; nil: no SASL listener
	tls       map[Kind]string   // a WriteCerts directory per kind that gets a TLS listener
}

// WithRabbitMQTLS gives a RabbitMQ broker a TLS listener besides its plain
// one (its address in Broker.TLSAddr), with the certificates of a
// WriteCerts directory (server.crt, server.key, ca.crt), which it mounts
// read-only and where it writes the broker's configuration file. Clients
// are not asked for certificates. It has no effect on other brokers.
func WithRabbitMQTLS(dir string) Option {
	return withTLS(KindRabbitMQ, dir)
}

// WithRedisTLS gives a Redis server a TLS port besides its plain one (its
// address in Broker.TLSAddr). dir is a host directory, mounted read-only in
// the container, holding server.crt, server.key and ca.crt in PEM. Clients
// are not asked for certificates. It has no effect on other brokers.
func WithRedisTLS(dir string) Option {
	return withTLS(KindRedis, dir)
}

// WithKafkaTLS gives a Kafka broker a TLS listener on 127.0.0.1 (its
// address in Broker.TLSAddr). dir is a host directory, mounted read-only in
// the container, holding server.pem: the server's unencrypted PKCS#8 private
// key followed by its certificate chain, in PEM. It has no effect on other
// brokers.
func WithKafkaTLS(dir string) Option {
	return withTLS(KindKafka, dir)
}

// withTLS asks for a TLS listener on brokers of kind, with the
// certificates in dir.
func withTLS(kind Kind, dir string) Option {
	return func(o *options) {
		if o.tls == nil {
			o.tls = map[Kind]string{}
		}
		o.tls[kind] = dir
	}
}

// WithKafkaSASL gives a Kafka broker a second listener, SASL_PLAINTEXT on
// 127.0.0.1 (its address in Broker.SASLAddr), that accepts SASL PLAIN for
// the given users and passwords and SCRAM-SHA-256/512 for users whose
// SCRAM credentials a test creates through the admin API (on the plain
// listener, Broker.Addr). It has no effect on other brokers.
func WithKafkaSASL(plainUsers map[string]string) Option {
	return func(o *options) { o.kafkaSASL = plainUsers }
}

// WithEnv sets an environment variable in the broker's container, e.g.
// WithEnv("KAFKA_NUM_PARTITIONS", "3") (Kafka maps KAFKA_* variables to
// broker properties, both in the local image and in apache/kafka).
func WithEnv(key, value string) Option {
	return func(o *options) {
		if o.env == nil {
			o.env = map[string]string{}
		}
		o.env[key] = value
	}
}

// Redis starts a Redis server and terminates it when the test ends.
// The broker is ready: it answered PING.
func Redis(t testing.TB, opts ...Option) *Broker {
	t.Helper()
	return startT(t, KindRedis, opts)
}

// RedisCluster starts a one-node Redis Cluster that owns all 16384 slots
// and announces 127.0.0.1 and its published port, and terminates it when
// the test ends. URL is redis+cluster://127.0.0.1:PORT. The broker is
// ready: CLUSTER INFO says cluster_state:ok.
func RedisCluster(t testing.TB, opts ...Option) *Broker {
	t.Helper()
	return startT(t, KindRedisCluster, opts)
}

// RedisSentinel starts a Redis primary and a Sentinel watching it (master
// name "mq"), both on 127.0.0.1 with host networking, and terminates them
// when the test ends. URL is redis+sentinel://127.0.0.1:PORT/0?master=mq,
// PORT being the Sentinel's. The broker is ready: the Sentinel names the
// primary and the primary answers PING.
func RedisSentinel(t testing.TB, opts ...Option) *Broker {
	t.Helper()
	return startT(t, KindRedisSentinel, opts)
}

// RabbitMQ starts a RabbitMQ broker (user guest/guest, vhost /, the
// consistent-hash exchange plugin enabled) and terminates it when the test
// ends. The broker is ready: it logged "Server startup complete" and
// accepted an AMQP connection and channel.
func RabbitMQ(t testing.TB, opts ...Option) *Broker {
	t.Helper()
	return startT(t, KindRabbitMQ, opts)
}

// Kafka starts a single-node Apache Kafka broker (KRaft, combined broker
// and controller, auto-created topics with 1 partition, replication factor
// 1 everywhere) and terminates it when the test ends. The broker is ready:
// a metadata request lists it.
func Kafka(t testing.TB, opts ...Option) *Broker {
	t.Helper()
	return startT(t, KindKafka, opts)
}

// Postgres starts a PostgreSQL server (user mq, password mq, database mq,
// scram-sha-256 over TCP; small shared_buffers, fsync on) and terminates
// it when the test ends. URL is
// postgres://mq:mq@127.0.0.1:PORT/mq?sslmode=disable. The server is
// ready: it ran a query. Restart, Stop and Start work as for brokers:
// docker stop becomes PostgreSQL's fast shutdown, and what committed
// survives.
func Postgres(t testing.TB, opts ...Option) *Broker {
	t.Helper()
	return startT(t, KindPostgres, opts)
}

func startT(t testing.TB, kind Kind, opts []Option) *Broker {
	t.Helper()
	begin := time.Now()
	b, err := Start(context.Background(), kind, opts...)
	if !keep(t, kind, string(kind), b, err) {
		return nil
	}
	t.Logf("testbed: %s (%s) ready at %s in %.1fs", kind, b.Image, b.URL, time.Since(begin).Seconds())
	return b
}

// keep fails or skips t for err, the failure to start what (see fail),
// or else terminates v when the test ends; it reports whether v started.
func keep[T interface{ Terminate(context.Context) error }](t testing.TB, kind Kind, what string, v T, err error) bool {
	t.Helper()
	if err != nil {
		fail(t, kind, err)
		return false // not reached with a real testing.TB
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		if err := v.Terminate(ctx); err != nil {
			t.Logf("testbed: terminate %s: %v", what, err)
		}
	})
	return true
}

// fail skips or fails t for a broker that could not be started.
func fail(t testing.TB, kind Kind, err error) {
	t.Helper()
	var ue *unavailableError
	if errors.As(err, &ue) {
		if inCI() {
			t.Fatalf("testbed: %s broker required (CI=true) but unavailable: %v\n(scripts/test.sh runs scripts/testbed.sh first, which starts Docker and builds the images)", kind, err)
		}
		t.Skipf("testbed: skipping, %s broker unavailable: %v\n(run scripts/testbed.sh; with CI=true this is a failure)", kind, err)
	}
	t.Fatalf("testbed: %s broker failed: %v", kind, err)
}

// Start starts a broker of the given kind and waits until it serves
// clients. The caller must Terminate it. Most tests want Redis, RabbitMQ or
// Kafka, which do both and turn errors into skips or failures.
func Start(ctx context.Context, kind Kind, opts ...Option) (*Broker, error) {
	sp, ok := specs[kind]
	if !ok {
		return nil, fmt.Errorf("testbed: unknown broker kind %q", kind)
	}
	var o options
	for _, opt := range opts {
		opt(&o)
	}
	cli, err := docker(ctx)
	if err != nil {
		return nil, err
	}
	image := imageFromEnv(sp.envKey, sp.defaultImage)
	if err := ensureImage(ctx, cli, image, sp.envKey); err != nil {
		return nil, err
	}

	var lastErr error
	for attempt := 1; attempt <= 3; attempt++ {
		b, err := startOnce(ctx, sp, image, o)
		if err == nil {
			return b, nil
		}
		lastErr = err
		// A port taken between choosing it and binding it: choose again.
		if !portClash(err) {
			break
		}
	}
	return nil, lastErr
}

func startOnce(ctx context.Context, sp *spec, image string, o options) (*Broker, error) {
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	cport, err := freePort()
	if err != nil {
		return nil, err
	}
	req := sp.request(image, port, cport)
	saslAddr := ""
	if sp.kind == KindKafka && o.kafkaSASL != nil {
		sport, err := freePort()
		if err != nil {
			return nil, err
		}
		saslAddr = fmt.Sprintf("127.0.0.1:%d", sport)
		addKafkaSASL(&req, saslAddr, o.kafkaSASL)
	}
	tlsAddr := ""
	if dir := o.tls[sp.kind]; dir != "" && sp.addTLS != nil {
		tport, err := freePort()
		if err != nil {
			return nil, err
		}
		tlsAddr = fmt.Sprintf("127.0.0.1:%d", tport)
		if err := sp.addTLS(&req, tport, dir); err != nil {
			return nil, err
		}
	}
	for k, v := range o.env {
		if req.Env == nil {
			req.Env = map[string]string{}
		}
		req.Env[k] = v
	}
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	b := &Broker{Kind: sp.kind, URL: sp.url(addr), Addr: addr, Image: image, SASLAddr: saslAddr, TLSAddr: tlsAddr, spec: sp}
	if err := b.launch(ctx, req); err != nil {
		return nil, err
	}
	return b, nil
}

// launch runs req as b's container (labelled as the harness's, so that an
// orphan is reaped) and waits until b.spec.ready says it serves clients.
// On failure the container is terminated and the error carries its logs.
func (b *Broker) launch(ctx context.Context, req testcontainers.ContainerRequest) error {
	sp := b.spec
	req.Labels = map[string]string{
		labelTestbed: "1",
		labelKind:    string(sp.kind),
		labelPID:     strconv.Itoa(os.Getpid()),
	}
	var logger tclog.Logger = tclog.NewNoopLogger()
	if envTrue(EnvVerbose) {
		logger = tclog.Default()
	}
	ctr, err := testcontainers.GenericContainer(ctx, testcontainers.GenericContainerRequest{
		ContainerRequest: req,
		Started:          true,
		Logger:           logger,
	})
	b.ctr = ctr
	if err != nil {
		err = fmt.Errorf("start %s container from %s: %w", sp.kind, b.Image, err)
		if ctr != nil {
			err = b.withLogs(ctx, err)
			_ = b.Terminate(context.WithoutCancel(ctx))
		}
		return err
	}
	if err := b.waitReady(ctx); err != nil {
		err = b.withLogs(ctx, err)
		_ = b.Terminate(context.WithoutCancel(ctx))
		return err
	}
	return nil
}

func portClash(err error) bool {
	s := strings.ToLower(err.Error())
	return strings.Contains(s, "address already in use") ||
		strings.Contains(s, "port is already allocated") ||
		strings.Contains(s, "bindexception")
}

// logTail is how much of a container's log goes into an error message.
const logTail = 16 << 10

// withLogs appends the tail of the container's logs to err.
func (b *Broker) withLogs(ctx context.Context, err error) error {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
	logs := b.Logs(ctx)
	if len(logs) > logTail {
		logs = "...\n" + logs[len(logs)-logTail:]
	}
	return fmt.Errorf("%w\n--- %s container logs ---\n%s\n--- end of %s container logs ---", err, b.Kind, logs, b.Kind)
}

// waitReady polls the broker until it serves clients, the container stops
// running, or the kind's start timeout passes.
func (b *Broker) waitReady(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, b.spec.startTimeout)
	defer cancel()
	var last error
	for {
		if st, err := b.ctr.State(ctx); err == nil && !st.Running {
			return fmt.Errorf("%s container is not running (status %s, exit code %d)", b.Kind, st.Status, st.ExitCode)
		}
		rctx, rcancel := context.WithTimeout(ctx, 5*time.Second)
		err := b.spec.ready(rctx, b)
		rcancel()
		if err == nil {
			return nil
		}
		last = err
		select {
		case <-ctx.Done():
			return fmt.Errorf("%s not ready within %s: %v", b.Kind, b.spec.startTimeout, last)
		case <-time.After(150 * time.Millisecond):
		}
	}
}

// Container returns the testcontainers handle, for what the Broker methods
// do not cover (Exec, Inspect, ...).
func (b *Broker) Container() testcontainers.Container { return b.ctr }

// Stop stops the broker's container (gracefully, then killed after a
// timeout), as an outage; Start brings it back.
func (b *Broker) Stop(ctx context.Context) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if err := b.unpauseIfPaused(ctx); err != nil {
		return err
	}
	if b.spec.readyLine != "" {
		b.startMark = strings.Count(b.Logs(ctx), b.spec.readyLine)
	}
	timeout := b.spec.stopTimeout
	if err := b.ctr.Stop(ctx, &timeout); err != nil {
		return b.withLogs(ctx, fmt.Errorf("stop %s: %w", b.Kind, err))
	}
	return nil
}

// Kill kills the broker's processes with SIGKILL (docker kill), as a
// crash or a power loss of its node: no clean shutdown, nothing flushed
// that the broker had not synced. Start brings it back.
func (b *Broker) Kill(ctx context.Context) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if err := b.unpauseIfPaused(ctx); err != nil {
		return err
	}
	if b.spec.readyLine != "" {
		b.startMark = strings.Count(b.Logs(ctx), b.spec.readyLine)
	}
	cli, err := docker(ctx)
	if err != nil {
		return err
	}
	if _, err := cli.ContainerKill(ctx, b.ctr.GetContainerID(), client.ContainerKillOptions{Signal: "KILL"}); err != nil {
		return fmt.Errorf("kill %s: %w", b.Kind, err)
	}
	// Wait until docker reports it stopped, so that Start can follow.
	for {
		st, err := b.ctr.State(ctx)
		if err != nil || !st.Running {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("kill %s: %w", b.Kind, ctx.Err())
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// Start starts a container stopped by Stop and waits until the broker
// serves clients, at the same address.
func (b *Broker) Start(ctx context.Context) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if err := b.ctr.Start(ctx); err != nil {
		return b.withLogs(ctx, fmt.Errorf("start %s: %w", b.Kind, err))
	}
	if err := b.waitReady(ctx); err != nil {
		return b.withLogs(ctx, fmt.Errorf("start %s: %w", b.Kind, err))
	}
	return nil
}

// Restart stops the container (gracefully, then killed after a timeout),
// starts the same container again and waits until the broker serves
// clients. The address stays the same; what the broker keeps on disk
// (RabbitMQ durable queues and persistent messages, Kafka topics and
// offsets, Redis streams and groups from its fsync-always append-only
// file) survives.
func (b *Broker) Restart(ctx context.Context) error {
	if err := b.Stop(ctx); err != nil {
		return err
	}
	return b.Start(ctx)
}

// Pause freezes every process of the broker (docker pause): connections
// stay open but nothing answers, like a hung or partitioned broker.
func (b *Broker) Pause(ctx context.Context) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	cli, err := docker(ctx)
	if err != nil {
		return err
	}
	if _, err := cli.ContainerPause(ctx, b.ctr.GetContainerID(), client.ContainerPauseOptions{}); err != nil {
		return fmt.Errorf("pause %s: %w", b.Kind, err)
	}
	return nil
}

// Unpause thaws a paused broker and waits until it serves clients again.
func (b *Broker) Unpause(ctx context.Context) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	cli, err := docker(ctx)
	if err != nil {
		return err
	}
	if _, err := cli.ContainerUnpause(ctx, b.ctr.GetContainerID(), client.ContainerUnpauseOptions{}); err != nil {
		return fmt.Errorf("unpause %s: %w", b.Kind, err)
	}
	if err := b.waitReady(ctx); err != nil {
		return b.withLogs(ctx, fmt.Errorf("unpause %s: %w", b.Kind, err))
	}
	return nil
}

func (b *Broker) unpauseIfPaused(ctx context.Context) error {
	st, err := b.ctr.State(ctx)
	if err != nil || !st.Paused {
		return nil
	}
	cli, err := docker(ctx)
	if err != nil {
		return err
	}
	_, err = cli.ContainerUnpause(ctx, b.ctr.GetContainerID(), client.ContainerUnpauseOptions{})
	return err
}

// Logs returns the container's output so far (stdout and stderr), or a
// note saying why it could not be read.
func (b *Broker) Logs(ctx context.Context) string {
	if b == nil || b.ctr == nil {
		return "(no container)"
	}
	rc, err := b.ctr.Logs(ctx)
	if err != nil {
		return fmt.Sprintf("(logs unavailable: %v)", err)
	}
	defer func() { _ = rc.Close() }()
	data, err := io.ReadAll(rc)
	if err != nil {
		return string(data) + fmt.Sprintf("\n(reading logs: %v)", err)
	}
	return string(data)
}

// Terminate stops and removes the container. The test starters call it in
// t.Cleanup; call it yourself only for a broker from Start.
func (b *Broker) Terminate(ctx context.Context) error {
	if b == nil || b.ctr == nil {
		return nil
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	_ = b.unpauseIfPaused(ctx)
	return b.ctr.Terminate(ctx, testcontainers.StopTimeout(0))
}
