package typed_test

import (
	"context"
	"errors"
	"log/slog"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/mqkit/mq"
	"github.com/mqkit/mq/dlq"
	"github.com/mqkit/mq/memory"
	"github.com/mqkit/mq/middleware"
	"github.com/mqkit/mq/runner"
	"github.com/mqkit/mq/typed"
)

const wait = 20 * time.Second

type order struct {
	ID    string `json:"id"`
	Cents int    `json:"cents"`
}

func newClient(t *testing.T) *mq.Client {
	t.Helper()
	b := memory.NewBroker(memory.Config{})
	c := mq.NewClient(b.Conn(), mq.WithGroup("g"), mq.WithNackBackoff(time.Millisecond, 5*time.Millisecond))
	t.Cleanup(func() {
		c.Close()
		b.Close()
	})
	return c
}

// consumeOne consumes topic until h has returned nil once.
func consumeOne(t *testing.T, c *mq.Client, topic string, h mq.Handler) {
	t.Helper()
	cons, err := c.Consumer(context.Background(), topic)
	if err != nil {
		t.Fatal(err)
	}
	defer cons.Close()
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	err = cons.Consume(ctx, mq.HandlerFunc(func(ctx context.Context, m *mq.Message) error {
		err := h.Handle(ctx, m)
		if err == nil {
			cancel()
		}
		return err
	}))
	if err != nil {
		t.Fatal(err)
	}
	if ctx.Err() == context.DeadlineExceeded {
		t.Fatal("nothing was handled")
	}
}

// A typed producer and a typed handler round-trip a value over a broker
// as JSON, with its key, ID and content type.
func TestJSONRoundTrip(t *testing.T) {
	c := newClient(t)
	codec := typed.JSON[order]()
	p := &typed.Producer[order]{
		Publisher: c.Producer(), Topic: "orders", Codec: codec,
		Key: func(o order) string { return "cust-" + o.ID },
		ID:  func(o order) string { return "order-" + o.ID },
	}
	if err := p.Produce(context.Background(), order{ID: "7", Cents: 1250}); err != nil {
		t.Fatal(err)
	}
	consumeOne(t, c, "orders", typed.Handler(codec, func(_ context.Context, o order, m *mq.Message) error {
		if o != (order{ID: "7", Cents: 1250}) {
			t.Errorf("decoded %+v", o)
		}
		if m.ID != "order-7" || m.Key != "cust-7" || m.Header(typed.HeaderContentType) != "application/json" {
			t.Errorf("message ID %q key %q content type %q", m.ID, m.Key, m.Header(typed.HeaderContentType))
		}
		return nil
	}))
}

// Protocol Buffers messages of the well-known types round-trip, with the
// protobuf content type.
func TestProtoRoundTrip(t *testing.T) {
	c := newClient(t)
	sv := &typed.Producer[*wrapperspb.StringValue]{Publisher: c.Producer(), Topic: "names", Codec: typed.Proto[*wrapperspb.StringValue]()}
	if err := sv.Produce(context.Background(), wrapperspb.String("Ada"), wrapperspb.String("")); err != nil {
		t.Fatal(err)
	}
	var got []string
	consumeOne(t, c, "names", typed.Handler(typed.Proto[*wrapperspb.StringValue](), func(_ context.Context, v *wrapperspb.StringValue, m *mq.Message) error {
		if m.Header(typed.HeaderContentType) != "application/protobuf" {
			t.Errorf("content type %q", m.Header(typed.HeaderContentType))
		}
		got = append(got, v.GetValue())
		if len(got) < 2 {
			return errors.New("one more") // comes back: the second one is handled after it
		}
		return nil
	}))
	if len(got) < 2 || got[0] != "Ada" {
		t.Errorf("decoded %q", got)
	}

	st, err := structpb.NewStruct(map[string]any{"sku": "SKU-1", "qty": 3.0, "tags": []any{"a", "b"}})
	if err != nil {
		t.Fatal(err)
	}
	codec := typed.Proto[*structpb.Struct]()
	m, err := typed.Encode(codec, st)
	if err != nil {
		t.Fatal(err)
	}
	back, err := typed.Decode(codec, m)
	if err != nil {
		t.Fatal(err)
	}
	if !proto.Equal(back, st) {
		t.Errorf("decoded %v, want %v", back, st)
	}
}

// Decode failures are permanent and say why; the handler is not called.
func TestDecodeFailuresArePermanent(t *testing.T) {
	jsonCodec := typed.JSON[order]()
	protoCodec := typed.Proto[*wrapperspb.StringValue]()
	protoBody, _ := typed.Encode(protoCodec, wrapperspb.String("x"))
	for name, tc := range map[string]struct {
		m    *mq.Message
		want string
		h    mq.Handler
	}{
		"malformed JSON":      {&mq.Message{Body: []byte(`{"id":`)}, "unexpected end of JSON input", nil},
		"empty JSON body":     {&mq.Message{}, "unexpected end of JSON input", nil},
		"JSON of wrong shape": {&mq.Message{Body: []byte(`{"cents":"many"}`)}, "cannot unmarshal", nil},
		"protobuf as JSON":    {protoBody, `content type "application/protobuf"`, nil},
		"bad content type":    {&mq.Message{Body: []byte(`{}`), Headers: map[string]string{"content-type": "¿"}}, "content type", nil},
		"garbage protobuf":    {&mq.Message{Body: []byte{0xff, 0xff, 0xff}}, "cannot parse", typed.Handler(protoCodec, func(context.Context, *wrapperspb.StringValue, *mq.Message) error { return nil })},
		"JSON as protobuf":    {&mq.Message{Body: []byte(`{}`), Headers: map[string]string{"content-type": "application/json"}}, "want application/protobuf", typed.Handler(protoCodec, func(context.Context, *wrapperspb.StringValue, *mq.Message) error { return nil })},
	} {
		called := false
		h := tc.h
		if h == nil {
			h = typed.Handler(jsonCodec, func(context.Context, order, *mq.Message) error {
				called = true
				return nil
			})
		}
		err := h.Handle(context.Background(), tc.m)
		if !mq.IsPermanent(err) || !errors.Is(err, typed.ErrDecode) {
			t.Errorf("%s: %v, want a permanent error wrapping ErrDecode", name, err)
		}
		if err != nil && !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %q does not say %q", name, err, tc.want)
		}
		if called {
			t.Errorf("%s: the handler was called", name)
		}
	}
}

