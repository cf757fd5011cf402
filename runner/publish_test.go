package runner_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/mqkit/mq"
	"github.com/mqkit/mq/idempotency"
	"github.com/mqkit/mq/middleware"
	"github.com/mqkit/mq/runner"
)

// recorder is a Publisher that records what it was asked to send, and
// fails the first calls while fail > 0.
type recorder struct {
	mu    sync.Mutex
	fail  int
	err   error
	calls []string // "topic:id,id"
	sent  []*mq.Message
	ctxs  []context.Context
}

func (r *recorder) Produce(ctx context.Context, topic string, msgs ...*mq.Message) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.fail > 0 {
		r.fail--
		return r.err
	}
	ids := make([]string, len(msgs))
	for i, m := range msgs {
		ids[i] = m.ID
		r.sent = append(r.sent, m)
	}
	r.calls = append(r.calls, fmt.Sprintf("%s:%v", topic, ids))
	r.ctxs = append(r.ctxs, ctx)
	return nil
}

// Outputs go out after the handler returned nil, in order, batched per
// run of one topic, with IDs derived from the input's and the causation
// and correlation headers; with the handler's context.
func TestPublishingPublishesOutputsInOrderWithDerivedIDs(t *testing.T) {
	rec := &recorder{}
	type ctxKey struct{}
	var during int
	h := runner.Publishing(rec, func(ctx context.Context, m *mq.Message, out *runner.Outputs) error {
		if err := out.Produce(ctx, "invoices", &mq.Message{Body: []byte("a")}, &mq.Message{Body: []byte("b")}); err != nil {
			return err
		}
		if err := out.Produce(ctx, "audit", &mq.Message{ID: out.ID("audit")}); err != nil {
			return err
		}
		if err := out.Produce(ctx, "invoices", &mq.Message{Headers: map[string]string{runner.HeaderCorrelationID: "own"}}); err != nil {
			return err
		}
		rec.mu.Lock()
		during = len(rec.calls)
		rec.mu.Unlock()
		return nil
	})
	ctx := context.WithValue(context.Background(), ctxKey{}, "handler's")
	in := &mq.Message{ID: "order-7", Topic: "orders"}
	if err := h.Handle(ctx, in); err != nil {
		t.Fatal(err)
	}
	if during != 0 {
		t.Errorf("%d Produce calls while the handler ran; want none before it returns", during)
	}
	want := []string{"invoices:[order-7/0 order-7/1]", "audit:[order-7/audit]", "invoices:[order-7/2]"}
	if !slices.Equal(rec.calls, want) {
		t.Errorf("Produce calls %q, want %q", rec.calls, want)
	}
	for i, m := range rec.sent {
		if m.Header(runner.HeaderCausationID) != "order-7" {
			t.Errorf("output %d causation %q, want order-7", i, m.Header(runner.HeaderCausationID))
		}
		wantCorr := "order-7"
		if i == 3 {
			wantCorr = "own" // set by the handler: kept
		}
		if got := m.Header(runner.HeaderCorrelationID); got != wantCorr {
			t.Errorf("output %d correlation %q, want %q", i, got, wantCorr)
		}
	}
	for _, c := range rec.ctxs {
		if c.Value(ctxKey{}) != "handler's" {
			t.Error("outputs were not produced with the handler's context")
		}
	}
}

// A correlation ID follows the messages of one original over every hop,
// while the causation ID names the direct cause.
func TestPublishingCorrelationAcrossHops(t *testing.T) {
	rec := &recorder{}
	hop := runner.Publishing(rec, func(ctx context.Context, m *mq.Message, out *runner.Outputs) error {
		return out.Produce(ctx, "next", &mq.Message{})
	})
	if err := hop.Handle(context.Background(), &mq.Message{ID: "o1"}); err != nil {
		t.Fatal(err)
	}
	first := rec.sent[0]
	if err := hop.Handle(context.Background(), first); err != nil {
		t.Fatal(err)
	}
	second := rec.sent[1]
	if second.ID != "o1/0/0" || second.Header(runner.HeaderCausationID) != "o1/0" || second.Header(runner.HeaderCorrelationID) != "o1" {
		t.Errorf("second hop: ID %q causation %q correlation %q; want o1/0/0, o1/0, o1",
			second.ID, second.Header(runner.HeaderCausationID), second.Header(runner.HeaderCorrelationID))
	}
}

