package kafka_test

import (
	"context"
	"log/slog"
	"strings"
	"sync"
	"testing"

	"github.com/mqkit/mq/integration/testbed"
	"github.com/mqkit/mq/kafka"
)

// TestMain lets the tests share one broker (testbed.SharedKafka) and stops
// it when they are done. sarama's log, a process-wide setting, goes to
// saramaLines before any client exists.
func TestMain(m *testing.M) {
	kafka.SetDriverLogger(slog.New(saramaLines))
	testbed.Main(m)
}

// saramaLines keeps the lines of sarama's log that tests look for.
var saramaLines = &lineCatcher{keep: "because consuming was taking too long"}

// lineCatcher is a slog.Handler that keeps the messages containing keep
// and drops the rest.
type lineCatcher struct {
	keep string

	mu    sync.Mutex
	lines []string
}

func (*lineCatcher) Enabled(context.Context, slog.Level) bool { return true }
func (h *lineCatcher) WithAttrs([]slog.Attr) slog.Handler     { return h }
func (h *lineCatcher) WithGroup(string) slog.Handler          { return h }

func (h *lineCatcher) Handle(_ context.Context, r slog.Record) error {
	if strings.Contains(r.Message, h.keep) {
		h.mu.Lock()
		h.lines = append(h.lines, r.Message)
		h.mu.Unlock()
	}
	return nil
}

// matching returns the kept lines that contain s.
func (h *lineCatcher) matching(s string) []string {
	h.mu.Lock()
	defer h.mu.Unlock()
	var out []string
	for _, l := range h.lines {
		if strings.Contains(l, s) {
			out = append(out, l)
		}
	}
	return out
}
