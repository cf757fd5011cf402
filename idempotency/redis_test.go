package idempotency

import (
	"context"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/mqkit/mq"
	"github.com/mqkit/mq/integration/testbed"
)

// TestRedisStore runs the store suite against a real Redis in a container
// (skipped when Docker is unavailable, failed in CI; see package testbed).
func TestRedisStore(t *testing.T) {
	if testing.Short() {
		t.Skip("needs a Redis container")
	}
	rd := testbed.Redis(t)
	client := redis.NewClient(&redis.Options{Addr: rd.Addr})
	t.Cleanup(func() { _ = client.Close() })
	if err := client.Ping(context.Background()).Err(); err != nil {
		t.Fatalf("ping %s: %v", rd.Addr, err)
	}
	t.Run("default prefix", func(t *testing.T) {
		testStore(t, func(*testing.T) Store { return NewRedisStore(client, RedisStoreConfig{}) })
	})
	t.Run("prefix keeps stores apart", func(t *testing.T) {
		ctx := context.Background()
		a := NewRedisStore(client, RedisStoreConfig{Prefix: "a:"})
		b := NewRedisStore(client, RedisStoreConfig{Prefix: "b:"})
		for _, s := range []*RedisStore{a, b} {
			c, err := s.Claim(ctx, "k", time.Minute)
			if err != nil || c.Status != Acquired {
				t.Fatalf("Claim = %v, %v; want acquired in each prefix", c, err)
			}
		}
		if n, err := client.Exists(ctx, "a:k", "b:k").Result(); err != nil || n != 2 {
			t.Fatalf("EXISTS a:k b:k = %d, %v; want 2", n, err)
		}
	})
	t.Run("script cache flushed", func(t *testing.T) {
		// A Redis restart or failover empties the script cache: EVALSHA
		// fails with NOSCRIPT and the store must fall back to EVAL.
		ctx := context.Background()
		s := NewRedisStore(client, RedisStoreConfig{Prefix: "flush:"})
		if err := client.ScriptFlush(ctx).Err(); err != nil {
			t.Fatal(err)
		}
		c, err := s.Claim(ctx, "k", time.Minute)
		if err != nil || c.Status != Acquired {
			t.Fatalf("Claim after SCRIPT FLUSH = %v, %v", c, err)
		}
		if err := client.ScriptFlush(ctx).Err(); err != nil {
			t.Fatal(err)
		}
		if err := s.Complete(ctx, "k", c.Token, time.Minute); err != nil {
			t.Fatalf("Complete after SCRIPT FLUSH: %v", err)
		}
	})
}

// TestRedisStoreMiddleware runs the dedup middleware across two "instances"
// sharing one Redis: a message handled by one is skipped by the other.
func TestRedisStoreMiddleware(t *testing.T) {
	if testing.Short() {
		t.Skip("needs a Redis container")
	}
	rd := testbed.Redis(t)
	ctx := context.Background()
	newInstance := func() mq.Middleware {
		client := redis.NewClient(&redis.Options{Addr: rd.Addr})
		t.Cleanup(func() { _ = client.Close() })
		mw, err := New(NewRedisStore(client, RedisStoreConfig{}), Config{Namespace: "billing"})
		if err != nil {
			t.Fatal(err)
		}
		return mw
	}
	a, b := newInstance(), newInstance()
	runs := 0
	h := mq.HandlerFunc(func(context.Context, *mq.Message) error { runs++; return nil })
	for _, mw := range []mq.Middleware{a, b, a} {
		if err := mw(h).Handle(ctx, &mq.Message{ID: "pay-1", Topic: "payments"}); err != nil {
			t.Fatal(err)
		}
	}
	if runs != 1 {
		t.Fatalf("handler ran %d times across two instances, want 1", runs)
	}
}
