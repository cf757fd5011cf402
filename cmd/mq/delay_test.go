package main

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/mqkit/mq"
)

// TestProduceDelayed: -delay and -at schedule the messages in the broker,
// mq lag shows them waiting, and they arrive once due, not before.
func TestProduceDelayed(t *testing.T) {
	s := newShared(t)
	c := mq.NewClient(s.b.Conn())
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cons, err := c.Consumer(ctx, "reminders", mq.WithGroup("mail"))
	if err != nil {
		t.Fatal(err)
	}
	defer cons.Close()

	start := time.Now()
	code, out, stderr := s.run(t, "", "produce", "-topic", "reminders", "-delay", "700ms", "soon")
	if code != exitOK {
		t.Fatalf("produce -delay: exit %d, stderr %q", code, stderr)
	}
	id := strings.TrimSpace(out)
	at := time.Now().Add(time.Hour).UTC().Format(time.RFC3339)
	if code, _, stderr := s.run(t, "", "produce", "-topic", "reminders", "-at", at, "later"); code != exitOK {
		t.Fatalf("produce -at: exit %d, stderr %q", code, stderr)
	}
	code, out, stderr = s.run(t, "", "lag", "-topic", "reminders", "-group", "mail")
	if code != exitOK || !strings.Contains(out, "scheduled (delayed, not yet due) 2, next due") {
		t.Fatalf("lag: exit %d, stdout %q, stderr %q; want 2 scheduled", code, out, stderr)
	}

	got := make(chan *mq.Message, 2)
	go func() {
		_ = cons.Consume(ctx, mq.HandlerFunc(func(_ context.Context, m *mq.Message) error {
			got <- m.Clone()
			return nil
		}))
	}()
	select {
	case m := <-got:
		if m.ID != id || string(m.Body) != "soon" {
			t.Fatalf("first delivery %s %q, want %s %q", m.ID, m.Body, id, "soon")
		}
		if since := time.Since(start); since < 700*time.Millisecond {
			t.Fatalf("delayed message delivered after %v, before its 700ms", since)
		}
		if m.DeliverAt.IsZero() {
			t.Fatal("DeliverAt not set on delivery")
		}
	case <-ctx.Done():
		t.Fatal("delayed message never arrived")
	}

	for _, bad := range [][]string{
		{"-delay", "1s", "-at", at},
		{"-delay", "-1s"},
		{"-at", "tomorrow"},
	} {
		args := append([]string{"produce", "-topic", "reminders"}, bad...)
		if code, _, stderr := s.run(t, "", append(args, "x")...); code != exitUsage {
			t.Errorf("produce %v: exit %d (stderr %q), want %d", bad, code, stderr, exitUsage)
		}
	}
}

// TestBenchDelay runs mq bench-delay small on mem://: nothing early, lost
// or doubled, and the retry table has its three modes.
func TestBenchDelay(t *testing.T) {
	s := newShared(t)
	code, out, stderr := s.run(t, "", "bench-delay", "-n", "500", "-spread", "300ms", "-retry-n", "100", "-batch-n", "400", "-quiet")
	if code != exitOK {
		t.Fatalf("bench-delay: exit %d, stderr %q", code, stderr)
	}
	var row []string
	for _, l := range lines(out) {
		if f := strings.Fields(l); len(f) == 8 && f[0] == "500" {
			row = f
		}
	}
	if row == nil || row[5] != "0" || row[6] != "0" || row[7] != "0" {
		t.Fatalf("bench-delay delay row %q: want 0 early, 0 duplicates, 0 lost\n%s", row, out)
	}
	if !strings.Contains(out, "batch ÷ single: ") {
		t.Errorf("no batch ÷ single ratio:\n%s", out)
	}
	for _, mode := range []string{"none", "retry", "retry-later", "single", "batch"} {
		if !strings.Contains(out, mode+"   ") && !strings.Contains(out, " "+mode+" ") {
			t.Errorf("retry table lacks mode %q:\n%s", mode, out)
		}
	}
}
