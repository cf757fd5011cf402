package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/mqkit/mq"
)

// exitThreshold is the exit code of lag when a -max-lag or -max-age
// threshold is crossed.
const exitThreshold = 3

// lag prints how far a consumer group is behind on a topic, per partition,
// shard or queue, the same way on every backend; with -watch it refreshes
// the view until interrupted, and with thresholds it exits 3 once one is
// crossed (for cron jobs and alerts).
func (a *app) lag(ctx context.Context, args []string) int {
	fs := a.flags("lag")
	url := a.urlFlag(fs)
	topic := fs.String("topic", "", "topic (required)")
	group := fs.String("group", "", "consumer group (required)")
	watch := fs.Duration("watch", 0, "refresh every `interval` (e.g. 2s) until interrupted")
	maxLag := fs.Int64("max-lag", -1, "exit 3 when the total backlog (received or not, unacknowledged) exceeds `N`")
	maxAge := fs.Duration("max-age", 0, "exit 3 when the oldest unacknowledged message is older than `D`")
	fs.Usage = func() {
		fmt.Fprintf(a.stderr, "usage: mq lag -topic T -group G [-watch D] [-max-lag N] [-max-age D]\n\n"+
			"Prints, per partition (Kafka), shard stream (Redis) or queue (RabbitMQ), the\n"+
			"messages the group has not received (backlog), those received and not yet\n"+
			"acknowledged (unacked; \"-\" where the broker cannot tell) and the age of the\n"+
			"oldest of them. A group the broker does not know is an error. Exit codes:\n"+
			"0 within the thresholds, 1 on an error, 3 when a threshold is crossed.\n\n")
		fs.PrintDefaults()
	}
	if code, ok := a.parse(fs, args); !ok {
		return code
	}
	switch {
	case *topic == "" || *group == "":
		return a.usageErr(fs, "-topic and -group are required")
	case *watch < 0 || *maxAge < 0:
		return a.usageErr(fs, "-watch and -max-age must not be negative")
	}
	c, code := a.connect(ctx, "lag", readOnlyURL(a.brokerURL(*url)))
	if c == nil {
		return code
	}
	defer c.Close()
	clear := *watch > 0 && isTerminal(a.stdout)
	for {
		parts, err := c.Lag(ctx, *topic, *group)
		if err != nil {
			if errors.Is(err, mq.ErrUnknownGroup) {
				err = fmt.Errorf("group %q is not known on topic %q (it never consumed, or was deleted): %w", *group, *topic, err)
			}
			a.fail("lag", err)
			return exitFailure
		}
		if clear {
			fmt.Fprint(a.stdout, "\x1b[H\x1b[2J")
		}
		if *watch > 0 {
			fmt.Fprintf(a.stdout, "%s  topic %s  group %s\n", time.Now().Format(time.TimeOnly), *topic, *group)
		}
		total, oldest := printLag(a.stdout, parts)
		if st, err := c.Scheduled(ctx, *topic); err == nil {
			printScheduled(a.stdout, st)
		} else if !errors.Is(err, mq.ErrDelayUnsupported) {
			fmt.Fprintf(a.stdout, "scheduled: unknown (%v)\n", err)
		}
		if *maxLag >= 0 && total > *maxLag {
			a.fail("lag", fmt.Errorf("backlog %d is above -max-lag %d", total, *maxLag))
			return exitThreshold
		}
		if *maxAge > 0 && oldest > *maxAge {
			a.fail("lag", fmt.Errorf("oldest unacknowledged message is %v old, above -max-age %v", oldest.Round(time.Millisecond), *maxAge))
			return exitThreshold
		}
		if *watch == 0 {
			return exitOK
		}
		select {
		case <-ctx.Done():
			return exitOK
		case <-time.After(*watch):
		}
		if !clear {
			fmt.Fprintln(a.stdout)
		}
	}
}

// printScheduled writes the line about delayed messages waiting for the
// topic (they are no group's backlog yet).
func printScheduled(w io.Writer, st mq.ScheduleStats) {
	next := "none"
	switch {
	case st.Waiting != 0 && st.NextDue.IsZero():
		next = "unknown"
	case !st.NextDue.IsZero():
		next = fmt.Sprintf("%s (in %v)", st.NextDue.Format(time.RFC3339), time.Until(st.NextDue).Round(time.Second))
	}
	fmt.Fprintf(w, "scheduled (delayed, not yet due) %s, next due %s\n", count(st.Waiting), next)
}

// printLag writes the lag table and returns the total backlog (unacked
// included) and the oldest age.
func printLag(w io.Writer, parts []mq.PartitionLag) (total int64, oldest time.Duration) {
	tw := tabwriter.NewWriter(w, 2, 8, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "partition\tbacklog\tunacked\toldest\t")
	var unacked int64
	unknownAge := false
	for _, p := range parts {
		name := p.Partition
		if name == "" {
			name = "-"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t\n", name, count(p.Backlog), count(p.Unacked), age(p.OldestAge))
		total += max(p.Backlog, 0)
		unacked += max(p.Unacked, 0)
		oldest = max(oldest, p.OldestAge)
		unknownAge = unknownAge || p.OldestAge < 0
	}
	_ = tw.Flush()
	fmt.Fprintf(w, "total backlog %d, unacked %d, oldest %s\n", total, unacked, age(oldest))
	if unknownAge {
		fmt.Fprintln(w, "(the age of some partitions is unknown: \"-\")")
	}
	return total + unacked, oldest
}

func count(n int64) string {
	if n < 0 {
		return "-"
	}
	return fmt.Sprint(n)
}

func age(d time.Duration) string {
	switch {
	case d < 0:
		return "-"
	case d == 0:
		return "0"
	}
	return d.Round(time.Millisecond).String()
}

// isTerminal reports whether w is a terminal (a character device).
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	st, err := f.Stat()
	return err == nil && st.Mode()&os.ModeCharDevice != 0 && !strings.EqualFold(os.Getenv("TERM"), "dumb")
}
