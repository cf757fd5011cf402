package main

import (
	"context"
	"database/sql"
	"fmt"
	"strings"
	"text/tabwriter"
	"time"

	_ "github.com/jackc/pgx/v5/stdlib" // the "pgx" database/sql driver

	"github.com/mqkit/mq/outbox"
)

// outboxCmd prints the backlog of a transactional outbox table (package
// outbox) and its oldest pending rows; with -max-age it exits 3 when the
// oldest row has waited longer (for cron jobs and alerts).
func (a *app) outboxCmd(ctx context.Context, args []string) int {
	fs := a.flags("outbox")
	dbURL := fs.String("db", "", "PostgreSQL `URL` (default $DATABASE_URL), e.g. postgres://user:pass@host:5432/db")
	table := fs.String("table", string(outbox.DefaultTable), "outbox `table`")
	n := fs.Int("n", 20, "show up to `N` of the oldest pending rows (0: only the summary)")
	maxAge := fs.Duration("max-age", 0, "exit 3 when the oldest pending row is older than `D`")
	maxRows := fs.Int64("max-rows", -1, "exit 3 when more than `N` rows are pending")
	fs.Usage = func() {
		fmt.Fprintf(a.stderr, "usage: mq outbox [-db URL] [-table T] [-n N] [-max-age D] [-max-rows N]\n\n"+
			"Prints how many committed messages an outbox table holds that no relay has\n"+
			"published yet, how long the oldest has waited (by the database's clock), and\n"+
			"the oldest rows. Exit codes: 0 within the thresholds, 1 on an error, 3 when a\n"+
			"threshold is crossed. It only reads.\n\n")
		fs.PrintDefaults()
	}
	if code, ok := a.parse(fs, args); !ok {
		return code
	}
	if *dbURL == "" {
		*dbURL = a.getenv("DATABASE_URL")
	}
	switch {
	case *dbURL == "":
		return a.usageErr(fs, "no database: pass -db or set DATABASE_URL")
	case *n < 0 || *maxAge < 0:
		return a.usageErr(fs, "-n and -max-age must not be negative")
	}
	t := outbox.Table(*table)
	if _, err := t.Schema(); err != nil {
		return a.usageErr(fs, "%v", err)
	}
	db, err := sql.Open("pgx", *dbURL)
	if err != nil {
		return a.usageErr(fs, "%v", err)
	}
	defer func() { _ = db.Close() }()
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	b, err := t.Backlog(ctx, db)
	if err != nil {
		a.fail("outbox", err)
		return exitFailure
	}
	if b.Rows == 0 {
		fmt.Fprintf(a.stdout, "%s: 0 pending rows\n", t)
	} else {
		fmt.Fprintf(a.stdout, "%s: %d pending rows, the oldest added %s ago (%s)\n", t, b.Rows, b.Age.Round(time.Millisecond), b.Oldest.UTC().Format(time.RFC3339Nano))
	}
	if *n > 0 && b.Rows > 0 {
		rows, err := t.Pending(ctx, db, *n)
		if err != nil {
			a.fail("outbox", err)
			return exitFailure
		}
		tw := tabwriter.NewWriter(a.stdout, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "SEQ\tAGE\tTOPIC\tKEY\tPART\tBYTES\tID")
		for _, r := range rows {
			fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%d\t%d\t%s\n", r.Seq, r.Age.Round(time.Millisecond), r.Topic, printable(r.Key), r.Partition, r.Bytes, r.ID)
		}
		_ = tw.Flush()
	}
	if (*maxAge > 0 && b.Age > *maxAge) || (*maxRows >= 0 && b.Rows > *maxRows) {
		fmt.Fprintf(a.stderr, "mq outbox: threshold crossed (%d rows, oldest %s)\n", b.Rows, b.Age.Round(time.Millisecond))
		return exitThreshold
	}
	return exitOK
}

// printable quotes a key that holds anything but printable ASCII.
func printable(s string) string {
	for _, r := range s {
		if r < 0x20 || r > 0x7e {
			return fmt.Sprintf("%q", s)
		}
	}
	if s == "" || strings.ContainsAny(s, " \t") {
		return fmt.Sprintf("%q", s)
	}
	return s
}
