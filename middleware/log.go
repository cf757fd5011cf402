package middleware

import (
	"context"
	"errors"
	"log/slog"
	"time"

	"github.com/mqkit/mq"
)

// LogConfig configures Log.
type LogConfig struct {
	// Logger receives the lines. Default slog.Default().
	Logger *slog.Logger
	// Level is the level of a message handled without error (and of
	// skipped duplicates and dead letters). Default (nil) slog.LevelDebug,
	// so per-message lines cost nothing until the logger's level lets
	// them through.
	Level slog.Leveler
	// ErrorLevel is the level of a failed call. Default (nil)
	// slog.LevelWarn. A failure that is not the message's fault
	// (mq.NotAnAttempt: in progress elsewhere, or a broker or store down)
	// is logged at Level.
	ErrorLevel slog.Leveler
}

// Log returns middleware that writes one structured line per handler call
// through cfg.Logger: "mq: message handled" with the message's topic, key,
// id and attempt, the outcome (ack, error, not_an_attempt, or what a
// middleware reported with mq.SetOutcome, such as dead_lettered or
// duplicate, when it runs inside consume middleware), the duration and,
// for a failure, the error. Never the body or the headers: they may hold
// personal data. Place it outside Stack to log each delivery once, inside
// it to log each attempt.
func Log(cfg LogConfig) mq.Middleware {
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Level == nil {
		cfg.Level = slog.LevelDebug
	}
	if cfg.ErrorLevel == nil {
		cfg.ErrorLevel = slog.LevelWarn
	}
	return func(next mq.Handler) mq.Handler {
		return mq.HandlerFunc(func(ctx context.Context, m *mq.Message) error {
			level, errLevel := cfg.Level.Level(), cfg.ErrorLevel.Level()
			if !cfg.Logger.Enabled(ctx, min(level, errLevel)) {
				return next.Handle(ctx, m)
			}
			start := time.Now()
			err := next.Handle(ctx, m)
			outcome := "ack"
			switch {
			case err != nil && mq.NotAnAttempt(err):
				outcome = "not_an_attempt"
			case err != nil:
				outcome, level = "error", errLevel
			default:
				if info, ok := mq.DeliveryFrom(ctx); ok && info.Outcome() != "" {
					outcome = string(info.Outcome())
				}
			}
			if !cfg.Logger.Enabled(ctx, level) {
				return err
			}
			attrs := []slog.Attr{
				slog.String("topic", m.Topic), slog.String("key", m.Key), slog.String("id", m.ID),
				slog.Int("attempt", m.Attempt), slog.String("outcome", outcome), slog.Duration("duration", time.Since(start)),
			}
			if err != nil {
				attrs = append(attrs, slog.String("error", err.Error()))
				var pe *mq.PanicError
				if errors.As(err, &pe) {
					attrs = append(attrs, slog.Bool("panic", true))
				}
			}
			cfg.Logger.LogAttrs(ctx, level, "mq: message handled", attrs...)
			return err
		})
	}
}
