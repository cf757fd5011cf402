package main

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/mqkit/mq"
	"github.com/mqkit/mq/dlq"
	"github.com/mqkit/mq/memory"
)

// shared runs commands in-process against one broker, as separate mq
// processes would run against one real broker.
type shared struct {
	b *memory.Broker
}

func newShared(t *testing.T) *shared {
	b := memory.NewBroker(memory.Config{})
	t.Cleanup(func() { _ = b.Close() })
	return &shared{b: b}
}

// run runs one command and returns its exit code, stdout and stderr.
func (s *shared) run(t *testing.T, stdin string, args ...string) (int, string, string) {
	t.Helper()
	var out, errOut bytes.Buffer
	a := &app{
		stdin:  strings.NewReader(stdin),
		stdout: &out,
		stderr: &errOut,
		getenv: func(k string) string {
			if k == "MQ_URL" {
				return "mem://" // the opener below ignores it: all commands share s.b
			}
			return ""
		},
		open: func(_ context.Context, _ string, opts ...mq.Option) (*mq.Client, error) {
			return mq.NewClient(s.b.Conn(), opts...), nil
		},
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	code := a.run(ctx, args)
	return code, out.String(), errOut.String()
}

func lines(s string) []string {
	return strings.Split(strings.TrimRight(s, "\n"), "\n")
}

func TestProduceConsumeRoundTrip(t *testing.T) {
	s := newShared(t)
	// The group must exist before the messages are produced.
	code, _, stderr := s.run(t, "", "consume", "-topic", "orders", "-group", "cli", "-ack", "-timeout", "1ms")
	if code != exitOK {
		t.Fatalf("consume to create the group: exit %d, %s", code, stderr)
	}

	code, out, stderr := s.run(t, "", "produce", "-topic", "orders", "-key", "cust-1", "-header", "trace=abc", "-header", "kind=order created", "first", "second one")
	if code != exitOK {
		t.Fatalf("produce args: exit %d, stderr %q", code, stderr)
	}
	argIDs := lines(out)
	code, out, stderr = s.run(t, "line a\nline b\n", "produce", "-topic", "orders")
	if code != exitOK {
		t.Fatalf("produce stdin: exit %d, stderr %q", code, stderr)
	}
	stdinIDs := lines(out)
	if len(argIDs) != 2 || len(stdinIDs) != 2 {
		t.Fatalf("produced IDs %v and %v, want two each", argIDs, stdinIDs)
	}

	code, out, stderr = s.run(t, "", "consume", "-topic", "orders", "-group", "cli", "-ack", "-n", "4", "-timeout", "20s")
	if code != exitOK {
		t.Fatalf("consume: exit %d, stderr %q", code, stderr)
	}
	// Messages of different keys carry no order; messages of one key do.
	got := lines(out)
	first := slices.IndexFunc(got, func(l string) bool { return strings.HasPrefix(l, argIDs[0]) })
	second := slices.IndexFunc(got, func(l string) bool { return strings.HasPrefix(l, argIDs[1]) })
	if first < 0 || second < first {
		t.Errorf("key cust-1 out of order: %q", got)
	}
	slices.Sort(got)
	want := []string{
		argIDs[0] + ` key=cust-1 attempt=1 kind="order created" trace=abc body=first`,
		argIDs[1] + ` key=cust-1 attempt=1 kind="order created" trace=abc body="second one"`,
		stdinIDs[0] + ` key="" attempt=1 body="line a"`,
		stdinIDs[1] + ` key="" attempt=1 body="line b"`,
	}
	slices.Sort(want)
	if !slices.Equal(got, want) {
		t.Errorf("consume printed\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}

func TestConsumeJSONAndLimit(t *testing.T) {
	s := newShared(t)
	c := mq.NewClient(s.b.Conn())
	defer c.Close()
	ctx := context.Background()
	if _, err := c.Consumer(ctx, "bin", mq.WithGroup("cli")); err != nil {
		t.Fatal(err)
	}
	msgs := []*mq.Message{
		{ID: "text", Body: []byte("héllo")},
		{ID: "binary", Key: "k", Body: []byte{0xff, 0x00, 0xfe}, Headers: map[string]string{"h": "v"}},
		{ID: "third", Body: []byte("left for later")},
	}
	if err := c.Producer().Produce(ctx, "bin", msgs...); err != nil {
		t.Fatal(err)
	}
	code, out, stderr := s.run(t, "", "consume", "-topic", "bin", "-group", "cli", "-ack", "-json", "-n", "2")
	if code != exitOK {
		t.Fatalf("exit %d, %s", code, stderr)
	}
	var got []jsonMessage
	for _, l := range lines(out) {
		var j jsonMessage
		if err := json.Unmarshal([]byte(l), &j); err != nil {
			t.Fatalf("line %q: %v", l, err)
		}
		got = append(got, j)
	}
	if len(got) != 2 {
		t.Fatalf("got %d messages, want 2 (-n 2)", len(got))
	}
	if got[0].ID != "text" || got[0].Body != "héllo" || got[0].BodyEncoding != "utf-8" || got[0].Topic != "bin" {
		t.Errorf("text message: %+v", got[0])
	}
	body, _ := base64.StdEncoding.DecodeString(got[1].Body)
	if got[1].ID != "binary" || got[1].BodyEncoding != "base64" || !bytes.Equal(body, msgs[1].Body) || got[1].Headers["h"] != "v" || got[1].Key != "k" {
		t.Errorf("binary message: %+v", got[1])
	}
	// The message after the limit was not acknowledged: the next run gets it.
	code, out, _ = s.run(t, "", "consume", "-topic", "bin", "-group", "cli", "-ack", "-n", "1", "-timeout", "20s")
	if code != exitOK || !strings.HasPrefix(out, "third ") {
		t.Errorf("second consume: exit %d, %q; want the third message", code, out)
	}
}

func TestConsumeTimeoutShort(t *testing.T) {
	s := newShared(t)
	code, _, stderr := s.run(t, "", "consume", "-topic", "empty", "-group", "g", "-ack", "-n", "1", "-timeout", "50ms")
	if code != exitFailure || !strings.Contains(stderr, "0 of 1") {
		t.Errorf("exit %d, stderr %q; want 1 and a timeout message", code, stderr)
	}
}

func TestUsageErrors(t *testing.T) {
	tests := []struct {
		name     string
		args     []string
		wantCode int
		wantErr  string
	}{
		{"no command", nil, exitUsage, "usage: mq"},
		{"unknown command", []string{"frobnicate"}, exitUsage, `unknown command "frobnicate"`},
		{"help", []string{"help"}, exitOK, "usage: mq"},
		{"produce without topic", []string{"produce", "x"}, exitUsage, "-topic is required"},
		{"consume -group without -ack", []string{"consume", "-url", "mem://", "-topic", "t", "-group", "billing"}, exitUsage, "add -ack"},
		{"consume -ack without -group", []string{"consume", "-url", "mem://", "-topic", "t", "-ack"}, exitUsage, "-ack needs -group"},
		{"bad flag", []string{"consume", "-bogus"}, exitUsage, "flag provided but not defined"},
		{"dlq without subcommand", []string{"dlq"}, exitUsage, "usage: mq dlq"},
		{"dlq unknown subcommand", []string{"dlq", "purge"}, exitUsage, `unknown subcommand "purge"`},
		{"dlq list without topic", []string{"dlq", "list"}, exitUsage, "-topic or -dlq-topic is required"},
		{"produce help", []string{"produce", "-h"}, exitOK, "usage: mq produce"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var out, errOut bytes.Buffer
			code := run(context.Background(), tc.args, strings.NewReader(""), &out, &errOut)
			if code != tc.wantCode || !strings.Contains(errOut.String(), tc.wantErr) {
				t.Errorf("exit %d, stderr %q; want %d and %q", code, errOut.String(), tc.wantCode, tc.wantErr)
			}
		})
	}
}

func TestBadURLHidesPassword(t *testing.T) {
	const secret = "s3cr3t-pw"
	tests := []struct {
		name string
		args []string
		env  string
	}{
		{"malformed", []string{"-url", "amqp://admin:" + secret + "@host:5672/%zz", "produce", "-topic", "t", "x"}, ""},
		{"unknown scheme", []string{"produce", "-url", "nats://admin:" + secret + "@host:4222", "-topic", "t", "x"}, ""},
		{"bad parameter", []string{"consume", "-topic", "t", "-group", "g", "-ack"}, "mem://admin:" + secret + "@/?bogus=1"},
		{"from MQ_URL", []string{"dlq", "list", "-topic", "t"}, "kafka://admin:" + secret + "@[::1"},
		{"demo", []string{"demo", "-url", "amqp://admin:" + secret + "@host:5672/%zz"}, ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var out, errOut bytes.Buffer
			a := &app{
				stdin: strings.NewReader(""), stdout: &out, stderr: &errOut,
				getenv: func(k string) string {
					if k == "MQ_URL" {
						return tc.env
					}
					return ""
				},
				open: mq.Open,
			}
			code := a.run(context.Background(), tc.args)
			all := out.String() + errOut.String()
			if code != exitUsage {
				t.Errorf("exit %d, want %d; stderr %q", code, exitUsage, errOut.String())
			}
			if strings.Contains(all, secret) {
				t.Errorf("output shows the password: %q", all)
			}
			if n := strings.Count(errOut.String(), "\n"); n != 1 {
				t.Errorf("stderr has %d lines, want one: %q", n, errOut.String())
			}
		})
	}
}

func TestDLQCommands(t *testing.T) {
	s := newShared(t)
	c := mq.NewClient(s.b.Conn())
	defer c.Close()
	ctx := context.Background()
	if code, _, stderr := s.run(t, "", "dlq", "ensure", "-topic", "orders"); code != exitOK {
		t.Fatalf("ensure: exit %d, %s", code, stderr)
	}
	mw, err := dlq.New(dlq.Config{Producer: c.Producer(), Group: "billing", Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	h := mw(mq.HandlerFunc(func(_ context.Context, m *mq.Message) error {
		return fmt.Errorf("cannot bill %s", m.ID)
	}))
	for _, id := range []string{"o1", "o2", "o3"} {
		m := &mq.Message{ID: id, Topic: "orders", Attempt: 1, Headers: map[string]string{"region": map[bool]string{true: "eu", false: "us"}[id != "o2"]}}
		if err := h.Handle(ctx, m); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := c.Consumer(ctx, "orders", mq.WithGroup("billing")); err != nil {
		t.Fatal(err)
	}

	code, out, stderr := s.run(t, "", "dlq", "list", "-topic", "orders", "-idle", "200ms")
	if code != exitOK || len(lines(out)) != 3 || !strings.Contains(out, `o1 key="" topic=orders group=billing reason=error attempts=1 redrives=0`) ||
		!strings.Contains(out, `error="cannot bill o1"`) || !strings.Contains(stderr, "3 dead letter(s) in orders.dlq") {
		t.Fatalf("list: exit %d, stdout %q, stderr %q", code, out, stderr)
	}
	// -topic orders.dlq names the dead-letter topic itself, not orders.dlq.dlq.
	code, out, stderr = s.run(t, "", "dlq", "list", "-topic", "orders.dlq", "-idle", "200ms")
	if code != exitOK || len(lines(out)) != 3 || !strings.Contains(stderr, "3 dead letter(s) in orders.dlq") {
		t.Fatalf("list -topic orders.dlq: exit %d, stdout %q, stderr %q", code, out, stderr)
	}
	for _, st := range s.b.Stats() {
		if strings.HasSuffix(st.Topic, ".dlq.dlq") {
			t.Errorf("a read command made topic %s", st.Topic)
		}
	}
	code, out, stderr = s.run(t, "", "dlq", "redrive", "-topic", "orders", "-header", "region=eu", "-dry-run", "-idle", "200ms")
	if code != exitOK || out != "o1 -> orders\no3 -> orders\n" || !strings.Contains(stderr, "would move 2 of 3") || !strings.Contains(stderr, "nothing was moved") {
		t.Fatalf("redrive -dry-run: exit %d, stdout %q, stderr %q", code, out, stderr)
	}
	code, out, stderr = s.run(t, "", "dlq", "redrive", "-topic", "orders", "-header", "region=eu", "-id", "o3", "-idle", "200ms")
	if code != exitOK || out != "o3\n" || !strings.Contains(stderr, "moved 1 dead letter(s)") || !strings.Contains(stderr, "2 left") {
		t.Fatalf("redrive: exit %d, stdout %q, stderr %q", code, out, stderr)
	}
	code, out, _ = s.run(t, "", "dlq", "list", "-dlq-topic", "orders.dlq", "-json", "-idle", "200ms")
	var ids []string
	for _, l := range lines(out) {
		var j struct {
			ID         string
			DeadLetter dlq.Info `json:"dead_letter"`
		}
		if err := json.Unmarshal([]byte(l), &j); err != nil {
			t.Fatalf("list -json line %q: %v", l, err)
		}
		if j.DeadLetter.Topic != "orders" {
			t.Errorf("json dead letter info: %+v", j.DeadLetter)
		}
		ids = append(ids, j.ID)
	}
	if code != exitOK || !slices.Equal(ids, []string{"o1", "o2"}) {
		t.Errorf("after redrive: exit %d, ids %v, want [o1 o2]", code, ids)
	}
	code, out, _ = s.run(t, "", "consume", "-topic", "orders", "-group", "billing", "-ack", "-n", "1", "-timeout", "20s")
	if code != exitOK || !strings.HasPrefix(out, "o3 ") || !strings.Contains(out, dlq.HeaderRedriveCount+"=1") || strings.Contains(out, dlq.HeaderPrefix) {
		t.Errorf("redriven message: exit %d, %q", code, out)
	}
}

func TestQuoteIfNeeded(t *testing.T) {
	tests := map[string]string{
		"":        `""`,
		"plain":   "plain",
		"a b":     `"a b"`,
		"k=v":     `"k=v"`,
		"line\n":  `"line\n"`,
		"ünïcode": "ünïcode",
	}
	for in, want := range tests {
		if got := quoteIfNeeded(in); got != want {
			t.Errorf("quoteIfNeeded(%q) = %s, want %s", in, got, want)
		}
	}
}

// TestNoURLNoGuess: broker commands refuse to run without a URL instead of
// "succeeding" on a throwaway in-process broker; the demo runs on mem://.
func TestNoURLNoGuess(t *testing.T) {
	for _, args := range [][]string{
		{"produce", "-topic", "t", "x"},
		{"consume", "-topic", "t", "-n", "1"},
		{"dlq", "list", "-topic", "t"},
		{"lag", "-topic", "t", "-group", "g"},
		{"bench", "-n", "10"},
	} {
		var out, errOut bytes.Buffer
		a := &app{stdin: strings.NewReader(""), stdout: &out, stderr: &errOut, getenv: func(string) string { return "" }, open: mq.Open}
		if code := a.run(context.Background(), args); code != exitUsage || !strings.Contains(errOut.String(), "no broker URL") {
			t.Errorf("%v without a URL: exit %d, stderr %q; want %d and a message asking for one", args, code, errOut.String(), exitUsage)
		}
	}
	var out, errOut bytes.Buffer
	a := &app{stdin: strings.NewReader(""), stdout: &out, stderr: &errOut, getenv: func(string) string { return "" }, open: mq.Open}
	if code := a.run(context.Background(), []string{"demo", "-orders", "5"}); code != exitOK {
		t.Errorf("demo without a URL: exit %d, stderr %q", code, errOut.String())
	}
}

// TestHelpHidesPassword: no help text shows the URL of MQ_URL, which may
// hold a password.
func TestHelpHidesPassword(t *testing.T) {
	const secret = "hunter2-pw"
	for _, args := range [][]string{
		{"-h"}, {"help"}, {"produce", "-h"}, {"consume", "-h"}, {"dlq", "list", "-h"}, {"dlq", "redrive", "-h"},
		{"lag", "-h"}, {"demo", "-h"}, {"bench", "-h"}, {"-url", "amqp://u:" + secret + "@h/", "produce", "-h"},
	} {
		var out, errOut bytes.Buffer
		a := &app{stdin: strings.NewReader(""), stdout: &out, stderr: &errOut, open: mq.Open,
			getenv: func(k string) string {
				if k == "MQ_URL" {
					return "amqp://admin:" + secret + "@rabbit:5672/"
				}
				return ""
			}}
		a.run(context.Background(), args)
		if all := out.String() + errOut.String(); strings.Contains(all, secret) {
			t.Errorf("%v prints the password: %q", args, all)
		}
	}
}

// TestTailTakesNothing: consume without -group reads in a private group:
// a live service's group still gets every message, and the private group
// is gone afterwards.
func TestTailTakesNothing(t *testing.T) {
	s := newShared(t)
	c := mq.NewClient(s.b.Conn())
	defer c.Close()
	ctx := context.Background()
	billing, err := c.Consumer(ctx, "orders", mq.WithGroup("billing"))
	if err != nil {
		t.Fatal(err)
	}
	defer billing.Close()
	type result struct {
		code     int
		out, err string
	}
	done := make(chan result, 1)
	go func() {
		code, out, errOut := s.run(t, "", "consume", "-topic", "orders", "-n", "1", "-timeout", "20s")
		done <- result{code, out, errOut}
	}()
	// Produce once the tail's group exists.
	deadline := time.Now().Add(10 * time.Second)
	for {
		tails := 0
		for _, st := range s.b.Stats() {
			if strings.HasPrefix(st.Group, "mq-tail-") {
				tails++
			}
		}
		if tails == 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the tail's private group never appeared")
		}
		time.Sleep(5 * time.Millisecond)
	}
	if err := c.Producer().Produce(ctx, "orders", &mq.Message{ID: "o-1", Body: []byte("hello")}); err != nil {
		t.Fatal(err)
	}
	r := <-done
	if r.code != exitOK || !strings.HasPrefix(r.out, "o-1 ") {
		t.Fatalf("tail: exit %d, stdout %q, stderr %q", r.code, r.out, r.err)
	}
	got := make(chan string, 1)
	cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	go func() {
		_ = billing.Consume(cctx, mq.HandlerFunc(func(_ context.Context, m *mq.Message) error {
			got <- m.ID
			cancel()
			return nil
		}))
	}()
	select {
	case id := <-got:
		if id != "o-1" {
			t.Fatalf("billing got %s, want o-1", id)
		}
	case <-cctx.Done():
		t.Fatal("the tail took the message from group billing")
	}
	for _, st := range s.b.Stats() {
		if strings.HasPrefix(st.Group, "mq-tail-") {
			t.Errorf("private group %s left behind: %+v", st.Group, st)
		}
	}
}

func TestLagCommand(t *testing.T) {
	s := newShared(t)
	c := mq.NewClient(s.b.Conn())
	defer c.Close()
	ctx := context.Background()
	if code, _, stderr := s.run(t, "", "lag", "-topic", "orders", "-group", "billing"); code != exitFailure || !strings.Contains(stderr, "not known") {
		t.Fatalf("lag of an unknown group: exit %d, stderr %q; want 1 and a clear message", code, stderr)
	}
	cons, err := c.Consumer(ctx, "orders", mq.WithGroup("billing"))
	if err != nil {
		t.Fatal(err)
	}
	defer cons.Close()
	if err := c.Producer().Produce(ctx, "orders", &mq.Message{}, &mq.Message{}, &mq.Message{}); err != nil {
		t.Fatal(err)
	}
	time.Sleep(30 * time.Millisecond)
	code, out, stderr := s.run(t, "", "lag", "-topic", "orders", "-group", "billing")
	if code != exitOK || !strings.Contains(out, "total backlog 3, unacked 0") {
		t.Fatalf("lag: exit %d, stdout %q, stderr %q", code, out, stderr)
	}
	if code, _, stderr := s.run(t, "", "lag", "-topic", "orders", "-group", "billing", "-max-lag", "2"); code != exitThreshold || !strings.Contains(stderr, "above -max-lag 2") {
		t.Errorf("-max-lag 2 with 3 behind: exit %d, stderr %q; want %d", code, stderr, exitThreshold)
	}
	if code, _, _ := s.run(t, "", "lag", "-topic", "orders", "-group", "billing", "-max-lag", "3", "-max-age", "1h"); code != exitOK {
		t.Errorf("within both thresholds: exit %d, want 0", code)
	}
	if code, _, stderr := s.run(t, "", "lag", "-topic", "orders", "-group", "billing", "-max-age", "10ms"); code != exitThreshold || !strings.Contains(stderr, "above -max-age") {
		t.Errorf("-max-age 10ms with 30ms-old messages: exit %d, stderr %q; want %d", code, stderr, exitThreshold)
	}
	if code, out, _ := s.run(t, "", "lag", "-topic", "orders", "-group", "billing", "-watch", "5ms", "-max-lag", "2"); code != exitThreshold || !strings.Contains(out, "topic orders  group billing") {
		t.Errorf("-watch with a crossed threshold: exit %d, stdout %q; want %d after one round", code, out, exitThreshold)
	}
}
