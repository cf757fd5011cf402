package idempotency_test

import (
	"context"
	"fmt"
	"log"
	"time"

	"github.com/mqkit/mq"
	"github.com/mqkit/mq/idempotency"
	_ "github.com/mqkit/mq/memory" // registers mem://
)

// A message produced twice (say, the producer retried after a timeout) is
// handled once; the duplicate is acknowledged without running the handler.
func ExampleNew() {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	c, err := mq.Open(ctx, "mem://?group=billing")
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()
	cons, err := c.Consumer(ctx, "payments")
	if err != nil {
		log.Fatal(err)
	}

	dedup, err := idempotency.New(
		idempotency.NewMemoryStore(idempotency.MemoryStoreConfig{}),
		idempotency.Config{Namespace: "billing"}, // the consumer group
	)
	if err != nil {
		log.Fatal(err)
	}
	handler := mq.HandlerFunc(func(_ context.Context, m *mq.Message) error {
		if m.ID == "stop" {
			cancel()
			return nil
		}
		fmt.Println("charging", m.ID)
		return nil
	})

	p := c.Producer()
	for _, id := range []string{"pay-1", "pay-1", "pay-2", "stop"} {
		if err := p.Produce(ctx, "payments", &mq.Message{ID: id, Key: "customer-7"}); err != nil {
			log.Fatal(err)
		}
	}
	if err := cons.Consume(ctx, mq.Chain(handler, dedup)); err != nil {
		log.Fatal(err)
	}
	// Output:
	// charging pay-1
	// charging pay-2
}

// With a business key, two messages with different IDs that carry the same
// payment are one payment.
func ExampleConfig_keyFunc() {
	dedup, _ := idempotency.New(idempotency.NewMemoryStore(idempotency.MemoryStoreConfig{}), idempotency.Config{
		Namespace: "billing",
		KeyFunc:   func(m *mq.Message) string { return m.Header("payment-id") },
	})
	h := dedup(mq.HandlerFunc(func(_ context.Context, m *mq.Message) error {
		fmt.Println("charging", m.Header("payment-id"), "from", m.ID)
		return nil
	}))
	for _, id := range []string{"a", "b"} {
		m := &mq.Message{ID: id, Topic: "payments", Headers: map[string]string{"payment-id": "p-42"}}
		_ = h.Handle(context.Background(), m)
	}
	// Output:
	// charging p-42 from a
}

// At start-up, before consuming, check that the dedup store can be
// reached, so that a wrong address or a refused connection stops the
// service with a clear error instead of holding every message back. With
// Redis: store := redisstore.New(client, redisstore.Config{}).
func ExampleCheck() {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	store := idempotency.NewMemoryStore(idempotency.MemoryStoreConfig{})
	if err := idempotency.Check(ctx, store); err != nil {
		log.Fatalf("billing: %v", err) // e.g. "... store check failed: ...: connection refused"
	}
	fmt.Println("dedup store ready")
	// Output:
	// dedup store ready
}
