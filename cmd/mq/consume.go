package main

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"github.com/mqkit/mq"
)

// errEnough refuses messages after the -n limit: they are not printed and
// not acknowledged, so they go back to the broker.
var errEnough = errors.New("message limit reached")

// dropGroup deletes a private group after use, saying so when the broker
// keeps it (a RabbitMQ queue left behind would fill up).
func (a *app) dropGroup(c *mq.Client, topic, group string) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := c.DeleteGroup(ctx, topic, group); err != nil {
		a.fail("consume", fmt.Errorf("the private group %s was left on the broker: %w", group, err))
	}
}

// consume prints the messages of a topic until -n messages, -timeout, or
// an interrupt. By default it reads in a private group that it deletes on
// exit, so it takes nothing from the groups of running services; with
// -group G -ack it consumes as a member of G and acknowledges what it
// prints.
func (a *app) consume(ctx context.Context, args []string) int {
	fs := a.flags("consume")
	url := a.urlFlag(fs)
	topic := fs.String("topic", "", "topic to read (required)")
	group := fs.String("group", "", "consume as a member of this `group`, taking its messages (needs -ack)")
	ack := fs.Bool("ack", false, "with -group: acknowledge what is printed, so the group's other members never get it")
	asJSON := fs.Bool("json", false, "print one JSON object per message")
	n := fs.Int("n", 0, "stop after this many messages; exit 1 if -timeout comes first (0: no limit)")
	timeout := fs.Duration("timeout", 0, "stop after this long (0: no limit)")
	fs.Usage = func() {
		fmt.Fprintf(a.stderr, "usage: mq consume -topic T [-group G -ack] [-json] [-n N] [-timeout D]\n\n"+
			"Prints each message of topic T. Without -group it reads in a private\n"+
			"group of its own, deleted on exit: it takes nothing from running services.\n"+
			"A new group sees what the broker keeps for new groups: on Kafka and Redis\n"+
			"the retained history, on RabbitMQ and mem:// what is produced from now on.\n"+
			"With -group G -ack it is a member of G: what it prints is acknowledged\n"+
			"and never reaches G's other members.\n\n"+
			"Text lines are\n"+
			"  ID key=KEY attempt=N [name=value ...] body=BODY\n"+
			"with BODY as text when it is valid UTF-8, else as body.base64=BASE64.\n"+
			"JSON objects carry body_encoding \"utf-8\" or \"base64\".\n"+
			"Ctrl-C or SIGTERM stops gracefully. Without -group it creates no topic.\n\n")
		fs.PrintDefaults()
	}
	if code, ok := a.parse(fs, args); !ok {
		return code
	}
	switch {
	case *topic == "":
		return a.usageErr(fs, "-topic is required")
	case *n < 0 || *timeout < 0:
		return a.usageErr(fs, "-n and -timeout must not be negative")
	case *group != "" && !*ack:
		return a.usageErr(fs, "-group %s would take messages from the services in group %s: add -ack to consume as its member on purpose, or leave -group out to read in a private group", *group, *group)
	case *ack && *group == "":
		return a.usageErr(fs, "-ack needs -group")
	}
	private := *group == ""
	target := a.brokerURL(*url)
	if private {
		target = readOnlyURL(target) // a reader only: it creates no topic
	}
	c, code := a.connect(ctx, "consume", target)
	if c == nil {
		return code
	}
	defer c.Close()
	if private {
		*group = "mq-tail-" + strings.ReplaceAll(mq.NewID(), "-", "")[20:]
	}
	cons, err := c.Consumer(ctx, *topic, mq.WithGroup(*group))
	if err != nil {
		a.fail("consume", err)
		return exitFailure
	}
	if private {
		defer a.dropGroup(c, *topic, *group)
	}
	defer cons.Close()

	runCtx, stop := context.WithCancel(ctx)
	defer stop()
	var timedOut atomic.Bool
	if *timeout > 0 {
		t := time.AfterFunc(*timeout, func() { timedOut.Store(true); stop() })
		defer t.Stop()
	}
	var (
		mu      sync.Mutex
		count   int
		printEr error
	)
	h := mq.HandlerFunc(func(_ context.Context, m *mq.Message) error {
		mu.Lock()
		defer mu.Unlock()
		if *n > 0 && count >= *n {
			return errEnough
		}
		if err := printMessage(a.stdout, m, *asJSON); err != nil {
			printEr = err
			stop()
			return err // not acknowledged: it was not delivered to the reader
		}
		count++
		if *n > 0 && count == *n {
			stop()
		}
		return nil
	})
	err = cons.Consume(runCtx, h)
	mu.Lock()
	defer mu.Unlock()
	switch {
	case err != nil:
		a.fail("consume", err)
		return exitFailure
	case printEr != nil:
		a.fail("consume", fmt.Errorf("writing output: %w", printEr))
		return exitFailure
	case timedOut.Load() && *n > 0 && count < *n:
		a.fail("consume", fmt.Errorf("timed out after %v with %d of %d messages", *timeout, count, *n))
		return exitFailure
	}
	return exitOK
}

// jsonMessage is the -json form of a message.
type jsonMessage struct {
	ID           string            `json:"id"`
	Topic        string            `json:"topic"`
	Key          string            `json:"key,omitempty"`
	Headers      map[string]string `json:"headers,omitempty"`
	Attempt      int               `json:"attempt"`
	Timestamp    time.Time         `json:"timestamp"`
	Body         string            `json:"body"`
	BodyEncoding string            `json:"body_encoding"` // "utf-8" or "base64"
}

func toJSON(m *mq.Message) jsonMessage {
	j := jsonMessage{ID: m.ID, Topic: m.Topic, Key: m.Key, Headers: m.Headers, Attempt: m.Attempt, Timestamp: m.Timestamp}
	if utf8.Valid(m.Body) {
		j.Body, j.BodyEncoding = string(m.Body), "utf-8"
	} else {
		j.Body, j.BodyEncoding = base64.StdEncoding.EncodeToString(m.Body), "base64"
	}
	return j
}

func printMessage(w io.Writer, m *mq.Message, asJSON bool) error {
	if asJSON {
		b, err := json.Marshal(toJSON(m))
		if err != nil {
			return err
		}
		_, err = fmt.Fprintf(w, "%s\n", b)
		return err
	}
	var sb strings.Builder
	sb.WriteString(m.ID)
	sb.WriteString(" key=")
	sb.WriteString(quoteIfNeeded(m.Key))
	fmt.Fprintf(&sb, " attempt=%d", m.Attempt)
	names := make([]string, 0, len(m.Headers))
	for k := range m.Headers {
		names = append(names, k)
	}
	sort.Strings(names)
	for _, k := range names {
		sb.WriteString(" " + quoteIfNeeded(k) + "=" + quoteIfNeeded(m.Headers[k]))
	}
	if utf8.Valid(m.Body) {
		sb.WriteString(" body=" + quoteIfNeeded(string(m.Body)))
	} else {
		sb.WriteString(" body.base64=" + base64.StdEncoding.EncodeToString(m.Body))
	}
	sb.WriteByte('\n')
	_, err := io.WriteString(w, sb.String())
	return err
}

// quoteIfNeeded returns s, or s quoted when it is empty or holds spaces,
// quotes, '=' or unprintable characters, so a line stays one line and
// parses back unambiguously.
func quoteIfNeeded(s string) string {
	if s == "" {
		return `""`
	}
	for _, r := range s {
		if r == ' ' || r == '"' || r == '=' || r == '\\' || !strconv.IsPrint(r) {
			return strconv.Quote(s)
		}
	}
	return s
}
