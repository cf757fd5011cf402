// Command orders runs orders -> [billing] -> invoices -> [notification] on
// JSON CloudEvents, behind dead-lettering, retries and dedup: it places three
// orders and exits once all are notified.
//
//	go run ./examples/orders                                                   # mem://, no broker
//	MQ_URL='kafka://127.0.0.1:9092/?create_topics=true' go run ./examples/orders # or amqp://, redis://
package main

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"log"
	"os"
	"sync/atomic"

	"github.com/mqkit/mq"
	"github.com/mqkit/mq/dlq"
	"github.com/mqkit/mq/idempotency"
	"github.com/mqkit/mq/middleware"
	"github.com/mqkit/mq/runner"
	"github.com/mqkit/mq/typed"
)

type (
	// Order is placed by the shop.
	Order struct {
		ID, Customer string
		Cents        int
	}
	// Invoice is what billing makes of an order.
	Invoice struct {
		Order, Customer string
		Cents           int
	}
)

func main() {
	ctx, stop := runner.SignalContext(context.Background())
	defer stop()
	if err := run(ctx, cmp.Or(os.Getenv("MQ_URL"), "mem://"), 3, os.Stdout); err != nil {
		log.Fatal(err)
	}
}

// run places n orders and runs the pipeline until all are notified or ctx ends.
func run(ctx context.Context, url string, n int, w io.Writer) error {
	c, err := mq.Open(ctx, url)
	if err != nil {
		return err
	}
	defer c.Close()
	orders := &typed.Producer[Order]{Publisher: c.Producer(), Topic: "orders", Codec: typed.JSON[Order](),
		ID: func(o Order) string { return o.ID }, Key: func(o Order) string { return o.Customer },
		Event: func(Order) typed.Event { return typed.Event{Source: "/shop", Type: "com.example.order.placed"} }}
	invoices := &typed.Producer[Invoice]{Topic: "invoices", Codec: typed.JSON[Invoice](), // sent Via billing's outputs
		Key:   func(i Invoice) string { return i.Customer },
		Event: func(Invoice) typed.Event { return typed.Event{Source: "/billing", Type: "com.example.invoice.issued"} }}

	billing := runner.Publishing(c.Producer(), func(ctx context.Context, m *mq.Message, out *runner.Outputs) error {
		o, err := typed.Decode(orders.Codec, m)
		if err != nil {
			return err // permanent: dead-lettered with the decode error
		}
		return invoices.Via(out).Produce(ctx, Invoice{Order: o.ID, Customer: o.Customer, Cents: o.Cents})
	})
	ctx, done := context.WithCancel(ctx)
	defer done()
	var notified atomic.Int32
	notification := typed.Handler(invoices.Codec, func(ctx context.Context, inv Invoice, m *mq.Message) error {
		fmt.Fprintf(w, "notified %s: invoice %s for %s, %d.%02d EUR\n", inv.Customer, m.ID, inv.Order, inv.Cents/100, inv.Cents%100)
		if notified.Add(1) == int32(n) {
			done() // all notified: stop the service
		}
		return nil
	})

	r := runner.New(c)
	for _, rt := range []runner.Route{
		{Name: "billing", Topic: "orders", Group: "billing", Handler: billing},
		{Name: "notification", Topic: "invoices", Group: "notification", Handler: notification},
	} {
		deadLetter, err1 := dlq.New(dlq.Config{Client: c, Group: rt.Group, MaxAttempts: 10})
		dedup, err2 := idempotency.New(idempotency.NewMemoryStore(idempotency.MemoryStoreConfig{}), idempotency.Config{Namespace: rt.Group})
		rt.Middleware = []mq.Middleware{middleware.Stack(middleware.StackConfig{DeadLetter: deadLetter, Dedup: dedup})}
		if err := errors.Join(err1, err2, r.Handle(rt)); err != nil {
			return err
		}
	}
	for i := 1; i <= n; i++ {
		if err := orders.Produce(ctx, Order{ID: fmt.Sprintf("order-%d", i), Customer: fmt.Sprintf("customer-%d", i), Cents: 1000*i + 99}); err != nil {
			return err
		}
	}
	return r.Run(ctx)
}
