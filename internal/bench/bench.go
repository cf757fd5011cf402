// Package bench runs a messaging workload through the mqkit SDK and, for
// comparison, through the bare broker drivers (sarama, amqp091-go,
// go-redis) written the way an expert would write them with the same
// durability, and reports throughput, latency and memory. It backs the
// "mq bench" command and the Watermill comparison in the benchcmp module.
//
// A workload produces Workload.Messages messages of Workload.Size bytes
// from Workload.Producers goroutines in batches of Workload.Batch, and
// consumes them as one consumer group at handler concurrency
// Workload.Concurrency. Every body starts with the time its Produce call
// began and a sequence number, so the consumer measures end-to-end latency
// and counts each message once (duplicates are counted apart).
//
// Throughput of a consume phase is measured from the first message handled
// to the last, so the time a consumer takes to join its group is not
// counted against any system. Memory is sampled from runtime.MemStats
// during each phase, and the process's peak resident set (VmHWM, reset at
// the start of each phase where the kernel allows) is read from
// /proc/self/status.
package bench

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Message is one message of the workload as a System sends it.
type Message struct {
	// Key orders the message; empty when the workload has no keys.
	Key string
	// Body holds the produce time and sequence number, then filler.
	// Produce must not keep it after it returns.
	Body []byte
}

// Handler is what a Session calls for every message it consumes, from
// up to the workload's concurrency goroutines at once. body must not be
// used after it returns.
type Handler func(key string, body []byte)

// Setup names what a Session works on.
type Setup struct {
	// Topic is a new, unique topic name.
	Topic string
	// Group is the consumer group.
	Group string
	// Concurrency is the handler concurrency of the consumer.
	Concurrency int
	// Messages is how many messages will be produced before consuming
	// starts (at most), for backends with bounded buffers.
	Messages int
}

// A System is one way of talking to a broker: the SDK, a bare driver or
// another library.
type System interface {
	// Name is a short label for tables: "sdk", "bare", "watermill".
	Name() string
	// Open connects and prepares a topic and consumer group, so that
	// messages produced from then on are kept for the group.
	Open(ctx context.Context, s Setup) (Session, error)
}

// A Session produces to and consumes from one topic.
type Session interface {
	// Produce sends msgs and returns after the broker durably accepted
	// all of them. It is called from many goroutines at once.
	Produce(ctx context.Context, msgs []Message) error
	// Consume consumes the topic as the group, calling h for every
	// message, until ctx is done; it returns after its handlers have
	// finished.
	Consume(ctx context.Context, h Handler) error
	// Close releases the session.
	Close() error
}

// Mode selects the phases of a run.
type Mode string

// The modes of Run.
const (
	// ModeProduce produces the messages and stops.
	ModeProduce Mode = "produce"
	// ModeConsume produces the messages, then consumes them: both phases
	// are reported.
	ModeConsume Mode = "consume"
	// ModeMixed produces and consumes at the same time: the phase ends
	// when every message was handled. Its latency is end to end.
	ModeMixed Mode = "mixed"
	// ModeAll is ModeConsume and then ModeMixed on a new topic.
	ModeAll Mode = "all"
)

// ParseMode returns the Mode named s.
func ParseMode(s string) (Mode, error) {
	switch m := Mode(s); m {
	case ModeProduce, ModeConsume, ModeMixed, ModeAll:
		return m, nil
	}
	return "", fmt.Errorf("bench: unknown mode %q (want produce, consume, mixed or all)", s)
}

// Workload describes what a run does. The zero value of a field means its
// default.
type Workload struct {
	// Messages each phase produces and consumes. Default 100000.
	Messages int
	// Size of each body in bytes, at least 16. Default 1024.
	Size int
	// Producers is how many goroutines call Produce at once. Default 4.
	Producers int
	// Batch is how many messages go into one Produce call. Default 100.
	Batch int
	// Concurrency is the consumer's handler concurrency. Default 32.
	Concurrency int
	// Keys is how many distinct keys the messages cycle through. Default
	// 1000.
	Keys int
	// DisableKeys sends messages without keys (no ordering).
	DisableKeys bool
	// HandlerSleep is how long the handler sleeps per message, standing
	// in for work. Default 0.
	HandlerSleep time.Duration
	// Timeout bounds each phase. Default 5 minutes.
	Timeout time.Duration
	// Progress, when set, receives a progress line about once a second,
	// rewritten in place with a carriage return.
	Progress io.Writer
	// PhaseHook, when set, is called as each measured phase starts
	// (start true) and ends, for example to profile one phase at a time.
	PhaseHook func(system string, p Phase, start bool)
}

