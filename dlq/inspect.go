package dlq

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"strconv"
	"strings"
	"time"

	"github.com/mqkit/mq"
)

// InspectGroup is the consumer group on every dead-letter topic through
// which Ensure keeps dead letters and List and Redrive read them.
const InspectGroup = "mq-dlq-inspect"

// Defaults of the inspection options.
const (
	// DefaultIdle is how long List and Redrive wait for another dead letter
	// before they stop.
	DefaultIdle = 2 * time.Second
	// DefaultMaxScan is the most dead letters one List or Redrive looks at.
	DefaultMaxScan = 10000
)

// Ensure makes InspectGroup exist on each dead-letter topic, so that every
// dead letter published from now on is kept for List and Redrive (on
// RabbitMQ, a group's queue is what keeps a message). The dead-letter
// middleware calls it itself before its first dead letter to a topic when
// it has a Config.Client; otherwise call it at service start-up for the
// dead-letter topics the service's middleware publishes to, before
// consuming. It is cheap and idempotent.
func Ensure(ctx context.Context, c *mq.Client, dlqTopics ...string) error {
	for _, t := range dlqTopics {
		cons, err := c.Consumer(ctx, t, mq.WithGroup(InspectGroup))
		if err != nil {
			return fmt.Errorf("dlq: ensure %q: %w", t, err)
		}
		if err := cons.Close(); err != nil {
			return fmt.Errorf("dlq: ensure %q: %w", t, err)
		}
	}
	return nil
}

// Option configures List and Redrive.
type Option func(*options)

type options struct {
	idle    time.Duration
	maxScan int
}

func newOptions(opts []Option) (options, error) {
	o := options{idle: DefaultIdle, maxScan: DefaultMaxScan}
	for _, opt := range opts {
		opt(&o)
	}
	if o.idle <= 0 {
		return o, fmt.Errorf("dlq: idle period must be positive, got %v", o.idle)
	}
	if o.maxScan <= 0 {
		return o, fmt.Errorf("dlq: max scan must be positive, got %d", o.maxScan)
	}
	return o, nil
}

// WithIdle sets how long List and Redrive wait for another dead letter
// before they stop (default DefaultIdle). On a remote broker make it longer
// than the broker's delivery latency.
func WithIdle(d time.Duration) Option { return func(o *options) { o.idle = d } }

// WithMaxScan sets the most dead letters one List or Redrive looks at
// (default DefaultMaxScan). Both hold what they read unacknowledged while
// they run, so this also bounds the memory and broker prefetch they use.
func WithMaxScan(n int) Option { return func(o *options) { o.maxScan = n } }

// List returns up to limit dead letters from dlqTopic, oldest first, with
// all their headers (see Describe). A limit of zero or less means up to the
// scan bound (WithMaxScan). It stops when limit is reached or no dead
// letter arrives for the idle period (WithIdle).
//
// List is a peek: it reads through InspectGroup without acknowledging
// anything and then leaves the group, which returns every dead letter it
// read to the broker in place, for the next List or Redrive to see at
// once (on Redis Streams they stay pending in the group, handed back as
// idle for the claim idle time, so the next reader claims them first). It
// publishes nothing, so other consumers of the topic see no change. Only
// a List that dies without leaving the group (its process killed) hides
// what it read until the broker returns it: after the session timeout on
// Kafka, at once on RabbitMQ (the channel closes), after claim_idle on
// Redis. Delivery counts the broker keeps for InspectGroup grow with each
// List; the dead letters' own headers do not change.
func List(ctx context.Context, c *mq.Client, dlqTopic string, limit int, opts ...Option) (letters []*mq.Message, err error) {
	o, err := newOptions(opts)
	if err != nil {
		return nil, err
	}
	if limit <= 0 || limit > o.maxScan {
		limit = o.maxScan
	}
	sub, err := c.Conn().Subscribe(ctx, dlqTopic, InspectGroup, mq.SubscribeOptions{MaxInFlight: limit, Concurrency: 1})
	if err != nil {
		return nil, fmt.Errorf("dlq: list %q: %w", dlqTopic, err)
	}
	// Leaving the group returns every unacknowledged delivery.
	defer closeSub(sub, dlqTopic, &err)
	for len(letters) < limit {
		ds, err := receive(ctx, sub, limit-len(letters), o.idle)
		for _, d := range ds {
			letters = append(letters, d.Message().Clone())
		}
		if err != nil {
			return letters, fmt.Errorf("dlq: list %q: %w", dlqTopic, err)
		}
		if len(ds) == 0 {
			break // idle
		}
	}
	return letters, nil
}

// RedriveResult reports what Redrive did.
type RedriveResult struct {
	// Moved holds the IDs of the dead letters sent back to their topics, in
	// the order they were sent.
	Moved []string
	// Kept counts dead letters the filter did not match (or that lack
	// HeaderTopic), re-published to the back of the dead-letter topic.
	Kept int
	// Unroutable counts the kept dead letters that had no HeaderTopic.
	Unroutable int
	// Left counts dead letters Redrive received but left in the
	// dead-letter topic for a later call: copies it kept that came round
	// again, second dead letters of an ID it already handled, and the
	// letters behind such a one in the same ordered stream (see Redrive).
	Left int
}

