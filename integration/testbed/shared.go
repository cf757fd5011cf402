package testbed

import (
	"context"
	"os"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

var (
	mainActive atomic.Bool

	sharedMu sync.Mutex
	shared   = map[Kind]*sharedBroker{}
)

type sharedBroker struct {
	once sync.Once
	b    *Broker
	err  error
}

// Main runs the tests of a package that uses the Shared starters and then
// terminates the shared brokers:
//
//	func TestMain(m *testing.M) { testbed.Main(m) }
//
// It calls os.Exit with the tests' exit code.
func Main(m *testing.M) {
	mainActive.Store(true)
	code := m.Run()
	TerminateShared()
	exit(code)
}

// TerminateShared terminates the brokers started by the Shared starters.
// Main calls it; call it yourself from a TestMain that does not use Main.
func TerminateShared() {
	sharedMu.Lock()
	defer sharedMu.Unlock()
	for kind, s := range shared {
		if s.b != nil {
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			_ = s.b.Terminate(ctx)
			cancel()
		}
		delete(shared, kind)
	}
}

// SharedRedis returns the test binary's Redis broker, starting it on first
// use. Without Main in TestMain it is Redis(t).
func SharedRedis(t testing.TB) *Broker { t.Helper(); return sharedT(t, KindRedis) }

// SharedRabbitMQ returns the test binary's RabbitMQ broker, starting it on
// first use. Without Main in TestMain it is RabbitMQ(t).
func SharedRabbitMQ(t testing.TB) *Broker { t.Helper(); return sharedT(t, KindRabbitMQ) }

// SharedKafka returns the test binary's Kafka broker, starting it on first
// use. Without Main in TestMain it is Kafka(t).
func SharedKafka(t testing.TB) *Broker { t.Helper(); return sharedT(t, KindKafka) }

// SharedPostgres returns the test binary's PostgreSQL server, starting it
// on first use. Without Main in TestMain it is Postgres(t). Tests sharing
// it should use tables (or schemas) of their own.
func SharedPostgres(t testing.TB) *Broker { t.Helper(); return sharedT(t, KindPostgres) }

func sharedT(t testing.TB, kind Kind) *Broker {
	t.Helper()
	if !mainActive.Load() {
		return startT(t, kind, nil)
	}
	sharedMu.Lock()
	s, ok := shared[kind]
	if !ok {
		s = &sharedBroker{}
		shared[kind] = s
	}
	sharedMu.Unlock()
	s.once.Do(func() {
		begin := time.Now()
		s.b, s.err = Start(context.Background(), kind)
		if s.err == nil {
			t.Logf("testbed: shared %s (%s) ready at %s in %.1fs", kind, s.b.Image, s.b.URL, time.Since(begin).Seconds())
		}
	})
	if s.err != nil {
		fail(t, kind, s.err)
	}
	return s.b
}

// exit is os.Exit, replaceable in tests.
var exit = os.Exit
