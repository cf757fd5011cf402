package mq

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/mqkit/mq/internal/urlparams"
)

// Client is an open connection to one broker, from which producers and
// consumers are made. It is safe for concurrent use. Close it when done.
type Client struct {
	conn     Conn
	scheme   string
	redacted string
	defaults options

	mu        sync.Mutex
	closed    bool
	consumers map[*consumer]struct{}
	closeErr  error
	closeOnce sync.Once
}

// Open connects to the broker named by rawURL, using the backend registered
// for its scheme. Query parameters understood by every backend:
//
//	group=NAME                consumer group (see WithGroup)
//	concurrency=N             handlers run at once per consumer (default 1)
//	max_in_flight=N           unsettled messages per consumer (default 4×concurrency, at least 256)
//	shutdown_timeout=DUR      graceful shutdown bound (default 30s)
//	nack_backoff=DUR          first in-process redelivery delay (default 100ms, at least 1ms)
//	max_nack_backoff=DUR      longest in-process redelivery delay (default 10s)
//	max_message_bytes=N       reject larger messages before sending
//
// Other parameters belong to the backend, which rejects those it does not
// know. Errors never contain the URL's password. opts override the URL.
func Open(ctx context.Context, rawURL string, opts ...Option) (*Client, error) {
	u, err := parseURL(rawURL)
	if err != nil {
		return nil, err
	}
	d, err := lookupDriver(u.Scheme)
	if err != nil {
		return nil, err
	}
	o := defaultOptions()
	if err := o.fromQuery(u); err != nil {
		return nil, fmt.Errorf("%w %s: %w", ErrInvalidURL, displayURL(u), err)
	}
	for _, opt := range opts {
		opt(&o)
	}
	if err := o.validate(); err != nil {
		return nil, err
	}
	conn, err := d.Open(context.WithValue(ctx, loggerKey{}, o.log()), u)
	if err != nil {
		return nil, fmt.Errorf("mq: open %s: %w", displayURL(u), err)
	}
	return newClient(conn, u.Scheme, displayURL(u), o), nil
}

// NewClient wraps a backend connection made without the registry (as
// sql.OpenDB does for a driver.Connector), for example a memory.Broker
// shared by several clients in one process.
func NewClient(conn Conn, opts ...Option) *Client {
	o := defaultOptions()
	for _, opt := range opts {
		opt(&o)
	}
	return newClient(conn, "", fmt.Sprintf("%T", conn), o)
}

func newClient(conn Conn, scheme, redacted string, o options) *Client {
	return &Client{conn: conn, scheme: scheme, redacted: redacted, defaults: o, consumers: map[*consumer]struct{}{}}
}

// String returns the client's URL with any password replaced by "xxxxx".
func (c *Client) String() string { return c.redacted }

// Conn returns the backend connection, for backend-specific operations
// (each backend package documents what its Conn offers).
func (c *Client) Conn() Conn { return c.conn }

// Producer returns a producer that sends through this client. It is cheap:
// producers share the client's connection.
func (c *Client) Producer(opts ...Option) Producer {
	o := c.defaults
	for _, opt := range opts {
		opt(&o)
	}
	return newProducer(c, o)
}

// Consumer joins a consumer group on topic and returns a consumer. The
// group comes from WithGroup or the URL's group parameter. When Consumer
// returns, the group exists: messages produced afterwards are kept for it
// even before Consume is called.
func (c *Client) Consumer(ctx context.Context, topic string, opts ...Option) (Consumer, error) {
	o := c.defaults
	for _, opt := range opts {
		opt(&o)
	}
	if err := o.validate(); err != nil {
		return nil, err
	}
	o = o.resolved()
	if topic == "" {
		return nil, fmt.Errorf("%w: empty topic name", ErrInvalidMessage)
	}
	if o.group == "" {
		return nil, fmt.Errorf("%w: set mq.WithGroup or ?group= in the URL (topic %q)", ErrNoGroup, topic)
	}
	c.mu.Lock()
	closed := c.closed
	c.mu.Unlock()
	if closed {
		return nil, ErrClosed
	}
	sub, err := c.conn.Subscribe(ctx, topic, o.group, SubscribeOptions{MaxInFlight: o.maxInFlight, Concurrency: o.concurrency})
	if err != nil {
		return nil, fmt.Errorf("mq: subscribe %q group %q: %w", topic, o.group, err)
	}
	cons := &consumer{client: c, topic: topic, group: o.group, opts: o, sub: sub}
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		_ = sub.Close()
		return nil, ErrClosed
	}
	c.consumers[cons] = struct{}{}
	c.mu.Unlock()
	return cons, nil
}

