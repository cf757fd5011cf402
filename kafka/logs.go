package kafka

import (
	"log/slog"

	"github.com/IBM/sarama"
	"github.com/mqkit/mq/internal/slogbridge"
)

// SetDriverLogger sends sarama's own log lines to l (slog.Default() at
// the time of each line when l is nil), one Debug record each with the
// attribute driver=sarama. sarama's logger is a process-wide setting
// (sarama.Logger) and discards everything by default; set it at start-up,
// before connecting.
func SetDriverLogger(l *slog.Logger) {
	sarama.Logger = slogbridge.Printer{Driver: "sarama", Level: slog.LevelDebug, Logger: l}
}
