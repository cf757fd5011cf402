package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/mqkit/mq"
	"github.com/mqkit/mq/dlq"
)

func (a *app) dlqUsage() {
	fmt.Fprintf(a.stderr, `usage: mq dlq <subcommand> -topic T [flags]

Subcommands:
  list     show dead letters, oldest first (a peek: nothing is moved)
  redrive  move dead letters back to their topic [-id ID ...] [-header k=v ...] [-dry-run]
  ensure   create the inspection group, so dead letters are kept from now on

-topic names the source topic (its DLQ is T.dlq), or the DLQ itself when it
ends in .dlq; -dlq-topic names the DLQ whatever its name. list and
redrive -dry-run only read: they never create a topic.
Run "mq dlq <subcommand> -h" for all flags.
`)
}

// dlq runs the dead-letter subcommands.
func (a *app) dlq(ctx context.Context, args []string) int {
	if len(args) == 0 {
		a.dlqUsage()
		return exitUsage
	}
	switch args[0] {
	case "list":
		return a.dlqList(ctx, args[1:])
	case "redrive":
		return a.dlqRedrive(ctx, args[1:])
	case "ensure":
		return a.dlqEnsure(ctx, args[1:])
	case "-h", "-help", "--help", "help":
		a.dlqUsage()
		return exitOK
	}
	fmt.Fprintf(a.stderr, "mq dlq: unknown subcommand %q\n\n", args[0])
	a.dlqUsage()
	return exitUsage
}

// dlqFlags holds the flags every dlq subcommand has.
type dlqFlags struct {
	url, topic, dlqTopic *string
}

func (a *app) dlqFlagSet(name string) (*flag.FlagSet, dlqFlags) {
	fs := a.flags("dlq " + name)
	return fs, dlqFlags{
		url:      a.urlFlag(fs),
		topic:    fs.String("topic", "", "source topic, whose dead-letter topic is TOPIC.dlq (a name ending in .dlq is taken as the dead-letter topic itself)"),
		dlqTopic: fs.String("dlq-topic", "", "dead-letter topic, if not TOPIC.dlq"),
	}
}

// target returns the dead-letter topic the flags name, or "" after
// printing a usage error.
func (f dlqFlags) target() string {
	if *f.dlqTopic != "" {
		return *f.dlqTopic
	}
	if t := *f.topic; t != "" {
		if strings.HasSuffix(t, dlq.DefaultTopic("")) {
			return t // "orders.dlq" names the dead-letter topic, not "orders.dlq.dlq"
		}
		return dlq.DefaultTopic(t)
	}
	return ""
}

func (a *app) dlqList(ctx context.Context, args []string) int {
	fs, f := a.dlqFlagSet("list")
	limit := fs.Int("n", 100, "show at most this many (0: up to the scan bound)")
	asJSON := fs.Bool("json", false, "print one JSON object per dead letter")
	idle := fs.Duration("idle", dlq.DefaultIdle, "stop when no dead letter arrives for this long")
	if code, ok := a.parse(fs, args); !ok {
		return code
	}
	topic := f.target()
	if topic == "" {
		return a.usageErr(fs, "-topic or -dlq-topic is required")
	}
	if *idle <= 0 || *limit < 0 {
		return a.usageErr(fs, "-idle must be positive and -n not negative")
	}
	c, code := a.connect(ctx, "dlq list", readOnlyURL(a.brokerURL(*f.url)))
	if c == nil {
		return code
	}
	defer c.Close()
	letters, err := dlq.List(ctx, c, topic, *limit, dlq.WithIdle(*idle))
	for _, m := range letters {
		if *asJSON {
			b, jerr := json.Marshal(struct {
				jsonMessage
				DeadLetter dlq.Info `json:"dead_letter"`
			}{toJSON(m), dlq.Describe(m)})
			if jerr != nil {
				a.fail("dlq list", jerr)
				return exitFailure
			}
			fmt.Fprintf(a.stdout, "%s\n", b)
			continue
		}
		info := dlq.Describe(m)
		fmt.Fprintf(a.stdout, "%s key=%s topic=%s group=%s reason=%s attempts=%d redrives=%d failed=%s error=%s\n",
			m.ID, quoteIfNeeded(m.Key), quoteIfNeeded(info.Topic), quoteIfNeeded(info.Group), info.Reason,
			info.Attempts, info.RedriveCount, info.LastFailure.Format(time.RFC3339), quoteIfNeeded(info.Error))
	}
	if err != nil {
		a.fail("dlq list", err)
		return exitFailure
	}
	if !*asJSON {
		fmt.Fprintf(a.stderr, "%d dead letter(s) in %s\n", len(letters), topic)
	}
	return exitOK
}

