package main

import (
	"bufio"
	"context"
	"fmt"
	"maps"
	"time"

	"github.com/mqkit/mq"
)

// produceBatch is how many stdin lines go into one Produce call.
const produceBatch = 100

// produce sends each argument, or each line of stdin when there are none,
// as a message, and prints the ID of every message the broker accepted.
func (a *app) produce(ctx context.Context, args []string) int {
	fs := a.flags("produce")
	url := a.urlFlag(fs)
	topic := fs.String("topic", "", "topic to send to (required)")
	key := fs.String("key", "", "message key (orders and routes messages)")
	headers := headerFlags{}
	fs.Var(headers, "header", "header `name=value` (repeatable)")
	delay := fs.Duration("delay", 0, "deliver the messages `D` from now (they wait in the broker)")
	at := fs.String("at", "", "deliver the messages at `TIME` (RFC 3339, e.g. 2026-12-24T09:00:00Z)")
	fs.Usage = func() {
		fmt.Fprintf(a.stderr, "usage: mq produce -topic T [-key K] [-header k=v ...] [-delay D | -at TIME] [message ...]\n\nWith no messages, sends one message per line of stdin.\n\n")
		fs.PrintDefaults()
	}
	if code, ok := a.parse(fs, args); !ok {
		return code
	}
	if *topic == "" {
		return a.usageErr(fs, "-topic is required")
	}
	var deliverAt time.Time
	switch {
	case *delay < 0:
		return a.usageErr(fs, "-delay must not be negative")
	case *delay > 0 && *at != "":
		return a.usageErr(fs, "-delay and -at exclude each other")
	case *delay > 0:
		deliverAt = time.Now().Add(*delay)
	case *at != "":
		t, err := time.Parse(time.RFC3339, *at)
		if err != nil {
			return a.usageErr(fs, "-at %q is not an RFC 3339 time (2026-12-24T09:00:00Z)", *at)
		}
		deliverAt = t
	}
	c, code := a.connect(ctx, "produce", *url)
	if c == nil {
		return code
	}
	defer c.Close()
	p := c.Producer()
	defer p.Close()

	newMsg := func(body string) *mq.Message {
		m := &mq.Message{Key: *key, Body: []byte(body), DeliverAt: deliverAt}
		if *delay > 0 {
			m.DeliverAt = time.Now().Add(*delay) // from when this message is sent
		}
		if len(headers) > 0 {
			m.Headers = maps.Clone(headers)
		}
		return m
	}
	send := func(msgs []*mq.Message) error {
		if err := p.Produce(ctx, *topic, msgs...); err != nil {
			return err
		}
		for _, m := range msgs {
			fmt.Fprintln(a.stdout, m.ID)
		}
		return nil
	}

	if fs.NArg() > 0 {
		msgs := make([]*mq.Message, fs.NArg())
		for i, body := range fs.Args() {
			msgs[i] = newMsg(body)
		}
		if err := send(msgs); err != nil {
			a.fail("produce", err)
			return exitFailure
		}
		return exitOK
	}

	sc := bufio.NewScanner(a.stdin)
	sc.Buffer(make([]byte, 64<<10), 64<<20)
	var batch []*mq.Message
	for sc.Scan() {
		batch = append(batch, newMsg(sc.Text()))
		if len(batch) == produceBatch {
			if err := send(batch); err != nil {
				a.fail("produce", err)
				return exitFailure
			}
			batch = batch[:0]
		}
	}
	if err := sc.Err(); err != nil {
		a.fail("produce", fmt.Errorf("reading stdin: %w", err))
		return exitFailure
	}
	if err := send(batch); err != nil {
		a.fail("produce", err)
		return exitFailure
	}
	return exitOK
}
