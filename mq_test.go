package mq_test

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"regexp"
	"sort"
	"strings"
	"sync"
	"testing"

	"github.com/mqkit/mq"
	_ "github.com/mqkit/mq/memory"
)

func TestOpenErrors(t *testing.T) {
	ctx := context.Background()
	tests := []struct {
		url     string
		wantErr error
		wantIn  string
	}{
		{"", mq.ErrInvalidURL, "empty URL"},
		{"   ", mq.ErrInvalidURL, "empty URL"},
		{"no-scheme-here", mq.ErrInvalidURL, "no scheme"},
		{"nosuch://host", mq.ErrUnknownScheme, `"nosuch"`},
		{"amqp://user:s3cret@host:notaport/", mq.ErrInvalidURL, "invalid port"},
		{"kafka://user:s3cret@host:9092/%zz", mq.ErrInvalidURL, "user:xxxxx@"},
		{"mem://?concurrency=abc", mq.ErrInvalidURL, "concurrency"},
		{"mem://?shutdown_timeout=forever", mq.ErrInvalidURL, "shutdown_timeout"},
		{"mem://?concurrency=0", mq.ErrInvalidURL, `concurrency="0": want a whole number above 0`},
		{"mem://?bogus=1", mq.ErrInvalidURL, `unknown mem:// parameter "bogus"`},
		{"mem://?when_full=maybe", mq.ErrInvalidURL, "when_full"},
		{"mem://somehost", mq.ErrInvalidURL, "no host"},
	}
	for _, tc := range tests {
		t.Run(tc.url, func(t *testing.T) {
			c, err := mq.Open(ctx, tc.url)
			if err == nil {
				c.Close()
				t.Fatalf("Open(%q) succeeded, want error", tc.url)
			}
			if tc.wantErr != nil && !errors.Is(err, tc.wantErr) {
				t.Errorf("Open(%q) = %v, want errors.Is %v", tc.url, err, tc.wantErr)
			}
			if !strings.Contains(err.Error(), tc.wantIn) {
				t.Errorf("Open(%q) = %q, want it to mention %q", tc.url, err, tc.wantIn)
			}
			if strings.Contains(err.Error(), "s3cret") {
				t.Errorf("Open(%q) error leaks the password: %q", tc.url, err)
			}
		})
	}
}

func TestOpenMemory(t *testing.T) {
	c, err := mq.Open(context.Background(), "mem://?group=g&concurrency=4&capacity=10")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if got := c.String(); got != "mem://?capacity=10" {
		t.Errorf("String() = %q", got)
	}
	if _, err := c.Consumer(context.Background(), "t"); err != nil {
		t.Errorf("group from URL not used: %v", err)
	}
}

