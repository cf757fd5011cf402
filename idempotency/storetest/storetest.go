// Package storetest is the conformance suite of idempotency.Store and
// dlq.AttemptCounter implementations. A store's tests call it:
//
//	func TestStore(t *testing.T) {
//		storetest.Run(t, func(*testing.T) idempotency.Store { return newStore() })
//		storetest.RunAttemptCounter(t, func(*testing.T) dlq.AttemptCounter { return newStore() })
//	}
package storetest

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/mqkit/mq"
	"github.com/mqkit/mq/dlq"
	"github.com/mqkit/mq/idempotency"
)

func Run(t *testing.T, newStore func(t *testing.T) idempotency.Store) {
	run := fmt.Sprintf("%d", time.Now().UnixNano())
	key := func(t *testing.T, name string) string { return run + "/" + t.Name() + "/" + name }
	ctx := context.Background()

	mustClaim := func(t *testing.T, s idempotency.Store, k string, lease time.Duration, want idempotency.Status) idempotency.Claim {
		t.Helper()
		c, err := s.Claim(ctx, k, lease)
		if err != nil {
			t.Fatalf("Claim(%q): %v", k, err)
		}
		if c.Status != want {
			t.Fatalf("Claim(%q) = %v, want %v", k, c.Status, want)
		}
		if (c.Token != "") != (want == idempotency.Acquired) {
			t.Fatalf("Claim(%q) = %v with token %q", k, c.Status, c.Token)
		}
		return c
	}
	// eventually claims k until it is acquired, bounded.
	eventually := func(t *testing.T, s idempotency.Store, k string) idempotency.Claim {
		t.Helper()
		deadline := time.Now().Add(5 * time.Second)
		for {
			c, err := s.Claim(ctx, k, time.Minute)
			if err != nil {
				t.Fatalf("Claim(%q): %v", k, err)
			}
			if c.Status == idempotency.Acquired {
				return c
			}
			if time.Now().After(deadline) {
				t.Fatalf("Claim(%q) still %v after 5s: the lease or keep time did not expire", k, c.Status)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	const short = 150 * time.Millisecond

	tests := []struct {
		name string
		fn   func(t *testing.T, s idempotency.Store)
	}{
		{"claim then busy", func(t *testing.T, s idempotency.Store) {
			k := key(t, "k")
			mustClaim(t, s, k, time.Minute, idempotency.Acquired)
			mustClaim(t, s, k, time.Minute, idempotency.Busy)
			mustClaim(t, s, key(t, "other"), time.Minute, idempotency.Acquired)
		}},
		{"complete then already done", func(t *testing.T, s idempotency.Store) {
			k := key(t, "k")
			c := mustClaim(t, s, k, time.Minute, idempotency.Acquired)
			if err := s.Complete(ctx, k, c.Token, time.Hour); err != nil {
				t.Fatal(err)
			}
			mustClaim(t, s, k, time.Minute, idempotency.AlreadyDone)
			if err := s.Complete(ctx, k, c.Token, time.Hour); err != nil {
				t.Fatalf("second Complete by the same token: %v", err)
			}
			mustClaim(t, s, k, time.Minute, idempotency.AlreadyDone)
		}},
		{"release lets the key be claimed again", func(t *testing.T, s idempotency.Store) {
			k := key(t, "k")
			c1 := mustClaim(t, s, k, time.Minute, idempotency.Acquired)
			if err := s.Release(ctx, k, c1.Token); err != nil {
				t.Fatal(err)
			}
			c2 := mustClaim(t, s, k, time.Minute, idempotency.Acquired)
			if c2.Token == c1.Token {
				t.Fatalf("a new claim reused token %q", c1.Token)
			}
			// The old token no longer owns the key.
			if err := s.Release(ctx, k, c1.Token); !errors.Is(err, idempotency.ErrNotOwner) {
				t.Fatalf("Release by the old token = %v, want idempotency.ErrNotOwner", err)
			}
			if err := s.Complete(ctx, k, c1.Token, time.Hour); !errors.Is(err, idempotency.ErrNotOwner) {
				t.Fatalf("Complete by the old token = %v, want idempotency.ErrNotOwner", err)
			}
			mustClaim(t, s, k, time.Minute, idempotency.Busy)
		}},
		{"wrong token changes nothing", func(t *testing.T, s idempotency.Store) {
			k := key(t, "k")
			c := mustClaim(t, s, k, time.Minute, idempotency.Acquired)
			if err := s.Release(ctx, k, "not-"+c.Token); !errors.Is(err, idempotency.ErrNotOwner) {
				t.Fatalf("Release by another token = %v, want idempotency.ErrNotOwner", err)
			}
			if err := s.Complete(ctx, k, "not-"+c.Token, time.Hour); !errors.Is(err, idempotency.ErrNotOwner) {
				t.Fatalf("Complete by another token = %v, want idempotency.ErrNotOwner", err)
			}
			mustClaim(t, s, k, time.Minute, idempotency.Busy)
			if err := s.Complete(ctx, k, c.Token, time.Hour); err != nil {
				t.Fatal(err)
			}
			mustClaim(t, s, k, time.Minute, idempotency.AlreadyDone)
		}},
		{"release of a done key is refused", func(t *testing.T, s idempotency.Store) {
			k := key(t, "k")
			c := mustClaim(t, s, k, time.Minute, idempotency.Acquired)
			if err := s.Complete(ctx, k, c.Token, time.Hour); err != nil {
				t.Fatal(err)
			}
			if err := s.Release(ctx, k, c.Token); !errors.Is(err, idempotency.ErrNotOwner) {
				t.Fatalf("Release after Complete = %v, want idempotency.ErrNotOwner", err)
			}
			mustClaim(t, s, k, time.Minute, idempotency.AlreadyDone)
		}},
		{"expired lease is taken over and the old holder cannot clobber it", func(t *testing.T, s idempotency.Store) {
			k := key(t, "k")
			old := mustClaim(t, s, k, short, idempotency.Acquired)
			cur := eventually(t, s, k) // the old holder "crashed"
			if err := s.Complete(ctx, k, old.Token, time.Hour); !errors.Is(err, idempotency.ErrNotOwner) {
				t.Fatalf("Complete by the expired holder = %v, want idempotency.ErrNotOwner", err)
			}
			if err := s.Release(ctx, k, old.Token); !errors.Is(err, idempotency.ErrNotOwner) {
				t.Fatalf("Release by the expired holder = %v, want idempotency.ErrNotOwner", err)
			}
			mustClaim(t, s, k, time.Minute, idempotency.Busy)
			if err := s.Complete(ctx, k, cur.Token, time.Hour); err != nil {
				t.Fatal(err)
			}
			mustClaim(t, s, k, time.Minute, idempotency.AlreadyDone)
		}},
		{"complete after the lease expired with no new holder records done", func(t *testing.T, s idempotency.Store) {
			k := key(t, "k")
			c := mustClaim(t, s, k, short, idempotency.Acquired)
			time.Sleep(2 * short)
			if err := s.Complete(ctx, k, c.Token, time.Hour); err != nil {
				t.Fatal(err)
			}
			mustClaim(t, s, k, time.Minute, idempotency.AlreadyDone)
		}},
		{"release after the lease expired is a no-op", func(t *testing.T, s idempotency.Store) {
			k := key(t, "k")
			c := mustClaim(t, s, k, short, idempotency.Acquired)
			time.Sleep(2 * short)
			if err := s.Release(ctx, k, c.Token); err != nil {
				t.Fatal(err)
			}
			mustClaim(t, s, k, time.Minute, idempotency.Acquired)
		}},
		{"done key expires after keep", func(t *testing.T, s idempotency.Store) {
			k := key(t, "k")
			c := mustClaim(t, s, k, time.Minute, idempotency.Acquired)
			if err := s.Complete(ctx, k, c.Token, time.Second); err != nil {
				t.Fatal(err)
			}
			mustClaim(t, s, k, time.Minute, idempotency.AlreadyDone) // unless this machine stalled for a second
			eventually(t, s, k)
		}},
		{"concurrent claims: exactly one acquires", func(t *testing.T, s idempotency.Store) {
			for round := range 5 {
				k := key(t, fmt.Sprint(round))
				const n = 16
				var acquired, busy atomic.Int32
				var wg sync.WaitGroup
				start := make(chan struct{})
				for range n {
					wg.Go(func() {
						<-start
						c, err := s.Claim(ctx, k, time.Minute)
						if err != nil {
							t.Error(err)
							return
						}
						switch c.Status {
						case idempotency.Acquired:
							acquired.Add(1)
						case idempotency.Busy:
							busy.Add(1)
						default:
							t.Errorf("Claim = %v", c.Status)
						}
					})
				}
				close(start)
				wg.Wait()
				if acquired.Load() != 1 || busy.Load() != n-1 {
					t.Fatalf("round %d: %d acquired, %d busy; want 1 and %d", round, acquired.Load(), busy.Load(), n-1)
				}
			}
		}},
		{"extend keeps the claim past its lease", func(t *testing.T, s idempotency.Store) {
			k := key(t, "k")
			c := mustClaim(t, s, k, short, idempotency.Acquired)
			for range 4 {
				time.Sleep(short / 2)
				if err := s.Extend(ctx, k, c.Token, short); err != nil {
					t.Fatalf("Extend: %v", err)
				}
				mustClaim(t, s, k, time.Minute, idempotency.Busy)
			}
			if err := s.Complete(ctx, k, c.Token, time.Hour); err != nil {
				t.Fatal(err)
			}
			mustClaim(t, s, k, time.Minute, idempotency.AlreadyDone)
		}},
		{"extend by another token, after release, complete or expiry is refused", func(t *testing.T, s idempotency.Store) {
			k := key(t, "k")
			c := mustClaim(t, s, k, time.Minute, idempotency.Acquired)
			if err := s.Extend(ctx, k, "not-"+c.Token, time.Minute); !errors.Is(err, idempotency.ErrNotOwner) {
				t.Fatalf("Extend by another token = %v, want ErrNotOwner", err)
			}
			if err := s.Release(ctx, k, c.Token); err != nil {
				t.Fatal(err)
			}
			if err := s.Extend(ctx, k, c.Token, time.Minute); !errors.Is(err, idempotency.ErrNotOwner) {
				t.Fatalf("Extend after Release = %v, want ErrNotOwner", err)
			}
			mustClaim(t, s, k, time.Minute, idempotency.Acquired) // Extend did not bring it back
			k2 := key(t, "done")
			c2 := mustClaim(t, s, k2, time.Minute, idempotency.Acquired)
			if err := s.Complete(ctx, k2, c2.Token, time.Hour); err != nil {
				t.Fatal(err)
			}
			if err := s.Extend(ctx, k2, c2.Token, time.Minute); !errors.Is(err, idempotency.ErrNotOwner) {
				t.Fatalf("Extend after Complete = %v, want ErrNotOwner", err)
			}
			mustClaim(t, s, k2, time.Minute, idempotency.AlreadyDone)
			k3 := key(t, "expired")
			c3 := mustClaim(t, s, k3, short, idempotency.Acquired)
			time.Sleep(2 * short)
			if err := s.Extend(ctx, k3, c3.Token, time.Minute); !errors.Is(err, idempotency.ErrNotOwner) {
				t.Fatalf("Extend after the lease expired = %v, want ErrNotOwner", err)
			}
			mustClaim(t, s, k3, time.Minute, idempotency.Acquired)
			if err := s.Extend(ctx, k3, c3.Token, time.Minute); !errors.Is(err, idempotency.ErrNotOwner) {
				t.Fatalf("Extend by the expired holder after a new claim = %v, want ErrNotOwner", err)
			}
		}},
		{"middleware extends the lease while the handler runs", func(t *testing.T, s idempotency.Store) {
			testLongHandler(t, s, key(t, "id"))
		}},
		{"non-positive durations are rejected", func(t *testing.T, s idempotency.Store) {
			k := key(t, "k")
			if _, err := s.Claim(ctx, k, 0); err == nil {
				t.Fatal("Claim with a zero lease succeeded")
			}
			c := mustClaim(t, s, k, time.Minute, idempotency.Acquired)
			if err := s.Complete(ctx, k, c.Token, -time.Second); err == nil {
				t.Fatal("Complete with a negative keep succeeded")
			}
			if err := s.Extend(ctx, k, c.Token, 0); err == nil {
				t.Fatal("Extend with a zero lease succeeded")
			}
			mustClaim(t, s, k, time.Minute, idempotency.Busy)
		}},
		{"cancelled context fails the claim and takes nothing", func(t *testing.T, s idempotency.Store) {
			k := key(t, "k")
			cctx, cancel := context.WithCancel(ctx)
			cancel()
			if _, err := s.Claim(cctx, k, time.Minute); !errors.Is(err, context.Canceled) {
				t.Fatalf("Claim with a cancelled context = %v, want context.Canceled", err)
			}
			mustClaim(t, s, k, time.Minute, idempotency.Acquired)
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			tt.fn(t, newStore(t))
		})
	}
}

// testLongHandler runs a handler for four times the lease under the dedup
// middleware while a duplicate keeps trying to claim the same message: the
// duplicate must find it busy the whole time, and done afterwards.
func testLongHandler(t *testing.T, s idempotency.Store, id string) {
	// Renewals come every lease/3: a lease short enough to expire often
	// in the test, long enough that a loaded CI machine renews in time.
	const lease = time.Second
	const runFor = 3 * lease
	mw, err := idempotency.New(s, idempotency.Config{Namespace: "storetest", Lease: lease, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	started := make(chan struct{})
	var handlerErr error
	done := make(chan error, 1)
	go func() {
		done <- mw(mq.HandlerFunc(func(ctx context.Context, _ *mq.Message) error {
			close(started)
			select {
			case <-time.After(runFor):
				return nil
			case <-ctx.Done():
				handlerErr = context.Cause(ctx)
				return ctx.Err()
			}
		})).Handle(ctx, &mq.Message{ID: id, Topic: "t"})
	}()
	<-started
	dupRuns, tries := 0, 0
	dup := mw(mq.HandlerFunc(func(context.Context, *mq.Message) error { dupRuns++; return nil }))
	for running := true; running; {
		select {
		case err := <-done:
			if err != nil {
				t.Fatalf("long handler: %v (its context: %v)", err, handlerErr)
			}
			running = false
		case <-time.After(20 * time.Millisecond):
			tries++
			err := dup.Handle(ctx, &mq.Message{ID: id, Topic: "t"})
			if err == nil && dupRuns == 0 {
				// Skipped as done: the handler finished just now, after
				// this branch was chosen. Its result must be there.
				select {
				case err := <-done:
					if err != nil {
						t.Fatalf("long handler: %v (its context: %v)", err, handlerErr)
					}
					running = false
					continue
				case <-time.After(time.Second):
				}
			}
			if !errors.Is(err, idempotency.ErrBusy) {
				t.Fatalf("duplicate %d while the handler ran (%d runs): %v, want ErrBusy", tries, dupRuns, err)
			}
		}
	}
	if tries < 10 || dupRuns != 0 {
		t.Fatalf("duplicate tried %d times and ran %d times; want at least 10 tries, no run", tries, dupRuns)
	}
	if err := dup.Handle(ctx, &mq.Message{ID: id, Topic: "t"}); err != nil || dupRuns != 0 {
		t.Fatalf("duplicate after the handler finished: %v, ran %d times; want skipped", err, dupRuns)
	}
}

// RunAttemptCounter runs the conformance suite of dlq.AttemptCounter
// against the counters newCounter returns (one per subtest; they may all
// be the same counter). Keys are unique per run, so a counter may be
// shared and persistent.
func RunAttemptCounter(t *testing.T, newCounter func(t *testing.T) dlq.AttemptCounter) {
	run := fmt.Sprintf("%d", time.Now().UnixNano())
	key := func(t *testing.T, name string) string { return run + "/" + t.Name() + "/" + name }
	ctx := context.Background()
	count := func(t *testing.T, c dlq.AttemptCounter, k string, ttl time.Duration, want int) {
		t.Helper()
		n, err := c.CountAttempt(ctx, k, ttl)
		if err != nil {
			t.Fatalf("CountAttempt(%q): %v", k, err)
		}
		if n != want {
			t.Fatalf("CountAttempt(%q) = %d, want %d", k, n, want)
		}
	}
	tests := []struct {
		name string
		fn   func(t *testing.T, c dlq.AttemptCounter)
	}{
		{"counts from one", func(t *testing.T, c dlq.AttemptCounter) {
			k := key(t, "k")
			for i := 1; i <= 5; i++ {
				count(t, c, k, time.Minute, i)
			}
			count(t, c, key(t, "other"), time.Minute, 1)
		}},
		{"forget starts again", func(t *testing.T, c dlq.AttemptCounter) {
			k := key(t, "k")
			count(t, c, k, time.Minute, 1)
			count(t, c, k, time.Minute, 2)
			if err := c.ForgetAttempts(ctx, k); err != nil {
				t.Fatal(err)
			}
			count(t, c, k, time.Minute, 1)
			if err := c.ForgetAttempts(ctx, key(t, "absent")); err != nil {
				t.Fatalf("ForgetAttempts of an absent key: %v", err)
			}
		}},
		{"undo takes one back", func(t *testing.T, c dlq.AttemptCounter) {
			k := key(t, "k")
			count(t, c, k, time.Minute, 1)
			count(t, c, k, time.Minute, 2)
			if err := c.UndoAttempt(ctx, k); err != nil {
				t.Fatal(err)
			}
			count(t, c, k, time.Minute, 2)
			for range 3 { // past zero stays at zero
				if err := c.UndoAttempt(ctx, k); err != nil {
					t.Fatal(err)
				}
			}
			count(t, c, k, time.Minute, 1)
			if err := c.UndoAttempt(ctx, key(t, "absent")); err != nil {
				t.Fatalf("UndoAttempt of an absent key: %v", err)
			}
			count(t, c, key(t, "absent"), time.Minute, 1)
		}},
		{"count expires ttl after its last change", func(t *testing.T, c dlq.AttemptCounter) {
			k := key(t, "k")
			const ttl = time.Second // renewals at ttl/2 must land in time on a loaded machine
			count(t, c, k, ttl, 1)
			time.Sleep(ttl / 2)
			count(t, c, k, ttl, 2) // renewed: still there after the first ttl
			time.Sleep(ttl / 2)
			count(t, c, k, ttl, 3)
			deadline := time.Now().Add(5 * time.Second)
			for {
				time.Sleep(ttl + ttl/2)
				n, err := c.CountAttempt(ctx, k, ttl)
				if err != nil {
					t.Fatal(err)
				}
				if n == 1 {
					return
				}
				if time.Now().After(deadline) {
					t.Fatalf("count still %d: it never expired", n)
				}
			}
		}},
		{"concurrent counts are all counted", func(t *testing.T, c dlq.AttemptCounter) {
			k := key(t, "k")
			const n = 32
			seen := make([]atomic.Bool, n+1)
			var wg sync.WaitGroup
			for range n {
				wg.Go(func() {
					got, err := c.CountAttempt(ctx, k, time.Minute)
					if err != nil {
						t.Error(err)
						return
					}
					if got < 1 || got > n || seen[got].Swap(true) {
						t.Errorf("CountAttempt = %d: out of range or returned twice", got)
					}
				})
			}
			wg.Wait()
			count(t, c, k, time.Minute, n+1)
		}},
		{"non-positive ttl is rejected", func(t *testing.T, c dlq.AttemptCounter) {
			if _, err := c.CountAttempt(ctx, key(t, "k"), 0); err == nil {
				t.Fatal("CountAttempt with a zero ttl succeeded")
			}
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			tt.fn(t, newCounter(t))
		})
	}
}