// Defaults returns w with every zero field set to its default.
func (w Workload) Defaults() Workload {
	def := func(v *int, d int) {
		if *v == 0 {
			*v = d
		}
	}
	def(&w.Messages, 100000)
	def(&w.Size, 1024)
	def(&w.Producers, 4)
	def(&w.Batch, 100)
	def(&w.Concurrency, 32)
	def(&w.Keys, 1000)
	if w.Timeout == 0 {
		w.Timeout = 5 * time.Minute
	}
	return w
}

// Validate reports a workload that cannot run.
func (w Workload) Validate() error {
	switch {
	case w.Messages < 1:
		return fmt.Errorf("bench: messages must be at least 1, got %d", w.Messages)
	case w.Size < stampSize:
		return fmt.Errorf("bench: size must be at least %d bytes (the body carries a timestamp and a sequence number), got %d", stampSize, w.Size)
	case w.Producers < 1, w.Batch < 1, w.Concurrency < 1, w.Keys < 1:
		return fmt.Errorf("bench: producers, batch, concurrency and keys must be at least 1 (got %d, %d, %d, %d)", w.Producers, w.Batch, w.Concurrency, w.Keys)
	case w.HandlerSleep < 0 || w.Timeout < 0:
		return errors.New("bench: handler sleep and timeout must not be negative")
	}
	return nil
}

// Phase names a measured part of a run.
type Phase string

// The phases a Result reports.
const (
	PhaseProduce Phase = "produce"
	PhaseConsume Phase = "consume"
	PhaseMixed   Phase = "mixed"
)

// Result is what one phase measured.
type Result struct {
	// Workload names the suite row the result belongs to (Row.Name);
	// empty outside a suite.
	Workload string
	// System is the System's name.
	System string
	// Phase is what was measured.
	Phase Phase
	// Messages handled (consume, mixed) or produced (produce), each
	// counted once.
	Messages int
	// Bytes of bodies in Messages.
	Bytes int64
	// Elapsed is the measured time: for produce, the first Produce call
	// to the last return; for consume, the first message handled to the
	// last; for mixed, the first Produce call to the last message handled.
	Elapsed time.Duration
	// MsgsPerSec and MBPerSec are Messages and Bytes (MB = 10^6 bytes)
	// over Elapsed.
	MsgsPerSec, MBPerSec float64
	// P50 and P99 latency: of a Produce call of one batch (produce), end
	// to end from the Produce call to the end of the handler (mixed).
	// Zero for consume, where messages waited for the phase to start.
	P50, P99 time.Duration
	// Duplicates counts messages handled more than once.
	Duplicates int
	// PeakHeapInuse and PeakSys are the highest runtime.MemStats
	// HeapInuse and Sys sampled during the phase, in bytes.
	PeakHeapInuse, PeakSys uint64
	// PeakRSS is the process's VmHWM at the end of the phase, in bytes:
	// the peak of the phase if the kernel let it be reset at its start
	// (RSSReset), else the peak of the process so far.
	PeakRSS uint64
	// RSSReset reports whether VmHWM was reset at the phase's start, so
	// that PeakRSS is the phase's own peak.
	RSSReset bool
	// CPU is the user plus system CPU time the whole process used during
	// the phase (getrusage RUSAGE_SELF before and after it): with the
	// broker in another process, the client's CPU. It spans the whole
	// phase, including a consumer's joining its group and stopping, and
	// also counts the benchmark's own work (stamping and checking
	// bodies), the same for every system. Zero where it cannot be read.
	CPU time.Duration
}

// CPUPer100k returns CPU seconds per 100,000 messages, or 0 when CPU or
// Messages is zero.
func (r Result) CPUPer100k() float64 {
	if r.CPU <= 0 || r.Messages <= 0 {
		return 0
	}
	return r.CPU.Seconds() * 1e5 / float64(r.Messages)
}

// stampSize is the bytes at the start of each body: produce time in Unix
// nanoseconds and sequence number, little-endian.
const stampSize = 16

// NewTopic returns a unique topic name for a run.
func NewTopic(system string) string {
	var b [4]byte
	_, _ = rand.Read(b[:])
	return "bench-" + system + "-" + strconv.FormatInt(time.Now().UnixMilli(), 36) + "-" + hex.EncodeToString(b[:])
}

