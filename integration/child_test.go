package integration_test

import (
	"bufio"
	"context"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"
)

// killAfter runs the test function named child of this test binary in a
// process of its own, with env added to its environment, waits until it
// prints a line starting with marker, and SIGKILLs it there: a crash at a
// chosen moment. It returns the line. The child's stderr is the test's.
func killAfter(ctx context.Context, t *testing.T, child string, env []string, marker string, within time.Duration) string {
	t.Helper()
	cmd := exec.CommandContext(ctx, os.Args[0], "-test.run=^"+child+"$", "-test.v")
	cmd.Env = append(os.Environ(), env...)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	seen := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			if line := sc.Text(); strings.HasPrefix(line, marker) {
				select {
				case seen <- line:
				default:
				}
			}
		}
	}()
	var line string
	select {
	case line = <-seen:
	case <-time.After(within):
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		t.Fatalf("child %s never printed %q within %v", child, marker, within)
	}
	if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	_ = cmd.Wait()
	return line
}
