package main

import (
	"context"
	"fmt"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/mqkit/mq/internal/bench"
)

// benchDelay schedules many delayed messages and reports how late they
// arrive (mode delay), and compares how a topic flows while some messages
// fail, retried in-process or through the broker (mode retry).
func (a *app) benchDelay(ctx context.Context, args []string) int {
	fs := a.flags("bench-delay")
	url := a.urlFlag(fs)
	n := fs.Int("n", 100000, "delayed messages to schedule")
	spread := fs.Duration("spread", time.Minute, "due times spread over `D` after a 1s lead")
	conc := fs.Int("concurrency", 32, "consumer handler concurrency (mode delay)")
	modeName := fs.String("mode", "all", "delay, retry, batch or all")
	batchN := fs.Int("batch-n", 20000, "messages of the batch-consume comparison")
	retryN := fs.Int("retry-n", 2000, "good messages of the retry comparison")
	quiet := fs.Bool("quiet", false, "no progress line on stderr")
	fs.Usage = func() {
		fmt.Fprintf(a.stderr, "usage: mq bench-delay [flags]\n\nMode delay schedules -n messages due 1s to 1s+spread after they are\nproduced, consumes them, and reports scheduling rate and lateness (p50, p99,\nmax), early, duplicate and lost counts. Mode retry handles -retry-n good\nmessages at concurrency 1 while one message in 100 always fails, with no\nretries, middleware.Retry (in-process) and middleware.RetryLater (through the\nbroker), and reports how fast the good messages flow in each. Mode batch\nconsumes -batch-n messages into a sink that takes 1ms per call and one call at\na time, one message per call (concurrency 32) and in mq.Batch batches of 100.\n\n")
		fs.PrintDefaults()
	}
	if code, ok := a.parse(fs, args); !ok {
		return code
	}
	if *modeName != "delay" && *modeName != "retry" && *modeName != "batch" && *modeName != "all" {
		return a.usageErr(fs, "-mode must be delay, retry, batch or all, got %q", *modeName)
	}
	run := func(mode string) bool { return *modeName == "all" || *modeName == mode }
	if *n < 1 || *spread <= 0 {
		return a.usageErr(fs, "-n must be positive and -spread longer than 0")
	}
	*url = a.brokerURL(*url)
	if *url == "" {
		return a.usageErr(fs, "no broker URL: set MQ_URL or pass -url")
	}
	if strings.HasPrefix(*url, "kafka:") && !strings.Contains(*url, "create_topics") {
		sep := "?"
		if strings.Contains(*url, "?") {
			sep = "&"
		}
		*url += sep + "create_topics=true"
	}
	c, code := a.connect(ctx, "bench-delay", *url)
	if c == nil {
		return code
	}
	defer c.Close()
	fmt.Fprintf(a.stdout, "mq bench-delay %s\n\n", c)
	if run("delay") {
		w := bench.DelayWorkload{Messages: *n, Spread: *spread, Concurrency: *conc}
		if !*quiet {
			w.Progress = a.stderr
		}
		r, err := bench.RunDelay(ctx, c, w)
		if err != nil {
			a.fail("bench-delay", err)
			return exitFailure
		}
		tw := tabwriter.NewWriter(a.stdout, 0, 0, 2, ' ', tabwriter.AlignRight)
		fmt.Fprintf(tw, "messages\tscheduled/s\tlateness p50\tp99\tmax\tearly\tduplicates\tlost\t\n")
		fmt.Fprintf(tw, "%d\t%.0f\t%v\t%v\t%v\t%d\t%d\t%d\t\n", r.Messages, r.ScheduleRate(),
			r.P50.Round(time.Millisecond), r.P99.Round(time.Millisecond), r.Max.Round(time.Millisecond), r.Early, r.Duplicates, r.Lost)
		_ = tw.Flush()
		fmt.Fprintln(a.stdout)
	}
	if run("retry") {
		rs, err := bench.RunRetry(ctx, c, bench.RetryWorkload{Messages: *retryN})
		if err != nil {
			a.fail("bench-delay", err)
			return exitFailure
		}
		tw := tabwriter.NewWriter(a.stdout, 0, 0, 2, ' ', tabwriter.AlignRight)
		fmt.Fprintf(tw, "retry mode\tgood msgs\telapsed\tgood msg/s\t\n")
		for _, r := range rs {
			fmt.Fprintf(tw, "%s\t%d\t%v\t%.0f\t\n", r.Mode, r.Good, r.Elapsed.Round(time.Millisecond), r.Rate())
		}
		_ = tw.Flush()
		fmt.Fprintln(a.stdout)
	}
	if run("batch") {
		rs, err := bench.RunBatch(ctx, c, bench.BatchWorkload{Messages: *batchN})
		if err != nil {
			a.fail("bench-delay", err)
			return exitFailure
		}
		tw := tabwriter.NewWriter(a.stdout, 0, 0, 2, ' ', tabwriter.AlignRight)
		fmt.Fprintf(tw, "consume mode\tmessages\tsink calls\telapsed\tmsg/s\t\n")
		for _, r := range rs {
			fmt.Fprintf(tw, "%s\t%d\t%d\t%v\t%.0f\t\n", r.Mode, *batchN, r.Calls, r.Elapsed.Round(time.Millisecond), r.Rate(*batchN))
		}
		_ = tw.Flush()
		if len(rs) == 2 {
			fmt.Fprintf(a.stdout, "\nbatch ÷ single: %.1f×\n", rs[0].Elapsed.Seconds()/rs[1].Elapsed.Seconds())
		}
	}
	return exitOK
}
