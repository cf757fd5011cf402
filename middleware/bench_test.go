package middleware_test

import (
	"context"
	"strconv"
	"testing"
	"time"

	"github.com/mqkit/mq"
	"github.com/mqkit/mq/idempotency"
	"github.com/mqkit/mq/middleware"
)

// BenchmarkChain measures the happy path of Retry, Timeout, dedup with the
// memory store and Recover around a handler that does nothing: the cost
// the stack adds to every message. Each message has a new ID, so every
// iteration claims and completes a key (and, past MaxKeys, evicts one).
func BenchmarkChain(b *testing.B) {
	dedup, err := idempotency.New(idempotency.NewMemoryStore(idempotency.MemoryStoreConfig{}), idempotency.Config{Namespace: "bench"})
	if err != nil {
		b.Fatal(err)
	}
	h := mq.Chain(mq.HandlerFunc(func(context.Context, *mq.Message) error { return nil }),
		middleware.Stack(middleware.StackConfig{Timeout: time.Minute, Dedup: dedup}))
	ids := make([]string, b.N)
	for i := range ids {
		ids[i] = strconv.Itoa(i)
	}
	m := &mq.Message{Topic: "orders", Attempt: 1}
	ctx := context.Background()
	b.ReportAllocs()
	b.ResetTimer()
	for i := range b.N {
		m.ID = ids[i]
		if err := h.Handle(ctx, m); err != nil {
			b.Fatal(err)
		}
	}
}
