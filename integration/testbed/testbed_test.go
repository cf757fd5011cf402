package testbed

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/IBM/sarama"
	amqp "github.com/rabbitmq/amqp091-go"
	"github.com/redis/go-redis/v9"
)

func TestMain(m *testing.M) { Main(m) }

// ---------------------------------------------------------------- Redis ---

func newRedis(t *testing.T, b *Broker) *redis.Client {
	t.Helper()
	opt, err := redis.ParseURL(b.URL)
	if err != nil {
		t.Fatal(err)
	}
	c := redis.NewClient(opt)
	t.Cleanup(func() { _ = c.Close() })
	return c
}

func TestRedisSmoke(t *testing.T) {
	t.Parallel()
	b := Redis(t)
	if !strings.HasPrefix(b.URL, "redis://127.0.0.1:") || !strings.HasSuffix(b.URL, "/0") {
		t.Fatalf("URL = %q", b.URL)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c := newRedis(t, b)
	id, err := c.XAdd(ctx, &redis.XAddArgs{Stream: "smoke", Values: map[string]any{"body": "hello"}}).Result()
	if err != nil {
		t.Fatalf("XADD: %v", err)
	}
	streams, err := c.XRead(ctx, &redis.XReadArgs{Streams: []string{"smoke", "0"}, Count: 1, Block: time.Second}).Result()
	if err != nil {
		t.Fatalf("XREAD: %v", err)
	}
	if len(streams) != 1 || len(streams[0].Messages) != 1 {
		t.Fatalf("XREAD = %+v", streams)
	}
	msg := streams[0].Messages[0]
	if msg.ID != id || msg.Values["body"] != "hello" {
		t.Fatalf("read %+v, want id %s body hello", msg, id)
	}
}

func TestTwoRedisAreIndependent(t *testing.T) {
	t.Parallel()
	a, b := Redis(t), Redis(t)
	if a.Addr == b.Addr {
		t.Fatalf("both brokers at %s", a.Addr)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	ca, cb := newRedis(t, a), newRedis(t, b)
	if err := ca.Set(ctx, "owner", "a", 0).Err(); err != nil {
		t.Fatal(err)
	}
	if err := cb.Set(ctx, "owner", "b", 0).Err(); err != nil {
		t.Fatal(err)
	}
	if err := ca.XAdd(ctx, &redis.XAddArgs{Stream: "only-a", Values: []any{"k", "v"}}).Err(); err != nil {
		t.Fatal(err)
	}
	if got := ca.Get(ctx, "owner").Val(); got != "a" {
		t.Errorf("a: owner = %q, want a", got)
	}
	if got := cb.Get(ctx, "owner").Val(); got != "b" {
		t.Errorf("b: owner = %q, want b", got)
	}
	if n := cb.Exists(ctx, "only-a").Val(); n != 0 {
		t.Errorf("b sees a's stream")
	}
	if err := a.Restart(ctx); err != nil {
		t.Fatal(err)
	}
	if got := cb.Get(ctx, "owner").Val(); got != "b" {
		t.Errorf("after restarting a, b: owner = %q, want b", got)
	}
}

func TestSharedRedisIsShared(t *testing.T) {
	a, b := SharedRedis(t), SharedRedis(t)
	if a != b {
		t.Fatalf("SharedRedis gave two brokers: %s and %s", a.Addr, b.Addr)
	}
}

// ------------------------------------------------------------- RabbitMQ ---

func TestRabbitMQSmoke(t *testing.T) {
	t.Parallel()
	b := RabbitMQ(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	conn, ch := amqpChannel(t, b)
	defer func() { _ = conn.Close() }()

	q, err := ch.QueueDeclare("smoke", true, false, false, false, nil)
	if err != nil {
		t.Fatalf("declare: %v", err)
	}
	// The plugin the image enables.
	if err := ch.ExchangeDeclare("smoke-hash", "x-consistent-hash", false, true, false, false, nil); err != nil {
		t.Fatalf("declare x-consistent-hash exchange: %v", err)
	}
	amqpPublishConfirmed(ctx, t, ch, q.Name, "hello")
	deliveries, err := ch.ConsumeWithContext(ctx, q.Name, "smoke", false, false, false, false, nil)
	if err != nil {
		t.Fatalf("consume: %v", err)
	}
	select {
	case d := <-deliveries:
		if string(d.Body) != "hello" {
			t.Fatalf("body = %q", d.Body)
		}
		if err := d.Ack(false); err != nil {
			t.Fatalf("ack: %v", err)
		}
	case <-ctx.Done():
		t.Fatal("no delivery")
	}
}

func amqpChannel(t *testing.T, b *Broker) (*amqp.Connection, *amqp.Channel) {
	t.Helper()
	conn, err := amqp.Dial(b.URL)
	if err != nil {
		t.Fatalf("dial %s: %v", b.Addr, err)
	}
	ch, err := conn.Channel()
	if err != nil {
		t.Fatalf("channel: %v", err)
	}
	if err := ch.Confirm(false); err != nil {
		t.Fatalf("confirm mode: %v", err)
	}
	return conn, ch
}

func amqpPublishConfirmed(ctx context.Context, t *testing.T, ch *amqp.Channel, queue, body string) {
	t.Helper()
	dc, err := ch.PublishWithDeferredConfirmWithContext(ctx, "", queue, true, false, amqp.Publishing{
		DeliveryMode: amqp.Persistent,
		Body:         []byte(body),
	})
	if err != nil {
		t.Fatalf("publish: %v", err)
	}
	ok, err := dc.WaitContext(ctx)
	if err != nil || !ok {
		t.Fatalf("publisher confirm: ok=%v err=%v", ok, err)
	}
}

// ---------------------------------------------------------------- Kafka ---

func kafkaConfig() *sarama.Config {
	cfg := sarama.NewConfig()
	cfg.Version = sarama.V3_9_0_0
	cfg.Producer.RequiredAcks = sarama.WaitForAll
	cfg.Producer.Return.Successes = true
	cfg.Producer.Retry.Max = 10
	cfg.Producer.Retry.Backoff = 200 * time.Millisecond
	cfg.Metadata.Retry.Max = 10
	cfg.Metadata.Retry.Backoff = 200 * time.Millisecond
	return cfg
}

func kafkaProduce(t *testing.T, b *Broker, topic, value string) (int32, int64) {
	t.Helper()
	p, err := sarama.NewSyncProducer([]string{b.Addr}, kafkaConfig())
	if err != nil {
		t.Fatalf("producer: %v", err)
	}
	defer func() { _ = p.Close() }()
	part, off, err := p.SendMessage(&sarama.ProducerMessage{Topic: topic, Key: sarama.StringEncoder("k"), Value: sarama.StringEncoder(value)})
	if err != nil {
		t.Fatalf("produce: %v", err)
	}
	return part, off
}

func kafkaConsumeOne(t *testing.T, b *Broker, topic string, part int32, off int64) string {
	t.Helper()
	c, err := sarama.NewConsumer([]string{b.Addr}, kafkaConfig())
	if err != nil {
		t.Fatalf("consumer: %v", err)
	}
	defer func() { _ = c.Close() }()
	pc, err := c.ConsumePartition(topic, part, off)
	if err != nil {
		t.Fatalf("consume partition: %v", err)
	}
	defer func() { _ = pc.Close() }()
	select {
	case m := <-pc.Messages():
		return string(m.Value)
	case err := <-pc.Errors():
		t.Fatalf("consume: %v", err)
	case <-time.After(30 * time.Second):
		t.Fatal("no message within 30s")
	}
	return ""
}

func TestKafkaSmoke(t *testing.T) {
	t.Parallel()
	b := Kafka(t)
	if !strings.HasPrefix(b.URL, "kafka://127.0.0.1:") {
		t.Fatalf("URL = %q", b.URL)
	}
	part, off := kafkaProduce(t, b, "smoke", "hello")
	if got := kafkaConsumeOne(t, b, "smoke", part, off); got != "hello" {
		t.Fatalf("consumed %q", got)
	}
}

// ------------------------------------------------------- Restart / Pause ---

// TestRestartAndPause restarts each broker mid-test and pauses it: the
// address stays, durable data survives where the broker keeps it, a paused
// broker answers nothing, and each serves again afterwards.
func TestRestartAndPause(t *testing.T) {
	t.Parallel()
	t.Run("redis", func(t *testing.T) {
		t.Parallel()
		b := Redis(t)
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		c := newRedis(t, b)
		addr := b.Addr
		restartAndCheck(ctx, t, b, addr)
		if err := c.XAdd(ctx, &redis.XAddArgs{Stream: "after", Values: []any{"k", "v"}}).Err(); err != nil {
			t.Fatalf("XADD after restart: %v", err)
		}
		pauseAndCheck(ctx, t, b)
		if n, err := c.XLen(ctx, "after").Result(); err != nil || n != 1 {
			t.Fatalf("XLEN after unpause = %d, %v", n, err)
		}
	})
	t.Run("rabbitmq", func(t *testing.T) {
		t.Parallel()
		b := RabbitMQ(t)
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
		defer cancel()
		conn, ch := amqpChannel(t, b)
		if _, err := ch.QueueDeclare("durable", true, false, false, false, nil); err != nil {
			t.Fatal(err)
		}
		amqpPublishConfirmed(ctx, t, ch, "durable", "survives")
		_ = conn.Close()
		restartAndCheck(ctx, t, b, b.Addr)
		conn, ch = amqpChannel(t, b)
		d, ok, err := ch.Get("durable", true)
		if err != nil || !ok || string(d.Body) != "survives" {
			t.Fatalf("after restart: get = %q, %v, %v", d.Body, ok, err)
		}
		_ = conn.Close()
		pauseAndCheck(ctx, t, b)
		conn, ch = amqpChannel(t, b)
		defer func() { _ = conn.Close() }()
		amqpPublishConfirmed(ctx, t, ch, "durable", "after unpause")
	})
	t.Run("kafka", func(t *testing.T) {
		t.Parallel()
		b := Kafka(t)
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
		defer cancel()
		part, off := kafkaProduce(t, b, "durable", "survives")
		restartAndCheck(ctx, t, b, b.Addr)
		if got := kafkaConsumeOne(t, b, "durable", part, off); got != "survives" {
			t.Fatalf("after restart consumed %q", got)
		}
		pauseAndCheck(ctx, t, b)
		part, off = kafkaProduce(t, b, "durable", "after unpause")
		if got := kafkaConsumeOne(t, b, "durable", part, off); got != "after unpause" {
			t.Fatalf("after unpause consumed %q", got)
		}
	})
}

func restartAndCheck(ctx context.Context, t *testing.T, b *Broker, addr string) {
	t.Helper()
	begin := time.Now()
	if err := b.Restart(ctx); err != nil {
		t.Fatalf("restart: %v", err)
	}
	t.Logf("%s restarted in %.1fs", b.Kind, time.Since(begin).Seconds())
	if b.Addr != addr {
		t.Fatalf("address changed on restart: %s -> %s", addr, b.Addr)
	}
}

func pauseAndCheck(ctx context.Context, t *testing.T, b *Broker) {
	t.Helper()
	if err := b.Pause(ctx); err != nil {
		t.Fatalf("pause: %v", err)
	}
	pctx, cancel := context.WithTimeout(ctx, 1500*time.Millisecond)
	err := b.spec.ready(pctx, b)
	cancel()
	if err == nil {
		_ = b.Unpause(ctx)
		t.Fatalf("paused %s still answered", b.Kind)
	}
	begin := time.Now()
	if err := b.Unpause(ctx); err != nil {
		t.Fatalf("unpause: %v", err)
	}
	t.Logf("%s paused (probe: %v), serving again %.1fs after unpause", b.Kind, err, time.Since(begin).Seconds())
}

// ------------------------------------------------------------ no Docker ---

func TestParseEnvFile(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, EnvFileName)
	content := "# comment\nexport MQ_TESTBED_T1=one\nMQ_TESTBED_T2=\"two\"\n\nexport MQ_TESTBED_T3=three\n"
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv("MQ_TESTBED_T3", "set before")
	t.Setenv("MQ_TESTBED_T1", "")
	_ = os.Unsetenv("MQ_TESTBED_T1")
	t.Setenv("MQ_TESTBED_T2", "")
	_ = os.Unsetenv("MQ_TESTBED_T2")
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = f.Close() }()
	parseEnvFile(f)
	for k, want := range map[string]string{"MQ_TESTBED_T1": "one", "MQ_TESTBED_T2": "two", "MQ_TESTBED_T3": "set before"} {
		if got := os.Getenv(k); got != want {
			t.Errorf("%s = %q, want %q", k, got, want)
		}
	}
}

func TestFailSkipsOrFails(t *testing.T) {
	err := unavailable("no docker")
	for _, ci := range []string{"", "true"} {
		t.Run("CI="+ci, func(t *testing.T) {
			t.Setenv(EnvCI, ci)
			rec := &recorder{TB: t}
			func() {
				defer func() { _ = recover() }()
				fail(rec, KindRedis, err)
			}()
			if ci == "true" && (!rec.fatal || rec.skipped) {
				t.Errorf("CI=true: fatal=%v skipped=%v, want a failure", rec.fatal, rec.skipped)
			}
			if ci == "" && (!rec.skipped || rec.fatal) {
				t.Errorf("no CI: fatal=%v skipped=%v, want a skip", rec.fatal, rec.skipped)
			}
			if !strings.Contains(rec.msg, "no docker") {
				t.Errorf("message %q lacks the cause", rec.msg)
			}
		})
	}
	rec := &recorder{TB: t}
	func() {
		defer func() { _ = recover() }()
		fail(rec, KindKafka, errors.New("broke"))
	}()
	if !rec.fatal {
		t.Error("a broker that fails to start must fail the test, also outside CI")
	}
}

// recorder captures Skipf/Fatalf instead of ending the test.
type recorder struct {
	testing.TB
	fatal, skipped bool
	msg            string
}

func (r *recorder) Helper() {}
func (r *recorder) Fatalf(format string, args ...any) {
	r.fatal, r.msg = true, fmt.Sprintf(format, args...)
	panic("fatal")
}
func (r *recorder) Skipf(format string, args ...any) {
	r.skipped, r.msg = true, fmt.Sprintf(format, args...)
	panic("skip")
}