// DeleteGroup deletes a consumer group of topic and what the broker keeps
// for it: its committed offsets (Kafka), its queues (RabbitMQ), its
// pending entries (Redis). Stop the group's consumers first: a member that
// still runs may create it again. Deleting a group that does not exist
// returns nil. Backends that cannot delete groups return an error wrapping
// errors.ErrUnsupported.
func (c *Client) DeleteGroup(ctx context.Context, topic, group string) error {
	if c.isClosed() {
		return ErrClosed
	}
	gd, ok := c.conn.(GroupDeleter)
	if !ok {
		return fmt.Errorf("mq: %s cannot delete consumer groups: %w", c.redacted, errors.ErrUnsupported)
	}
	if err := gd.DeleteGroup(ctx, topic, group); err != nil {
		return fmt.Errorf("mq: delete group %q of %q: %w", group, topic, err)
	}
	return nil
}

// Ping checks that the broker is reachable and serving, with one cheap
// round trip bounded by ctx. A broker that is not gives an error wrapping
// ErrUnavailable. Backends that cannot check return an error wrapping
// errors.ErrUnsupported.
func (c *Client) Ping(ctx context.Context) error {
	if c.isClosed() {
		return ErrClosed
	}
	p, ok := c.conn.(Pinger)
	if !ok {
		return fmt.Errorf("mq: %s cannot be pinged: %w", c.redacted, errors.ErrUnsupported)
	}
	if err := p.Ping(ctx); err != nil {
		return fmt.Errorf("mq: ping %s: %w", c.redacted, err)
	}
	return nil
}

// Lag reports how far group is behind on topic, per partition, shard
// stream or queue (see PartitionLag), the same way on every backend. A
// group the broker does not know gives an error wrapping ErrUnknownGroup,
// never the whole topic as lag. Backends that cannot tell return an error
// wrapping errors.ErrUnsupported.
func (c *Client) Lag(ctx context.Context, topic, group string) ([]PartitionLag, error) {
	if c.isClosed() {
		return nil, ErrClosed
	}
	l, ok := c.conn.(Lagger)
	if !ok {
		return nil, fmt.Errorf("mq: %s cannot report lag: %w", c.redacted, errors.ErrUnsupported)
	}
	lag, err := l.PartitionLag(ctx, topic, group)
	if err != nil {
		return nil, fmt.Errorf("mq: lag of group %q on %q: %w", group, topic, err)
	}
	return lag, nil
}

func (c *Client) forget(cons *consumer) {
	c.mu.Lock()
	delete(c.consumers, cons)
	c.mu.Unlock()
}

func (c *Client) isClosed() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.closed
}

// Close shuts down the client's consumers gracefully (as Consumer.Close),
// then closes the connection. Producers and consumers of a closed client
// return ErrClosed. Close is idempotent and safe to call concurrently; every
// call returns the result of the first.
func (c *Client) Close() error {
	c.closeOnce.Do(func() {
		c.mu.Lock()
		c.closed = true
		cs := make([]*consumer, 0, len(c.consumers))
		for cons := range c.consumers {
			cs = append(cs, cons)
		}
		c.mu.Unlock()
		var errs []error
		for _, cons := range cs {
			errs = append(errs, cons.Close())
		}
		errs = append(errs, c.conn.Close())
		c.closeErr = errors.Join(errs...)
	})
	return c.closeErr
}

// Option configures a Client, Producer or Consumer. Options given to Open
// set defaults for everything made from the client; options given to
// Client.Producer or Client.Consumer override them for that one.
type Option func(*options)

type options struct {
	group           string
	concurrency     int
	maxInFlight     int
	shutdownTimeout time.Duration
	nackBackoff     time.Duration
	maxNackBackoff  time.Duration
	maxMessageBytes int
	logger          *slog.Logger
	produceMW       []ProduceMiddleware
	consumeMW       []Middleware
}

// minNackBackoff is the shortest in-process redelivery delay allowed.
const minNackBackoff = time.Millisecond

