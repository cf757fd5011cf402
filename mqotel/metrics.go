package mqotel

import (
	"context"
	"errors"
	"strings"
	"sync"
	"sync/atomic"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/metric/noop"
	semconv "go.opentelemetry.io/otel/semconv/v1.43.0"
	"go.opentelemetry.io/otel/trace"

	"github.com/mqkit/mq"
)

// Instrument names (see the package documentation for their Prometheus
// names).
const (
	MetricSentMessages      = "messaging.client.sent.messages"
	MetricOperationDuration = "messaging.client.operation.duration"
	MetricConsumedMessages  = "messaging.client.consumed.messages"
	MetricProcessDuration   = "messaging.process.duration"
	MetricProcessActive     = "mqkit.process.active"
	MetricConsumerLag       = "mqkit.consumer.lag"
	MetricConsumerUnacked   = "mqkit.consumer.unacked"
	MetricConsumerOldestAge = "mqkit.consumer.oldest_age"
)

// durationBuckets are the bucket bounds (seconds) the messaging
// conventions recommend for their duration histograms.
var durationBuckets = []float64{0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1, 2.5, 5, 7.5, 10}

type instruments struct {
	sent            metric.Int64ObservableCounter
	sendDuration    metric.Float64Histogram
	consumed        metric.Int64ObservableCounter
	processDuration metric.Float64Histogram
	active          metric.Int64ObservableUpDownCounter
	lag             metric.Int64ObservableGauge
	unacked         metric.Int64ObservableGauge
	oldestAge       metric.Float64ObservableGauge
}

// newInstruments creates the instruments; one that fails is reported to
// otel.Handle and replaced by a no-op.
func newInstruments(m metric.Meter) instruments {
	var errs []error
	check := func(err error) {
		if err != nil {
			errs = append(errs, err)
		}
	}
	var in instruments
	var err error
	nm := noop.Meter{}
	if in.sent, err = m.Int64ObservableCounter(MetricSentMessages, metric.WithUnit("{message}"),
		metric.WithDescription("Number of messages producer attempted to send to the broker.")); err != nil {
		check(err)
		in.sent, _ = nm.Int64ObservableCounter("")
	}
	if in.sendDuration, err = m.Float64Histogram(MetricOperationDuration, metric.WithUnit("s"),
		metric.WithDescription("Duration of messaging operation initiated by a producer or consumer client."),
		metric.WithExplicitBucketBoundaries(durationBuckets...)); err != nil {
		check(err)
		in.sendDuration, _ = nm.Float64Histogram("")
	}
	if in.consumed, err = m.Int64ObservableCounter(MetricConsumedMessages, metric.WithUnit("{message}"),
		metric.WithDescription("Number of messages that were delivered to the application.")); err != nil {
		check(err)
		in.consumed, _ = nm.Int64ObservableCounter("")
	}
	if in.processDuration, err = m.Float64Histogram(MetricProcessDuration, metric.WithUnit("s"),
		metric.WithDescription("Duration of processing operation."),
		metric.WithExplicitBucketBoundaries(durationBuckets...)); err != nil {
		check(err)
		in.processDuration, _ = nm.Float64Histogram("")
	}
	if in.active, err = m.Int64ObservableUpDownCounter(MetricProcessActive, metric.WithUnit("{message}"),
		metric.WithDescription("Number of handler calls running.")); err != nil {
		check(err)
		in.active, _ = nm.Int64ObservableUpDownCounter("")
	}
	if in.lag, err = m.Int64ObservableGauge(MetricConsumerLag, metric.WithUnit("{message}"),
		metric.WithDescription("Messages of the partition the consumer group has not received yet.")); err != nil {
		check(err)
		in.lag, _ = nm.Int64ObservableGauge("")
	}
	if in.unacked, err = m.Int64ObservableGauge(MetricConsumerUnacked, metric.WithUnit("{message}"),
		metric.WithDescription("Messages of the partition delivered to the consumer group and not yet acknowledged.")); err != nil {
		check(err)
		in.unacked, _ = nm.Int64ObservableGauge("")
	}
	if in.oldestAge, err = m.Float64ObservableGauge(MetricConsumerOldestAge, metric.WithUnit("s"),
		metric.WithDescription("How long the oldest message of the partition not yet acknowledged by the consumer group has waited since it was produced.")); err != nil {
		check(err)
		in.oldestAge, _ = nm.Float64ObservableGauge("")
	}
	if len(errs) > 0 {
		otel.Handle(errors.Join(errs...))
	}
	return in
}

// attrCache maps keys to values built once: the attribute sets of a
// topic, group and outcome, so that recording allocates nothing.
type attrCache[K comparable, V any] struct{ m sync.Map }

