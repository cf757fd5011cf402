package runner

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"sync"
	"syscall"

	"github.com/mqkit/mq"
	"github.com/mqkit/mq/health"
)

// Route is one handler of a service: what it consumes and how.
type Route struct {
	// Name identifies the route in errors and logs; it must be unique
	// within a Runner. Default Topic, or "Topic/Group" when Group is set.
	Name string

	// Topic is the topic consumed. Required.
	Topic string

	// Group is the consumer group. Default: the client's (its URL's
	// group parameter, or mq.WithGroup given to mq.Open).
	Group string

	// Handler handles the messages. Required.
	Handler mq.Handler

	// Middleware wraps Handler, the first outermost (as mq.Chain), for
	// example middleware.Stack(cfg).
	Middleware []mq.Middleware

	// Options configure the route's consumer (mq.WithConcurrency,
	// mq.WithShutdownTimeout, ...), over the client's defaults.
	Options []mq.Option

	// Client, when set, is the client the route consumes from instead of
	// the Runner's (a second broker, say).
	Client *mq.Client
}

// RouteError is the error Run returns when a route fails: its consumer
// could not be made or stopped consuming for good.
type RouteError struct {
	// Route is the failed route's Name.
	Route string
	// Err is the consumer's error.
	Err error
}

// Error names the route and its error.
func (e *RouteError) Error() string { return fmt.Sprintf("runner: route %q: %v", e.Route, e.Err) }

// Unwrap returns Err.
func (e *RouteError) Unwrap() error { return e.Err }

// Errors returned by Runner, checkable with errors.Is.
var (
	// ErrStarted is returned by Handle and Run once Run was called: a
	// Runner runs once, with the routes it had then.
	ErrStarted = errors.New("runner: already started")

	// ErrNotRunning is returned by Ready while the runner is not
	// consuming: before every group is joined, and from the moment it
	// begins to stop.
	ErrNotRunning = errors.New("runner: not running")
)

// errNoRoutes is returned by Run for a Runner without routes.
var errNoRoutes = errors.New("runner: Run called without routes (see Handle)")

// errConsumerStopped is the error of a route whose consumer stopped while
// the runner was not stopping (its client was closed under it).
var errConsumerStopped = errors.New("consumer stopped while the runner was running (was its client closed?)")

// Runner runs routes until its context is cancelled or one of them
// fails. Make one with New, add routes with Handle, then call Run once.
// Its methods are safe for concurrent use.
type Runner struct {
	client *mq.Client

	mu      sync.Mutex
	routes  []Route
	names   map[string]bool
	started bool
	live    context.Context // Run's context while every route consumes; nil otherwise
	running chan struct{}   // closed when every group is joined
	done    chan struct{}   // closed when Run returns
}

// New returns a Runner whose routes consume from c, unless a route names
// its own client.
func New(c *mq.Client) *Runner {
	return &Runner{client: c, names: map[string]bool{}, running: make(chan struct{}), done: make(chan struct{})}
}

