package rabbit

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"sync"
	"sync/atomic"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/mqkit/mq"
	"github.com/mqkit/mq/internal/backoff"
	"github.com/mqkit/mq/internal/closeset"
)

func init() {
	mq.Register("amqp", driver{})
	mq.Register("amqps", driver{})
}

type driver struct{}

// Open implements mq.Driver.
func (driver) Open(ctx context.Context, u *url.URL) (mq.Conn, error) {
	cfg, err := configFromURL(u)
	if err != nil {
		return nil, err
	}
	cfg.Logger = mq.LoggerFrom(ctx)
	return Dial(ctx, cfg)
}

// Errors of this package, checkable with errors.Is.
var (
	// ErrUnroutable is returned by Produce for a message the broker could
	// not route to any queue (a mandatory publish it returned): the topic
	// has no consumer group and Config.DisableUnroutedQueue is set, or
	// operators' bindings do not match it.
	ErrUnroutable = errors.New("rabbit: message unroutable")

	// ErrNacked is returned by Produce for a message the broker refused
	// with a negative publisher confirm.
	ErrNacked = errors.New("rabbit: message nacked by the broker")

	// ErrNotFound is returned when an exchange or queue does not exist and
	// Config.DisableDeclare is set.
	ErrNotFound = errors.New("rabbit: not found")
)

// Conn is a self-healing connection to RabbitMQ. It implements mq.Conn
// (wrap it with mq.NewClient, or get it from mq.Open's Client.Conn),
// mq.Sizer, mq.GroupDeleter and mq.Scheduler (see the package
// documentation, "Delayed delivery"), and adds Lag, Backlog and
// DeadLetter. It is safe for concurrent use.
//
// It keeps two AMQP connections, dialed again with backoff whenever they
// drop: one for publishing (a pool of channels in confirm mode) and one,
// dialed on first Subscribe, for consuming, so that broker flow control on
// publishers never delays consumers' acknowledgements.
type Conn struct {
	cfg      Config
	redacted string
	hosts    []endpoint // the brokers of cfg.URL, tried in turn
	// lastGood is the index in hosts of the broker that the last
	// successful dial of either link reached (see link.dial).
	lastGood atomic.Int64

	ctx    context.Context // cancelled by Close
	cancel context.CancelFunc

	pub *link
	sub *link

	poolMu sync.Mutex
	pool   []*pubChan // idle publishing channels

	subs closeset.Set[*subscription]

	mu      sync.Mutex
	live    map[*mq.Message]*delivery // unsettled deliveries, for DeadLetter
	closed  bool
	closeMu sync.Mutex

	logged sync.Map // keys of the conditions logged once (see logOnce)

	tags atomic.Uint64 // numbers consumer tags

	pinging atomic.Bool // a Ping's round trip is unanswered

	bg sync.WaitGroup // calls abandoned to a blocked or hung broker

	delays delays // delayed delivery: declared levels, relays (delay.go)

	// handOverBeforeAck, set only by tests, runs in a hand-over before
	// each acknowledgement it sends (see mover.settle).
	handOverBeforeAck func(queue string)
}

// Dial connects to the broker of cfg.URL and returns a connection. It
// makes one attempt, bounded by ctx and Config.ReconnectTimeout, and fails
// if the broker cannot be reached (the error then wraps
// mq.ErrUnavailable); once connected, the connection recovers from broker
// restarts and network failures by itself until Close. A URL naming
// several brokers (the nodes of a cluster) makes each attempt try them in
// turn: Dial fails only if none answers, and the error names each one's
// failure.
func Dial(ctx context.Context, cfg Config) (*Conn, error) {
	if err := cfg.check(); err != nil {
		return nil, err
	}
	hosts, err := cfg.endpoints()
	if err != nil {
		return nil, err
	}
	cfg = cfg.withDefaults()
	c := &Conn{
		cfg:      cfg,
		redacted: cfg.redactedURL(),
		hosts:    hosts,
		live:     map[*mq.Message]*delivery{},
	}
	c.ctx, c.cancel = context.WithCancel(context.Background())
	c.pub = newLink(c, "publish")
	c.sub = newLink(c, "consume")
	o := c.newOutage(c.pub)
	cctx, cancel := o.connectCtx(ctx)
	_, err = c.pub.get(cctx)
	err = o.connectErr(ctx, cctx, err)
	cancel()
	if err != nil {
		c.cancel()
		return nil, unavailable(err)
	}
	return c, nil
}

// String returns the broker URL with its password redacted.
func (c *Conn) String() string { return "rabbit " + c.redacted }

// Config returns the connection's configuration with defaults filled in.
func (c *Conn) Config() Config { return c.cfg }

