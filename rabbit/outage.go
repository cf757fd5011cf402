package rabbit

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"syscall"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/mqkit/mq"
)

// transient reports whether err says the broker could not be reached or
// stopped serving, so that the same call may succeed later without any
// change: the connection or channel dropped or was refused, a network
// operation failed or timed out, or the broker closed the connection for
// a reason of its own (an operator, a shutdown, an internal error). A
// refusal of the operation itself (a missing exchange, a precondition,
// access, a malformed frame of ours) is not transient.
//
// amqp091's Error.Recover does not tell: it is true for the channel-level
// "soft" errors, among them NOT_FOUND and ACCESS_REFUSED, which need a
// change before a retry can succeed; and a Recover=false connection error
// such as CONNECTION_FORCED is exactly what a broker restart sends.
func transient(err error) bool {
	if err == nil || errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return false
	}
	var de dialErrors
	if errors.As(err, &de) {
		return de.anyOf(transient) // one node of the cluster may be back soon
	}
	var ae *amqp.Error
	if errors.As(err, &ae) {
		switch ae.Code {
		case amqp.ConnectionForced, // 320: an operator or a shutdown closed the connection
			amqp.FrameError,      // 501: the stream broke mid-frame (also amqp.ErrFrame when reading fails)
			amqp.ChannelError,    // 504: amqp.ErrClosed, "channel/connection is not open"
			amqp.UnexpectedFrame, // 505: a connection torn mid-exchange
			amqp.ResourceError,   // 506: the broker lacks resources for now (e.g. channels)
			amqp.InternalError:   // 541: a broker-side failure (a queue's leader moving)
			return true
		}
		return false
	}
	var alert tls.AlertError
	if errors.As(err, &alert) {
		return false // the TLS peer refused us: certificates, versions
	}
	var ne net.Error
	return errors.As(err, &ne) ||
		errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, net.ErrClosed) ||
		errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, syscall.ECONNRESET) ||
		errors.Is(err, syscall.ECONNABORTED) || errors.Is(err, syscall.EPIPE) ||
		errors.Is(err, syscall.EHOSTUNREACH) || errors.Is(err, syscall.ENETUNREACH)
}

// retriable reports whether an operation that failed with err may succeed
// on a new channel or connection: the connection or channel dropped, as
// opposed to the broker refusing the operation (a missing exchange, a
// precondition, access).
func retriable(err error) bool {
	for _, e := range []error{ErrUnroutable, ErrNacked, ErrNotFound, mq.ErrInvalidMessage, mq.ErrMessageTooLarge} {
		if errors.Is(err, e) {
			return false
		}
	}
	var de dialErrors
	if errors.As(err, &de) {
		return de.anyOf(retriable)
	}
	var ae *amqp.Error
	if !errors.As(err, &ae) {
		return !errors.Is(err, mq.ErrClosed) && !errors.Is(err, mq.ErrInvalidURL) &&
			!errors.Is(err, context.Canceled) && !errors.Is(err, context.DeadlineExceeded)
	}
	switch ae.Code {
	case amqp.ContentTooLarge, amqp.NoRoute, amqp.NoConsumers, amqp.AccessRefused, amqp.NotFound,
		amqp.ResourceLocked, amqp.PreconditionFailed, amqp.NotAllowed, amqp.NotImplemented,
		amqp.InvalidPath, amqp.CommandInvalid, amqp.SyntaxError:
		return false
	}
	return true
}

// unavailable marks a transient error (see transient) as a broker outage:
// the result wraps mq.ErrUnavailable and err. Any other error, and one
// marked already, is returned unchanged.
func unavailable(err error) error {
	if !transient(err) || errors.Is(err, mq.ErrUnavailable) {
		return err
	}
	return fmt.Errorf("%w: %w", mq.ErrUnavailable, err)
}

// outage bounds how long one operation (a Send, a Subscribe) retries while
// the broker cannot be reached: Config.ReconnectTimeout from the first
// failure of the operation, or from when its link started failing to
// dial if that was earlier. So during a long outage an operation makes
// one attempt (the broker may be back) and fails at once.
type outage struct {
	l     *link
	limit time.Duration
	first time.Time // the operation's first failure without progress since
}

func (c *Conn) newOutage(l *link) *outage {
	return &outage{l: l, limit: c.cfg.ReconnectTimeout}
}

// start returns when the outage began, or the zero time if nothing failed.
func (o *outage) start() time.Time {
	down := o.l.downSince()
	switch {
	case o.first.IsZero():
		return down
	case !down.IsZero() && down.Before(o.first):
		return down
	}
	return o.first
}

// failed records a failed attempt.
func (o *outage) failed() {
	if o.first.IsZero() {
		o.first = time.Now()
	}
}

// progressed records an attempt that achieved something: the outage, if
// there was one, is over for this operation.
func (o *outage) progressed() { o.first = time.Time{} }

// left returns the time until the operation must give up; zero or less
// once it must.
func (o *outage) left() time.Duration {
	s := o.start()
	if s.IsZero() {
		return o.limit
	}
	return time.Until(s.Add(o.limit))
}

// connectCtx bounds an attempt to connect (dial, open a channel, declare):
// it must end with the outage's time, or within the limit for an attempt
// made when that has passed.
func (o *outage) connectCtx(ctx context.Context) (context.Context, context.CancelFunc) {
	d := o.left()
	if d <= 0 {
		d = o.limit
	}
	return context.WithTimeout(ctx, d)
}

// connectErr turns the failure of an attempt bounded by connectCtx into
// the error to report: when the bound, not ctx, ended the attempt, a
// timeout (transient) in place of the context's error.
func (o *outage) connectErr(ctx, bounded context.Context, err error) error {
	if err != nil && bounded.Err() != nil && ctx.Err() == nil &&
		(errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled)) {
		var de dialErrors
		if errors.As(err, &de) { // what each broker of the list did
			return fmt.Errorf("rabbit: connect to %s: no answer in time (reconnect_timeout %v): %w (%v)",
				o.l.c.redacted, o.limit, os.ErrDeadlineExceeded, de)
		}
		return fmt.Errorf("rabbit: connect to %s: no answer in time (reconnect_timeout %v): %w",
			o.l.c.redacted, o.limit, os.ErrDeadlineExceeded)
	}
	return err
}
