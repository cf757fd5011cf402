package integration_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"regexp"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	tracenoop "go.opentelemetry.io/otel/trace/noop"

	"github.com/mqkit/mq"
	"github.com/mqkit/mq/dlq"
	"github.com/mqkit/mq/integration/testbed"
	"github.com/mqkit/mq/middleware"
	"github.com/mqkit/mq/mqotel"
	"github.com/mqkit/mq/mqotel/mqprom"
)

// TestPrometheusScrapesMetrics runs a consumer on Redis with mqotel's
// metrics served by mqprom's handler on a loopback port, scraped every
// second by a real Prometheus server, and checks through Prometheus's
// query API that the processed-messages series (by topic, group and
// outcome) and the lag series (by topic, group and partition) are there
// with the right values. It then checks that every metric name the
// Grafana dashboard (dashboards/mqkit.json) queries is in a real scrape,
// and that every panel's query runs.
func TestPrometheusScrapesMetrics(t *testing.T) {
	if testing.Short() {
		t.Skip("needs a real broker and a prometheus binary")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()

	// Metrics served on a loopback port.
	exp, err := mqprom.New(mqprom.WithServiceName("mqkit-prometheus-test"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = exp.Shutdown(context.Background()) })
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	mux.Handle("/metrics", exp)
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	served := make(chan struct{})
	go func() { defer close(served); _ = srv.Serve(ln) }()
	t.Cleanup(func() { _ = srv.Close(); <-served })
	prom := testbed.StartPrometheus(t, ln.Addr().String())

	var redis target
	for _, tg := range targets {
		if tg.name == "redis" {
			redis = tg
		}
	}
	inst := mqotel.New(mqotel.WithMeterProvider(exp.MeterProvider()), mqotel.WithTracerProvider(tracenoop.NewTracerProvider()), mqotel.WithSystem("redis"))
	c, err := mq.Open(ctx, withParams(t, redis.shared(t).URL, redis.params), inst.Options()...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })

	topic := "prom-" + mq.NewID()
	billing, err := c.Consumer(ctx, topic, mq.WithGroup("billing"), mq.WithNackBackoff(10*time.Millisecond, 100*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	audit, err := c.Consumer(ctx, topic, mq.WithGroup("audit")) // joined, never consumes: its lag grows
	if err != nil {
		t.Fatal(err)
	}
	defer audit.Close()
	defer inst.ObserveLag(c, topic, "billing")()
	defer inst.ObserveLag(c, topic, "audit")()

	dead, err := dlq.New(dlq.Config{Client: c, Group: "billing"})
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	calls := map[string]int{}
	const n = 20
	handled := make(chan struct{}, n)
	h := mq.Chain(mq.HandlerFunc(func(_ context.Context, m *mq.Message) error {
		mu.Lock()
		calls[m.ID]++
		first := calls[m.ID] == 1
		mu.Unlock()
		switch string(m.Body) {
		case "poison":
			return mq.Permanent(errors.New("cannot parse order"))
		case "store-down":
			if first {
				return fmt.Errorf("ledger: %w", mq.ErrUnavailable)
			}
		}
		handled <- struct{}{}
		return nil
	}), middleware.Stack(middleware.StackConfig{DeadLetter: dead, DisableRetry: true}))
	msgs := make([]*mq.Message, n)
	for i := range msgs {
		msgs[i] = &mq.Message{Key: fmt.Sprint(i % 5), Body: []byte("ok")}
	}
	msgs[3].Body, msgs[7].Body = []byte("poison"), []byte("store-down")
	if err := c.Producer().Produce(ctx, topic, msgs...); err != nil {
		t.Fatal(err)
	}
	cctx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- billing.Consume(cctx, h) }()
	defer func() {
		stop()
		if err := <-done; err != nil {
			t.Errorf("Consume: %v", err)
		}
		_ = billing.Close()
	}()
	for range n - 1 { // the poison message is dead-lettered, not handled
		wait(ctx, t, handled, "the orders")
	}

	// Prometheus's view, polled until the scrapes caught up.
	processed := fmt.Sprintf(`sum by (messaging_destination_name, messaging_consumer_group_name, mqkit_outcome) (messaging_process_duration_seconds_count{messaging_destination_name=%q})`, topic)
	want := map[string]float64{"billing/ack": n - 1, "billing/dead_lettered": 1, "billing/unavailable": 1}
	got := pollQuery(ctx, t, prom, processed, func(ss []testbed.Sample) bool {
		return fmt.Sprint(byLabels(ss, "messaging_consumer_group_name", "mqkit_outcome")) == fmt.Sprint(want)
	})
	t.Logf("%s\n%s", processed, formatSamples(got))

	lag := fmt.Sprintf(`mqkit_consumer_lag{messaging_destination_name=%q}`, topic)
	got = pollQuery(ctx, t, prom, lag, func(ss []testbed.Sample) bool {
		l := byLabels(ss, "messaging_consumer_group_name")
		return len(ss) == 2 && l["billing"] == 0 && l["audit"] == n
	})
	t.Logf("%s\n%s", lag, formatSamples(got))
	for _, s := range got {
		for _, k := range []string{"messaging_system", "messaging_destination_partition_id", "job", "instance"} {
			if s.Metric[k] == "" {
				t.Errorf("lag series %v has no %s", s.Metric, k)
			}
		}
	}
	age := fmt.Sprintf(`mqkit_consumer_oldest_age_seconds{messaging_destination_name=%q, messaging_consumer_group_name="audit"}`, topic)
	got = pollQuery(ctx, t, prom, age, func(ss []testbed.Sample) bool { return len(ss) == 1 && ss[0].Value > 0 })
	t.Logf("%s\n%s", age, formatSamples(got))

	checkDashboard(ctx, t, exp, prom)
}

// checkDashboard checks that every metric name in the dashboard's queries
// is in a scrape of the handler and known to Prometheus, and that every
// query runs.
func checkDashboard(ctx context.Context, t *testing.T, exp http.Handler, prom *testbed.Prometheus) {
	t.Helper()
	exprs := dashboardExprs(t, "../dashboards/mqkit.json")
	scrape := scrapeText(t, exp)
	names := map[string]bool{}
	for _, e := range exprs {
		for _, name := range metricNames(e) {
			names[name] = true
		}
	}
	if len(names) == 0 {
		t.Fatal("no metric names found in the dashboard")
	}
	sorted := make([]string, 0, len(names))
	for name := range names {
		sorted = append(sorted, name)
	}
	sort.Strings(sorted)
	for _, name := range sorted {
		if !regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(name) + `[{ ]`).MatchString(scrape) {
			t.Errorf("the dashboard queries %s, which is not in the scrape", name)
		}
		ss, err := prom.Query(ctx, fmt.Sprintf(`count({__name__=%q})`, name))
		if err != nil || len(ss) == 0 {
			t.Errorf("Prometheus has no series %s (%v)", name, err)
		}
	}
	t.Logf("dashboard metric names, all in the scrape and in Prometheus: %s", strings.Join(sorted, ", "))
	vars := strings.NewReplacer("$__rate_interval", "1m", "$topic", ".*", "$group", ".*")
	for _, e := range exprs {
		if _, err := prom.Query(ctx, vars.Replace(e)); err != nil {
			t.Errorf("dashboard query fails: %v", err)
		}
	}
}

