package bench

import (
	"fmt"
	"io"
	"math"
	"slices"
	"strings"
	"time"
)

// Median returns one Result whose every figure is the median of that
// figure over rs (results of one system and phase from several runs).
// Each figure's median is taken on its own, so the result need not be one
// of the runs. RSSReset holds if it held for every run.
func Median(rs []Result) Result {
	if len(rs) == 0 {
		return Result{}
	}
	out := rs[0]
	out.RSSReset = true
	for _, r := range rs {
		out.RSSReset = out.RSSReset && r.RSSReset
	}
	f := func(get func(Result) float64) float64 {
		v := make([]float64, len(rs))
		for i, r := range rs {
			v[i] = get(r)
		}
		slices.Sort(v)
		if len(v)%2 == 1 {
			return v[len(v)/2]
		}
		return (v[len(v)/2-1] + v[len(v)/2]) / 2
	}
	out.Messages = int(f(func(r Result) float64 { return float64(r.Messages) }))
	out.Bytes = int64(f(func(r Result) float64 { return float64(r.Bytes) }))
	out.Elapsed = time.Duration(f(func(r Result) float64 { return float64(r.Elapsed) }))
	out.MsgsPerSec = f(func(r Result) float64 { return r.MsgsPerSec })
	out.MBPerSec = f(func(r Result) float64 { return r.MBPerSec })
	out.P50 = time.Duration(f(func(r Result) float64 { return float64(r.P50) }))
	out.P99 = time.Duration(f(func(r Result) float64 { return float64(r.P99) }))
	out.Duplicates = int(f(func(r Result) float64 { return float64(r.Duplicates) }))
	out.PeakHeapInuse = uint64(f(func(r Result) float64 { return float64(r.PeakHeapInuse) }))
	out.PeakSys = uint64(f(func(r Result) float64 { return float64(r.PeakSys) }))
	out.PeakRSS = uint64(f(func(r Result) float64 { return float64(r.PeakRSS) }))
	out.CPU = time.Duration(f(func(r Result) float64 { return float64(r.CPU) }))
	return out
}

// Summarize groups rs by workload, system and phase, in the order each
// first appears, and returns the Median of each group.
func Summarize(rs []Result) []Result {
	order, groups := groupRuns(rs)
	out := make([]Result, 0, len(order))
	for _, k := range order {
		out = append(out, Median(groups[k]))
	}
	return out
}

// runKey names the runs of one system in one phase of one workload.
type runKey struct {
	workload, system string
	phase            Phase
}

// groupRuns groups rs by runKey, keeping the order of the runs in each
// group, and lists the keys in the order each first appears.
func groupRuns(rs []Result) ([]runKey, map[runKey][]Result) {
	var order []runKey
	groups := map[runKey][]Result{}
	for _, r := range rs {
		k := runKey{r.Workload, r.System, r.Phase}
		if _, ok := groups[k]; !ok {
			order = append(order, k)
		}
		groups[k] = append(groups[k], r)
	}
	return order, groups
}

// WriteTable writes rs as a Markdown table, one row per result, with a
// first column naming the workload when any result has one. "CPU s/100k"
// is the process's CPU seconds per 100,000 messages (Result.CPUPer100k).
func WriteTable(w io.Writer, rs []Result) error {
	var b strings.Builder
	named := slices.ContainsFunc(rs, func(r Result) bool { return r.Workload != "" })
	if named {
		b.WriteString("| workload ")
	}
	b.WriteString("| system | phase | messages | msg/s | MB/s | p50 | p99 | dups | CPU s/100k | peak heap MB | peak sys MB | peak RSS MB |\n")
	if named {
		b.WriteString("|---")
	}
	b.WriteString("|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|\n")
	for _, r := range rs {
		if named {
			fmt.Fprintf(&b, "| %s ", r.Workload)
		}
		p50, p99 := "-", "-"
		if r.P50 > 0 || r.P99 > 0 {
			p50, p99 = fmtDur(r.P50), fmtDur(r.P99)
		}
		rss := fmtMB(r.PeakRSS)
		if !r.RSSReset && r.PeakRSS > 0 {
			rss += "*"
		}
		fmt.Fprintf(&b, "| %s | %s | %d | %.0f | %.1f | %s | %s | %d | %s | %s | %s | %s |\n",
			r.System, r.Phase, r.Messages, r.MsgsPerSec, r.MBPerSec, p50, p99, r.Duplicates,
			fmtCPU(r.CPUPer100k()), fmtMB(r.PeakHeapInuse), fmtMB(r.PeakSys), rss)
	}
	_, err := io.WriteString(w, b.String())
	return err
}

// Ratio compares one system with another in one phase of one workload.
type Ratio struct {
	Workload      string
	Phase         Phase
	System, Other string
	// Value is System's msg/s over Other's (their medians).
	Value float64
	// Low and High are the lowest and highest ratio of one round: the
	// i-th run of System over the i-th run of Other, as the bench
	// alternates them. They show how far the runs spread; both are Value
	// when there was one run of each.
	Low, High float64
	// CPU is System's CPU per message over Other's (medians); 0 when
	// either was not measured.
	CPU float64
}

