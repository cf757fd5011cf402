package mq

import (
	"context"
	"errors"
	"fmt"
	"runtime/debug"
	"sync"
	"time"

	"github.com/mqkit/mq/internal/backoff"
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

	d := newDispatcher(Chain(h, c.opts.consumeMW...), c.sub, c.opts)
	d.consumer = DeliveryInfo{Scheme: c.client.scheme, Topic: c.topic, Group: c.group}
	if len(c.opts.consumeMW) > 0 {
		d.info = &d.consumer
	}
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
// own key. Deliveries whose ownership the driver revokes (Delivery.Lost)
// are dropped from their queues, their running handlers cancelled.
type dispatcher struct {
	h    Handler
	sub  Subscription
	o    options
	hctx context.Context // handlers' context: not cancelled until the shutdown timeout
	actx context.Context // acks' context: never cancelled by shutdown

	info     *DeliveryInfo // the consumer's part of every DeliveryInfo; nil: no consume middleware, none recorded
	consumer DeliveryInfo  // scheme, topic and group, for DeliveryFrom without consume middleware

	room     chan struct{} // a token when in-flight drops below the bound
	stopping chan struct{} // closed when shutdown begins; seen by handlers through ShuttingDown
	quit     chan struct{} // closed when run returns: scope watchers exit
	watchers sync.WaitGroup

	mu          sync.Mutex
	outstanding int
	waitRoom    bool // fetch waits for a token on room
	keys        map[string]*keyQueue
	live        keyQueue    // sentinel of the ring of queues holding tasks
	free        []*keyQueue // emptied queues, reused by submit
	ready       []*keyQueue // ready[readyHead:] may run their head task now, FIFO
	readyHead   int
	readyCond   sync.Cond // signalled when ready grows or stopped is set
	stopped     bool
	scopes      map[<-chan struct{}]*scope // by Delivery.Lost channel
	lastScope   *scope                     // the scope of the latest submit: most deliveries share it

	pending []pendingTask // submit's reused batch; only the fetch goroutine uses it
}

// scope is the ownership shared by the deliveries that return one Lost
// channel (a partition claim, a channel, a lease).
type scope struct {
	lost   <-chan struct{}
	ctx    context.Context // handlers' context for its deliveries: cancelled when lost
	cancel context.CancelFunc
}

// isLost reports whether the scope's ownership ended: its channel is
// closed (lose may not have run yet).
func (sc *scope) isLost() bool {
	select {
	case <-sc.lost:
		return true
	default:
		return false
	}
}

// keyQueue holds the unsettled messages of one key (or a single message
// with an empty key). tasks[head] is the one running or due to run next.
// Emptied queues go to the dispatcher's free list with their arrays, so a
// message costs no allocation here in a steady state.
type keyQueue struct {
	key        string
	tasks      []task
	head       int
	state      queueState
	first      [1]task   // backing array for the common single-message queue
	prev, next *keyQueue // ring of live queues, for nackAll
	timer      *time.Timer
}

// queueState says where a live queue's head task is.
type queueState uint8

const (
	queueReady   queueState = iota // in the ready list
	queueRunning                   // taken by a worker
	queueWaiting                   // waiting for its retry timer
	queueParked                    // shutting down: runs nothing more
)

// maxFreeQueues bounds the free list; maxKeptTasks is the largest task
// array a freed queue keeps.
const (
	maxFreeQueues = 1024
	maxKeptTasks  = 16
)

type task struct {
	d        Delivery
	m        *Message
	sc       *scope // nil: never lost
	retries  int
	received int64 // when submitted (Unix nanoseconds); only with d.info
}

func newDispatcher(h Handler, sub Subscription, o options) *dispatcher {
	d := &dispatcher{
		h:        h,
		sub:      sub,
		o:        o,
		room:     make(chan struct{}, 1),
		stopping: make(chan struct{}),
		quit:     make(chan struct{}),
		keys:     make(map[string]*keyQueue),
		scopes:   make(map[<-chan struct{}]*scope),
	}
	d.live.prev, d.live.next = &d.live, &d.live
	d.readyCond.L = &d.mu
	return d
}

// pushReady makes q's head task runnable. d.mu is held.
func (d *dispatcher) pushReady(q *keyQueue) {
	if d.readyHead > 0 && d.readyHead >= len(d.ready)/2 && len(d.ready) == cap(d.ready) {
		// Slide the waiting queues down rather than grow the array.
		n := copy(d.ready, d.ready[d.readyHead:])
		clear(d.ready[n:])
		d.ready, d.readyHead = d.ready[:n], 0
	}
	d.ready = append(d.ready, q)
	q.state = queueReady
	d.readyCond.Signal()
}

// popReady takes the oldest runnable queue. d.mu is held and one is ready.
func (d *dispatcher) popReady() *keyQueue {
	q := d.ready[d.readyHead]
	d.ready[d.readyHead] = nil
	d.readyHead++
	if d.readyHead == len(d.ready) {
		d.ready, d.readyHead = d.ready[:0], 0
	}
	q.state = queueRunning
	return q
}

// newQueue returns an empty queue for key, linked into the live ring. d.mu
// is held.
func (d *dispatcher) newQueue(key string) *keyQueue {
	var q *keyQueue
	if n := len(d.free); n > 0 {
		q = d.free[n-1]
		d.free[n-1] = nil
		d.free = d.free[:n-1]
	} else {
		q = &keyQueue{}
		q.tasks = q.first[:0]
	}
	q.key = key
	q.prev, q.next = d.live.prev, &d.live
	q.prev.next, q.next.prev = q, q
	return q
}

// releaseQueue unlinks an emptied queue and keeps it for reuse. d.mu is
// held.
func (d *dispatcher) releaseQueue(q *keyQueue) {
	q.prev.next, q.next.prev = q.next, q.prev
	q.prev, q.next = nil, nil
	if q.key != "" {
		delete(d.keys, q.key)
	}
	q.key = ""
	clear(q.tasks)
	q.first = [1]task{} // may still hold a task if tasks outgrew it
	q.tasks, q.head = q.tasks[:0], 0
	if cap(q.tasks) > maxKeptTasks {
		q.tasks = q.first[:0]
	}
	if len(d.free) < maxFreeQueues {
		d.free = append(d.free, q)
	}
}

func (d *dispatcher) run(ctx context.Context) error {
	var hcancel context.CancelFunc
	base := context.WithValue(context.WithoutCancel(ctx), stoppingKey{}, d.stopping)
	base = context.WithValue(base, consumerKey{}, &d.consumer)
	base = context.WithValue(base, loggerKey{}, d.o.log())
	d.hctx, hcancel = context.WithCancel(base)
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
	close(d.quit)
	d.watchers.Wait()
	return fatal
}

// fetch receives deliveries and hands them to the workers until ctx is done
// or the subscription fails for good.
func (d *dispatcher) fetch(ctx context.Context) error {
	failures := 0
	for {
		d.mu.Lock()
		free := d.o.maxInFlight - d.outstanding
		d.waitRoom = free <= 0
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
			// At most 2s: a broker back from a failover is used within
			// 2s, at the cost of a retry every 2s during a long outage.
			wait := backoff.Exp(failures, 100*time.Millisecond, 2*time.Second)
			d.o.log().Warn("mq: receive failed; retrying", "error", err, "retry_in", wait)
			select {
			case <-time.After(wait):
			case <-ctx.Done():
				for _, dl := range ds {
					d.nack(dl)
				}
				return nil
			}
		} else {
			failures = 0
		}
		d.submit(ds)
	}
}

