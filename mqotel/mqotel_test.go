package mqotel_test

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"sync"
	"testing"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/propagation"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"
	tracenoop "go.opentelemetry.io/otel/trace/noop"

	"github.com/mqkit/mq"
	"github.com/mqkit/mq/dlq"
	"github.com/mqkit/mq/idempotency"
	"github.com/mqkit/mq/memory"
	"github.com/mqkit/mq/middleware"
	"github.com/mqkit/mq/mqotel"
)

// rig is a mem:// client instrumented into a span recorder and a manual
// metric reader.
type rig struct {
	spans  *tracetest.SpanRecorder
	tp     *sdktrace.TracerProvider
	reader *sdkmetric.ManualReader
	inst   *mqotel.Instrumentation
	c      *mq.Client

	mu   sync.Mutex
	sent map[string]map[string]string // the headers sent, by message ID
}

// headers returns the headers message id was sent with: the producer
// hands produce middleware copies, so the caller's message never has them.
func (r *rig) headers(id string) map[string]string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.sent[id]
}

// capture is produce middleware inside the instrumentation's that records
// the headers of what is sent.
func (r *rig) capture(next mq.ProduceFunc) mq.ProduceFunc {
	return func(ctx context.Context, topic string, msgs []*mq.Message) error {
		r.mu.Lock()
		for _, m := range msgs {
			r.sent[m.ID] = maps.Clone(m.Headers)
		}
		r.mu.Unlock()
		return next(ctx, topic, msgs)
	}
}

func newRig(t *testing.T, opts ...mqotel.Option) *rig {
	t.Helper()
	r := &rig{spans: tracetest.NewSpanRecorder(), reader: sdkmetric.NewManualReader(), sent: map[string]map[string]string{}}
	r.tp = sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(r.spans))
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(r.reader))
	t.Cleanup(func() { _ = r.tp.Shutdown(context.Background()); _ = mp.Shutdown(context.Background()) })
	r.inst = mqotel.New(append([]mqotel.Option{
		mqotel.WithTracerProvider(r.tp), mqotel.WithMeterProvider(mp), mqotel.WithSystem("inmemory"),
	}, opts...)...)
	c, err := mq.Open(context.Background(), "mem://?group=g&nack_backoff=1ms", append(r.inst.Options(), mq.WithProduceMiddleware(r.capture))...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	r.c = c
	return r
}

// consume runs h on topic until stop returns true after a handler call,
// or the test times out.
func (r *rig) consume(t *testing.T, topic string, h mq.Handler, produce func(context.Context), stop func() bool) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	cons, err := r.c.Consumer(ctx, topic)
	if err != nil {
		t.Fatal(err)
	}
	defer cons.Close()
	produce(ctx)
	done := make(chan error, 1)
	cctx, stopConsume := context.WithCancel(ctx)
	defer stopConsume()
	go func() { done <- cons.Consume(cctx, h) }()
	for !stop() {
		select {
		case err := <-done:
			t.Fatalf("Consume returned early: %v", err)
		case <-ctx.Done():
			t.Fatal("timed out")
		case <-time.After(2 * time.Millisecond):
		}
	}
	stopConsume()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

func (r *rig) ended(name string) []sdktrace.ReadOnlySpan {
	var out []sdktrace.ReadOnlySpan
	for _, s := range r.spans.Ended() {
		if s.Name() == name {
			out = append(out, s)
		}
	}
	return out
}

func attrs(s sdktrace.ReadOnlySpan) map[attribute.Key]attribute.Value {
	m := map[attribute.Key]attribute.Value{}
	for _, kv := range s.Attributes() {
		m[kv.Key] = kv.Value
	}
	return m
}

func wantAttr(t *testing.T, s sdktrace.ReadOnlySpan, key string, want any) {
	t.Helper()
	v, ok := attrs(s)[attribute.Key(key)]
	if !ok {
		t.Errorf("span %q has no %s; has %v", s.Name(), key, s.Attributes())
		return
	}
	if got := v.AsInterface(); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("span %q: %s = %v, want %v", s.Name(), key, got, want)
	}
}