// Ratios returns, for every workload and phase in rs, the throughput and
// CPU per message of system over each other system measured there. rs may
// hold several runs of each (as measured, in order) or their medians.
func Ratios(rs []Result, system string) []Ratio {
	order, groups := groupRuns(rs)
	var out []Ratio
	for _, ka := range order {
		if ka.system != system {
			continue
		}
		ga := groups[ka]
		a := Median(ga)
		if a.MsgsPerSec == 0 {
			continue
		}
		for _, kb := range order {
			if kb.system == system || kb.workload != ka.workload || kb.phase != ka.phase {
				continue
			}
			gb := groups[kb]
			b := Median(gb)
			if b.MsgsPerSec == 0 {
				continue
			}
			r := Ratio{Workload: ka.workload, Phase: ka.phase, System: system, Other: kb.system, Value: a.MsgsPerSec / b.MsgsPerSec}
			r.Low, r.High = r.Value, r.Value
			if n := min(len(ga), len(gb)); n > 1 {
				r.Low, r.High = math.Inf(1), math.Inf(-1)
				for i := range n {
					if ga[i].MsgsPerSec > 0 && gb[i].MsgsPerSec > 0 {
						v := ga[i].MsgsPerSec / gb[i].MsgsPerSec
						r.Low, r.High = min(r.Low, v), max(r.High, v)
					}
				}
				if r.Low > r.High { // no round had both
					r.Low, r.High = r.Value, r.Value
				}
			}
			if ca, cb := a.CPUPer100k(), b.CPUPer100k(); ca > 0 && cb > 0 {
				r.CPU = ca / cb
			}
			out = append(out, r)
		}
	}
	return out
}

// spread formats r's round range, or "" when the rounds did not differ.
func (r Ratio) spread() string {
	if r.Low == r.High {
		return ""
	}
	return fmt.Sprintf(" (rounds %.2f-%.2f)", r.Low, r.High)
}

// WriteRatios writes Ratios(rs, system), one per line: the throughput
// ratio with the range of its rounds, then the CPU-per-message ratio
// where both were measured.
func WriteRatios(w io.Writer, rs []Result, system string) error {
	var b strings.Builder
	for _, r := range Ratios(rs, system) {
		label := string(r.Phase)
		if r.Workload != "" {
			label = r.Workload
		}
		fmt.Fprintf(&b, "%s/%s %-8s %.2fx%s", r.System, r.Other, label, r.Value, r.spread())
		if r.CPU > 0 {
			fmt.Fprintf(&b, "  CPU/msg %.2fx", r.CPU)
		}
		b.WriteByte('\n')
	}
	_, err := io.WriteString(w, b.String())
	return err
}

// WriteComparison writes a Markdown table with one line per workload and
// phase of rs (several runs of each, or their medians): msg/s and CPU
// seconds per 100,000 messages of system and other side by side (medians),
// and their ratios (throughput system/other, with the range of its rounds
// when they differ; CPU per message system/other).
func WriteComparison(w io.Writer, rs []Result, system, other string) error {
	sum := Summarize(rs)
	ratios := map[runKey]Ratio{} // by the other system's runs
	for _, r := range Ratios(rs, system) {
		ratios[runKey{r.Workload, r.Other, r.Phase}] = r
	}
	var b strings.Builder
	fmt.Fprintf(&b, "| workload | %[1]s msg/s | %[2]s msg/s | %[1]s/%[2]s | %[1]s CPU s/100k | %[2]s CPU s/100k | CPU %[1]s/%[2]s |\n", system, other)
	b.WriteString("|---|--:|--:|--:|--:|--:|--:|\n")
	for _, a := range sum {
		if a.System != system {
			continue
		}
		for _, o := range sum {
			if o.System != other || o.Workload != a.Workload || o.Phase != a.Phase {
				continue
			}
			label := a.Workload
			if label == "" {
				label = string(a.Phase)
			}
			ratio, cpu := "-", "-"
			if r, ok := ratios[runKey{o.Workload, o.System, o.Phase}]; ok {
				ratio = fmt.Sprintf("%.2f×%s", r.Value, r.spread())
			}
			if ca, co := a.CPUPer100k(), o.CPUPer100k(); ca > 0 && co > 0 {
				cpu = fmt.Sprintf("%.2f×", ca/co)
			}
			fmt.Fprintf(&b, "| %s | %.0f | %.0f | %s | %s | %s | %s |\n", label, a.MsgsPerSec, o.MsgsPerSec, ratio,
				fmtCPU(a.CPUPer100k()), fmtCPU(o.CPUPer100k()), cpu)
		}
	}
	_, err := io.WriteString(w, b.String())
	return err
}

func fmtCPU(s float64) string {
	if s <= 0 {
		return "-"
	}
	return fmt.Sprintf("%.2f", s)
}

func fmtDur(d time.Duration) string {
	switch {
	case d >= time.Second:
		return fmt.Sprintf("%.2fs", d.Seconds())
	case d >= time.Millisecond:
		return fmt.Sprintf("%.1fms", float64(d)/1e6)
	default:
		return fmt.Sprintf("%.0fµs", float64(d)/1e3)
	}
}

func fmtMB(n uint64) string {
	if n == 0 {
		return "-"
	}
	return fmt.Sprintf("%.0f", float64(n)/(1<<20))
}
