package main

import (
	"bytes"
	"context"
	"net/url"
	"strings"
	"testing"

	"github.com/mqkit/mq"
	"github.com/mqkit/mq/integration/testbed"
	"github.com/mqkit/mq/outbox"
)

// TestOutboxCommand: mq outbox on a real PostgreSQL shows the pending rows
// of a table, exits 3 past a threshold, and never shows the database
// password.
func TestOutboxCommand(t *testing.T) {
	db, pg := testbed.PostgresDB(t)
	ctx := context.Background()
	table := outbox.Table("cli_outbox_" + strings.ReplaceAll(mq.NewID(), "-", "")[20:])
	if err := table.Migrate(ctx, db); err != nil {
		t.Fatal(err)
	}
	run := func(args ...string) (int, string, string) {
		var out, errOut bytes.Buffer
		a := &app{stdin: strings.NewReader(""), stdout: &out, stderr: &errOut, getenv: func(string) string { return "" }, open: mq.Open}
		return a.run(ctx, append([]string{"outbox", "-db", pg.URL, "-table", string(table)}, args...)), out.String(), errOut.String()
	}
	if code, out, stderr := run(); code != exitOK || !strings.Contains(out, "0 pending rows") {
		t.Fatalf("empty outbox: exit %d, %q, %q", code, out, stderr)
	}
	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	msgs := []*mq.Message{{Key: "k1"}, {Key: "k1"}, {Key: "k2"}}
	if err := table.Add(ctx, tx, "orders", msgs...); err != nil {
		t.Fatal(err)
	}
	if err := tx.Commit(); err != nil {
		t.Fatal(err)
	}
	code, out, stderr := run()
	if code != exitOK || !strings.Contains(out, "3 pending rows") || !strings.Contains(out, msgs[0].ID) || !strings.Contains(out, "orders") {
		t.Fatalf("three rows: exit %d, %q, %q", code, out, stderr)
	}
	if code, _, stderr := run("-max-rows", "2"); code != exitThreshold || !strings.Contains(stderr, "threshold crossed") {
		t.Errorf("-max-rows 2 with 3 pending: exit %d, %q; want %d", code, stderr, exitThreshold)
	}
	if code, _, _ := run("-max-rows", "3", "-max-age", "1h"); code != exitOK {
		t.Errorf("within thresholds: exit %d, want 0", code)
	}

	// A wrong password is an error that does not show it.
	u, err := url.Parse(pg.URL)
	if err != nil {
		t.Fatal(err)
	}
	const secret = "not-the-password-9431"
	u.User = url.UserPassword(u.User.Username(), secret)
	var wout, werr bytes.Buffer
	a := &app{stdin: strings.NewReader(""), stdout: &wout, stderr: &werr, getenv: func(string) string { return "" }, open: mq.Open}
	if code := a.run(ctx, []string{"outbox", "-db", u.String()}); code == exitOK {
		t.Fatal("a wrong password was accepted")
	}
	if all := wout.String() + werr.String(); strings.Contains(all, secret) {
		t.Errorf("output shows the password: %q", all)
	}
}
