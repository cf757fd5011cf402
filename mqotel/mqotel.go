package mqotel

import (
	"context"
	"errors"
	"reflect"
	"strings"
	"time"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/propagation"
	semconv "go.opentelemetry.io/otel/semconv/v1.43.0"
	"go.opentelemetry.io/otel/trace"
	tracenoop "go.opentelemetry.io/otel/trace/noop"

	"github.com/mqkit/mq"
)

// ScopeName is the instrumentation scope of the tracer and meter.
const ScopeName = "github.com/mqkit/mq/mqotel"

// Attribute keys of mqkit's own, beside the semantic conventions' ones.
const (
	// AttemptKey is the message's Attempt when a handler call began (int).
	AttemptKey = attribute.Key("mqkit.attempt")
	// OutcomeKey is what became of a delivery: one of the Outcome values.
	OutcomeKey = attribute.Key("mqkit.outcome")
	// OffsetKey is a delivery's position within its partition where it is
	// not a Kafka offset: a Redis entry ID, an AMQP delivery tag (string).
	OffsetKey = attribute.Key("mqkit.offset")
)

// Values of OutcomeKey (see the package documentation).
const (
	OutcomeAck          = "ack"
	OutcomeDeadLettered = string(mq.OutcomeDeadLettered)
	OutcomeDuplicate    = string(mq.OutcomeDuplicate)
	OutcomeRetry        = "retry"
	OutcomeInProgress   = "in_progress"
	OutcomeUnavailable  = "unavailable"
)

// DefaultLagTimeout bounds each Client.Lag call made for ObserveLag.
const DefaultLagTimeout = 5 * time.Second

// Instrumentation traces and measures the producers and consumers it is
// installed on (see Options). Make one with New; it is safe for
// concurrent use, and one may serve many clients of the same broker.
type Instrumentation struct {
	tracer        trace.Tracer
	noopTracer    bool // tracer is trace/noop's: a process span is started only where it changes the handler's context
	prop          propagation.TextMapPropagator
	spanOnly      bool     // prop is W3C TraceContext alone: Extract adds the creation context and nothing else
	fields        []string // the propagator's header names, cleared before an inject
	system        string
	messageParent bool
	errorType     func(error) string
	lagTimeout    time.Duration

	meter    metric.Meter
	inst     instruments
	sendAttr attrCache[sendKey, *sendAttrs]
	consAttr attrCache[consKey, *consAttrs]
	lag      lagObserver
	outbox   outboxObserver
}

// Option configures New.
type Option func(*config)

type config struct {
	tp            trace.TracerProvider
	mp            metric.MeterProvider
	prop          propagation.TextMapPropagator
	system        string
	messageParent bool
	errorType     func(error) string
	lagTimeout    time.Duration
}

// WithTracerProvider sets where spans go. Default otel.GetTracerProvider().
// A trace/noop provider turns tracing off; trace context is then still
// carried through from the messages' headers.
func WithTracerProvider(tp trace.TracerProvider) Option {
	return func(c *config) { c.tp = tp }
}

// WithMeterProvider sets where measurements go. Default
// otel.GetMeterProvider(). A metric/noop provider turns metrics off.
func WithMeterProvider(mp metric.MeterProvider) Option {
	return func(c *config) { c.mp = mp }
}

// WithPropagator sets how trace context is written into and read from
// message headers. Default otel.GetTextMapPropagator(), or W3C
// TraceContext when no global propagator was set when New ran.
func WithPropagator(p propagation.TextMapPropagator) Option {
	return func(c *config) { c.prop = p }
}

// WithSystem sets messaging.system for sends, which do not see the
// client's URL: "kafka", "rabbitmq", "redis" or "inmemory" for the
// backends of mqkit. Deliveries take it from the client's URL scheme, and
// use this one only for a client made with mq.NewClient. Without it send
// spans and send metrics have no messaging.system: use one Instrumentation
// per broker kind (they may share providers).
func WithSystem(system string) Option {
	return func(c *config) { c.system = system }
}

// WithMessageParent makes each process span a child of the message's
// creation context (the producer's send span) rather than of the
// consumer's context, so that producer and consumers share one trace. The
// span still links to the creation context, and links to the ambient
// span, if there is one. The conventions allow it for single-message
// processing, as here, and do not recommend it by default: a trace then
// grows with every hop and redelivery.
func WithMessageParent() Option {
	return func(c *config) { c.messageParent = true }
}

// WithErrorType sets how a failed send or handler call's error becomes
// the error.type attribute. It must return a short, low-cardinality name.
// The default names the SDK's errors (unavailable, in_progress, timeout,
// canceled, panic, closed, message_too_large, invalid_message,
// buffer_full), uses an ErrorType() string method of an error in the
// chain, then the package-qualified type of the first error in the chain
// that is not a plain wrapper, and "_OTHER" for an errors.New error.
func WithErrorType(f func(error) string) Option {
	return func(c *config) { c.errorType = f }
}

// WithLagTimeout bounds each Client.Lag call that ObserveLag makes during
// a collection (default DefaultLagTimeout).
func WithLagTimeout(d time.Duration) Option {
	return func(c *config) { c.lagTimeout = d }
}