func (c *attrCache[K, V]) get(k K, build func() V) V {
	if v, ok := c.m.Load(k); ok {
		return v.(V)
	}
	v, _ := c.m.LoadOrStore(k, build())
	return v.(V)
}

// measure is one attribute set: its options for the histograms, and the
// count of messages with it, which the counters report on collection.
//
// The counters (messaging.client.sent.messages and .consumed.messages)
// are asynchronous: a message costs an atomic add, not a measurement of
// the SDK (which resolves the attribute set on every call); they are
// exported alike, as monotonic cumulative sums.
type measure struct {
	rec   []metric.RecordOption
	obs   metric.ObserveOption
	count atomic.Int64
}

func newMeasure(kvs ...attribute.KeyValue) *measure {
	o := metric.WithAttributeSet(attribute.NewSet(kvs...))
	return &measure{rec: []metric.RecordOption{o}, obs: o}
}

// observe reports m's count, once it counted something.
func (m *measure) observe(o metric.Observer, c metric.Int64Observable) {
	if n := m.count.Load(); n > 0 {
		o.ObserveInt64(c, n, m.obs)
	}
}

// withSystem prepends messaging.system to kvs, when it is known.
func withSystem(system string, kvs ...attribute.KeyValue) []attribute.KeyValue {
	if system == "" {
		return kvs
	}
	return append([]attribute.KeyValue{semconv.MessagingSystemKey.String(system)}, kvs...)
}

// sendKey identifies the attribute sets of the sends to one topic.
type sendKey struct{ topic string }

// sendAttrs are the span attributes and metric attribute sets of the
// sends to one topic.
type sendAttrs struct {
	name  string               // the span name
	span  []attribute.KeyValue // span attributes known at start; shared, never modified
	start []trace.SpanStartOption
	ok    *measure
	base  []attribute.KeyValue
	fails attrCache[string, *measure] // by error.type
}

func (in *Instrumentation) sendAttrs(topic string) *sendAttrs {
	return in.sendAttr.get(sendKey{topic}, func() *sendAttrs {
		base := withSystem(in.system,
			semconv.MessagingOperationName("send"),
			semconv.MessagingOperationTypeSend,
			semconv.MessagingDestinationName(topic))
		return &sendAttrs{name: "send " + topic, span: base, ok: newMeasure(base...), base: base,
			start: []trace.SpanStartOption{trace.WithSpanKind(trace.SpanKindProducer), trace.WithAttributes(base...)}}
	})
}

func (s *sendAttrs) failed(errType string) *measure {
	return s.fails.get(errType, func() *measure {
		return newMeasure(append(append([]attribute.KeyValue{}, s.base...), semconv.ErrorTypeKey.String(errType))...)
	})
}

// consKey identifies the attribute sets of one consumer.
type consKey struct{ scheme, topic, group string }

// consAttrs are the span attributes and metric attribute sets of the
// deliveries of one consumer.
type consAttrs struct {
	key     consKey
	system  string
	name    string               // the span name
	span    []attribute.KeyValue // span attributes known at start; shared, never modified
	start   []trace.SpanStartOption
	running atomic.Int64 // handler calls running, observed as mqkit.process.active
	active  metric.ObserveOption
	ack     *measure
	base    []attribute.KeyValue
	results attrCache[resultKey, *measure]
}

type resultKey struct{ outcome, errType string }

// consAttrs returns the attribute sets of a consumer's deliveries, made
// once per topic, group and scheme.
func (in *Instrumentation) consAttrs(k consKey) *consAttrs {
	return in.consAttr.get(k, func() *consAttrs { return in.newConsAttrs(k) })
}

func (in *Instrumentation) newConsAttrs(k consKey) *consAttrs {
	system := in.systemOf(k.scheme)
	base := withSystem(system,
		semconv.MessagingOperationName("process"),
		semconv.MessagingOperationTypeProcess,
		semconv.MessagingDestinationName(k.topic),
		semconv.MessagingConsumerGroupName(k.group))
	c := &consAttrs{
		key:    k,
		system: system,
		name:   "process " + k.topic,
		span:   base,
		start:  []trace.SpanStartOption{trace.WithSpanKind(trace.SpanKindConsumer), trace.WithAttributes(base...)},
		active: metric.WithAttributeSet(attribute.NewSet(withSystem(system, semconv.MessagingDestinationName(k.topic), semconv.MessagingConsumerGroupName(k.group))...)),
		base:   base,
	}
	c.ack = c.result(OutcomeAck, "")
	return c
}