// MaxMessageBytes implements mq.Sizer: Config.MaxMessageSize.
func (c *Conn) MaxMessageBytes() int { return c.cfg.MaxMessageSize }

// Close closes every subscription and both AMQP connections. Sends in
// progress fail with mq.ErrClosed. Close is idempotent and safe to call
// concurrently.
func (c *Conn) Close() error {
	c.closeMu.Lock()
	defer c.closeMu.Unlock()
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return nil
	}
	c.closed = true
	c.mu.Unlock()
	c.cancel()
	c.poolMu.Lock()
	c.pool = nil
	c.poolMu.Unlock()
	// Closing the connections first ends any call stuck on a hung broker;
	// the broker requeues what the subscriptions held.
	c.pub.close()
	c.sub.close()
	_, _ = c.subs.CloseAll() // a subscription's Close returns nil
	c.stopRelays()
	// Calls abandoned to the broker fail now that the connections are
	// closed.
	c.bg.Wait()
	return nil
}

// call runs fn, which makes AMQP calls that take no context, and waits
// for it, for ctx to end, or for Close. A broker that blocks publishers (a
// resource alarm) stops reading their connection, so such calls can wait
// for as long as the alarm lasts: the caller then gets ctx's error, and fn
// finishes in the background when the broker answers or Close closes the
// connection.
//
// fn hands over what it made by calling keep from inside commit: commit
// runs keep and returns true unless the caller has given up, in which case
// fn must release what it made.
func (c *Conn) call(ctx context.Context, fn func(commit func(keep func()) bool) error) error {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return mq.ErrClosed
	}
	c.bg.Add(1)
	c.mu.Unlock()
	var mu sync.Mutex
	gone, committed := false, false
	commit := func(keep func()) bool {
		mu.Lock()
		defer mu.Unlock()
		if gone {
			return false
		}
		keep()
		committed = true
		return true
	}
	done := make(chan error, 1)
	go func() {
		defer c.bg.Done()
		done <- fn(commit)
	}()
	var err error
	select {
	case err := <-done:
		return err
	case <-ctx.Done():
		err = ctx.Err()
	case <-c.ctx.Done():
		err = mq.ErrClosed
	}
	mu.Lock()
	gone = true
	kept := committed
	mu.Unlock()
	if kept {
		return <-done // fn handed over its result already and is returning
	}
	return err
}

// closeChannel closes ch without waiting for the broker's answer.
func (c *Conn) closeChannel(ch *amqp.Channel) {
	now, cancel := context.WithCancel(context.Background())
	cancel()
	_ = c.call(now, func(func(func()) bool) error { return ch.Close() })
}

// logOnce logs msg at warning level the first time it is called with
// key on this connection, and never again: for conditions that would
// otherwise be logged with every message or every reconnection.
func (c *Conn) logOnce(key, msg string, args ...any) {
	if _, seen := c.logged.LoadOrStore(key, true); !seen {
		c.cfg.Logger.Warn(msg, args...)
	}
}

func (c *Conn) isClosed() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.closed
}

// backoff returns the wait before reconnection attempt n (from 1): an
// exponential step from ReconnectBackoff up to MaxReconnectBackoff, with
// equal jitter.
func (c *Conn) backoff(n int) time.Duration {
	return backoff.Equal(backoff.Exp(n, c.cfg.ReconnectBackoff, c.cfg.MaxReconnectBackoff))
}

// sleep waits d, or until ctx ends or c closes.
func (c *Conn) sleep(ctx context.Context, d time.Duration) error {
	if backoff.Sleep(ctx, d, c.ctx.Done()) {
		return nil
	}
	if c.ctx.Err() != nil {
		return mq.ErrClosed
	}
	return ctx.Err()
}

// link is one AMQP connection, dialed again on demand after it drops.
type link struct {
	c    *Conn
	name string
	sem  chan struct{} // held while dialing or reading conn
	// host is the index in c.hosts of the broker of the last connection,
	// -1 before the first. Only the holder of sem touches it.
	host int

	mu       sync.Mutex // guards the fields below
	conn     *amqp.Connection
	gen      uint64
	declared map[string]bool // exchanges declared on conn
	closed   bool
	down     time.Time // since when dialing fails; zero once a dial succeeds
	// unblocked is non-nil while the broker blocks publishing on conn (a
	// memory or disk alarm), and closed when it stops.
	unblocked chan struct{}
}

func newLink(c *Conn, name string) *link {
	return &link{c: c, name: name, sem: make(chan struct{}, 1), host: -1}
}

