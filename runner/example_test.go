package runner_test

import (
	"context"
	"fmt"
	"log"

	"github.com/mqkit/mq"
	_ "github.com/mqkit/mq/memory" // registers mem://
	"github.com/mqkit/mq/middleware"
	"github.com/mqkit/mq/runner"
)

// A service of two routes: billing turns each order into an invoice,
// published before the order is acknowledged, and the notifier reads the
// invoices. Cancelling the context stops both gracefully.
func Example() {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	c, err := mq.Open(ctx, "mem://")
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()

	r := runner.New(c)
	stack := middleware.Stack(middleware.StackConfig{})
	must(r.Handle(runner.Route{
		Name: "billing", Topic: "orders", Group: "billing", Middleware: []mq.Middleware{stack},
		Handler: runner.Publishing(c.Producer(), func(ctx context.Context, m *mq.Message, out *runner.Outputs) error {
			return out.Produce(ctx, "invoices", &mq.Message{Key: m.Key, Body: append([]byte("invoice for "), m.Body...)})
		}),
	}))
	must(r.Handle(runner.Route{
		Name: "notifier", Topic: "invoices", Group: "notifier", Middleware: []mq.Middleware{stack},
		Handler: mq.HandlerFunc(func(ctx context.Context, m *mq.Message) error {
			fmt.Printf("%s: %s (caused by %s)\n", m.ID, m.Body, m.Header(runner.HeaderCausationID))
			cancel() // one is enough for the example
			return nil
		}),
	}))
	if err := c.Producer().Produce(ctx, "orders", &mq.Message{ID: "order-1", Body: []byte("order 1")}); err != nil {
		log.Fatal(err)
	}
	fmt.Println("run:", r.Run(ctx))
	// Output:
	// order-1/0: invoice for order 1 (caused by order-1)
	// run: <nil>
}

// SignalContext stops a runner on SIGINT or SIGTERM; a readiness probe
// sees it through HealthCheck.
func ExampleSignalContext() {
	ctx, stop := runner.SignalContext(context.Background())
	defer stop()
	c, err := mq.Open(ctx, "mem://?group=billing")
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()
	r := runner.New(c)
	must(r.Handle(runner.Route{Topic: "orders", Handler: mq.HandlerFunc(func(context.Context, *mq.Message) error { return nil })}))
	go func() {
		select {
		case <-r.Running():
			fmt.Println("ready:", r.Ready(ctx))
			stop() // as a SIGTERM would
		case <-r.Done(): // Run failed to start
		}
	}()
	fmt.Println("run:", r.Run(ctx))
	fmt.Println("ready:", r.Ready(ctx))
	// Output:
	// ready: <nil>
	// run: <nil>
	// ready: runner: not running
}

func must(err error) {
	if err != nil {
		log.Fatal(err)
	}
}
