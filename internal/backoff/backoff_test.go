package backoff

import (
	"context"
	"math"
	"testing"
	"time"
)

func TestExp(t *testing.T) {
	ms := time.Millisecond
	for _, tc := range []struct {
		n    int
		want time.Duration
	}{{0, 100 * ms}, {1, 100 * ms}, {2, 200 * ms}, {3, 400 * ms}, {4, 800 * ms}, {5, time.Second}, {100, time.Second}, {math.MaxInt, time.Second}} {
		if got := Exp(tc.n, 100*ms, time.Second); got != tc.want {
			t.Errorf("Exp(%d) = %v, want %v", tc.n, got, tc.want)
		}
	}
	if got := Exp(3, time.Second, time.Millisecond); got != time.Second {
		t.Errorf("max below initial: got %v, want the initial wait", got)
	}
}

func TestGrow(t *testing.T) {
	if got := Grow(3, time.Second, time.Minute, 0.5); got != time.Second {
		t.Errorf("factor below 1: got %v, want a constant 1s", got)
	}
	if got := Grow(3, time.Second, time.Minute, math.NaN()); got != time.Second {
		t.Errorf("NaN factor: got %v, want a constant 1s", got)
	}
	if got := Grow(3, time.Second, time.Minute, 3); got != 9*time.Second {
		t.Errorf("factor 3: got %v, want 9s", got)
	}
}

func TestJitter(t *testing.T) {
	for range 1000 {
		if d := Equal(time.Second); d < time.Second/2 || d > time.Second {
			t.Fatalf("Equal(1s) = %v, outside [0.5s, 1s]", d)
		}
		if d := Full(time.Second); d < 0 || d > time.Second {
			t.Fatalf("Full(1s) = %v, outside [0, 1s]", d)
		}
	}
	if Equal(0) != 0 || Full(-1) != 0 {
		t.Fatal("jitter of a non-positive wait must be 0")
	}
}

func TestSleep(t *testing.T) {
	if !Sleep(context.Background(), time.Millisecond, nil) {
		t.Fatal("Sleep(1ms) reported that it did not pass")
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if Sleep(ctx, time.Hour, nil) {
		t.Fatal("Sleep with a done context reported the hour as passed")
	}
	stop := make(chan struct{})
	close(stop)
	if Sleep(context.Background(), time.Hour, stop) {
		t.Fatal("Sleep with a closed stop channel reported the hour as passed")
	}
}
