package testbed

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// EnvPrometheus names the prometheus server binary (2.x) the metrics
// tests run. scripts/prometheus.sh unpacks Debian's and writes it to
// .testbed.env.
const EnvPrometheus = "MQ_TEST_PROMETHEUS"

// Prometheus is a Prometheus server of one test, on 127.0.0.1, with a
// temporary configuration and storage, started by StartPrometheus.
type Prometheus struct {
	// URL is the server's address, http://127.0.0.1:PORT.
	URL string

	cmd  *exec.Cmd
	done chan struct{} // closed when the process has exited
	log  string        // its log file
}

// StartPrometheus starts a Prometheus server that scrapes target
// (host:port, path /metrics) every second, waits until it is ready, and
// stops it when the test ends. Without a prometheus binary (EnvPrometheus)
// it skips the test, or fails it under CI=true, saying how to get one.
func StartPrometheus(t testing.TB, target string) *Prometheus {
	t.Helper()
	bin := strings.TrimSpace(os.Getenv(EnvPrometheus))
	msg := ""
	switch {
	case bin == "":
		msg = EnvPrometheus + " is not set"
	default:
		if err := exec.Command(bin, "--version").Run(); err != nil {
			msg = bin + " does not run: " + err.Error()
		}
	}
	if msg != "" {
		msg = "testbed: no prometheus (" + msg + "); run scripts/prometheus.sh"
		if inCI() {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
	dir := t.TempDir()
	cfg := filepath.Join(dir, "prometheus.yml")
	conf := fmt.Sprintf("global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n"+
		"scrape_configs:\n  - job_name: mq\n    static_configs:\n      - targets: [%q]\n", target)
	if err := os.WriteFile(cfg, []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	var lastErr error
	for range 3 { // the free port may be taken before prometheus binds it
		p, err := startPrometheus(bin, cfg, dir)
		if err == nil {
			t.Cleanup(p.stop)
			return p
		}
		lastErr = err
	}
	t.Fatalf("testbed: prometheus did not start: %v", lastErr)
	return nil
}

func startPrometheus(bin, cfg, dir string) (*Prometheus, error) {
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	tsdb, err := os.MkdirTemp(dir, "tsdb-")
	if err != nil {
		return nil, err
	}
	logPath := filepath.Join(dir, "prometheus-"+strconv.Itoa(port)+".log")
	logFile, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	defer logFile.Close() // the child has its own descriptor
	addr := "127.0.0.1:" + strconv.Itoa(port)
	cmd := exec.Command(bin,
		"--config.file="+cfg,
		"--storage.tsdb.path="+tsdb,
		"--storage.tsdb.retention.time=1h",
		"--web.listen-address="+addr,
	)
	cmd.Stdout, cmd.Stderr = logFile, logFile
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", bin, err)
	}
	p := &Prometheus{URL: "http://" + addr, cmd: cmd, done: make(chan struct{}), log: logPath}
	go func() { // owned by p: stop waits for it
		_ = cmd.Wait()
		close(p.done)
	}()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := p.waitReady(ctx); err != nil {
		p.stop()
		return nil, fmt.Errorf("%w\n%s", err, p.logTail())
	}
	return p, nil
}

// waitReady polls /-/ready until it answers 200.
func (p *Prometheus) waitReady(ctx context.Context) error {
	for {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, p.URL+"/-/ready", nil)
		resp, err := http.DefaultClient.Do(req)
		if err == nil {
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		select {
		case <-p.done:
			return errors.New("prometheus exited")
		case <-ctx.Done():
			return fmt.Errorf("prometheus not ready at %s: %w", p.URL, ctx.Err())
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// stop terminates the server (SIGTERM, then SIGKILL after 10s) and waits
// for it.
func (p *Prometheus) stop() {
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(10 * time.Second):
		_ = p.cmd.Process.Kill()
		<-p.done
	}
}

func (p *Prometheus) logTail() string {
	b, _ := os.ReadFile(p.log)
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	return strings.Join(lines[max(0, len(lines)-20):], "\n")
}

// Sample is one series of a query result: its labels and value.
type Sample struct {
	Metric map[string]string
	Value  float64
}

// Query evaluates an instant PromQL query now and returns its series. A
// result that is not a vector (a scalar, a string) is an error.
func (p *Prometheus) Query(ctx context.Context, promql string) ([]Sample, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, p.URL+"/api/v1/query?query="+url.QueryEscape(promql), nil)
	if err != nil {
		return nil, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, fmt.Errorf("prometheus query %q: %w", promql, err)
	}
	defer resp.Body.Close()
	var r struct {
		Status string `json:"status"`
		Error  string `json:"error"`
		Data   struct {
			ResultType string `json:"resultType"`
			Result     []struct {
				Metric map[string]string `json:"metric"`
				Value  [2]any            `json:"value"`
			} `json:"result"`
		} `json:"data"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&r); err != nil {
		return nil, fmt.Errorf("prometheus query %q: %s: %w", promql, resp.Status, err)
	}
	if r.Status != "success" {
		return nil, fmt.Errorf("prometheus query %q: %s", promql, r.Error)
	}
	if r.Data.ResultType != "vector" {
		return nil, fmt.Errorf("prometheus query %q: a %s, not a vector", promql, r.Data.ResultType)
	}
	out := make([]Sample, 0, len(r.Data.Result))
	for _, s := range r.Data.Result {
		text, _ := s.Value[1].(string)
		v, err := strconv.ParseFloat(text, 64)
		if err != nil {
			return nil, fmt.Errorf("prometheus query %q: value %v: %w", promql, s.Value[1], err)
		}
		out = append(out, Sample{Metric: s.Metric, Value: v})
	}
	return out, nil
}
