package rabbit_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/mqkit/mq"
	"github.com/mqkit/mq/integration/testbed"
	"github.com/mqkit/mq/rabbit"
)

// A host list is kept in Config.URL as written, with this package's
// parameters taken out, IPv6 literals included.
func TestParseURLHostList(t *testing.T) {
	tests := []struct {
		url  string
		want rabbit.Config
	}{
		{"amqp://u:" + secret + "@h1:5672,h2:5673,h3/v?queue_type=quorum",
			rabbit.Config{URL: "amqp://u:" + secret + "@h1:5672,h2:5673,h3/v", QueueType: rabbit.Quorum}},
		{"amqps://u:" + secret + "@[::1]:5671,[fe80::1]/prod", rabbit.Config{URL: "amqps://u:" + secret + "@[::1]:5671,[fe80::1]/prod"}},
		{"amqp://h2:5673,[::1]:5672/?heartbeat=5&shards=2", rabbit.Config{URL: "amqp://h2:5673,[::1]:5672/?heartbeat=5", Shards: 2}},
		{"amqp://127.0.2.1:5672,127.0.2.2:5672,127.0.2.3:5672/", rabbit.Config{URL: "amqp://127.0.2.1:5672,127.0.2.2:5672,127.0.2.3:5672/"}},
	}
	for _, tc := range tests {
		t.Run(tc.url, func(t *testing.T) {
			got, err := rabbit.ParseURL(tc.url)
			if err != nil {
				t.Fatalf("ParseURL: %v", err)
			}
			if got.URL != tc.want.URL || got.QueueType != tc.want.QueueType || got.Shards != tc.want.Shards {
				t.Errorf("ParseURL(%q)\n got %#v (URL %s)\nwant %#v (URL %s)", tc.url, got, got.URL, tc.want, tc.want.URL)
			}
			if s := fmt.Sprintf("%v %+v %#v %s", got, got, got, got); strings.Contains(s, secret) {
				t.Errorf("Config text shows the password: %s", s)
			}
		})
	}
	// The redacted form still names every node.
	cfg, err := rabbit.ParseURL("amqp://u:" + secret + "@[::1]:5672,h2:5673/")
	if err != nil {
		t.Fatal(err)
	}
	if s := cfg.String(); !strings.Contains(s, "[::1]:5672,h2:5673") || !strings.Contains(s, "u:xxxxx@") {
		t.Errorf("String() = %q, want every node and the password hidden", s)
	}
}

func TestParseURLHostListErrors(t *testing.T) {
	tests := []struct {
		url      string
		mentions string
	}{
		{"amqp://u:" + secret + "@h1,,h2/", "empty host"},
		{"amqp://u:" + secret + "@h1,/", "empty host"},
		{"amqp://u:" + secret + "@,h1/", "empty host"},
		{"amqp://u:" + secret + "@h1,::1/", "brackets"},
		{"amqp://u:" + secret + "@h1,h2:port/", `"h2:port"`},
		{"amqp://u:" + secret + "@h1:5672,[::1/", ""},
		{"amqp://u:" + secret + "@h1,h2/?colour=blue", `parameter "colour"`},
	}
	for _, tc := range tests {
		t.Run(tc.url, func(t *testing.T) {
			_, err := rabbit.ParseURL(tc.url)
			if err == nil {
				t.Fatalf("ParseURL(%q) succeeded, want an error", tc.url)
			}
			if !errors.Is(err, mq.ErrInvalidURL) {
				t.Errorf("error %q does not wrap mq.ErrInvalidURL", err)
			}
			if strings.Contains(err.Error(), secret) {
				t.Errorf("error %q contains the password", err)
			}
			if !strings.Contains(err.Error(), tc.mentions) {
				t.Errorf("error %q does not mention %q", err, tc.mentions)
			}
		})
	}
	// Dial checks a Config built by hand the same way.
	_, err := rabbit.Dial(context.Background(), rabbit.Config{URL: "amqp://u:" + secret + "@h1,,h2/"})
	if !errors.Is(err, mq.ErrInvalidURL) || strings.Contains(err.Error(), secret) {
		t.Errorf("Dial with an empty host in the list = %v, want ErrInvalidURL without the password", err)
	}
}

// hungListener accepts TCP connections and never answers: a paused or hung
// node.
func hungListener(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = l.Close() })
	go func() {
		var held []net.Conn
		defer func() {
			for _, c := range held {
				_ = c.Close()
			}
		}()
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			held = append(held, c)
		}
	}()
	return l.Addr().String()
}

// When no broker of the list answers, Dial fails within reconnect_timeout
// (a hung node does not take amqp091's 30s) with an error naming each
// broker and its failure, wrapping mq.ErrUnavailable, without the
// password.
func TestDialHostListUnreachable(t *testing.T) {
	hung := hungListener(t)
	var logs strings.Builder
	cfg, err := rabbit.ParseURL("amqp://u:" + secret + "@127.0.0.1:1," + hung + "/?reconnect_timeout=3s")
	if err != nil {
		t.Fatal(err)
	}
	cfg.Logger = slog.New(slog.NewTextHandler(&logs, nil))
	begin := time.Now()
	_, err = rabbit.Dial(context.Background(), cfg)
	took := time.Since(begin)
	if err == nil {
		t.Fatal("Dial succeeded with no broker")
	}
	t.Logf("Dial: %v (%v)", err, took.Round(time.Millisecond))
	if took > 5*time.Second {
		t.Errorf("Dial took %v, want about reconnect_timeout (3s)", took)
	}
	if !errors.Is(err, mq.ErrUnavailable) {
		t.Errorf("error %q does not wrap mq.ErrUnavailable", err)
	}
	for _, want := range []string{"127.0.0.1:1: ", "refused", hung + ": "} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not mention %q", err, want)
		}
	}
	if strings.Contains(err.Error(), secret) || strings.Contains(logs.String(), secret) {
		t.Errorf("password leaked: %q\n%s", err, logs.String())
	}
}

