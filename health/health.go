// Package health serves the liveness and readiness of a service built on
// mqkit over HTTP, for a Kubernetes probe or a load balancer:
//
//	h := health.New(health.Config{}, health.Client("orders-broker", client))
//	http.Handle("/livez", h.Live())
//	http.Handle("/readyz", h.Ready())
//
// Liveness says the process serves HTTP; it never looks at a broker, so a
// broker outage does not get the service restarted (which would not help).
// Readiness pings every check (Client.Ping: one round trip to the broker)
// and answers 503 as soon as one fails or does not answer within the
// timeout, so a paused or stopped broker turns a service not-ready within
// one timeout of the probe that notices, and ready again on the first
// probe after it returns. Results are cached for a short interval so that
// many probers cost one ping per interval. Both answer with a small JSON
// body saying which check failed and why (errors never hold credentials:
// mq errors hide passwords).
package health

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"sync"
	"time"

	"github.com/mqkit/mq"
)

// Check is one dependency readiness depends on.
type Check struct {
	// Name identifies it in the response.
	Name string
	// Ping returns nil when the dependency serves.
	Ping func(ctx context.Context) error
}

// Client returns a Check that pings c's broker.
func Client(name string, c *mq.Client) Check {
	return Check{Name: name, Ping: c.Ping}
}

// Config configures a Checker. The zero value uses the defaults.
type Config struct {
	// Timeout bounds each check: one that has not answered by then
	// fails. Default DefaultTimeout.
	Timeout time.Duration
	// Cache is how long results are reused before the checks run again.
	// Default DefaultCache; negative runs them for every probe.
	Cache time.Duration
}

// Defaults of Config.
const (
	DefaultTimeout = 2 * time.Second
	DefaultCache   = time.Second
)

// Checker runs checks for the handlers. It is safe for concurrent use and
// starts no goroutine that outlives a probe: checks run in the probe's
// request.
type Checker struct {
	checks []Check
	cfg    Config

	mu      sync.Mutex // serialises check runs
	last    time.Time
	results []Result
}

// Result is the outcome of one check.
type Result struct {
	Name  string `json:"name"`
	OK    bool   `json:"ok"`
	Error string `json:"error,omitempty"`
	// Took is how long the check ran.
	Took time.Duration `json:"took_ns"`
}

// New returns a Checker of checks. A check without a Ping always fails,
// saying so.
func New(cfg Config, checks ...Check) *Checker {
	if cfg.Timeout <= 0 {
		cfg.Timeout = DefaultTimeout
	}
	if cfg.Cache == 0 {
		cfg.Cache = DefaultCache
	}
	return &Checker{checks: checks, cfg: cfg}
}

// Check runs the checks (or reuses results younger than the cache
// interval) and reports whether all passed. The checks run concurrently,
// each bounded by the timeout and by ctx.
func (c *Checker) Check(ctx context.Context) (ok bool, results []Result) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.results != nil && c.cfg.Cache > 0 && time.Since(c.last) < c.cfg.Cache {
		return allOK(c.results), c.results
	}
	results = make([]Result, len(c.checks))
	var wg sync.WaitGroup
	for i, ch := range c.checks {
		wg.Add(1)
		go func() {
			defer wg.Done()
			results[i] = c.run(ctx, ch)
		}()
	}
	wg.Wait()
	c.results, c.last = results, time.Now()
	return allOK(results), results
}

func (c *Checker) run(ctx context.Context, ch Check) Result {
	r := Result{Name: ch.Name}
	start := time.Now()
	if ch.Ping == nil {
		r.Error = "no Ping function"
		return r
	}
	ctx, cancel := context.WithTimeout(ctx, c.cfg.Timeout)
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- ch.Ping(ctx) }() // a Ping that ignores ctx cannot hold the probe
	var err error
	select {
	case err = <-done:
	case <-ctx.Done():
		err = ctx.Err()
	}
	r.Took = time.Since(start)
	if errors.Is(err, context.DeadlineExceeded) {
		err = errors.New("no answer within " + c.cfg.Timeout.String())
	}
	if err != nil {
		r.Error = err.Error()
		return r
	}
	r.OK = true
	return r
}

func allOK(rs []Result) bool {
	for _, r := range rs {
		if !r.OK {
			return false
		}
	}
	return true
}

// Ready returns the readiness handler: 200 when every check passes, 503
// otherwise, with a JSON body {"ready": bool, "checks": [Result...]}.
func (c *Checker) Ready() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ok, results := c.Check(r.Context())
		writeJSON(w, ok, struct {
			Ready  bool     `json:"ready"`
			Checks []Result `json:"checks"`
		}{ok, results})
	})
}

// Live returns the liveness handler: 200 {"live": true} while the process
// serves HTTP. It runs no check.
func (c *Checker) Live() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		writeJSON(w, true, struct {
			Live bool `json:"live"`
		}{true})
	})
}

func writeJSON(w http.ResponseWriter, ok bool, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	if !ok {
		w.WriteHeader(http.StatusServiceUnavailable)
	}
	_ = json.NewEncoder(w).Encode(v)
}
