package bench

import (
	"bytes"
	"context"
	"errors"
	"math"
	"math/rand/v2"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mqkit/mq"
)

func TestRunMem(t *testing.T) {
	tests := []struct {
		mode   Mode
		phases []Phase
		w      Workload
	}{
		{ModeProduce, []Phase{PhaseProduce}, Workload{Messages: 3000}},
		{ModeConsume, []Phase{PhaseProduce, PhaseConsume}, Workload{Messages: 3000, Batch: 7, Producers: 3}},
		{ModeMixed, []Phase{PhaseMixed}, Workload{Messages: 3000, Concurrency: 4}},
		{ModeAll, []Phase{PhaseProduce, PhaseConsume, PhaseMixed}, Workload{Messages: 2500, DisableKeys: true, Size: 16}},
		{ModeConsume, []Phase{PhaseProduce, PhaseConsume}, Workload{Messages: 200, HandlerSleep: time.Millisecond, Keys: 10}},
	}
	for _, tt := range tests {
		t.Run(string(tt.mode), func(t *testing.T) {
			var progress bytes.Buffer
			tt.w.Progress = &syncWriter{w: &progress}
			rs, err := Run(context.Background(), SDK{URL: "mem://"}, tt.w, tt.mode)
			if err != nil {
				t.Fatal(err)
			}
			if len(rs) != len(tt.phases) {
				t.Fatalf("got %d results, want %d: %+v", len(rs), len(tt.phases), rs)
			}
			size := tt.w.Defaults().Size
			for i, r := range rs {
				if r.Phase != tt.phases[i] || r.System != "sdk" {
					t.Errorf("result %d is %s %s, want sdk %s", i, r.System, r.Phase, tt.phases[i])
				}
				if r.Messages != tt.w.Messages || r.Bytes != int64(tt.w.Messages*size) {
					t.Errorf("%s: %d messages, %d bytes; want %d, %d", r.Phase, r.Messages, r.Bytes, tt.w.Messages, tt.w.Messages*size)
				}
				if r.Duplicates != 0 {
					t.Errorf("%s: %d duplicates", r.Phase, r.Duplicates)
				}
				if r.MsgsPerSec <= 0 || r.Elapsed <= 0 || r.PeakHeapInuse == 0 || r.PeakSys == 0 {
					t.Errorf("%s: missing figures: %+v", r.Phase, r)
				}
				latency := r.Phase != PhaseConsume
				if latency != (r.P50 > 0) || r.P99 < r.P50 {
					t.Errorf("%s: p50 %v, p99 %v", r.Phase, r.P50, r.P99)
				}
			}
			if !strings.Contains(progress.String(), "100%") {
				t.Errorf("progress never reached 100%%: %q", progress.String())
			}
		})
	}
}

type syncWriter struct {
	mu sync.Mutex
	w  *bytes.Buffer
}

func (s *syncWriter) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.w.Write(p)
}

// failing is a System whose sessions fail the way the test says.
type failing struct{ produce, consume error }

func (failing) Name() string { return "failing" }
func (f failing) Open(context.Context, Setup) (Session, error) {
	return f, nil
}
func (f failing) Produce(context.Context, []Message) error { return f.produce }
func (f failing) Consume(ctx context.Context, _ Handler) error {
	if f.consume != nil {
		return f.consume
	}
	<-ctx.Done()
	return nil
}
func (failing) Close() error { return nil }

func TestRunReportsFailures(t *testing.T) {
	boom := errors.New("boom")
	tests := []struct {
		name string
		sys  failing
		mode Mode
		w    Workload
	}{
		{"produce", failing{produce: boom}, ModeProduce, Workload{Messages: 10}},
		{"consume", failing{consume: boom}, ModeConsume, Workload{Messages: 10}},
		{"mixed", failing{consume: boom}, ModeMixed, Workload{Messages: 10}},
		{"nothing arrives", failing{}, ModeConsume, Workload{Messages: 10, Timeout: 100 * time.Millisecond}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Run(context.Background(), tt.sys, tt.w, tt.mode)
			want := boom
			if tt.sys.consume == nil && tt.sys.produce == nil {
				want = context.DeadlineExceeded
			}
			if !errors.Is(err, want) {
				t.Fatalf("Run = %v, want %v", err, want)
			}
		})
	}
}