func (a *app) dlqRedrive(ctx context.Context, args []string) int {
	fs, f := a.dlqFlagSet("redrive")
	var ids listFlags
	fs.Var(&ids, "id", "redrive only this message `ID` (repeatable)")
	headers := headerFlags{}
	fs.Var(headers, "header", "redrive only dead letters with header `name=value` (repeatable; all must match)")
	idle := fs.Duration("idle", dlq.DefaultIdle, "stop when no dead letter arrives for this long")
	dryRun := fs.Bool("dry-run", false, "print the dead letters that would be moved, and move nothing")
	if code, ok := a.parse(fs, args); !ok {
		return code
	}
	topic := f.target()
	if topic == "" {
		return a.usageErr(fs, "-topic or -dlq-topic is required")
	}
	if *idle <= 0 {
		return a.usageErr(fs, "-idle must be positive")
	}
	target := a.brokerURL(*f.url)
	if *dryRun {
		target = readOnlyURL(target)
	}
	c, code := a.connect(ctx, "dlq redrive", target)
	if c == nil {
		return code
	}
	defer c.Close()
	filter := func(m *mq.Message) bool {
		if len(ids) > 0 && !slices.Contains(ids, m.ID) {
			return false
		}
		for k, v := range headers {
			if v2, ok := m.Headers[k]; !ok || v2 != v {
				return false
			}
		}
		return true
	}
	if *dryRun {
		letters, err := dlq.List(ctx, c, topic, 0, dlq.WithIdle(*idle))
		would, unroutable := 0, 0
		for _, m := range letters {
			if !filter(m) {
				continue
			}
			if m.Header(dlq.HeaderTopic) == "" {
				unroutable++
				continue
			}
			fmt.Fprintf(a.stdout, "%s -> %s\n", m.ID, quoteIfNeeded(m.Header(dlq.HeaderTopic)))
			would++
		}
		fmt.Fprintf(a.stderr, "dry run: would move %d of %d dead letter(s) in %s back to their topics", would, len(letters), topic)
		if unroutable > 0 {
			fmt.Fprintf(a.stderr, " (%d more match but have no %s header)", unroutable, dlq.HeaderTopic)
		}
		fmt.Fprintln(a.stderr, "; nothing was moved")
		if err != nil {
			a.fail("dlq redrive", err)
			return exitFailure
		}
		return exitOK
	}
	res, err := dlq.Redrive(ctx, c, topic, filter, dlq.WithIdle(*idle))
	for _, id := range res.Moved {
		fmt.Fprintln(a.stdout, id)
	}
	fmt.Fprintf(a.stderr, "moved %d dead letter(s) from %s back to their topics; %d left in %s", len(res.Moved), topic, res.Kept, topic)
	if res.Unroutable > 0 {
		fmt.Fprintf(a.stderr, " (%d without a %s header)", res.Unroutable, dlq.HeaderTopic)
	}
	fmt.Fprintln(a.stderr)
	if err != nil {
		a.fail("dlq redrive", err)
		return exitFailure
	}
	return exitOK
}

func (a *app) dlqEnsure(ctx context.Context, args []string) int {
	fs, f := a.dlqFlagSet("ensure")
	if code, ok := a.parse(fs, args); !ok {
		return code
	}
	topic := f.target()
	if topic == "" {
		return a.usageErr(fs, "-topic or -dlq-topic is required")
	}
	c, code := a.connect(ctx, "dlq ensure", *f.url)
	if c == nil {
		return code
	}
	defer c.Close()
	if err := dlq.Ensure(ctx, c, topic); err != nil {
		a.fail("dlq ensure", err)
		return exitFailure
	}
	fmt.Fprintf(a.stderr, "group %s exists on %s: dead letters are kept from now on\n", dlq.InspectGroup, topic)
	return exitOK
}
