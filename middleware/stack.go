package middleware

import (
	"time"

	"github.com/mqkit/mq"
)

// StackConfig chooses the layers of Stack. The zero value gives Retry with
// its defaults around Recover; every other layer is off until configured.
type StackConfig struct {
	// RatePerSecond, when positive, adds Throttle(RatePerSecond, Burst) as
	// the outermost layer.
	RatePerSecond float64
	// Burst is the throttle's burst (see Throttle). Default 1.
	Burst int

	// DeadLetter is the dead-letter middleware, from package dlq. nil
	// means none: a message whose retries are used up goes back to the
	// consumer, which redelivers it.
	DeadLetter mq.Middleware

	// Retry configures the in-process retries (see Retry).
	Retry RetryConfig
	// DisableRetry leaves Retry out: each delivery calls the handler once.
	DisableRetry bool

	// Timeout, when positive, bounds each attempt (see Timeout).
	Timeout time.Duration

	// Dedup is the deduplication middleware, from idempotency.New. nil
	// means none.
	Dedup mq.Middleware

	// DisableRecover leaves Recover out. A panic then unwinds through
	// Retry, which does not retry it; dedup still releases its claim, and
	// the consumer (or a dead-letter middleware that recovers panics)
	// catches it.
	DisableRecover bool
}

// Stack returns the middleware in the order the package documentation
// explains, outermost first:
//
//	Throttle -> DeadLetter -> Retry -> Timeout -> Dedup -> Recover -> handler
//
// Layers that cfg leaves out are skipped. Use it as
//
//	h := mq.Chain(handler, middleware.Stack(cfg))
//
// Stack(cfg)(h) is the same as mq.Chain(h, layers...).
func Stack(cfg StackConfig) mq.Middleware {
	var layers []mq.Middleware
	if cfg.RatePerSecond > 0 {
		layers = append(layers, Throttle(cfg.RatePerSecond, cfg.Burst))
	}
	layers = append(layers, cfg.DeadLetter)
	if !cfg.DisableRetry {
		layers = append(layers, Retry(cfg.Retry))
	}
	if cfg.Timeout > 0 {
		layers = append(layers, Timeout(cfg.Timeout))
	}
	layers = append(layers, cfg.Dedup)
	if !cfg.DisableRecover {
		layers = append(layers, Recover())
	}
	return func(h mq.Handler) mq.Handler { return mq.Chain(h, layers...) }
}