// dashboardExprs returns the PromQL expressions of a Grafana dashboard's
// panels, rows' nested panels included.
func dashboardExprs(t *testing.T, path string) []string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	type panel struct {
		Targets []struct {
			Expr string `json:"expr"`
		} `json:"targets"`
		Panels []json.RawMessage `json:"panels"`
	}
	var d struct {
		Panels []json.RawMessage `json:"panels"`
	}
	if err := json.Unmarshal(b, &d); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	var exprs []string
	var walk func([]json.RawMessage)
	walk = func(ps []json.RawMessage) {
		for _, raw := range ps {
			var p panel
			if err := json.Unmarshal(raw, &p); err != nil {
				t.Fatalf("%s: %v", path, err)
			}
			for _, tg := range p.Targets {
				if tg.Expr != "" {
					exprs = append(exprs, tg.Expr)
				}
			}
			walk(p.Panels)
		}
	}
	walk(d.Panels)
	return exprs
}

var (
	promStrings   = regexp.MustCompile(`"(?:[^"\\]|\\.)*"`)
	promMatchers  = regexp.MustCompile(`\{[^}]*\}`)
	promGrouping  = regexp.MustCompile(`\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)`)
	promRanges    = regexp.MustCompile(`\[[^\]]*\]`)
	promIdent     = regexp.MustCompile(`[a-zA-Z_:][a-zA-Z0-9_:]*(\s*\()?`)
	promNotMetric = map[string]bool{"by": true, "without": true, "on": true, "ignoring": true, "group_left": true,
		"group_right": true, "bool": true, "and": true, "or": true, "unless": true, "offset": true, "inf": true, "nan": true}
)

