package main

import (
	"bytes"
	"context"
	"strings"
	"testing"

	"github.com/mqkit/mq"
	"github.com/mqkit/mq/integration/testbed"
)

// TestCLIOnRealBrokers: produce, consume and lag through the command, on
// real Kafka, RabbitMQ and Redis, with nothing but the URL changed.
func TestCLIOnRealBrokers(t *testing.T) {
	if testing.Short() {
		t.Skip("needs real brokers")
	}
	for _, tc := range []struct {
		name   string
		start  func(testing.TB, ...testbed.Option) *testbed.Broker
		suffix string
	}{
		{"kafka", testbed.Kafka, "/?create_topics=true"},
		{"rabbitmq", testbed.RabbitMQ, ""},
		{"redis", testbed.Redis, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b := tc.start(t)
			url := b.URL + tc.suffix
			topic := "cli-" + mq.NewID()
			cmd := func(stdin string, args ...string) (string, string, int) {
				var out, errOut bytes.Buffer
				code := run(context.Background(), append([]string{"-url", url}, args...), strings.NewReader(stdin), &out, &errOut)
				return out.String(), errOut.String(), code
			}
			// A consumer group must exist before messages are produced.
			if _, errOut, code := cmd("", "consume", "-topic", topic, "-group", "g", "-ack", "-timeout", "1s"); code != 0 {
				t.Fatalf("consume (create group): exit %d: %s", code, errOut)
			}
			if _, errOut, code := cmd("first\nsecond\n", "produce", "-topic", topic, "-key", "k1", "-header", "trace=t-1"); code != 0 {
				t.Fatalf("produce: exit %d: %s", code, errOut)
			}
			if out, errOut, code := cmd("", "lag", "-topic", topic, "-group", "g"); code != 0 || !strings.Contains(out, "2") {
				t.Errorf("lag before consuming: exit %d, out %q, err %q; want 2 behind", code, out, errOut)
			}
			out, errOut, code := cmd("", "consume", "-topic", topic, "-group", "g", "-ack", "-n", "2", "-timeout", "60s", "-json")
			if code != 0 {
				t.Fatalf("consume: exit %d: %s", code, errOut)
			}
			lines := strings.Split(strings.TrimSpace(out), "\n")
			if len(lines) != 2 || !strings.Contains(lines[0], `"first"`) || !strings.Contains(lines[1], `"second"`) ||
				!strings.Contains(lines[0], `"k1"`) || !strings.Contains(lines[0], "t-1") {
				t.Errorf("consumed:\n%s\nwant first then second, key k1, header trace", out)
			}
		})
	}
}
