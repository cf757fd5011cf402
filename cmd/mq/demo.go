package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"hash/fnv"
	"io"
	"log/slog"
	"math/rand/v2"
	"strings"
	"sync"
	"time"

	"github.com/mqkit/mq"
	"github.com/mqkit/mq/dlq"
	"github.com/mqkit/mq/idempotency"
	"github.com/mqkit/mq/middleware"
)

// The demo is a small order pipeline:
//
//	orders -> [inventory] -> notifications -> [notifier]
//
// Both steps run behind the full middleware stack (dead-letter routing,
// retries, a per-attempt timeout, deduplication, panic recovery). The
// inventory step's warehouse times out now and then, the notifier's mail
// server is busy now and then, two orders are delivered twice, and one
// poison order always fails and ends in the dead-letter topic.

// order is the body of a message on the orders topic.
type order struct {
	ID         string `json:"id"`
	Customer   string `json:"customer"`
	SKU        string `json:"sku"`
	Qty        int    `json:"qty"`
	TotalCents int    `json:"total_cents"`
}

// poisonSKU is the SKU of the order the warehouse always rejects.
const poisonSKU = "SKU-GHOST"

var (
	errWarehouseTimeout = errors.New("warehouse: reservation timed out")
	errWarehouseBroken  = errors.New("warehouse: HTTP 500 for " + poisonSKU)
	errMailBusy         = errors.New("mail: 421 server busy, try again")
)

// demoRun holds one run's configuration and counters.
type demoRun struct {
	out                   *lineWriter
	seed                  uint64
	orders, notifications string

	mu sync.Mutex
	// per order ID
	invRuns  map[string]int  // inventory handler calls
	invDone  map[string]int  // inventory successes (more than 1 would be a double run)
	dead     map[string]bool // orders dead-lettered
	sent     map[string]int  // notifications sent, by notification ID
	notRuns  map[string]int  // notifier handler calls
	retries  int             // inventory calls that failed and were retried
	nretries int             // notifier calls that failed and were retried
	skipped  int             // duplicate deliveries skipped by dedup
	acked    map[string]int  // deliveries acknowledged, by topic
	deadN    map[string]int  // dead letters, by source topic
}

// delivery records what happened to one delivery as it passes the layers.
type delivery struct {
	ran, dead bool
}

type deliveryKey struct{}

func (a *app) demo(ctx context.Context, args []string) int {
	fs := a.flags("demo")
	url := a.urlFlag(fs)
	nOrders := fs.Int("orders", 200, "orders to place")
	seed := fs.Uint64("seed", 1, "seed for the failures (same seed, same failures)")
	fs.Usage = func() {
		fmt.Fprintf(a.stderr, "usage: mq demo [-orders N] [-seed S] [-url URL]\n\n"+
			"Without a URL (here or in $MQ_URL) it runs on mem://, a broker inside the command.\n"+
			"Runs an order pipeline (orders -> inventory -> notifications -> notifier)\n"+
			"with flaky steps, duplicate deliveries and a poison order, and checks\n"+
			"that every order is accounted for.\n\n")
		fs.PrintDefaults()
	}
	if code, ok := a.parse(fs, args); !ok {
		return code
	}
	if *nOrders < 3 {
		return a.usageErr(fs, "-orders must be at least 3")
	}
	target := a.brokerURL(*url)
	if target == "" {
		target = "mem://" // the demo's own broker, gone when it ends
	}
	c, code := a.connect(ctx, "demo", target)
	if c == nil {
		return code
	}
	defer c.Close()

	prefix := "demo"
	if !strings.HasPrefix(target, "mem:") {
		// A real broker keeps topics between runs: start clean.
		prefix = "demo-" + strings.ReplaceAll(mq.NewID(), "-", "")[8:16]
	}
	d := &demoRun{
		out:           &lineWriter{w: a.stdout},
		seed:          *seed,
		orders:        prefix + ".orders",
		notifications: prefix + ".notifications",
		invRuns:       map[string]int{},
		invDone:       map[string]int{},
		dead:          map[string]bool{},
		sent:          map[string]int{},
		notRuns:       map[string]int{},
		acked:         map[string]int{},
		deadN:         map[string]int{},
	}
	if err := d.run(ctx, c, *nOrders, slog.New(slog.NewTextHandler(a.stderr, &slog.HandlerOptions{Level: slog.LevelError}))); err != nil {
		a.fail("demo", err)
		return exitFailure
	}
	return exitOK
}

