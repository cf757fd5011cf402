package integration_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/mqkit/mq"
	_ "github.com/mqkit/mq/memory"
)

// quickStart is the README's Quick start, line for line, with the URL
// passed in instead of read from MQ_URL, the topic ("orders" there) made
// unique per run on a shared broker, and bill supplied by the test.
func quickStart(ctx context.Context, url, orders string, bill func(context.Context, []byte) error) error {
	c, err := mq.Open(ctx, url) // e.g. kafka://k1:9092/?group=billing&create_topics=true
	if err != nil {
		return err
	}
	defer c.Close()

	if err := c.Producer().Produce(ctx, orders,
		&mq.Message{Key: "customer-42", Body: []byte(`{"order":7}`)}); err != nil {
		return err
	}

	cons, err := c.Consumer(ctx, orders, mq.WithConcurrency(16))
	if err != nil {
		return err
	}
	return cons.Consume(ctx, mq.HandlerFunc(func(ctx context.Context, m *mq.Message) error {
		return bill(ctx, m.Body) // nil acks; an error retries this message, holding back only its key
	}))
}

// TestQuickStart runs the README's Quick start on every backend, on a
// fresh topic, as a new user would: it produces before any consumer group
// exists, then consumes. The order must arrive.
func TestQuickStart(t *testing.T) {
	all := append([]target{{name: "mem"}}, targets...)
	for _, tg := range all {
		t.Run(tg.name, func(t *testing.T) {
			url, topic := "mem://?group=billing", "orders"
			if tg.shared != nil {
				if testing.Short() {
					t.Skip("needs real brokers")
				}
				b := tg.shared(t)
				params := map[string][]string{"group": {"billing"}}
				for k, v := range tg.params {
					params[k] = v
				}
				url, topic = withParams(t, b.URL, params), "orders-"+mq.NewID()
			}
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
			defer cancel()
			billed := make(chan string, 1)
			err := quickStart(ctx, url, topic, func(_ context.Context, body []byte) error {
				billed <- string(body)
				cancel() // the one order is in: stop the service
				return nil
			})
			if err != nil && !errors.Is(err, context.Canceled) {
				t.Fatalf("Quick start: %v", err)
			}
			select {
			case got := <-billed:
				if got != `{"order":7}` {
					t.Fatalf("billed %q", got)
				}
			default:
				t.Fatal("the Quick start ended without billing the order it produced")
			}
		})
	}
}
