package runner_test

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/mqkit/mq"
	"github.com/mqkit/mq/health"
	"github.com/mqkit/mq/memory"
	"github.com/mqkit/mq/runner"
)

// wait is how long a test waits for something that should happen at
// once: generous, for a loaded machine.
const wait = 20 * time.Second

func newClient(t *testing.T, b *memory.Broker, opts ...mq.Option) *mq.Client {
	t.Helper()
	if b == nil {
		b = memory.NewBroker(memory.Config{})
		t.Cleanup(func() { b.Close() })
	}
	c := mq.NewClient(b.Conn(), append([]mq.Option{mq.WithNackBackoff(time.Millisecond, 10*time.Millisecond)}, opts...)...)
	t.Cleanup(func() { c.Close() })
	return c
}

// start runs r in a goroutine the test owns and waits until it runs.
// The returned function cancels it and returns Run's result.
func start(t *testing.T, r *runner.Runner) (stop func() error) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() { errc <- r.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		<-r.Done()
	})
	select {
	case <-r.Running():
	case err := <-errc:
		t.Fatalf("Run returned before running: %v", err)
	case <-time.After(wait):
		t.Fatal("runner did not start")
	}
	var once sync.Once
	var err error
	return func() error {
		once.Do(func() {
			cancel()
			select {
			case err = <-errc:
			case <-time.After(wait):
				t.Fatal("Run did not return after cancel")
			}
		})
		return err
	}
}

func produce(t *testing.T, c *mq.Client, topic string, msgs ...*mq.Message) {
	t.Helper()
	if err := c.Producer().Produce(context.Background(), topic, msgs...); err != nil {
		t.Fatal(err)
	}
}

func recv(t *testing.T, ch <-chan string) string {
	t.Helper()
	select {
	case s := <-ch:
		return s
	case <-time.After(wait):
		t.Fatal("nothing received")
		return ""
	}
}

// Run consumes every route, with each route's middleware, until its
// context is cancelled; then it returns nil and Ready reports it stopped.
func TestRunConsumesEveryRouteUntilCancelled(t *testing.T) {
	c := newClient(t, nil)
	r := runner.New(c)
	got := make(chan string, 10)
	tag := func(s string) mq.Middleware {
		return func(next mq.Handler) mq.Handler {
			return mq.HandlerFunc(func(ctx context.Context, m *mq.Message) error {
				m.SetHeader("seen", s)
				return next.Handle(ctx, m)
			})
		}
	}
	for _, topic := range []string{"orders", "invoices"} {
		err := r.Handle(runner.Route{Topic: topic, Group: "svc", Middleware: []mq.Middleware{tag("mw-" + topic)},
			Handler: mq.HandlerFunc(func(_ context.Context, m *mq.Message) error {
				got <- m.Topic + ":" + string(m.Body) + ":" + m.Header("seen")
				return nil
			})})
		if err != nil {
			t.Fatal(err)
		}
	}
	if err := r.Ready(context.Background()); !errors.Is(err, runner.ErrNotRunning) {
		t.Errorf("Ready before Run = %v, want ErrNotRunning", err)
	}
	stop := start(t, r)
	if err := r.Ready(context.Background()); err != nil {
		t.Errorf("Ready while running = %v", err)
	}
	produce(t, c, "orders", &mq.Message{Body: []byte("o1")})
	produce(t, c, "invoices", &mq.Message{Body: []byte("i1")})
	seen := map[string]bool{recv(t, got): true, recv(t, got): true}
	for _, want := range []string{"orders:o1:mw-orders", "invoices:i1:mw-invoices"} {
		if !seen[want] {
			t.Errorf("handled %v, want %q among them", seen, want)
		}
	}
	if err := stop(); err != nil {
		t.Fatalf("Run = %v, want nil after cancel", err)
	}
	if err := r.Ready(context.Background()); !errors.Is(err, runner.ErrNotRunning) {
		t.Errorf("Ready after Run = %v, want ErrNotRunning", err)
	}
	if err := r.Run(context.Background()); !errors.Is(err, runner.ErrStarted) {
		t.Errorf("second Run = %v, want ErrStarted", err)
	}
	if err := r.Handle(runner.Route{Topic: "late", Handler: mq.HandlerFunc(nil)}); !errors.Is(err, runner.ErrStarted) {
		t.Errorf("Handle after Run = %v, want ErrStarted", err)
	}
}