// A dead node (closed port) and a hung one (accepts, never answers) ahead
// of a live broker in the list: Dial connects to the live one within
// reconnect_timeout, and messages flow.
func TestHostListFallThrough(t *testing.T) {
	b := testbed.RabbitMQ(t)
	hung := hungListener(t)
	url := "amqp://guest:guest@127.0.0.1:1," + hung + "," + b.Addr + "/?reconnect_timeout=5s"
	logs := &lockedBuffer{}
	begin := time.Now()
	c := dialT(t, url, logs)
	took := time.Since(begin)
	t.Logf("connected in %v through %s", took.Round(time.Millisecond), b.Addr)
	if took > 5*time.Second {
		t.Errorf("Dial took %v, want within reconnect_timeout (5s)", took)
	}
	if !strings.Contains(logs.String(), "connected to another node") || !strings.Contains(logs.String(), b.Addr) {
		t.Errorf("want a log line naming the node connected to; got:\n%s", logs)
	}
	topic := uniqueTopic("hosts")
	got := make(chan string, 1)
	consumeT(t, c, topic, func(_ context.Context, m *mq.Message) error {
		select {
		case got <- m.ID:
		default:
		}
		return nil
	}, mq.WithGroup("g"))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := c.Producer().Produce(ctx, topic, &mq.Message{ID: "through-the-list"}); err != nil {
		t.Fatalf("Produce: %v", err)
	}
	select {
	case id := <-got:
		if id != "through-the-list" {
			t.Errorf("got message %q", id)
		}
	case <-ctx.Done():
		t.Fatal("message not consumed")
	}
}

// After a connection drops, the reconnection starts with the broker after
// the one it was connected to: here the same broker under two addresses,
// so the reconnection goes through the second.
func TestHostListReconnectRotates(t *testing.T) {
	if testing.Short() {
		t.Skip("closes a broker's connections")
	}
	b := testbed.RabbitMQ(t)
	_, port, _ := net.SplitHostPort(b.Addr)
	second := "localhost:" + port
	logs := &lockedBuffer{}
	c := dialT(t, "amqp://guest:guest@"+b.Addr+","+second+"/?reconnect_backoff=50ms", logs)
	p := c.Producer()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	topic := uniqueTopic("rotate")
	if err := p.Produce(ctx, topic, &mq.Message{}); err != nil {
		t.Fatal(err)
	}
	if err := rabbitmqctl(ctx, b, "close_all_connections", "test: rotate"); err != nil {
		t.Fatal(err)
	}
	// Produce until the connection is found closed and dialed again.
	for !strings.Contains(logs.String(), "reconnected") {
		if err := p.Produce(ctx, topic, &mq.Message{}); err != nil && ctx.Err() != nil {
			t.Fatalf("no reconnection: %v\n%s", err, logs)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if got := logs.String(); !strings.Contains(got, "node="+second) {
		t.Errorf("want the reconnection through %s; logs:\n%s", second, got)
	}
}

// mq.Open takes a host list too, IPv6 literals included (url.Parse alone
// rejects a list holding one).
func TestOpenHostList(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, err := mq.Open(ctx, "amqp://u:"+secret+"@127.0.0.1:1,localhost:2,[::1]:3/?reconnect_timeout=1s")
	if !errors.Is(err, mq.ErrUnavailable) {
		t.Fatalf("Open = %v, want an error wrapping mq.ErrUnavailable", err)
	}
	for _, want := range []string{"127.0.0.1:1: ", "localhost:2: ", "[::1]:3: "} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not mention %q", err, want)
		}
	}
	if strings.Contains(err.Error(), secret) {
		t.Errorf("error %q contains the password", err)
	}
}

// A password with ',' and an unencoded '/' is not cut into a "host list"
// and is never shown, whole or in part, by mq.Open, ParseURL or Dial.
func TestURLErrorsHidePasswordPieces(t *testing.T) {
	for _, raw := range []string{
		"amqp://user:ab,cd/ef@127.0.0.1:1/",
		"amqp://u:s3cret/x@h1/",
		"amqp://u:se,cr?et@h1,h2/",
	} {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		_, openErr := mq.Open(ctx, raw)
		cancel()
		_, parseErr := rabbit.ParseURL(raw)
		_, dialErr := rabbit.Dial(context.Background(), rabbit.Config{URL: raw})
		for name, err := range map[string]error{"Open": openErr, "ParseURL": parseErr, "Dial": dialErr} {
			if err == nil {
				t.Errorf("%s(%q) = nil, want an error", name, raw)
				continue
			}
			if !errors.Is(err, mq.ErrInvalidURL) {
				t.Errorf("%s(%q) = %v, want mq.ErrInvalidURL", name, raw, err)
			}
			for _, piece := range []string{"cd/ef", "ab,cd", "s3cret", "se,cr", "cr?et"} {
				if strings.Contains(err.Error(), piece) {
					t.Errorf("%s(%q): error %q shows %q of the password", name, raw, err, piece)
				}
			}
		}
	}
}
