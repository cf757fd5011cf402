// Command benchall runs the benchmark matrix behind BENCHMARKS.md: for
// mem:// and for Redis, RabbitMQ and Kafka brokers started with the
// project's testbed (or given by URL), the throughput workload through the
// SDK and the bare driver alternately, and the slow-handler workload
// (2 ms handler, concurrency 32, 1000 keys), printing Markdown tables of
// the medians and the SDK/bare ratios. With -suite issue16 the throughput
// workload is replaced by issue 16's rows (consume at concurrency 1, 16
// and 32; produce 16×1 and 4×100), with CPU seconds per 100,000 messages
// and their SDK/bare ratios.
//
//	source .testbed.env   # images for the testbed
//	go run ./internal/bench/benchall -runs 3
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"strings"
	"time"

	"github.com/mqkit/mq/integration/testbed"
	"github.com/mqkit/mq/internal/bench"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	err := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "benchall:", err)
		os.Exit(1)
	}
}

type target struct {
	name string
	kind testbed.Kind // "" for mem://
	url  string
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("benchall", flag.ContinueOnError)
	fs.SetOutput(stderr)
	brokers := fs.String("brokers", "mem,redis,rabbitmq,kafka", "comma-separated: mem, redis, rabbitmq, kafka")
	redisURL := fs.String("redis-url", "", "use this Redis instead of starting one")
	amqpURL := fs.String("amqp-url", "", "use this RabbitMQ instead of starting one")
	kafkaURL := fs.String("kafka-url", "", "use this Kafka instead of starting one")
	runs := fs.Int("runs", 3, "runs of each system per workload (medians are reported); 0 runs none (with -profile-dir: profiles only)")
	n := fs.Int("n", 100000, "messages of the throughput workload")
	slowN := fs.Int("slow-n", 30000, "messages of the slow-handler workload (0: skip it)")
	million := fs.Int("flat-n", 0, "also consume this many messages through the SDK on each broker to show memory stays flat (e.g. 1000000; 0: skip)")
	quiet := fs.Bool("quiet", false, "no progress lines")
	params := fs.String("params", "", "query parameters added to every broker URL, e.g. max_in_flight=512 (portable ones affect the SDK only)")
	suite := fs.String("suite", "", "run this preset of workloads (e.g. issue16: consume at concurrency 1, 16 and 32, produce 16×1 and 4×100) instead of the throughput workload, with -n messages per row")
	profDir := fs.String("profile-dir", "", "after the tables, run the throughput workload once more per system (mode consume) with a CPU profile of each phase written to `dir`/<broker>-<system>-<phase>.pprof")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *suite != "" {
		if _, err := bench.Suite(*suite, bench.Workload{}); err != nil {
			return err
		}
	}
	var targets []target
	for _, b := range strings.Split(*brokers, ",") {
		switch strings.TrimSpace(b) {
		case "mem":
			targets = append(targets, target{name: "mem://", url: "mem://"})
		case "redis":
			targets = append(targets, target{name: "Redis", kind: testbed.KindRedis, url: *redisURL})
		case "rabbitmq":
			targets = append(targets, target{name: "RabbitMQ", kind: testbed.KindRabbitMQ, url: *amqpURL})
		case "kafka":
			targets = append(targets, target{name: "Kafka", kind: testbed.KindKafka, url: *kafkaURL})
		default:
			return fmt.Errorf("unknown broker %q", b)
		}
	}
	var progress io.Writer = stderr
	if *quiet {
		progress = nil
	}
	fmt.Fprintf(stdout, "# benchall %s: GOMAXPROCS %d, %s/%s, %s, %d runs per system, medians\n\n", time.Now().UTC().Format(time.RFC3339), runtime.GOMAXPROCS(0), runtime.GOOS, runtime.GOARCH, runtime.Version(), *runs)
	for _, t := range targets {
		if t.url == "" {
			fmt.Fprintf(stderr, "starting %s...\n", t.kind)
			b, err := testbed.Start(ctx, t.kind)
			if err != nil {
				return fmt.Errorf("start %s: %w", t.kind, err)
			}
			t.url = b.URL
			if t.kind == testbed.KindKafka && *params != "" {
				t.url += "/"
			}
			defer func() {
				tctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Minute)
				defer cancel()
				_ = b.Terminate(tctx)
			}()
		}
		if *params != "" {
			sep := "?"
			if strings.Contains(t.url, "?") {
				sep = "&"
			}
			t.url += sep + *params
		}
		if err := runTarget(ctx, t, stdout, progress, *suite, *runs, *n, *slowN, *million); err != nil {
			return fmt.Errorf("%s: %w", t.name, err)
		}
		if *profDir != "" {
			if err := profileTarget(ctx, t, *profDir, *n); err != nil {
				return fmt.Errorf("%s: profile: %w", t.name, err)
			}
		}
	}
	return nil
}