// metricNames returns the metric names a PromQL expression selects: the
// identifiers left once strings, label matchers, groupings and ranges are
// cut out, other than function names and keywords.
func metricNames(expr string) []string {
	e := promStrings.ReplaceAllString(expr, `""`)
	e = promMatchers.ReplaceAllString(e, " ")
	e = promGrouping.ReplaceAllString(e, " ")
	e = promRanges.ReplaceAllString(e, " ")
	var names []string
	for _, m := range promIdent.FindAllStringSubmatch(e, -1) {
		if m[1] != "" || promNotMetric[strings.ToLower(m[0])] {
			continue // a function call, or a keyword
		}
		names = append(names, m[0])
	}
	return names
}

func scrapeText(t *testing.T, h http.Handler) string {
	t.Helper()
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/metrics", nil))
	if rec.Code != http.StatusOK {
		t.Fatalf("scrape: %d %s", rec.Code, rec.Body)
	}
	return rec.Body.String()
}

// pollQuery runs promql every half second until ok holds for its result,
// and returns that result; it fails the test at ctx's end with the last
// result.
func pollQuery(ctx context.Context, t *testing.T, prom *testbed.Prometheus, promql string, ok func([]testbed.Sample) bool) []testbed.Sample {
	t.Helper()
	var last []testbed.Sample
	var lastErr error
	for {
		ss, err := prom.Query(ctx, promql)
		if err == nil && ok(ss) {
			return ss
		}
		last, lastErr = ss, err
		select {
		case <-ctx.Done():
			t.Fatalf("%s never gave the expected result; last: %v\n%s", promql, lastErr, formatSamples(last))
		case <-time.After(500 * time.Millisecond):
		}
	}
}

// byLabels keys samples' values by the values of labels, joined with "/".
func byLabels(ss []testbed.Sample, labels ...string) map[string]float64 {
	out := map[string]float64{}
	for _, s := range ss {
		parts := make([]string, len(labels))
		for i, l := range labels {
			parts[i] = s.Metric[l]
		}
		out[strings.Join(parts, "/")] += s.Value
	}
	return out
}

func formatSamples(ss []testbed.Sample) string {
	lines := make([]string, 0, len(ss))
	for _, s := range ss {
		keys := make([]string, 0, len(s.Metric))
		for k := range s.Metric {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		parts := make([]string, len(keys))
		for i, k := range keys {
			parts[i] = fmt.Sprintf("%s=%q", k, s.Metric[k])
		}
		lines = append(lines, fmt.Sprintf("  {%s} %g", strings.Join(parts, ", "), s.Value))
	}
	sort.Strings(lines)
	return strings.Join(lines, "\n")
}