func (d *demoRun) run(ctx context.Context, c *mq.Client, n int, logger *slog.Logger) error {
	start := time.Now()
	d.out.printf("mq demo: order pipeline on %s, seed %d\n", c, d.seed)
	d.out.printf("  %s -> [inventory] -> %s -> [notifier]; failures go to <topic>.dlq\n", d.orders, d.notifications)

	// At start-up, as services do: make the dead-letter topics keep what
	// arrives, so nothing dead-lettered is missed.
	if err := dlq.Ensure(ctx, c, dlq.DefaultTopic(d.orders), dlq.DefaultTopic(d.notifications)); err != nil {
		return err
	}

	runCtx, stop := context.WithCancel(ctx)
	defer stop()
	var wg sync.WaitGroup
	var consumeErr error
	var errMu sync.Mutex
	start1 := func(topic, group string, concurrency int, h mq.Handler) error {
		cons, err := c.Consumer(ctx, topic, mq.WithGroup(group), mq.WithConcurrency(concurrency), mq.WithShutdownTimeout(5*time.Second))
		if err != nil {
			return err
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer cons.Close()
			if err := cons.Consume(runCtx, h); err != nil {
				errMu.Lock()
				consumeErr = errors.Join(consumeErr, err)
				errMu.Unlock()
				stop()
			}
		}()
		return nil
	}
	inv, err := d.stack(c, "inventory", logger, mq.HandlerFunc(d.inventory(c.Producer())))
	if err != nil {
		return err
	}
	not, err := d.stack(c, "notifier", logger, mq.HandlerFunc(d.notifier))
	if err != nil {
		return err
	}
	if err := start1(d.orders, "inventory", 8, inv); err != nil {
		return err
	}
	if err := start1(d.notifications, "notifier", 4, not); err != nil {
		stop()
		wg.Wait()
		return err
	}

	// Place orders while the pipeline runs, and watch it settle.
	const dups = 2
	batches := d.plan(n, dups)
	placeErr := make(chan error, 1)
	go func() { placeErr <- d.place(runCtx, c.Producer(), batches) }()
	waitErr := d.waitSettled(runCtx, n, n+dups, placeErr)
	stop()
	wg.Wait()
	if consumeErr != nil {
		return consumeErr
	}
	if waitErr != nil {
		d.summary(n, dups, time.Since(start))
		return waitErr
	}

	// Look into the dead-letter topic through the same API as "mq dlq list".
	letters, err := dlq.List(ctx, c, dlq.DefaultTopic(d.orders), 0, dlq.WithIdle(200*time.Millisecond))
	if err != nil {
		return err
	}
	d.out.printf("%s holds %d dead letter(s):\n", dlq.DefaultTopic(d.orders), len(letters))
	for _, m := range letters {
		info := dlq.Describe(m)
		d.out.printf("  %s reason=%s attempts=%d error=%q\n", m.ID, info.Reason, info.Attempts, info.Error)
	}
	ok := d.summary(n, dups, time.Since(start))
	d.mu.Lock()
	deadOrders := len(d.dead)
	d.mu.Unlock()
	if len(letters) != deadOrders {
		return fmt.Errorf("%s holds %d dead letters, but %d orders were dead-lettered", dlq.DefaultTopic(d.orders), len(letters), deadOrders)
	}
	if !ok {
		return errors.New("some orders are not accounted for")
	}
	return nil
}