// submit hands a batch of received deliveries to the workers, taking d.mu
// once for all of them.
func (d *dispatcher) submit(ds []Delivery) {
	ps := d.pending[:0]
	var received int64
	if d.info != nil && len(ds) > 0 {
		received = time.Now().UnixNano() // one clock read for the batch
	}
	for _, dl := range ds {
		t := task{d: dl, m: dl.Message(), received: received}
		if !TakeDeliveryHeaders(t.m, d.o.group) {
			// Re-scheduled for another group (middleware.RetryLater): not ours.
			if err := dl.Ack(d.actx); err != nil {
				d.o.log().Warn("mq: ack of a message addressed to another group failed; it will come again", "id", t.m.ID, "error", err)
			}
			continue
		}
		ps = append(ps, pendingTask{t: t, lost: dl.Lost()}) // driver code: not under d.mu
	}
	if len(ps) > 0 {
		d.mu.Lock()
		for _, p := range ps {
			d.enqueueLocked(p.t, p.lost)
		}
		d.mu.Unlock()
	}
	clear(ps)
	d.pending = ps[:0]
}

// pendingTask is a task on its way into the queues, with its delivery's
// Lost channel.
type pendingTask struct {
	t    task
	lost <-chan struct{}
}

// enqueueLocked adds t behind the unsettled tasks of its key, or makes it
// ready at once. d.mu is held.
func (d *dispatcher) enqueueLocked(t task, lost <-chan struct{}) {
	if lost != nil {
		t.sc = d.scopeLocked(lost)
	}
	d.outstanding++
	if t.m.Key != "" {
		if q := d.keys[t.m.Key]; q != nil {
			if q.head > 0 && len(q.tasks) == cap(q.tasks) {
				// Slide the key's waiting tasks down rather than grow.
				n := copy(q.tasks, q.tasks[q.head:])
				clear(q.tasks[n:])
				q.tasks, q.head = q.tasks[:n], 0
			}
			q.tasks = append(q.tasks, t)
			return
		}
	}
	q := d.newQueue(t.m.Key)
	q.tasks = append(q.tasks, t)
	if q.key != "" {
		d.keys[q.key] = q
	}
	d.pushReady(q)
}

