package mqotel_test

import (
	"context"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	metricnoop "go.opentelemetry.io/otel/metric/noop"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	tracenoop "go.opentelemetry.io/otel/trace/noop"

	"github.com/mqkit/mq"
	"github.com/mqkit/mq/mqotel"
)

// discard is a span exporter that drops every span, so a benchmark pays
// what a service pays up to its exporter: the SDK's spans and its batch
// processor.
type discard struct{}

func (discard) ExportSpans(context.Context, []sdktrace.ReadOnlySpan) error { return nil }
func (discard) Shutdown(context.Context) error                             { return nil }

// overheadMode is one way of running the benchmark pipeline.
type overheadMode struct {
	name string
	opts func(b *testing.B) []mq.Option // nil: no instrumentation
}

func overheadModes() []overheadMode {
	inst := func(sampler sdktrace.Sampler, metrics bool) func(b *testing.B) []mq.Option {
		return func(b *testing.B) []mq.Option {
			var o []mqotel.Option
			if sampler != nil {
				tp := sdktrace.NewTracerProvider(sdktrace.WithSampler(sampler), sdktrace.WithBatcher(discard{}))
				b.Cleanup(func() { _ = tp.Shutdown(context.Background()) })
				o = append(o, mqotel.WithTracerProvider(tp))
			} else {
				o = append(o, mqotel.WithTracerProvider(tracenoop.NewTracerProvider()))
			}
			if metrics {
				mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(sdkmetric.NewManualReader()))
				b.Cleanup(func() { _ = mp.Shutdown(context.Background()) })
				o = append(o, mqotel.WithMeterProvider(mp))
			} else {
				o = append(o, mqotel.WithMeterProvider(metricnoop.NewMeterProvider()))
			}
			return mqotel.New(append(o, mqotel.WithSystem("inmemory"))...).Options()
		}
	}
	return []overheadMode{
		{"off", nil},
		{"metrics", inst(nil, true)},
		{"traces=1%+metrics", inst(sdktrace.ParentBased(sdktrace.TraceIDRatioBased(0.01)), true)},
		{"traces=all+metrics", inst(sdktrace.AlwaysSample(), true)},
	}
}

// BenchmarkOverhead measures produce+consume on mem:// with and without
// the instrumentation: 4 producers sending batches of 100 messages of
// 1 KiB, one consumer at concurrency 32, 1000 keys. One op is one message
// produced and handled; msg/s is reported too. Compare the modes with
// benchstat, or read BENCHMARKS.md.
func BenchmarkOverhead(b *testing.B) {
	for _, mode := range overheadModes() {
		b.Run(mode.name, func(b *testing.B) {
			var opts []mq.Option
			if mode.opts != nil {
				opts = mode.opts(b)
			}
			runPipeline(b, "mem://?capacity=1000000", opts)
		})
	}
}

func runPipeline(b *testing.B, url string, opts []mq.Option) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	c, err := mq.Open(ctx, url, opts...)
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	topic := "bench-" + mq.NewID()
	cons, err := c.Consumer(ctx, topic, mq.WithGroup("g"), mq.WithConcurrency(32))
	if err != nil {
		b.Fatal(err)
	}
	defer cons.Close()
	body := make([]byte, 1024)
	keys := make([]string, 1000)
	for i := range keys {
		keys[i] = fmt.Sprint("key-", i)
	}
	var handled atomic.Int64
	all := make(chan struct{})
	n := int64(b.N)
	cctx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	b.ReportAllocs()
	b.ResetTimer()
	start := time.Now()
	go func() {
		done <- cons.Consume(cctx, mq.HandlerFunc(func(context.Context, *mq.Message) error {
			if handled.Add(1) == n {
				close(all)
			}
			return nil
		}))
	}()
	const producers, batch = 4, 100
	errs := make(chan error, producers)
	var next atomic.Int64
	for range producers {
		go func() {
			p := c.Producer()
			msgs := make([]*mq.Message, 0, batch)
			for {
				lo := next.Add(batch) - batch
				if lo >= n {
					errs <- nil
					return
				}
				msgs = msgs[:0]
				for i := lo; i < min(lo+batch, n); i++ {
					msgs = append(msgs, &mq.Message{Key: keys[i%int64(len(keys))], Body: body})
				}
				if err := p.Produce(ctx, topic, msgs...); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	for range producers {
		if err := <-errs; err != nil {
			b.Fatal(err)
		}
	}
	select {
	case <-all:
	case <-ctx.Done():
		b.Fatalf("handled %d of %d", handled.Load(), n)
	}
	elapsed := time.Since(start)
	b.StopTimer()
	stop()
	if err := <-done; err != nil {
		b.Fatal(err)
	}
	b.ReportMetric(float64(n)/elapsed.Seconds(), "msg/s")
}