// stack wraps h in the full middleware stack of one pipeline step.
func (d *demoRun) stack(c *mq.Client, group string, logger *slog.Logger, h mq.Handler) (mq.Handler, error) {
	deadLetter, err := dlq.New(dlq.Config{
		Producer:    c.Producer(),
		Group:       group,
		MaxAttempts: 10,
		Logger:      logger,
		OnDeadLetter: func(ctx context.Context, dead *mq.Message, cause error) {
			if r, ok := ctx.Value(deliveryKey{}).(*delivery); ok {
				r.dead = true
			}
			src := dead.Header(dlq.HeaderTopic)
			d.mu.Lock()
			d.deadN[src]++
			if src == d.orders {
				d.dead[dead.ID] = true
			}
			d.mu.Unlock()
			d.out.printf("  dlq       %-17s -> %s (%s): %v\n", dead.ID, dlq.DefaultTopic(src), dead.Header(dlq.HeaderReason), cause)
		},
	})
	if err != nil {
		return nil, err
	}
	dedup, err := idempotency.New(idempotency.NewMemoryStore(idempotency.MemoryStoreConfig{}), idempotency.Config{Namespace: group, Logger: logger})
	if err != nil {
		return nil, err
	}
	stack := middleware.Stack(middleware.StackConfig{
		DeadLetter: deadLetter,
		Retry: middleware.RetryConfig{
			MaxAttempts:     4,
			InitialInterval: 5 * time.Millisecond,
			MaxInterval:     50 * time.Millisecond,
			OnRetry: func(_ context.Context, m *mq.Message, err error, wait time.Duration) {
				d.mu.Lock()
				if group == "inventory" {
					d.retries++
				} else {
					d.nretries++
				}
				d.mu.Unlock()
				d.out.printf("  retry     %-17s %s: %v (attempt %d, again in %v)\n", m.ID, group, err, m.Attempt, wait.Round(time.Millisecond))
			},
		},
		Timeout: 2 * time.Second,
		Dedup:   dedup,
	})
	// The outermost layer sees each delivery's outcome; the innermost
	// notes that the handler ran to completion.
	ran := func(next mq.Handler) mq.Handler {
		return mq.HandlerFunc(func(ctx context.Context, m *mq.Message) error {
			err := next.Handle(ctx, m)
			if r, ok := ctx.Value(deliveryKey{}).(*delivery); ok && err == nil {
				r.ran = true
			}
			return err
		})
	}
	observe := func(next mq.Handler) mq.Handler {
		return mq.HandlerFunc(func(ctx context.Context, m *mq.Message) error {
			r := &delivery{}
			err := next.Handle(context.WithValue(ctx, deliveryKey{}, r), m)
			if err != nil {
				return err
			}
			d.mu.Lock()
			d.acked[m.Topic]++
			if !r.ran && !r.dead {
				d.skipped++
			}
			d.mu.Unlock()
			if !r.ran && !r.dead {
				d.out.printf("  duplicate %-17s %s: already processed, skipped and acknowledged\n", m.ID, group)
			}
			return nil
		})
	}
	return mq.Chain(h, observe, stack, ran), nil
}

// failures returns how many times a step fails for an ID before it works:
// the same for a seed, whatever the order of events.
func (d *demoRun) failures(step, id string, pctOnce, pctTwice uint64) int {
	h := fnv.New64a()
	fmt.Fprintf(h, "%d/%s/%s", d.seed, step, id)
	switch r := h.Sum64() % 100; {
	case r < pctTwice:
		return 2
	case r < pctTwice+pctOnce:
		return 1
	}
	return 0
}

