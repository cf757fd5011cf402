package mq

import (
	"context"
	"errors"
	"fmt"
	"runtime/debug"
	"sync"
	"time"
)

type stoppingKey struct{}

// ShuttingDown returns a channel that is closed when the consumer that
// delivered ctx's message begins its graceful shutdown. A handler should
// finish the work it is doing, but waits that only delay it (retry
// backoff, throttling) should stop at once and return an error, so the
// message goes back to the broker. For a context that did not come from a
// consumer it returns nil, which is never ready.
func ShuttingDown(ctx context.Context) <-chan struct{} {
	ch, _ := ctx.Value(stoppingKey{}).(chan struct{})
	return ch
}

// IsShuttingDown reports whether the consumer that delivered ctx's message
// has begun its graceful shutdown (see ShuttingDown).
func IsShuttingDown(ctx context.Context) bool {
	select {
	case <-ShuttingDown(ctx):
		return true
	default:
		return false
	}
}

// PanicError is the error a handler panic becomes: the consumer recovers
// it, logs it, and treats the message as failed. Retry and dead-letter
// middleware see it like any other error (errors.As finds it).
type PanicError struct {
	// Value is what the handler passed to panic.
	Value any
	// Stack is the goroutine's stack at the panic.
	Stack []byte
}

// Error returns the panic value; the stack is in Stack.
func (e *PanicError) Error() string { return fmt.Sprintf("mq: handler panicked: %v", e.Value) }

// Unwrap returns the panic value if it is an error.
func (e *PanicError) Unwrap() error {
	err, _ := e.Value.(error)
	return err
}

type consumer struct {
	client *Client
	topic  string
	group  string
	opts   options
	sub    Subscription
	done   chan struct{}

	mu      sync.Mutex
	closed  bool
	running bool
	cancel  context.CancelFunc
	runDone chan struct{}

	closeOnce sync.Once
	closeErr  error
}