func TestRedactURL(t *testing.T) {
	for in, want := range map[string]string{
		"amqp://guest:guest@host:5672/":     "amqp://guest:xxxxx@host:5672/",
		"amqp://user:p@ss@host:bad/":        "amqp://user:xxxxx@host:bad/",
		"redis://:token@host:6379/0":        "redis://:xxxxx@host:6379/0",
		"kafka://h1:9092,h2:9092":           "kafka://h1:9092,h2:9092",
		"amqp://user:s3cret@host:%zz/x?y=1": "amqp://user:xxxxx@host:%zz/x?y=1",
		"amqp://onlytoken@host:%zz/":        "amqp://xxxxx@host:%zz/",
	} {
		if got := mq.RedactURL(in); got != want {
			t.Errorf("RedactURL(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestChainOrder(t *testing.T) {
	var trace []string
	mw := func(name string) mq.Middleware {
		return func(next mq.Handler) mq.Handler {
			return mq.HandlerFunc(func(ctx context.Context, m *mq.Message) error {
				trace = append(trace, name+">")
				err := next.Handle(ctx, m)
				trace = append(trace, "<"+name)
				return err
			})
		}
	}
	h := mq.Chain(mq.HandlerFunc(func(context.Context, *mq.Message) error {
		trace = append(trace, "h")
		return nil
	}), mw("a"), nil, mw("b"))
	if err := h.Handle(context.Background(), &mq.Message{}); err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(trace, " "); got != "a> b> h <b <a" {
		t.Errorf("trace = %q", got)
	}
}

func TestPermanent(t *testing.T) {
	base := errors.New("bad input")
	p := mq.Permanent(base)
	if !mq.IsPermanent(p) || !errors.Is(p, base) {
		t.Errorf("Permanent lost its marker or cause: %v", p)
	}
	wrapped := fmt.Errorf("step: %w", p)
	if !mq.IsPermanent(wrapped) {
		t.Error("IsPermanent does not see through wrapping")
	}
	if mq.Permanent(nil) != nil {
		t.Error("Permanent(nil) != nil")
	}
	if mq.Permanent(p) != p {
		t.Error("Permanent wraps twice")
	}
	if mq.IsPermanent(base) {
		t.Error("plain error reported permanent")
	}
}

var uuidV7 = regexp.MustCompile(`^[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$`)

func TestNewIDOrderedAndUnique(t *testing.T) {
	const n = 20000
	var mu sync.Mutex
	seen := make(map[string]bool, n)
	var wg sync.WaitGroup
	for g := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			prev := ""
			for range n / 4 {
				id := mq.NewID()
				if !uuidV7.MatchString(id) {
					t.Errorf("goroutine %d: %q is not a UUIDv7", g, id)
					return
				}
				if id <= prev {
					t.Errorf("IDs not increasing: %q after %q", id, prev)
					return
				}
				prev = id
				mu.Lock()
				if seen[id] {
					t.Errorf("duplicate ID %q", id)
				}
				seen[id] = true
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	ids := make([]string, 0, len(seen))
	for id := range seen {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	if len(ids) != n {
		t.Errorf("%d unique IDs, want %d", len(ids), n)
	}
}

func TestMessageHelpers(t *testing.T) {
	var m mq.Message
	if m.Header("x") != "" {
		t.Error("Header on nil map")
	}
	m.SetHeader("x", "1")
	m.Body = []byte("abc")
	c := m.Clone()
	c.Headers["x"] = "2"
	c.Body[0] = 'z'
	if m.Header("x") != "1" || string(m.Body) != "abc" {
		t.Error("Clone shares memory with the original")
	}
	if got := (&mq.Message{ID: "i", Key: "kk", Body: []byte("bbb"), Headers: map[string]string{"h": "vv"}}).Size(); got != 1+2+3+1+2 {
		t.Errorf("Size = %d", got)
	}
}

func TestShuttingDownSignalsHandlers(t *testing.T) {
	if mq.ShuttingDown(context.Background()) != nil || mq.IsShuttingDown(context.Background()) {
		t.Fatal("a plain context reports a shutdown")
	}
	c, err := mq.Open(context.Background(), "mem://?group=g&shutdown_timeout=1m")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	cons, err := c.Consumer(context.Background(), "t")
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Producer().Produce(context.Background(), "t", &mq.Message{ID: "a"}); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	started := make(chan struct{})
	var sawSignal, ctxAlive bool
	err = cons.Consume(ctx, mq.HandlerFunc(func(hctx context.Context, m *mq.Message) error {
		if mq.IsShuttingDown(hctx) {
			t.Error("shutdown reported before it began")
		}
		close(started)
		cancel()
		<-mq.ShuttingDown(hctx) // closed at once, long before the 1m shutdown timeout
		sawSignal = true
		ctxAlive = hctx.Err() == nil
		return nil
	}))
	if err != nil {
		t.Fatal(err)
	}
	<-started
	if !sawSignal || !ctxAlive {
		t.Errorf("signal seen %v, handler context still alive %v; want both", sawSignal, ctxAlive)
	}
}

// TestMaxInFlightFollowsConcurrency: the in-flight default is 4× the
// concurrency given to Consumer (at least mq.DefaultMinInFlight), although
// Open already settled the other defaults from the URL.
func TestMaxInFlightFollowsConcurrency(t *testing.T) {
	for _, tc := range []struct {
		url          string
		opts         []mq.Option
		conc, flight int
	}{
		{"optstest://", []mq.Option{mq.WithConcurrency(32)}, 32, 256},
		{"optstest://", []mq.Option{mq.WithConcurrency(100)}, 100, 400},
		{"optstest://?concurrency=8", nil, 8, 256},
		{"optstest://", nil, 1, 256},
		{"optstest://?max_in_flight=10", []mq.Option{mq.WithConcurrency(20)}, 20, 20},
		{"optstest://?concurrency=4&max_in_flight=100", nil, 4, 100},
	} {
		c, err := mq.Open(context.Background(), tc.url)
		if err != nil {
			t.Fatal(err)
		}
		seen := c.Conn().(*optsConn)
		if _, err := c.Consumer(context.Background(), "t", append(tc.opts, mq.WithGroup("g"))...); err != nil {
			t.Fatal(err)
		}
		if seen.got.Concurrency != tc.conc || seen.got.MaxInFlight != tc.flight {
			t.Errorf("%s %d options: SubscribeOptions %+v, want concurrency %d, max in flight %d", tc.url, len(tc.opts), seen.got, tc.conc, tc.flight)
		}
		_ = c.Close()
	}
}

func init() { mq.Register("optstest", optsDriver{}) }

type optsDriver struct{}

func (optsDriver) Open(context.Context, *url.URL) (mq.Conn, error) { return &optsConn{}, nil }

// optsConn records the SubscribeOptions the portable layer asks for.
type optsConn struct {
	greedyConn
	got mq.SubscribeOptions
}

func (c *optsConn) Subscribe(ctx context.Context, topic, group string, o mq.SubscribeOptions) (mq.Subscription, error) {
	c.got = o
	return c.greedyConn.Subscribe(ctx, topic, group, o)
}

// TestOpenHidesPasswordPieces: url.Parse quotes the part of a URL it
// stumbles on, which with an unencoded '/', '?' or ',' in the password is a
// piece of it; Open shows none, and does not read such a password as a
// host list.
func TestOpenHidesPasswordPieces(t *testing.T) {
	for raw, pieces := range map[string][]string{
		"redis://user:ab,cd/ef@127.0.0.1:1/":  {"ab,cd", "cd/ef", ",cd"},
		"kafka://u:s3cret/x@h1,h2/":           {"s3cret", "cret/x"},
		"amqp://u:pa?ss,word@h1:5672,h2:5672": {"pa?ss", "ss,wo"},
	} {
		_, err := mq.Open(context.Background(), raw)
		if !errors.Is(err, mq.ErrInvalidURL) {
			t.Errorf("Open(%q) = %v, want mq.ErrInvalidURL", raw, err)
			continue
		}
		for _, p := range pieces {
			if strings.Contains(err.Error(), p) {
				t.Errorf("Open(%q): error %q shows %q of the password", raw, err, p)
			}
		}
	}
}