func TestWorkloadValidate(t *testing.T) {
	tests := []struct {
		w  Workload
		ok bool
	}{
		{Workload{}, true},
		{Workload{Size: 15}, false},
		{Workload{Size: 16}, true},
		{Workload{Messages: -1}, false},
		{Workload{Producers: -1}, false},
		{Workload{HandlerSleep: -time.Second}, false},
	}
	for _, tt := range tests {
		if err := tt.w.Defaults().Validate(); (err == nil) != tt.ok {
			t.Errorf("Validate(%+v) = %v, want ok=%v", tt.w, err, tt.ok)
		}
	}
	if _, err := Run(context.Background(), SDK{URL: "mem://"}, Workload{Size: 8}, ModeProduce); err == nil {
		t.Error("Run accepted an 8-byte body")
	}
	if _, err := ParseMode("sideways"); err == nil {
		t.Error("ParseMode accepted sideways")
	}
}

func TestSDKURL(t *testing.T) {
	tests := []struct{ in, want string }{
		{"mem://", "mem://?capacity=50000"},
		{"mem://?capacity=5", "mem://?capacity=5"},
		{"kafka://127.0.0.1:9092", "kafka://127.0.0.1:9092?create_topics=true"},
		{"kafka://h:1/?create_topics=false", "kafka://h:1/?create_topics=false"},
		{"redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/0"},
		{"amqp://guest:guest@h:5672/", "amqp://guest:guest@h:5672/"},
	}
	for _, tt := range tests {
		got, err := sdkURL(tt.in, Setup{Messages: 50000})
		if err != nil || got != tt.want {
			t.Errorf("sdkURL(%q) = %q, %v; want %q", tt.in, got, err, tt.want)
		}
	}
}

func TestBareURLs(t *testing.T) {
	tests := []struct {
		url  string
		want error // nil: no error
	}{
		{"kafka://127.0.0.1:9092?create_topics=true&group=g", nil},
		{"amqp://guest:secret@127.0.0.1:5672/?concurrency=3", nil},
		{"redis://:secret@127.0.0.1:6379/0?block=1s", nil},
		{"kafka://127.0.0.1:9092?nonsense=1", mq.ErrInvalidURL},
		{"redis://127.0.0.1:6379/0?shards=4", errAny},
		{"mem://", errAny},
		{"amqp://guest:secret@[::1", mq.ErrInvalidURL},
	}
	for _, tt := range tests {
		_, err := Bare(tt.url)
		switch {
		case tt.want == nil && err != nil:
			t.Errorf("Bare(%q) = %v", tt.url, err)
		case tt.want == errAny && err == nil, tt.want != nil && tt.want != errAny && !errors.Is(err, tt.want):
			t.Errorf("Bare(%q) = %v, want %v", tt.url, err, tt.want)
		}
		if err != nil && strings.Contains(err.Error(), "secret") {
			t.Errorf("Bare(%q) error shows the password: %v", tt.url, err)
		}
	}
}

var errAny = errors.New("any error")

func TestHistogram(t *testing.T) {
	for _, v := range []uint64{0, 1, 63, 64, 65, 127, 128, 1000, 123456789, 1 << 40, math.MaxInt64} {
		got := bucketValue(bucketOf(v))
		if diff := math.Abs(float64(got) - float64(v)); diff > float64(v)/64+1 {
			t.Errorf("bucket of %d holds %d", v, got)
		}
	}
	r := rand.New(rand.NewPCG(1, 2))
	for range 10000 {
		v := r.Uint64N(1 << 50)
		if i := bucketOf(v); bucketOf(bucketValue(i)) != i {
			t.Fatalf("bucket %d of %d: middle %d is in bucket %d", i, v, bucketValue(i), bucketOf(bucketValue(i)))
		}
	}

	var h histogram
	if h.quantile(0.5) != 0 {
		t.Error("empty histogram has a median")
	}
	for i := 1; i <= 10000; i++ {
		h.record(time.Duration(i) * time.Microsecond)
	}
	for _, q := range []float64{0.5, 0.99, 1} {
		want := q * 10000 * float64(time.Microsecond)
		if got := float64(h.quantile(q)); math.Abs(got-want) > want*0.02 {
			t.Errorf("quantile(%v) = %v, want %v ± 2%%", q, time.Duration(got), time.Duration(want))
		}
	}
}