// Run runs mode's phases of w through sys on new topics and returns a
// Result per phase.
func Run(ctx context.Context, sys System, w Workload, mode Mode) ([]Result, error) {
	w = w.Defaults()
	if err := w.Validate(); err != nil {
		return nil, err
	}
	switch mode {
	case ModeProduce, ModeConsume:
		return runSequential(ctx, sys, w, mode == ModeConsume)
	case ModeMixed:
		r, err := runMixed(ctx, sys, w)
		if err != nil {
			return nil, err
		}
		return []Result{r}, nil
	case ModeAll:
		rs, err := runSequential(ctx, sys, w, true)
		if err != nil {
			return rs, err
		}
		r, err := runMixed(ctx, sys, w)
		if err != nil {
			return rs, err
		}
		return append(rs, r), nil
	}
	return nil, fmt.Errorf("bench: unknown mode %q", mode)
}

func open(ctx context.Context, sys System, w Workload) (Session, error) {
	topic := NewTopic(sys.Name())
	s, err := sys.Open(ctx, Setup{Topic: topic, Group: topic + "-g", Concurrency: w.Concurrency, Messages: w.Messages})
	if err != nil {
		return nil, fmt.Errorf("bench: %s: open: %w", sys.Name(), err)
	}
	return s, nil
}

func runSequential(ctx context.Context, sys System, w Workload, consume bool) ([]Result, error) {
	sess, err := open(ctx, sys, w)
	if err != nil {
		return nil, err
	}
	defer func() { _ = sess.Close() }()

	pr := newRecorder(sys.Name(), PhaseProduce, w)
	pctx, cancel := context.WithTimeout(ctx, w.Timeout)
	err = pr.measure(pctx, func(ctx context.Context) error { return produceAll(ctx, sess, w, pr) })
	cancel()
	if err != nil {
		return nil, fmt.Errorf("bench: %s: produce: %w", sys.Name(), err)
	}
	res := []Result{pr.result()}
	if !consume {
		return res, nil
	}
	cr := newRecorder(sys.Name(), PhaseConsume, w)
	cctx, cancel := context.WithTimeout(ctx, w.Timeout)
	err = cr.measure(cctx, func(ctx context.Context) error { return consumeAll(ctx, sess, w, cr) })
	cancel()
	if err != nil {
		return res, fmt.Errorf("bench: %s: consume: %w", sys.Name(), err)
	}
	return append(res, cr.result()), nil
}

func runMixed(ctx context.Context, sys System, w Workload) (Result, error) {
	sess, err := open(ctx, sys, w)
	if err != nil {
		return Result{}, err
	}
	defer func() { _ = sess.Close() }()
	r := newRecorder(sys.Name(), PhaseMixed, w)
	mctx, cancel := context.WithTimeout(ctx, w.Timeout)
	defer cancel()
	err = r.measure(mctx, func(ctx context.Context) error {
		ctx, cancel := context.WithCancel(ctx)
		defer cancel()
		var wg sync.WaitGroup
		var perr error
		wg.Add(1)
		go func() {
			defer wg.Done()
			// Producing stops early only when consuming failed.
			if err := produceAll(ctx, sess, w, nil); err != nil && ctx.Err() == nil {
				perr = err
				cancel()
			}
		}()
		r.start.Store(time.Now().UnixNano())
		cerr := consumeAll(ctx, sess, w, r)
		cancel()
		wg.Wait()
		return errors.Join(perr, cerr)
	})
	if err != nil {
		return Result{}, fmt.Errorf("bench: %s: mixed: %w", sys.Name(), err)
	}
	return r.result(), nil
}

// produceAll produces w.Messages messages from w.Producers goroutines. When
// r is set it records the time of each Produce call and the progress.
func produceAll(ctx context.Context, sess Session, w Workload, r *recorder) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	keys := make([]string, w.Keys)
	for i := range keys {
		keys[i] = "key-" + strconv.Itoa(i)
	}
	batches := (w.Messages + w.Batch - 1) / w.Batch
	var next atomic.Int64
	var wg sync.WaitGroup
	errs := make([]error, w.Producers)
	if r != nil {
		r.start.Store(time.Now().UnixNano())
	}
	for p := range w.Producers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			msgs := make([]Message, w.Batch)
			for i := range msgs {
				body := make([]byte, w.Size)
				for j := stampSize; j < len(body); j++ {
					body[j] = byte(j)
				}
				msgs[i].Body = body
			}
			for ctx.Err() == nil {
				b := int(next.Add(1) - 1)
				if b >= batches {
					return
				}
				first := b * w.Batch
				n := min(w.Batch, w.Messages-first)
				now := time.Now()
				for i := range n {
					seq := first + i
					if !w.DisableKeys {
						msgs[i].Key = keys[seq%len(keys)]
					}
					binary.LittleEndian.PutUint64(msgs[i].Body, uint64(now.UnixNano()))
					binary.LittleEndian.PutUint64(msgs[i].Body[8:], uint64(seq))
				}
				if err := sess.Produce(ctx, msgs[:n]); err != nil {
					errs[p] = err
					cancel()
					return
				}
				if r != nil {
					end := time.Now()
					r.lat.record(end.Sub(now))
					r.count.Add(int64(n))
					r.last.Store(end.UnixNano())
				}
			}
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return err
	}
	return ctx.Err()
}

