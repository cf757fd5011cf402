package mqotel

import (
	"context"
	"fmt"
	"maps"
	"strconv"
	"sync/atomic"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/propagation"
	semconv "go.opentelemetry.io/otel/semconv/v1.43.0"
	"go.opentelemetry.io/otel/trace"
	tracenoop "go.opentelemetry.io/otel/trace/noop"

	"github.com/mqkit/mq"
)

// ProduceMiddleware is the produce middleware that Options installs: one
// send span per Produce call, the trace context written into the
// messages' headers (see the package documentation for which), and the
// send metrics.
func (in *Instrumentation) ProduceMiddleware(next mq.ProduceFunc) mq.ProduceFunc {
	return func(ctx context.Context, topic string, msgs []*mq.Message) error {
		start := time.Now()
		a := in.sendAttrs(topic)
		parent := trace.SpanContextFromContext(ctx)

		// The creation contexts the messages carry already: linked, and
		// kept when ctx holds no span.
		var links []trace.Link
		var carried []bool // by message; nil when none carries one
		var first trace.SpanContext
		same := true // every message carries first
		for i, m := range msgs {
			sc := in.carried(m)
			if !sc.IsValid() {
				same = false
				continue
			}
			if carried == nil {
				carried, first = make([]bool, len(msgs)), sc
			} else if !sc.Equal(first) {
				same = false
			}
			carried[i] = true
			if n := len(links); n == 0 || !links[n-1].SpanContext.Equal(sc) {
				links = append(links, trace.Link{SpanContext: sc})
			}
		}
		keep := !parent.IsValid() // keep what the messages carry
		sctx := ctx
		if keep && same && carried != nil {
			sctx = trace.ContextWithRemoteSpanContext(ctx, first)
		}
		opts := a.start // shared: copied before anything is appended
		if len(links) > 0 {
			opts = append(opts[:len(opts):len(opts)], trace.WithLinks(links...))
		}
		sctx, span := in.tracer.Start(sctx, a.name, opts...)
		if span.IsRecording() {
			if len(msgs) == 1 {
				span.SetAttributes(semconv.MessagingMessageID(msgs[0].ID), semconv.MessagingMessageBodySize(len(msgs[0].Body)))
			} else {
				span.SetAttributes(semconv.MessagingBatchMessageCount(len(msgs)))
			}
		}

		// Write the send span's context into the messages that take it,
		// formatted once for all of them.
		var hdr propagation.MapCarrier
		for i, m := range msgs {
			if keep && carried != nil && carried[i] {
				continue
			}
			if hdr == nil {
				hdr = propagation.MapCarrier{}
				in.prop.Inject(sctx, hdr)
			}
			if len(hdr) == 0 {
				break // no valid context to write (no span, tracing off): nothing is replaced
			}
			if m.Headers == nil {
				m.Headers = maps.Clone(hdr) // nothing to replace
				continue
			}
			for _, f := range in.fields {
				delete(m.Headers, f)
			}
			maps.Copy(m.Headers, hdr)
		}

		err := next(sctx, topic, msgs)

		ms := a.ok
		if err != nil {
			et := in.errorType(err)
			ms = a.failed(et)
			span.SetAttributes(semconv.ErrorTypeKey.String(et))
			span.RecordError(err)
			span.SetStatus(codes.Error, err.Error())
		}
		span.End()
		ms.count.Add(int64(len(msgs)))
		in.inst.sendDuration.Record(ctx, time.Since(start).Seconds(), ms.rec...)
		return err
	}
}

// carried returns the creation context m carries in its headers, if any.
func (in *Instrumentation) carried(m *mq.Message) trace.SpanContext {
	if len(m.Headers) == 0 {
		return trace.SpanContext{}
	}
	if in.spanOnly {
		return extractTraceContext(m.Headers)
	}
	return trace.SpanContextFromContext(in.prop.Extract(context.Background(), propagation.MapCarrier(m.Headers)))
}

// noopSpan is the span of a handler call when a no-op tracer's is skipped.
var noopSpan trace.Span = tracenoop.Span{}

// ConsumeMiddleware is the consume middleware that Options installs: one
// process span per handler call, linked to (or, with WithMessageParent,
// child of) the message's creation context, and the process metrics.
func (in *Instrumentation) ConsumeMiddleware(next mq.Handler) mq.Handler {
	return &consumeHandler{in: in, next: next}
}

type consumeHandler struct {
	in   *Instrumentation
	next mq.Handler
	last atomic.Pointer[consAttrs] // a consumer's deliveries all share one
}

func (h *consumeHandler) attrs(info *mq.DeliveryInfo, m *mq.Message) *consAttrs {
	k := consKey{topic: m.Topic}
	if info != nil {
		k = consKey{scheme: info.Scheme, topic: info.Topic, group: info.Group}
	}
	if a := h.last.Load(); a != nil && a.key == k {
		return a
	}
	a := h.in.consAttrs(k)
	h.last.Store(a)
	return a
}

