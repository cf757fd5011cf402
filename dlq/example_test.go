package dlq_test

import (
	"context"
	"errors"
	"fmt"
	"log"
	"time"

	"github.com/mqkit/mq"
	"github.com/mqkit/mq/dlq"
	"github.com/mqkit/mq/idempotency"
	"github.com/mqkit/mq/memory"
)

// A consumer whose handler rejects a message: the message lands in
// orders.dlq with the reason, and Redrive sends it back once fixed.
func Example() {
	ctx := context.Background()
	broker := memory.NewBroker(memory.Config{})
	defer broker.Close()
	client := mq.NewClient(broker.Conn())
	defer client.Close()

	// At start-up: keep dead letters for inspection from now on.
	if err := dlq.Ensure(ctx, client, dlq.DefaultTopic("orders")); err != nil {
		log.Fatal(err)
	}
	deadLetter, err := dlq.New(dlq.Config{Producer: client.Producer(), Group: "billing"})
	if err != nil {
		log.Fatal(err)
	}
	handler := mq.HandlerFunc(func(ctx context.Context, m *mq.Message) error {
		if m.Header("currency") == "" {
			return mq.Permanent(errors.New("order has no currency"))
		}
		return nil
	})
	cons, err := client.Consumer(ctx, "orders", mq.WithGroup("billing"))
	if err != nil {
		log.Fatal(err)
	}
	runCtx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- cons.Consume(runCtx, mq.Chain(handler, deadLetter)) }()

	err = client.Producer().Produce(ctx, "orders", &mq.Message{ID: "order-1", Body: []byte(`{"total":12}`)})
	if err != nil {
		log.Fatal(err)
	}

	var letters []*mq.Message
	for len(letters) == 0 {
		letters, err = dlq.List(ctx, client, "orders.dlq", 10, dlq.WithIdle(100*time.Millisecond))
		if err != nil {
			log.Fatal(err)
		}
	}
	info := dlq.Describe(letters[0])
	fmt.Printf("%s failed on %s in %s: %s (%s)\n", letters[0].ID, info.Topic, info.Group, info.Error, info.Reason)

	stop()
	<-done
	res, err := dlq.Redrive(ctx, client, "orders.dlq", nil, dlq.WithIdle(100*time.Millisecond))
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("moved back:", res.Moved)
	// Output:
	// order-1 failed on orders in billing: order has no currency (permanent)
	// moved back: [order-1]
}

// On Kafka, or a RabbitMQ classic queue, Attempt does not survive a crash,
// so a message that kills its consumer would loop forever. An
// AttemptCounter in a store the instances share (in production
// redisstore.New(client, redisstore.Config{})) counts every delivery, and
// MaxAttempts then ends the loop.
func ExampleConfig_attemptCounter() {
	ctx := context.Background()
	broker := memory.NewBroker(memory.Config{})
	defer broker.Close()
	client := mq.NewClient(broker.Conn())
	defer client.Close()

	counter := idempotency.NewMemoryStore(idempotency.MemoryStoreConfig{})
	deadLetter, err := dlq.New(dlq.Config{
		Producer:       client.Producer(),
		Group:          "billing", // required with a counter: keeps the groups' counts apart
		MaxAttempts:    3,
		AttemptCounter: counter,
		OnDeadLetter: func(_ context.Context, dead *mq.Message, cause error) {
			fmt.Println(dead.ID, dead.Header(dlq.HeaderReason), "after", dead.Header(dlq.HeaderAttempts), "attempts")
		},
	})
	if err != nil {
		log.Fatal(err)
	}
	h := deadLetter(mq.HandlerFunc(func(context.Context, *mq.Message) error { return nil }))
	// Three deliveries crashed the process before their handler returned
	// (Kafka then delivers the message again with Attempt 1).
	for range 3 {
		_, _ = counter.CountAttempt(ctx, "billing:orders:poison", dlq.DefaultAttemptTTL)
	}
	_ = h.Handle(ctx, &mq.Message{ID: "poison", Topic: "orders", Attempt: 1})
	// Output:
	// poison max-attempts after 3 attempts
}
