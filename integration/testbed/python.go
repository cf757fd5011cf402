package testbed

import (
	"os"
	"os/exec"
	"strings"
	"testing"
)

// EnvPython names the Python interpreter that has the foreign clients of
// the interop tests (confluent-kafka, pika, redis-py). scripts/interop.sh
// makes it and writes it to .testbed.env.
const EnvPython = "MQ_TEST_PYTHON"

// Python returns the interpreter of the interop clients. When there is
// none it skips the test, or fails it under CI=true, saying how to make
// one.
func Python(t testing.TB) string {
	t.Helper()
	py := strings.TrimSpace(os.Getenv(EnvPython))
	msg := ""
	switch {
	case py == "":
		msg = EnvPython + " is not set"
	default:
		if err := exec.Command(py, "-c", "import confluent_kafka, pika, redis").Run(); err != nil {
			msg = py + " lacks the interop clients: " + err.Error()
		}
	}
	if msg == "" {
		return py
	}
	msg = "testbed: no Python with the interop clients (" + msg + "); run scripts/interop.sh (scripts/test.sh does)"
	if inCI() {
		t.Fatal(msg)
	}
	t.Skip(msg)
	return ""
}

// RunPython runs a Python program with the interop clients, with args in
// sys.argv[1:], and returns what it printed on stdout. A failure fails the
// test with the program's stderr.
func RunPython(t testing.TB, program string, args ...string) string {
	t.Helper()
	py := Python(t)
	cmd := exec.Command(py, append([]string{"-c", program}, args...)...)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("python program failed: %v\n%s", err, stderr.String())
	}
	return string(out)
}
