// Command ordersrouter is examples/orders of the main module written
// against Watermill's Router, for a side-by-side of the code a service
// needs: orders -> [billing] -> invoices -> [notification], JSON payloads
// with CloudEvents attributes, retries, dedup and a poison queue; it
// places three orders and exits once all are notified. It runs on
// Watermill's in-process GoChannel; another broker means another
// Publisher/Subscriber constructor and its config, not a URL.
package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log"
	"os"
	"sync/atomic"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/ThreeDotsLabs/watermill/message/router/middleware"
	"github.com/ThreeDotsLabs/watermill/message/router/plugin"
	"github.com/ThreeDotsLabs/watermill/pubsub/gochannel"
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
	if err := run(context.Background(), 3, os.Stdout); err != nil {
		log.Fatal(err)
	}
}

// event makes a JSON message with binary-mode CloudEvents metadata.
func event(id, source, typ string, v any) (*message.Message, error) {
	b, err := json.Marshal(v)
	if err != nil {
		return nil, err
	}
	m := message.NewMessage(id, b)
	m.Metadata.Set("ce-specversion", "1.0")
	m.Metadata.Set("ce-id", id)
	m.Metadata.Set("ce-source", source)
	m.Metadata.Set("ce-type", typ)
	m.Metadata.Set("content-type", "application/json")
	return m, nil
}

func run(ctx context.Context, n int, w io.Writer) error {
	logger := watermill.NopLogger{}
	pubSub := gochannel.NewGoChannel(gochannel.Config{Persistent: true}, logger)
	defer pubSub.Close()
	router, err := message.NewRouter(message.RouterConfig{}, logger)
	if err != nil {
		return err
	}
	router.AddPlugin(plugin.SignalsHandler)
	poison, err := middleware.PoisonQueue(pubSub, "dead-letters")
	if err != nil {
		return err
	}
	repo, err := middleware.NewMapExpiringKeyRepository(24 * time.Hour)
	if err != nil {
		return err
	}
	dedup := &middleware.Deduplicator{KeyFactory: middleware.NewMessageHasherFromMetadataField("ce-id"), Repository: repo}
	router.AddMiddleware(poison, middleware.Retry{MaxRetries: 3, InitialInterval: 100 * time.Millisecond, Logger: logger}.Middleware,
		dedup.Middleware, middleware.Recoverer)

	router.AddHandler("billing", "orders", pubSub, "invoices", pubSub, func(m *message.Message) ([]*message.Message, error) {
		var o Order
		if err := json.Unmarshal(m.Payload, &o); err != nil {
			return nil, err // retried MaxRetries times, then the poison queue
		}
		out, err := event(m.UUID+"/invoice", "/billing", "com.example.invoice.issued", Invoice{Order: o.ID, Customer: o.Customer, Cents: o.Cents})
		if err != nil {
			return nil, err
		}
		middleware.SetCorrelationID(middleware.MessageCorrelationID(m), out)
		return []*message.Message{out}, nil
	})
	ctx, done := context.WithCancel(ctx)
	defer done()
	var notified atomic.Int32
	router.AddConsumerHandler("notification", "invoices", pubSub, func(m *message.Message) error {
		var inv Invoice
		if err := json.Unmarshal(m.Payload, &inv); err != nil {
			return err
		}
		fmt.Fprintf(w, "notified %s: invoice %s for %s, %d.%02d EUR\n", inv.Customer, m.UUID, inv.Order, inv.Cents/100, inv.Cents%100)
		if notified.Add(1) == int32(n) {
			done()
		}
		return nil
	})

	errs := make(chan error, 1)
	go func() { errs <- router.Run(ctx) }()
	<-router.Running()
	for i := 1; i <= n; i++ {
		m, err := event(fmt.Sprintf("order-%d", i), "/shop", "com.example.order.placed", Order{ID: fmt.Sprintf("order-%d", i), Customer: fmt.Sprintf("customer-%d", i), Cents: 1000*i + 99})
		if err != nil {
			return err
		}
		if err := pubSub.Publish("orders", m); err != nil {
			return err
		}
	}
	return <-errs
}