func (c *consAttrs) result(outcome, errType string) *measure {
	return c.results.get(resultKey{outcome, errType}, func() *measure {
		kvs := append(append([]attribute.KeyValue{}, c.base...), OutcomeKey.String(outcome))
		if errType != "" {
			kvs = append(kvs, semconv.ErrorTypeKey.String(errType))
		}
		return newMeasure(kvs...)
	})
}

// lagObserver polls Client.Lag for the registered (topic, group) pairs
// when the metrics are collected.
type lagObserver struct {
	in  *Instrumentation
	mu  sync.Mutex
	reg map[*lagWatch]struct{}
}

type lagWatch struct {
	c            *mq.Client
	topic, group string
	system       string
}

func (l *lagObserver) init(in *Instrumentation, m metric.Meter) {
	l.in = in
	l.reg = map[*lagWatch]struct{}{}
	if _, err := m.RegisterCallback(l.observe, in.inst.lag, in.inst.unacked, in.inst.oldestAge); err != nil {
		otel.Handle(err)
	}
	if _, err := m.RegisterCallback(in.observeCounts, in.inst.active, in.inst.sent, in.inst.consumed); err != nil {
		otel.Handle(err)
	}
}

// observeCounts reports the counts kept in atomics: handler calls
// running, messages sent and consumed, per attribute set.
func (in *Instrumentation) observeCounts(_ context.Context, o metric.Observer) error {
	in.consAttr.m.Range(func(_, v any) bool {
		a := v.(*consAttrs)
		o.ObserveInt64(in.inst.active, a.running.Load(), a.active)
		a.results.m.Range(func(_, v any) bool {
			v.(*measure).observe(o, in.inst.consumed)
			return true
		})
		return true
	})
	in.sendAttr.m.Range(func(_, v any) bool {
		a := v.(*sendAttrs)
		a.ok.observe(o, in.inst.sent)
		a.fails.m.Range(func(_, v any) bool {
			v.(*measure).observe(o, in.inst.sent)
			return true
		})
		return true
	})
	return nil
}

// ObserveLag makes the lag gauges (mqkit.consumer.lag, .unacked and
// .oldest_age) report how far group is behind on topic, per partition,
// shard or queue, as c.Lag tells. c.Lag is called only when the metrics
// are collected (a Prometheus scrape), once per registered pair, each
// bounded by WithLagTimeout. Counts the backend cannot tell (-1) are not
// reported; nor is anything while the group is unknown to the broker
// (before its first consumer joined) or the broker cannot be reached.
// Other errors go to otel.Handle. Call the returned function to stop
// observing; it is idempotent.
func (in *Instrumentation) ObserveLag(c *mq.Client, topic, group string) (stop func()) {
	w := &lagWatch{c: c, topic: topic, group: group, system: in.systemOf(schemeOf(c.String()))}
	l := &in.lag
	l.mu.Lock()
	l.reg[w] = struct{}{}
	l.mu.Unlock()
	return func() {
		l.mu.Lock()
		delete(l.reg, w)
		l.mu.Unlock()
	}
}

// schemeOf returns the scheme of a client's redacted URL ("" for a client
// made with mq.NewClient, whose String is its connection's type).
func schemeOf(url string) string {
	if i := strings.Index(url, "://"); i > 0 {
		return url[:i]
	}
	return ""
}

func (l *lagObserver) observe(ctx context.Context, o metric.Observer) error {
	l.mu.Lock()
	ws := make([]*lagWatch, 0, len(l.reg))
	for w := range l.reg {
		ws = append(ws, w)
	}
	l.mu.Unlock()
	in := l.in
	for _, w := range ws {
		lctx, cancel := context.WithTimeout(ctx, in.lagTimeout)
		lag, err := w.c.Lag(lctx, w.topic, w.group)
		cancel()
		if err != nil {
			if !errors.Is(err, mq.ErrUnknownGroup) && !errors.Is(err, mq.ErrUnavailable) &&
				!errors.Is(err, mq.ErrClosed) && !errors.Is(err, errors.ErrUnsupported) && ctx.Err() == nil {
				otel.Handle(err)
			}
			continue
		}
		for _, p := range lag {
			set := metric.WithAttributeSet(attribute.NewSet(withSystem(w.system,
				semconv.MessagingDestinationName(w.topic),
				semconv.MessagingConsumerGroupName(w.group),
				semconv.MessagingDestinationPartitionID(p.Partition))...))
			if p.Backlog >= 0 {
				o.ObserveInt64(in.inst.lag, p.Backlog, set)
			}
			if p.Unacked >= 0 {
				o.ObserveInt64(in.inst.unacked, p.Unacked, set)
			}
			if p.OldestAge >= 0 {
				o.ObserveFloat64(in.inst.oldestAge, p.OldestAge.Seconds(), set)
			}
		}
	}
	return nil
}
