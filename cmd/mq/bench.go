package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"runtime"
	"runtime/pprof"
	"strings"
	"time"

	"github.com/mqkit/mq"
	"github.com/mqkit/mq/internal/bench"
)

// bench runs a produce/consume workload through the SDK (and, with -bare,
// through the bare driver of the same broker) and prints a table of
// throughput, latency and memory, with the SDK/bare ratios.
func (a *app) bench(ctx context.Context, args []string) int {
	fs := a.flags("bench")
	url := a.urlFlag(fs)
	n := fs.Int("n", 100000, "messages per phase")
	size := fs.Int("size", 1024, "body bytes per message (at least 16)")
	producers := fs.Int("producers", 4, "goroutines producing at once")
	batch := fs.Int("batch", 100, "messages per Produce call")
	conc := fs.Int("concurrency", 32, "consumer handler concurrency")
	keys := fs.Int("keys", 1000, "distinct message keys (0: messages without keys)")
	modeName := fs.String("mode", "all", "phases: produce, consume (produce then consume), mixed (both at once) or all")
	bare := fs.Bool("bare", false, "also run the workload through the bare driver (kafka, amqp, redis) and print SDK/bare ratios")
	sleep := fs.Duration("handler-sleep", 0, "time the handler sleeps per message (simulated work)")
	runs := fs.Int("runs", 1, "runs of each system, alternating; the table shows medians")
	timeout := fs.Duration("timeout", 5*time.Minute, "bound of each phase")
	quiet := fs.Bool("quiet", false, "no progress line on stderr")
	cpuprofile := fs.String("cpuprofile", "", "write a CPU profile of the whole command to `file` (without -bare it profiles the SDK alone)")
	suite := fs.String("suite", "", "run a preset of workloads instead of one (sets -producers, -batch, -concurrency, -mode and -handler-sleep per row): "+strings.Join(bench.Suites(), ", "))
	fs.Usage = func() {
		fmt.Fprintf(a.stderr, "usage: mq bench [flags]\n\nProduces -n messages of -size bytes with -producers goroutines in batches of\n-batch, then consumes them as one group at -concurrency, and reports msg/s,\nMB/s, p50/p99 latency (of a Produce call; end to end in mixed mode), the\nprocess's CPU seconds per 100,000 messages and peak memory. Each run uses new\ntopics and leaves them, with their messages, on the broker (Kafka keeps them\nfor its retention time): point it at a scratch broker, not a production one.\nkafka:// URLs get create_topics=true.\n\n-suite issue16 runs, side by side in rounds: consume with a no-op handler at\nconcurrency 1, 16 and 32 (each after a produce of 4 x 100), produce from 16\ngoroutines with 1 message per call, and produce from 4 goroutines with 100\nper call; with -bare it ends with a table of SDK/bare ratios of throughput\n(with the range of the rounds) and CPU per message.\n\n")
		fs.PrintDefaults()
	}
	if code, ok := a.parse(fs, args); !ok {
		return code
	}
	if fs.NArg() > 0 {
		return a.usageErr(fs, "unexpected arguments %q", fs.Args())
	}
	mode, err := bench.ParseMode(*modeName)
	if err != nil {
		return a.usageErr(fs, "%v", err)
	}
	if *keys < 0 || *runs < 1 {
		return a.usageErr(fs, "-keys must not be negative and -runs must be at least 1")
	}
	if *suite != "" {
		var clash []string
		fs.Visit(func(f *flag.Flag) {
			switch f.Name {
			case "producers", "batch", "concurrency", "mode", "handler-sleep":
				clash = append(clash, "-"+f.Name)
			}
		})
		if len(clash) > 0 {
			return a.usageErr(fs, "-suite sets its rows' workloads: drop %s", strings.Join(clash, ", "))
		}
	}
	w := bench.Workload{
		Messages: *n, Size: *size, Producers: *producers, Batch: *batch,
		Concurrency: *conc, Keys: *keys, DisableKeys: *keys == 0,
		HandlerSleep: *sleep, Timeout: *timeout,
	}
	if w.DisableKeys {
		w.Keys = 1
	}
	if err := w.Defaults().Validate(); err != nil {
		return a.usageErr(fs, "%v", err)
	}
	var rows []bench.Row
	if *suite != "" {
		if rows, err = bench.Suite(*suite, w); err != nil {
			return a.usageErr(fs, "%v", err)
		}
	}
	if !*quiet {
		w.Progress = a.stderr
		for i := range rows {
			rows[i].Workload.Progress = a.stderr
		}
	}
	*url = a.brokerURL(*url)
	if *url == "" {
		return a.usageErr(fs, "no broker URL: set MQ_URL or pass -url (mem:// benchmarks the in-process broker)")
	}
	logger := slog.New(slog.NewTextHandler(a.stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	systems := []bench.System{bench.SDK{URL: *url, Connect: a.open, Options: []mq.Option{mq.WithLogger(logger)}}}
	if *bare {
		b, err := bench.Bare(*url)
		if err != nil {
			a.fail("bench", err) // a malformed URL, or mem:// (no bare driver)
			return exitUsage
		}
		systems = append(systems, b)
	}
	if *cpuprofile != "" {
		f, err := os.Create(*cpuprofile)
		if err != nil {
			a.fail("bench", err)
			return exitFailure
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			a.fail("bench", err)
			return exitFailure
		}
		defer pprof.StopCPUProfile()
	}

	shown := *url
	if strings.Contains(shown, "@") {
		shown = mq.RedactURL(shown)
	}
	if rows != nil {
		return a.benchSuite(ctx, systems, rows, *suite, shown, *n, *size, *keys, *runs)
	}
	fmt.Fprintf(a.stdout, "mq bench %s: %d messages of %d bytes, %d producers × batch %d, concurrency %d, %s, handler sleep %v, mode %s, %d run(s), GOMAXPROCS %d\n\n",
		shown, *n, *size, *producers, *batch, *conc, keysText(*keys), *sleep, mode, *runs, runtime.GOMAXPROCS(0))
	var all []bench.Result
runs:
	for range *runs {
		for _, s := range systems {
			var rs []bench.Result
			rs, err = bench.Run(ctx, s, w, mode)
			all = append(all, rs...)
			if err != nil {
				break runs
			}
		}
	}
	ok := a.benchTable(all, err)
	if !ok {
		return exitFailure
	}
	if *bare {
		fmt.Fprintln(a.stdout)
		_ = bench.WriteRatios(a.stdout, all, "sdk")
	}
	return exitOK
}

// benchSuite runs a suite's rows through systems in rounds and prints the
// medians and, with a bare system, the side-by-side ratios.
func (a *app) benchSuite(ctx context.Context, systems []bench.System, rows []bench.Row, suite, shown string, n, size, keys, runs int) int {
	names := make([]string, len(rows))
	for i, r := range rows {
		names[i] = r.Name
	}
	window := ""
	if len(systems) > 1 {
		window = fmt.Sprintf(", bare in-flight window %d", bench.BareInFlight)
	}
	fmt.Fprintf(a.stdout, "mq bench %s -suite %s: %d messages of %d bytes, %s, no-op handler, rows %s, %d round(s) alternating systems%s, GOMAXPROCS %d\n\n",
		shown, suite, n, size, keysText(keys), strings.Join(names, ", "), runs, window, runtime.GOMAXPROCS(0))
	all, err := bench.RunSuite(ctx, systems, rows, runs)
	ok := a.benchTable(all, err)
	if !ok {
		return exitFailure
	}
	if len(systems) > 1 {
		fmt.Fprintln(a.stdout)
		if err := bench.WriteComparison(a.stdout, all, systems[0].Name(), systems[1].Name()); err != nil {
			return exitFailure
		}
	}
	return exitOK
}

// benchTable prints the medians of all. After a failed run (err) it
// reports err and prints what finished before it; ok is false then, or
// when the table cannot be written.
func (a *app) benchTable(all []bench.Result, err error) (ok bool) {
	if err != nil {
		a.fail("bench", err)
		if len(all) > 0 {
			_ = bench.WriteTable(a.stdout, bench.Summarize(all))
		}
		return false
	}
	return bench.WriteTable(a.stdout, bench.Summarize(all)) == nil
}

func keysText(keys int) string {
	if keys == 0 {
		return "no keys"
	}
	return fmt.Sprintf("%d keys", keys)
}