func TestOffsetTracker(t *testing.T) {
	tests := []struct {
		name  string
		add   []int64
		done  []int64
		marks []int64
	}{
		{"in order", []int64{0, 1, 2}, []int64{0, 1, 2}, []int64{1, 2, 3}},
		{"out of order waits for the gap", []int64{0, 1, 2}, []int64{2, 1, 0}, []int64{3}},
		{"middle first", []int64{5, 6, 7}, []int64{6, 5, 7}, []int64{7, 8}},
		{"gaps in offsets", []int64{10, 12, 15}, []int64{12, 10, 15}, []int64{13, 16}},
		{"unknown offset ignored", []int64{1}, []int64{9, 1}, []int64{2}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var marks []int64
			tr := &offsetTracker{mark: func(n int64) { marks = append(marks, n) }}
			for _, o := range tt.add {
				tr.add(o)
			}
			for _, o := range tt.done {
				tr.done(o)
			}
			if !equal(marks, tt.marks) {
				t.Errorf("marks %v, want %v", marks, tt.marks)
			}
		})
	}
}

func equal(a, b []int64) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func TestWorkersKeepKeyOrder(t *testing.T) {
	type item struct {
		key string
		seq int
	}
	var mu sync.Mutex
	last := map[string]int{}
	var bad []string
	w := startWorkers(8, 4, func(it item) {
		time.Sleep(time.Duration(rand.IntN(50)) * time.Microsecond)
		mu.Lock()
		defer mu.Unlock()
		// Messages without a key go round-robin, in no order.
		if prev, ok := last[it.key]; ok && prev > it.seq && it.key != "" {
			bad = append(bad, it.key)
		}
		last[it.key] = it.seq
	})
	keys := []string{"a", "b", "c", "d", "e", ""}
	for i := range 3000 {
		k := keys[i%len(keys)]
		submit(w, k, item{k, i})
	}
	w.stop()
	if len(bad) > 0 {
		t.Errorf("keys handled out of order: %v", bad)
	}
	if len(last) != len(keys) {
		t.Errorf("handled keys %v, want %v", last, keys)
	}
}

func TestReport(t *testing.T) {
	rs := []Result{
		{System: "sdk", Phase: PhaseProduce, Messages: 10, MsgsPerSec: 90, P50: time.Millisecond, P99: 3 * time.Millisecond, RSSReset: true, PeakRSS: 30 << 20},
		{System: "bare", Phase: PhaseProduce, Messages: 10, MsgsPerSec: 100},
		{System: "sdk", Phase: PhaseProduce, Messages: 10, MsgsPerSec: 110, P50: 2 * time.Millisecond, P99: 5 * time.Millisecond, RSSReset: true, PeakRSS: 10 << 20},
		{System: "sdk", Phase: PhaseProduce, Messages: 10, MsgsPerSec: 100, P50: 3 * time.Millisecond, P99: 4 * time.Millisecond, RSSReset: true, PeakRSS: 20 << 20},
		{System: "sdk", Phase: PhaseConsume, Messages: 10, MsgsPerSec: 50},
		{System: "bare", Phase: PhaseConsume, Messages: 10, MsgsPerSec: 200},
	}
	sum := Summarize(rs)
	if len(sum) != 4 {
		t.Fatalf("Summarize gave %d results, want 4", len(sum))
	}
	m := sum[0]
	if m.System != "sdk" || m.MsgsPerSec != 100 || m.P50 != 2*time.Millisecond || m.P99 != 4*time.Millisecond || m.PeakRSS != 20<<20 || !m.RSSReset {
		t.Errorf("median = %+v", m)
	}
	ratios := Ratios(sum, "sdk")
	want := []Ratio{{Phase: PhaseProduce, System: "sdk", Other: "bare", Value: 1, Low: 1, High: 1}, {Phase: PhaseConsume, System: "sdk", Other: "bare", Value: 0.25, Low: 0.25, High: 0.25}}
	if len(ratios) != len(want) {
		t.Fatalf("ratios %v, want %v", ratios, want)
	}
	for i := range want {
		if ratios[i] != want[i] {
			t.Errorf("ratio %d = %v, want %v", i, ratios[i], want[i])
		}
	}
	var b bytes.Buffer
	if err := WriteTable(&b, sum); err != nil {
		t.Fatal(err)
	}
	if err := WriteRatios(&b, sum, "sdk"); err != nil {
		t.Fatal(err)
	}
	for _, s := range []string{"| sdk | produce | 10 | 100 |", "| 2.0ms | 4.0ms |", "| bare | consume | 10 | 200 |", "sdk/bare consume  0.25x"} {
		if !strings.Contains(b.String(), s) {
			t.Errorf("output lacks %q:\n%s", s, b.String())
		}
	}
}

