package middleware

import (
	"context"
	"errors"
	"fmt"
	"math"
	"time"

	"github.com/mqkit/mq"
	"github.com/mqkit/mq/internal/backoff"
)

// HeaderFirstFailure is the header Retry sets, on a message's first failed
// attempt, to the time of that failure (RFC 3339 with nanoseconds, UTC). It
// is left alone when already present, so it keeps the first failure across
// in-process redeliveries. Package dlq copies it onto dead letters.
const HeaderFirstFailure = "mq-first-failure"

// ErrRetriesExhausted is matched (with errors.Is) by the error Retry
// returns when it gives up on a retryable error.
var ErrRetriesExhausted = errors.New("middleware: retries exhausted")

// RetryError is the error Retry returns when it gives up because the
// attempts or the time allowed ran out. It wraps the last error the handler
// returned, so errors.Is and errors.As see through it.
type RetryError struct {
	// Attempts is the number of handler calls made for the message (its
	// Attempt when Retry gave up).
	Attempts int
	// Elapsed is the time from this delivery's first failed call to
	// giving up.
	Elapsed time.Duration
	// Err is the last error the handler returned.
	Err error
}

// Error says how many attempts were made and what the last error was.
func (e *RetryError) Error() string {
	return fmt.Sprintf("middleware: gave up after %d attempts in %v: %v", e.Attempts, e.Elapsed.Round(time.Millisecond), e.Err)
}

// Unwrap returns the last handler error.
func (e *RetryError) Unwrap() error { return e.Err }

// Is reports whether target is ErrRetriesExhausted.
func (e *RetryError) Is(target error) bool { return target == ErrRetriesExhausted }

// Jitter chooses how Retry randomises its waits. Randomness keeps many
// consumers that failed together (say, when a database went away) from
// retrying in lockstep.
type Jitter int

const (
	// JitterEqual, the default, waits between half the backoff and all of
	// it: retries spread out and still always leave a pause.
	JitterEqual Jitter = iota
	// JitterFull waits between zero and the backoff. It spreads retries
	// most, and sometimes retries almost at once.
	JitterFull
	// JitterNone waits exactly the backoff.
	JitterNone
)

// RetryConfig configures Retry. The zero value retries up to 5 handler
// calls in total with backoffs of about 100ms, 200ms, 400ms and 800ms.
type RetryConfig struct {
	// MaxAttempts is the most handler calls a message gets, the first one
	// included: 1 means no retry, 3 means the first call and up to two
	// retries. Retry counts with the message's Attempt, so calls made
	// before a redelivery count too. Default 5.
	MaxAttempts int

	// InitialInterval is the backoff after the first failed call.
	// Default 100ms.
	InitialInterval time.Duration

	// MaxInterval caps the backoff. Default 10s.
	MaxInterval time.Duration

	// Multiplier grows the backoff after each failed call (values below 1
	// are taken as 1: a constant backoff). Default 2.
	Multiplier float64

	// Jitter randomises each wait. Default JitterEqual.
	Jitter Jitter

	// MaxElapsedTime bounds the time one delivery spends retrying: from
	// the end of its first failed call, waits and later calls included.
	// Retry gives up rather than start a wait that would end past it.
	// Zero means no bound.
	MaxElapsedTime time.Duration

	// ShouldRetry reports whether an error is worth another call. Default:
	// every error. Whatever it says, errors marked with mq.Permanent are
	// never retried, errors for which mq.NotAnAttempt holds always wait
	// (see Retry), and nothing is retried once the context is done.
	ShouldRetry func(err error) bool

	// OnRetry, when set, is called before each wait with the error that
	// failed the call and the wait about to start, for logging or
	// metrics. m.Attempt is the attempt that failed (or, for an error for
	// which mq.NotAnAttempt holds, the attempt that is waiting).
	OnRetry func(ctx context.Context, m *mq.Message, err error, wait time.Duration)
}

