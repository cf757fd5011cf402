package bench

import (
	"fmt"
	"io"
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
	return out
}

// Summarize groups rs by system and phase, in the order each pair first
// appears, and returns the Median of each group.
func Summarize(rs []Result) []Result {
	type key struct {
		system string
		phase  Phase
	}
	var order []key
	groups := map[key][]Result{}
	for _, r := range rs {
		k := key{r.System, r.Phase}
		if _, ok := groups[k]; !ok {
			order = append(order, k)
		}
		groups[k] = append(groups[k], r)
	}
	out := make([]Result, 0, len(order))
	for _, k := range order {
		out = append(out, Median(groups[k]))
	}
	return out
}

// WriteTable writes rs as a Markdown table, one row per result.
func WriteTable(w io.Writer, rs []Result) error {
	var b strings.Builder
	b.WriteString("| system | phase | messages | msg/s | MB/s | p50 | p99 | dups | peak heap MB | peak sys MB | peak RSS MB |\n")
	b.WriteString("|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|\n")
	for _, r := range rs {
		p50, p99 := "-", "-"
		if r.P50 > 0 || r.P99 > 0 {
			p50, p99 = fmtDur(r.P50), fmtDur(r.P99)
		}
		rss := fmtMB(r.PeakRSS)
		if !r.RSSReset && r.PeakRSS > 0 {
			rss += "*"
		}
		fmt.Fprintf(&b, "| %s | %s | %d | %.0f | %.1f | %s | %s | %d | %s | %s | %s |\n",
			r.System, r.Phase, r.Messages, r.MsgsPerSec, r.MBPerSec, p50, p99, r.Duplicates,
			fmtMB(r.PeakHeapInuse), fmtMB(r.PeakSys), rss)
	}
	_, err := io.WriteString(w, b.String())
	return err
}

// Ratio is the throughput of one system over another's in one phase.
type Ratio struct {
	Phase         Phase
	System, Other string
	// Value is System's msg/s over Other's.
	Value float64
}

// Ratios returns, for every phase in rs, the throughput of system over
// each other system measured in that phase.
func Ratios(rs []Result, system string) []Ratio {
	var out []Ratio
	for _, a := range rs {
		if a.System != system || a.MsgsPerSec == 0 {
			continue
		}
		for _, b := range rs {
			if b.System == system || b.Phase != a.Phase || b.MsgsPerSec == 0 {
				continue
			}
			out = append(out, Ratio{Phase: a.Phase, System: system, Other: b.System, Value: a.MsgsPerSec / b.MsgsPerSec})
		}
	}
	return out
}

// WriteRatios writes Ratios(rs, system), one per line.
func WriteRatios(w io.Writer, rs []Result, system string) error {
	var b strings.Builder
	for _, r := range Ratios(rs, system) {
		fmt.Fprintf(&b, "%s/%s %-8s %.2fx\n", r.System, r.Other, r.Phase, r.Value)
	}
	_, err := io.WriteString(w, b.String())
	return err
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