// scopeLocked returns the scope of a Lost channel, making it (and the
// goroutine that waits for the channel) on first sight. d.mu is held.
func (d *dispatcher) scopeLocked(lost <-chan struct{}) *scope {
	if sc := d.lastScope; sc != nil && sc.lost == lost {
		return sc
	}
	sc := d.scopes[lost]
	if sc == nil {
		sc = &scope{lost: lost}
		sc.ctx, sc.cancel = context.WithCancel(d.hctx)
		d.scopes[lost] = sc
		d.watchers.Add(1)
		go func() {
			defer d.watchers.Done()
			select {
			case <-lost:
				d.lose(sc)
			case <-d.quit:
				sc.cancel()
			}
		}()
	}
	d.lastScope = sc
	return sc
}

// lose handles the end of a scope's ownership: its handlers' context is
// cancelled, and its deliveries that are not running are dropped from
// their queues and given up with Nack. Running ones are given up when
// their handler returns (runTask).
func (d *dispatcher) lose(sc *scope) {
	d.mu.Lock()
	sc.cancel()
	delete(d.scopes, sc.lost)
	if d.lastScope == sc {
		d.lastScope = nil
	}
	var dropped []Delivery
	unready := false
	for q := d.live.next; q != &d.live; {
		next := q.next
		var emptied bool
		dropped, emptied = d.dropLocked(q, sc, dropped)
		unready = unready || emptied
		q = next
	}
	if unready {
		// Released queues leave the ready list in one pass.
		n := d.readyHead
		for _, q := range d.ready[d.readyHead:] {
			if q.prev != nil { // still live
				d.ready[n] = q
				n++
			}
		}
		clear(d.ready[n:])
		d.ready = d.ready[:n]
		if d.readyHead == len(d.ready) {
			d.ready, d.readyHead = d.ready[:0], 0
		}
	}
	d.outstanding -= len(dropped)
	wake := d.waitRoom && len(dropped) > 0
	if wake {
		d.waitRoom = false
	}
	d.mu.Unlock()
	if len(dropped) > 0 {
		d.o.log().Warn("mq: the broker took back deliveries of this consumer (rebalance, lost channel or lease); dropping them, their new owner handles them",
			"dropped", len(dropped))
	}
	for _, dl := range dropped {
		d.nack(dl)
	}
	if wake {
		d.wakeFetch()
	}
}

// dropLocked removes sc's tasks from q, except a running head, and
// appends their deliveries to dropped. It reports whether it released a
// queue that was in the ready list (the caller takes it out). d.mu is
// held.
func (d *dispatcher) dropLocked(q *keyQueue, sc *scope, dropped []Delivery) (_ []Delivery, unready bool) {
	start := q.head
	if q.state == queueRunning {
		start++ // settled by runTask when its handler returns
	}
	n, headDropped := start, false
	for i := start; i < len(q.tasks); i++ {
		t := q.tasks[i]
		if t.sc == sc {
			dropped = append(dropped, t.d)
			headDropped = headDropped || i == q.head
			continue
		}
		q.tasks[n] = t
		n++
	}
	if n == len(q.tasks) {
		return dropped, false
	}
	clear(q.tasks[n:])
	q.tasks = q.tasks[:n]
	if headDropped && q.state == queueWaiting {
		q.timer.Stop()
		q.timer = nil
	}
	switch {
	case q.head == len(q.tasks):
		unready = q.state == queueReady
		d.releaseQueue(q) // unlinks it: prev is nil from now on
	case headDropped && q.state == queueWaiting:
		if d.stopped {
			q.state = queueParked
		} else {
			d.pushReady(q)
		}
	}
	return dropped, unready
}

func (d *dispatcher) work() {
	for {
		d.mu.Lock()
		for d.readyHead == len(d.ready) && !d.stopped {
			d.readyCond.Wait()
		}
		if d.stopped {
			d.mu.Unlock()
			return
		}
		q := d.popReady()
		t := q.tasks[q.head]
		d.mu.Unlock()
		d.runTask(q, t)
	}
}