// consumeAll consumes until every one of w.Messages messages was handled
// once, ctx ends (an error), or Consume fails.
func consumeAll(ctx context.Context, sess Session, w Workload, r *recorder) error {
	cctx, cancel := context.WithCancel(ctx)
	defer cancel()
	seen := make([]atomic.Uint64, (w.Messages+63)/64)
	done := make(chan struct{})
	var bad atomic.Int64
	h := func(key string, body []byte) {
		if w.HandlerSleep > 0 {
			time.Sleep(w.HandlerSleep)
		}
		if len(body) < stampSize {
			bad.Add(1)
			return
		}
		now := time.Now().UnixNano()
		sent := int64(binary.LittleEndian.Uint64(body))
		seq := binary.LittleEndian.Uint64(body[8:])
		if seq >= uint64(w.Messages) {
			bad.Add(1)
			return
		}
		bit := uint64(1) << (seq % 64)
		if seen[seq/64].Or(bit)&bit != 0 {
			r.dups.Add(1)
			return
		}
		if r.phase == PhaseMixed {
			r.lat.record(time.Duration(now - sent))
		}
		r.first.CompareAndSwap(0, now)
		if r.count.Add(1) == int64(w.Messages) {
			r.last.Store(now)
			close(done)
		}
	}
	errc := make(chan error, 1)
	go func() { errc <- sess.Consume(cctx, h) }()
	select {
	case <-done:
		cancel()
		if err := <-errc; err != nil && !errors.Is(err, context.Canceled) {
			return err
		}
	case err := <-errc:
		if err == nil {
			err = errors.New("Consume returned early")
		}
		return fmt.Errorf("after %d of %d messages: %w", r.count.Load(), w.Messages, err)
	case <-ctx.Done():
		cancel()
		<-errc
		return fmt.Errorf("after %d of %d messages: %w", r.count.Load(), w.Messages, ctx.Err())
	}
	if n := bad.Load(); n > 0 {
		return fmt.Errorf("%d messages were not the benchmark's (short body or unknown sequence number)", n)
	}
	return nil
}

// recorder collects the measurements of one phase.
type recorder struct {
	system string
	phase  Phase
	w      Workload
	lat    histogram
	count  atomic.Int64
	dups   atomic.Int64
	start  atomic.Int64 // Unix ns: produce start
	first  atomic.Int64 // Unix ns: first message handled
	last   atomic.Int64 // Unix ns: last message produced or handled
	mem    memStats
	cpu    time.Duration // process CPU time during f of measure
}

func newRecorder(system string, phase Phase, w Workload) *recorder {
	return &recorder{system: system, phase: phase, w: w}
}

// measure runs f while sampling memory and printing progress.
func (r *recorder) measure(ctx context.Context, f func(context.Context) error) error {
	runtime.GC()
	if r.w.PhaseHook != nil {
		r.w.PhaseHook(r.system, r.phase, true)
	}
	stopMem := r.mem.sample()
	stopProgress := r.progress()
	cpu0, ok0 := processCPU()
	err := f(ctx)
	if cpu1, ok1 := processCPU(); ok0 && ok1 {
		r.cpu = cpu1 - cpu0
	}
	stopProgress()
	stopMem()
	if r.w.PhaseHook != nil {
		r.w.PhaseHook(r.system, r.phase, false)
	}
	return err
}

func (r *recorder) progress() (stop func()) {
	if r.w.Progress == nil {
		return func() {}
	}
	quit := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	label := fmt.Sprintf("%s %s", r.system, r.phase)
	print := func(final bool) {
		n := r.count.Load()
		begin := r.start.Load()
		if r.phase == PhaseConsume {
			begin = r.first.Load()
		}
		rate := 0.0
		end := time.Now()
		if last := r.last.Load(); final && last != 0 {
			end = time.Unix(0, last)
		}
		if begin != 0 {
			if s := end.Sub(time.Unix(0, begin)).Seconds(); s > 0 {
				rate = float64(n) / s
			}
		}
		nl := ""
		if final {
			nl = "\n"
		}
		fmt.Fprintf(r.w.Progress, "\r%-18s %10d/%d %3d%% %10.0f msg/s%s", label, n, r.w.Messages, n*100/int64(r.w.Messages), rate, nl)
	}
	go func() {
		defer wg.Done()
		t := time.NewTicker(time.Second)
		defer t.Stop()
		for {
			select {
			case <-quit:
				print(true)
				return
			case <-t.C:
				print(false)
			}
		}
	}()
	return func() {
		close(quit)
		wg.Wait()
	}
}

