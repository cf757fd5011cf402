package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net/url"
	"os"
	"sort"
	"strings"

	"github.com/mqkit/mq"
)

// Exit codes.
const (
	exitOK      = 0
	exitFailure = 1 // the command ran and failed
	exitUsage   = 2 // bad flags, bad URL, unknown command
)

// app holds what a command run depends on, so tests can run commands
// in-process against a broker they share.
type app struct {
	stdin          io.Reader
	stdout, stderr io.Writer
	getenv         func(string) string
	// open connects to a broker URL. Production uses mq.Open; tests
	// substitute an opener that shares one in-process broker.
	open func(ctx context.Context, url string, opts ...mq.Option) (*mq.Client, error)
	url  string // from the global -url flag; empty: a command's own -url, else MQ_URL
}

// run is the command's entry point: it runs the command in args and
// returns the process exit code.
func run(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	a := &app{stdin: stdin, stdout: stdout, stderr: stderr, getenv: os.Getenv, open: mq.Open}
	return a.run(ctx, args)
}

type command struct {
	name, args, summary string
	run                 func(a *app, ctx context.Context, args []string) int
}

var commands = []command{
	{"produce", "-topic T [-key K] [-header k=v ...] [-delay D | -at TIME] [message ...]", "send messages (the arguments, or stdin lines)", (*app).produce},
	{"consume", "-topic T [-group G -ack] [-json] [-n N] [-timeout D]", "print a topic's messages (in a private group unless -group G -ack)", (*app).consume},
	{"dlq", "list|redrive|ensure -topic T [flags]", "inspect and redrive dead letters", (*app).dlq},
	{"lag", "-topic T -group G", "show how far a consumer group is behind", (*app).lag},
	{"outbox", "[-db URL] [-table T] [-n N] [-max-age D]", "show a transactional outbox's pending rows and their age", (*app).outboxCmd},
	{"demo", "[-orders N] [-seed S]", "run an order pipeline with retries, dedup and a DLQ", (*app).demo},
	{"bench", "[-n N] [-size S] [-producers C] [-batch B] [-concurrency K] [-keys N] [-mode produce|consume|mixed|all] [-bare] [-handler-sleep D]", "measure throughput, latency and memory (SDK vs bare driver)", (*app).bench},
	{"bench-delay", "[-n N] [-spread D] [-mode delay|retry|batch|all]", "measure delayed delivery's lateness, retries through the broker, batch consume", (*app).benchDelay},
}

func (a *app) usage() {
	fmt.Fprintf(a.stderr, "usage: mq [-url URL] <command> [flags]\n\nCommands:\n")
	for _, c := range commands {
		fmt.Fprintf(a.stderr, "  %-11s %s\n  %-11s   %s\n", c.name, c.args, "", c.summary)
	}
	fmt.Fprintf(a.stderr, "\nThe broker URL comes from -url, else $MQ_URL; there is no default (mem:// names a\nthrowaway broker inside the command; mq demo uses it when no URL is given).\n")
	fmt.Fprintf(a.stderr, "Schemes: %s. Run \"mq <command> -h\" for a command's flags.\n", strings.Join(mq.Schemes(), ", "))
}

func (a *app) run(ctx context.Context, args []string) int {
	fs := a.flags("mq")
	fs.StringVar(&a.url, "url", "", "broker `URL` (default $MQ_URL)")
	fs.Usage = a.usage
	if code, ok := a.parse(fs, args); !ok {
		return code
	}
	if fs.NArg() == 0 {
		a.usage()
		return exitUsage
	}
	name, rest := fs.Arg(0), fs.Args()[1:]
	if name == "help" {
		a.usage()
		return exitOK
	}
	for _, c := range commands {
		if c.name == name {
			return c.run(a, ctx, rest)
		}
	}
	fmt.Fprintf(a.stderr, "mq: unknown command %q\n\n", name)
	a.usage()
	return exitUsage
}