func defaultOptions() options {
	return options{
		concurrency:     1,
		shutdownTimeout: 30 * time.Second,
		nackBackoff:     100 * time.Millisecond,
		maxNackBackoff:  10 * time.Second,
	}
}

func (o *options) validate() error {
	switch {
	case o.concurrency < 1:
		return fmt.Errorf("mq: concurrency must be at least 1, got %d", o.concurrency)
	case o.maxInFlight < 0:
		return fmt.Errorf("mq: max in-flight must not be negative, got %d", o.maxInFlight)
	case o.shutdownTimeout < 0:
		return fmt.Errorf("mq: shutdown timeout must not be negative, got %v", o.shutdownTimeout)
	case o.nackBackoff < minNackBackoff:
		// Zero would hand a failing message straight back to its handler,
		// again and again, as fast as it fails.
		return fmt.Errorf("mq: nack backoff must be at least %v, got %v", minNackBackoff, o.nackBackoff)
	case o.maxNackBackoff < 0:
		return errors.New("mq: max nack backoff must not be negative")
	case o.maxMessageBytes < 0:
		return fmt.Errorf("mq: max message bytes must not be negative, got %d", o.maxMessageBytes)
	}
	return nil
}

// resolved returns o with the defaults that depend on other options filled
// in. It runs once all options of a consumer are known, so that
// WithConcurrency(32) given to Client.Consumer still gets 4×32 in flight.
func (o options) resolved() options {
	if o.maxInFlight == 0 {
		o.maxInFlight = max(4*o.concurrency, DefaultMinInFlight)
	}
	if o.maxInFlight < o.concurrency {
		o.maxInFlight = o.concurrency
	}
	if o.maxNackBackoff < o.nackBackoff {
		o.maxNackBackoff = o.nackBackoff
	}
	return o
}

// WithGroup sets the consumer group. Consumers in one group share the
// topic's messages; every group gets all of them.
func WithGroup(name string) Option { return func(o *options) { o.group = name } }

// WithConcurrency sets how many handlers a consumer runs at once
// (default 1). Messages with the same key still run one at a time, in
// order; different keys run in parallel.
func WithConcurrency(n int) Option { return func(o *options) { o.concurrency = n } }

// DefaultMinInFlight is the smallest default of WithMaxInFlight.
const DefaultMinInFlight = 256

// WithMaxInFlight bounds the messages a consumer holds unsettled: running,
// queued behind a busy key, or waiting for an in-process retry. When the
// bound is reached the consumer stops fetching. Default 4×concurrency, at
// least 256: a consumer keeps enough messages in flight to hide the
// broker's round trip even at concurrency 1 (it fetched 16 at a time
// before, a fifth of the bare driver's speed on Redis). A lower bound
// holds fewer messages that another member must wait for, or that come
// again, after a crash.
func WithMaxInFlight(n int) Option { return func(o *options) { o.maxInFlight = n } }

// WithShutdownTimeout bounds how long a stopping consumer waits for running
// handlers before cancelling their context (default 30s). It then still
// waits for them to return.
func WithShutdownTimeout(d time.Duration) Option {
	return func(o *options) { o.shutdownTimeout = d }
}

// WithNackBackoff sets the delay before a message whose handler failed is
// handed to the handler again: initial for the first redelivery, doubling
// up to max (defaults 100ms and 10s). initial must be at least 1ms: a
// consumer refuses a smaller one rather than spin on a failing message.
func WithNackBackoff(initial, max time.Duration) Option {
	return func(o *options) { o.nackBackoff, o.maxNackBackoff = initial, max }
}

// WithMaxMessageBytes makes Produce reject, before sending, a message whose
// body, key, ID and headers together exceed n bytes. Zero means the
// backend's own limit only.
func WithMaxMessageBytes(n int) Option { return func(o *options) { o.maxMessageBytes = n } }

// WithLogger sets the logger of everything the SDK logs: errors a consumer
// cannot return (failed acks, handler panics, retried receive errors) and,
// given to Open, the backend's own lines (reconnects, rebalances, lost
// leases). Default slog.Default().
func WithLogger(l *slog.Logger) Option { return func(o *options) { o.logger = l } }

func (o *options) log() *slog.Logger {
	if o.logger != nil {
		return o.logger
	}
	return slog.Default()
}

