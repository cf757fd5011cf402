package middleware_test

import (
	"context"
	"errors"
	"fmt"
	"log"
	"time"

	"github.com/mqkit/mq"
	"github.com/mqkit/mq/idempotency"
	_ "github.com/mqkit/mq/memory" // registers mem://
	"github.com/mqkit/mq/middleware"
)

// A consumer with the whole stack: a flaky handler is retried in-process,
// and a duplicate of a message already handled is skipped.
func ExampleStack() {
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

	// In production: redisstore.New (package idempotency/redisstore),
	// shared by all instances, checked at start-up with idempotency.Check.
	dedup, err := idempotency.New(idempotency.NewMemoryStore(idempotency.MemoryStoreConfig{}),
		idempotency.Config{Namespace: "billing"})
	if err != nil {
		log.Fatal(err)
	}
	stack := middleware.Stack(middleware.StackConfig{
		// DeadLetter: dlq middleware here routes final failures.
		Retry:   middleware.RetryConfig{MaxAttempts: 3, InitialInterval: 10 * time.Millisecond},
		Timeout: 5 * time.Second,
		Dedup:   dedup,
	})

	handler := mq.HandlerFunc(func(ctx context.Context, m *mq.Message) error {
		if string(m.Body) == "flaky" && m.Attempt == 1 {
			fmt.Printf("%s attempt %d: card service unavailable\n", m.ID, m.Attempt)
			return errors.New("card service unavailable")
		}
		fmt.Printf("%s attempt %d: charged\n", m.ID, m.Attempt)
		if m.ID == "pay-3" {
			cancel() // stop the example
		}
		return nil
	})

	err = c.Producer().Produce(ctx, "payments",
		&mq.Message{ID: "pay-1", Key: "customer-7", Body: []byte("flaky")},
		&mq.Message{ID: "pay-1", Key: "customer-7", Body: []byte("flaky")}, // a duplicate
		&mq.Message{ID: "pay-3", Key: "customer-7"},
	)
	if err != nil {
		log.Fatal(err)
	}
	if err := cons.Consume(ctx, mq.Chain(handler, stack)); err != nil {
		log.Fatal(err)
	}
	// Output:
	// pay-1 attempt 1: card service unavailable
	// pay-1 attempt 2: charged
	// pay-3 attempt 1: charged
}

// Retry counts attempts in m.Attempt and gives up with an error that says
// how many were made and wraps the last one.
func ExampleRetry() {
	errDown := errors.New("database down")
	h := mq.HandlerFunc(func(_ context.Context, m *mq.Message) error {
		fmt.Println("attempt", m.Attempt)
		return errDown
	})
	retry := middleware.Retry(middleware.RetryConfig{
		MaxAttempts:     3, // 1 would mean no retry
		InitialInterval: time.Millisecond,
	})
	err := retry(h).Handle(context.Background(), &mq.Message{ID: "m1", Attempt: 1})
	fmt.Println(errors.Is(err, errDown), errors.Is(err, middleware.ErrRetriesExhausted))
	var re *middleware.RetryError
	if errors.As(err, &re) {
		fmt.Println("attempts:", re.Attempts)
	}
	// Output:
	// attempt 1
	// attempt 2
	// attempt 3
	// true true
	// attempts: 3
}

// Recover turns a panic into a *mq.PanicError carrying the stack.
func ExampleRecover() {
	h := mq.HandlerFunc(func(_ context.Context, m *mq.Message) error {
		fmt.Println(len(m.Body)) // m is nil here: panics
		return nil
	})
	err := middleware.Recover()(h).Handle(context.Background(), nil)
	var pe *mq.PanicError
	fmt.Println(errors.As(err, &pe), len(pe.Stack) > 0)
	fmt.Println(err)
	// Output:
	// true true
	// mq: handler panicked: runtime error: invalid memory address or nil pointer dereference
}