func (h *consumeHandler) Handle(ctx context.Context, m *mq.Message) (err error) {
	in := h.in
	info, _ := mq.DeliveryFrom(ctx)
	a := h.attrs(info, m)

	ambient := trace.SpanContextFromContext(ctx)
	// The creation context and any baggage, from the headers.
	xctx := ctx
	var created trace.SpanContext
	switch {
	case len(m.Headers) == 0:
	case in.spanOnly:
		// W3C trace context alone: read without making contexts, which
		// only WithMessageParent needs.
		if created = extractTraceContext(m.Headers); created.IsValid() && in.messageParent {
			xctx = trace.ContextWithRemoteSpanContext(ctx, created)
		}
	default:
		xctx = in.prop.Extract(ctx, propagation.MapCarrier(m.Headers))
		created = trace.SpanContextFromContext(xctx)
	}
	if created.Equal(ambient) {
		created = trace.SpanContext{} // the headers held none
	}
	// A no-op tracer's Start would only put the span context that sctx
	// holds back into it, where that is the creation context or none (not
	// an ambient span, which it would replace by an empty one): skipped.
	skip := in.noopTracer && (!ambient.IsValid() || in.messageParent && created.IsValid())
	opts := a.start // shared: copied before anything is appended
	sctx := xctx
	switch {
	case !created.IsValid():
	case in.messageParent:
		if !skip {
			opts = append(opts[:len(opts):len(opts)], trace.WithLinks(trace.Link{SpanContext: created}))
			if ambient.IsValid() {
				opts = append(opts, trace.WithLinks(trace.Link{SpanContext: ambient}))
			}
		}
	default:
		if !skip {
			opts = append(opts[:len(opts):len(opts)], trace.WithLinks(trace.Link{SpanContext: created}))
		}
		// The ambient span stays the parent. When the headers gave
		// nothing but the creation context, that is ctx (unless a no-op
		// tracer would then replace the ambient span by an empty one).
		if in.spanOnly && (!in.noopTracer || !ambient.IsValid()) {
			sctx = ctx
		} else {
			sctx = trace.ContextWithSpanContext(xctx, ambient)
		}
	}
	var span trace.Span = noopSpan
	if !skip {
		sctx, span = in.tracer.Start(sctx, a.name, opts...)
	}
	if span.IsRecording() {
		kvs := make([]attribute.KeyValue, 0, 5)
		kvs = append(kvs, semconv.MessagingMessageID(m.ID), semconv.MessagingMessageBodySize(len(m.Body)), AttemptKey.Int(m.Attempt))
		if info != nil && info.Partition != "" {
			kvs = append(kvs, semconv.MessagingDestinationPartitionID(info.Partition))
		}
		if info != nil && info.Offset != "" {
			if n, perr := strconv.Atoi(info.Offset); perr == nil && a.system == "kafka" {
				kvs = append(kvs, semconv.MessagingKafkaOffset(n))
			} else {
				kvs = append(kvs, OffsetKey.String(info.Offset))
			}
		}
		span.SetAttributes(kvs...)
	}
	a.running.Add(1)
	start := time.Now()
	defer func() {
		r := recover()
		if r != nil {
			err = &mq.PanicError{Value: r}
		}
		h.finish(ctx, span, a, info, err, start)
		if r != nil {
			panic(r) // the consumer recovers it, with the stack
		}
	}()
	return h.next.Handle(sctx, m)
}

// finish ends a process span and records the call's metrics.
func (h *consumeHandler) finish(ctx context.Context, span trace.Span, a *consAttrs, info *mq.DeliveryInfo, err error, start time.Time) {
	in := h.in
	dur := time.Since(start).Seconds()
	out := outcome(info, err)
	ms := a.ack
	recording := span.IsRecording()
	if err != nil || out != OutcomeAck {
		et := ""
		if err != nil {
			et = in.errorType(err)
			if recording {
				span.SetAttributes(semconv.ErrorTypeKey.String(et))
				span.RecordError(err)
				span.SetStatus(codes.Error, errorText(err))
			}
		}
		ms = a.result(out, et)
	}
	if recording {
		span.SetAttributes(OutcomeKey.String(out))
	}
	span.End()
	a.running.Add(-1)
	ms.count.Add(1)
	in.inst.processDuration.Record(ctx, dur, ms.rec...)
}

// errorText is the status description of a failed call.
func errorText(err error) string {
	if pe, ok := err.(*mq.PanicError); ok {
		return fmt.Sprintf("handler panicked: %v", pe.Value)
	}
	return err.Error()
}
