package integration_test

import (
	"context"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	metricnoop "go.opentelemetry.io/otel/metric/noop"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	tracenoop "go.opentelemetry.io/otel/trace/noop"

	"github.com/mqkit/mq"
	"github.com/mqkit/mq/mqotel"
)

// discardSpans drops every span: the cost measured is the SDK's spans and
// batch processor, up to the exporter.
type discardSpans struct{}

func (discardSpans) ExportSpans(context.Context, []sdktrace.ReadOnlySpan) error { return nil }
func (discardSpans) Shutdown(context.Context) error                             { return nil }

// TestOtelOverhead measures produce+consume throughput with tracing and
// metrics off and on, side by side in one run: rounds alternate between
// the modes (off, metrics, traces 1% + metrics, traces all + metrics) so a
// busy moment of a shared machine does not hit one mode only, and the
// median of each is logged with its ratio to off. The workload: 4
// producers sending batches of 100 messages of 1 KiB while one consumer
// at concurrency 32 handles them (1000 keys, no-op handler). It is a
// measurement, run only with MQ_TEST_OVERHEAD=1 (rounds: MQ_TEST_OVERHEAD_ROUNDS,
// default 5; backends: MQ_TEST_OVERHEAD_ONLY=mem,redis,kafka,rabbitmq,
// default all); see BENCHMARKS.md.
func TestOtelOverhead(t *testing.T) {
	if os.Getenv("MQ_TEST_OVERHEAD") != "1" {
		t.Skip("a measurement: set MQ_TEST_OVERHEAD=1")
	}
	rounds := 5
	only := os.Getenv("MQ_TEST_OVERHEAD_ONLY") // a comma-separated list of backends; empty: all
	if n, err := strconv.Atoi(os.Getenv("MQ_TEST_OVERHEAD_ROUNDS")); err == nil && n > 0 {
		rounds = n
	}
	for _, bk := range []struct {
		name, system string
		n            int
		url          func(t *testing.T) string
	}{
		{"mem", "inmemory", 200000, func(*testing.T) string { return "mem://?capacity=1000000" }},
		{"redis", "redis", 30000, targetURL("redis")},
		{"kafka", "kafka", 100000, targetURL("kafka")},
		{"rabbitmq", "rabbitmq", 30000, targetURL("rabbitmq")},
	} {
		t.Run(bk.name, func(t *testing.T) {
			if only != "" && !slices.Contains(strings.Split(only, ","), bk.name) {
				t.Skip("not in MQ_TEST_OVERHEAD_ONLY")
			}
			url := bk.url(t)
			modes := []struct {
				name    string
				sampler sdktrace.Sampler // nil: no tracing
				metrics bool
				on      bool
			}{
				{"off", nil, false, false},
				{"metrics", nil, true, true},
				{"traces 1% + metrics", sdktrace.ParentBased(sdktrace.TraceIDRatioBased(0.01)), true, true},
				{"traces all + metrics", sdktrace.AlwaysSample(), true, true},
			}
			rates := make([][]float64, len(modes))
			cpus := make([][]float64, len(modes))
			runOnce := func(i int) {
				m := modes[i]
				var opts []mq.Option
				if m.on {
					o := []mqotel.Option{mqotel.WithSystem(bk.system), mqotel.WithTracerProvider(tracenoop.NewTracerProvider()), mqotel.WithMeterProvider(metricnoop.NewMeterProvider())}
					if m.sampler != nil {
						tp := sdktrace.NewTracerProvider(sdktrace.WithSampler(m.sampler), sdktrace.WithBatcher(discardSpans{}))
						defer tp.Shutdown(context.Background())
						o = append(o, mqotel.WithTracerProvider(tp))
					}
					if m.metrics {
						mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(sdkmetric.NewManualReader()))
						defer mp.Shutdown(context.Background())
						o = append(o, mqotel.WithMeterProvider(mp))
					}
					opts = mqotel.New(o...).Options()
				}
				rate, cpu := pipelineRate(t, url, bk.n, opts)
				rates[i], cpus[i] = append(rates[i], rate), append(cpus[i], cpu)
			}
			for i := range modes { // warm-up, not counted
				runOnce(i)
				rates[i], cpus[i] = nil, nil
			}
			for r := range rounds {
				for j := range modes {
					i := (j + r) % len(modes) // rotate the order too
					runOnce(i)
				}
			}
			var b strings.Builder
			fmt.Fprintf(&b, "%s, %d messages, %d rounds; medians of msg/s and of the client's CPU µs per message:\n", bk.name, bk.n, rounds)
			base, baseCPU := median(rates[0]), median(cpus[0])
			for i, m := range modes {
				med, cpu := median(rates[i]), median(cpus[i])
				fmt.Fprintf(&b, "  %-22s %9.0f msg/s (%+6.1f%%)  %6.2f µs CPU/msg (%+6.1f%%)  runs %v\n",
					m.name, med, 100*(med/base-1), cpu, 100*(cpu/baseCPU-1), rounded(rates[i]))
			}
			t.Log(b.String())
		})
	}
}

// targetURL returns the URL of the shared broker of the named target
// (started on first use), with the target's parameters.
func targetURL(name string) func(t *testing.T) string {
	return func(t *testing.T) string {
		for _, tg := range targets {
			if tg.name == name {
				return withParams(t, tg.shared(t).URL, tg.params)
			}
		}
		t.Fatalf("no %s target", name)
		return ""
	}
}

func median(xs []float64) float64 {
	s := slices.Clone(xs)
	slices.Sort(s)
	if len(s) == 0 {
		return 0
	}
	return s[len(s)/2]
}

func rounded(xs []float64) []int {
	out := make([]int, len(xs))
	for i, x := range xs {
		out[i] = int(x)
	}
	return out
}

// pipelineRate produces n messages from 4 producers while one consumer
// handles them, and returns the messages per second from the first
// produce to the last handled.
func pipelineRate(t *testing.T, url string, n int, opts []mq.Option) (rate, cpuPerMsg float64) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	c, err := mq.Open(ctx, url, opts...)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	topic := "overhead-" + mq.NewID()
	cons, err := c.Consumer(ctx, topic, mq.WithGroup("g"), mq.WithConcurrency(32))
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		_ = cons.Close()
		_ = c.DeleteGroup(context.Background(), topic, "g")
	}()
	body := make([]byte, 1024)
	var handled atomic.Int64
	all := make(chan struct{})
	cctx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	start, cpu0 := time.Now(), cpuTime()
	go func() {
		done <- cons.Consume(cctx, mq.HandlerFunc(func(context.Context, *mq.Message) error {
			if handled.Add(1) == int64(n) {
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
			for {
				lo := int(next.Add(batch) - batch)
				if lo >= n {
					errs <- nil
					return
				}
				msgs := make([]*mq.Message, 0, batch)
				for i := lo; i < min(lo+batch, n); i++ {
					msgs = append(msgs, &mq.Message{Key: strconv.Itoa(i % 1000), Body: body})
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
			t.Fatal(err)
		}
	}
	select {
	case <-all:
	case <-ctx.Done():
		t.Fatalf("handled %d of %d", handled.Load(), n)
	}
	rate = float64(n) / time.Since(start).Seconds()
	cpuPerMsg = float64((cpuTime() - cpu0).Microseconds()) / float64(n)
	stop()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	return rate, cpuPerMsg
}

// cpuTime is the CPU time (user and system) the process used so far.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
