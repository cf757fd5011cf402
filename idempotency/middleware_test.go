package idempotency

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os/exec"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mqkit/mq"
)

var errBoom = errors.New("boom")

// faultyStore wraps a store, failing the operations told to and recording
// whether Complete and Release got a live context.
type faultyStore struct {
	Store
	claimErr, completeErr, releaseErr error
	completes, releases               int
	settleCtxErr                      error
}

func (s *faultyStore) Claim(ctx context.Context, key string, lease time.Duration) (Claim, error) {
	if s.claimErr != nil {
		return Claim{}, s.claimErr
	}
	return s.Store.Claim(ctx, key, lease)
}

func (s *faultyStore) Complete(ctx context.Context, key, token string, keep time.Duration) error {
	s.completes++
	s.settleCtxErr = ctx.Err()
	if s.completeErr != nil {
		return s.completeErr
	}
	return s.Store.Complete(ctx, key, token, keep)
}

func (s *faultyStore) Release(ctx context.Context, key, token string) error {
	s.releases++
	s.settleCtxErr = ctx.Err()
	if s.releaseErr != nil {
		return s.releaseErr
	}
	return s.Store.Release(ctx, key, token)
}

func TestNewValidates(t *testing.T) {
	s := NewMemoryStore(MemoryStoreConfig{})
	tests := []struct {
		name  string
		store Store
		cfg   Config
		want  string
	}{
		{"nil store", nil, Config{Namespace: "g"}, "needs a Store"},
		{"no namespace", s, Config{}, "Namespace is required"},
		{"negative lease", s, Config{Namespace: "g", Lease: -time.Second}, "must not be negative"},
		{"negative keep", s, Config{Namespace: "g", Keep: -time.Second}, "must not be negative"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			mw, err := New(tt.store, tt.cfg)
			if err == nil || mw != nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("New = %v, %v; want an error containing %q", mw != nil, err, tt.want)
			}
		})
	}
}

func TestMiddleware(t *testing.T) {
	ctx := context.Background()
	type step struct {
		m       *mq.Message
		result  error // the handler's result
		wantRun bool
		wantErr error // errors.Is target; nil means success
	}
	msg := func(topic, id string, hdr ...string) *mq.Message {
		m := &mq.Message{ID: id, Topic: topic}
		for i := 0; i+1 < len(hdr); i += 2 {
			m.SetHeader(hdr[i], hdr[i+1])
		}
		return m
	}
	tests := []struct {
		name  string
		cfg   Config
		steps []step
	}{
		{"duplicate after success is skipped", Config{}, []step{
			{m: msg("t", "1"), wantRun: true},
			{m: msg("t", "1"), wantRun: false},
			{m: msg("t", "2"), wantRun: true},
		}},
		{"failure releases, so the retry runs", Config{}, []step{
			{m: msg("t", "1"), result: errBoom, wantRun: true, wantErr: errBoom},
			{m: msg("t", "1"), wantRun: true},
			{m: msg("t", "1"), wantRun: false},
		}},
		{"permanent failure is returned unchanged", Config{}, []step{
			{m: msg("t", "1"), result: mq.Permanent(errBoom), wantRun: true, wantErr: errBoom},
		}},
		{"same ID on another topic is another key", Config{}, []step{
			{m: msg("a", "1"), wantRun: true},
			{m: msg("b", "1"), wantRun: true},
			{m: msg("a", "1"), wantRun: false},
		}},
		{"business key from a header", Config{KeyFunc: func(m *mq.Message) string { return m.Header("payment-id") }}, []step{
			{m: msg("t", "1", "payment-id", "p-9"), wantRun: true},
			{m: msg("t", "2", "payment-id", "p-9"), wantRun: false},
			{m: msg("t", "3", "payment-id", "p-10"), wantRun: true},
			{m: msg("t", "4"), wantRun: false, wantErr: ErrEmptyKey},
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := tt.cfg
			cfg.Namespace = "billing"
			mw, err := New(NewMemoryStore(MemoryStoreConfig{}), cfg)
			if err != nil {
				t.Fatal(err)
			}
			for i, st := range tt.steps {
				ran := false
				h := mw(mq.HandlerFunc(func(context.Context, *mq.Message) error { ran = true; return st.result }))
				err := h.Handle(ctx, st.m)
				if ran != st.wantRun {
					t.Fatalf("step %d (%s): handler ran %v, want %v", i, st.m.ID, ran, st.wantRun)
				}
				if (st.wantErr == nil) != (err == nil) || (st.wantErr != nil && !errors.Is(err, st.wantErr)) {
					t.Fatalf("step %d (%s): err = %v, want %v", i, st.m.ID, err, st.wantErr)
				}
				if errors.Is(err, ErrEmptyKey) && !mq.IsPermanent(err) {
					t.Fatalf("step %d: ErrEmptyKey is not marked permanent", i)
				}
			}
		})
	}
}