// inventory reserves stock for an order, then asks for a notification.
func (d *demoRun) inventory(p mq.Producer) func(ctx context.Context, m *mq.Message) error {
	return func(ctx context.Context, m *mq.Message) error {
		var o order
		if err := json.Unmarshal(m.Body, &o); err != nil {
			return mq.Permanent(fmt.Errorf("inventory: bad order: %w", err))
		}
		d.mu.Lock()
		d.invRuns[o.ID]++
		run := d.invRuns[o.ID]
		d.mu.Unlock()
		if err := work(ctx); err != nil {
			return err
		}
		if o.SKU == poisonSKU {
			return errWarehouseBroken
		}
		if run <= d.failures("inventory", o.ID, 6, 2) {
			return errWarehouseTimeout
		}
		note := &mq.Message{
			// A deterministic ID: if this step ran twice, the notifier
			// would skip the second notification.
			ID:   "notify-" + o.ID,
			Key:  o.Customer,
			Body: fmt.Appendf(nil, "Dear %s, your order %s (%d × %s) is on its way.", o.Customer, o.ID, o.Qty, o.SKU),
		}
		if err := p.Produce(ctx, d.notifications, note); err != nil {
			return err
		}
		d.mu.Lock()
		d.invDone[o.ID]++
		d.mu.Unlock()
		return nil
	}
}

// notifier "sends" the notification e-mail.
func (d *demoRun) notifier(ctx context.Context, m *mq.Message) error {
	d.mu.Lock()
	d.notRuns[m.ID]++
	run := d.notRuns[m.ID]
	d.mu.Unlock()
	if err := work(ctx); err != nil {
		return err
	}
	if run <= d.failures("notifier", m.ID, 4, 0) {
		return errMailBusy
	}
	d.mu.Lock()
	d.sent[m.ID]++
	d.mu.Unlock()
	return nil
}

