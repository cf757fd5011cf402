package idempotency_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/mqkit/mq/dlq"
	"github.com/mqkit/mq/idempotency"
	"github.com/mqkit/mq/idempotency/storetest"
)

func TestMemoryStore(t *testing.T) {
	storetest.Run(t, func(*testing.T) idempotency.Store { return idempotency.NewMemoryStore(idempotency.MemoryStoreConfig{}) })
}

func TestMemoryStoreAttemptCounter(t *testing.T) {
	storetest.RunAttemptCounter(t, func(*testing.T) dlq.AttemptCounter {
		return idempotency.NewMemoryStore(idempotency.MemoryStoreConfig{})
	})
}

func TestMemoryStoreEvictsOldestDoneKeys(t *testing.T) {
	ctx := context.Background()
	s := idempotency.NewMemoryStore(idempotency.MemoryStoreConfig{MaxKeys: 3})
	for i := range 5 {
		k := fmt.Sprint(i)
		c, err := s.Claim(ctx, k, time.Minute)
		if err != nil || c.Status != idempotency.Acquired {
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
	if err != nil || held.Status != idempotency.Acquired {
		t.Fatalf("Claim(held) = %v, %v", held, err)
	}
	for _, tc := range []struct {
		key  string
		want idempotency.Status
	}{{"4", idempotency.AlreadyDone}, {"3", idempotency.AlreadyDone}, {"2", idempotency.AlreadyDone}, {"1", idempotency.Acquired}, {"0", idempotency.Acquired}} {
		c, err := s.Claim(ctx, tc.key, time.Minute)
		if err != nil || c.Status != tc.want {
			t.Fatalf("Claim(%s) = %v, %v; want %v", tc.key, c.Status, err, tc.want)
		}
		if c.Status == idempotency.Acquired {
			if err := s.Release(ctx, tc.key, c.Token); err != nil {
				t.Fatal(err)
			}
		}
	}
	if c, _ := s.Claim(ctx, "held", time.Minute); c.Status != idempotency.Busy {
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
	s := idempotency.NewMemoryStore(idempotency.MemoryStoreConfig{})
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
