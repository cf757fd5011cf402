package mqotel

import "go.opentelemetry.io/otel/trace"

// W3C Trace Context header names.
const (
	traceparentHeader = "traceparent"
	tracestateHeader  = "tracestate"
)

// extractTraceContext reads a W3C traceparent (and tracestate) from
// headers as propagation.TraceContext's Extract does, without making a
// context for it: the remote span context, or an invalid one when the
// headers hold none that is valid. Used when the propagator is
// TraceContext alone.
func extractTraceContext(headers map[string]string) trace.SpanContext {
	h := headers[traceparentHeader]
	// version "-" trace-id "-" parent-id "-" flags, lowercase hex; a later
	// version may add fields after a further "-".
	if len(h) < 55 || h[2] != '-' || h[35] != '-' || h[52] != '-' || (len(h) > 55 && h[55] != '-') {
		return trace.SpanContext{}
	}
	var ver, flags [1]byte
	var scc trace.SpanContextConfig
	if !hexInto(ver[:], h[0:2]) || !hexInto(scc.TraceID[:], h[3:35]) ||
		!hexInto(scc.SpanID[:], h[36:52]) || !hexInto(flags[:], h[53:55]) {
		return trace.SpanContext{}
	}
	switch {
	case ver[0] == 0xff: // forbidden
		return trace.SpanContext{}
	case ver[0] == 0 && (len(h) != 55 || flags[0] > 3):
		// Version 00 has no further fields and no other flag bits.
		return trace.SpanContext{}
	}
	scc.TraceFlags = trace.TraceFlags(flags[0]) & (trace.FlagsSampled | trace.FlagsRandom)
	if ts, ok := headers[tracestateHeader]; ok {
		// A bad tracestate does not spoil the traceparent (W3C).
		scc.TraceState, _ = trace.ParseTraceState(ts)
	}
	scc.Remote = true
	sc := trace.NewSpanContext(scc)
	if !sc.IsValid() {
		return trace.SpanContext{}
	}
	return sc
}

// hexInto decodes s, lowercase hex of 2*len(dst) digits, into dst.
func hexInto(dst []byte, s string) bool {
	for i := range dst {
		hi, ok1 := fromHex(s[2*i])
		lo, ok2 := fromHex(s[2*i+1])
		if !ok1 || !ok2 {
			return false
		}
		dst[i] = hi<<4 | lo
	}
	return true
}

func fromHex(c byte) (byte, bool) {
	switch {
	case '0' <= c && c <= '9':
		return c - '0', true
	case 'a' <= c && c <= 'f':
		return c - 'a' + 10, true
	}
	return 0, false
}
