package pgstore_test

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	_ "github.com/jackc/pgx/v5/stdlib"

	"github.com/mqkit/mq"
	"github.com/mqkit/mq/dlq"
	"github.com/mqkit/mq/idempotency"
	"github.com/mqkit/mq/idempotency/pgstore"
	"github.com/mqkit/mq/idempotency/storetest"
	"github.com/mqkit/mq/integration/testbed"
	"github.com/mqkit/mq/middleware"
)

var _ dlq.AttemptCounter = (*pgstore.Store)(nil)

func TestMain(m *testing.M) { testbed.Main(m) }

// openDB connects to the test binary's PostgreSQL (skipped without Docker,
// failed in CI; see package testbed).
func openDB(t *testing.T) *sql.DB {
	t.Helper()
	db, _ := testbed.PostgresDB(t)
	return db
}

func newStore(t *testing.T, db *sql.DB, table string) *pgstore.Store {
	t.Helper()
	s, err := pgstore.New(db, pgstore.Config{Table: table})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Migrate(context.Background()); err != nil {
		t.Fatal(err)
	}
	return s
}

// TestStore runs the store and attempt counter suites against a real
// PostgreSQL.
func TestStore(t *testing.T) {
	db := openDB(t)
	store := newStore(t, db, "suite_idem")
	ctx := context.Background()
	t.Run("store", func(t *testing.T) {
		storetest.Run(t, func(*testing.T) idempotency.Store { return store })
	})
	t.Run("attempt counter", func(t *testing.T) {
		storetest.RunAttemptCounter(t, func(*testing.T) dlq.AttemptCounter { return store })
	})
	t.Run("check", func(t *testing.T) {
		if err := idempotency.Check(ctx, store); err != nil {
			t.Fatalf("Check = %v", err)
		}
		missing, err := pgstore.New(db, pgstore.Config{Table: "never_migrated"})
		if err != nil {
			t.Fatal(err)
		}
		if err := idempotency.Check(ctx, missing); !errors.Is(err, mq.ErrUnavailable) {
			t.Fatalf("Check of a store whose tables do not exist = %v, want an error wrapping mq.ErrUnavailable", err)
		}
	})
	t.Run("migrate twice and at once", func(t *testing.T) {
		var wg sync.WaitGroup
		for range 4 {
			wg.Go(func() {
				if err := store.Migrate(ctx); err != nil {
					t.Error(err)
				}
			})
		}
		wg.Wait()
	})
	t.Run("keys are any bytes", func(t *testing.T) {
		k := "ns:t:\x00\xff\xfe" + fmt.Sprint(time.Now().UnixNano())
		c, err := store.Claim(ctx, k, time.Minute)
		if err != nil || c.Status != idempotency.Acquired {
			t.Fatalf("Claim = %v, %v", c, err)
		}
		if err := store.Complete(ctx, k, c.Token, time.Hour); err != nil {
			t.Fatal(err)
		}
		if c, err := store.Claim(ctx, k, time.Minute); err != nil || c.Status != idempotency.AlreadyDone {
			t.Fatalf("Claim after Complete = %v, %v", c, err)
		}
	})
	t.Run("sweep deletes expired rows only", func(t *testing.T) {
		s := newStore(t, db, "sweep_idem")
		for i := range 5 {
			c, err := s.Claim(ctx, fmt.Sprint("old", i), time.Millisecond)
			if err != nil || c.Status != idempotency.Acquired {
				t.Fatal(c, err)
			}
		}
		if _, err := s.Claim(ctx, "live", time.Hour); err != nil {
			t.Fatal(err)
		}
		time.Sleep(20 * time.Millisecond)
		n, err := s.Sweep(ctx, 0)
		if err != nil || n != 5 {
			t.Fatalf("Sweep = %d, %v; want 5", n, err)
		}
		if c, err := s.Claim(ctx, "live", time.Hour); err != nil || c.Status != idempotency.Busy {
			t.Fatalf("Claim of the live key after Sweep = %v, %v; want busy", c, err)
		}
	})
}

// TestUnavailable checks that a database that cannot be reached gives
// errors wrapping mq.ErrUnavailable, and the caller's cancellation does
// not.
func TestUnavailable(t *testing.T) {
	db, err := sql.Open("pgx", "postgres://mq:mq@127.0.0.1:1/mq?sslmode=disable&connect_timeout=2")
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = db.Close() }()
	s, err := pgstore.New(db, pgstore.Config{})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if _, err := s.Claim(ctx, "k", time.Minute); !errors.Is(err, mq.ErrUnavailable) {
		t.Errorf("Claim on a closed port = %v, want mq.ErrUnavailable", err)
	}
	if _, err := s.CountAttempt(ctx, "k", time.Minute); !errors.Is(err, mq.ErrUnavailable) {
		t.Errorf("CountAttempt on a closed port = %v, want mq.ErrUnavailable", err)
	}
	if err := idempotency.Check(ctx, s); !errors.Is(err, mq.ErrUnavailable) {
		t.Errorf("Check on a closed port = %v, want mq.ErrUnavailable", err)
	}
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if _, err := s.Claim(cctx, "k", time.Minute); !errors.Is(err, context.Canceled) || errors.Is(err, mq.ErrUnavailable) {
		t.Errorf("Claim with a canceled context = %v, want context.Canceled only", err)
	}
}

