// Package backoff computes the waits of every retry loop in the module:
// the consumer's in-process redelivery and receive retries, the backends'
// reconnects and session rejoins, and middleware.Retry. One formula, so a
// wait means the same thing wherever it is configured.
package backoff

import (
	"context"
	"math"
	"math/rand/v2"
	"time"
)

// Exp returns the n-th wait (n from 1) of a backoff that starts at initial
// and doubles up to max. n below 1 counts as 1; max below initial is
// initial.
func Exp(n int, initial, max time.Duration) time.Duration {
	return Grow(n, initial, max, 2)
}

// Grow returns the n-th wait (n from 1) of a backoff that starts at
// initial and grows by factor up to max. A factor below 1 (or NaN) is 1:
// a constant wait.
func Grow(n int, initial, max time.Duration, factor float64) time.Duration {
	if max < initial {
		max = initial
	}
	if n < 1 {
		n = 1
	}
	if factor < 1 || math.IsNaN(factor) {
		factor = 1
	}
	d := float64(initial) * math.Pow(factor, float64(n-1))
	if d >= float64(max) || math.IsInf(d, 0) || math.IsNaN(d) {
		return max
	}
	return time.Duration(d)
}

// Equal returns a random wait between d/2 and d: retries spread out and
// still always pause.
func Equal(d time.Duration) time.Duration {
	if d <= 0 {
		return 0
	}
	return d/2 + rand.N(d/2+1)
}

// Full returns a random wait between 0 and d.
func Full(d time.Duration) time.Duration {
	if d <= 0 {
		return 0
	}
	return rand.N(d + 1)
}

// Sleep waits d and reports whether it passed: false as soon as ctx is done
// or stop (which may be nil) is closed.
func Sleep(ctx context.Context, d time.Duration, stop <-chan struct{}) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	case <-stop:
		return false
	}
}