// A handler that fails publishes nothing; Outputs used after the handler
// returned fail with mq.ErrClosed; a bad output is refused at once.
func TestPublishingFailedHandlerPublishesNothing(t *testing.T) {
	rec := &recorder{}
	boom := errors.New("card declined")
	var kept *runner.Outputs
	h := runner.Publishing(rec, func(ctx context.Context, m *mq.Message, out *runner.Outputs) error {
		kept = out
		if err := out.Produce(ctx, "", &mq.Message{}); !errors.Is(err, mq.ErrInvalidMessage) {
			t.Errorf("empty topic: %v, want mq.ErrInvalidMessage", err)
		}
		if err := out.Produce(ctx, "x", nil); !errors.Is(err, mq.ErrInvalidMessage) {
			t.Errorf("nil message: %v, want mq.ErrInvalidMessage", err)
		}
		_ = out.Produce(ctx, "invoices", &mq.Message{})
		if out.Len() != 1 {
			t.Errorf("Len = %d, want 1", out.Len())
		}
		return boom
	})
	if err := h.Handle(context.Background(), &mq.Message{ID: "o1"}); !errors.Is(err, boom) {
		t.Fatalf("Handle = %v, want the handler's error", err)
	}
	if len(rec.calls) != 0 {
		t.Errorf("published %q for a failed handler", rec.calls)
	}
	if err := kept.Produce(context.Background(), "late", &mq.Message{}); !errors.Is(err, mq.ErrClosed) {
		t.Errorf("Produce after return = %v, want mq.ErrClosed", err)
	}
}

// A failed publish fails the handling, with the publisher's error
// visible (mq.ErrUnavailable: retry middleware waits without using up
// attempts); the input comes back, the handler runs again and publishes
// the same output IDs.
func TestPublishFailureRedeliversWithTheSameOutputIDs(t *testing.T) {
	c := newClient(t, nil)
	rec := &recorder{fail: 2, err: fmt.Errorf("broker down: %w", mq.ErrUnavailable)}
	runs := 0
	done := make(chan struct{})
	r := runner.New(c)
	if err := r.Handle(runner.Route{Name: "billing", Topic: "orders", Group: "billing",
		Handler: runner.Publishing(rec, func(ctx context.Context, m *mq.Message, out *runner.Outputs) error {
			runs++
			return out.Produce(ctx, "invoices", &mq.Message{}, &mq.Message{})
		}),
		Middleware: []mq.Middleware{func(next mq.Handler) mq.Handler {
			return mq.HandlerFunc(func(ctx context.Context, m *mq.Message) error {
				err := next.Handle(ctx, m)
				if err != nil && !errors.Is(err, mq.ErrUnavailable) {
					t.Errorf("publish error %v does not wrap mq.ErrUnavailable", err)
				}
				if err == nil {
					close(done)
				}
				return err
			})
		}},
	}); err != nil {
		t.Fatal(err)
	}
	stop := start(t, r)
	produce(t, c, "orders", &mq.Message{ID: "o9"})
	select {
	case <-done:
	case <-time.After(wait):
		t.Fatal("the order was never handled")
	}
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	if runs != 3 {
		t.Errorf("handler ran %d times, want 3 (two failed publishes, one that worked)", runs)
	}
	if want := []string{"invoices:[o9/0 o9/1]"}; !slices.Equal(rec.calls, want) {
		t.Errorf("published %q, want %q", rec.calls, want)
	}
}

