// Package dlq routes messages that finally fail to a dead-letter topic, and
// inspects and redrives dead letters on any backend.
//
// # Routing
//
// [New] returns an [mq.Middleware]. When the handler it wraps returns an
// error (retries exhausted, an [mq.Permanent] error, or a panic, which it
// recovers into an [mq.PanicError] if no inner layer did), it publishes the message to the
// dead-letter topic (by default the source topic plus ".dlq") with the
// same ID, Key, Body and headers, plus headers that say why: the source
// topic, the consumer group, the error text, the attempt count, the first
// and last failure time and, for a panic, the stack. Only after the
// dead-letter publish has been accepted does the middleware return nil, so
// the consumer acknowledges the original.
//
// A failed dead-letter publish is retried in place, with a growing backoff
// (see [Config.PublishBackoff]), without running the handler again: its
// side effects already happened once. Only when the consumer shuts down,
// the context ends, or the publish cannot succeed (the producer is closed,
// the dead letter is too large or invalid) does the middleware give up and
// return an error wrapping both failures, so the original is not
// acknowledged and comes back: a message is never dropped.
//
// A handler error that is not the message's fault, one for which
// [mq.NotAnAttempt] holds (another consumer is handling it, or a broker or
// store is unavailable), is never dead-lettered: it is returned, and the
// message comes back.
//
// Put the dead-letter middleware outside retries, so a message is
// dead-lettered once, after its retry budget is spent. middleware.Stack
// builds that order, with this middleware as its DeadLetter layer:
//
//	throttle -> dlq -> retry -> timeout -> dedup -> recover -> handler
//
// # Attempts and crash loops
//
// [Config.MaxAttempts] dead-letters a message that comes back more often
// than it allows, without calling the handler: this ends the loop of a
// message that kills the process before its handler returns. It needs a
// delivery count that survives the process, and what [mq.Message.Attempt]
// holds after a crash depends on the broker:
//
//	| backend                  | Attempt after a crash or restart        | AttemptCounter needed |
//	|--------------------------|-----------------------------------------|-----------------------|
//	| mem://                   | exact (the process is the broker)       | no                    |
//	| Redis Streams            | exact (the stream's delivery count)     | no                    |
//	| RabbitMQ quorum queue    | exact (x-delivery-count)                | no                    |
//	| RabbitMQ classic queue   | 2 at most (only the redelivered flag)   | yes                   |
//	| Kafka                    | 1 again (Kafka keeps no count)          | yes                   |
//
// Where the broker keeps no count, set [Config.AttemptCounter] to a store
// shared by the service's instances (package
// github.com/mqkit/mq/idempotency/redisstore's Store is one): the
// middleware counts each delivery there before calling the handler, keyed
// by group, topic and message ID, and uses the larger of that count and
// Attempt. The count is deleted once the message is handled or
// dead-lettered, and expires after [Config.AttemptTTL] otherwise; a
// delivery that ends in an mq.NotAnAttempt error is taken back off it.
// Within one process, Attempt also counts the calls middleware.Retry
// makes, so the larger of the two is right on every backend.
//
// # Start-up
//
// A consumer group receives only messages produced after the group exists
// (on RabbitMQ, a message published while no group's queue is bound waits
// in the topic's unrouted queue, where no group reads it). [List] and
// [Redrive] read the dead-letter topic as [InspectGroup], so that group
// must exist before the first dead letter. Give the middleware the
// consumer's client ([Config.Client]) and it makes sure of that itself: it
// calls [Ensure] for each dead-letter topic before publishing to it the
// first time. A middleware given only a [Config.Producer] (of another
// broker, say) cannot: the service then calls Ensure at start-up.
//
// # Inspection and redrive
//
// [List] and [Redrive] work through the mq interfaces only, so they work on
// every backend. They read the dead-letter topic as [InspectGroup] and stop
// by themselves when no new dead letter arrives for an idle period. Run one
// of them at a time per dead-letter topic: both read through the same
// group. See their documentation for what each leaves behind.
package dlq

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"runtime/debug"
	"strconv"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/mqkit/mq"
	"github.com/mqkit/mq/internal/backoff"
)

