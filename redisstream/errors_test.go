package redisstream

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/mqkit/mq"
	"github.com/mqkit/mq/integration/testbed"
)

// reply is an error reply of Redis's, as go-redis reports one.
type reply string

func (r reply) Error() string { return string(r) }
func (reply) RedisError()     {}

// TestClassify maps go-redis errors for transient failures to
// mq.ErrUnavailable, a closed client to mq.ErrClosed only when it will not
// come back, and leaves the rest alone; the original error stays
// reachable.
func TestClassify(t *testing.T) {
	const (
		asIs = iota
		unavailable
		closed
	)
	for _, tc := range []struct {
		name         string
		err          error
		clientClosed bool
		want         int
	}{
		{"connection refused", &net.OpError{Op: "dial", Net: "tcp", Err: os.NewSyscallError("connect", syscall.ECONNREFUSED)}, false, unavailable},
		{"connection reset", &net.OpError{Op: "read", Net: "tcp", Err: os.NewSyscallError("read", syscall.ECONNRESET)}, false, unavailable},
		{"broken pipe", fmt.Errorf("write: %w", syscall.EPIPE), false, unavailable},
		{"read timeout", &net.OpError{Op: "read", Net: "tcp", Err: os.ErrDeadlineExceeded}, false, unavailable},
		{"EOF", io.EOF, false, unavailable},
		{"unexpected EOF", fmt.Errorf("reading reply: %w", io.ErrUnexpectedEOF), false, unavailable},
		{"pool timeout", redis.ErrPoolTimeout, false, unavailable},
		{"bad dedicated connection", errors.New("redis: Conn is in a bad state: read tcp: i/o timeout"), false, unavailable},
		{"LOADING", reply("LOADING Redis is loading the dataset in memory"), false, unavailable},
		{"MASTERDOWN", reply("MASTERDOWN Link with MASTER is down and replica-serve-stale-data is set to 'no'."), false, unavailable},
		{"CLUSTERDOWN", reply("CLUSTERDOWN The cluster is down"), false, unavailable},
		{"TRYAGAIN", reply("TRYAGAIN Multiple keys request during rehashing of slot"), false, unavailable},
		{"READONLY after a failover", reply("READONLY You can't write against a read only replica."), false, unavailable},
		{"BUSY script", reply("BUSY Redis is busy running a script. You can only call SCRIPT KILL or SHUTDOWN NOSAVE."), false, unavailable},
		{"NOREPLICAS", reply("NOREPLICAS Not enough good replicas to write."), false, unavailable},
		{"max clients", reply("ERR max number of clients reached"), false, unavailable},
		{"MOVED", reply("MOVED 3999 127.0.0.1:6381"), false, unavailable},
		{"ASK", reply("ASK 3999 127.0.0.1:6381"), false, unavailable},
		{"closed by us", redis.ErrClosed, true, closed},
		{"closed node client of a cluster", redis.ErrClosed, false, unavailable},
		{"BUSYGROUP", reply("BUSYGROUP Consumer Group name already exists"), false, asIs},
		{"NOGROUP", reply("NOGROUP No such key 'x' or consumer group 'g'"), false, asIs},
		{"WRONGTYPE", reply("WRONGTYPE Operation against a key holding the wrong kind of value"), false, asIs},
		{"wrong password", reply("WRONGPASS invalid username-password pair or user is disabled."), false, asIs},
		{"no such entry", redis.Nil, false, asIs},
		{"caller's deadline", context.DeadlineExceeded, false, asIs},
		{"caller's cancel", context.Canceled, false, asIs},
		{"bad certificate", &net.OpError{Op: "remote error", Err: x509.UnknownAuthorityError{}}, false, asIs},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := classify(tc.err, tc.clientClosed)
			if !errors.Is(got, tc.err) && got != tc.err {
				t.Errorf("classify(%v) = %v: the original error is not wrapped", tc.err, got)
			}
			isU, isC := errors.Is(got, mq.ErrUnavailable), errors.Is(got, mq.ErrClosed)
			switch tc.want {
			case unavailable:
				if !isU || isC {
					t.Errorf("classify(%v) = %v, want it to wrap mq.ErrUnavailable (and not mq.ErrClosed)", tc.err, got)
				}
			case closed:
				if !isC || isU {
					t.Errorf("classify(%v) = %v, want it to wrap mq.ErrClosed (and not mq.ErrUnavailable)", tc.err, got)
				}
			default:
				if got != tc.err {
					t.Errorf("classify(%v) = %v, want it unchanged", tc.err, got)
				}
			}
			if again := classify(got, tc.clientClosed); again != got {
				t.Errorf("classify is not idempotent: %v, then %v", got, again)
			}
		})
	}
}