// New returns an Instrumentation configured by opts. Errors creating the
// instruments go to otel.Handle; the instruments concerned then record
// nothing.
func New(opts ...Option) *Instrumentation {
	var c config
	for _, o := range opts {
		o(&c)
	}
	if c.tp == nil {
		c.tp = otel.GetTracerProvider()
	}
	if c.mp == nil {
		c.mp = otel.GetMeterProvider()
	}
	if c.prop == nil {
		c.prop = otel.GetTextMapPropagator()
		if len(c.prop.Fields()) == 0 { // the global no-op: nothing was set
			c.prop = propagation.TraceContext{}
		}
	}
	if c.errorType == nil {
		c.errorType = DefaultErrorType
	}
	if c.lagTimeout <= 0 {
		c.lagTimeout = DefaultLagTimeout
	}
	tracer := c.tp.Tracer(ScopeName, trace.WithSchemaURL(semconv.SchemaURL))
	_, noopTracer := tracer.(tracenoop.Tracer)
	_, spanOnly := c.prop.(propagation.TraceContext)
	in := &Instrumentation{
		tracer:        tracer,
		noopTracer:    noopTracer,
		prop:          c.prop,
		spanOnly:      spanOnly,
		fields:        c.prop.Fields(),
		system:        c.system,
		messageParent: c.messageParent,
		errorType:     c.errorType,
		lagTimeout:    c.lagTimeout,
	}
	meter := c.mp.Meter(ScopeName, metric.WithSchemaURL(semconv.SchemaURL))
	in.meter = meter
	in.inst = newInstruments(meter)
	in.lag.init(in, meter)
	return in
}

// Options returns the options that install the instrumentation: produce
// middleware (send spans, trace context into headers, send metrics) and
// consume middleware (process spans, process metrics). Give them to
// mq.Open or mq.NewClient, or to Client.Producer or Client.Consumer for
// one producer or consumer.
func (in *Instrumentation) Options() []mq.Option {
	return []mq.Option{
		mq.WithProduceMiddleware(in.ProduceMiddleware),
		mq.WithConsumeMiddleware(in.ConsumeMiddleware),
	}
}

// OnRetry records an in-process retry as a "retry" event on the span of
// ctx: the attempt that failed, its error and the wait. Its signature is
// that of middleware.RetryConfig.OnRetry, where it belongs.
func (in *Instrumentation) OnRetry(ctx context.Context, m *mq.Message, err error, wait time.Duration) {
	span := trace.SpanFromContext(ctx)
	if !span.IsRecording() {
		return
	}
	span.AddEvent("retry", trace.WithAttributes(
		AttemptKey.Int(m.Attempt),
		semconv.ErrorTypeKey.String(in.errorType(err)),
		attribute.String("exception.message", err.Error()),
		attribute.Int64("mqkit.retry.wait_ms", wait.Milliseconds()),
	))
}

// systemOf maps a URL scheme to messaging.system.
func (in *Instrumentation) systemOf(scheme string) string {
	switch {
	case scheme == "":
		return in.system
	case scheme == "kafka" || strings.HasPrefix(scheme, "kafka+"):
		return "kafka"
	case scheme == "amqp" || scheme == "amqps":
		return "rabbitmq"
	case scheme == "redis" || scheme == "rediss" || strings.HasPrefix(scheme, "redis+") || strings.HasPrefix(scheme, "rediss+"):
		return "redis"
	case scheme == "mem":
		return "inmemory"
	}
	return scheme
}

// outcome says what became of a delivery whose handler call returned err.
func outcome(info *mq.DeliveryInfo, err error) string {
	if err == nil {
		if info != nil {
			if o := info.Outcome(); o != "" {
				return string(o)
			}
		}
		return OutcomeAck
	}
	switch {
	case errors.Is(err, mq.ErrInProgress):
		return OutcomeInProgress
	case errors.Is(err, mq.ErrUnavailable):
		return OutcomeUnavailable
	}
	return OutcomeRetry
}

// DefaultErrorType is the default error.type of an error (see
// WithErrorType).
func DefaultErrorType(err error) string {
	var pe *mq.PanicError
	switch {
	case err == nil:
		return ""
	case errors.As(err, &pe):
		return "panic"
	case errors.Is(err, mq.ErrUnavailable):
		return "unavailable"
	case errors.Is(err, mq.ErrInProgress):
		return "in_progress"
	case errors.Is(err, context.DeadlineExceeded):
		return "timeout"
	case errors.Is(err, context.Canceled):
		return "canceled"
	case errors.Is(err, mq.ErrClosed):
		return "closed"
	case errors.Is(err, mq.ErrMessageTooLarge):
		return "message_too_large"
	case errors.Is(err, mq.ErrInvalidMessage):
		return "invalid_message"
	case errors.Is(err, mq.ErrBufferFull):
		return "buffer_full"
	}
	var et interface{ ErrorType() string }
	if errors.As(err, &et) {
		if s := et.ErrorType(); s != "" {
			return s
		}
	}
	for e := err; e != nil; {
		t := reflect.TypeOf(e)
		name := typeName(t)
		if !plainWrapper[name] {
			return name
		}
		switch u := e.(type) {
		case interface{ Unwrap() error }:
			e = u.Unwrap()
		case interface{ Unwrap() []error }:
			if es := u.Unwrap(); len(es) > 0 {
				e = es[0]
				continue
			}
			e = nil
		default:
			e = nil
		}
	}
	return semconv.ErrorTypeOther.Value.AsString()
}

// plainWrapper holds the error types that say nothing about the error
// they wrap, or carry only its text.
var plainWrapper = map[string]bool{
	"*fmt.wrapError":                             true,
	"*fmt.wrapErrors":                            true,
	"*errors.errorString":                        true,
	"*errors.joinError":                          true,
	"*github.com/mqkit/mq.permanentError":        true,
	"*github.com/mqkit/mq/middleware.RetryError": true,
}

// typeName is t's package-qualified name, "*" first for a pointer.
func typeName(t reflect.Type) string {
	prefix := ""
	if t.Kind() == reflect.Pointer {
		prefix, t = "*", t.Elem()
	}
	if t.PkgPath() == "" || t.Name() == "" {
		return prefix + t.String()
	}
	return prefix + t.PkgPath() + "." + t.Name()
}