// fromQuery takes the portable parameters out of u's query, leaving the
// backend's own in it.
func (o *options) fromQuery(u *url.URL) error {
	q := urlparams.New(u.Query())
	q.String("group", &o.group)
	q.Int("concurrency", &o.concurrency, 1)
	q.Int("max_in_flight", &o.maxInFlight, 0)
	q.Duration("shutdown_timeout", &o.shutdownTimeout, 0)
	q.Duration("nack_backoff", &o.nackBackoff, minNackBackoff)
	q.Duration("max_nack_backoff", &o.maxNackBackoff, 0)
	q.Int("max_message_bytes", &o.maxMessageBytes, 0)
	u.RawQuery = q.Rest().Encode()
	return q.Invalid() // the backend reads, and checks, the parameters left
}

// parseURL parses rawURL without ever echoing its password in an error.
func parseURL(rawURL string) (*url.URL, error) {
	if strings.TrimSpace(rawURL) == "" {
		return nil, fmt.Errorf("%w: empty URL (want e.g. mem://, kafka://host:9092, amqp://host:5672/, redis://host:6379/0)", ErrInvalidURL)
	}
	u, err := url.Parse(rawURL)
	if err != nil {
		// A host list with an IPv6 literal (amqp://h1:5672,[::1]:5672/):
		// url.Parse takes one host only.
		if lu := urlparams.ParseHostList(rawURL); lu != nil {
			u, err = lu, nil
		}
	}
	if err != nil {
		return nil, fmt.Errorf("%w %q: %s", ErrInvalidURL, RedactURL(rawURL), URLParseError(rawURL, err))
	}
	if u.Scheme == "" {
		return nil, fmt.Errorf("%w %q: no scheme (want e.g. mem://, kafka://, amqp://, redis://)", ErrInvalidURL, displayURL(u))
	}
	return u, nil
}

// URLParseError says what is wrong with rawURL, which url.Parse refused
// with err, without repeating any of its user information: url.Parse's
// own messages quote the part they stumbled on, which in a URL with an
// unencoded '/', '?', '#' or '@' in its password is a piece of the
// password. Backends use it for their own URL errors.
func URLParseError(rawURL string, err error) string {
	var ue *url.Error
	if errors.As(err, &ue) {
		err = ue.Err // url.Error repeats the whole URL
	}
	msg := err.Error()
	// What could be user information: from "://" to the last '@'.
	if i, at := strings.Index(rawURL, "://"), strings.LastIndex(rawURL, "@"); i >= 0 && at > i {
		secret := rawURL[i+len("://") : at]
		if q := strings.Index(msg, `"`); q >= 0 && sharesText(msg[q:], secret) {
			return "malformed URL (percent-encode '/', '?', '#', '@', ',' and ':' in the user name and password)"
		}
	}
	return "malformed URL: " + msg
}

// sharesText reports whether quoted (the quoted part of an error) and
// secret have three characters in a row in common.
func sharesText(quoted, secret string) bool {
	for i := 0; i+3 <= len(quoted); i++ {
		if strings.Contains(secret, quoted[i:i+3]) {
			return true
		}
	}
	return false
}

// RedactURL returns rawURL with the password of its user information
// replaced by "xxxxx". It works on strings url.Parse rejects, so it is safe
// for error messages about malformed URLs.
func RedactURL(rawURL string) string {
	if u, err := url.Parse(rawURL); err == nil {
		return u.Redacted()
	}
	rest := rawURL
	prefix := ""
	if i := strings.Index(rest, "://"); i >= 0 {
		prefix, rest = rest[:i+3], rest[i+3:]
	}
	// The URL did not parse, so it may hold a password with '/', '?' or
	// '#' in it: take everything up to the last '@' as user information.
	// Hiding too much is fine in an error message; hiding too little is not.
	at := strings.LastIndex(rest, "@")
	if at < 0 {
		return rawURL
	}
	user := rest[:at]
	if i := strings.Index(user, ":"); i >= 0 {
		user = user[:i] + ":xxxxx"
	} else {
		user = "xxxxx" // can't tell a user from a token: hide it all
	}
	return prefix + user + rest[at:]
}

// displayURL is u with its password hidden, keeping the "//" of a URL with
// no host (mem://) that url.URL.String drops.
func displayURL(u *url.URL) string {
	s := u.Redacted()
	if u.Scheme != "" && !strings.HasPrefix(s, u.Scheme+"://") {
		s = u.Scheme + "://" + strings.TrimPrefix(s, u.Scheme+":")
	}
	return s
}