// Headers set on a dead letter, besides the message's own headers. Every
// name starts with [HeaderPrefix]; [Redrive] strips them again.
const (
	// HeaderPrefix starts the name of every header the dead-letter
	// middleware adds.
	HeaderPrefix = "mq-dlq-"

	// HeaderTopic holds the topic the message failed on, where Redrive
	// sends it back.
	HeaderTopic = "mq-dlq-topic"
	// HeaderGroup holds the consumer group that failed it (Config.Group).
	HeaderGroup = "mq-dlq-group"
	// HeaderError holds the error text, truncated to 2 KiB.
	HeaderError = "mq-dlq-error"
	// HeaderReason holds why the message was dead-lettered: one of
	// ReasonError, ReasonPermanent, ReasonPanic, ReasonMaxAttempts.
	HeaderReason = "mq-dlq-reason"
	// HeaderAttempts holds how many times the handler ran for the message,
	// in decimal: the message's Attempt, which middleware.Retry and the
	// consumer's redeliveries both increment per call, or the count of
	// Config.AttemptCounter when that is higher. For ReasonMaxAttempts it
	// is the attempts made before the refused delivery.
	HeaderAttempts = "mq-dlq-attempts"
	// HeaderFirstFailure holds when the message first failed (RFC 3339,
	// UTC, nanoseconds), from HeaderRetryFirstFailure when a retry
	// middleware set it, else the time it was dead-lettered.
	HeaderFirstFailure = "mq-dlq-first-failure"
	// HeaderLastFailure holds when the message was dead-lettered (RFC 3339,
	// UTC, nanoseconds).
	HeaderLastFailure = "mq-dlq-last-failure"
	// HeaderPanicStack holds the stack of a handler panic, truncated to
	// 8 KiB. Set only when Reason is ReasonPanic.
	HeaderPanicStack = "mq-dlq-panic-stack"
	// HeaderTimestamp holds when the broker first accepted the original
	// message (RFC 3339, UTC, nanoseconds).
	HeaderTimestamp = "mq-dlq-timestamp"

	// HeaderRedriveCount counts how often Redrive moved the message back to
	// its topic. Unlike the mq-dlq-* headers it stays on the redriven
	// message, so a message that keeps failing shows its history.
	HeaderRedriveCount = "mq-redrive-count"

	// HeaderRetryFirstFailure is the header middleware.Retry sets on a
	// message at its first failure (middleware.HeaderFirstFailure). The
	// dead-letter middleware copies it to HeaderFirstFailure and leaves it
	// off the dead letter.
	HeaderRetryFirstFailure = "mq-first-failure"
)

// Values of HeaderReason.
const (
	// ReasonError: the handler returned an error (after any retries).
	ReasonError = "error"
	// ReasonPermanent: the handler returned an error marked mq.Permanent.
	ReasonPermanent = "permanent"
	// ReasonPanic: the handler panicked.
	ReasonPanic = "panic"
	// ReasonMaxAttempts: the broker delivered the message more than
	// Config.MaxAttempts times; the handler was not called.
	ReasonMaxAttempts = "max-attempts"
)

// Limits on header values, so a huge error or stack cannot make the dead
// letter too large for the broker.
const (
	maxErrorBytes = 2 << 10
	maxStackBytes = 8 << 10
)

var (
	// ErrInvalidConfig is returned by New for an unusable Config.
	ErrInvalidConfig = errors.New("dlq: invalid config")

	// ErrTooManyAttempts is the cause recorded for a message whose
	// delivery attempt passed Config.MaxAttempts.
	ErrTooManyAttempts = errors.New("dlq: too many delivery attempts")
)

// AttemptCounter counts the deliveries of messages in storage that outlives
// the process, so that Config.MaxAttempts ends crash loops on brokers that
// keep no delivery count (see the package documentation). Implementations
// are safe for concurrent use, also from several processes when shared:
// package idempotency's MemoryStore (in-process only, for tests) and
// package idempotency/redisstore's Store implement it.
//
// An error that means the counter's storage could not be reached should
// wrap mq.ErrUnavailable; the middleware wraps it in that anyway.
type AttemptCounter interface {
	// CountAttempt adds one to key's count atomically and returns the
	// new count (1 for a key not counted yet, or whose count expired). The
	// count expires ttl (which must be positive) after this call, unless
	// counted again.
	CountAttempt(ctx context.Context, key string, ttl time.Duration) (int, error)

	// UndoAttempt takes one off key's count: the delivery counted last
	// turned out not to be an attempt. A count never goes below zero, and
	// an absent key stays absent.
	UndoAttempt(ctx context.Context, key string) error

	// ForgetAttempts deletes key's count: the message was handled or
	// dead-lettered. Forgetting an absent key returns nil.
	ForgetAttempts(ctx context.Context, key string) error
}

// Defaults of Config.
const (
	// DefaultAttemptTTL is the default Config.AttemptTTL.
	DefaultAttemptTTL = 24 * time.Hour
	// DefaultPublishBackoff and DefaultMaxPublishBackoff are the default
	// first and longest wait between dead-letter publish attempts.
	DefaultPublishBackoff    = 100 * time.Millisecond
	DefaultMaxPublishBackoff = 10 * time.Second
)

