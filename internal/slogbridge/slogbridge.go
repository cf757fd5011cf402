// Package slogbridge routes the printf-style loggers of the broker client
// libraries (sarama, amqp091-go, go-redis) into a log/slog logger, so a
// service's logs stay structured: one record per driver line, with the
// driver named in a "driver" attribute.
package slogbridge

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
)

// Printer implements the Print/Printf/Println loggers of sarama and
// amqp091-go.
type Printer struct {
	// Driver names the library ("sarama", "amqp091", "go-redis").
	Driver string
	// Level of every record.
	Level slog.Level
	// Logger receives the records; nil means slog.Default() at the time
	// of each line, so a later slog.SetDefault applies.
	Logger *slog.Logger
}

func (p Printer) log(ctx context.Context, text string) {
	l := p.Logger
	if l == nil {
		l = slog.Default()
	}
	if !l.Enabled(ctx, p.Level) {
		return
	}
	l.LogAttrs(ctx, p.Level, strings.TrimSpace(text), slog.String("driver", p.Driver))
}

// Print logs fmt.Sprint(v...).
func (p Printer) Print(v ...any) { p.log(context.Background(), fmt.Sprint(v...)) }

// Printf logs fmt.Sprintf(format, v...).
func (p Printer) Printf(format string, v ...any) {
	p.log(context.Background(), fmt.Sprintf(format, v...))
}

// Println logs fmt.Sprintln(v...) without its newline.
func (p Printer) Println(v ...any) { p.log(context.Background(), fmt.Sprintln(v...)) }

// ContextPrinter implements go-redis's logger, whose Printf takes a
// context.
type ContextPrinter struct{ Printer Printer }

// Printf logs fmt.Sprintf(format, v...) with ctx.
func (p ContextPrinter) Printf(ctx context.Context, format string, v ...any) {
	p.Printer.log(ctx, fmt.Sprintf(format, v...))
}
