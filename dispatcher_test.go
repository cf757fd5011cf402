package mq_test

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/mqkit/mq"
	"github.com/mqkit/mq/memory"
)

// TestDispatcherKeyOrderWithRetries drives the dispatcher through many
// short-lived key queues (which it reuses) while handlers fail at random:
// per key, messages must still succeed exactly once each, in produce order,
// with Attempt counting the in-process retries.
func TestDispatcherKeyOrderWithRetries(t *testing.T) {
	for _, tc := range []struct {
		name        string
		keys        int
		concurrency int
		inFlight    int
	}{
		{"many keys, wide", 200, 16, 64},
		{"few keys, long queues", 3, 8, 256},
		{"no keys", 0, 8, 32},
		{"in-flight bound of one", 10, 4, 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			const n = 3000
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			c := mq.NewClient(memory.NewBroker(memory.Config{Capacity: n}).Conn())
			defer c.Close()
			cons, err := c.Consumer(ctx, "t", mq.WithGroup("g"), mq.WithConcurrency(tc.concurrency),
				mq.WithMaxInFlight(tc.inFlight), mq.WithNackBackoff(time.Millisecond, 2*time.Millisecond))
			if err != nil {
				t.Fatal(err)
			}
			msgs := make([]*mq.Message, n)
			for i := range msgs {
				key := ""
				if tc.keys > 0 {
					key = "k" + strconv.Itoa(i%tc.keys)
				}
				msgs[i] = &mq.Message{ID: fmt.Sprint(i), Key: key, Body: []byte(strconv.Itoa(i))}
			}
			if err := c.Producer().Produce(ctx, "t", msgs...); err != nil {
				t.Fatal(err)
			}

			var mu sync.Mutex
			fails := map[int]int{}   // failures still to inject, by sequence
			last := map[string]int{} // last sequence handled per key
			seen := map[int]bool{}
			var errs []string
			for i := range n {
				fails[i] = i % 3 // 0, 1 or 2 failures before success
			}
			all := make(chan struct{})
			done := make(chan error, 1)
			go func() {
				done <- cons.Consume(ctx, mq.HandlerFunc(func(_ context.Context, m *mq.Message) error {
					seq, _ := strconv.Atoi(string(m.Body))
					mu.Lock()
					defer mu.Unlock()
					if fails[seq] > 0 {
						fails[seq]--
						return errors.New("injected")
					}
					if want := seq%3 + 1; m.Attempt != want {
						errs = append(errs, fmt.Sprintf("message %d: Attempt %d, want %d", seq, m.Attempt, want))
					}
					if seen[seq] {
						errs = append(errs, fmt.Sprintf("message %d succeeded twice", seq))
					}
					seen[seq] = true
					if m.Key != "" {
						if prev, ok := last[m.Key]; ok && prev > seq {
							errs = append(errs, fmt.Sprintf("key %s: %d after %d", m.Key, seq, prev))
						}
						last[m.Key] = seq
					}
					if len(seen) == n {
						close(all)
					}
					return nil
				}))
			}()
			select {
			case <-all:
			case <-ctx.Done():
				mu.Lock()
				t.Fatalf("handled %d of %d messages", len(seen), n)
			}
			cancel()
			if err := <-done; err != nil {
				t.Fatal(err)
			}
			mu.Lock()
			defer mu.Unlock()
			for _, e := range errs[:min(len(errs), 10)] {
				t.Error(e)
			}
		})
	}
}
