package mqotel

import (
	"context"
	"testing"

	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"
)

// TestExtractTraceContext: the fast path reads exactly what the OTel
// propagator reads, valid and invalid headers alike.
func TestExtractTraceContext(t *testing.T) {
	const tid, sid = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
	cases := []map[string]string{
		{},
		{"traceparent": "00-" + tid + "-" + sid + "-01"},
		{"traceparent": "00-" + tid + "-" + sid + "-00"},
		{"traceparent": "00-" + tid + "-" + sid + "-03"},
		{"traceparent": "00-" + tid + "-" + sid + "-04"},
		{"traceparent": "00-" + tid + "-" + sid + "-01", "tracestate": "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7"},
		{"traceparent": "00-" + tid + "-" + sid + "-01", "tracestate": "not a=valid,,state"},
		{"traceparent": "00-" + tid + "-" + sid + "-01-extra"},
		{"traceparent": "01-" + tid + "-" + sid + "-01-extra"},
		{"traceparent": "01-" + tid + "-" + sid + "-01"},
		{"traceparent": "01-" + tid + "-" + sid + "-01x"},
		{"traceparent": "fe-" + tid + "-" + sid + "-09"},
		{"traceparent": "ff-" + tid + "-" + sid + "-01"},
		{"traceparent": "00-" + "4BF92F3577B34DA6A3CE929D0E0E4736" + "-" + sid + "-01"},
		{"traceparent": "00-00000000000000000000000000000000-" + sid + "-01"},
		{"traceparent": "00-" + tid + "-0000000000000000-01"},
		{"traceparent": "00-" + tid + "-" + sid},
		{"traceparent": "00_" + tid + "-" + sid + "-01"},
		{"traceparent": "0-" + tid + "-" + sid + "-01"},
		{"traceparent": "00-" + tid + "-" + sid + "-0g"},
		{"traceparent": ""},
		{"tracestate": "congo=t61rcWkgMzE"},
	}
	for _, h := range cases {
		want := trace.SpanContextFromContext(propagation.TraceContext{}.Extract(context.Background(), propagation.MapCarrier(h)))
		got := extractTraceContext(h)
		if !got.Equal(want) || got.IsValid() != want.IsValid() {
			t.Errorf("extractTraceContext(%v) = %v, want %v (the propagator's)", h, got, want)
		}
	}
}

func FuzzExtractTraceContext(f *testing.F) {
	f.Add("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", "a=b")
	f.Add("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x", "")
	f.Fuzz(func(t *testing.T, tp, ts string) {
		h := map[string]string{"traceparent": tp, "tracestate": ts}
		want := trace.SpanContextFromContext(propagation.TraceContext{}.Extract(context.Background(), propagation.MapCarrier(h)))
		if got := extractTraceContext(h); !got.Equal(want) {
			t.Fatalf("extractTraceContext(%q, %q) = %v, want %v", tp, ts, got, want)
		}
	})
}
