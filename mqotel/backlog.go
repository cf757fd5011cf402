package mqotel

import (
	"context"
	"errors"
	"sync"
	"time"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
)

// Names of the outbox backlog gauges (see ObserveOutbox).
const (
	MetricOutboxRows      = "mqkit.outbox.rows"
	MetricOutboxOldestAge = "mqkit.outbox.oldest_age"
	// AttrOutboxTable names the outbox table of a backlog measurement.
	AttrOutboxTable = "mqkit.outbox.table"
)

// BacklogFunc reports an outbox's backlog: the committed rows no relay
// has published yet and the age of the oldest. Package outbox's
// Table.Backlog gives both:
//
//	func(ctx context.Context) (int64, time.Duration, error) {
//		b, err := table.Backlog(ctx, db)
//		return b.Rows, b.Age, err
//	}
type BacklogFunc func(ctx context.Context) (rows int64, oldest time.Duration, err error)

// outboxObserver polls the registered backlogs when metrics are collected.
type outboxObserver struct {
	once    sync.Once
	mu      sync.Mutex
	reg     map[*outboxWatch]struct{}
	rows    metric.Int64ObservableGauge
	age     metric.Float64ObservableGauge
	timeout time.Duration
}

type outboxWatch struct {
	table string
	f     BacklogFunc
}

// ObserveOutbox makes the gauges mqkit.outbox.rows and
// mqkit.outbox.oldest_age (attribute mqkit.outbox.table) report the
// backlog of a transactional outbox, as f tells. f is called only when the
// metrics are collected, bounded by WithLagTimeout; an error skips the
// table for that collection and goes to otel.Handle (a cancelled context
// does not). Call the returned function to stop; it is idempotent.
func (in *Instrumentation) ObserveOutbox(table string, f BacklogFunc) (stop func()) {
	o := &in.outbox
	o.once.Do(func() {
		o.reg = map[*outboxWatch]struct{}{}
		o.timeout = in.lagTimeout
		var err error
		if o.rows, err = in.meter.Int64ObservableGauge(MetricOutboxRows, metric.WithUnit("{message}"),
			metric.WithDescription("Committed outbox rows no relay has published yet.")); err != nil {
			otel.Handle(err)
			return
		}
		if o.age, err = in.meter.Float64ObservableGauge(MetricOutboxOldestAge, metric.WithUnit("s"),
			metric.WithDescription("How long the oldest unpublished outbox row has waited since its transaction added it.")); err != nil {
			otel.Handle(err)
			return
		}
		if _, err := in.meter.RegisterCallback(o.observe, o.rows, o.age); err != nil {
			otel.Handle(err)
		}
	})
	w := &outboxWatch{table: table, f: f}
	o.mu.Lock()
	if o.reg != nil {
		o.reg[w] = struct{}{}
	}
	o.mu.Unlock()
	return func() {
		o.mu.Lock()
		delete(o.reg, w)
		o.mu.Unlock()
	}
}

func (o *outboxObserver) observe(ctx context.Context, obs metric.Observer) error {
	o.mu.Lock()
	ws := make([]*outboxWatch, 0, len(o.reg))
	for w := range o.reg {
		ws = append(ws, w)
	}
	o.mu.Unlock()
	for _, w := range ws {
		fctx, cancel := context.WithTimeout(ctx, o.timeout)
		rows, age, err := w.f(fctx)
		cancel()
		if err != nil {
			if ctx.Err() == nil && !errors.Is(err, context.Canceled) {
				otel.Handle(err)
			}
			continue
		}
		set := metric.WithAttributeSet(attribute.NewSet(attribute.String(AttrOutboxTable, w.table)))
		obs.ObserveInt64(o.rows, rows, set)
		obs.ObserveFloat64(o.age, age.Seconds(), set)
	}
	return nil
}
