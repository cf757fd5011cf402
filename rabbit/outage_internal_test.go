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
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/mqkit/mq"
)

// TestUnavailable: broker outages, and only they, become errors wrapping
// mq.ErrUnavailable, keeping the original error.
func TestUnavailable(t *testing.T) {
	refused := &net.OpError{Op: "dial", Net: "tcp", Err: os.NewSyscallError("connect", syscall.ECONNREFUSED)}
	for _, tc := range []struct {
		name string
		err  error
		want bool
	}{
		{"amqp ErrClosed", amqp.ErrClosed, true},
		{"channel shutdown wrapping ErrClosed", fmt.Errorf("channel shutdown error: %w", amqp.ErrClosed), true},
		{"320 CONNECTION_FORCED", &amqp.Error{Code: amqp.ConnectionForced, Reason: "CONNECTION_FORCED - broker forced connection closure with reason 'shutdown'", Server: true}, true},
		{"541 INTERNAL_ERROR", &amqp.Error{Code: amqp.InternalError, Server: true}, true},
		{"501 frame error", amqp.ErrFrame, true},
		{"505 unexpected frame", amqp.ErrUnexpectedFrame, true},
		{"506 resource error", &amqp.Error{Code: amqp.ResourceError}, true},
		{"connection refused", fmt.Errorf("rabbit: connect to amqp://h/: %w", refused), true},
		{"bare ECONNREFUSED", syscall.ECONNREFUSED, true},
		{"connection reset", &net.OpError{Op: "read", Err: os.NewSyscallError("read", syscall.ECONNRESET)}, true},
		{"dial timeout", &net.OpError{Op: "dial", Err: os.ErrDeadlineExceeded}, true},
		{"deadline of a socket", os.ErrDeadlineExceeded, true},
		{"a broker's share of the dial time", fmt.Errorf("dial 127.0.2.1:5672: no answer within 5s: %w", os.ErrDeadlineExceeded), true},
		{"unknown host", &net.DNSError{Err: "no such host", Name: "rabbit", IsNotFound: true}, true},
		{"EOF in the handshake", fmt.Errorf("handshake: %w", io.EOF), true},
		{"unexpected EOF", io.ErrUnexpectedEOF, true},
		{"use of closed network connection", net.ErrClosed, true},

		{"nil", nil, false},
		{"404 NOT_FOUND (Recover is true)", &amqp.Error{Code: amqp.NotFound, Recover: true, Server: true}, false},
		{"406 PRECONDITION_FAILED", &amqp.Error{Code: amqp.PreconditionFailed, Recover: true, Server: true}, false},
		{"403 ACCESS_REFUSED", amqp.ErrCredentials, false},
		{"vhost refused", amqp.ErrVhost, false},
		{"SASL", amqp.ErrSASL, false},
		{"530 NOT_ALLOWED", &amqp.Error{Code: amqp.NotAllowed, Server: true}, false},
		{"502 syntax (our frame)", amqp.ErrSyntax, false},
		{"TLS alert", &net.OpError{Op: "remote error", Err: tls.AlertError(42)}, false},
		{"context canceled", context.Canceled, false},
		{"context deadline", fmt.Errorf("rabbit: 3 of 3 messages unconfirmed: %w", context.DeadlineExceeded), false},
		{"mq.ErrClosed", mq.ErrClosed, false},
		{"unroutable", ErrUnroutable, false},
		{"invalid URL", mq.ErrInvalidURL, false},
		{"plain error", errors.New("boom"), false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := transient(tc.err); got != tc.want {
				t.Errorf("transient(%v) = %v, want %v", tc.err, got, tc.want)
			}
			got := unavailable(tc.err)
			if is := errors.Is(got, mq.ErrUnavailable); is != tc.want {
				t.Errorf("errors.Is(unavailable(%v), mq.ErrUnavailable) = %v, want %v", tc.err, is, tc.want)
			}
			if tc.err != nil && !errors.Is(got, tc.err) {
				t.Errorf("unavailable(%v) = %v, which does not wrap the original", tc.err, got)
			}
			if !tc.want && got != tc.err {
				t.Errorf("unavailable(%v) = %v, want it unchanged", tc.err, got)
			}
			var ae *amqp.Error
			if errors.As(tc.err, &ae) && !errors.As(got, &ae) {
				t.Errorf("unavailable(%v) hides the *amqp.Error", tc.err)
			}
			if tc.want && unavailable(got) != got {
				t.Errorf("unavailable marks %v twice", got)
			}
		})
	}
}

// TestOutage: the time an operation may spend on an unreachable broker
// counts from its first failure, or from when its link started failing
// to dial if that was earlier, and resets with progress.
func TestOutage(t *testing.T) {
	c := &Conn{cfg: Config{ReconnectTimeout: time.Second}}
	l := newLink(c, "test")
	o := c.newOutage(l)
	if got := o.left(); got != time.Second {
		t.Errorf("left before any failure = %v, want the whole timeout", got)
	}
	o.failed()
	if got := o.left(); got <= 900*time.Millisecond || got > time.Second {
		t.Errorf("left just after the first failure = %v, want about 1s", got)
	}
	o.progressed()
	if !o.first.IsZero() {
		t.Error("progress did not reset the outage")
	}

	// The link has been failing to dial for longer than the timeout: the
	// operation gets one attempt, bounded by the timeout, and no more.
	l.down = time.Now().Add(-time.Minute)
	if got := o.left(); got > -59*time.Second {
		t.Errorf("left during a minute-old outage = %v, want about -59s", got)
	}
	ctx, cancel := o.connectCtx(context.Background())
	defer cancel()
	if dl, ok := ctx.Deadline(); !ok || time.Until(dl) > time.Second || time.Until(dl) < 900*time.Millisecond {
		t.Errorf("an attempt after the outage's time has deadline %v (ok %v), want about 1s from now", time.Until(dl), ok)
	}
	o.failed()
	if o.left() > 0 {
		t.Error("a failure during a long outage leaves time to retry")
	}

	// connectErr tells the bound from the caller's context.
	bounded, cancelBounded := context.WithCancel(context.Background())
	cancelBounded()
	err := o.connectErr(context.Background(), bounded, fmt.Errorf("rabbit: open channel: %w", context.Canceled))
	if !transient(err) || errors.Is(err, context.Canceled) {
		t.Errorf("an attempt ended by its bound gave %v, want a transient timeout", err)
	}
	if err := o.connectErr(bounded, bounded, context.Canceled); err != context.Canceled {
		t.Errorf("an attempt ended by the caller gave %v, want the caller's error", err)
	}
}