// Config configures the dead-letter middleware.
type Config struct {
	// Client, when set, publishes the dead letters (unless Producer is
	// set too) and lets the middleware Ensure each dead-letter topic
	// before its first dead letter, so List and Redrive find every one.
	// Usually the consumer's own client.
	Client *mq.Client

	// Producer publishes dead letters. It may be a producer of another
	// client than the consumer's (for example another broker). Either
	// Client or Producer is required; with only Producer, call Ensure at
	// start-up (see the package documentation).
	Producer mq.Producer

	// Topic names the dead-letter topic of a source topic. Default
	// DefaultTopic (source + ".dlq").
	Topic func(source string) string

	// Group is the consumer group the middleware runs in, recorded in
	// HeaderGroup. Optional.
	Group string

	// MaxAttempts bounds redeliveries: a message that arrives with its
	// Attempt (or its AttemptCounter count, when higher) above MaxAttempts
	// is dead-lettered at once, without calling the handler. This ends
	// crash loops: a message that kills the process before its handler
	// returns. Attempt counts handler calls (middleware.Retry increments it
	// per retry), so set MaxAttempts at or above the retry budget. On
	// Kafka and RabbitMQ classic queues Attempt does not survive a crash:
	// set AttemptCounter too (see the package documentation). Zero means
	// no such bound.
	MaxAttempts int

	// AttemptCounter, when set, counts every delivery in storage that
	// outlives the process (see AttemptCounter), for MaxAttempts and
	// HeaderAttempts. Group is then required: the count's key is
	// "<Group>:<topic>:<message ID>". Each delivery costs two calls to it
	// (a count, and a forget once the message is settled). When the
	// counter cannot be reached the handler is not called and an error
	// wrapping mq.ErrUnavailable is returned: the message comes back
	// later, and is never dead-lettered for it.
	AttemptCounter AttemptCounter

	// AttemptTTL is how long a count is kept after the delivery that last
	// changed it: it must be longer than the time between two deliveries
	// of a message that crashes its consumer (a restart, a rebalance).
	// Default DefaultAttemptTTL.
	AttemptTTL time.Duration

	// PublishBackoff is the first wait after a failed dead-letter publish;
	// each further failure doubles it, up to MaxPublishBackoff, with
	// random jitter. Defaults DefaultPublishBackoff and
	// DefaultMaxPublishBackoff.
	PublishBackoff, MaxPublishBackoff time.Duration

	// Logger receives a warning for every dead letter and an error for
	// every failed dead-letter publish. Default slog.Default().
	Logger *slog.Logger

	// OnDeadLetter, if set, is called after a dead letter was published,
	// with the dead letter and the error that sent it there. It runs in the
	// handler's goroutine, so it should be quick (a metric, a log line). It
	// must not keep or modify dead.Body.
	OnDeadLetter func(ctx context.Context, dead *mq.Message, cause error)
}

// DefaultTopic returns the default dead-letter topic of source:
// source + ".dlq".
func DefaultTopic(source string) string { return source + ".dlq" }