func linked(s sdktrace.ReadOnlySpan, sc trace.SpanContext) bool {
	for _, l := range s.Links() {
		if l.SpanContext.TraceID() == sc.TraceID() && l.SpanContext.SpanID() == sc.SpanID() {
			return true
		}
	}
	return false
}

// counter collects a metric's data points as "attr=value,..." → value.
func (r *rig) collect(t *testing.T) map[string]metricdata.Aggregation {
	t.Helper()
	var rm metricdata.ResourceMetrics
	if err := r.reader.Collect(context.Background(), &rm); err != nil {
		t.Fatal(err)
	}
	out := map[string]metricdata.Aggregation{}
	for _, sm := range rm.ScopeMetrics {
		for _, m := range sm.Metrics {
			out[m.Name] = m.Data
		}
	}
	return out
}

// sumBy returns the int64 sum points of a metric keyed by one attribute.
func sumBy(t *testing.T, data metricdata.Aggregation, key string) map[string]int64 {
	t.Helper()
	out := map[string]int64{}
	switch d := data.(type) {
	case metricdata.Sum[int64]:
		for _, p := range d.DataPoints {
			v, _ := p.Attributes.Value(attribute.Key(key))
			out[v.String()] += p.Value
		}
	case metricdata.Histogram[float64]:
		for _, p := range d.DataPoints {
			v, _ := p.Attributes.Value(attribute.Key(key))
			out[v.String()] += int64(p.Count)
		}
	case nil:
	default:
		t.Fatalf("unexpected aggregation %T", data)
	}
	return out
}

func TestSendAndProcessSpans(t *testing.T) {
	for _, parented := range []bool{false, true} {
		t.Run(fmt.Sprintf("message_parent=%v", parented), func(t *testing.T) {
			var opts []mqotel.Option
			if parented {
				opts = append(opts, mqotel.WithMessageParent())
			}
			r := newRig(t, opts...)
			var got *mq.Message
			var handlerSpan trace.SpanContext
			var mu sync.Mutex
			r.consume(t, "orders", mq.HandlerFunc(func(ctx context.Context, m *mq.Message) error {
				mu.Lock()
				defer mu.Unlock()
				got, handlerSpan = m.Clone(), trace.SpanContextFromContext(ctx)
				return nil
			}), func(ctx context.Context) {
				ctx, root := r.tp.Tracer("test").Start(ctx, "checkout")
				defer root.End()
				if err := r.c.Producer().Produce(ctx, "orders", &mq.Message{Key: "c-1", Body: []byte("hello")}); err != nil {
					t.Fatal(err)
				}
			}, func() bool { mu.Lock(); defer mu.Unlock(); return got != nil })

			send, process, root := r.ended("send orders"), r.ended("process orders"), r.ended("checkout")
			if len(send) != 1 || len(process) != 1 || len(root) != 1 {
				t.Fatalf("spans: %d send, %d process, %d checkout", len(send), len(process), len(root))
			}
			s, p := send[0], process[0]
			if s.SpanKind() != trace.SpanKindProducer || p.SpanKind() != trace.SpanKindConsumer {
				t.Errorf("kinds: send %v, process %v", s.SpanKind(), p.SpanKind())
			}
			if s.Parent().SpanID() != root[0].SpanContext().SpanID() {
				t.Errorf("send span's parent is %v, want the caller's span", s.Parent().SpanID())
			}
			tp := got.Header("traceparent")
			want := fmt.Sprintf("00-%s-%s-01", s.SpanContext().TraceID(), s.SpanContext().SpanID())
			if tp != want {
				t.Errorf("traceparent = %q, want the send span's %q", tp, want)
			}
			if !linked(p, s.SpanContext()) {
				t.Errorf("process span does not link to the send span: links %v", p.Links())
			}
			if parented {
				if p.Parent().SpanID() != s.SpanContext().SpanID() {
					t.Errorf("process span's parent %v, want the send span", p.Parent().SpanID())
				}
			} else if p.Parent().IsValid() || p.SpanContext().TraceID() == s.SpanContext().TraceID() {
				t.Errorf("process span has parent %v in trace %v: want a new trace", p.Parent().SpanID(), p.SpanContext().TraceID())
			}
			if handlerSpan.SpanID() != p.SpanContext().SpanID() {
				t.Errorf("the handler's context holds span %v, want the process span", handlerSpan.SpanID())
			}
			for _, sp := range []sdktrace.ReadOnlySpan{s, p} {
				wantAttr(t, sp, "messaging.system", "inmemory")
				wantAttr(t, sp, "messaging.destination.name", "orders")
				wantAttr(t, sp, "messaging.message.id", got.ID)
				wantAttr(t, sp, "messaging.message.body.size", 5)
			}
			wantAttr(t, s, "messaging.operation.type", "send")
			wantAttr(t, p, "messaging.operation.type", "process")
			wantAttr(t, p, "messaging.consumer.group.name", "g")
			wantAttr(t, p, "mqkit.attempt", 1)
			wantAttr(t, p, "mqkit.outcome", "ack")
		})
	}
}