func (c *consumer) Consume(ctx context.Context, h Handler) error {
	if h == nil {
		return errors.New("mq: Consume needs a non-nil Handler")
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	c.mu.Lock()
	if c.closed || c.client.isClosed() {
		c.mu.Unlock()
		return ErrClosed
	}
	if c.running {
		c.mu.Unlock()
		return errors.New("mq: Consume is already running on this consumer")
	}
	c.running = true
	c.cancel = cancel
	runDone := make(chan struct{})
	c.runDone = runDone
	c.mu.Unlock()
	defer func() {
		c.mu.Lock()
		c.running = false
		c.cancel = nil
		close(runDone)
		c.mu.Unlock()
	}()

	d := newDispatcher(h, c.sub, c.opts)
	err := d.run(ctx)
	if err != nil {
		return fmt.Errorf("mq: consume %q group %q: %w", c.topic, c.group, err)
	}
	return nil
}

func (c *consumer) Close() error {
	c.closeOnce.Do(func() {
		c.mu.Lock()
		c.closed = true
		cancel, runDone := c.cancel, c.runDone
		running := c.running
		c.mu.Unlock()
		if running {
			cancel()
			<-runDone
		}
		c.closeErr = c.sub.Close()
		c.client.forget(c)
	})
	return c.closeErr
}

// dispatcher runs a handler over a subscription with bounded concurrency,
// keeping messages of one key in order: a key's messages wait in a queue
// while one of them runs, and different keys run in parallel. Failed
// messages are retried in place after a backoff, holding back only their
// own key.
type dispatcher struct {
	h    Handler
	sub  Subscription
	o    options
	hctx context.Context // handlers' context: not cancelled until the shutdown timeout
	actx context.Context // acks' context: never cancelled by shutdown

	room     chan struct{} // a token when in-flight drops below the bound
	stopping chan struct{} // closed when shutdown begins; seen by handlers through ShuttingDown

	mu          sync.Mutex
	outstanding int
	keys        map[string]*keyQueue
	live        map[*keyQueue]struct{}
	ready       []*keyQueue // queues whose head task may run now, FIFO
	readyCond   sync.Cond   // signalled when ready grows or stopped is set
	stopped     bool
}

// keyQueue holds the unsettled messages of one key (or a single message
// with an empty key). tasks[0] is the one running or due to run next.
type keyQueue struct {
	key   string
	tasks []task
	first [1]task // backing array for the common single-message queue
	timer *time.Timer
}

type task struct {
	d       Delivery
	m       *Message
	retries int
}

func newDispatcher(h Handler, sub Subscription, o options) *dispatcher {
	d := &dispatcher{
		h:        h,
		sub:      sub,
		o:        o,
		room:     make(chan struct{}, 1),
		stopping: make(chan struct{}),
		keys:     make(map[string]*keyQueue),
		live:     make(map[*keyQueue]struct{}),
	}
	d.readyCond.L = &d.mu
	return d
}

// pushReady makes q's head task runnable. d.mu is held.
func (d *dispatcher) pushReady(q *keyQueue) {
	d.ready = append(d.ready, q)
	d.readyCond.Signal()
}

func (d *dispatcher) run(ctx context.Context) error {
	var hcancel context.CancelFunc
	d.hctx, hcancel = context.WithCancel(context.WithValue(context.WithoutCancel(ctx), stoppingKey{}, d.stopping))
	defer hcancel()
	d.actx = context.WithoutCancel(ctx)

	var workers sync.WaitGroup
	for range d.o.concurrency {
		workers.Add(1)
		go func() {
			defer workers.Done()
			d.work()
		}()
	}

	fatal := d.fetch(ctx)

	// Graceful shutdown: no more fetching; running handlers finish, then
	// everything unsettled goes back to the broker.
	d.mu.Lock()
	d.stopped = true
	d.readyCond.Broadcast()
	d.mu.Unlock()
	close(d.stopping)
	finished := make(chan struct{})
	go func() {
		workers.Wait()
		close(finished)
	}()
	t := time.NewTimer(d.o.shutdownTimeout)
	select {
	case <-finished:
	case <-t.C:
		d.o.log().Warn("mq: shutdown timeout passed; cancelling running handlers", "timeout", d.o.shutdownTimeout)
		hcancel()
		<-finished
	}
	t.Stop()
	d.nackAll()
	return fatal
}

// fetch receives deliveries and hands them to the workers until ctx is done
// or the subscription fails for good.
func (d *dispatcher) fetch(ctx context.Context) error {
	failures := 0
	for {
		d.mu.Lock()
		free := d.o.maxInFlight - d.outstanding
		d.mu.Unlock()
		if free <= 0 {
			select {
			case <-d.room:
				continue
			case <-ctx.Done():
				return nil
			}
		}
		ds, err := d.sub.Receive(ctx, free)
		if ctx.Err() != nil {
			for _, dl := range ds {
				d.nack(dl)
			}
			return nil
		}
		if err != nil {
			if errors.Is(err, ErrClosed) || IsPermanent(err) {
				for _, dl := range ds {
					d.nack(dl)
				}
				return err
			}
			failures++
			wait := backoff(failures, 100*time.Millisecond, 5*time.Second)
			d.o.log().Warn("mq: receive failed; retrying", "error", err, "retry_in", wait)
			select {
			case <-time.After(wait):
			case <-ctx.Done():
				return nil
			}
		} else {
			failures = 0
		}
		for _, dl := range ds {
			d.submit(dl)
		}
	}
}

func (d *dispatcher) submit(dl Delivery) {
	t := task{d: dl, m: dl.Message()}
	d.mu.Lock()
	defer d.mu.Unlock()
	d.outstanding++
	if t.m.Key != "" {
		if q := d.keys[t.m.Key]; q != nil {
			q.tasks = append(q.tasks, t)
			return
		}
	}
	q := &keyQueue{key: t.m.Key}
	q.first[0] = t
	q.tasks = q.first[:1]
	if q.key != "" {
		d.keys[q.key] = q
	}
	d.live[q] = struct{}{}
	d.pushReady(q)
}

func (d *dispatcher) work() {
	for {
		d.mu.Lock()
		for len(d.ready) == 0 && !d.stopped {
			d.readyCond.Wait()
		}
		if d.stopped {
			d.mu.Unlock()
			return
		}
		q := d.ready[0]
		d.ready[0] = nil
		d.ready = d.ready[1:]
		t := q.tasks[0]
		d.mu.Unlock()
		d.runTask(q, t)
	}
}

func (d *dispatcher) runTask(q *keyQueue, t task) {
	err := d.call(t.m)
	if err == nil {
		if aerr := t.d.Ack(d.actx); aerr != nil {
			d.o.log().Warn("mq: ack failed; the broker will deliver the message again", "id", t.m.ID, "error", aerr)
		}
		d.mu.Lock()
		q.tasks[0] = task{}
		q.tasks = q.tasks[1:]
		d.outstanding--
		if len(q.tasks) == 0 {
			delete(d.live, q)
			if q.key != "" {
				delete(d.keys, q.key)
			}
		} else if !d.stopped {
			d.pushReady(q)
		}
		d.mu.Unlock()
		select {
		case d.room <- struct{}{}:
		default:
		}
		return
	}

	// Failed: hand the same message to the handler again after a backoff,
	// holding back the rest of its key. At shutdown it is nacked instead.
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.stopped {
		return
	}
	q.tasks[0].retries++
	q.tasks[0].m.Attempt++
	wait := backoff(q.tasks[0].retries, d.o.nackBackoff, d.o.maxNackBackoff)
	q.timer = time.AfterFunc(wait, func() {
		d.mu.Lock()
		defer d.mu.Unlock()
		q.timer = nil
		if !d.stopped {
			d.pushReady(q)
		}
	})
}

// call runs the handler, turning a panic into a *PanicError.
func (d *dispatcher) call(m *Message) (err error) {
	defer func() {
		if r := recover(); r != nil {
			pe := &PanicError{Value: r, Stack: debug.Stack()}
			d.o.log().Error("mq: handler panicked", "id", m.ID, "topic", m.Topic, "panic", fmt.Sprint(r), "stack", string(pe.Stack))
			err = pe
		}
	}()
	return d.h.Handle(d.hctx, m)
}

// nackAll returns every unsettled message to the broker. Workers have
// exited, so nothing is running.
func (d *dispatcher) nackAll() {
	d.mu.Lock()
	var pending []Delivery
	for q := range d.live {
		if q.timer != nil {
			q.timer.Stop()
			q.timer = nil
		}
		for _, t := range q.tasks {
			pending = append(pending, t.d)
		}
		delete(d.live, q)
	}
	clear(d.keys)
	clear(d.ready)
	d.ready = nil
	d.outstanding = 0
	d.mu.Unlock()
	for _, dl := range pending {
		d.nack(dl)
	}
}

func (d *dispatcher) nack(dl Delivery) {
	if err := dl.Nack(d.actx); err != nil && !errors.Is(err, ErrClosed) {
		d.o.log().Warn("mq: nack failed; the broker will deliver the message again", "id", dl.Message().ID, "error", err)
	}
}
