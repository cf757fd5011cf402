package mq_test

import (
	"context"
	"errors"
	"log/slog"
	"net/url"
	"sync"
	"testing"
	"time"

	"github.com/mqkit/mq"
	"github.com/mqkit/mq/memory"
)

func TestHooks(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var mu sync.Mutex
	var sent []string
	var seen []mq.DeliveryInfo
	var outcomes []mq.Outcome
	stamp := func(next mq.ProduceFunc) mq.ProduceFunc {
		return func(ctx context.Context, topic string, msgs []*mq.Message) error {
			for _, m := range msgs {
				if m.ID == "" {
					t.Error("produce middleware saw a message without its ID")
				}
				m.SetHeader("stamped", topic)
				mu.Lock()
				sent = append(sent, m.ID)
				mu.Unlock()
			}
			return next(ctx, topic, msgs)
		}
	}
	observe := func(next mq.Handler) mq.Handler {
		return mq.HandlerFunc(func(ctx context.Context, m *mq.Message) error {
			info, ok := mq.DeliveryFrom(ctx)
			if !ok {
				t.Error("no DeliveryInfo inside consume middleware")
				return next.Handle(ctx, m)
			}
			err := next.Handle(ctx, m)
			mu.Lock()
			seen = append(seen, *info)
			outcomes = append(outcomes, info.Outcome())
			mu.Unlock()
			return err
		})
	}
	c, err := mq.Open(ctx, "mem://?group=g&nack_backoff=1ms", mq.WithProduceMiddleware(stamp), mq.WithConsumeMiddleware(observe))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	cons, err := c.Consumer(ctx, "orders")
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Producer().Produce(ctx, "orders", &mq.Message{Key: "k"}, &mq.Message{Key: "k"}); err != nil {
		t.Fatal(err)
	}
	calls := 0
	var got []*mq.Message
	err = cons.Consume(ctx, mq.HandlerFunc(func(ctx context.Context, m *mq.Message) error {
		calls++
		if calls == 1 {
			return errors.New("first attempt fails")
		}
		if calls == 2 {
			mq.SetOutcome(ctx, mq.OutcomeDuplicate)
		}
		got = append(got, m.Clone())
		if len(got) == 2 {
			cancel()
		}
		return nil
	}))
	if err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(sent) != 2 || len(got) != 2 || got[0].Header("stamped") != "orders" {
		t.Fatalf("sent %v, got %d messages (stamped %q)", sent, len(got), got[0].Header("stamped"))
	}
	if len(seen) != 3 {
		t.Fatalf("consume middleware saw %d calls, want 3 (one failed attempt, its retry, the second message)", len(seen))
	}
	for _, info := range seen {
		if info.Scheme != "mem" || info.Topic != "orders" || info.Group != "g" || info.Received.IsZero() {
			t.Errorf("delivery info %+v", info)
		}
	}
	if outcomes[0] != "" || outcomes[1] != mq.OutcomeDuplicate || outcomes[2] != "" {
		t.Errorf("outcomes %q, want one reported for the second call only", outcomes)
	}
}

// TestNoDeliveryInfoWithoutHooks: without consume middleware the consumer
// records nothing per delivery; DeliveryFrom gives only the consumer's
// own scheme, topic and group.
func TestNoDeliveryInfoWithoutHooks(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := mq.Open(ctx, "mem://?group=g")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	cons, err := c.Consumer(ctx, "t")
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Producer().Produce(ctx, "t", &mq.Message{}); err != nil {
		t.Fatal(err)
	}
	called := false
	_ = cons.Consume(ctx, mq.HandlerFunc(func(ctx context.Context, m *mq.Message) error {
		called = true
		info, ok := mq.DeliveryFrom(ctx)
		if !ok || info.Topic != "t" || info.Group != "g" || info.Scheme != "mem" {
			t.Errorf("DeliveryFrom without consume middleware = %+v, %v; want the consumer's topic and group", info, ok)
		} else if info.Partition != "" || info.Offset != "" || !info.Received.IsZero() {
			t.Errorf("per-delivery info recorded without consume middleware: %+v", info)
		}
		mq.SetOutcome(ctx, mq.OutcomeDeadLettered) // a no-op, no panic
		cancel()
		return nil
	}))
	if !called {
		t.Fatal("the handler never ran")
	}
}

// TestProduceMiddlewareGetsCopies: produce middleware writes headers into
// copies, never into the caller's (possibly shared) Headers maps, and the
// size limit counts what it added.
func TestProduceMiddlewareGetsCopies(t *testing.T) {
	ctx := context.Background()
	tag := func(next mq.ProduceFunc) mq.ProduceFunc {
		return func(ctx context.Context, topic string, msgs []*mq.Message) error {
			for _, m := range msgs {
				m.SetHeader("traceparent", "00-0123456789abcdef0123456789abcdef-0123456789abcdef-01")
			}
			return next(ctx, topic, msgs)
		}
	}
	c, err := mq.Open(ctx, "mem://", mq.WithProduceMiddleware(tag))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	shared := map[string]string{"tenant": "t1"}
	a, b := &mq.Message{Headers: shared}, &mq.Message{Headers: shared}
	if err := c.Producer().Produce(ctx, "t", a, b); err != nil {
		t.Fatal(err)
	}
	if len(shared) != 1 || a.ID == "" || b.ID == "" {
		t.Fatalf("caller's map %v, IDs %q %q: want the map untouched and IDs assigned", shared, a.ID, b.ID)
	}
	small := c.Producer(mq.WithMaxMessageBytes(60))
	err = small.Produce(ctx, "t", &mq.Message{ID: "x", Body: []byte("fits without the trace header")})
	if !errors.Is(err, mq.ErrMessageTooLarge) {
		t.Fatalf("a message the middleware made too large: %v, want ErrMessageTooLarge", err)
	}
}

// loggerDriver records the logger Open's context carries.
type loggerDriver struct{ got chan *slog.Logger }

func (d loggerDriver) Open(ctx context.Context, _ *url.URL) (mq.Conn, error) {
	d.got <- mq.LoggerFrom(ctx)
	return memory.NewBroker(memory.Config{}).Conn(), nil
}

// TestBackendGetsClientLogger: a backend logs through the logger given
// to Open with WithLogger (slog.Default() without one).
func TestBackendGetsClientLogger(t *testing.T) {
	d := loggerDriver{got: make(chan *slog.Logger, 2)}
	mq.Register("loggertest", d)
	mine := slog.New(slog.DiscardHandler)
	c, err := mq.Open(context.Background(), "loggertest://", mq.WithLogger(mine))
	if err != nil {
		t.Fatal(err)
	}
	c.Close()
	if got := <-d.got; got != mine {
		t.Error("the backend did not get the client's logger")
	}
	c, err = mq.Open(context.Background(), "loggertest://")
	if err != nil {
		t.Fatal(err)
	}
	c.Close()
	if got := <-d.got; got != slog.Default() {
		t.Error("without WithLogger the backend should get slog.Default()")
	}
}