func TestBatchSendIsOneSpan(t *testing.T) {
	r := newRig(t)
	msgs := []*mq.Message{{Key: "a"}, {Key: "b"}, {Key: "c"}}
	if err := r.c.Producer().Produce(context.Background(), "batch", msgs...); err != nil {
		t.Fatal(err)
	}
	send := r.ended("send batch")
	if len(send) != 1 {
		t.Fatalf("%d send spans, want 1", len(send))
	}
	wantAttr(t, send[0], "messaging.batch.message_count", 3)
	if _, ok := attrs(send[0])["messaging.message.id"]; ok {
		t.Error("a batch send span has messaging.message.id")
	}
	want := fmt.Sprintf("00-%s-%s-01", send[0].SpanContext().TraceID(), send[0].SpanContext().SpanID())
	for _, m := range msgs {
		if got := r.headers(m.ID)["traceparent"]; got != want {
			t.Errorf("message %s carries %q, want the send span's %q", m.ID, got, want)
		}
	}
}

const foreign = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"

func foreignSC(t *testing.T) trace.SpanContext {
	t.Helper()
	ctx := propagation.TraceContext{}.Extract(context.Background(), propagation.MapCarrier{"traceparent": foreign})
	return trace.SpanContextFromContext(ctx)
}

// A message that carries a creation context keeps it when Produce's
// context holds no span (a redrive), and the send span continues it.
func TestCarriedContextIsKeptWithoutSpan(t *testing.T) {
	r := newRig(t)
	m := &mq.Message{Headers: map[string]string{"traceparent": foreign, "tracestate": "vendor=1"}}
	if err := r.c.Producer().Produce(context.Background(), "redrive", m); err != nil {
		t.Fatal(err)
	}
	if h := r.headers(m.ID); h["traceparent"] != foreign || h["tracestate"] != "vendor=1" {
		t.Errorf("headers changed to %v", h)
	}
	s := r.ended("send redrive")[0]
	fsc := foreignSC(t)
	if s.Parent().SpanID() != fsc.SpanID() || s.SpanContext().TraceID() != fsc.TraceID() {
		t.Errorf("send span parent %v trace %v, want the carried context", s.Parent().SpanID(), s.SpanContext().TraceID())
	}
	if !linked(s, fsc) {
		t.Error("send span does not link to the carried context")
	}
}

