package kafka_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/mqkit/mq"
	"github.com/mqkit/mq/integration/testbed"
	"github.com/mqkit/mq/kafka"
)

// TestOutageIsUnavailable stops a real broker under an open client: Produce
// (to a known topic and to a new one), Lag and Consumer fail with errors
// wrapping mq.ErrUnavailable, which tells retry and dead-letter middleware
// the message is not at fault. After the broker is back, Produce works
// again on the same client.
func TestOutageIsUnavailable(t *testing.T) {
	if testing.Short() {
		t.Skip("needs a Kafka broker; skipped with -short")
	}
	b := testbed.Kafka(t) // its own broker: this test stops it
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	c, err := mq.Open(ctx, b.URL+"/?create_topics=true&dial_timeout=2s")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	topic := "outage-" + mq.NewID()
	if err := c.Producer().Produce(ctx, topic, &mq.Message{Body: []byte("before")}); err != nil {
		t.Fatal(err)
	}

	stopTimeout := 10 * time.Second
	if err := b.Container().Stop(ctx, &stopTimeout); err != nil {
		t.Fatalf("stop broker: %v", err)
	}
	check := func(what string, err error, began time.Time) {
		t.Helper()
		switch {
		case err == nil:
			t.Errorf("%s with the broker stopped succeeded", what)
		case !errors.Is(err, mq.ErrUnavailable):
			t.Errorf("%s with the broker stopped = %v, want an error wrapping mq.ErrUnavailable", what, err)
		case !mq.NotAnAttempt(err):
			t.Errorf("mq.NotAnAttempt(%v) = false", err)
		default:
			t.Logf("%s failed after %v: %v", what, time.Since(began).Round(time.Millisecond), err)
		}
	}
	began := time.Now()
	check("Produce to a known topic", c.Producer().Produce(ctx, topic, &mq.Message{Body: []byte("during")}), began)
	began = time.Now()
	check("Produce to a new topic", c.Producer().Produce(ctx, "outage-new-"+mq.NewID(), &mq.Message{Body: []byte("x")}), began)
	if k, ok := kafka.FromClient(c); ok {
		began = time.Now()
		_, err := k.Lag(ctx, topic, "g")
		check("Lag", err, began)
	}
	began = time.Now()
	_, err = c.Consumer(ctx, topic, mq.WithGroup("g"))
	check("Consumer", err, began)

	if err := b.Restart(ctx); err != nil {
		t.Fatalf("restart broker: %v", err)
	}
	deadline := time.Now().Add(time.Minute)
	for {
		err := c.Producer().Produce(ctx, topic, &mq.Message{Body: []byte("after")})
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("Produce a minute after the broker came back: %v", err)
		}
		time.Sleep(500 * time.Millisecond)
	}
}
