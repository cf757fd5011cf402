package middleware

import (
	"context"
	"fmt"
	"math"
	"time"

	"golang.org/x/time/rate"

	"github.com/mqkit/mq"
)

// Throttle returns middleware that lets at most perSecond messages a second
// through to the handler on average, with bursts of up to burst messages
// (a token bucket; burst below 1 is taken as 1). One limiter is shared by
// every handler call that goes through the returned middleware's handlers,
// so wrapping one consumer's handler caps that consumer across its
// concurrent handlers; it does not coordinate several processes.
//
// A message waits for its turn before its handler runs, holding its
// consumer slot, so the consumer fetches no more than it can handle. When
// ctx is done first, the consumer begins shutting down (mq.ShuttingDown),
// or ctx's deadline would pass before the message's turn, the wait ends at
// once and an error is returned: the message was not handled and goes back
// to the broker.
//
// Throttle panics if perSecond is not a positive number, as time.NewTicker
// does for a non-positive interval: it is a programming error.
func Throttle(perSecond float64, burst int) mq.Middleware {
	if !(perSecond > 0) || math.IsInf(perSecond, 0) {
		panic(fmt.Sprintf("middleware: Throttle needs a positive, finite rate, got %v", perSecond))
	}
	lim := rate.NewLimiter(rate.Limit(perSecond), max(burst, 1))
	return func(next mq.Handler) mq.Handler { return &throttle{next: next, lim: lim} }
}

type throttle struct {
	next mq.Handler
	lim  *rate.Limiter
}

func (t *throttle) Handle(ctx context.Context, m *mq.Message) error {
	r := t.lim.Reserve()
	if !r.OK() {
		return fmt.Errorf("middleware: throttle: burst %d cannot admit a message", t.lim.Burst())
	}
	if wait := r.Delay(); wait > 0 {
		if dl, ok := ctx.Deadline(); ok && time.Until(dl) < wait {
			r.Cancel()
			return fmt.Errorf("middleware: throttle: the message's turn comes after its deadline: %w", context.DeadlineExceeded)
		}
		timer := time.NewTimer(wait)
		select {
		case <-timer.C:
		case <-ctx.Done():
			timer.Stop()
			r.Cancel()
			return fmt.Errorf("middleware: throttle: %w", ctx.Err())
		case <-mq.ShuttingDown(ctx):
			timer.Stop()
			r.Cancel()
			return fmt.Errorf("middleware: throttle: consumer shutting down: %w", context.Canceled)
		}
	}
	return t.next.Handle(ctx, m)
}