// brokerURL returns the URL a command connects to: its own -url flag,
// else the global one, else $MQ_URL; "" when none is set.
func (a *app) brokerURL(flagURL string) string {
	switch {
	case flagURL != "":
		return flagURL
	case a.url != "":
		return a.url
	}
	return a.getenv("MQ_URL")
}

// flags returns a flag set that reports to stderr and does not exit.
func (a *app) flags(name string) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(a.stderr)
	return fs
}

// parse parses args; when it returns ok == false the command should exit
// with code (0 for -h).
func (a *app) parse(fs *flag.FlagSet, args []string) (code int, ok bool) {
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return exitOK, false
		}
		return exitUsage, false
	}
	return 0, true
}

// urlFlag adds a -url flag to a subcommand. Its default is resolved when
// connecting (see brokerURL), never shown in help: a URL may hold a
// password.
func (a *app) urlFlag(fs *flag.FlagSet) *string {
	return fs.String("url", "", "broker `URL` (default: the global -url, else $MQ_URL)")
}

// connect opens the broker. On failure it prints one line (mq.Open never
// puts a password in its errors) and returns the exit code: 2 for a URL
// that is wrong, 1 for a broker that cannot be reached.
//
// url is the command's -url flag; with none set anywhere, connect refuses
// rather than run on a throwaway in-process broker, where produce would
// "succeed" and deliver nothing to anyone.
func (a *app) connect(ctx context.Context, cmd, url string) (*mq.Client, int) {
	url = a.brokerURL(url)
	if url == "" {
		a.fail(cmd, errors.New("no broker URL: set MQ_URL or pass -url (e.g. kafka://host:9092, amqp://host:5672/, redis://host:6379/0; mem:// is a throwaway broker inside this command)"))
		return nil, exitUsage
	}
	logger := slog.New(slog.NewTextHandler(a.stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	c, err := a.open(ctx, url, mq.WithLogger(logger))
	if err != nil {
		a.fail(cmd, err)
		if errors.Is(err, mq.ErrInvalidURL) || errors.Is(err, mq.ErrUnknownScheme) {
			return nil, exitUsage
		}
		return nil, exitFailure
	}
	return c, exitOK
}

// readOnlyURL returns rawURL without a create_topics parameter: a command
// that only reads (consume, dlq list, lag) must never create a topic, not
// even with the URL a service uses. A URL that does not parse is returned
// as it is, for Open to report.
func readOnlyURL(rawURL string) string {
	u, err := url.Parse(rawURL)
	if err != nil || !u.Query().Has("create_topics") {
		return rawURL
	}
	q := u.Query()
	q.Del("create_topics")
	u.RawQuery = q.Encode()
	return u.String()
}

// fail prints err on one line of stderr.
func (a *app) fail(cmd string, err error) {
	msg := strings.Join(strings.Fields(err.Error()), " ")
	fmt.Fprintf(a.stderr, "mq %s: %s\n", cmd, msg)
}

// usageErr prints a usage problem and returns exitUsage.
func (a *app) usageErr(fs *flag.FlagSet, format string, args ...any) int {
	fmt.Fprintf(a.stderr, "mq %s: %s\n", fs.Name(), fmt.Sprintf(format, args...))
	fmt.Fprintf(a.stderr, "Run \"mq %s -h\" for its flags.\n", fs.Name())
	return exitUsage
}

// headerFlags collects repeated -header k=v flags.
type headerFlags map[string]string

func (h headerFlags) String() string {
	keys := make([]string, 0, len(h))
	for k := range h {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	parts := make([]string, len(keys))
	for i, k := range keys {
		parts[i] = k + "=" + h[k]
	}
	return strings.Join(parts, ",")
}

func (h headerFlags) Set(s string) error {
	k, v, ok := strings.Cut(s, "=")
	if !ok || k == "" {
		return fmt.Errorf("want name=value, got %q", s)
	}
	h[k] = v
	return nil
}

// listFlags collects a repeated string flag.
type listFlags []string

func (l *listFlags) String() string { return strings.Join(*l, ",") }

func (l *listFlags) Set(s string) error {
	*l = append(*l, s)
	return nil
}
