package middleware_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"testing"

	"github.com/mqkit/mq"
	"github.com/mqkit/mq/middleware"
)

func TestLog(t *testing.T) {
	var buf bytes.Buffer
	logger := slog.New(slog.NewTextHandler(&buf, &slog.HandlerOptions{Level: slog.LevelDebug}))
	mw := middleware.Log(middleware.LogConfig{Logger: logger})
	m := &mq.Message{ID: "o-1", Key: "cust-7", Topic: "orders", Attempt: 2, Body: []byte("secret card number"), Headers: map[string]string{"auth": "token-xyz"}}
	results := []error{nil, errors.New("db down"), fmt.Errorf("claim: %w", mq.ErrInProgress)}
	for _, r := range results {
		_ = mw(mq.HandlerFunc(func(context.Context, *mq.Message) error { return r })).Handle(context.Background(), m)
	}
	out := buf.String()
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) != 3 {
		t.Fatalf("%d lines, want 3:\n%s", len(lines), out)
	}
	for i, want := range []string{"level=DEBUG", "level=WARN", "level=DEBUG"} {
		if !strings.Contains(lines[i], want) {
			t.Errorf("line %d %q lacks %s", i, lines[i], want)
		}
	}
	for _, want := range []string{"topic=orders", "key=cust-7", "id=o-1", "attempt=2", "outcome=ack", "outcome=error", `error="db down"`, "outcome=not_an_attempt", "duration="} {
		if !strings.Contains(out, want) {
			t.Errorf("log lacks %s:\n%s", want, out)
		}
	}
	if strings.Contains(out, "secret") || strings.Contains(out, "token-xyz") {
		t.Errorf("log shows the body or a header:\n%s", out)
	}

	// Below the logger's level: no line, no cost beyond the call.
	buf.Reset()
	quiet := middleware.Log(middleware.LogConfig{Logger: slog.New(slog.NewTextHandler(&buf, &slog.HandlerOptions{Level: slog.LevelError}))})
	_ = quiet(mq.HandlerFunc(func(context.Context, *mq.Message) error { return nil })).Handle(context.Background(), m)
	if buf.Len() != 0 {
		t.Errorf("logged below the level: %s", buf.String())
	}
}