func runTarget(ctx context.Context, t target, stdout, progress io.Writer, suite string, runs, n, slowN, flatN int) error {
	if runs == 0 {
		return nil // profiles only
	}
	systems := []bench.System{bench.SDK{URL: t.url}}
	if t.kind != "" {
		b, err := bench.Bare(t.url)
		if err != nil {
			return err
		}
		systems = append(systems, b)
	}
	// A fresh broker (above all Kafka's JVM) is slower for its first
	// seconds: warm it up through every system before measuring.
	for _, s := range systems {
		if _, err := bench.Run(ctx, s, bench.Workload{Messages: max(n/5, 1000)}, bench.ModeAll); err != nil {
			return fmt.Errorf("warm-up: %w", err)
		}
	}
	throughput := bench.Workload{Messages: n, Progress: progress}
	if suite != "" {
		rows, err := bench.Suite(suite, throughput)
		if err != nil {
			return err
		}
		fmt.Fprintf(stdout, "## %s: suite %s (%d × 1 KiB per row, 1000 keys, no-op handler; rows and systems alternate in rounds)\n\n", t.name, suite, n)
		if err := suiteMatrix(ctx, systems, rows, runs, stdout); err != nil {
			return err
		}
	} else {
		fmt.Fprintf(stdout, "## %s: throughput (%d × 1 KiB, 4 producers × batch 100, concurrency 32, 1000 keys)\n\n", t.name, n)
		if err := matrix(ctx, systems, throughput, bench.ModeAll, runs, stdout); err != nil {
			return err
		}
	}
	if slowN > 0 {
		slow := bench.Workload{Messages: slowN, HandlerSleep: 2 * time.Millisecond, Progress: progress}
		fmt.Fprintf(stdout, "## %s: slow handler (%d × 1 KiB, handler sleeps 2 ms, concurrency 32, 1000 keys; serial would be 500 msg/s)\n\n", t.name, slowN)
		if err := matrix(ctx, systems, slow, bench.ModeConsume, runs, stdout); err != nil {
			return err
		}
	}
	if flatN > 0 {
		flat := bench.Workload{Messages: flatN, Progress: progress, Timeout: 10 * time.Minute}
		fmt.Fprintf(stdout, "## %s: %d messages through the SDK (memory while consuming)\n\n", t.name, flatN)
		if err := matrix(ctx, systems[:1], flat, bench.ModeConsume, 1, stdout); err != nil {
			return err
		}
	}
	return nil
}

// suiteMatrix runs a suite's rows through every system runs times, in
// rounds, and prints the medians and the side-by-side comparison.
func suiteMatrix(ctx context.Context, systems []bench.System, rows []bench.Row, runs int, stdout io.Writer) error {
	all, err := bench.RunSuite(ctx, systems, rows, runs)
	if err != nil {
		return err
	}
	sum := bench.Summarize(all)
	if err := bench.WriteTable(stdout, sum); err != nil {
		return err
	}
	if len(systems) > 1 {
		fmt.Fprintln(stdout)
		if err := bench.WriteComparison(stdout, all, systems[0].Name(), systems[1].Name()); err != nil {
			return err
		}
	}
	fmt.Fprintln(stdout)
	return nil
}

// profileTarget runs the throughput workload once per system with a CPU
// profile of each phase.
func profileTarget(ctx context.Context, t target, dir string, n int) error {
	systems := []bench.System{bench.SDK{URL: t.url}}
	if t.kind != "" {
		b, err := bench.Bare(t.url)
		if err != nil {
			return err
		}
		systems = append(systems, b)
	}
	name := strings.ToLower(strings.TrimSuffix(t.name, "://"))
	var perr error
	var f *os.File
	w := bench.Workload{Messages: n, PhaseHook: func(system string, p bench.Phase, start bool) {
		if !start {
			if f != nil {
				pprof.StopCPUProfile()
				perr = errors.Join(perr, f.Close())
				f = nil
			}
			return
		}
		out, err := os.Create(filepath.Join(dir, fmt.Sprintf("%s-%s-%s.pprof", name, system, p)))
		if err != nil {
			perr = errors.Join(perr, err)
			return
		}
		if err := pprof.StartCPUProfile(out); err != nil {
			perr = errors.Join(perr, err, out.Close())
			return
		}
		f = out
	}}
	for _, s := range systems {
		if _, err := bench.Run(ctx, s, w, bench.ModeConsume); err != nil {
			return err
		}
	}
	return perr
}

// matrix runs w through every system runs times, alternating systems so a
// busy moment of the shared machine does not hit one system only, and
// prints the medians and ratios.
func matrix(ctx context.Context, systems []bench.System, w bench.Workload, mode bench.Mode, runs int, stdout io.Writer) error {
	var all []bench.Result
	for range runs {
		for _, s := range systems {
			rs, err := bench.Run(ctx, s, w, mode)
			if err != nil {
				return err
			}
			all = append(all, rs...)
		}
	}
	sum := bench.Summarize(all)
	if err := bench.WriteTable(stdout, sum); err != nil {
		return err
	}
	if len(systems) > 1 {
		fmt.Fprintln(stdout)
		_ = bench.WriteRatios(stdout, all, "sdk")
	}
	fmt.Fprintln(stdout)
	return nil
}
