package middleware

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/mqkit/mq"
)

func TestRecover(t *testing.T) {
	tests := []struct {
		name      string
		h         mq.HandlerFunc
		wantErr   error // errors.Is target
		wantPanic any   // PanicError.Value; nil means no panic
	}{
		{name: "no panic, success", h: func(context.Context, *mq.Message) error { return nil }},
		{name: "no panic, error unchanged", h: func(context.Context, *mq.Message) error { return errBoom }, wantErr: errBoom},
		{name: "panic with a string", h: func(context.Context, *mq.Message) error { panicWithValue("kaputt"); return nil }, wantPanic: "kaputt"},
		{name: "panic with an error", h: func(context.Context, *mq.Message) error { panicWithValue(errBoom); return nil },
			wantPanic: errBoom, wantErr: errBoom},
		{name: "runtime error", h: func(_ context.Context, m *mq.Message) error {
			_ = m.Headers["x"] // m is nil
			return nil
		}, wantPanic: "nil pointer dereference"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := Recover()(tt.h).Handle(context.Background(), nil)
			var pe *mq.PanicError
			isPanic := errors.As(err, &pe)
			if isPanic != (tt.wantPanic != nil) {
				t.Fatalf("err = %v: PanicError %v, want %v", err, isPanic, tt.wantPanic != nil)
			}
			if tt.wantErr != nil && !errors.Is(err, tt.wantErr) {
				t.Fatalf("err = %v, want one wrapping %v", err, tt.wantErr)
			}
			if tt.wantErr == nil && tt.wantPanic == nil && err != nil {
				t.Fatalf("err = %v, want nil", err)
			}
			if !isPanic {
				return
			}
			if !strings.Contains(pe.Error(), "panicked") || !strings.Contains(pe.Error(), errString(tt.wantPanic)) {
				t.Errorf("PanicError.Error() = %q", pe.Error())
			}
			// The stack points at the panic, not at the middleware.
			if !strings.Contains(string(pe.Stack), "middleware.TestRecover") {
				t.Errorf("stack does not show the handler:\n%s", pe.Stack)
			}
		})
	}
}

func errString(v any) string {
	if s, ok := v.(string); ok {
		return s
	}
	return v.(error).Error()
}

func panicWithValue(v any) { panic(v) }