// The at-least-once consequence and how dedup absorbs it: billing's ack
// of an order is lost after its invoice was published, so the order comes
// back and billing publishes the invoice again, under the same ID; the
// notifier, behind dedup, sends one notification.
func TestRehandledOutputsAreDedupedDownstream(t *testing.T) {
	c := newClient(t, nil)
	var mu sync.Mutex
	billed, invoiceDeliveries := 0, map[string]int{}
	notified := map[string]int{}
	allDone := make(chan struct{})

	lostAck := func(next mq.Handler) mq.Handler { // the first ack of each order is "lost"
		lost := map[string]bool{}
		return mq.HandlerFunc(func(ctx context.Context, m *mq.Message) error {
			if err := next.Handle(ctx, m); err != nil {
				return err
			}
			mu.Lock()
			defer mu.Unlock()
			if !lost[m.ID] {
				lost[m.ID] = true
				return errors.New("process died before the ack")
			}
			return nil
		})
	}
	dedup, err := idempotency.New(idempotency.NewMemoryStore(idempotency.MemoryStoreConfig{}), idempotency.Config{Namespace: "notifier"})
	if err != nil {
		t.Fatal(err)
	}
	countDeliveries := func(next mq.Handler) mq.Handler {
		return mq.HandlerFunc(func(ctx context.Context, m *mq.Message) error {
			mu.Lock()
			invoiceDeliveries[m.ID]++
			mu.Unlock()
			return next.Handle(ctx, m)
		})
	}
	r := runner.New(c)
	routes := []runner.Route{{
		Name: "billing", Topic: "orders", Group: "billing",
		Middleware: []mq.Middleware{lostAck, middleware.Stack(middleware.StackConfig{DisableRetry: true})},
		Handler: runner.Publishing(c.Producer(), func(ctx context.Context, m *mq.Message, out *runner.Outputs) error {
			mu.Lock()
			billed++
			mu.Unlock()
			return out.Produce(ctx, "invoices", &mq.Message{Key: m.Key, Body: append([]byte("invoice for "), m.Body...)})
		}),
	}, {
		Name: "notifier", Topic: "invoices", Group: "notifier",
		Middleware: []mq.Middleware{countDeliveries, middleware.Stack(middleware.StackConfig{Dedup: dedup})},
		Handler: mq.HandlerFunc(func(_ context.Context, m *mq.Message) error {
			mu.Lock()
			defer mu.Unlock()
			notified[m.ID]++
			if len(notified) == 3 {
				close(allDone)
			}
			return nil
		}),
	}}
	for _, rt := range routes {
		if err := r.Handle(rt); err != nil {
			t.Fatal(err)
		}
	}
	stop := start(t, r)
	produce(t, c, "orders", &mq.Message{ID: "o1", Body: []byte("o1")}, &mq.Message{ID: "o2", Body: []byte("o2")}, &mq.Message{ID: "o3", Body: []byte("o3")})
	select {
	case <-allDone:
	case <-time.After(wait):
		t.Fatal("not every invoice was notified")
	}
	// Wait for the second copies to be delivered (and skipped).
	deadline := time.Now().Add(wait)
	for {
		mu.Lock()
		n := 0
		for _, d := range invoiceDeliveries {
			n += d
		}
		mu.Unlock()
		if n >= 6 || time.Now().After(deadline) {
			break
		}
		time.Sleep(5 * time.Millisecond)
	}
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	defer mu.Unlock()
	if billed != 6 {
		t.Errorf("billing ran %d times, want 6 (every order twice)", billed)
	}
	for _, id := range []string{"o1/0", "o2/0", "o3/0"} {
		if invoiceDeliveries[id] != 2 {
			t.Errorf("invoice %s delivered %d times, want 2 (published by both runs)", id, invoiceDeliveries[id])
		}
		if notified[id] != 1 {
			t.Errorf("invoice %s notified %d times, want 1 (dedup skips the copy)", id, notified[id])
		}
	}
	if len(notified) != 3 {
		t.Errorf("notified %v, want exactly the three derived invoice IDs", notified)
	}
}