// Inside a span (a dead letter published from a handler) the send span's
// context replaces the carried one, tracestate included, and links to it.
func TestCarriedContextIsReplacedInsideSpan(t *testing.T) {
	r := newRig(t)
	ctx, parent := r.tp.Tracer("test").Start(context.Background(), "handler")
	m := &mq.Message{Headers: map[string]string{"traceparent": foreign, "tracestate": "vendor=1"}}
	if err := r.c.Producer().Produce(ctx, "orders.dlq", m); err != nil {
		t.Fatal(err)
	}
	parent.End()
	s := r.ended("send orders.dlq")[0]
	want := fmt.Sprintf("00-%s-%s-01", s.SpanContext().TraceID(), s.SpanContext().SpanID())
	h := r.headers(m.ID)
	if h["traceparent"] != want {
		t.Errorf("traceparent %q, want the send span's %q", h["traceparent"], want)
	}
	if _, ok := h["tracestate"]; ok {
		t.Errorf("stale tracestate kept: %q", h["tracestate"])
	}
	if m.Header("traceparent") != foreign {
		t.Errorf("the caller's message was changed: %v", m.Headers)
	}
	if !linked(s, foreignSC(t)) || s.Parent().SpanID() != parent.SpanContext().SpanID() {
		t.Errorf("send span: parent %v, links %v", s.Parent().SpanID(), s.Links())
	}
}

// A message from a foreign producer, with a traceparent it wrote by hand:
// the process span links to that trace.
func TestForeignTraceparentIsLinked(t *testing.T) {
	r := newRig(t)
	b := memory.NewBroker(memory.Config{})
	defer b.Close()
	consumer := mq.NewClient(b.Conn(), append(r.inst.Options(), mq.WithGroup("g"))...)
	defer consumer.Close()
	foreignClient := mq.NewClient(b.Conn()) // not instrumented
	defer foreignClient.Close()
	r.c = consumer
	r.consume(t, "in", mq.HandlerFunc(func(context.Context, *mq.Message) error { return nil }),
		func(ctx context.Context) {
			m := &mq.Message{Headers: map[string]string{"traceparent": foreign}}
			if err := foreignClient.Producer().Produce(ctx, "in", m); err != nil {
				t.Fatal(err)
			}
		}, func() bool { return len(r.ended("process in")) == 1 })
	p := r.ended("process in")[0]
	if !linked(p, foreignSC(t)) {
		t.Errorf("process span links %v, want the foreign context", p.Links())
	}
	wantAttr(t, p, "messaging.system", "inmemory") // from WithSystem: NewClient has no scheme
}

