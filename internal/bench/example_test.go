package bench_test

import (
	"context"
	"fmt"
	"os"

	"github.com/mqkit/mq/internal/bench"
)

// Run produces and then consumes a workload through the SDK on an
// in-process broker; each Result is one measured phase.
func ExampleRun() {
	w := bench.Workload{Messages: 1000, Size: 256, Concurrency: 8}
	rs, err := bench.Run(context.Background(), bench.SDK{URL: "mem://"}, w, bench.ModeConsume)
	if err != nil {
		fmt.Println(err)
		return
	}
	for _, r := range rs {
		fmt.Println(r.System, r.Phase, r.Messages, r.Bytes, r.Duplicates)
	}
	// Output:
	// sdk produce 1000 256000 0
	// sdk consume 1000 256000 0
}

// Bare gives the same workload through the broker's own driver, for the
// SDK/bare ratios; mem:// has none.
func ExampleBare() {
	_, err := bench.Bare("mem://")
	fmt.Println(err)
	sys, err := bench.Bare("redis://127.0.0.1:6379/0")
	if err != nil {
		fmt.Println(err)
		return
	}
	fmt.Println(sys.Name())
	// Output:
	// bench: no bare driver for mem:// (bare runs exist for kafka, amqp and redis)
	// bare
}

// WriteTable and WriteRatios print medians of several runs.
func ExampleWriteRatios() {
	rs := []bench.Result{
		{System: "sdk", Phase: bench.PhaseConsume, MsgsPerSec: 900},
		{System: "bare", Phase: bench.PhaseConsume, MsgsPerSec: 1000},
	}
	_ = bench.WriteRatios(os.Stdout, bench.Summarize(rs), "sdk")
	// Output:
	// sdk/bare consume  0.90x
}
