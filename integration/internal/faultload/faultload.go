// Package faultload is the steady workload of the fault tests: a producer
// and a consumer group run against one broker while a test injects faults
// (kill a node, restart, pause, fail over); every confirmed message ID is
// in a ledger, and each fault reports confirmed, handled, lost,
// duplicates, how long producing and consuming stalled, and key-order
// violations.
//
// With MQ_REPORT_DIR set, Finish appends its rows to a markdown table in
// that directory (scripts/test.sh prints the tables at the end of a run).
package faultload

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/mqkit/mq"
)

// seqHeader carries a message's position in its key's sequence, so that
// the consumer side can tell an order violation.
const seqHeader = "x-test-seq"

// Options shape the steady workload; zero values take the defaults.
// Report names the table Finish appends to in MQ_REPORT_DIR ("faults").
type Options struct {
	Batch        int           // messages per Produce call (10)
	Keys         int           // distinct keys (50)
	ProduceEvery time.Duration // pause between confirmed batches (10 ms)
	TryTimeout   time.Duration // bound of one Produce attempt (10 s)
	Concurrency  int           // consumer handler concurrency (8)
	Group        string        // consumer group ("g")
	Settle       time.Duration // steady load before and after each fault (3 s)
	Resume       time.Duration // how long a fault may stall producing or consuming (2 min)
	Drain        time.Duration // how long Finish waits for every confirmed message (2 min)
	Report       string        // table name in MQ_REPORT_DIR: Report + ".md" ("faults")
	// OrderReported makes key-order violations a reported figure instead
	// of a failure even where no loss is allowed: for a broker that, after
	// a failover, redelivers a lost consumer's messages out of order,
	// which the SDK cannot undo (a documented limit).
	OrderReported bool
}

func (o *Options) defaults() {
	set := func(p *int, v int) {
		if *p <= 0 {
			*p = v
		}
	}
	setD := func(p *time.Duration, v time.Duration) {
		if *p <= 0 {
			*p = v
		}
	}
	set(&o.Batch, 10)
	set(&o.Keys, 50)
	set(&o.Concurrency, 8)
	setD(&o.ProduceEvery, 10*time.Millisecond)
	setD(&o.TryTimeout, 10*time.Second)
	setD(&o.Settle, 3*time.Second)
	setD(&o.Resume, 2*time.Minute)
	setD(&o.Drain, 2*time.Minute)
	if o.Group == "" {
		o.Group = "g"
	}
	if o.Report == "" {
		o.Report = "faults"
	}
}

// record is one produced message in the ledger.
type record struct {
	phase     int // the fault during which it was confirmed
	confirmed bool
}

// phase is one fault: from the moment it was injected until the next one.
type phase struct {
	name                     string
	start, end               time.Time // start: fault injected; end: fault function returned
	produceStall, consumeGap time.Duration
	produceErrors            int
}

// Load is a producer and a consumer group running against one URL while
// faults happen, counting every message by ID.
type Load struct {
	t     *testing.T
	opts  Options
	topic string

	mu         sync.Mutex
	msgs       map[string]*record
	handled    map[string]int
	lastSeq    map[string]int // per key: highest sequence handled so far
	violations map[string]bool
	phases     []*phase
	confirms   []time.Time // one per confirmed batch
	firsts     []time.Time // one per first handling of a message
	produceErr error       // the last produce error, for the log

	stopProduce context.CancelFunc
	produced    chan struct{}
	stopConsume context.CancelFunc
	consumed    chan error
}

// Start opens a producer client and a consumer client on rawURL and
// starts producing to topic and consuming it in one group. The clients
// close when the test ends.
func Start(t *testing.T, rawURL, topic string, opts Options) *Load {
	t.Helper()
	return StartOn(t, Open(t, rawURL), Open(t, rawURL), topic, opts)
}

// StartOn is Start on clients of the caller's.
func StartOn(t *testing.T, prod, cons *mq.Client, topic string, opts Options) *Load {
	t.Helper()
	opts.defaults()
	w := &Load{
		t: t, opts: opts, topic: topic,
		msgs: map[string]*record{}, handled: map[string]int{},
		lastSeq: map[string]int{}, violations: map[string]bool{},
		phases: []*phase{{name: "steady", start: time.Now()}},
	}
	ctx := context.Background()
	consumer, err := cons.Consumer(ctx, topic, mq.WithGroup(opts.Group), mq.WithConcurrency(opts.Concurrency))
	if err != nil {
		t.Fatalf("consumer: %v", err)
	}
	cctx, stopConsume := context.WithCancel(ctx)
	w.stopConsume, w.consumed = stopConsume, make(chan error, 1)
	go func() { w.consumed <- consumer.Consume(cctx, mq.HandlerFunc(w.handle)) }()

	pctx, stopProduce := context.WithCancel(ctx)
	w.stopProduce, w.produced = stopProduce, make(chan struct{})
	go func() { defer close(w.produced); w.produce(pctx, prod.Producer()) }()
	t.Cleanup(func() {
		stopProduce()
		<-w.produced
		stopConsume()
		<-w.consumed
	})
	// Wait for the first round trip so that faults hit a running pipeline.
	w.waitResumed(t, time.Now().Add(-time.Hour), time.Minute, "start")
	time.Sleep(opts.Settle)
	return w
}

