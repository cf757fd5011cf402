package rabbit_test

import (
	"context"
	"crypto/rand"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/mqkit/mq"
	"github.com/mqkit/mq/integration/testbed"
	"github.com/mqkit/mq/rabbit"
)

func uniqueTopic(prefix string) string {
	var b [4]byte
	_, _ = rand.Read(b[:])
	return fmt.Sprintf("%s-%x", prefix, b)
}

// consumeT runs Consume in a goroutine until the test ends (or stop is
// called) and fails the test if it returns an error.
func consumeT(t *testing.T, c *mq.Client, topic string, h mq.HandlerFunc, opts ...mq.Option) (stop func()) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cons, err := c.Consumer(ctx, topic, opts...)
	if err != nil {
		t.Fatalf("Consumer(%q): %v", topic, err)
	}
	runCtx, runCancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- cons.Consume(runCtx, h) }()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			runCancel()
			if err := <-done; err != nil {
				t.Errorf("Consume: %v", err)
			}
			_ = cons.Close()
		})
	}
	t.Cleanup(stop)
	return stop
}

// waitFor polls cond until it holds or the timeout passes.
func waitFor(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", timeout, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// dialT connects with rabbit.Dial, logging to w, and wraps the connection
// in a client closed when the test ends.
func dialT(t *testing.T, url string, w io.Writer) *mq.Client {
	t.Helper()
	cfg, err := rabbit.ParseURL(url)
	if err != nil {
		t.Fatal(err)
	}
	cfg.Logger = slog.New(slog.NewTextHandler(w, nil))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := rabbit.Dial(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	c := mq.NewClient(conn)
	t.Cleanup(func() { _ = c.Close() })
	return c
}

type lockedBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// rabbitmqctl runs rabbitmqctl in the broker's container.
func rabbitmqctl(ctx context.Context, b *testbed.Broker, args ...string) error {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	code, out, err := b.Container().Exec(ctx, append([]string{"rabbitmqctl"}, args...))
	if err == nil && code != 0 {
		var sb strings.Builder
		_, _ = io.Copy(&sb, out)
		err = fmt.Errorf("rabbitmqctl %s: exit %d: %s", strings.Join(args, " "), code, sb.String())
	}
	return err
}

// rawChannel opens a channel on a connection of the bare amqp091 client to
// url, for a test to look at or act on the broker behind the SDK's back.
// The connection is closed when the test ends.
func rawChannel(t *testing.T, url string) *amqp.Channel {
	t.Helper()
	conn, err := amqp.Dial(url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	ch, err := conn.Channel()
	if err != nil {
		t.Fatal(err)
	}
	return ch
}
