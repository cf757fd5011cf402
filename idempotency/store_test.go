package idempotency

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// testStore is the conformance suite every Store passes. newStore returns
// a store; keys are unique per run, so a store may be shared and
// persistent (a real Redis).
func testStore(t *testing.T, newStore func(t *testing.T) Store) {
	run := fmt.Sprintf("%d", time.Now().UnixNano())
	key := func(t *testing.T, name string) string { return run + "/" + t.Name() + "/" + name }
	ctx := context.Background()

	mustClaim := func(t *testing.T, s Store, k string, lease time.Duration, want Status) Claim {
		t.Helper()
		c, err := s.Claim(ctx, k, lease)
		if err != nil {
			t.Fatalf("Claim(%q): %v", k, err)
		}
		if c.Status != want {
			t.Fatalf("Claim(%q) = %v, want %v", k, c.Status, want)
		}
		if (c.Token != "") != (want == Acquired) {
			t.Fatalf("Claim(%q) = %v with token %q", k, c.Status, c.Token)
		}
		return c
	}
	// eventually claims k until it is acquired, bounded.
	eventually := func(t *testing.T, s Store, k string) Claim {
		t.Helper()
		deadline := time.Now().Add(5 * time.Second)
		for {
			c, err := s.Claim(ctx, k, time.Minute)
			if err != nil {
				t.Fatalf("Claim(%q): %v", k, err)
			}
			if c.Status == Acquired {
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
		fn   func(t *testing.T, s Store)
	}{
		{"claim then busy", func(t *testing.T, s Store) {
			k := key(t, "k")
			mustClaim(t, s, k, time.Minute, Acquired)
			mustClaim(t, s, k, time.Minute, Busy)
			mustClaim(t, s, key(t, "other"), time.Minute, Acquired)
		}},
		{"complete then already done", func(t *testing.T, s Store) {
			k := key(t, "k")
			c := mustClaim(t, s, k, time.Minute, Acquired)
			if err := s.Complete(ctx, k, c.Token, time.Hour); err != nil {
				t.Fatal(err)
			}
			mustClaim(t, s, k, time.Minute, AlreadyDone)
			if err := s.Complete(ctx, k, c.Token, time.Hour); err != nil {
				t.Fatalf("second Complete by the same token: %v", err)
			}
			mustClaim(t, s, k, time.Minute, AlreadyDone)
		}},
		{"release lets the key be claimed again", func(t *testing.T, s Store) {
			k := key(t, "k")
			c1 := mustClaim(t, s, k, time.Minute, Acquired)
			if err := s.Release(ctx, k, c1.Token); err != nil {
				t.Fatal(err)
			}
			c2 := mustClaim(t, s, k, time.Minute, Acquired)
			if c2.Token == c1.Token {
				t.Fatalf("a new claim reused token %q", c1.Token)
			}
			// The old token no longer owns the key.
			if err := s.Release(ctx, k, c1.Token); !errors.Is(err, ErrNotOwner) {
				t.Fatalf("Release by the old token = %v, want ErrNotOwner", err)
			}
			if err := s.Complete(ctx, k, c1.Token, time.Hour); !errors.Is(err, ErrNotOwner) {
				t.Fatalf("Complete by the old token = %v, want ErrNotOwner", err)
			}
			mustClaim(t, s, k, time.Minute, Busy)
		}},
		{"wrong token changes nothing", func(t *testing.T, s Store) {
			k := key(t, "k")
			c := mustClaim(t, s, k, time.Minute, Acquired)
			if err := s.Release(ctx, k, "not-"+c.Token); !errors.Is(err, ErrNotOwner) {
				t.Fatalf("Release by another token = %v, want ErrNotOwner", err)
			}
			if err := s.Complete(ctx, k, "not-"+c.Token, time.Hour); !errors.Is(err, ErrNotOwner) {
				t.Fatalf("Complete by another token = %v, want ErrNotOwner", err)
			}
			mustClaim(t, s, k, time.Minute, Busy)
			if err := s.Complete(ctx, k, c.Token, time.Hour); err != nil {
				t.Fatal(err)
			}
			mustClaim(t, s, k, time.Minute, AlreadyDone)
		}},
		{"release of a done key is refused", func(t *testing.T, s Store) {
			k := key(t, "k")
			c := mustClaim(t, s, k, time.Minute, Acquired)
			if err := s.Complete(ctx, k, c.Token, time.Hour); err != nil {
				t.Fatal(err)
			}
			if err := s.Release(ctx, k, c.Token); !errors.Is(err, ErrNotOwner) {
				t.Fatalf("Release after Complete = %v, want ErrNotOwner", err)
			}
			mustClaim(t, s, k, time.Minute, AlreadyDone)
		}},
		{"expired lease is taken over and the old holder cannot clobber it", func(t *testing.T, s Store) {
			k := key(t, "k")
			old := mustClaim(t, s, k, short, Acquired)
			cur := eventually(t, s, k) // the old holder "crashed"
			if err := s.Complete(ctx, k, old.Token, time.Hour); !errors.Is(err, ErrNotOwner) {
				t.Fatalf("Complete by the expired holder = %v, want ErrNotOwner", err)
			}
			if err := s.Release(ctx, k, old.Token); !errors.Is(err, ErrNotOwner) {
				t.Fatalf("Release by the expired holder = %v, want ErrNotOwner", err)
			}
			mustClaim(t, s, k, time.Minute, Busy)
			if err := s.Complete(ctx, k, cur.Token, time.Hour); err != nil {
				t.Fatal(err)
			}
			mustClaim(t, s, k, time.Minute, AlreadyDone)
		}},
		{"complete after the lease expired with no new holder records done", func(t *testing.T, s Store) {
			k := key(t, "k")
			c := mustClaim(t, s, k, short, Acquired)
			time.Sleep(2 * short)
			if err := s.Complete(ctx, k, c.Token, time.Hour); err != nil {
				t.Fatal(err)
			}
			mustClaim(t, s, k, time.Minute, AlreadyDone)
		}},
		{"release after the lease expired is a no-op", func(t *testing.T, s Store) {
			k := key(t, "k")
			c := mustClaim(t, s, k, short, Acquired)
			time.Sleep(2 * short)
			if err := s.Release(ctx, k, c.Token); err != nil {
				t.Fatal(err)
			}
			mustClaim(t, s, k, time.Minute, Acquired)
		}},
		{"done key expires after keep", func(t *testing.T, s Store) {
			k := key(t, "k")
			c := mustClaim(t, s, k, time.Minute, Acquired)
			if err := s.Complete(ctx, k, c.Token, time.Second); err != nil {
				t.Fatal(err)
			}
			mustClaim(t, s, k, time.Minute, AlreadyDone) // unless this machine stalled for a second
			eventually(t, s, k)
		}},
		{"concurrent claims: exactly one acquires", func(t *testing.T, s Store) {
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
						case Acquired:
							acquired.Add(1)
						case Busy:
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
		{"non-positive durations are rejected", func(t *testing.T, s Store) {
			k := key(t, "k")
			if _, err := s.Claim(ctx, k, 0); err == nil {
				t.Fatal("Claim with a zero lease succeeded")
			}
			c := mustClaim(t, s, k, time.Minute, Acquired)
			if err := s.Complete(ctx, k, c.Token, -time.Second); err == nil {
				t.Fatal("Complete with a negative keep succeeded")
			}
			mustClaim(t, s, k, time.Minute, Busy)
		}},
		{"cancelled context fails the claim and takes nothing", func(t *testing.T, s Store) {
			k := key(t, "k")
			cctx, cancel := context.WithCancel(ctx)
			cancel()
			if _, err := s.Claim(cctx, k, time.Minute); !errors.Is(err, context.Canceled) {
				t.Fatalf("Claim with a cancelled context = %v, want context.Canceled", err)
			}
			mustClaim(t, s, k, time.Minute, Acquired)
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			tt.fn(t, newStore(t))
		})
	}
}

func TestMemoryStore(t *testing.T) {
	testStore(t, func(*testing.T) Store { return NewMemoryStore(MemoryStoreConfig{}) })
}

func TestMemoryStoreEvictsOldestDoneKeys(t *testing.T) {
	ctx := context.Background()
	s := NewMemoryStore(MemoryStoreConfig{MaxKeys: 3})
	for i := range 5 {
		k := fmt.Sprint(i)
		c, err := s.Claim(ctx, k, time.Minute)
		if err != nil || c.Status != Acquired {
			t.Fatalf("Claim(%s) = %v, %v", k, c, err)
		}
		if err := s.Complete(ctx, k, c.Token, time.Hour); err != nil {
			t.Fatal(err)
		}
	}
	if n := s.Len(); n != 3 {
		t.Fatalf("Len = %d, want 3", n)
	}
	// A held key is never evicted, however many keys complete meanwhile.
	held, err := s.Claim(ctx, "held", time.Minute)
	if err != nil || held.Status != Acquired {
		t.Fatalf("Claim(held) = %v, %v", held, err)
	}
	for _, tc := range []struct {
		key  string
		want Status
	}{{"4", AlreadyDone}, {"3", AlreadyDone}, {"2", AlreadyDone}, {"1", Acquired}, {"0", Acquired}} {
		c, err := s.Claim(ctx, tc.key, time.Minute)
		if err != nil || c.Status != tc.want {
			t.Fatalf("Claim(%s) = %v, %v; want %v", tc.key, c.Status, err, tc.want)
		}
		if c.Status == Acquired {
			if err := s.Release(ctx, tc.key, c.Token); err != nil {
				t.Fatal(err)
			}
		}
	}
	if c, _ := s.Claim(ctx, "held", time.Minute); c.Status != Busy {
		t.Fatalf("held key was evicted: Claim = %v", c.Status)
	}
	if err := s.Complete(ctx, "held", held.Token, time.Hour); err != nil {
		t.Fatal(err)
	}
	if n := s.Len(); n != 3 {
		t.Fatalf("Len = %d, want 3", n)
	}
}

func TestMemoryStoreSweepsExpiredKeys(t *testing.T) {
	ctx := context.Background()
	s := NewMemoryStore(MemoryStoreConfig{})
	for i := range 200 {
		k := fmt.Sprint(i)
		c, _ := s.Claim(ctx, k, time.Minute)
		if err := s.Complete(ctx, k, c.Token, time.Millisecond); err != nil {
			t.Fatal(err)
		}
	}
	time.Sleep(5 * time.Millisecond)
	if _, err := s.Claim(ctx, "new", time.Minute); err != nil {
		t.Fatal(err)
	}
	if n := s.Len(); n != 1 {
		t.Fatalf("Len = %d after the keep time passed, want 1 (only the new claim)", n)
	}
}
