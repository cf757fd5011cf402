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
// the consumer acknowledges the original. If the publish fails, it returns
// an error wrapping both failures, so the original is not acknowledged and
// comes back: a message is never dropped.
//
// Put the dead-letter middleware outside retries, so a message is
// dead-lettered once, after its retry budget is spent. middleware.Stack
// builds that order, with this middleware as its DeadLetter layer:
//
//	throttle -> dlq -> retry -> timeout -> dedup -> recover -> handler
//
// # Start-up
//
// A consumer group receives only messages produced after the group exists,
// and RabbitMQ refuses a publish to an exchange that no queue is bound to.
// Services therefore call [Ensure] for their dead-letter topics at start-up,
// before the first message can fail: it creates the [InspectGroup] that
// [List] and [Redrive] read, so every dead letter is kept for them.
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
	"time"
	"unicode/utf8"

	"github.com/mqkit/mq"
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
	// consumer's redeliveries both increment per call. For
	// ReasonMaxAttempts it is the calls made before the refused delivery.
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

// Config configures the dead-letter middleware.
type Config struct {
	// Producer publishes dead letters. Required. It may be a producer of
	// another client than the consumer's (for example another broker).
	Producer mq.Producer

	// Topic names the dead-letter topic of a source topic. Default
	// DefaultTopic (source + ".dlq").
	Topic func(source string) string

	// Group is the consumer group the middleware runs in, recorded in
	// HeaderGroup. Optional.
	Group string

	// MaxAttempts bounds redeliveries: a message that arrives with its
	// Attempt above MaxAttempts is dead-lettered at once, without calling
	// the handler. This ends crash loops (a message that kills the process
	// before its handler returns) and messages whose dead-letter publish
	// kept failing. Attempt counts handler calls (middleware.Retry
	// increments it per retry), so set MaxAttempts at or above the retry
	// budget. Zero means no such bound.
	MaxAttempts int

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
// error wrapping ErrInvalidConfig when cfg.Producer is nil or
// cfg.MaxAttempts is negative.
//
// The middleware does not dead-letter when the handler's context is done
// (the consumer is shutting down): it returns the handler's error, and the
// message goes back to the broker to be handled again.
func New(cfg Config) (mq.Middleware, error) {
	if cfg.Producer == nil {
		return nil, fmt.Errorf("%w: Producer is nil", ErrInvalidConfig)
	}
	if cfg.MaxAttempts < 0 {
		return nil, fmt.Errorf("%w: MaxAttempts is %d; use 0 for no limit", ErrInvalidConfig, cfg.MaxAttempts)
	}
	if cfg.Topic == nil {
		cfg.Topic = DefaultTopic
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	return func(next mq.Handler) mq.Handler {
		return &handler{cfg: &cfg, next: next}
	}, nil
}

type handler struct {
	cfg  *Config
	next mq.Handler
}

func (h *handler) Handle(ctx context.Context, m *mq.Message) error {
	if h.cfg.MaxAttempts > 0 && m.Attempt > h.cfg.MaxAttempts {
		cause := fmt.Errorf("%w: delivery attempt %d is above MaxAttempts %d", ErrTooManyAttempts, m.Attempt, h.cfg.MaxAttempts)
		return h.deadLetter(ctx, m, m.Headers, cause)
	}
	// The dead letter carries the headers the message arrived with, not
	// what inner middleware or the handler wrote into them.
	orig := maps.Clone(m.Headers)
	err := h.call(ctx, m)
	if err == nil {
		return nil
	}
	if ctx.Err() != nil || mq.IsShuttingDown(ctx) || errors.Is(err, mq.ErrInProgress) {
		// Shutting down: let the message go back to the broker rather than
		// dead-letter it for an error the shutdown may have caused. In
		// progress elsewhere: it is being handled, not failing.
		return err
	}
	return h.deadLetter(ctx, m, orig, err)
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

func (h *handler) deadLetter(ctx context.Context, m *mq.Message, orig map[string]string, cause error) error {
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
	attempts := max(m.Attempt, 1)
	reason := ReasonError
	var pe *mq.PanicError
	switch {
	case errors.As(cause, &pe):
		reason = ReasonPanic
		headers[HeaderPanicStack] = truncate(string(pe.Stack), maxStackBytes)
	case errors.Is(cause, ErrTooManyAttempts):
		reason = ReasonMaxAttempts
		attempts = m.Attempt - 1
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
	if err := h.cfg.Producer.Produce(ctx, topic, dead); err != nil {
		h.cfg.Logger.Error("dlq: dead-letter publish failed; the message goes back to the broker",
			"id", m.ID, "topic", m.Topic, "dlq_topic", topic, "error", err, "cause", cause)
		return fmt.Errorf("dlq: publishing %s to %q failed, so it was not acknowledged: %w (handler error: %w)", m.ID, topic, err, cause)
	}
	h.cfg.Logger.Warn("dlq: message dead-lettered",
		"id", m.ID, "topic", m.Topic, "dlq_topic", topic, "reason", reason, "attempts", attempts, "error", cause)
	if h.cfg.OnDeadLetter != nil {
		h.cfg.OnDeadLetter(ctx, dead, cause)
	}
	return nil
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