// Handle adds a route. It fails for a route without a topic or handler,
// without a client (neither its own nor the Runner's), or with a name
// already used, and after Run was called (ErrStarted).
func (r *Runner) Handle(rt Route) error {
	if rt.Name == "" {
		rt.Name = rt.Topic
		if rt.Group != "" {
			rt.Name += "/" + rt.Group
		}
	}
	switch {
	case rt.Topic == "":
		return fmt.Errorf("runner: route %q has no topic", rt.Name)
	case rt.Handler == nil:
		return fmt.Errorf("runner: route %q has no handler", rt.Name)
	case rt.Client == nil && r.client == nil:
		return fmt.Errorf("runner: route %q has no client, and the runner has none", rt.Name)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.started {
		return fmt.Errorf("runner: route %q: %w", rt.Name, ErrStarted)
	}
	if r.names[rt.Name] {
		return fmt.Errorf("runner: two routes are named %q", rt.Name)
	}
	r.names[rt.Name] = true
	rt.Middleware = append([]mq.Middleware(nil), rt.Middleware...)
	rt.Options = append([]mq.Option(nil), rt.Options...)
	r.routes = append(r.routes, rt)
	return nil
}

// Run joins every route's consumer group, consumes all routes until ctx
// is cancelled or a route fails, and then stops all of them gracefully
// (see the package documentation) and leaves their groups.
//
// It returns nil when it stopped because ctx was cancelled, and otherwise
// the first route's failure, a *RouteError: a consumer that could not be
// made (the others are not started), or one whose Consume returned an
// error (the others are stopped first). Errors closing the consumers are
// joined to it. A Runner without routes fails at once. Run may be called
// once; a second call returns ErrStarted.
func (r *Runner) Run(ctx context.Context) error {
	r.mu.Lock()
	if r.started {
		r.mu.Unlock()
		return ErrStarted
	}
	r.started = true
	routes := r.routes
	r.mu.Unlock()
	defer close(r.done)
	if len(routes) == 0 {
		return errNoRoutes
	}

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()

	consumers := make([]mq.Consumer, 0, len(routes))
	closeAll := func() error {
		errs := make([]error, len(consumers))
		var wg sync.WaitGroup
		for i, cons := range consumers {
			wg.Add(1)
			go func() {
				defer wg.Done()
				if err := cons.Close(); err != nil && !errors.Is(err, mq.ErrClosed) {
					errs[i] = &RouteError{Route: routes[i].Name, Err: fmt.Errorf("close: %w", err)}
				}
			}()
		}
		wg.Wait()
		return errors.Join(errs...)
	}
	for _, rt := range routes {
		cons, err := r.consumer(ctx, rt)
		if err != nil {
			cerr := closeAll()
			if ctx.Err() != nil {
				return cerr // stopped while starting, as asked
			}
			return errors.Join(&RouteError{Route: rt.Name, Err: err}, cerr)
		}
		consumers = append(consumers, cons)
	}

	r.mu.Lock()
	r.live = ctx
	r.mu.Unlock()
	close(r.running)

	var (
		wg    sync.WaitGroup
		once  sync.Once
		first error
	)
	for i, cons := range consumers {
		rt := routes[i]
		h := mq.Chain(rt.Handler, rt.Middleware...)
		wg.Add(1)
		go func() {
			defer wg.Done()
			err := cons.Consume(ctx, h)
			if err == nil && ctx.Err() == nil {
				err = errConsumerStopped
			}
			if err != nil {
				once.Do(func() { first = &RouteError{Route: rt.Name, Err: err} })
				cancel() // stop the others
			}
		}()
	}
	wg.Wait()

	r.mu.Lock()
	r.live = nil
	r.mu.Unlock()
	return errors.Join(first, closeAll())
}

func (r *Runner) consumer(ctx context.Context, rt Route) (mq.Consumer, error) {
	c := rt.Client
	if c == nil {
		c = r.client
	}
	opts := rt.Options
	if rt.Group != "" {
		opts = append([]mq.Option{mq.WithGroup(rt.Group)}, opts...)
	}
	return c.Consumer(ctx, rt.Topic, opts...)
}

// Running returns a channel that is closed once Run has joined every
// route's consumer group, so that every message produced from then on
// reaches every route, and is starting their consumers. It stays closed
// after Run returns; Done tells that, and Ready tells whether the runner
// is consuming now.
func (r *Runner) Running() <-chan struct{} { return r.running }

// Done returns a channel that is closed when Run returns.
func (r *Runner) Done() <-chan struct{} { return r.done }

// Ready returns nil while Run consumes every route, and an error wrapping
// ErrNotRunning before that and from the moment it begins to stop. It
// makes no call to the broker (health.Client does that).
func (r *Runner) Ready(context.Context) error {
	r.mu.Lock()
	live := r.live
	r.mu.Unlock()
	if live == nil || live.Err() != nil {
		return ErrNotRunning
	}
	return nil
}

// HealthCheck returns a health.Check named name that passes while the
// runner is Ready, for health.New beside the broker's health.Client.
func (r *Runner) HealthCheck(name string) health.Check {
	return health.Check{Name: name, Ping: r.Ready}
}

// SignalContext returns a copy of parent that is cancelled when the
// process receives SIGINT or SIGTERM, when stop is called, or when parent
// is done, whichever happens first, as signal.NotifyContext does. Once it
// is cancelled the signals are no longer caught, so a second SIGINT during
// a slow graceful shutdown ends the process the usual way. Call stop to
// release its resources; it installs nothing that outlives stop.
func SignalContext(parent context.Context) (ctx context.Context, stop context.CancelFunc) {
	ctx, stop = signal.NotifyContext(parent, os.Interrupt, syscall.SIGTERM)
	context.AfterFunc(ctx, stop) // stop catching signals once cancelled
	return ctx, stop
}
