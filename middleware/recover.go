package middleware

import (
	"context"
	"runtime/debug"

	"github.com/mqkit/mq"
)

// Recover returns middleware that turns a panic in the handler into an
// error: a *mq.PanicError holding the panic value and the stack where it
// happened. The consumer keeps running, and the middleware outside sees an
// ordinary error: Retry retries it, idempotency releases the claim, and
// dead-letter middleware routes the message with the stack attached.
//
// The consumer recovers panics too, but only at the outermost layer, where
// the other middleware has already been unwound: put Recover innermost, as
// Stack does. errors.As(err, new(*mq.PanicError)) finds the panic; when the
// panic value is an error, errors.Is and errors.As see it as well.
func Recover() mq.Middleware {
	return func(next mq.Handler) mq.Handler { return recoverer{next: next} }
}

type recoverer struct{ next mq.Handler }

func (r recoverer) Handle(ctx context.Context, m *mq.Message) (err error) {
	defer func() {
		if v := recover(); v != nil {
			err = &mq.PanicError{Value: v, Stack: debug.Stack()}
		}
	}()
	return r.next.Handle(ctx, m)
}
