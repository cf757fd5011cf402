package slogbridge

import (
	"bytes"
	"context"
	"log/slog"
	"strings"
	"testing"
)

func TestPrinters(t *testing.T) {
	var buf bytes.Buffer
	l := slog.New(slog.NewTextHandler(&buf, &slog.HandlerOptions{Level: slog.LevelInfo}))
	p := Printer{Driver: "sarama", Level: slog.LevelWarn, Logger: l}
	p.Printf("client/metadata fetching from broker %s\n", "127.0.0.1:9092")
	p.Print("a", "b")
	p.Println("line", 2)
	ContextPrinter{Printer{Driver: "go-redis", Level: slog.LevelWarn, Logger: l}}.Printf(context.Background(), "pool: %d", 3)
	Printer{Driver: "quiet", Level: slog.LevelDebug, Logger: l}.Printf("not shown")
	out := buf.String()
	for _, want := range []string{`msg="client/metadata fetching from broker 127.0.0.1:9092" driver=sarama`, "msg=ab driver=sarama", `msg="line 2" driver=sarama`, `msg="pool: 3" driver=go-redis`} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %s:\n%s", want, out)
		}
	}
	if strings.Contains(out, "not shown") {
		t.Errorf("a record below the level was written:\n%s", out)
	}
}
