package middleware

import (
	"context"
	"errors"
	"fmt"
	"math"
	"sync/atomic"
	"testing"
	"time"

	"github.com/mqkit/mq"
)

func TestThrottleBurstThenWait(t *testing.T) {
	var calls atomic.Int32
	h := Throttle(0.001, 3)(mq.HandlerFunc(func(context.Context, *mq.Message) error {
		calls.Add(1)
		return nil
	}))
	for i := range 3 {
		if err := h.Handle(context.Background(), &mq.Message{}); err != nil {
			t.Fatalf("call %d within the burst: %v", i, err)
		}
	}
	// The bucket is empty and refills once in 1000s: the next message
	// waits until its context ends, and is not handled.
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- h.Handle(ctx, &mq.Message{}) }()
	select {
	case err := <-done:
		t.Fatalf("fourth message did not wait for the throttle: %v", err)
	case <-time.After(50 * time.Millisecond):
	}
	cancel()
	select {
	case err := <-done:
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("err = %v, want context.Canceled", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("throttle wait did not end with its context")
	}
	if n := calls.Load(); n != 3 {
		t.Fatalf("handler called %d times, want 3", n)
	}
}

func TestThrottleSharedAcrossHandlers(t *testing.T) {
	mw := Throttle(0.001, 1)
	ok := mq.HandlerFunc(func(context.Context, *mq.Message) error { return nil })
	a, b := mw(ok), mw(ok)
	if err := a.Handle(context.Background(), &mq.Message{}); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	if err := b.Handle(ctx, &mq.Message{}); err == nil {
		t.Fatal("second handler of the same Throttle was not limited")
	}
}

func TestThrottleRejectsBadRates(t *testing.T) {
	for _, r := range []float64{0, -1, math.NaN(), math.Inf(1)} {
		t.Run(fmt.Sprint(r), func(t *testing.T) {
			defer func() {
				if recover() == nil {
					t.Fatalf("Throttle(%v, 1) did not panic", r)
				}
			}()
			Throttle(r, 1)
		})
	}
}