func TestMiddlewareNamespacesAreIndependent(t *testing.T) {
	store := NewMemoryStore(MemoryStoreConfig{})
	billing, _ := New(store, Config{Namespace: "billing"})
	shipping, _ := New(store, Config{Namespace: "shipping"})
	runs := 0
	h := mq.HandlerFunc(func(context.Context, *mq.Message) error { runs++; return nil })
	for _, mw := range []mq.Middleware{billing, shipping, billing, shipping} {
		if err := mw(h).Handle(context.Background(), &mq.Message{ID: "1", Topic: "orders"}); err != nil {
			t.Fatal(err)
		}
	}
	if runs != 2 {
		t.Fatalf("handler ran %d times for two groups, want 2", runs)
	}
}

func TestMiddlewareBusy(t *testing.T) {
	store := NewMemoryStore(MemoryStoreConfig{})
	mw, _ := New(store, Config{Namespace: "g"})
	m := &mq.Message{ID: "1", Topic: "t"}
	inner := mq.HandlerFunc(func(ctx context.Context, m *mq.Message) error {
		// While the first delivery runs, a duplicate finds it busy.
		ran := false
		err := mw(mq.HandlerFunc(func(context.Context, *mq.Message) error { ran = true; return nil })).Handle(ctx, m.Clone())
		if !errors.Is(err, ErrBusy) || ran {
			t.Errorf("duplicate while running: err %v, ran %v; want ErrBusy, not run", err, ran)
		}
		return nil
	})
	if err := mw(inner).Handle(context.Background(), m); err != nil {
		t.Fatal(err)
	}
}

func TestMiddlewareStoreFailures(t *testing.T) {
	storeDown := errors.New("store down")
	tests := []struct {
		name          string
		store         faultyStore
		result        error
		wantRun       bool
		wantErr       error
		wantLog       string
		wantCompletes int
		wantReleases  int
	}{
		{name: "claim fails closed", store: faultyStore{claimErr: storeDown},
			wantRun: false, wantErr: storeDown},
		{name: "claim failure is an outage", store: faultyStore{claimErr: storeDown},
			wantRun: false, wantErr: mq.ErrUnavailable},
		{name: "permanent claim failure stays permanent", store: faultyStore{claimErr: mq.Permanent(storeDown)},
			wantRun: false, wantErr: storeDown},
		{name: "complete failure is logged, success returned", store: faultyStore{completeErr: storeDown},
			wantRun: true, wantLog: "could not mark message done", wantCompletes: 1},
		{name: "release failure is logged, handler error returned", store: faultyStore{releaseErr: storeDown}, result: errBoom,
			wantRun: true, wantErr: errBoom, wantLog: "could not release claim", wantReleases: 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var logs bytes.Buffer
			s := tt.store
			s.Store = NewMemoryStore(MemoryStoreConfig{})
			mw, _ := New(&s, Config{Namespace: "g", Logger: slog.New(slog.NewTextHandler(&logs, nil))})
			ran := false
			err := mw(mq.HandlerFunc(func(context.Context, *mq.Message) error { ran = true; return tt.result })).
				Handle(context.Background(), &mq.Message{ID: "1", Topic: "t"})
			if ran != tt.wantRun {
				t.Fatalf("handler ran %v, want %v", ran, tt.wantRun)
			}
			if (tt.wantErr == nil) != (err == nil) || (tt.wantErr != nil && !errors.Is(err, tt.wantErr)) {
				t.Fatalf("err = %v, want %v", err, tt.wantErr)
			}
			if tt.wantLog != "" && !strings.Contains(logs.String(), tt.wantLog) {
				t.Fatalf("log %q does not contain %q", logs.String(), tt.wantLog)
			}
			if s.completes != tt.wantCompletes || s.releases != tt.wantReleases {
				t.Fatalf("%d completes, %d releases; want %d, %d", s.completes, s.releases, tt.wantCompletes, tt.wantReleases)
			}
		})
	}
}

