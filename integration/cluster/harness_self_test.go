package cluster_test

import (
	"context"
	"testing"
	"time"

	"github.com/mqkit/mq"
	"github.com/mqkit/mq/memory"
)

// TestHarnessOnMemory runs the fault harness on mem:// with a fault that
// only waits: nothing may be lost, duplicated or reordered, and the stall
// measured must cover the wait.
func TestHarnessOnMemory(t *testing.T) {
	broker := memory.NewBroker(memory.Config{})
	t.Cleanup(func() { _ = broker.Close() })
	w := startLoadOn(t, mq.NewClient(broker.Conn()), mq.NewClient(broker.Conn()), "orders", loadOptions{Settle: 500 * time.Millisecond})
	w.Fault(t, "nothing", func(ctx context.Context) error {
		time.Sleep(300 * time.Millisecond)
		return nil
	})
	rows := w.Finish(t, "mem", "default", true)
	if len(rows) != 1 {
		t.Fatalf("rows = %d, want 1", len(rows))
	}
	r := rows[0]
	if r.Confirmed == 0 || r.Handled != r.Confirmed || r.Lost != 0 || r.Duplicates != 0 || r.OrderViolations != 0 {
		t.Fatalf("row = %+v, want every confirmed message handled once, in order", r)
	}
	if r.ProduceStall >= 300*time.Millisecond {
		t.Errorf("produce stall %s, but nothing stopped the producer", r.ProduceStall)
	}
}
