package redisstream

import (
	"log/slog"

	"github.com/redis/go-redis/v9"

	"github.com/mqkit/mq/internal/slogbridge"
)

// Importing this package routes go-redis's own log lines (pool and dial
// trouble, which go-redis otherwise prints as plain text on standard
// error, into the middle of a service's structured logs) to
// slog.Default(), as Warn records with driver=go-redis. go-redis's logger
// is a process-wide setting: SetDriverLogger changes where they go.
func init() { SetDriverLogger(nil) }

// SetDriverLogger sends go-redis's own log lines to l (slog.Default() at
// the time of each line when l is nil), one Warn record each with the
// attribute driver=go-redis. It is a process-wide setting of go-redis.
func SetDriverLogger(l *slog.Logger) {
	redis.SetLogger(slogbridge.ContextPrinter{Printer: slogbridge.Printer{Driver: "go-redis", Level: slog.LevelWarn, Logger: l}})
}
