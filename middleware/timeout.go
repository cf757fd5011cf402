package middleware

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/mqkit/mq"
)

// ErrHandlerTimeout is matched (with errors.Is) by the error Timeout
// returns when the handler failed after its deadline passed.
var ErrHandlerTimeout = errors.New("middleware: handler timed out")

// Timeout returns middleware that gives each handler call a deadline d
// after it starts, on the call's context. Placed inside Retry (as Stack
// does), every attempt gets its own deadline.
//
// Go cannot stop a running function: the handler must honour ctx (pass it
// to its database, HTTP and broker calls) for the deadline to have an
// effect, and Timeout waits for the handler to return whatever it does.
// The handler's result is returned as it is, with one addition: an error
// returned after the deadline passed (typically context.DeadlineExceeded
// from a call the deadline cut short) is wrapped so that it also matches
// ErrHandlerTimeout. A handler that returns nil after the deadline has
// succeeded, and nil is returned.
//
// Timeout(0) (or a negative d) returns the handler unchanged.
func Timeout(d time.Duration) mq.Middleware {
	return func(next mq.Handler) mq.Handler {
		if d <= 0 {
			return next
		}
		return &timeout{next: next, d: d}
	}
}

type timeout struct {
	next mq.Handler
	d    time.Duration
}

func (t *timeout) Handle(ctx context.Context, m *mq.Message) error {
	tctx, cancel := context.WithTimeout(ctx, t.d)
	defer cancel()
	err := t.next.Handle(tctx, m)
	if err != nil && ctx.Err() == nil && errors.Is(tctx.Err(), context.DeadlineExceeded) {
		return fmt.Errorf("%w after %v: %w", ErrHandlerTimeout, t.d, err)
	}
	return err
}