// Open opens a client of rawURL for a test, bounded by a minute, failing
// t (the URL redacted) if it cannot, and closes it when the test ends.
func Open(t testing.TB, rawURL string) *mq.Client {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	c, err := mq.Open(ctx, rawURL)
	if err != nil {
		t.Fatalf("open %s: %v", mq.RedactURL(rawURL), err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}

// produce sends batches until ctx ends; a batch that fails is sent again
// with the same IDs until it is confirmed, and only then counts.
func (w *Load) produce(ctx context.Context, p mq.Producer) {
	seq := make([]int, w.opts.Keys)
	for n := 0; ctx.Err() == nil; {
		batch := make([]*mq.Message, w.opts.Batch)
		for j := range batch {
			k := n % w.opts.Keys
			seq[k]++
			n++
			batch[j] = &mq.Message{
				ID:      mq.NewID(),
				Key:     "k" + strconv.Itoa(k),
				Headers: map[string]string{seqHeader: strconv.Itoa(seq[k])},
				Body:    []byte(fmt.Sprintf("message %d of key %d", seq[k], k)),
			}
		}
		for ctx.Err() == nil {
			tctx, cancel := context.WithTimeout(context.Background(), w.opts.TryTimeout)
			err := p.Produce(tctx, w.topic, batch...)
			cancel()
			now := time.Now()
			w.mu.Lock()
			cur := len(w.phases) - 1
			if err == nil {
				for _, m := range batch {
					w.msgs[m.ID] = &record{phase: cur, confirmed: true}
				}
				w.confirms = append(w.confirms, now)
			} else {
				w.phases[cur].produceErrors++
				w.produceErr = err
			}
			w.mu.Unlock()
			if err == nil {
				break
			}
			time.Sleep(200 * time.Millisecond)
		}
		time.Sleep(w.opts.ProduceEvery)
	}
}

func (w *Load) handle(_ context.Context, m *mq.Message) error {
	seq, _ := strconv.Atoi(m.Headers[seqHeader])
	w.mu.Lock()
	defer w.mu.Unlock()
	w.handled[m.ID]++
	if w.handled[m.ID] > 1 {
		return nil // a duplicate: not a new position in its key
	}
	w.firsts = append(w.firsts, time.Now())
	if seq < w.lastSeq[m.Key] {
		w.violations[m.ID] = true
	} else {
		w.lastSeq[m.Key] = seq
	}
	return nil
}

// Fault runs fn (inject a fault and, usually, repair it) as a new phase,
// then waits until producing and consuming both went on after fn returned,
// and records how long each stalled from the moment fn started.
func (w *Load) Fault(t *testing.T, name string, fn func(ctx context.Context) error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	p := &phase{name: name, start: time.Now()}
	w.mu.Lock()
	if len(w.phases) == 1 && w.phases[0].name == "steady" {
		// What was confirmed before the first fault belongs to it.
		w.phases[0] = p
	} else {
		w.phases = append(w.phases, p)
	}
	w.mu.Unlock()
	if err := fn(ctx); err != nil {
		t.Fatalf("fault %q: %v", name, err)
	}
	p.end = time.Now()
	w.waitResumed(t, p.end, w.opts.Resume, name)
	time.Sleep(w.opts.Settle)
	w.mu.Lock()
	p.produceStall = longestGap(w.confirms, p.start, time.Now())
	p.consumeGap = longestGap(w.firsts, p.start, time.Now())
	c, h := len(w.msgs), len(w.handled)
	w.mu.Unlock()
	t.Logf("fault %q: injected and repaired in %.1fs; produce stalled %.1fs, consume %.1fs (so far confirmed %d, handled %d)",
		name, p.end.Sub(p.start).Seconds(), p.produceStall.Seconds(), p.consumeGap.Seconds(), c, h)
}

// waitResumed waits until a batch was confirmed and a message handled for
// the first time after since, failing t after within.
func (w *Load) waitResumed(t *testing.T, since time.Time, within time.Duration, what string) {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		w.mu.Lock()
		ok := after(w.confirms, since) && after(w.firsts, since)
		err := w.produceErr
		w.mu.Unlock()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: producing or consuming did not resume within %s (last produce error: %v)", what, within, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func after(ts []time.Time, since time.Time) bool {
	return len(ts) > 0 && ts[len(ts)-1].After(since)
}

// longestGap is the longest time in [from, to] without an event of ts
// (sorted), counting from from to the first event and from the last one to
// to.
func longestGap(ts []time.Time, from, to time.Time) time.Duration {
	prev, longest := from, time.Duration(0)
	for _, e := range ts {
		if e.Before(from) {
			continue
		}
		if e.After(to) {
			break
		}
		longest = max(longest, e.Sub(prev))
		prev = e
	}
	return max(longest, to.Sub(prev))
}

// Row is what one fault did to the messages confirmed while it lasted
// (from its injection until the next fault, the first fault also owning
// the warm-up before it).
type Row struct {
	Broker, Setting, Fault string
	Confirmed              int // produced and acknowledged by the broker
	Handled                int // of those, handled at least once
	Lost                   int // confirmed, never handled
	Duplicates             int // handlings beyond the first
	OrderViolations        int // handled first after a later message of the same key
	// ProduceStall and ConsumeStall are the longest times without a
	// confirmed batch, and without a first handling, from the injection
	// until both went on after the repair (plus the settle time).
	ProduceStall, ConsumeStall time.Duration
	ProduceErrors              int // failed Produce attempts (retried with the same IDs)
}

// Finish stops producing, waits until every confirmed message was handled
// (or Drain passes), stops consuming and reports one row per fault. With
// expectNoLoss a lost message or a key-order violation fails the test;
// without it (a setting documented as unsafe) they are reported, not
// hidden.
func (w *Load) Finish(t *testing.T, broker, setting string, expectNoLoss bool) []Row {
	t.Helper()
	w.stopProduce()
	<-w.produced
	deadline := time.Now().Add(w.opts.Drain)
	for {
		w.mu.Lock()
		missing := 0
		for id := range w.msgs {
			if w.handled[id] == 0 {
				missing++
			}
		}
		w.mu.Unlock()
		if missing == 0 || time.Now().After(deadline) {
			break
		}
		time.Sleep(250 * time.Millisecond)
	}
	// A little longer, so that late duplicates are counted too.
	time.Sleep(time.Second)
	w.stopConsume()
	if err := <-w.consumed; err != nil {
		t.Errorf("Consume: %v", err)
	}
	w.consumed <- nil // for the cleanup's receive

	w.mu.Lock()
	defer w.mu.Unlock()
	rows := make([]Row, len(w.phases))
	for i, p := range w.phases {
		rows[i] = Row{Broker: broker, Setting: setting, Fault: p.name, ProduceStall: p.produceStall, ConsumeStall: p.consumeGap, ProduceErrors: p.produceErrors}
	}
	for id, r := range w.msgs {
		row := &rows[r.phase]
		row.Confirmed++
		n := w.handled[id]
		if n == 0 {
			row.Lost++
			continue
		}
		row.Handled++
		row.Duplicates += n - 1
		if w.violations[id] {
			row.OrderViolations++
		}
	}
	lost := 0
	for _, r := range rows {
		lost += r.Lost
		t.Logf("%s | %s | %s: confirmed %d, handled %d, lost %d, duplicates %d, produce stall %.1fs, consume stall %.1fs, order violations %d, produce errors %d",
			r.Broker, r.Setting, r.Fault, r.Confirmed, r.Handled, r.Lost, r.Duplicates, r.ProduceStall.Seconds(), r.ConsumeStall.Seconds(), r.OrderViolations, r.ProduceErrors)
	}
	report(t, w.opts.Report, rows)
	violations := 0
	for _, r := range rows {
		violations += r.OrderViolations
	}
	if expectNoLoss && lost > 0 {
		t.Errorf("%s (%s): %d confirmed messages were never handled; this setting is documented as safe", broker, setting, lost)
	}
	if expectNoLoss && violations > 0 && !w.opts.OrderReported {
		t.Errorf("%s (%s): %d messages were handled after a later message of their key; per-key order is part of the contract", broker, setting, violations)
	}
	return rows
}

var reportMu sync.Mutex

// report appends rows to $MQ_REPORT_DIR/<name>.md when MQ_REPORT_DIR is
// set, with the table's header when the file is new.
func report(t *testing.T, name string, rows []Row) {
	dir := os.Getenv("MQ_REPORT_DIR")
	if dir == "" {
		return
	}
	reportMu.Lock()
	defer reportMu.Unlock()
	path := filepath.Join(dir, name+".md")
	_, statErr := os.Stat(path)
	f, err := os.OpenFile(path, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
	if err != nil {
		t.Logf("report: %v", err)
		return
	}
	defer func() { _ = f.Close() }()
	if os.IsNotExist(statErr) {
		fmt.Fprintln(f, "| broker | setting | fault | confirmed | handled | lost | duplicates | produce stall s | consume stall s | order violations |")
		fmt.Fprintln(f, "|---|---|---|--:|--:|--:|--:|--:|--:|--:|")
	}
	for _, r := range rows {
		fmt.Fprintf(f, "| %s | %s | %s | %d | %d | %d | %d | %.1f | %.1f | %d |\n",
			r.Broker, r.Setting, r.Fault, r.Confirmed, r.Handled, r.Lost, r.Duplicates, r.ProduceStall.Seconds(), r.ConsumeStall.Seconds(), r.OrderViolations)
	}
}