// Each handler call is a span with its outcome; the metrics count them
// by outcome, with error.type on failures.
func TestOutcomesAndMetrics(t *testing.T) {
	r := newRig(t)
	store := idempotency.NewMemoryStore(idempotency.MemoryStoreConfig{})
	dedup, err := idempotency.New(store, idempotency.Config{Namespace: "g"})
	if err != nil {
		t.Fatal(err)
	}
	dead, err := dlq.New(dlq.Config{Client: r.c, Group: "g"})
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	calls := map[string]int{}
	h := mq.HandlerFunc(func(ctx context.Context, m *mq.Message) error {
		mu.Lock()
		calls[m.Key]++
		n := calls[m.Key]
		mu.Unlock()
		switch {
		case m.Key == "flaky" && n == 1:
			return errors.New("flaky")
		case m.Key == "down" && n == 1:
			return fmt.Errorf("store: %w", mq.ErrUnavailable)
		case m.Key == "busy" && n == 1:
			return fmt.Errorf("claim: %w", mq.ErrInProgress)
		case m.Key == "poison":
			return mq.Permanent(errors.New("bad order"))
		}
		return nil
	})
	deadLettered, deduped := dead(h), dedup(h)
	handler := mq.HandlerFunc(func(ctx context.Context, m *mq.Message) error {
		if m.Key == "poison" {
			return deadLettered.Handle(ctx, m)
		}
		return deduped.Handle(ctx, m)
	})
	ids := []*mq.Message{{Key: "ok"}, {Key: "flaky"}, {Key: "down"}, {Key: "busy"}, {Key: "poison"}, {Key: "dup", ID: "same"}, {Key: "dup", ID: "same"}}
	r.consume(t, "o", handler, func(ctx context.Context) {
		if err := r.c.Producer().Produce(ctx, "o", ids...); err != nil {
			t.Fatal(err)
		}
	}, func() bool { return len(r.ended("process o")) == 10 })

	want := map[string]int64{"ack": 5, "retry": 1, "unavailable": 1, "in_progress": 1, "dead_lettered": 1, "duplicate": 1}
	byOutcome := map[string]int64{}
	for _, s := range r.ended("process o") {
		byOutcome[attrs(s)["mqkit.outcome"].AsString()]++
		out := attrs(s)["mqkit.outcome"].AsString()
		failed := out == "retry" || out == "unavailable" || out == "in_progress"
		if failed != (s.Status().Code == codes.Error) {
			t.Errorf("span with outcome %s has status %v", out, s.Status())
		}
	}
	if fmt.Sprint(byOutcome) != fmt.Sprint(want) {
		t.Errorf("span outcomes %v, want %v", byOutcome, want)
	}
	m := r.collect(t)
	if got := sumBy(t, m[mqotel.MetricConsumedMessages], "mqkit.outcome"); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("consumed by outcome %v, want %v", got, want)
	}
	if got := sumBy(t, m[mqotel.MetricProcessDuration], "mqkit.outcome"); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("process durations by outcome %v, want %v", got, want)
	}
	errTypes := sumBy(t, m[mqotel.MetricProcessDuration], "error.type")
	if errTypes["_OTHER"] != 1 || errTypes["unavailable"] != 1 || errTypes["in_progress"] != 1 {
		t.Errorf("error types %v", errTypes)
	}
	if got := sumBy(t, m[mqotel.MetricProcessActive], "messaging.destination.name"); got["o"] != 0 {
		t.Errorf("%d handlers still counted as running", got["o"])
	}
	sent := sumBy(t, m[mqotel.MetricSentMessages], "messaging.destination.name")
	if sent["o"] != int64(len(ids)) || sent["o.dlq"] != 1 {
		t.Errorf("sent %v", sent)
	}
	if got := sumBy(t, m[mqotel.MetricOperationDuration], "messaging.operation.name"); got["send"] != 2 {
		t.Errorf("send durations %v, want 2 (the batch and the dead letter)", got)
	}
	h2 := m[mqotel.MetricProcessDuration].(metricdata.Histogram[float64])
	if b := h2.DataPoints[0].Bounds; len(b) != 14 || b[0] != 0.005 || b[13] != 10 {
		t.Errorf("process duration buckets %v", b)
	}
}

// A panicking handler ends its span as an error and leaves no handler
// counted as running.
func TestPanic(t *testing.T) {
	r := newRig(t)
	var once sync.Once
	r.consume(t, "p", mq.HandlerFunc(func(context.Context, *mq.Message) error {
		once.Do(func() { panic("boom") })
		return nil
	}), func(ctx context.Context) {
		if err := r.c.Producer().Produce(ctx, "p", &mq.Message{}); err != nil {
			t.Fatal(err)
		}
	}, func() bool { return len(r.ended("process p")) == 2 })
	spans := r.ended("process p")
	first := spans[0]
	if first.Status().Code != codes.Error || attrs(first)["error.type"].AsString() != "panic" || attrs(first)["mqkit.outcome"].AsString() != "retry" {
		t.Errorf("panicking call's span: status %v, attributes %v", first.Status(), first.Attributes())
	}
	if got := sumBy(t, r.collect(t)[mqotel.MetricProcessActive], "messaging.destination.name"); got["p"] != 0 {
		t.Errorf("%d handlers still counted as running", got["p"])
	}
}