// New returns dead-letter middleware configured by cfg. It fails with an
// error wrapping ErrInvalidConfig when cfg.Producer is nil, cfg.MaxAttempts
// or a duration is negative, or cfg.AttemptCounter is set without
// cfg.Group.
//
// The middleware does not dead-letter when the handler's context is done
// (the consumer is shutting down): it returns the handler's error, and the
// message goes back to the broker to be handled again.
func New(cfg Config) (mq.Middleware, error) {
	if cfg.Producer == nil && cfg.Client == nil {
		return nil, fmt.Errorf("%w: set Client or Producer", ErrInvalidConfig)
	}
	if cfg.Producer == nil {
		cfg.Producer = cfg.Client.Producer()
	}
	if cfg.MaxAttempts < 0 {
		return nil, fmt.Errorf("%w: MaxAttempts is %d; use 0 for no limit", ErrInvalidConfig, cfg.MaxAttempts)
	}
	if cfg.AttemptTTL < 0 || cfg.PublishBackoff < 0 || cfg.MaxPublishBackoff < 0 {
		return nil, fmt.Errorf("%w: AttemptTTL, PublishBackoff and MaxPublishBackoff must not be negative", ErrInvalidConfig)
	}
	if cfg.AttemptCounter != nil && cfg.Group == "" {
		return nil, fmt.Errorf("%w: AttemptCounter needs Group, which keeps the counts of consumer groups apart", ErrInvalidConfig)
	}
	if cfg.AttemptTTL == 0 {
		cfg.AttemptTTL = DefaultAttemptTTL
	}
	if cfg.PublishBackoff == 0 {
		cfg.PublishBackoff = DefaultPublishBackoff
	}
	if cfg.MaxPublishBackoff == 0 {
		cfg.MaxPublishBackoff = DefaultMaxPublishBackoff
	}
	if cfg.Topic == nil {
		cfg.Topic = DefaultTopic
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	ens := &ensurer{ensured: map[string]bool{}} // shared by every handler the middleware wraps
	return func(next mq.Handler) mq.Handler {
		return &handler{cfg: &cfg, next: next, ens: ens}
	}, nil
}

type handler struct {
	cfg  *Config
	next mq.Handler
	ens  *ensurer
}

// ensurer remembers the dead-letter topics Ensure succeeded on.
type ensurer struct {
	mu      sync.Mutex
	ensured map[string]bool
}

// ensure runs Ensure for topic once it succeeded, when cfg.Client is set.
// Concurrent first dead letters of one topic may both run it: it is
// idempotent.
func (h *handler) ensure(ctx context.Context, topic string) error {
	if h.cfg.Client == nil {
		return nil
	}
	h.ens.mu.Lock()
	done := h.ens.ensured[topic]
	h.ens.mu.Unlock()
	if done {
		return nil
	}
	if err := Ensure(ctx, h.cfg.Client, topic); err != nil {
		return err
	}
	h.ens.mu.Lock()
	h.ens.ensured[topic] = true
	h.ens.mu.Unlock()
	return nil
}

func (h *handler) Handle(ctx context.Context, m *mq.Message) error {
	counted, key := 0, ""
	if c := h.cfg.AttemptCounter; c != nil {
		key = h.cfg.Group + ":" + m.Topic + ":" + m.ID
		n, err := c.CountAttempt(ctx, key, h.cfg.AttemptTTL)
		if err != nil {
			if !errors.Is(err, mq.ErrUnavailable) {
				err = fmt.Errorf("%w: %w", mq.ErrUnavailable, err)
			}
			return fmt.Errorf("dlq: counting the attempts of %s failed, so it was not handled: %w", m.ID, err)
		}
		counted = n
	}
	if attempt := max(m.Attempt, counted); h.cfg.MaxAttempts > 0 && attempt > h.cfg.MaxAttempts {
		cause := fmt.Errorf("%w: delivery attempt %d is above MaxAttempts %d", ErrTooManyAttempts, attempt, h.cfg.MaxAttempts)
		return h.deadLetter(ctx, m, m.Headers, cause, attempt-1, key)
	}
	// The dead letter carries the headers the message arrived with, not
	// what inner middleware or the handler wrote into them.
	orig := maps.Clone(m.Headers)
	err := h.call(ctx, m)
	if err == nil {
		h.forget(ctx, m, key)
		return nil
	}
	if mq.NotAnAttempt(err) {
		// In progress elsewhere, or a broker or store is down: the message
		// is not failing, so it comes back, and this was not an attempt.
		if key != "" {
			if uerr := h.cfg.AttemptCounter.UndoAttempt(context.WithoutCancel(ctx), key); uerr != nil {
				h.cfg.Logger.Warn("dlq: could not take back a delivery count; the message has one attempt less before MaxAttempts",
					"id", m.ID, "topic", m.Topic, "error", uerr)
			}
		}
		return err
	}
	if ctx.Err() != nil || mq.IsShuttingDown(ctx) {
		// Shutting down: let the message go back to the broker rather than
		// dead-letter it for an error the shutdown may have caused.
		return err
	}
	return h.deadLetter(ctx, m, orig, err, max(m.Attempt, counted, 1), key)
}

// forget deletes the delivery count of a settled message, if counting.
func (h *handler) forget(ctx context.Context, m *mq.Message, key string) {
	if key == "" {
		return
	}
	if err := h.cfg.AttemptCounter.ForgetAttempts(context.WithoutCancel(ctx), key); err != nil {
		h.cfg.Logger.Warn("dlq: could not forget a settled message's delivery count; it expires after AttemptTTL",
			"id", m.ID, "topic", m.Topic, "error", err)
	}
}

// call runs the next handler, turning a panic into an *mq.PanicError so a
// panic is dead-lettered whatever the order of the middleware.
func (h *handler) call(ctx context.Context, m *mq.Message) (err error) {
	defer func() {
		if r := recover(); r != nil {
			err = &mq.PanicError{Value: r, Stack: debug.Stack()}
		}
	}()
	return h.next.Handle(ctx, m)
}

// deadLetter publishes m's dead letter, retrying the publish until it is
// accepted, and then forgets m's delivery count (key, if counting).
func (h *handler) deadLetter(ctx context.Context, m *mq.Message, orig map[string]string, cause error, attempts int, key string) error {
	if m.Topic == "" {
		return fmt.Errorf("dlq: message %s has no Topic, so its dead-letter topic is unknown (handler error: %w)", m.ID, cause)
	}
	now := time.Now().UTC()
	headers := make(map[string]string, len(orig)+9)
	for k, v := range orig {
		if k != HeaderRetryFirstFailure {
			headers[k] = v
		}
	}
	first := now
	if t, err := time.Parse(time.RFC3339Nano, m.Header(HeaderRetryFirstFailure)); err == nil {
		first = t.UTC()
	}
	reason := ReasonError
	var pe *mq.PanicError
	switch {
	case errors.As(cause, &pe):
		reason = ReasonPanic
		headers[HeaderPanicStack] = truncate(string(pe.Stack), maxStackBytes)
	case errors.Is(cause, ErrTooManyAttempts):
		reason = ReasonMaxAttempts
	case mq.IsPermanent(cause):
		reason = ReasonPermanent
	}
	headers[HeaderTopic] = m.Topic
	if h.cfg.Group != "" {
		headers[HeaderGroup] = h.cfg.Group
	}
	headers[HeaderError] = truncate(cause.Error(), maxErrorBytes)
	headers[HeaderReason] = reason
	headers[HeaderAttempts] = strconv.Itoa(attempts)
	headers[HeaderFirstFailure] = first.Format(time.RFC3339Nano)
	headers[HeaderLastFailure] = now.Format(time.RFC3339Nano)
	if !m.Timestamp.IsZero() {
		headers[HeaderTimestamp] = m.Timestamp.UTC().Format(time.RFC3339Nano)
	}
	dead := &mq.Message{ID: m.ID, Key: m.Key, Body: m.Body, Headers: headers}
	topic := h.cfg.Topic(m.Topic)
	if err := h.publish(ctx, m, topic, dead, cause); err != nil {
		return err
	}
	h.forget(ctx, m, key)
	mq.SetOutcome(ctx, mq.OutcomeDeadLettered)
	h.cfg.Logger.Warn("dlq: message dead-lettered",
		"id", m.ID, "topic", m.Topic, "dlq_topic", topic, "reason", reason, "attempts", attempts, "error", cause)
	if h.cfg.OnDeadLetter != nil {
		h.cfg.OnDeadLetter(ctx, dead, cause)
	}
	return nil
}

// publish produces the dead letter, retrying with a growing backoff until
// it is accepted, ctx is done, the consumer begins shutting down, or the
// error says a retry cannot succeed. Every failure is logged.
func (h *handler) publish(ctx context.Context, m *mq.Message, topic string, dead *mq.Message, cause error) error {
	for failures := 1; ; failures++ {
		err := h.ensure(ctx, topic)
		if err == nil {
			err = h.cfg.Producer.Produce(ctx, topic, dead)
		}
		if err == nil {
			return nil
		}
		final := mq.IsPermanent(err) || errors.Is(err, mq.ErrClosed) ||
			errors.Is(err, mq.ErrMessageTooLarge) || errors.Is(err, mq.ErrInvalidMessage)
		wait := backoff.Equal(backoff.Exp(failures, h.cfg.PublishBackoff, h.cfg.MaxPublishBackoff))
		if !final && ctx.Err() == nil && !mq.IsShuttingDown(ctx) {
			h.cfg.Logger.Error("dlq: dead-letter publish failed; retrying it (the handler does not run again)",
				"id", m.ID, "topic", m.Topic, "dlq_topic", topic, "failures", failures, "retry_in", wait, "error", err, "cause", cause)
			if backoff.Sleep(ctx, wait, mq.ShuttingDown(ctx)) {
				continue
			}
		}
		h.cfg.Logger.Error("dlq: dead-letter publish failed; the message goes back to the broker",
			"id", m.ID, "topic", m.Topic, "dlq_topic", topic, "failures", failures, "error", err, "cause", cause)
		return fmt.Errorf("dlq: publishing %s to %q failed %d times, so it was not acknowledged: %w (handler error: %w)", m.ID, topic, failures, err, cause)
	}
}

// truncate cuts s to at most n bytes on a rune boundary, marking the cut.
func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	const mark = "…[truncated]"
	cut := n - len(mark)
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return strings.ToValidUTF8(s[:cut], "") + mark
}
