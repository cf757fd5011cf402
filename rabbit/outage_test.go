package rabbit_test

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/mqkit/mq"
	"github.com/mqkit/mq/integration/testbed"
)

// TestBrokerDown stops the broker (rabbitmqctl stop_app: the node stays
// up, its listener and every connection go) and checks that calls fail
// with errors wrapping mq.ErrUnavailable within reconnect_timeout, even
// with a context that never ends, instead of blocking; that later calls,
// during the same outage, fail at once; and that producer and consumer
// work again when the broker is back, without losing a message.
func TestBrokerDown(t *testing.T) {
	if testing.Short() {
		t.Skip("stops a broker")
	}
	b := testbed.RabbitMQ(t)
	const timeout = 2 * time.Second
	url := b.URL + "?reconnect_timeout=2s&reconnect_backoff=50ms&max_reconnect_backoff=500ms"
	c := dialT(t, url, &lockedBuffer{})
	topic := uniqueTopic("down")
	var mu sync.Mutex
	seen := map[string]bool{}
	consumeT(t, c, topic, func(_ context.Context, m *mq.Message) error {
		mu.Lock()
		seen[m.ID] = true
		mu.Unlock()
		return nil
	}, mq.WithGroup("g"))
	p := c.Producer()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if err := p.Produce(ctx, topic, &mq.Message{ID: "before"}); err != nil {
		t.Fatal(err)
	}
	if err := rabbitmqctl(ctx, b, "stop_app"); err != nil {
		t.Fatal(err)
	}
	started := false
	t.Cleanup(func() {
		if !started {
			_ = rabbitmqctl(context.Background(), b, "start_app")
		}
	})

	// timed runs f, which must fail with mq.ErrUnavailable within limit.
	timed := func(what string, limit time.Duration, f func() error) {
		t.Helper()
		begin := time.Now()
		err := f()
		took := time.Since(begin)
		t.Logf("%s with the broker down: %v after %v", what, err, took.Round(time.Millisecond))
		if !errors.Is(err, mq.ErrUnavailable) {
			t.Errorf("%s with the broker down = %v, want an error wrapping mq.ErrUnavailable", what, err)
		}
		if took > limit {
			t.Errorf("%s with the broker down took %v, want at most %v", what, took, limit)
		}
	}
	// No deadline on the context: reconnect_timeout alone bounds them.
	timed("first Produce", timeout+3*time.Second, func() error {
		return p.Produce(context.Background(), topic, &mq.Message{ID: "during-1"})
	})
	timed("second Produce", time.Second, func() error {
		return p.Produce(context.Background(), topic, &mq.Message{ID: "during-2"})
	})
	timed("Consumer (Subscribe)", timeout+3*time.Second, func() error {
		_, err := c.Consumer(context.Background(), uniqueTopic("down-new"), mq.WithGroup("g"))
		return err
	})
	timed("mq.Open (Dial)", timeout+3*time.Second, func() error {
		c, err := mq.Open(context.Background(), url)
		if err == nil {
			c.Close()
		}
		return err
	})

	if err := rabbitmqctl(ctx, b, "start_app"); err != nil {
		t.Fatal(err)
	}
	started = true
	// The broker takes a moment to serve again: Produce fails fast until
	// it does, and the caller retries (the IDs make it safe).
	msgs := []*mq.Message{{ID: "after-1"}, {ID: "after-2"}}
	var err error
	for try := 0; ; try++ {
		if err = p.Produce(ctx, topic, msgs...); err == nil || !errors.Is(err, mq.ErrUnavailable) || ctx.Err() != nil {
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	if err != nil {
		t.Fatalf("Produce after the broker came back: %v", err)
	}
	waitFor(t, 30*time.Second, "the messages produced before and after the outage", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return seen["before"] && seen["after-1"] && seen["after-2"]
	})
}
