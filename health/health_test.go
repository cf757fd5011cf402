package health_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/mqkit/mq"
	"github.com/mqkit/mq/health"
	"github.com/mqkit/mq/memory"
)

func get(t *testing.T, h http.Handler) (int, map[string]any) {
	t.Helper()
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest("GET", "/", nil))
	var body map[string]any
	if err := json.Unmarshal(rec.Body.Bytes(), &body); err != nil {
		t.Fatalf("body %q: %v", rec.Body.String(), err)
	}
	return rec.Code, body
}

func TestReadyFollowsTheBroker(t *testing.T) {
	b := memory.NewBroker(memory.Config{})
	c := mq.NewClient(b.Conn())
	defer c.Close()
	h := health.New(health.Config{Cache: -1}, health.Client("broker", c))
	if code, body := get(t, h.Ready()); code != http.StatusOK || body["ready"] != true {
		t.Fatalf("ready with a live broker: %d %v", code, body)
	}
	_ = b.Close()
	code, body := get(t, h.Ready())
	if code != http.StatusServiceUnavailable || body["ready"] != false || !strings.Contains(fmt.Sprint(body["checks"]), "broker") {
		t.Fatalf("ready with a closed broker: %d %v", code, body)
	}
	if code, body := get(t, h.Live()); code != http.StatusOK || body["live"] != true {
		t.Fatalf("live: %d %v", code, body)
	}
}

func TestReadyTimesOutAndCaches(t *testing.T) {
	var calls atomic.Int32
	hang := health.Check{Name: "hung", Ping: func(ctx context.Context) error {
		calls.Add(1)
		time.Sleep(time.Second) // ignores ctx: the checker must not wait for it
		return nil
	}}
	fail := health.Check{Name: "down", Ping: func(context.Context) error {
		return fmt.Errorf("dial: %w", mq.ErrUnavailable)
	}}
	h := health.New(health.Config{Timeout: 50 * time.Millisecond, Cache: time.Hour}, hang, fail, health.Check{Name: "nil"})
	start := time.Now()
	ok, results := h.Check(context.Background())
	if took := time.Since(start); took > 500*time.Millisecond {
		t.Fatalf("a hung check held the probe for %v", took)
	}
	if ok || len(results) != 3 {
		t.Fatalf("ok %v, results %+v", ok, results)
	}
	for _, r := range results {
		if r.OK || r.Error == "" {
			t.Errorf("%s: %+v, want a failure with a reason", r.Name, r)
		}
	}
	if !strings.Contains(results[0].Error, "no answer within 50ms") || !strings.Contains(results[1].Error, "unavailable") {
		t.Errorf("reasons: %q, %q", results[0].Error, results[1].Error)
	}
	h.Check(context.Background())
	if n := calls.Load(); n != 1 {
		t.Errorf("checks ran %d times within the cache interval, want 1", n)
	}
}
