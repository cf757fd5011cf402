package main

import (
	"bytes"
	"context"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/mqkit/mq"
)

func TestDemoAccountsForEveryOrder(t *testing.T) {
	tests := []struct {
		name string
		args []string
	}{
		{"defaults", []string{"demo"}},
		{"other seed", []string{"demo", "-orders", "60", "-seed", "42"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var out, errOut bytes.Buffer
			a := &app{stdin: strings.NewReader(""), stdout: &out, stderr: &errOut, getenv: func(string) string { return "" }, open: mq.Open}
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
			defer cancel()
			code := a.run(ctx, tc.args)
			got := out.String()
			if code != exitOK {
				t.Fatalf("exit %d\nstdout:\n%s\nstderr:\n%s", code, got, errOut.String())
			}
			for _, want := range []*regexp.Regexp{
				regexp.MustCompile(`(?m)^check: .* 0 lost, 0 processed twice, 0 notified twice, (\d+) of (\d+) notified: OK$`),
				regexp.MustCompile(`(?m)^  duplicates skipped +2$`),
				regexp.MustCompile(`(?m)^  dead-lettered +1 `),           // the poison order, and only it
				regexp.MustCompile(`(?m)^  retried +[1-9]`),              // flaky steps were retried
				regexp.MustCompile(`(?m)^  progress .* orders settled$`), // progress was shown
				regexp.MustCompile(`(?m)^  order-\d{4} reason=error attempts=4 error=".*SKU-GHOST"$`),
			} {
				if !want.MatchString(got) {
					t.Errorf("output lacks %s\n%s", want, got)
				}
			}
			if errOut.Len() != 0 {
				t.Errorf("stderr: %s", errOut.String())
			}
		})
	}
}