// work stands for a call to another service: a millisecond or two.
func work(ctx context.Context) error {
	t := time.NewTimer(time.Duration(500+rand.IntN(1500)) * time.Microsecond)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// plan makes n orders in batches of ten, as a shop's checkout would send
// them, with dups of them sent a second time and one poison order.
func (d *demoRun) plan(n, dups int) [][]*mq.Message {
	rng := rand.New(rand.NewPCG(d.seed, 0x6f72646572))
	poison := 1 + rng.IntN(n-1)
	dupOf := map[int]int{} // position -> order index to send again there
	for len(dupOf) < dups {
		i := rng.IntN(n)
		if i != poison && i < n-1 {
			dupOf[i+1+rng.IntN(n-1-i)] = i
		}
	}
	d.out.printf("placing %d orders: %d will be delivered twice, and order-%04d is a poison order\n", n, dups, poison+1)
	mk := func(i int) *mq.Message {
		o := order{
			ID:       fmt.Sprintf("order-%04d", i+1),
			Customer: fmt.Sprintf("cust-%02d", 1+rng.IntN(25)),
			SKU:      fmt.Sprintf("SKU-%d", 100+rng.IntN(40)),
			Qty:      1 + rng.IntN(4),
		}
		if i == poison {
			o.SKU = poisonSKU
		}
		o.TotalCents = o.Qty * (499 + 100*rng.IntN(50))
		b, _ := json.Marshal(o) // cannot fail: plain fields
		return &mq.Message{ID: o.ID, Key: o.Customer, Body: b, Headers: map[string]string{"type": "order.created"}}
	}
	const batch = 10
	orders := make([]*mq.Message, n)
	var out [][]*mq.Message
	for i := 0; i < n; i += batch {
		var msgs []*mq.Message
		for j := i; j < min(i+batch, n); j++ {
			orders[j] = mk(j)
			msgs = append(msgs, orders[j])
			if k, ok := dupOf[j]; ok {
				// The same order again, same ID: what a producer retrying
				// after a lost acknowledgement sends.
				msgs = append(msgs, orders[k].Clone())
			}
		}
		out = append(out, msgs)
	}
	return out
}

// place produces the batches, pausing between them.
func (d *demoRun) place(ctx context.Context, p mq.Producer, batches [][]*mq.Message) error {
	n := 0
	for _, msgs := range batches {
		if err := p.Produce(ctx, d.orders, msgs...); err != nil {
			return fmt.Errorf("placing orders: %w", err)
		}
		n += len(msgs)
		select {
		case <-time.After(40 * time.Millisecond):
		case <-ctx.Done():
			return nil
		}
	}
	d.out.printf("all orders placed (%d messages)\n", n)
	return nil
}

// waitSettled waits until every delivery produced was acknowledged,
// printing progress, or gives up after a minute without progress or when
// placing the orders failed.
func (d *demoRun) waitSettled(ctx context.Context, orders, orderDeliveries int, placeErr <-chan error) error {
	tick := time.NewTicker(25 * time.Millisecond)
	defer tick.Stop()
	lastShown, lastChange, lastCount := -1, time.Now(), -1
	for {
		d.mu.Lock()
		settledOrders := len(d.dead)
		for _, c := range d.invDone {
			if c > 0 {
				settledOrders++
			}
		}
		ordersAcked := d.acked[d.orders]
		notesAcked := d.acked[d.notifications]
		notesWanted := len(d.invDone)
		d.mu.Unlock()
		if step := settledOrders * 10 / orders; step > lastShown {
			lastShown = step
			d.out.printf("  progress  [%-10s] %d/%d orders settled\n", strings.Repeat("#", step), settledOrders, orders)
		}
		if ordersAcked >= orderDeliveries && settledOrders == orders && notesAcked >= notesWanted {
			return nil
		}
		if n := ordersAcked + notesAcked; n != lastCount {
			lastCount, lastChange = n, time.Now()
		} else if time.Since(lastChange) > time.Minute {
			return fmt.Errorf("no progress for a minute: %d of %d order deliveries and %d of %d notifications settled", ordersAcked, orderDeliveries, notesAcked, notesWanted)
		}
		select {
		case <-tick.C:
		case err := <-placeErr:
			if err != nil {
				return err
			}
		case <-ctx.Done():
			return fmt.Errorf("interrupted: %w", ctx.Err())
		}
	}
}

// summary prints the totals and the check line, and reports whether every
// order is accounted for.
func (d *demoRun) summary(placed, dups int, took time.Duration) bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	processed, twice := 0, 0
	for _, c := range d.invDone {
		if c > 0 {
			processed++
		}
		if c > 1 {
			twice++
		}
	}
	sent, sentTwice := 0, 0
	for _, c := range d.sent {
		if c > 0 {
			sent++
		}
		if c > 1 {
			sentTwice++
		}
	}
	dead := len(d.dead)
	lost := placed - processed - dead
	d.out.printf("summary (%v)\n", took.Round(time.Millisecond))
	d.out.printf("  orders placed        %5d  (+%d duplicate deliveries)\n", placed, dups)
	d.out.printf("  processed            %5d\n", processed)
	d.out.printf("  retried              %5d  (%d inventory, %d notifier)\n", d.retries+d.nretries, d.retries, d.nretries)
	d.out.printf("  duplicates skipped   %5d\n", d.skipped)
	d.out.printf("  dead-lettered        %5d  (%s; %d notifications in %s)\n", dead, dlq.DefaultTopic(d.orders), d.deadN[d.notifications], dlq.DefaultTopic(d.notifications))
	d.out.printf("  notifications sent   %5d\n", sent)
	ok := lost == 0 && twice == 0 && sentTwice == 0 && sent+d.deadN[d.notifications] == processed
	verdict := "OK"
	if !ok {
		verdict = "FAILED"
	}
	d.out.printf("check: processed %d + dead-lettered %d = %d of %d placed: %d lost, %d processed twice, %d notified twice, %d of %d notified: %s\n",
		processed, dead, processed+dead, placed, lost, twice, sentTwice, sent, processed, verdict)
	return ok
}

// lineWriter writes whole lines from many goroutines.
type lineWriter struct {
	mu sync.Mutex
	w  io.Writer
}

func (l *lineWriter) printf(format string, args ...any) {
	l.mu.Lock()
	defer l.mu.Unlock()
	fmt.Fprintf(l.w, format, args...)
}
