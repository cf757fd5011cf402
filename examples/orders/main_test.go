package main

import (
	"bytes"
	"context"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/mqkit/mq/integration/testbed"
)

// runAndCheck runs the example on url and checks that every order was
// billed and notified once, under the invoice ID derived from the order's.
func runAndCheck(t *testing.T, url string, timeout time.Duration) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	var out bytes.Buffer
	if err := run(ctx, url, 3, &out); err != nil {
		t.Fatalf("run: %v\n%s", err, out.String())
	}
	if ctx.Err() != nil {
		t.Fatalf("the example did not finish within %v:\n%s", timeout, out.String())
	}
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	slices.Sort(lines)
	want := []string{
		"notified customer-1: invoice order-1/0 for order-1, 10.99 EUR",
		"notified customer-2: invoice order-2/0 for order-2, 20.99 EUR",
		"notified customer-3: invoice order-3/0 for order-3, 30.99 EUR",
	}
	if !slices.Equal(lines, want) {
		t.Errorf("output\n%s\nwant\n%s", strings.Join(lines, "\n"), strings.Join(want, "\n"))
	}
}

// The example runs on the embedded broker, as `go run ./examples/orders`
// does.
func TestOrdersOnMemory(t *testing.T) {
	runAndCheck(t, "mem://", 30*time.Second)
}

// The same service runs unchanged on the real brokers, given their URL.
func TestOrdersOnBrokers(t *testing.T) {
	if testing.Short() {
		t.Skip("starts Redis, RabbitMQ and Kafka containers")
	}
	for _, tc := range []struct {
		name  string
		start func(testing.TB, ...testbed.Option) *testbed.Broker
		query string
	}{
		{"redis", testbed.Redis, ""},
		{"rabbitmq", testbed.RabbitMQ, ""},
		{"kafka", testbed.Kafka, "/?create_topics=true"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b := tc.start(t)
			runAndCheck(t, b.URL+tc.query, 2*time.Minute)
		})
	}
}