// get returns the link's open connection, dialing it if needed.
func (l *link) get(ctx context.Context) (*amqp.Connection, error) {
	select {
	case l.sem <- struct{}{}:
	case <-ctx.Done():
		return nil, ctx.Err()
	case <-l.c.ctx.Done():
		return nil, mq.ErrClosed
	}
	defer func() { <-l.sem }()
	l.mu.Lock()
	conn, closed := l.conn, l.closed
	l.mu.Unlock()
	if closed {
		return nil, mq.ErrClosed
	}
	if conn != nil && !conn.IsClosed() {
		return conn, nil
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stop := context.AfterFunc(l.c.ctx, cancel)
	defer stop()
	conn, node, err := l.dial(ctx)
	if err != nil {
		if l.c.ctx.Err() != nil {
			return nil, mq.ErrClosed
		}
		l.mu.Lock()
		if l.down.IsZero() && transient(err) {
			l.down = time.Now()
		}
		l.mu.Unlock()
		return nil, fmt.Errorf("rabbit: connect to %s: %w", l.c.redacted, unavailable(err))
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		_ = conn.Close()
		return nil, mq.ErrClosed
	}
	l.down = time.Time{}
	if l.gen > 0 {
		if len(l.c.hosts) > 1 {
			l.c.cfg.Logger.Info("rabbit: reconnected", "connection", l.name, "broker", l.c.redacted, "node", node)
		} else {
			l.c.cfg.Logger.Info("rabbit: reconnected", "connection", l.name, "broker", l.c.redacted)
		}
	}
	l.conn = conn
	l.gen++
	l.declared = map[string]bool{}
	l.setBlocked(false)
	// The watcher ends when conn closes (amqp091 closes the channels).
	go l.watch(conn, node, conn.NotifyBlocked(make(chan amqp.Blocking, 1)), conn.NotifyClose(make(chan *amqp.Error, 1)))
	return conn, nil
}

// watch follows conn until it closes: it tracks blocking (watchBlocked),
// then logs why conn closed unless it was closed on purpose.
func (l *link) watch(conn *amqp.Connection, node string, blocks <-chan amqp.Blocking, closes <-chan *amqp.Error) {
	l.watchBlocked(conn, blocks)
	if e, ok := <-closes; ok && e != nil && l.c.ctx.Err() == nil {
		if len(l.c.hosts) > 1 {
			l.c.cfg.Logger.Warn("rabbit: connection lost", "connection", l.name, "node", node, "error", e)
		} else {
			l.c.cfg.Logger.Warn("rabbit: connection lost", "connection", l.name, "error", e)
		}
	}
}

// watchBlocked tracks connection.blocked / unblocked, so that a Send
// waits for an alarm to clear within its context instead of blocking in a
// socket write the broker no longer reads.
func (l *link) watchBlocked(conn *amqp.Connection, events <-chan amqp.Blocking) {
	for b := range events {
		l.mu.Lock()
		if l.conn == conn {
			l.setBlocked(b.Active)
		}
		l.mu.Unlock()
		if b.Active {
			l.c.cfg.Logger.Warn("rabbit: broker blocks publishing", "connection", l.name, "reason", b.Reason)
		} else {
			l.c.cfg.Logger.Info("rabbit: broker unblocked publishing", "connection", l.name)
		}
	}
	l.mu.Lock()
	if l.conn == conn || l.conn == nil {
		l.setBlocked(false)
	}
	l.mu.Unlock()
}

// setBlocked records whether publishing is blocked. l.mu is held.
func (l *link) setBlocked(blocked bool) {
	switch {
	case blocked && l.unblocked == nil:
		l.unblocked = make(chan struct{})
	case !blocked && l.unblocked != nil:
		close(l.unblocked)
		l.unblocked = nil
	}
}

// waitUnblocked waits while the broker blocks publishing.
func (l *link) waitUnblocked(ctx context.Context) error {
	l.mu.Lock()
	ch := l.unblocked
	l.mu.Unlock()
	if ch == nil {
		return nil
	}
	select {
	case <-ch:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("rabbit: the broker blocks publishing (resource alarm): %w", ctx.Err())
	case <-l.c.ctx.Done():
		return mq.ErrClosed
	}
}

// dial opens an AMQP connection, bounded by ctx, to the first broker of
// c.hosts that answers, and returns it with that broker's address. It
// starts with the broker that the last successful dial of either link
// reached, or, if that is the one this link's connection was lost on, the
// one after it (so the other link's reconnection, or the first dial of the
// consuming link, goes where the first one found a live node). Each
// broker's attempt is bounded by connection_timeout (default 30s, or
// multiHostTimeout when there are several) and, when ctx has a deadline,
// by an equal share of the time left among the brokers not tried yet (at
// least minHostShare), so that one that does not answer leaves time for
// the others.
func (l *link) dial(ctx context.Context) (*amqp.Connection, string, error) {
	hosts := l.c.hosts
	if len(hosts) == 1 {
		conn, err := l.dialURL(ctx, hosts[0].url, 0)
		return conn, hosts[0].addr, err
	}
	first := int(l.c.lastGood.Load())
	if first == l.host {
		first = (first + 1) % len(hosts)
	}
	var failed dialErrors
	for k := range hosts {
		i := (first + k) % len(hosts)
		limit := time.Duration(0)
		if dl, ok := ctx.Deadline(); ok && k < len(hosts)-1 {
			limit = max(time.Until(dl)/time.Duration(len(hosts)-k), minHostShare)
		}
		conn, err := l.dialURL(ctx, hosts[i].url, limit)
		if err == nil {
			l.host = i
			l.c.lastGood.Store(int64(i))
			if len(failed) > 0 {
				l.c.cfg.Logger.Info("rabbit: connected to another node", "connection", l.name, "node", hosts[i].addr, "failed", failed.Error())
			}
			return conn, hosts[i].addr, nil
		}
		failed = append(failed, hostError{addr: hosts[i].addr, err: err})
		if ctx.Err() != nil {
			return nil, "", fmt.Errorf("%w (%w)", ctx.Err(), failed)
		}
	}
	return nil, "", failed
}

// dialURL opens an AMQP connection to the one broker of rawURL, bounded by
// ctx and by connection_timeout (amqp091's 30s default, or
// multiHostTimeout for a URL naming several brokers) or, when above zero,
// limit if that is shorter.
func (l *link) dialURL(ctx context.Context, rawURL string, limit time.Duration) (*amqp.Connection, error) {
	uri, err := amqp.ParseURI(rawURL) // checked by Config.check
	if err != nil {
		return nil, fmt.Errorf("%w: %v", mq.ErrInvalidURL, err)
	}
	timeout := 30 * time.Second
	if len(l.c.hosts) > 1 {
		timeout = multiHostTimeout
	}
	if uri.ConnectionTimeout > 0 {
		timeout = time.Duration(uri.ConnectionTimeout) * time.Millisecond
	}
	if limit > 0 {
		timeout = min(timeout, limit)
	}
	var stop func() bool
	cfg := amqp.Config{
		Properties: amqp.Table{"connection_name": "mqkit " + l.name, "product": "mqkit"},
		Dial: func(network, addr string) (net.Conn, error) {
			var d net.Dialer
			dctx, cancel := context.WithTimeout(ctx, timeout)
			defer cancel()
			nc, err := d.DialContext(dctx, network, addr)
			if err != nil {
				if dctx.Err() != nil && ctx.Err() == nil {
					// This broker's share of the time ran out, not the
					// caller's: a broker that does not answer (dropped
					// packets, a hung node) is an outage, and the error
					// must not read as the caller's deadline.
					return nil, fmt.Errorf("dial %s: no answer within %v: %w", addr, timeout, os.ErrDeadlineExceeded)
				}
				return nil, err
			}
			// The handshake is bounded by the timeout and by ctx.
			_ = nc.SetDeadline(time.Now().Add(timeout))
			stop = context.AfterFunc(ctx, func() { _ = nc.SetDeadline(time.Unix(1, 0)) })
			return nc, nil
		},
	}
	conn, err := amqp.DialConfig(rawURL, cfg)
	if stop != nil && !stop() {
		// ctx ended during the handshake: its deadline may have broken
		// the connection.
		if err == nil {
			_ = conn.Close()
		}
		return nil, ctx.Err()
	}
	if err != nil {
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err
		}
		return nil, err
	}
	return conn, nil
}

// downSince returns since when dialing has failed for want of a broker,
// or the zero time if the last dial succeeded.
func (l *link) downSince() time.Time {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.down
}

func (l *link) close() {
	l.mu.Lock()
	conn := l.conn
	l.closed = true
	l.conn = nil
	l.mu.Unlock()
	if conn != nil {
		_ = conn.CloseDeadline(time.Now().Add(5 * time.Second))
	}
}

// isDeclared reports whether exchange name was declared on conn.
func (l *link) isDeclared(conn *amqp.Connection, name string) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.conn == conn && l.declared[name]
}

func (l *link) setDeclared(conn *amqp.Connection, name string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.conn == conn {
		l.declared[name] = true
	}
}

// describe turns a broker error into a clear one: ErrNotFound for a
// missing exchange or queue.
func describe(err error, what string) error {
	var ae *amqp.Error
	if errors.As(err, &ae) && ae.Code == amqp.NotFound {
		return fmt.Errorf("%w: %s does not exist: %w", ErrNotFound, what, err)
	}
	return err
}
