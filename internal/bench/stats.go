package bench

import (
	"bufio"
	"bytes"
	"math/bits"
	"os"
	"runtime"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
)

// histogram counts durations in log-linear buckets: exact below 64ns,
// then 64 buckets per power of two (under 1.6% relative error). Safe for
// concurrent record.
type histogram struct {
	counts [(64 - subBits + 1) << subBits]atomic.Uint64
}

const subBits = 6

func bucketOf(v uint64) int {
	if v < 1<<subBits {
		return int(v)
	}
	l := bits.Len64(v)
	shift := l - subBits - 1
	return (l-subBits)<<subBits + int(v>>shift) - 1<<subBits
}

// bucketValue returns the middle of bucket i.
func bucketValue(i int) uint64 {
	if i < 1<<subBits {
		return uint64(i)
	}
	shift := i>>subBits - 1
	m := uint64(i&(1<<subBits-1) + 1<<subBits)
	return m<<shift + (uint64(1)<<shift)/2
}

func (h *histogram) record(d time.Duration) {
	if d < 0 {
		d = 0
	}
	h.counts[bucketOf(uint64(d))].Add(1)
}

// quantile returns the q-quantile (0 < q <= 1) of the recorded durations,
// or 0 when none were recorded.
func (h *histogram) quantile(q float64) time.Duration {
	var total uint64
	for i := range h.counts {
		total += h.counts[i].Load()
	}
	if total == 0 {
		return 0
	}
	rank := uint64(q * float64(total))
	if float64(rank) < q*float64(total) || rank == 0 {
		rank++
	}
	var seen uint64
	for i := range h.counts {
		seen += h.counts[i].Load()
		if seen >= rank {
			return time.Duration(bucketValue(i))
		}
	}
	return time.Duration(bucketValue(len(h.counts) - 1))
}

// memStats samples memory during a phase.
type memStats struct {
	peakHeap atomic.Uint64
	peakSys  atomic.Uint64
	rss      uint64
	rssReset bool
}

// sampleEvery is how often memory is sampled. ReadMemStats stops the
// world briefly; every 100ms costs well under 1% of a run.
const sampleEvery = 100 * time.Millisecond

// sample starts sampling and returns a function that stops it and reads
// the peak resident set.
func (m *memStats) sample() (stop func()) {
	m.rssReset = resetPeakRSS()
	quit := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	read := func() {
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		storeMax(&m.peakHeap, ms.HeapInuse)
		storeMax(&m.peakSys, ms.Sys)
	}
	go func() {
		defer wg.Done()
		t := time.NewTicker(sampleEvery)
		defer t.Stop()
		for {
			read()
			select {
			case <-quit:
				return
			case <-t.C:
			}
		}
	}()
	return func() {
		close(quit)
		wg.Wait()
		read()
		m.rss = peakRSS()
	}
}

func storeMax(a *atomic.Uint64, v uint64) {
	for {
		old := a.Load()
		if v <= old || a.CompareAndSwap(old, v) {
			return
		}
	}
}

// resetPeakRSS resets the process's VmHWM to its current RSS (Linux 4.0+,
// "5" written to /proc/self/clear_refs). It reports whether that worked.
func resetPeakRSS() bool {
	return os.WriteFile("/proc/self/clear_refs", []byte("5"), 0) == nil
}

// peakRSS returns VmHWM from /proc/self/status in bytes, or 0 where there
// is none.
func peakRSS() uint64 {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0
	}
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		f := bytes.Fields(sc.Bytes())
		if len(f) >= 2 && string(f[0]) == "VmHWM:" {
			kb, err := strconv.ParseUint(string(f[1]), 10, 64)
			if err != nil {
				return 0
			}
			return kb << 10
		}
	}
	return 0
}