// Cancelling the context is the consumers' graceful shutdown: a running
// handler finishes and its message is acknowledged, not handled again by
// the group's next member.
func TestRunShutdownLetsRunningHandlersFinish(t *testing.T) {
	b := memory.NewBroker(memory.Config{})
	defer b.Close()
	c := newClient(t, b)
	r := runner.New(c)
	entered, release := make(chan struct{}), make(chan struct{})
	var finished atomic.Bool
	if err := r.Handle(runner.Route{Name: "slow", Topic: "jobs", Group: "workers", Options: []mq.Option{mq.WithShutdownTimeout(wait)},
		Handler: mq.HandlerFunc(func(ctx context.Context, m *mq.Message) error {
			close(entered)
			<-release
			finished.Store(ctx.Err() == nil)
			return nil
		})}); err != nil {
		t.Fatal(err)
	}
	stop := start(t, r)
	produce(t, c, "jobs", &mq.Message{ID: "job-1"})
	<-entered
	stopped := make(chan error, 1)
	go func() { stopped <- stop() }()
	select {
	case err := <-stopped:
		t.Fatalf("Run returned %v while a handler was running", err)
	case <-time.After(50 * time.Millisecond):
	}
	if err := r.Ready(context.Background()); !errors.Is(err, runner.ErrNotRunning) {
		t.Errorf("Ready while stopping = %v, want ErrNotRunning", err)
	}
	close(release)
	if err := <-stopped; err != nil {
		t.Fatal(err)
	}
	if !finished.Load() {
		t.Error("the handler's context was cancelled within the shutdown timeout")
	}

	// The message was acknowledged: the group's next member gets nothing.
	c2 := newClient(t, b)
	cons, err := c2.Consumer(context.Background(), "jobs", mq.WithGroup("workers"))
	if err != nil {
		t.Fatal(err)
	}
	defer cons.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	_ = cons.Consume(ctx, mq.HandlerFunc(func(_ context.Context, m *mq.Message) error {
		t.Errorf("%s handled again after a graceful stop", m.ID)
		return nil
	}))
}

// failingConn is a memory connection whose subscriptions to one topic
// fail for good, as a Kafka partition deleted under its consumer does.
type failingConn struct {
	mq.Conn
	topic string
	after <-chan struct{} // fail once this is closed
	err   error
}

func (c failingConn) Subscribe(ctx context.Context, topic, group string, o mq.SubscribeOptions) (mq.Subscription, error) {
	sub, err := c.Conn.Subscribe(ctx, topic, group, o)
	if err != nil || topic != c.topic {
		return sub, err
	}
	return failingSub{sub, c.after, c.err}, nil
}

type failingSub struct {
	mq.Subscription
	after <-chan struct{}
	err   error
}