// TestHandler checks the transactional handler on a real PostgreSQL: the
// business write and the record commit together, a duplicate is skipped,
// and a failure, a panic or a timeout leaves nothing.
func TestHandler(t *testing.T) {
	db := openDB(t)
	store := newStore(t, db, "tx_idem")
	ctx := context.Background()
	if _, err := db.ExecContext(ctx, `CREATE TABLE IF NOT EXISTS tx_effects (id text NOT NULL, note text NOT NULL)`); err != nil {
		t.Fatal(err)
	}
	effects := func(t *testing.T, id string) int {
		t.Helper()
		var n int
		if err := db.QueryRowContext(ctx, "SELECT count(*) FROM tx_effects WHERE id = $1", id).Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n
	}
	var calls atomic.Int32
	var fail atomic.Value // error to return, or "panic"
	fail.Store("")
	h, err := store.Handler(pgstore.TxConfig{Namespace: "billing"}, func(ctx context.Context, tx *sql.Tx, m *mq.Message) error {
		calls.Add(1)
		if _, err := tx.ExecContext(ctx, "INSERT INTO tx_effects (id, note) VALUES ($1, $2)", m.ID, string(m.Body)); err != nil {
			return err
		}
		switch f := fail.Load().(string); f {
		case "":
			return nil
		case "panic":
			panic("handler panic")
		case "sleep":
			<-ctx.Done()
			return ctx.Err()
		default:
			return errors.New(f)
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	msg := func() *mq.Message { return &mq.Message{ID: mq.NewID(), Topic: "payments", Body: []byte("charge")} }

	t.Run("duplicate is skipped", func(t *testing.T) {
		m := msg()
		calls.Store(0)
		for range 3 {
			if err := h.Handle(ctx, m); err != nil {
				t.Fatal(err)
			}
		}
		if calls.Load() != 1 || effects(t, m.ID) != 1 {
			t.Fatalf("three deliveries: %d calls, %d effects; want 1 and 1", calls.Load(), effects(t, m.ID))
		}
	})
	t.Run("failure, panic and timeout leave nothing", func(t *testing.T) {
		m := msg()
		calls.Store(0)
		fail.Store("card declined")
		if err := h.Handle(ctx, m); err == nil || err.Error() != "card declined" {
			t.Fatalf("Handle = %v, want the handler's error unchanged", err)
		}
		fail.Store("panic")
		func() {
			defer func() {
				if recover() == nil {
					t.Fatal("the panic did not reach the caller")
				}
			}()
			_ = h.Handle(ctx, m)
		}()
		fail.Store("sleep")
		tctx, cancel := context.WithTimeout(ctx, 100*time.Millisecond)
		err := h.Handle(tctx, m)
		cancel()
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("Handle with a timeout = %v", err)
		}
		if effects(t, m.ID) != 0 {
			t.Fatalf("%d effects after a failure, a panic and a timeout; want 0", effects(t, m.ID))
		}
		fail.Store("")
		if err := h.Handle(ctx, m); err != nil {
			t.Fatal(err)
		}
		if calls.Load() != 4 || effects(t, m.ID) != 1 {
			t.Fatalf("%d calls, %d effects; want 4 and 1 (the last one committed)", calls.Load(), effects(t, m.ID))
		}
	})
	t.Run("concurrent duplicates run once", func(t *testing.T) {
		m := msg()
		calls.Store(0)
		var wg sync.WaitGroup
		for range 8 {
			wg.Go(func() {
				// A duplicate that meets the first one's uncommitted row
				// is busy (it comes back later and is skipped then), or
				// finds it committed and is skipped now.
				if err := h.Handle(ctx, m.Clone()); err != nil && !errors.Is(err, idempotency.ErrBusy) {
					t.Error(err)
				}
			})
		}
		wg.Wait()
		if calls.Load() != 1 || effects(t, m.ID) != 1 {
			t.Fatalf("8 concurrent deliveries: %d calls, %d effects; want 1 and 1", calls.Load(), effects(t, m.ID))
		}
	})
	t.Run("a claim of the dedup middleware is busy", func(t *testing.T) {
		m := msg()
		c, err := store.Claim(ctx, "billing:payments:"+m.ID, time.Minute)
		if err != nil || c.Status != idempotency.Acquired {
			t.Fatal(c, err)
		}
		if err := h.Handle(ctx, m); !errors.Is(err, idempotency.ErrBusy) || !mq.NotAnAttempt(err) {
			t.Fatalf("Handle while the middleware holds the key = %v, want ErrBusy", err)
		}
		if err := store.Complete(ctx, "billing:payments:"+m.ID, c.Token, time.Hour); err != nil {
			t.Fatal(err)
		}
		calls.Store(0)
		if err := h.Handle(ctx, m); err != nil || calls.Load() != 0 {
			t.Fatalf("Handle after the middleware completed = %v with %d calls, want skipped", err, calls.Load())
		}
	})
	t.Run("in middleware.Stack, retries are transactions of their own", func(t *testing.T) {
		m := msg()
		var n atomic.Int32
		hh, err := store.Handler(pgstore.TxConfig{Namespace: "stack"}, func(ctx context.Context, tx *sql.Tx, m *mq.Message) error {
			if _, err := tx.ExecContext(ctx, "INSERT INTO tx_effects (id, note) VALUES ($1, 'stack')", m.ID); err != nil {
				return err
			}
			if n.Add(1) < 3 {
				panic("flaky")
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		stacked := mq.Chain(hh, middleware.Stack(middleware.StackConfig{Retry: middleware.RetryConfig{MaxAttempts: 5, InitialInterval: time.Millisecond}}))
		if err := stacked.Handle(ctx, m); err != nil {
			t.Fatal(err)
		}
		if err := stacked.Handle(ctx, m); err != nil {
			t.Fatal(err)
		}
		if n.Load() != 3 || effects(t, m.ID) != 1 {
			t.Fatalf("%d runs, %d effects; want 3 (two panics, retried) and 1", n.Load(), effects(t, m.ID))
		}
	})
}