// TestClassifyReplies: error replies as go-redis parses them from a real
// server (a script returns each), not as the table above builds them.
func TestClassifyReplies(t *testing.T) {
	opts, err := redis.ParseURL(testbed.SharedRedis(t).URL)
	if err != nil {
		t.Fatal(err)
	}
	c := redis.NewClient(opts)
	defer c.Close()
	for text, transient := range map[string]bool{
		"LOADING Redis is loading the dataset in memory":          true,
		"MASTERDOWN Link with MASTER is down":                     true,
		"CLUSTERDOWN The cluster is down":                         true,
		"TRYAGAIN Multiple keys request during rehashing of slot": true,
		"READONLY You can't write against a read only replica.":   true,
		"BUSY Redis is busy running a script.":                    true,
		"BUSYGROUP Consumer Group name already exists":            false,
		"NOGROUP No such key":                                     false,
	} {
		err := c.Eval(context.Background(), "return redis.error_reply(ARGV[1])", nil, text).Err()
		if err == nil {
			t.Fatalf("the script returned no error for %q", text)
		}
		if got := errors.Is(classify(err, false), mq.ErrUnavailable); got != transient {
			t.Errorf("reply %q (go-redis error %T %v): wraps mq.ErrUnavailable = %v, want %v", text, err, err, got, transient)
		}
	}
}

// TestProduceUnavailable: while Redis is paused (connections open, nothing
// answers) and while it is stopped (connections refused), Produce fails
// with an error wrapping mq.ErrUnavailable; once it is back, Produce
// succeeds. After the Conn is closed the error is mq.ErrClosed, and a
// Conn whose caller closed its client reports mq.ErrClosed, not an
// outage.
func TestProduceUnavailable(t *testing.T) {
	br := testbed.Redis(t)
	ctx := context.Background()
	c, err := mq.Open(ctx, br.URL+"?dial_timeout=300ms&read_timeout=300ms&write_timeout=300ms&max_retries=-1")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	p := c.Producer()
	topic := "produce-unavailable"
	produce := func() error {
		pctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		return p.Produce(pctx, topic, &mq.Message{Key: "k", Body: []byte("x")})
	}
	if err := produce(); err != nil {
		t.Fatal(err)
	}

	if err := br.Pause(ctx); err != nil {
		t.Fatal(err)
	}
	err = produce()
	uctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if uerr := br.Unpause(uctx); uerr != nil {
		t.Fatal(uerr)
	}
	if !errors.Is(err, mq.ErrUnavailable) {
		t.Errorf("Produce to a paused Redis = %v, want an error wrapping mq.ErrUnavailable", err)
	}
	t.Logf("paused: %v", err)
	deadline := time.Now().Add(10 * time.Second)
	for err := produce(); err != nil; err = produce() {
		if time.Now().After(deadline) {
			t.Fatalf("Produce after the unpause: %v", err)
		}
		time.Sleep(50 * time.Millisecond)
	}

	timeout := time.Second
	if err := br.Container().Stop(ctx, &timeout); err != nil {
		t.Fatal(err)
	}
	err = produce()
	if !errors.Is(err, mq.ErrUnavailable) {
		t.Errorf("Produce to a stopped Redis = %v, want an error wrapping mq.ErrUnavailable", err)
	}
	t.Logf("stopped: %v", err)

	// Closed, not unavailable.
	conn := c.Conn().(*Conn)
	own := redis.NewClient(&redis.Options{Addr: br.Addr})
	mine, err := NewConn(own, Config{})
	if err != nil {
		t.Fatal(err)
	}
	_ = own.Close()
	if err := mine.Send(ctx, topic, []*mq.Message{{ID: "1", Body: []byte("x")}}); !errors.Is(err, mq.ErrClosed) || errors.Is(err, mq.ErrUnavailable) {
		t.Errorf("Send over a client its caller closed = %v, want mq.ErrClosed", err)
	}
	_ = c.Close()
	if err := conn.Send(ctx, topic, []*mq.Message{{ID: "2", Body: []byte("x")}}); !errors.Is(err, mq.ErrClosed) {
		t.Errorf("Send after Close = %v, want mq.ErrClosed", err)
	}
}

// TestMapErrRedirectOnPlainClient: a MOVED or ASK reply to a client that
// does not follow them (a redis:// URL naming a Cluster node) is a
// mistake to fix, not an outage to wait out; through a Cluster client it
// is a moving slot, so an outage.
func TestMapErrRedirectOnPlainClient(t *testing.T) {
	plain := redis.NewClient(&redis.Options{Addr: "127.0.0.1:1"})
	defer plain.Close()
	cluster := redis.NewClusterClient(&redis.ClusterOptions{Addrs: []string{"127.0.0.1:1"}})
	defer cluster.Close()
	for _, r := range []error{reply("MOVED 3999 127.0.0.1:6381"), reply("ASK 3999 127.0.0.1:6381")} {
		got := (&Conn{client: plain}).mapErr(r)
		if errors.Is(got, mq.ErrUnavailable) || !errors.Is(got, r) || !strings.Contains(got.Error(), SchemeCluster+"://") {
			t.Errorf("plain client: mapErr(%v) = %v, want the reply, not unavailable, pointing at %s://", r, got, SchemeCluster)
		}
		if got := (&Conn{client: cluster}).mapErr(r); !errors.Is(got, mq.ErrUnavailable) {
			t.Errorf("cluster client: mapErr(%v) = %v, want mq.ErrUnavailable", r, got)
		}
	}
}