func (s failingSub) Receive(ctx context.Context, _ int) ([]mq.Delivery, error) {
	select {
	case <-s.after:
		return nil, mq.Permanent(s.err)
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// A route whose consumer fails stops the whole runner, the other routes
// gracefully, and Run returns that failure with the route's name.
func TestRunReturnsFirstFatalErrorWithRouteName(t *testing.T) {
	b := memory.NewBroker(memory.Config{})
	defer b.Close()
	boom := errors.New("partition deleted")
	healthy := make(chan struct{})
	c := mq.NewClient(failingConn{Conn: b.Conn(), topic: "broken", after: healthy, err: boom})
	defer c.Close()
	r := runner.New(c)
	var otherCtxErr atomic.Value
	for _, rt := range []runner.Route{
		{Name: "healthy", Topic: "fine", Group: "g", Handler: mq.HandlerFunc(func(ctx context.Context, m *mq.Message) error {
			close(healthy)
			<-mq.ShuttingDown(ctx) // runs until the runner stops it
			otherCtxErr.Store(ctx.Err() == nil)
			return nil
		})},
		{Name: "ledger", Topic: "broken", Group: "g", Handler: mq.HandlerFunc(func(context.Context, *mq.Message) error { return nil })},
	} {
		if err := r.Handle(rt); err != nil {
			t.Fatal(err)
		}
	}
	produce(t, c, "fine", &mq.Message{})
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	err := r.Run(ctx)
	var re *runner.RouteError
	if !errors.As(err, &re) || re.Route != "ledger" || !errors.Is(err, boom) {
		t.Fatalf("Run = %v, want a *RouteError for route ledger wrapping %v", err, boom)
	}
	if ctx.Err() != nil {
		t.Fatal("Run returned only when the test's context ended")
	}
	<-healthy
	if ok, _ := otherCtxErr.Load().(bool); !ok {
		t.Error("the healthy route was not stopped gracefully (its handler's context was cancelled)")
	}
}

// A route whose consumer cannot be made fails Run with its name before
// anything is consumed, and the consumers already made are closed.
func TestRunFailsOnConsumerSetupWithRouteName(t *testing.T) {
	c := newClient(t, nil)
	r := runner.New(c)
	h := mq.HandlerFunc(func(context.Context, *mq.Message) error {
		t.Error("a handler ran although Run failed to start")
		return nil
	})
	if err := r.Handle(runner.Route{Topic: "a", Group: "g", Handler: h}); err != nil {
		t.Fatal(err)
	}
	if err := r.Handle(runner.Route{Name: "no-group", Topic: "b", Handler: h}); err != nil {
		t.Fatal(err)
	}
	produce(t, c, "a", &mq.Message{})
	err := r.Run(context.Background())
	var re *runner.RouteError
	if !errors.As(err, &re) || re.Route != "no-group" || !errors.Is(err, mq.ErrNoGroup) {
		t.Fatalf("Run = %v, want a *RouteError for no-group wrapping mq.ErrNoGroup", err)
	}
	select {
	case <-r.Running():
		t.Error("Running closed although Run failed to start")
	default:
	}
	<-r.Done()
}

// A consumer stopped under a running runner (its client closed) is a
// failure of its route, not a silent end of consuming.
func TestRunReportsClientClosedUnderIt(t *testing.T) {
	c := newClient(t, nil)
	r := runner.New(c)
	if err := r.Handle(runner.Route{Name: "billing", Topic: "orders", Group: "billing",
		Handler: mq.HandlerFunc(func(context.Context, *mq.Message) error { return nil })}); err != nil {
		t.Fatal(err)
	}
	errc := make(chan error, 1)
	go func() { errc <- r.Run(context.Background()) }()
	<-r.Running()
	c.Close()
	select {
	case err := <-errc:
		var re *runner.RouteError
		if !errors.As(err, &re) || re.Route != "billing" {
			t.Fatalf("Run = %v, want a *RouteError for billing", err)
		}
	case <-time.After(wait):
		t.Fatal("Run did not return after its client was closed")
	}
}

func TestHandleRejectsBadRoutes(t *testing.T) {
	h := mq.HandlerFunc(func(context.Context, *mq.Message) error { return nil })
	r := runner.New(newClient(t, nil))
	if err := r.Handle(runner.Route{Topic: "t", Group: "g", Handler: h}); err != nil {
		t.Fatal(err)
	}
	for name, rt := range map[string]runner.Route{
		"no topic":       {Group: "g", Handler: h},
		"no handler":     {Topic: "u", Group: "g"},
		"duplicate name": {Topic: "t", Group: "g", Handler: h},
	} {
		if err := r.Handle(rt); err == nil {
			t.Errorf("%s: Handle accepted %+v", name, rt)
		}
	}
	if err := runner.New(nil).Handle(runner.Route{Topic: "t", Handler: h}); err == nil {
		t.Error("a route without any client was accepted")
	}
}

// Runners share nothing: two in one process, on one broker, stop
// independently.
func TestSeveralRunnersInOneProcess(t *testing.T) {
	b := memory.NewBroker(memory.Config{})
	defer b.Close()
	c := newClient(t, b)
	got := make(chan string, 10)
	mk := func(group string) *runner.Runner {
		r := runner.New(c)
		if err := r.Handle(runner.Route{Topic: "events", Group: group, Handler: mq.HandlerFunc(func(_ context.Context, m *mq.Message) error {
			got <- group + ":" + m.ID
			return nil
		})}); err != nil {
			t.Fatal(err)
		}
		return r
	}
	a, bb := mk("a"), mk("b")
	stopA := start(t, a)
	stopB := start(t, bb)
	if err := stopA(); err != nil {
		t.Fatal(err)
	}
	if err := bb.Ready(context.Background()); err != nil {
		t.Fatalf("stopping one runner stopped the other: %v", err)
	}
	produce(t, c, "events", &mq.Message{ID: "e1"})
	if s := recv(t, got); s != "b:e1" {
		t.Errorf("handled %q, want b:e1", s)
	}
	if err := stopB(); err != nil {
		t.Fatal(err)
	}
}

// HealthCheck plugs the runner's readiness into package health.
func TestHealthCheck(t *testing.T) {
	c := newClient(t, nil)
	r := runner.New(c)
	if err := r.Handle(runner.Route{Topic: "t", Group: "g", Handler: mq.HandlerFunc(func(context.Context, *mq.Message) error { return nil })}); err != nil {
		t.Fatal(err)
	}
	h := health.New(health.Config{Cache: -1}, health.Client("broker", c), r.HealthCheck("consumers")).Ready()
	code := func() int {
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest("GET", "/readyz", nil))
		return rec.Code
	}
	if got := code(); got != http.StatusServiceUnavailable {
		t.Errorf("before Run: %d, want 503", got)
	}
	stop := start(t, r)
	if got := code(); got != http.StatusOK {
		t.Errorf("while running: %d, want 200", got)
	}
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	if got := code(); got != http.StatusServiceUnavailable {
		t.Errorf("after Run: %d, want 503", got)
	}
}

// SignalContext is cancelled by SIGTERM, and stops catching signals
// once cancelled.
func TestSignalContext(t *testing.T) {
	ctx, stop := runner.SignalContext(context.Background())
	defer stop()
	if err := syscall.Kill(syscall.Getpid(), syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case <-ctx.Done():
	case <-time.After(wait):
		t.Fatal("SIGTERM did not cancel the context")
	}

	ctx2, stop2 := runner.SignalContext(context.Background())
	stop2()
	if ctx2.Err() == nil {
		t.Error("stop did not cancel the context")
	}
}

// A runner without routes is a mistake, not a service that stops at once.
func TestRunWithoutRoutesFails(t *testing.T) {
	if err := runner.New(newClient(t, nil)).Run(context.Background()); err == nil {
		t.Fatal("Run without routes returned nil")
	}
}

// A route may consume from a client of its own (another broker).
func TestRouteWithItsOwnClient(t *testing.T) {
	main, other := newClient(t, nil), newClient(t, nil)
	got := make(chan string, 1)
	r := runner.New(main)
	if err := r.Handle(runner.Route{Topic: "audit", Group: "g", Client: other, Handler: mq.HandlerFunc(func(_ context.Context, m *mq.Message) error {
		got <- m.ID
		return nil
	})}); err != nil {
		t.Fatal(err)
	}
	stop := start(t, r)
	produce(t, other, "audit", &mq.Message{ID: "a1"})
	if id := recv(t, got); id != "a1" {
		t.Errorf("handled %q, want a1 from the route's own client", id)
	}
	if err := stop(); err != nil {
		t.Fatal(err)
	}
}
