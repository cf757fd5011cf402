package bench

import (
	"context"
	"testing"
	"time"

	"github.com/mqkit/mq/integration/testbed"
)

// TestBrokers runs a small workload through the SDK and the bare driver of
// each real broker: every message arrives once, in every mode.
func TestBrokers(t *testing.T) {
	if testing.Short() {
		t.Skip("needs Redis, RabbitMQ and Kafka brokers; skipped with -short")
	}
	for _, kind := range []testbed.Kind{testbed.KindRedis, testbed.KindRabbitMQ, testbed.KindKafka} {
		t.Run(string(kind), func(t *testing.T) {
			var b *testbed.Broker
			switch kind {
			case testbed.KindRedis:
				b = testbed.Redis(t)
			case testbed.KindRabbitMQ:
				b = testbed.RabbitMQ(t)
			case testbed.KindKafka:
				b = testbed.Kafka(t)
			}
			bare, err := Bare(b.URL)
			if err != nil {
				t.Fatal(err)
			}
			w := Workload{Messages: 2000, Size: 256, Batch: 50, Concurrency: 8, Keys: 50, Timeout: 2 * time.Minute}
			for _, sys := range []System{SDK{URL: b.URL}, bare} {
				rs, err := Run(context.Background(), sys, w, ModeAll)
				if err != nil {
					t.Fatalf("%s: %v", sys.Name(), err)
				}
				if len(rs) != 3 {
					t.Fatalf("%s: %d results, want 3", sys.Name(), len(rs))
				}
				for _, r := range rs {
					if r.Messages != w.Messages || r.Duplicates != 0 || r.MsgsPerSec <= 0 {
						t.Errorf("%s %s: %d messages, %d duplicates, %.0f msg/s", r.System, r.Phase, r.Messages, r.Duplicates, r.MsgsPerSec)
					}
				}
			}
		})
	}
}
