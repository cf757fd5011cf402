package integration_test

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"go.opentelemetry.io/otel/propagation"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"

	"github.com/mqkit/mq"
	"github.com/mqkit/mq/dlq"
	"github.com/mqkit/mq/memory"
	"github.com/mqkit/mq/middleware"
	"github.com/mqkit/mq/mqotel"
)

// otelBackend is a broker the tracing tests run on, with the
// messaging.system its spans must carry.
type otelBackend struct {
	name, system string
	url          func(t *testing.T) string
	idle         time.Duration // for dlq.Redrive
}

func otelBackends() []otelBackend {
	bs := []otelBackend{{name: "mem", system: "inmemory", idle: 300 * time.Millisecond,
		url: func(*testing.T) string { return "mem://?nack_backoff=5ms" }}}
	systems := map[string]string{"kafka": "kafka", "rabbitmq": "rabbitmq", "redis": "redis"}
	for _, tg := range targets {
		bs = append(bs, otelBackend{name: tg.name, system: systems[tg.name], idle: 5 * time.Second,
			url: func(t *testing.T) string { return withParams(t, tg.shared(t).URL, tg.params) }})
	}
	return bs
}

// tracedClient opens rawURL instrumented into a span recorder, with
// process spans parented by the producer's (WithMessageParent), so that an
// order's spans form one trace.
func tracedClient(t *testing.T, rawURL, system string) (*mq.Client, *mqotel.Instrumentation, *tracetest.SpanRecorder, trace.Tracer) {
	t.Helper()
	rec := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(rec))
	t.Cleanup(func() { _ = tp.Shutdown(context.Background()) })
	inst := mqotel.New(mqotel.WithTracerProvider(tp), mqotel.WithSystem(system), mqotel.WithMessageParent())
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	c, err := mq.Open(ctx, rawURL, inst.Options()...)
	if err != nil {
		t.Fatalf("open %s: %v", mq.RedactURL(rawURL), err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c, inst, rec, tp.Tracer("checkout-service")
}

// TestOtelOrderTrace follows one order through produce, a failing
// attempt, an in-process retry, the dead-letter topic, dlq.Redrive and a
// successful handling, on every backend, and checks the trace it leaves:
// span names and kinds, parents and links, and one trace ID for all. The
// trace is logged as a tree.
func TestOtelOrderTrace(t *testing.T) {
	for _, bk := range otelBackends() {
		t.Run(bk.name, func(t *testing.T) {
			if bk.name != "mem" && testing.Short() {
				t.Skip("needs real brokers")
			}
			c, inst, rec, tracer := tracedClient(t, bk.url(t), bk.system)
			ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
			defer cancel()
			topic := "otel-" + mq.NewID()
			dlqTopic := dlq.DefaultTopic(topic)
			deadLettered := make(chan struct{}, 1)
			dead, err := dlq.New(dlq.Config{Client: c, Group: "g",
				OnDeadLetter: func(context.Context, *mq.Message, error) { deadLettered <- struct{}{} }})
			if err != nil {
				t.Fatal(err)
			}
			handled := make(chan struct{}, 1)
			h := mq.Chain(mq.HandlerFunc(func(_ context.Context, m *mq.Message) error {
				if m.Header(dlq.HeaderRedriveCount) == "" {
					return errors.New("payment service refused the order")
				}
				handled <- struct{}{}
				return nil
			}), middleware.Stack(middleware.StackConfig{
				DeadLetter: dead,
				Retry:      middleware.RetryConfig{MaxAttempts: 2, InitialInterval: 10 * time.Millisecond, OnRetry: inst.OnRetry},
			}))
			cons, err := c.Consumer(ctx, topic, mq.WithGroup("g"))
			if err != nil {
				t.Fatal(err)
			}
			cctx, stop := context.WithCancel(ctx)
			done := make(chan error, 1)
			go func() { done <- cons.Consume(cctx, h) }()
			defer func() {
				stop()
				if err := <-done; err != nil {
					t.Errorf("Consume: %v", err)
				}
			}()

			// The order, produced inside the caller's span.
			octx, checkout := tracer.Start(ctx, "checkout")
			if err := c.Producer().Produce(octx, topic, &mq.Message{Key: "customer-42", Body: []byte(`{"order":7}`)}); err != nil {
				t.Fatal(err)
			}
			checkout.End()
			wait(ctx, t, deadLettered, "the dead letter")

			// Redrive with a context that holds no span, as `mq dlq redrive` runs.
			res, err := dlq.Redrive(ctx, c, dlqTopic, nil, dlq.WithIdle(bk.idle))
			if err != nil || len(res.Moved) != 1 {
				t.Fatalf("Redrive: %+v, %v", res, err)
			}
			wait(ctx, t, handled, "the redriven order")
			waitSpans(ctx, t, rec, "process "+topic, 2)

			spans := rec.Ended()
			t.Logf("trace of one order on %s:\n%s", bk.name, traceTree(spans, topic))
			checkOrderTrace(t, spans, topic, bk.system)
		})
	}
}

func wait(ctx context.Context, t *testing.T, ch <-chan struct{}, what string) {
	t.Helper()
	select {
	case <-ch:
	case <-ctx.Done():
		t.Fatalf("timed out waiting for %s", what)
	}
}

// waitSpans waits until n spans named name have ended: a span ends after
// its handler returned, just after the handler signalled.
func waitSpans(ctx context.Context, t *testing.T, rec *tracetest.SpanRecorder, name string, n int) {
	t.Helper()
	for {
		got := 0
		for _, s := range rec.Ended() {
			if s.Name() == name {
				got++
			}
		}
		if got >= n {
			return
		}
		select {
		case <-ctx.Done():
			t.Fatalf("%d %q spans ended, want %d", got, name, n)
		case <-time.After(20 * time.Millisecond):
		}
	}
}

func checkOrderTrace(t *testing.T, spans []sdktrace.ReadOnlySpan, topic, system string) {
	t.Helper()
	byName := map[string][]sdktrace.ReadOnlySpan{}
	for _, s := range spans {
		byName[s.Name()] = append(byName[s.Name()], s)
	}
	sendTopic, sendDLQ, process, checkout := byName["send "+topic], byName["send "+topic+".dlq"], byName["process "+topic], byName["checkout"]
	if len(sendTopic) != 2 || len(sendDLQ) != 1 || len(process) != 2 || len(checkout) != 1 {
		t.Fatalf("spans: %d checkout, %d send %s (want 2: order and redrive), %d send dlq, %d process (want 2)",
			len(checkout), len(sendTopic), topic, len(sendDLQ), len(process))
	}
	order, redrive := sendTopic[0], sendTopic[1]
	failed, ok := process[0], process[1]
	traceID := checkout[0].SpanContext().TraceID()
	for _, s := range spans {
		if s.SpanContext().TraceID() != traceID {
			t.Errorf("span %q is in trace %s, want the order's %s", s.Name(), s.SpanContext().TraceID(), traceID)
		}
	}
	kinds := []struct {
		s    sdktrace.ReadOnlySpan
		kind trace.SpanKind
	}{{order, trace.SpanKindProducer}, {redrive, trace.SpanKindProducer}, {sendDLQ[0], trace.SpanKindProducer}, {failed, trace.SpanKindConsumer}, {ok, trace.SpanKindConsumer}}
	for _, k := range kinds {
		if k.s.SpanKind() != k.kind {
			t.Errorf("%q is %v, want %v", k.s.Name(), k.s.SpanKind(), k.kind)
		}
		if got := attr(k.s, "messaging.system"); got != system {
			t.Errorf("%q: messaging.system %q, want %q", k.s.Name(), got, system)
		}
	}
	parentIs := func(child, parent sdktrace.ReadOnlySpan, why string) {
		t.Helper()
		if child.Parent().SpanID() != parent.SpanContext().SpanID() {
			t.Errorf("%s: %q's parent is %s, want %q (%s)", why, child.Name(), child.Parent().SpanID(), parent.Name(), parent.SpanContext().SpanID())
		}
	}
	linksTo := func(s, to sdktrace.ReadOnlySpan, why string) {
		t.Helper()
		for _, l := range s.Links() {
			if l.SpanContext.SpanID() == to.SpanContext().SpanID() {
				return
			}
		}
		t.Errorf("%s: %q does not link to %q", why, s.Name(), to.Name())
	}
	parentIs(order, checkout[0], "the order is sent in the caller's span")
	parentIs(failed, order, "process is a child of the creation context (WithMessageParent)")
	linksTo(failed, order, "process links to the creation context")
	parentIs(sendDLQ[0], failed, "the dead letter is published inside the process span")
	linksTo(sendDLQ[0], order, "the dead letter's send links to the context it replaced")
	parentIs(redrive, sendDLQ[0], "the redrive continues the dead letter's context")
	linksTo(redrive, sendDLQ[0], "the redrive links to the dead letter's context")
	// The redriven message kept the context it carried (the conventions:
	// a creation context is never modified), so its processing is a
	// sibling of the redrive's send span, both children of the dead letter.
	parentIs(ok, sendDLQ[0], "the redriven order is processed in the context it kept")
	linksTo(ok, sendDLQ[0], "the redriven order's process links to its creation context")
	if got := attr(failed, "mqkit.outcome"); got != "dead_lettered" {
		t.Errorf("failed process outcome %q", got)
	}
	if got := attr(ok, "mqkit.outcome"); got != "ack" {
		t.Errorf("final process outcome %q", got)
	}
	if n := len(failed.Events()); n < 1 || failed.Events()[0].Name != "retry" {
		t.Errorf("failed process span events %v, want a retry", failed.Events())
	}
	if system == "kafka" {
		for _, k := range []string{"messaging.destination.partition.id", "messaging.kafka.offset"} {
			if attr(ok, k) == "" {
				t.Errorf("kafka process span lacks %s", k)
			}
		}
	}
}

func attr(s sdktrace.ReadOnlySpan, key string) string {
	for _, kv := range s.Attributes() {
		if string(kv.Key) == key {
			return kv.Value.String()
		}
	}
	return ""
}

// traceTree draws spans as an indented tree by parent, with kind, the
// attributes that tell the story, and links by name.
func traceTree(spans []sdktrace.ReadOnlySpan, topic string) string {
	byID := map[trace.SpanID]sdktrace.ReadOnlySpan{}
	children := map[trace.SpanID][]sdktrace.ReadOnlySpan{}
	for _, s := range spans {
		byID[s.SpanContext().SpanID()] = s
	}
	var roots []sdktrace.ReadOnlySpan
	for _, s := range spans {
		if _, ok := byID[s.Parent().SpanID()]; ok {
			children[s.Parent().SpanID()] = append(children[s.Parent().SpanID()], s)
		} else {
			roots = append(roots, s)
		}
	}
	short := func(s string) string { return strings.ReplaceAll(s, topic, "{topic}") }
	var b strings.Builder
	var draw func(s sdktrace.ReadOnlySpan, depth int)
	draw = func(s sdktrace.ReadOnlySpan, depth int) {
		fmt.Fprintf(&b, "%s%s [%s] trace=%s…", strings.Repeat("  ", depth), short(s.Name()), s.SpanKind(), s.SpanContext().TraceID().String()[:8])
		for _, k := range []string{"messaging.system", "mqkit.attempt", "mqkit.outcome", "messaging.destination.partition.id", "messaging.kafka.offset", "mqkit.offset", "error.type"} {
			if v := attr(s, k); v != "" {
				fmt.Fprintf(&b, " %s=%s", k, v)
			}
		}
		for _, e := range s.Events() {
			if e.Name == "retry" {
				b.WriteString(" event=retry")
			}
		}
		for _, l := range s.Links() {
			name := l.SpanContext.SpanID().String()
			if ls, ok := byID[l.SpanContext.SpanID()]; ok {
				name = short(ls.Name())
			}
			fmt.Fprintf(&b, " link→%q", name)
		}
		b.WriteByte('\n')
		kids := children[s.SpanContext().SpanID()]
		sort.Slice(kids, func(i, j int) bool { return kids[i].StartTime().Before(kids[j].StartTime()) })
		for _, k := range kids {
			draw(k, depth+1)
		}
	}
	sort.Slice(roots, func(i, j int) bool { return roots[i].StartTime().Before(roots[j].StartTime()) })
	for _, r := range roots {
		draw(r, 1)
	}
	return b.String()
}

// TestOtelForeignTraceparent produces a message with a traceparent header
// written by hand, as a foreign producer would, through a client without
// instrumentation: the process span continues that trace.
func TestOtelForeignTraceparent(t *testing.T) {
	const traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
	want := trace.SpanContextFromContext(propagation.TraceContext{}.Extract(context.Background(),
		propagation.MapCarrier{"traceparent": traceparent}))
	for _, bk := range otelBackends() {
		t.Run(bk.name, func(t *testing.T) {
			if bk.name != "mem" && testing.Short() {
				t.Skip("needs real brokers")
			}
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
			defer cancel()
			var c, plain *mq.Client
			var rec *tracetest.SpanRecorder
			if bk.name == "mem" {
				// Two clients of one in-process broker.
				b := memory.NewBroker(memory.Config{})
				defer b.Close()
				var inst *mqotel.Instrumentation
				rec = tracetest.NewSpanRecorder()
				tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(rec))
				defer tp.Shutdown(context.Background())
				inst = mqotel.New(mqotel.WithTracerProvider(tp), mqotel.WithSystem("inmemory"))
				c = mq.NewClient(b.Conn(), inst.Options()...)
				plain = mq.NewClient(b.Conn())
				defer c.Close()
				defer plain.Close()
			} else {
				url := bk.url(t)
				c, _, rec, _ = tracedClient(t, url, bk.system)
				plain = open(t, url)
			}
			topic := "otel-foreign-" + mq.NewID()
			cons, err := c.Consumer(ctx, topic, mq.WithGroup("g"))
			if err != nil {
				t.Fatal(err)
			}
			defer cons.Close()
			if err := plain.Producer().Produce(ctx, topic, &mq.Message{Headers: map[string]string{"traceparent": traceparent}}); err != nil {
				t.Fatal(err)
			}
			var once sync.Once
			handled := make(chan struct{})
			cctx, stop := context.WithCancel(ctx)
			done := make(chan error, 1)
			go func() {
				done <- cons.Consume(cctx, mq.HandlerFunc(func(context.Context, *mq.Message) error { once.Do(func() { close(handled) }); return nil }))
			}()
			wait(ctx, t, handled, "the foreign message")
			waitSpans(ctx, t, rec, "process "+topic, 1)
			stop()
			if err := <-done; err != nil {
				t.Fatal(err)
			}
			for _, s := range rec.Ended() {
				if s.Name() != "process "+topic {
					continue
				}
				found := false
				for _, l := range s.Links() {
					found = found || (l.SpanContext.TraceID() == want.TraceID() && l.SpanContext.SpanID() == want.SpanID())
				}
				if !found {
					t.Errorf("process span links %v, want the foreign %s", s.Links(), traceparent)
				}
				t.Logf("%s: process span trace %s parent %s, links to the foreign span %v", bk.name, s.SpanContext().TraceID(), s.Parent().SpanID(), found)
			}
		})
	}
}