// OnRetry records middleware.Retry's retries as events of the process span.
func TestOnRetryEvents(t *testing.T) {
	r := newRig(t)
	var n int
	var mu sync.Mutex
	h := mq.Chain(mq.HandlerFunc(func(context.Context, *mq.Message) error {
		mu.Lock()
		defer mu.Unlock()
		if n++; n < 3 {
			return errors.New("not yet")
		}
		return nil
	}), middleware.Retry(middleware.RetryConfig{MaxAttempts: 3, InitialInterval: time.Millisecond, OnRetry: r.inst.OnRetry}))
	r.consume(t, "r", h, func(ctx context.Context) {
		if err := r.c.Producer().Produce(ctx, "r", &mq.Message{}); err != nil {
			t.Fatal(err)
		}
	}, func() bool { return len(r.ended("process r")) == 1 })
	s := r.ended("process r")[0]
	var events []string
	for _, e := range s.Events() {
		for _, kv := range e.Attributes {
			if kv.Key == "mqkit.attempt" {
				events = append(events, fmt.Sprintf("%s@%d", e.Name, kv.Value.AsInt64()))
			}
		}
	}
	if fmt.Sprint(events) != "[retry@1 retry@2]" {
		t.Errorf("events %v", events)
	}
	wantAttr(t, s, "mqkit.outcome", "ack")
}

// ObserveLag reports the backlog only while observed, only on collection.
func TestObserveLag(t *testing.T) {
	r := newRig(t)
	ctx := context.Background()
	cons, err := r.c.Consumer(ctx, "l")
	if err != nil {
		t.Fatal(err)
	}
	defer cons.Close()
	if err := r.c.Producer().Produce(ctx, "l", &mq.Message{}, &mq.Message{}, &mq.Message{}); err != nil {
		t.Fatal(err)
	}
	stop := r.inst.ObserveLag(r.c, "l", "g")
	m := r.collect(t)
	g, ok := m[mqotel.MetricConsumerLag].(metricdata.Gauge[int64])
	if !ok || len(g.DataPoints) != 1 || g.DataPoints[0].Value != 3 {
		t.Fatalf("lag %+v", m[mqotel.MetricConsumerLag])
	}
	for _, k := range []string{"messaging.system", "messaging.destination.name", "messaging.consumer.group.name", "messaging.destination.partition.id"} {
		if _, ok := g.DataPoints[0].Attributes.Value(attribute.Key(k)); !ok {
			t.Errorf("lag has no %s: %v", k, g.DataPoints[0].Attributes.ToSlice())
		}
	}
	if age, ok := m[mqotel.MetricConsumerOldestAge].(metricdata.Gauge[float64]); !ok || len(age.DataPoints) != 1 || age.DataPoints[0].Value < 0 {
		t.Errorf("oldest age %+v", m[mqotel.MetricConsumerOldestAge])
	}
	stop()
	stop()
	if g, ok := r.collect(t)[mqotel.MetricConsumerLag].(metricdata.Gauge[int64]); ok && len(g.DataPoints) > 0 {
		t.Errorf("lag still reported after stop: %+v", g)
	}
}

type typedErr struct{}

func (typedErr) Error() string { return "typed" }

type namedErr struct{}

func (namedErr) Error() string     { return "named" }
func (namedErr) ErrorType() string { return "validation" }

func TestDefaultErrorType(t *testing.T) {
	for _, c := range []struct {
		err  error
		want string
	}{
		{errors.New("x"), "_OTHER"},
		{fmt.Errorf("a: %w", fmt.Errorf("b: %w", typedErr{})), "github.com/mqkit/mq/mqotel_test.typedErr"},
		{mq.Permanent(typedErr{}), "github.com/mqkit/mq/mqotel_test.typedErr"},
		{&middleware.RetryError{Err: typedErr{}}, "github.com/mqkit/mq/mqotel_test.typedErr"},
		{fmt.Errorf("x: %w", namedErr{}), "validation"},
		{fmt.Errorf("x: %w", mq.ErrUnavailable), "unavailable"},
		{fmt.Errorf("x: %w", context.DeadlineExceeded), "timeout"},
		{&mq.PanicError{Value: "boom"}, "panic"},
		{errors.Join(typedErr{}, errors.New("y")), "github.com/mqkit/mq/mqotel_test.typedErr"},
	} {
		if got := mqotel.DefaultErrorType(c.err); got != c.want {
			t.Errorf("DefaultErrorType(%v) = %q, want %q", c.err, got, c.want)
		}
	}
}