// Content types that name the codec's media type with parameters, its
// aliases, or no content type at all decode.
func TestDecodeAcceptsCompatibleContentTypes(t *testing.T) {
	for _, ct := range []string{"", "application/json", "Application/JSON; charset=utf-8", "application/vnd.shop.order+json"} {
		m := &mq.Message{Body: []byte(`{"id":"1"}`), Headers: map[string]string{"content-type": ct}}
		if ct == "" {
			m.Headers = nil
		}
		if _, err := typed.Decode(typed.JSON[order](), m); err != nil {
			t.Errorf("JSON with content type %q: %v", ct, err)
		}
	}
	b, _ := proto.Marshal(wrapperspb.String("x"))
	m := &mq.Message{Body: b, Headers: map[string]string{"Content-Type": "application/x-protobuf"}}
	if v, err := typed.Decode(typed.Proto[*wrapperspb.StringValue](), m); err != nil || v.GetValue() != "x" {
		t.Errorf("x-protobuf: %v, %v", v, err)
	}
}

// On a broker behind the middleware stack, a message that does not
// decode is handled once and dead-lettered with the decode error, not
// retried or redelivered.
func TestDecodeFailureGoesToTheDLQ(t *testing.T) {
	c := newClient(t)
	deadLetter, err := dlq.New(dlq.Config{Client: c, Group: "g", Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	calls := 0
	h := mq.Chain(typed.Handler(typed.JSON[order](), func(context.Context, order, *mq.Message) error { return nil }),
		func(next mq.Handler) mq.Handler {
			return mq.HandlerFunc(func(ctx context.Context, m *mq.Message) error {
				calls++
				return next.Handle(ctx, m)
			})
		})
	h = mq.Chain(h, middleware.Stack(middleware.StackConfig{DeadLetter: deadLetter, Retry: middleware.RetryConfig{MaxAttempts: 5, InitialInterval: time.Millisecond}}))
	if err := dlq.Ensure(context.Background(), c, "orders.dlq"); err != nil {
		t.Fatal(err)
	}
	if err := c.Producer().Produce(context.Background(), "orders", &mq.Message{ID: "bad-1", Body: []byte("not json")}); err != nil {
		t.Fatal(err)
	}
	consumeOne(t, c, "orders", h)
	if calls != 1 {
		t.Errorf("the handler ran %d times for a message that cannot decode, want 1", calls)
	}
	letters, err := dlq.List(context.Background(), c, "orders.dlq", 0, dlq.WithIdle(200*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	if len(letters) != 1 {
		t.Fatalf("%d dead letters, want 1", len(letters))
	}
	info := dlq.Describe(letters[0])
	if letters[0].ID != "bad-1" || info.Reason != dlq.ReasonPermanent || !strings.Contains(info.Error, "typed: cannot decode message") {
		t.Errorf("dead letter %s: reason %q error %q", letters[0].ID, info.Reason, info.Error)
	}
}

// A typed producer over a publishing handler's outputs adds to them, with
// IDs derived from the input's, also as the CloudEvents id.
func TestProducerViaHandlerOutputs(t *testing.T) {
	invoices := &typed.Producer[order]{Topic: "invoices", Codec: typed.JSON[order](),
		Event: func(order) typed.Event { return typed.Event{Source: "/billing", Type: "com.example.invoice.issued"} }}
	var sent []*mq.Message
	pub := publisherFunc(func(_ context.Context, topic string, msgs ...*mq.Message) error {
		sent = append(sent, msgs...)
		return nil
	})
	h := runner.Publishing(pub, func(ctx context.Context, m *mq.Message, out *runner.Outputs) error {
		return invoices.Via(out).Produce(ctx, order{ID: "i1"}, order{ID: "i2"})
	})
	if err := h.Handle(context.Background(), &mq.Message{ID: "o1"}); err != nil {
		t.Fatal(err)
	}
	if len(sent) != 2 {
		t.Fatalf("sent %d, want 2", len(sent))
	}
	for i, m := range sent {
		want := []string{"o1/0", "o1/1"}[i]
		if m.ID != want || m.Header("ce-id") != want {
			t.Errorf("output %d: ID %q ce-id %q, want %q for both", i, m.ID, m.Header("ce-id"), want)
		}
	}
}

type publisherFunc func(ctx context.Context, topic string, msgs ...*mq.Message) error

func (f publisherFunc) Produce(ctx context.Context, topic string, msgs ...*mq.Message) error {
	return f(ctx, topic, msgs...)
}
