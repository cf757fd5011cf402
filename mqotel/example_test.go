package mqotel_test

import (
	"context"
	"fmt"
	"log"

	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"

	"github.com/mqkit/mq"
	_ "github.com/mqkit/mq/memory"
	"github.com/mqkit/mq/mqotel"
)

// A producer and a consumer traced end to end: the send span's context
// travels in the message's traceparent header, and the process span links
// to it.
func Example() {
	ctx := context.Background()
	spans := tracetest.NewSpanRecorder() // a real service uses an exporter here
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(spans))
	defer tp.Shutdown(ctx)

	inst := mqotel.New(mqotel.WithTracerProvider(tp), mqotel.WithSystem("inmemory"))
	c, err := mq.Open(ctx, "mem://?group=billing", inst.Options()...)
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()
	orders, err := c.Consumer(ctx, "orders")
	if err != nil {
		log.Fatal(err)
	}
	if err := c.Producer().Produce(ctx, "orders", &mq.Message{Key: "customer-42", Body: []byte(`{"order":7}`)}); err != nil {
		log.Fatal(err)
	}
	cctx, stop := context.WithCancel(ctx)
	err = orders.Consume(cctx, mq.HandlerFunc(func(ctx context.Context, m *mq.Message) error {
		defer stop()
		fmt.Println("handled a message with a traceparent:", m.Header("traceparent") != "")
		return nil
	}))
	if err != nil {
		log.Fatal(err)
	}
	for _, s := range spans.Ended() {
		fmt.Printf("%s (%v), %d link(s)\n", s.Name(), s.SpanKind(), len(s.Links()))
	}
	// Output:
	// handled a message with a traceparent: true
	// send orders (producer), 0 link(s)
	// process orders (consumer), 1 link(s)
}

// Lag and oldest-message age per partition, polled through Client.Lag
// whenever the metrics are collected.
func ExampleInstrumentation_ObserveLag() {
	ctx := context.Background()
	inst := mqotel.New() // the global MeterProvider: set it with otel.SetMeterProvider, or use mqprom
	c, err := mq.Open(ctx, "mem://", inst.Options()...)
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()
	stop := inst.ObserveLag(c, "orders", "billing")
	defer stop()
	// Output:
}
