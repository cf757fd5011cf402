package rabbit

import (
	"log/slog"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/mqkit/mq/internal/slogbridge"
)

// SetDriverLogger sends amqp091-go's own log lines to l (slog.Default()
// at the time of each line when l is nil), one Warn record each with the
// attribute driver=amqp091. amqp091's logger is a process-wide setting
// and discards everything by default; set it at start-up, before
// connecting.
func SetDriverLogger(l *slog.Logger) {
	amqp.SetLogger(slogbridge.Printer{Driver: "amqp091", Level: slog.LevelWarn, Logger: l})
}
