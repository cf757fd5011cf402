package integration_test

import (
	"context"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/mqkit/mq/health"
)

// TestReadinessFollowsTheBroker: a service's readiness turns 503 soon
// after its broker hangs (pause) or goes away (stop), and 200 again once
// it is back, on each real broker. The times are logged for the record;
// the bound asserted is generous (the checker's timeout is 2s).
func TestReadinessFollowsTheBroker(t *testing.T) {
	if testing.Short() {
		t.Skip("needs real brokers")
	}
	const timeout = 2 * time.Second
	for _, tg := range targets {
		t.Run(tg.name, func(t *testing.T) {
			b := tg.start(t)
			c := open(t, withParams(t, b.URL, tg.params))
			h := health.New(health.Config{Timeout: timeout, Cache: -1}, health.Client(tg.name, c)).Ready()
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
			defer cancel()
			// flip polls readiness until it answers want and returns how
			// long that took.
			flip := func(what string, want int, bound time.Duration) time.Duration {
				t.Helper()
				start := time.Now()
				for {
					rec := httptest.NewRecorder()
					h.ServeHTTP(rec, httptest.NewRequest("GET", "/readyz", nil))
					if rec.Code == want {
						return time.Since(start)
					}
					if time.Since(start) > bound {
						t.Fatalf("%s: readiness still %d after %v, want %d: %s", what, rec.Code, bound, want, rec.Body.String())
					}
					time.Sleep(50 * time.Millisecond)
				}
			}
			flip("with the broker up", http.StatusOK, 30*time.Second)

			if err := b.Pause(ctx); err != nil {
				t.Fatal(err)
			}
			paused := flip("broker paused", http.StatusServiceUnavailable, 2*timeout+5*time.Second)
			if err := b.Unpause(ctx); err != nil {
				t.Fatal(err)
			}
			unpaused := flip("broker unpaused", http.StatusOK, time.Minute)

			if err := b.Stop(ctx); err != nil {
				t.Fatal(err)
			}
			stopped := flip("broker stopped", http.StatusServiceUnavailable, 2*timeout+5*time.Second)
			if err := b.Start(ctx); err != nil {
				t.Fatal(err)
			}
			started := flip("broker started", http.StatusOK, 2*time.Minute)
			t.Logf("%s readiness flips: paused -> not ready %v, unpaused -> ready %v, stopped -> not ready %v, started -> ready %v",
				tg.name, paused.Round(time.Millisecond), unpaused.Round(time.Millisecond), stopped.Round(time.Millisecond), started.Round(time.Millisecond))
		})
	}
}
