package mq_test

import (
	"context"
	"fmt"
	"log"

	"github.com/mqkit/mq"
	_ "github.com/mqkit/mq/memory" // registers mem://
)

// A service produces and consumes through one URL; changing the URL to
// kafka://, amqp:// or redis:// changes the broker and nothing else.
func Example() {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()

	c, err := mq.Open(ctx, "mem://?group=billing")
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()

	// Join the group first: a group gets the messages produced after it exists.
	orders, err := c.Consumer(ctx, "orders", mq.WithConcurrency(8))
	if err != nil {
		log.Fatal(err)
	}

	p := c.Producer()
	if err := p.Produce(ctx, "orders",
		&mq.Message{ID: "order-1", Key: "customer-42", Body: []byte(`{"total":1250}`)},
		&mq.Message{ID: "order-2", Key: "customer-42", Body: []byte(`{"total":990}`)},
	); err != nil {
		log.Fatal(err)
	}

	handled := 0
	err = orders.Consume(ctx, mq.HandlerFunc(func(ctx context.Context, m *mq.Message) error {
		fmt.Printf("%s %s attempt %d\n", m.ID, m.Body, m.Attempt)
		if handled++; handled == 2 {
			cancel() // stop after two; Consume returns once both are acknowledged
		}
		return nil
	}))
	fmt.Println("consume returned:", err)
	// Output:
	// order-1 {"total":1250} attempt 1
	// order-2 {"total":990} attempt 1
	// consume returned: <nil>
}

// Handler errors make the message come back with a higher Attempt; keys keep
// their order while it waits.
func ExampleHandlerFunc_retry() {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	c, _ := mq.Open(ctx, "mem://?nack_backoff=1ms")
	defer c.Close()
	cons, _ := c.Consumer(ctx, "payments", mq.WithGroup("ledger"))
	_ = c.Producer().Produce(ctx, "payments", &mq.Message{ID: "pay-7", Key: "acct-1"})

	_ = cons.Consume(ctx, mq.HandlerFunc(func(ctx context.Context, m *mq.Message) error {
		if m.Attempt < 3 {
			fmt.Println("attempt", m.Attempt, "failed")
			return fmt.Errorf("ledger unavailable")
		}
		fmt.Println("attempt", m.Attempt, "succeeded")
		cancel()
		return nil
	}))
	// Output:
	// attempt 1 failed
	// attempt 2 failed
	// attempt 3 succeeded
}

func ExampleChain() {
	logging := func(next mq.Handler) mq.Handler {
		return mq.HandlerFunc(func(ctx context.Context, m *mq.Message) error {
			fmt.Println("handling", m.ID)
			return next.Handle(ctx, m)
		})
	}
	h := mq.Chain(mq.HandlerFunc(func(ctx context.Context, m *mq.Message) error {
		fmt.Println("done", m.ID)
		return nil
	}), logging)
	_ = h.Handle(context.Background(), &mq.Message{ID: "m-1"})
	// Output:
	// handling m-1
	// done m-1
}