// The publishing handler sits inside dedup: when the publish fails, dedup
// releases its claim, so the redelivery runs the handler and publishes,
// rather than skipping a message recorded done whose outputs never left.
func TestDedupCompletesOnlyAfterOutputsArePublished(t *testing.T) {
	rec := &recorder{fail: 1, err: errors.New("publish failed")}
	dedup, err := idempotency.New(idempotency.NewMemoryStore(idempotency.MemoryStoreConfig{}), idempotency.Config{Namespace: "billing"})
	if err != nil {
		t.Fatal(err)
	}
	h := mq.Chain(runner.Publishing(rec, func(ctx context.Context, m *mq.Message, out *runner.Outputs) error {
		return out.Produce(ctx, "invoices", &mq.Message{})
	}), middleware.Stack(middleware.StackConfig{Dedup: dedup, DisableRetry: true}))
	in := &mq.Message{ID: "o1", Topic: "orders", Attempt: 1}
	if err := h.Handle(context.Background(), in); err == nil {
		t.Fatal("a failed publish was not an error")
	}
	if err := h.Handle(context.Background(), in); err != nil {
		t.Fatal(err)
	}
	if want := []string{"invoices:[o1/0]"}; !slices.Equal(rec.calls, want) {
		t.Errorf("published %q, want %q", rec.calls, want)
	}
}

// Outputs derived from an input whose ID the backend had to derive (not
// unique) say so, so that dedup downstream does not trust them either.
func TestDerivedIDsOfANotUniqueInputAreMarked(t *testing.T) {
	rec := &recorder{}
	h := runner.Publishing(rec, func(ctx context.Context, m *mq.Message, out *runner.Outputs) error {
		return out.Produce(ctx, "next", &mq.Message{}, &mq.Message{ID: "chosen"})
	})
	in := &mq.Message{ID: "derived", Headers: map[string]string{mq.HeaderIDNotUnique: "true"}}
	if err := h.Handle(context.Background(), in); err != nil {
		t.Fatal(err)
	}
	if rec.sent[0].Header(mq.HeaderIDNotUnique) != "true" {
		t.Error("an ID derived from a not-unique ID was not marked not unique")
	}
	if rec.sent[1].Header(mq.HeaderIDNotUnique) != "" {
		t.Error("an ID the handler chose was marked not unique")
	}
}

// The outputs are produced with the context the consumer gave the
// handler, the path trace propagation takes: what consume middleware puts
// in it (mqotel's process span) reaches the produce middleware that
// writes the outputs' headers (mqotel's traceparent).
func TestOutputsCarryTheHandlersContextToProduceMiddleware(t *testing.T) {
	type spanKey struct{}
	c := newClient(t, nil,
		mq.WithConsumeMiddleware(func(next mq.Handler) mq.Handler {
			return mq.HandlerFunc(func(ctx context.Context, m *mq.Message) error {
				return next.Handle(context.WithValue(ctx, spanKey{}, "span-of-"+m.ID), m)
			})
		}),
		mq.WithProduceMiddleware(func(next mq.ProduceFunc) mq.ProduceFunc {
			return func(ctx context.Context, topic string, msgs []*mq.Message) error {
				if s, ok := ctx.Value(spanKey{}).(string); ok {
					for _, m := range msgs {
						m.SetHeader("traceparent", s)
					}
				}
				return next(ctx, topic, msgs)
			}
		}))
	got := make(chan string, 1)
	r := runner.New(c)
	for _, rt := range []runner.Route{
		{Topic: "orders", Group: "billing", Handler: runner.Publishing(c.Producer(), func(ctx context.Context, m *mq.Message, out *runner.Outputs) error {
			return out.Produce(ctx, "invoices", &mq.Message{})
		})},
		{Topic: "invoices", Group: "notifier", Handler: mq.HandlerFunc(func(_ context.Context, m *mq.Message) error {
			got <- m.ID + " " + m.Header("traceparent")
			return nil
		})},
	} {
		if err := r.Handle(rt); err != nil {
			t.Fatal(err)
		}
	}
	stop := start(t, r)
	produce(t, c, "orders", &mq.Message{ID: "o1"})
	if s := recv(t, got); s != "o1/0 span-of-o1" {
		t.Errorf("invoice arrived as %q, want o1/0 carrying the context of o1's handler", s)
	}
	if err := stop(); err != nil {
		t.Fatal(err)
	}
}