func (d *dispatcher) runTask(q *keyQueue, t task) {
	ctx := d.hctx
	if t.sc != nil {
		ctx = t.sc.ctx
	}
	if t.sc != nil && t.sc.isLost() {
		// Lost before it ran (received just as the channel closed).
		d.nack(t.d)
		d.advance(q)
		return
	}
	if d.info != nil {
		ctx = d.withInfo(ctx, t)
	}
	err := d.call(ctx, t.m)
	if err == nil && (t.sc == nil || !t.sc.isLost()) {
		if aerr := t.d.Ack(d.actx); aerr != nil {
			d.o.log().Warn("mq: ack failed; the broker will deliver the message again", "id", t.m.ID, "error", aerr)
		}
		d.advance(q)
		return
	}

	// Failed: hand the same message to the handler again after a backoff,
	// holding back the rest of its key. At shutdown it is nacked instead,
	// and once its ownership is lost it is given up.
	d.mu.Lock()
	if t.sc != nil && t.sc.isLost() {
		d.mu.Unlock()
		d.nack(t.d)
		d.advance(q)
		return
	}
	if d.stopped {
		q.state = queueParked
		d.mu.Unlock()
		return
	}
	head := &q.tasks[q.head]
	head.retries++
	if !NotAnAttempt(err) {
		head.m.Attempt++
	}
	wait := backoff.Exp(head.retries, d.o.nackBackoff, d.o.maxNackBackoff)
	q.state = queueWaiting
	var timer *time.Timer
	timer = time.AfterFunc(wait, func() {
		d.mu.Lock()
		defer d.mu.Unlock()
		if q.timer != timer {
			return // stopped: the task was dropped or the consumer stopped
		}
		q.timer = nil
		if d.stopped {
			q.state = queueParked
		} else {
			d.pushReady(q)
		}
	})
	q.timer = timer
	// Nothing settled, but room freed earlier may be waiting for fetch
	// (see roomLocked).
	wake := d.roomLocked(true)
	d.mu.Unlock()
	if wake {
		d.wakeFetch()
	}
}

// withInfo returns ctx carrying the DeliveryInfo of one handler call of t:
// one allocation for the context and the info together (see infoCtx).
func (d *dispatcher) withInfo(ctx context.Context, t task) context.Context {
	c := &infoCtx{Context: ctx, info: *d.info}
	c.info.Received = time.Unix(0, t.received)
	if p, ok := t.d.(Positioner); ok {
		c.info.Partition, c.info.Offset = p.Position()
	}
	return c
}

// advance takes q's settled head task off and makes the next one ready.
func (d *dispatcher) advance(q *keyQueue) {
	d.mu.Lock()
	q.tasks[q.head] = task{}
	q.head++
	d.outstanding--
	switch {
	case q.head == len(q.tasks):
		d.releaseQueue(q)
	case d.stopped:
		q.state = queueParked
	default:
		d.pushReady(q)
	}
	wake := d.roomLocked(false)
	d.mu.Unlock()
	if wake {
		d.wakeFetch()
	}
}

// roomLocked reports whether fetch, waiting for room, is to be woken now,
// and if so clears waitRoom. After a settle it is woken once a quarter of
// the window is free, so that with quick handlers it receives deliveries
// in batches rather than one per settled message, or as soon as anything
// is free and no task is runnable (the workers would idle). After a
// failure (anyFree) it is woken if anything is free: failing keys cycling
// through retries settle nothing, and may keep the runnable list from
// ever emptying while they hold the rest of the window. d.mu is held.
func (d *dispatcher) roomLocked(anyFree bool) bool {
	if !d.waitRoom {
		return false
	}
	free := d.o.maxInFlight - d.outstanding
	if free <= 0 || (!anyFree && free < max(d.o.maxInFlight/4, 1) && d.readyHead < len(d.ready)) {
		return false
	}
	d.waitRoom = false
	return true
}

// wakeFetch gives fetch its token for room, unless one is waiting.
func (d *dispatcher) wakeFetch() {
	select {
	case d.room <- struct{}{}:
	default:
	}
}

// call runs the handler, turning a panic into a *PanicError.
func (d *dispatcher) call(ctx context.Context, m *Message) (err error) {
	defer func() {
		if r := recover(); r != nil {
			pe := &PanicError{Value: r, Stack: debug.Stack()}
			d.o.log().Error("mq: handler panicked", "id", m.ID, "topic", m.Topic, "panic", fmt.Sprint(r), "stack", string(pe.Stack))
			err = pe
		}
	}()
	return d.h.Handle(ctx, m)
}

// nackAll returns every unsettled message to the broker. Workers have
// exited, so nothing is running.
func (d *dispatcher) nackAll() {
	d.mu.Lock()
	var pending []Delivery
	for q := d.live.next; q != &d.live; {
		next := q.next
		if q.timer != nil {
			q.timer.Stop()
			q.timer = nil
		}
		for _, t := range q.tasks[q.head:] {
			pending = append(pending, t.d)
		}
		q.prev, q.next = nil, nil
		q.tasks, q.head = nil, 0
		q = next
	}
	d.live.prev, d.live.next = &d.live, &d.live
	clear(d.keys)
	clear(d.ready)
	d.ready, d.readyHead = nil, 0
	d.free = nil
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