// TestRatioRounds: given every run, a ratio is the one of the medians and
// shows the range of the rounds (i-th run over i-th run), in both outputs.
func TestRatioRounds(t *testing.T) {
	rs := []Result{
		{Workload: "w", System: "sdk", Phase: PhaseConsume, Messages: 100000, MsgsPerSec: 90, CPU: time.Second},
		{Workload: "w", System: "bare", Phase: PhaseConsume, Messages: 100000, MsgsPerSec: 100, CPU: time.Second},
		{Workload: "w", System: "sdk", Phase: PhaseConsume, Messages: 100000, MsgsPerSec: 60, CPU: time.Second},
		{Workload: "w", System: "bare", Phase: PhaseConsume, Messages: 100000, MsgsPerSec: 120, CPU: time.Second},
		{Workload: "w", System: "sdk", Phase: PhaseConsume, Messages: 100000, MsgsPerSec: 110, CPU: time.Second},
		{Workload: "w", System: "bare", Phase: PhaseConsume, Messages: 100000, MsgsPerSec: 100, CPU: time.Second},
	}
	ratios := Ratios(rs, "sdk")
	// Medians 90 and 100; rounds 0.9, 0.5 and 1.1.
	if len(ratios) != 1 || math.Abs(ratios[0].Value-0.9) > 1e-9 || math.Abs(ratios[0].Low-0.5) > 1e-9 || math.Abs(ratios[0].High-1.1) > 1e-9 {
		t.Fatalf("ratios = %+v, want 0.9 with rounds 0.5-1.1", ratios)
	}
	var b bytes.Buffer
	_ = WriteRatios(&b, rs, "sdk")
	_ = WriteComparison(&b, rs, "sdk", "bare")
	for _, s := range []string{"sdk/bare w        0.90x (rounds 0.50-1.10)  CPU/msg 1.00x", "| w | 90 | 100 | 0.90× (rounds 0.50-1.10) | 1.00 | 1.00 | 1.00× |"} {
		if !strings.Contains(b.String(), s) {
			t.Errorf("output lacks %q:\n%s", s, b.String())
		}
	}
}

func TestSuiteIssue16(t *testing.T) {
	base := Workload{Messages: 500, Size: 64, Keys: 7, Concurrency: 99, Producers: 99, Batch: 99, HandlerSleep: time.Second}
	rows, err := Suite(SuiteIssue16, base)
	if err != nil {
		t.Fatal(err)
	}
	type shape struct {
		name                          string
		mode                          Mode
		report                        Phase
		producers, batch, concurrency int
	}
	want := []shape{
		{"consume c1", ModeConsume, PhaseConsume, 4, 100, 1},
		{"consume c16", ModeConsume, PhaseConsume, 4, 100, 16},
		{"consume c32", ModeConsume, PhaseConsume, 4, 100, 32},
		{"produce 16×1", ModeProduce, PhaseProduce, 16, 1, 32},
		{"produce 4×100", ModeProduce, PhaseProduce, 4, 100, 32},
	}
	if len(rows) != len(want) {
		t.Fatalf("%d rows, want %d: %+v", len(rows), len(want), rows)
	}
	for i, r := range rows {
		got := shape{r.Name, r.Mode, r.Report, r.Workload.Producers, r.Workload.Batch, r.Workload.Concurrency}
		if got != want[i] {
			t.Errorf("row %d = %+v, want %+v", i, got, want[i])
		}
		if w := r.Workload; w.Messages != 500 || w.Size != 64 || w.Keys != 7 || w.HandlerSleep != 0 {
			t.Errorf("row %s does not keep the base workload (or keeps its handler sleep): %+v", r.Name, w)
		}
	}
	if _, err := Suite("nonsense", base); err == nil {
		t.Error("Suite accepted an unknown name")
	}

	// Two rounds through two systems: every row of every run, reported
	// phase only, labelled, systems alternating.
	rows, _ = Suite(SuiteIssue16, Workload{Messages: 300, Size: 32, Keys: 5})
	rs, err := RunSuite(context.Background(), []System{SDK{URL: "mem://"}, named{SDK{URL: "mem://"}, "other"}}, rows, 2)
	if err != nil {
		t.Fatal(err)
	}
	if len(rs) != 2*len(rows)*2 {
		t.Fatalf("%d results, want %d", len(rs), 2*len(rows)*2)
	}
	for i, r := range rs {
		row := rows[i/2%len(rows)]
		sys := [...]string{"sdk", "other"}[i%2]
		if r.Workload != row.Name || r.Phase != row.Report || r.System != sys || r.Messages != 300 {
			t.Errorf("result %d = %s %s %s %d messages, want %s %s %s 300", i, r.Workload, r.System, r.Phase, r.Messages, row.Name, sys, row.Report)
		}
	}
	sum := Summarize(rs)
	if len(sum) != 2*len(rows) {
		t.Fatalf("Summarize gave %d, want %d", len(sum), 2*len(rows))
	}
	var b bytes.Buffer
	if err := WriteComparison(&b, sum, "sdk", "other"); err != nil {
		t.Fatal(err)
	}
	for _, row := range rows {
		if !strings.Contains(b.String(), "| "+row.Name+" | ") {
			t.Errorf("comparison lacks %s:\n%s", row.Name, b.String())
		}
	}
}