// Redrive moves the dead letters of dlqTopic that filter matches (all of
// them when filter is nil) back to the topic in their HeaderTopic. A moved
// message keeps its ID, key, body and original headers; the mq-dlq-*
// headers are removed and HeaderRedriveCount is incremented. Each dead
// letter is acknowledged only after its publish to the source topic was
// accepted, so a failure part way leaves it in the dead-letter topic. It
// stops when no new dead letter arrives for the idle period (WithIdle) or
// after the scan bound (WithMaxScan), and returns what it did so far along
// with any error.
//
// A consumer group cannot skip a message and leave it in place (a Kafka
// group's committed offset passes everything before it), so Redrive
// re-publishes each dead letter the filter does not match to the back of
// dlqTopic, unchanged (same ID, key, body and headers), and only then
// acknowledges it. When such a copy, or any dead letter whose ID Redrive
// already handled in this call, comes round again, Redrive leaves it
// unacknowledged and returns it to the broker at the end, so each dead
// letter is handled at most once per call.
//
// Where the broker keeps one position per ordered stream rather than an
// acknowledgement per message (a Kafka partition: its committed offset
// cannot pass an unacknowledged message), the letters behind one left in
// place would be read again by the next call, and moving them now would
// move them twice. So once Redrive leaves a dead letter in place, it also
// leaves every later dead letter that shares its ownership scope (the same
// mq.Delivery Lost channel: one Kafka partition claim, one AMQP channel,
// one Redis shard lease) for a later call, and it leaves every letter
// whose scope it has lost. Each dead letter is thus moved exactly once
// across calls: a later Redrive starts where this one stopped. Deliveries
// without a scope (Lost is nil, as on mem://) are acknowledged one by one,
// so only the letter itself is left. Result.Left counts what was left.
// Consequences to know:
//
//   - kept dead letters move to the back of the dead-letter topic, and
//     other consumer groups of that topic (alerting, say) see them again,
//     with the same ID;
//   - a message redriven to a topic reaches every consumer group of that
//     topic, not only the one that failed it: consumers that already
//     handled it must deduplicate by ID (package idempotency);
//   - if acknowledging a moved dead letter fails, a later Redrive may move
//     it again (same ID, so deduplicating consumers handle it once).
//
// filter sees the dead letter with its mq-dlq-* headers and must not keep
// or modify it.
func Redrive(ctx context.Context, c *mq.Client, dlqTopic string, filter func(*mq.Message) bool, opts ...Option) (res RedriveResult, err error) {
	o, err := newOptions(opts)
	if err != nil {
		return res, err
	}
	sub, err := c.Conn().Subscribe(ctx, dlqTopic, InspectGroup, mq.SubscribeOptions{MaxInFlight: o.maxScan, Concurrency: 1})
	if err != nil {
		return res, fmt.Errorf("dlq: redrive %q: %w", dlqTopic, err)
	}
	// Leaving the group returns what was left unacknowledged: copies that
	// came round again and anything not yet handled after an error.
	defer closeSub(sub, dlqTopic, &err)
	p := c.Producer()
	defer p.Close()
	seen := make(map[string]struct{})
	// stopped holds the ownership scopes in which a letter was left in
	// place: later letters of those scopes are left too.
	stopped := make(map[<-chan struct{}]struct{})
	// scanned counts the deliveries received, handled or left: all of them
	// are held until the end, so the scan bound bounds both.
	for scanned := 0; scanned < o.maxScan; {
		ds, err := receive(ctx, sub, o.maxScan-scanned, o.idle)
		scanned += len(ds)
		for _, d := range ds {
			m := d.Message()
			scope := d.Lost()
			if _, ok := stopped[scope]; ok && scope != nil {
				res.Left++ // behind a letter left in place
				continue
			}
			_, again := seen[m.ID]
			if again || lost(scope) {
				// Left unacknowledged: it stays in the topic, and so does
				// everything behind it in its scope.
				res.Left++
				if scope != nil {
					stopped[scope] = struct{}{}
				}
				continue
			}
			seen[m.ID] = struct{}{}
			if err := redriveOne(ctx, p, dlqTopic, d, filter, &res); err != nil {
				return res, fmt.Errorf("dlq: redrive %q: %w", dlqTopic, err)
			}
		}
		if err != nil {
			return res, fmt.Errorf("dlq: redrive %q: %w", dlqTopic, err)
		}
		if len(ds) == 0 {
			break // idle
		}
	}
	return res, nil
}