func TestObserveOutbox(t *testing.T) {
	r := newRig(t)
	rows := int64(7)
	stop := r.inst.ObserveOutbox("mq_outbox", func(context.Context) (int64, time.Duration, error) {
		return rows, 3 * time.Second, nil
	})
	failing := r.inst.ObserveOutbox("broken", func(context.Context) (int64, time.Duration, error) {
		return 0, 0, errors.New("db down")
	})
	defer failing()
	m := r.collect(t)
	g, ok := m[mqotel.MetricOutboxRows].(metricdata.Gauge[int64])
	if !ok || len(g.DataPoints) != 1 || g.DataPoints[0].Value != 7 {
		t.Fatalf("outbox rows %+v", m[mqotel.MetricOutboxRows])
	}
	if v, _ := g.DataPoints[0].Attributes.Value(mqotel.AttrOutboxTable); v.AsString() != "mq_outbox" {
		t.Errorf("table attribute %v", g.DataPoints[0].Attributes.ToSlice())
	}
	if age, ok := m[mqotel.MetricOutboxOldestAge].(metricdata.Gauge[float64]); !ok || len(age.DataPoints) != 1 || age.DataPoints[0].Value != 3 {
		t.Errorf("outbox age %+v", m[mqotel.MetricOutboxOldestAge])
	}
	stop()
	if g, ok := r.collect(t)[mqotel.MetricOutboxRows].(metricdata.Gauge[int64]); ok && len(g.DataPoints) > 0 {
		t.Errorf("outbox still reported after stop: %+v", g)
	}
}

type derivedKey struct{}

// With a no-op tracer the process span is not started, but the handler's
// context is what a no-op span would give: the creation context with
// WithMessageParent, no span otherwise; and the delivery info is still
// there for inner middleware, through a derived context too.
func TestNoopTracerHandlerContext(t *testing.T) {
	for _, parent := range []bool{false, true} {
		t.Run(fmt.Sprint("messageParent=", parent), func(t *testing.T) {
			opts := []mqotel.Option{mqotel.WithTracerProvider(tracenoop.NewTracerProvider()), mqotel.WithSystem("inmemory")}
			if parent {
				opts = append(opts, mqotel.WithMessageParent())
			}
			c, err := mq.Open(context.Background(), "mem://?group=g", mqotel.New(opts...).Options()...)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			cons, err := c.Consumer(ctx, "noop")
			if err != nil {
				t.Fatal(err)
			}
			defer cons.Close()
			if err := c.Producer().Produce(ctx, "noop", &mq.Message{Headers: map[string]string{"traceparent": foreign}}); err != nil {
				t.Fatal(err)
			}
			type seen struct {
				sc    trace.SpanContext
				topic string
			}
			got := make(chan seen, 1)
			cctx, stop := context.WithCancel(ctx)
			done := make(chan error, 1)
			go func() {
				done <- cons.Consume(cctx, mq.HandlerFunc(func(ctx context.Context, m *mq.Message) error {
					var s seen
					s.sc = trace.SpanContextFromContext(ctx)
					if info, ok := mq.DeliveryFrom(context.WithValue(ctx, derivedKey{}, 1)); ok {
						s.topic = info.Topic
					}
					got <- s
					return nil
				}))
			}()
			var s seen
			select {
			case s = <-got:
			case <-ctx.Done():
				t.Fatal("timed out")
			}
			stop()
			if err := <-done; err != nil {
				t.Fatal(err)
			}
			if s.topic != "noop" {
				t.Errorf("DeliveryFrom: topic %q, want noop", s.topic)
			}
			fsc := foreignSC(t)
			if parent && (s.sc.TraceID() != fsc.TraceID() || s.sc.SpanID() != fsc.SpanID()) {
				t.Errorf("handler's span context %v, want the creation context %v", s.sc, fsc)
			}
			if !parent && s.sc.IsValid() {
				t.Errorf("handler's span context %v, want none", s.sc)
			}
		})
	}
}