func (r *recorder) result() Result {
	res := Result{
		System:     r.system,
		Phase:      r.phase,
		Messages:   int(r.count.Load()),
		Duplicates: int(r.dups.Load()),
	}
	res.Bytes = int64(res.Messages) * int64(r.w.Size)
	begin := r.start.Load()
	n := res.Messages
	if r.phase == PhaseConsume {
		// From the first message handled to the last: n-1 intervals.
		begin = r.first.Load()
		n--
	}
	res.Elapsed = time.Duration(r.last.Load() - begin)
	if s := res.Elapsed.Seconds(); s > 0 && n > 0 {
		res.MsgsPerSec = float64(n) / s
		res.MBPerSec = res.MsgsPerSec * float64(r.w.Size) / 1e6
	}
	if r.phase != PhaseConsume {
		res.P50 = r.lat.quantile(0.50)
		res.P99 = r.lat.quantile(0.99)
	}
	res.PeakHeapInuse, res.PeakSys = r.mem.peakHeap.Load(), r.mem.peakSys.Load()
	res.PeakRSS, res.RSSReset = r.mem.rss, r.mem.rssReset
	res.CPU = r.cpu
	return res
}

// A Row is one line of a suite: a workload, the mode that runs it, and
// the phase of it that the suite reports.
type Row struct {
	// Name labels the row in tables, e.g. "consume c16".
	Name string
	// Workload is what the row runs.
	Workload Workload
	// Mode runs the phases the row needs.
	Mode Mode
	// Report is the phase reported; the others (the produce phase that
	// fills a topic before a consume row) are only set-up.
	Report Phase
}

// SuiteIssue16 names the suite of issue 16's side-by-side table: consume
// with a no-op handler at concurrency 1, 16 and 32 (after a batched
// produce), produce from 16 goroutines with 1 message per call, and
// produce from 4 goroutines with 100 messages per call.
const SuiteIssue16 = "issue16"

// Suites lists the names Suite knows.
func Suites() []string { return []string{SuiteIssue16} }

// Suite returns the rows of the suite called name. Each row starts from
// base, which gives what every row shares (Messages, Size, Keys,
// DisableKeys, Timeout, Progress, PhaseHook); the row sets Producers,
// Batch, Concurrency and HandlerSleep.
func Suite(name string, base Workload) ([]Row, error) {
	row := func(n string, mode Mode, report Phase, producers, batch, conc int) Row {
		w := base
		w.Producers, w.Batch, w.Concurrency, w.HandlerSleep = producers, batch, conc, 0
		return Row{Name: n, Workload: w, Mode: mode, Report: report}
	}
	switch name {
	case SuiteIssue16:
		return []Row{
			row("consume c1", ModeConsume, PhaseConsume, 4, 100, 1),
			row("consume c16", ModeConsume, PhaseConsume, 4, 100, 16),
			row("consume c32", ModeConsume, PhaseConsume, 4, 100, 32),
			row("produce 16×1", ModeProduce, PhaseProduce, 16, 1, 32),
			row("produce 4×100", ModeProduce, PhaseProduce, 4, 100, 32),
		}, nil
	}
	return nil, fmt.Errorf("bench: unknown suite %q (want %s)", name, strings.Join(Suites(), ", "))
}

// RunSuite runs every row through every system runs times and returns the
// reported phase of each run, labelled with its row's name. Runs go round
// by round (every row through every system, then again), so systems and
// rows alternate and a busy moment of a shared machine hits no one of
// them alone. On an error it returns what it measured so far.
func RunSuite(ctx context.Context, systems []System, rows []Row, runs int) ([]Result, error) {
	var out []Result
	for range runs {
		for _, row := range rows {
			for _, sys := range systems {
				rs, err := Run(ctx, sys, row.Workload, row.Mode)
				if err != nil {
					return out, fmt.Errorf("%s: %w", row.Name, err)
				}
				for _, r := range rs {
					if r.Phase == row.Report {
						r.Workload = row.Name
						out = append(out, r)
					}
				}
			}
		}
	}
	return out, nil
}