func redriveOne(ctx context.Context, p mq.Producer, dlqTopic string, d mq.Delivery, filter func(*mq.Message) bool, res *RedriveResult) error {
	m := d.Message()
	src := m.Header(HeaderTopic)
	if src != "" && (filter == nil || filter(m)) {
		if err := p.Produce(ctx, src, Restore(m)); err != nil {
			return fmt.Errorf("moving %s back to %q: %w", m.ID, src, err)
		}
		if err := d.Ack(ctx); err != nil {
			return fmt.Errorf("dead letter %s was moved back to %q but acknowledging it failed, so a later redrive may move it again: %w", m.ID, src, err)
		}
		res.Moved = append(res.Moved, m.ID)
		return nil
	}
	cp := &mq.Message{ID: m.ID, Key: m.Key, Body: m.Body, Headers: maps.Clone(m.Headers)}
	if err := p.Produce(ctx, dlqTopic, cp); err != nil {
		return fmt.Errorf("keeping %s in the dead-letter topic: %w", m.ID, err)
	}
	if err := d.Ack(ctx); err != nil {
		return fmt.Errorf("dead letter %s was kept but acknowledging its old copy failed, so it may appear twice: %w", m.ID, err)
	}
	res.Kept++
	if src == "" {
		res.Unroutable++
	}
	return nil
}

// Restore returns the message a dead letter was made from, as Redrive
// publishes it: same ID, key and body, the dead letter's headers without
// the mq-dlq-* ones, and HeaderRedriveCount one higher. The result shares
// Body with dead.
func Restore(dead *mq.Message) *mq.Message {
	h := make(map[string]string, len(dead.Headers))
	for k, v := range dead.Headers {
		if !strings.HasPrefix(k, HeaderPrefix) && k != HeaderRetryFirstFailure {
			h[k] = v
		}
	}
	n, _ := strconv.Atoi(dead.Header(HeaderRedriveCount))
	h[HeaderRedriveCount] = strconv.Itoa(max(n, 0) + 1)
	return &mq.Message{ID: dead.ID, Key: dead.Key, Body: dead.Body, Headers: h}
}

// lost reports whether a delivery's Lost channel is closed: the
// subscription may no longer settle it.
func lost(scope <-chan struct{}) bool {
	select {
	case <-scope:
		return true
	default:
		return false // also for a nil scope, never lost
	}
}

// closeSub leaves the group, reporting a failure in *err.
func closeSub(sub mq.Subscription, topic string, err *error) {
	if cerr := sub.Close(); cerr != nil {
		*err = errors.Join(*err, fmt.Errorf("dlq: leaving %q on %q: %w", InspectGroup, topic, cerr))
	}
}

// receive waits up to idle for deliveries, retrying transient receive
// errors within that time. It returns no deliveries and a nil error when
// idle passed quietly, and the last error when idle passed with errors.
func receive(ctx context.Context, sub mq.Subscription, max int, idle time.Duration) ([]mq.Delivery, error) {
	rctx, cancel := context.WithTimeout(ctx, idle)
	defer cancel()
	var last error
	for wait := 50 * time.Millisecond; ; wait = min(2*wait, time.Second) {
		ds, err := sub.Receive(rctx, max)
		if len(ds) > 0 {
			return ds, nil
		}
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		if rctx.Err() != nil {
			return nil, last
		}
		if err == nil {
			continue
		}
		if errors.Is(err, mq.ErrClosed) || mq.IsPermanent(err) {
			return nil, err
		}
		last = err
		select {
		case <-time.After(wait):
		case <-rctx.Done():
		}
	}
}

// Info is what the headers of a dead letter say about its failure.
type Info struct {
	// Topic is the topic the message failed on (HeaderTopic).
	Topic string
	// Group is the consumer group that failed it (HeaderGroup).
	Group string
	// Error is the error text, possibly truncated (HeaderError).
	Error string
	// Reason is one of the Reason constants (HeaderReason).
	Reason string
	// Attempts is how many times the handler ran (HeaderAttempts).
	Attempts int
	// FirstFailure and LastFailure bound the failures (zero if absent).
	FirstFailure, LastFailure time.Time
	// PanicStack is the stack of a panic, possibly truncated.
	PanicStack string
	// RedriveCount is how often the message was redriven before.
	RedriveCount int
}

// Describe reads the dead-letter headers of m. Absent or malformed headers
// leave their field zero.
func Describe(m *mq.Message) Info {
	ts := func(name string) time.Time {
		t, _ := time.Parse(time.RFC3339Nano, m.Header(name))
		return t
	}
	attempts, _ := strconv.Atoi(m.Header(HeaderAttempts))
	redrives, _ := strconv.Atoi(m.Header(HeaderRedriveCount))
	return Info{
		Topic:        m.Header(HeaderTopic),
		Group:        m.Header(HeaderGroup),
		Error:        m.Header(HeaderError),
		Reason:       m.Header(HeaderReason),
		Attempts:     attempts,
		FirstFailure: ts(HeaderFirstFailure),
		LastFailure:  ts(HeaderLastFailure),
		PanicStack:   m.Header(HeaderPanicStack),
		RedriveCount: redrives,
	}
}
