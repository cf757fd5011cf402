package integration_test

import (
	"context"
	"fmt"
	"os"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/mqkit/mq"
)

// TestSoak runs a producer and a consumer group at a steady rate for
// MQ_SOAK (a duration, e.g. 3m) per broker and reports memory and
// goroutines over time. It checks that nothing is lost and that goroutines
// do not grow; memory figures are reported for the reader (timing and
// memory on a shared machine are too noisy to assert on). Under CI=true
// without MQ_SOAK it runs 20 s per broker.
//
//	MQ_SOAK=3m go test -run TestSoak -v ./integration
func TestSoak(t *testing.T) {
	d, err := time.ParseDuration(os.Getenv("MQ_SOAK"))
	if err != nil || d <= 0 {
		if os.Getenv("CI") != "true" {
			t.Skip("set MQ_SOAK=3m to run the soak test")
		}
		d = 20 * time.Second // CI runs a short soak rather than none
	}
	rate := 500 // messages a second
	if r, err := strconv.Atoi(os.Getenv("MQ_SOAK_RATE")); err == nil && r > 0 {
		rate = r
	}
	for _, tg := range targets {
		t.Run(tg.name, func(t *testing.T) {
			b := tg.shared(t)
			u := withParams(t, b.URL, tg.params)
			prod, cons := open(t, u), open(t, u)
			topic := "soak-" + mq.NewID()
			ctx, cancel := context.WithTimeout(context.Background(), d+3*time.Minute)
			defer cancel()
			l := newLedger()
			consumer, err := cons.Consumer(ctx, topic, mq.WithGroup("g"), mq.WithConcurrency(16))
			if err != nil {
				t.Fatal(err)
			}
			cctx, stop := context.WithCancel(ctx)
			done := make(chan error, 1)
			go func() { done <- consumer.Consume(cctx, l.handler()) }()

			runtime.GC()
			startG := runtime.NumGoroutine()
			steadyG := -1 // goroutines once the clients are warm (first report)
			startRSS := rssKB()
			peakRSS := startRSS
			p := prod.Producer()
			tick := time.NewTicker(100 * time.Millisecond)
			defer tick.Stop()
			begin := time.Now()
			lastReport := begin
			perTick := max(rate/10, 1)
			for time.Since(begin) < d {
				<-tick.C
				batch := make([]*mq.Message, perTick)
				for i := range batch {
					batch[i] = &mq.Message{Key: fmt.Sprint(i % 100), Body: make([]byte, 1024)}
				}
				if err := p.Produce(ctx, topic, batch...); err != nil {
					t.Fatalf("produce: %v", err)
				}
				l.mu.Lock()
				for _, m := range batch {
					l.confirmed[m.ID] = true
				}
				l.mu.Unlock()
				if rss := rssKB(); rss > peakRSS {
					peakRSS = rss
				}
				if time.Since(lastReport) >= min(30*time.Second, d/2) {
					lastReport = time.Now()
					var ms runtime.MemStats
					runtime.ReadMemStats(&ms)
					c, h, _, _ := l.counts()
					if steadyG < 0 {
						steadyG = runtime.NumGoroutine()
					}
					t.Logf("%4.0fs: confirmed %d handled %d, heap in use %.1f MB, RSS %.1f MB, goroutines %d",
						time.Since(begin).Seconds(), c, h, float64(ms.HeapInuse)/1e6, float64(rssKB())/1e3, runtime.NumGoroutine())
				}
			}
			l.waitNoLoss(t, 2*time.Minute)
			runtime.GC()
			endG := runtime.NumGoroutine()
			t.Logf("soak %v at %d msg/s: RSS start %.1f MB, peak %.1f MB, end %.1f MB (the test's own ledger of every ID is part of it); goroutines before start %d, steady %d, end %d",
				d, rate, float64(startRSS)/1e3, float64(peakRSS)/1e3, float64(rssKB())/1e3, startG, steadyG, endG)
			if steadyG >= 0 && endG > steadyG+5 {
				t.Errorf("goroutines grew from %d (steady state) to %d over the soak", steadyG, endG)
			}
			stop()
			if err := <-done; err != nil {
				t.Errorf("Consume: %v", err)
			}
		})
	}
}

// rssKB returns the process's resident set size in kB (0 where /proc is
// missing).
func rssKB() int {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			n, _ := strconv.Atoi(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(rest), "kB")))
			return n
		}
	}
	return 0
}