// Retry returns middleware that calls the handler again, after a growing
// and randomised backoff, when it fails with a retryable error. Each
// repeated call increments m.Attempt first, so Attempt counts handler
// calls; the first failure sets HeaderFirstFailure if absent.
//
// Retry stops and returns:
//
//   - nil, as soon as a call succeeds;
//   - the error unchanged, when it is marked mq.Permanent or ShouldRetry
//     rejects it;
//   - the last error unchanged, as soon as ctx is done or the consumer
//     begins shutting down, also in the middle of a wait (the consumer
//     then returns the message to the broker);
//   - a *RetryError wrapping the last error (errors.Is(err,
//     ErrRetriesExhausted) holds), when MaxAttempts or MaxElapsedTime is
//     used up by errors that were attempts.
//
// An error for which mq.NotAnAttempt holds was not an attempt: it wraps
// mq.ErrInProgress (another consumer is running the same message right
// now, as idempotency.ErrBusy says) or mq.ErrUnavailable (a broker or
// store the handler needs is down, as the dedup middleware reports a store
// outage). Retry waits on it with the same backoff, without incrementing
// Attempt, using up attempts, setting HeaderFirstFailure or asking
// ShouldRetry, and calls again: until the holder has finished (the
// duplicate is then skipped) or failed (this call then runs it), or the
// store is back. When MaxElapsedTime runs out on such an error, Retry
// returns that error as it is, never a *RetryError: the message was not
// tried and failed, so the consumer redelivers it, again without using up
// an attempt, and dead-letter middleware does not dead-letter it. Without
// MaxElapsedTime the wait lasts until the call succeeds or the consumer
// shuts down.
//
// Retries hold the consumer's handler slot and, for messages with a key,
// the key: later messages of the key wait until Retry returns. Keep the
// total wait short (seconds), and leave longer pauses to the consumer's
// redelivery (mq.WithNackBackoff) or a dead-letter topic.
func Retry(cfg RetryConfig) mq.Middleware {
	if cfg.MaxAttempts <= 0 {
		cfg.MaxAttempts = 5
	}
	if cfg.InitialInterval <= 0 {
		cfg.InitialInterval = 100 * time.Millisecond
	}
	if cfg.MaxInterval <= 0 {
		cfg.MaxInterval = 10 * time.Second
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
	return func(next mq.Handler) mq.Handler { return &retry{next: next, cfg: cfg} }
}

type retry struct {
	next mq.Handler
	cfg  RetryConfig
}

func (r *retry) Handle(ctx context.Context, m *mq.Message) error {
	if m.Attempt < 1 {
		m.Attempt = 1
	}
	var start time.Time // of the first failure: the happy path reads no clock
	waits := 0          // for errors that were not attempts
	for {
		err := r.next.Handle(ctx, m)
		if err == nil {
			return nil
		}
		if start.IsZero() {
			start = time.Now()
		}
		notAttempt := mq.NotAnAttempt(err) && !mq.IsPermanent(err)
		if !notAttempt && m.Header(HeaderFirstFailure) == "" {
			m.SetHeader(HeaderFirstFailure, time.Now().UTC().Format(time.RFC3339Nano))
		}
		if mq.IsPermanent(err) || ctx.Err() != nil {
			return err
		}
		if !notAttempt && r.cfg.ShouldRetry != nil && !r.cfg.ShouldRetry(err) {
			return err
		}
		var n int
		if notAttempt {
			waits++
			n = waits
		} else {
			if m.Attempt >= r.cfg.MaxAttempts {
				return &RetryError{Attempts: m.Attempt, Elapsed: time.Since(start), Err: err}
			}
			n = m.Attempt
		}
		wait := r.backoff(n)
		if elapsed := time.Since(start); r.cfg.MaxElapsedTime > 0 && elapsed+wait > r.cfg.MaxElapsedTime {
			if notAttempt {
				return err
			}
			return &RetryError{Attempts: m.Attempt, Elapsed: elapsed, Err: err}
		}
		if r.cfg.OnRetry != nil {
			r.cfg.OnRetry(ctx, m, err, wait)
		}
		if !backoff.Sleep(ctx, wait, mq.ShuttingDown(ctx)) {
			return err
		}
		if !notAttempt {
			m.Attempt++
		}
	}
}

// backoff returns the wait after the n-th failure (from 1), jittered.
func (r *retry) backoff(n int) time.Duration {
	b := backoff.Grow(n, r.cfg.InitialInterval, r.cfg.MaxInterval, r.cfg.Multiplier)
	switch r.cfg.Jitter {
	case JitterFull:
		return backoff.Full(b)
	case JitterNone:
		return b
	default:
		return backoff.Equal(b)
	}
}