func TestMiddlewareSettlesAfterHandlerContextEnds(t *testing.T) {
	for _, fail := range []bool{false, true} {
		s := &faultyStore{Store: NewMemoryStore(MemoryStoreConfig{})}
		mw, _ := New(s, Config{Namespace: "g"})
		ctx, cancel := context.WithCancel(context.Background())
		h := mq.HandlerFunc(func(context.Context, *mq.Message) error {
			cancel() // say, a timeout hit just as the handler returned
			if fail {
				return errBoom
			}
			return nil
		})
		_ = mw(h).Handle(ctx, &mq.Message{ID: "1", Topic: "t"})
		if s.completes+s.releases != 1 || s.settleCtxErr != nil {
			t.Fatalf("fail=%v: %d completes, %d releases, context %v; want one with a live context", fail, s.completes, s.releases, s.settleCtxErr)
		}
	}
}

func TestMiddlewareReleasesOnPanic(t *testing.T) {
	store := NewMemoryStore(MemoryStoreConfig{})
	mw, _ := New(store, Config{Namespace: "g"})
	m := &mq.Message{ID: "1", Topic: "t"}
	func() {
		defer func() {
			if recover() == nil {
				t.Fatal("panic was swallowed")
			}
		}()
		_ = mw(mq.HandlerFunc(func(context.Context, *mq.Message) error { panic("boom") })).Handle(context.Background(), m)
	}()
	ran := false
	if err := mw(mq.HandlerFunc(func(context.Context, *mq.Message) error { ran = true; return nil })).Handle(context.Background(), m); err != nil || !ran {
		t.Fatalf("after a panic the retry got err %v, ran %v: the claim was not released", err, ran)
	}
}

// extendStore counts Extend calls and fails them with extendErr.
type extendStore struct {
	Store
	mu        sync.Mutex
	extends   int
	extendErr error
}

func (s *extendStore) Extend(ctx context.Context, key, token string, lease time.Duration) error {
	s.mu.Lock()
	s.extends++
	err := s.extendErr
	s.mu.Unlock()
	if err != nil {
		return err
	}
	return s.Store.Extend(ctx, key, token, lease)
}

func (s *extendStore) count() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.extends
}

// TestMiddlewareLostClaimCancelsHandler: when an extension reports the
// claim no longer held, the handler's context is cancelled, the key is not
// completed (another consumer may be running it), and the error says the
// message is in progress elsewhere, so it is neither retried as an attempt
// nor dead-lettered.
func TestMiddlewareLostClaimCancelsHandler(t *testing.T) {
	s := &faultyStore{Store: &extendStore{Store: NewMemoryStore(MemoryStoreConfig{}), extendErr: fmt.Errorf("%w (test)", ErrNotOwner)}}
	mw, _ := New(s, Config{Namespace: "g", Lease: 90 * time.Millisecond, Logger: slog.New(slog.DiscardHandler)})
	var cause error
	err := mw(mq.HandlerFunc(func(ctx context.Context, _ *mq.Message) error {
		select {
		case <-ctx.Done():
			cause = context.Cause(ctx)
			return nil // even a handler that ignores the cancellation and "succeeds"
		case <-time.After(10 * time.Second):
			return errors.New("the handler's context was never cancelled")
		}
	})).Handle(context.Background(), &mq.Message{ID: "1", Topic: "t"})
	if !errors.Is(cause, ErrNotOwner) {
		t.Fatalf("handler context cause %v, want ErrNotOwner", cause)
	}
	if !errors.Is(err, ErrNotOwner) || !errors.Is(err, mq.ErrInProgress) || !mq.NotAnAttempt(err) {
		t.Fatalf("Handle = %v, want an error wrapping ErrNotOwner and mq.ErrInProgress", err)
	}
	if s.completes != 0 || s.releases != 0 {
		t.Fatalf("%d completes, %d releases after losing the claim; want none", s.completes, s.releases)
	}
}

// TestMiddlewareExtenderStops: the renewals stop when the handler returns
// (successfully, with an error, or by panicking), and leave no goroutine.
func TestMiddlewareExtenderStops(t *testing.T) {
	before := runtime.NumGoroutine()
	es := &extendStore{Store: NewMemoryStore(MemoryStoreConfig{})}
	mw, _ := New(es, Config{Namespace: "g", Lease: 30 * time.Millisecond})
	results := []func() error{
		func() error { return nil },
		func() error { return errBoom },
		func() error { panic("boom") },
	}
	var wg sync.WaitGroup
	for i := range 30 {
		wg.Go(func() {
			defer func() { _ = recover() }()
			_ = mw(mq.HandlerFunc(func(context.Context, *mq.Message) error {
				time.Sleep(50 * time.Millisecond) // a few renewals
				return results[i%3]()
			})).Handle(context.Background(), &mq.Message{ID: fmt.Sprint(i), Topic: "t"})
		})
	}
	wg.Wait()
	n := es.count()
	if n == 0 {
		t.Fatal("no renewal while handlers ran for longer than a third of the lease")
	}
	time.Sleep(100 * time.Millisecond)
	if after := es.count(); after != n {
		t.Fatalf("%d renewals after the handlers returned", after-n)
	}
	deadline := time.Now().Add(5 * time.Second)
	for runtime.NumGoroutine() > before && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if after := runtime.NumGoroutine(); after > before {
		t.Fatalf("goroutines: %d before, %d after", before, after)
	}
}

