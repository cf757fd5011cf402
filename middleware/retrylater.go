package middleware

import (
	"context"
	"fmt"
	"math"
	"strconv"
	"time"

	"github.com/mqkit/mq"
)

// RetryLaterConfig configures RetryLater. Producer is required; the zero
// value of the rest gives a message up to 5 handler calls in all, the
// retries about 1s, 2s, 4s and 8s apart.
type RetryLaterConfig struct {
	// Producer re-schedules failed messages. It must produce to the
	// broker the consumer reads (a producer of the consumer's client):
	// the retry goes back to the same topic.
	Producer mq.Producer

	// MaxAttempts is the most handler calls a message gets, across all
	// its re-schedulings, the first call included. Default 5.
	MaxAttempts int

	// InitialInterval is the delay before the first retry. Default 1s.
	InitialInterval time.Duration
	// MaxInterval caps the delay. Default 10m.
	MaxInterval time.Duration
	// Multiplier grows the delay after each failed call (below 1: taken
	// as 1). Default 2.
	Multiplier float64
	// Jitter randomises each delay. Default JitterEqual.
	Jitter Jitter

	// ShouldRetry reports whether an error is worth another call.
	// Default: every error. Errors marked mq.Permanent are never retried.
	ShouldRetry func(err error) bool

	// OnRetry, when set, is called after a failed message was
	// re-scheduled, with the error and the delay.
	OnRetry func(ctx context.Context, m *mq.Message, err error, delay time.Duration)
}

// RetryLater returns middleware that, when the handler fails, retries the
// message through the broker instead of in the consumer: it produces a
// copy of the message (same ID, key, headers and body) to the same topic,
// delayed by a growing backoff (see mq.Message.DeliverAt), addressed to
// this consumer's group only (mq.HeaderForGroup: the topic's other groups
// acknowledge the copy unseen), and then acknowledges the original. The
// partition, stream or queue moves on at once and no handler slot or key
// waits through the backoff, as Spring Kafka's non-blocking retries do.
//
// Attempt stays exact: the copy arrives with Attempt one more than the
// call that failed (mq.HeaderAttemptsBefore carries the count). After
// MaxAttempts calls, RetryLater returns a *RetryError (errors.Is(err,
// ErrRetriesExhausted)) for dead-letter middleware outside it to take, as
// Retry does. It returns the handler's error unchanged, for the consumer
// to retry in-process as usual, when the error is mq.Permanent or
// ShouldRetry rejects it, when mq.NotAnAttempt holds for it (nothing
// failed at the message; its wait must not use an attempt), when the
// consumer is stopping, and when the copy could not be produced (nothing
// is lost: the original is not acknowledged). If the consumer loses the
// original (a rebalance) after the copy was produced, the original comes
// again to the new owner as well: the message is then retried twice, with
// one ID, which dedup middleware inside RetryLater absorbs.
//
// The trade-off: per-key order is not kept for a message retried this
// way. Later messages of its key go on while it waits, and it arrives
// after them. Use Retry where the key's order matters more than the
// partition's progress.
//
// Place it outside idempotency (deduplication) middleware: the copy has
// the original's ID, and a dedup layer outside RetryLater would see the
// original as handled and skip the copy. The backend must support delayed
// delivery (mq.Scheduler); on one that does not, the copy fails to
// produce and the consumer retries in-process.
func RetryLater(cfg RetryLaterConfig) mq.Middleware {
	if cfg.Producer == nil {
		panic("middleware: RetryLater needs a Producer")
	}
	if cfg.MaxAttempts <= 0 {
		cfg.MaxAttempts = 5
	}
	if cfg.InitialInterval <= 0 {
		cfg.InitialInterval = time.Second
	}
	if cfg.MaxInterval <= 0 {
		cfg.MaxInterval = 10 * time.Minute
	}
	if cfg.MaxInterval < cfg.InitialInterval {
		cfg.MaxInterval = cfg.InitialInterval
	}
	switch {
	case cfg.Multiplier == 0:
		cfg.Multiplier = 2
	case cfg.Multiplier < 1 || math.IsNaN(cfg.Multiplier):
		cfg.Multiplier = 1
	}
	r := &retry{cfg: RetryConfig{InitialInterval: cfg.InitialInterval, MaxInterval: cfg.MaxInterval, Multiplier: cfg.Multiplier, Jitter: cfg.Jitter}}
	return func(next mq.Handler) mq.Handler { return &retryLater{next: next, cfg: cfg, r: r} }
}

type retryLater struct {
	next mq.Handler
	cfg  RetryLaterConfig
	r    *retry // for its backoff
}

func (h *retryLater) Handle(ctx context.Context, m *mq.Message) error {
	if m.Attempt < 1 {
		m.Attempt = 1
	}
	err := h.next.Handle(ctx, m)
	if err == nil || mq.IsPermanent(err) || mq.NotAnAttempt(err) || ctx.Err() != nil || mq.IsShuttingDown(ctx) {
		return err
	}
	if h.cfg.ShouldRetry != nil && !h.cfg.ShouldRetry(err) {
		return err
	}
	if m.Header(HeaderFirstFailure) == "" {
		m.SetHeader(HeaderFirstFailure, time.Now().UTC().Format(time.RFC3339Nano))
	}
	if m.Attempt >= h.cfg.MaxAttempts {
		re := &RetryError{Attempts: m.Attempt, Err: err}
		if t, perr := time.Parse(time.RFC3339Nano, m.Header(HeaderFirstFailure)); perr == nil {
			re.Elapsed = time.Since(t)
		}
		return re
	}
	info, ok := mq.DeliveryFrom(ctx)
	if !ok || info.Group == "" {
		return err // not inside a consumer: nowhere to address a copy
	}
	delay := h.r.backoff(m.Attempt)
	cp := &mq.Message{ID: m.ID, Key: m.Key, Body: m.Body, DeliverAt: time.Now().Add(delay)}
	cp.Headers = make(map[string]string, len(m.Headers)+2)
	for k, v := range m.Headers {
		cp.Headers[k] = v
	}
	cp.Headers[mq.HeaderForGroup] = info.Group
	cp.Headers[mq.HeaderAttemptsBefore] = strconv.Itoa(m.Attempt)
	topic := m.Topic
	if topic == "" {
		topic = info.Topic
	}
	if perr := h.cfg.Producer.Produce(ctx, topic, cp); perr != nil {
		return fmt.Errorf("%w (and re-scheduling it failed: %v)", err, perr)
	}
	if h.cfg.OnRetry != nil {
		h.cfg.OnRetry(ctx, m, err, delay)
	}
	return nil
}