// named renames a System.
type named struct {
	System
	name string
}

func (n named) Name() string { return n.name }

func TestCPU(t *testing.T) {
	c0, ok := processCPU()
	if !ok {
		t.Skip("no process CPU time on this platform")
	}
	// Burn some CPU: the process's CPU time must grow by about that.
	start := time.Now()
	x := 0
	for time.Since(start) < 30*time.Millisecond {
		for i := range 1000 {
			x += i * i
		}
	}
	c1, _ := processCPU()
	if d := c1 - c0; d < 10*time.Millisecond || x == 1 {
		t.Errorf("30 ms of busy loop cost %v of process CPU", d)
	}

	r := Result{Messages: 50000, CPU: 2 * time.Second}
	if got := r.CPUPer100k(); math.Abs(got-4) > 1e-9 {
		t.Errorf("CPUPer100k = %v, want 4", got)
	}
	if got := (Result{Messages: 10}).CPUPer100k(); got != 0 {
		t.Errorf("CPUPer100k without CPU = %v, want 0", got)
	}
	rs := []Result{
		{Workload: "w", System: "sdk", Phase: PhaseConsume, Messages: 100000, MsgsPerSec: 50, CPU: 3 * time.Second},
		{Workload: "w", System: "bare", Phase: PhaseConsume, Messages: 100000, MsgsPerSec: 100, CPU: time.Second},
		{Workload: "v", System: "bare", Phase: PhaseConsume, Messages: 100000, MsgsPerSec: 10, CPU: time.Second},
	}
	ratios := Ratios(rs, "sdk")
	if len(ratios) != 1 || ratios[0].Workload != "w" || ratios[0].Value != 0.5 || math.Abs(ratios[0].CPU-3) > 1e-9 {
		t.Errorf("ratios = %+v, want w 0.5 CPU 3", ratios)
	}
	var b bytes.Buffer
	_ = WriteTable(&b, rs)
	_ = WriteRatios(&b, rs, "sdk")
	_ = WriteComparison(&b, rs, "sdk", "bare")
	for _, s := range []string{"| w | sdk | consume | 100000 | 50 |", "| 3.00 |", "sdk/bare w        0.50x  CPU/msg 3.00x", "| w | 50 | 100 | 0.50× | 3.00 | 1.00 | 3.00× |"} {
		if !strings.Contains(b.String(), s) {
			t.Errorf("output lacks %q:\n%s", s, b.String())
		}
	}

	// A phase run reports the CPU it used.
	res, err := Run(context.Background(), SDK{URL: "mem://"}, Workload{Messages: 2000}, ModeConsume)
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range res {
		if r.CPU <= 0 {
			t.Errorf("%s: no CPU time", r.Phase)
		}
	}
}