// noPingStore is a Store that does not implement Pinger.
type noPingStore struct{ Store }

func TestCheck(t *testing.T) {
	ctx := context.Background()
	mem := NewMemoryStore(MemoryStoreConfig{})
	if err := Check(ctx, mem); err != nil {
		t.Fatalf("Check(memory store) = %v", err)
	}
	if n := mem.Len(); n != 0 {
		t.Fatalf("Check left %d keys behind", n)
	}
	refused := errors.New("dial tcp 127.0.0.1:1: connect: connection refused")
	err := Check(ctx, noPingStore{&faultyStore{Store: mem, claimErr: refused}})
	if !errors.Is(err, mq.ErrUnavailable) || !errors.Is(err, refused) || !strings.Contains(err.Error(), "store check failed") {
		t.Fatalf("Check(a store that is down) = %v, want a check error wrapping mq.ErrUnavailable and the cause", err)
	}
	if err := Check(ctx, nil); err == nil {
		t.Fatal("Check(nil) succeeded")
	}
}

// TestNoBrokerClientLinked: the middleware and the dedup core link no broker
// or store client; the Redis store lives in package redisstore.
func TestNoBrokerClientLinked(t *testing.T) {
	gocmd, err := exec.LookPath("go")
	if err != nil {
		t.Skip("no go command to list dependencies with")
	}
	out, err := exec.Command(gocmd, "list", "-deps", "github.com/mqkit/mq/middleware", "github.com/mqkit/mq/idempotency").CombinedOutput()
	if err != nil {
		t.Fatalf("go list: %v\n%s", err, out)
	}
	for _, dep := range strings.Fields(string(out)) {
		for _, client := range []string{"github.com/redis/", "github.com/IBM/sarama", "github.com/rabbitmq/"} {
			if strings.HasPrefix(dep, client) {
				t.Errorf("middleware or idempotency links %s", dep)
			}
		}
	}
}

// TestMiddlewareIDNotUnique: messages whose backend marked their derived ID
// as possibly shared are never skipped as duplicates of each other, while a
// business key from KeyFunc is still trusted.
func TestMiddlewareIDNotUnique(t *testing.T) {
	store := NewMemoryStore(MemoryStoreConfig{})
	var logs bytes.Buffer
	byID, _ := New(store, Config{Namespace: "g", Logger: slog.New(slog.NewTextHandler(&logs, nil))})
	byKey, _ := New(store, Config{Namespace: "g2", KeyFunc: func(m *mq.Message) string { return m.Header("order") }})
	runs := 0
	h := mq.HandlerFunc(func(context.Context, *mq.Message) error { runs++; return nil })
	derived := func() *mq.Message {
		return &mq.Message{ID: "sha256:same", Topic: "orders", Headers: map[string]string{mq.HeaderIDNotUnique: "true", "order": "7"}}
	}
	for range 3 {
		if err := byID(h).Handle(context.Background(), derived()); err != nil {
			t.Fatal(err)
		}
	}
	if runs != 3 {
		t.Fatalf("three distinct messages sharing a derived ID: handler ran %d times, want 3", runs)
	}
	if n := strings.Count(logs.String(), "not deduplicated"); n != 1 {
		t.Errorf("warned %d times, want once: %s", n, logs.String())
	}
	runs = 0
	for range 3 {
		if err := byKey(h).Handle(context.Background(), derived()); err != nil {
			t.Fatal(err)
		}
	}
	if runs != 1 {
		t.Fatalf("a business key is trusted whatever the ID: handler ran %d times, want 1", runs)
	}
	// An ordinary ID is deduplicated as before.
	runs = 0
	for range 2 {
		if err := byID(h).Handle(context.Background(), &mq.Message{ID: "m-1", Topic: "orders"}); err != nil {
			t.Fatal(err)
		}
	}
	if runs != 1 {
		t.Fatalf("a producer-set ID: handler ran %d times, want 1", runs)
	}
}
