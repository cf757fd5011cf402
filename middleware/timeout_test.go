package middleware

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/mqkit/mq"
)

func TestTimeout(t *testing.T) {
	const d = 20 * time.Millisecond
	tests := []struct {
		name        string
		h           mq.HandlerFunc
		wantErr     error // errors.Is target; nil means success
		wantTimeout bool
	}{
		{name: "fast success", h: func(context.Context, *mq.Message) error { return nil }},
		{name: "fast failure is returned unchanged", h: func(context.Context, *mq.Message) error { return errBoom },
			wantErr: errBoom},
		{name: "handler honouring ctx times out", h: func(ctx context.Context, _ *mq.Message) error {
			<-ctx.Done()
			return ctx.Err()
		}, wantErr: context.DeadlineExceeded, wantTimeout: true},
		{name: "failure after the deadline is a timeout", h: func(ctx context.Context, _ *mq.Message) error {
			<-ctx.Done()
			return errBoom
		}, wantErr: errBoom, wantTimeout: true},
		{name: "success after the deadline is a success", h: func(ctx context.Context, _ *mq.Message) error {
			<-ctx.Done()
			return nil
		}},
		{name: "deadline is set on ctx", h: func(ctx context.Context, _ *mq.Message) error {
			dl, ok := ctx.Deadline()
			if !ok || time.Until(dl) > d {
				return errors.New("no deadline within d")
			}
			return nil
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := Timeout(d)(tt.h).Handle(context.Background(), &mq.Message{})
			if tt.wantErr == nil {
				if err != nil {
					t.Fatalf("err = %v, want nil", err)
				}
				return
			}
			if !errors.Is(err, tt.wantErr) {
				t.Fatalf("err = %v, want one wrapping %v", err, tt.wantErr)
			}
			if got := errors.Is(err, ErrHandlerTimeout); got != tt.wantTimeout {
				t.Fatalf("err = %v: matches ErrHandlerTimeout %v, want %v", err, got, tt.wantTimeout)
			}
		})
	}
}

func TestTimeoutParentCancelIsNotATimeout(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	h := mq.HandlerFunc(func(ctx context.Context, _ *mq.Message) error {
		cancel()
		<-ctx.Done()
		return ctx.Err()
	})
	err := Timeout(time.Hour)(h).Handle(ctx, &mq.Message{})
	if !errors.Is(err, context.Canceled) || errors.Is(err, ErrHandlerTimeout) {
		t.Fatalf("err = %v, want context.Canceled and no timeout", err)
	}
}

func TestTimeoutZeroIsNoTimeout(t *testing.T) {
	for _, d := range []time.Duration{0, -time.Second} {
		h := mq.HandlerFunc(func(ctx context.Context, _ *mq.Message) error {
			if _, ok := ctx.Deadline(); ok {
				return errors.New("deadline set")
			}
			return nil
		})
		if err := Timeout(d)(h).Handle(context.Background(), &mq.Message{}); err != nil {
			t.Fatalf("Timeout(%v): %v", d, err)
		}
	}
}
