package rabbit

import (
	"cmp"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"slices"
	"sync"
	"testing"
	"time"
)

// fakeChannel checks acks the way RabbitMQ settles a channel's deliveries:
// an ack of a tag that is not outstanding is a channel error, and a
// multiple ack settles every outstanding tag up to its own, so each of
// those must have been acknowledged by its handler already.
type fakeChannel struct {
	t           *testing.T
	mu          sync.Mutex
	outstanding map[uint64]bool
	handled     map[uint64]bool // acknowledged by the handler (acks.ack called)
	frames      int
}

func newFakeChannel(t *testing.T, n int) *fakeChannel {
	f := &fakeChannel{t: t, outstanding: map[uint64]bool{}, handled: map[uint64]bool{}}
	for tag := uint64(1); tag <= uint64(n); tag++ {
		f.outstanding[tag] = true
	}
	return f
}

func (f *fakeChannel) Ack(tag uint64, multiple bool) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.frames++
	if !f.outstanding[tag] {
		f.t.Errorf("basic.ack of tag %d (multiple %v), which is not outstanding: the broker closes the channel", tag, multiple)
		return fmt.Errorf("unknown delivery tag %d", tag)
	}
	if !multiple {
		delete(f.outstanding, tag)
		return nil
	}
	for t := range f.outstanding {
		if t <= tag {
			if !f.handled[t] {
				f.t.Errorf("multiple ack of %d settles tag %d, which no handler acknowledged: message lost", tag, t)
			}
			delete(f.outstanding, t)
		}
	}
	return nil
}

// reject settles tag on its own, as a nack or reject frame does.
func (f *fakeChannel) reject(tag uint64) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.frames++
	if !f.outstanding[tag] {
		f.t.Errorf("reject of tag %d, which is not outstanding", tag)
	}
	delete(f.outstanding, tag)
	return nil
}

func (f *fakeChannel) handle(tag uint64) {
	f.mu.Lock()
	f.handled[tag] = true
	f.mu.Unlock()
}

func quietLog() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

// TestAcksCoalesceSafely settles deliveries in random orders (mostly in
// order, some overtaking, some rejected, from several goroutines) and
// checks that no frame settles a delivery its handler did not, no frame
// names a tag already settled, and that closing with a flush leaves
// nothing outstanding.
func TestAcksCoalesceSafely(t *testing.T) {
	for seed := range uint64(40) {
		t.Run(fmt.Sprint(seed), func(t *testing.T) {
			const n = 2000
			r := rand.New(rand.NewPCG(seed, 7))
			f := newFakeChannel(t, n)
			prefetch := []int{1, 4, 16, 256}[seed%4]
			delay := time.Duration(r.IntN(3)) * time.Millisecond
			a := newAcks(f, quietLog(), delay, prefetch)
			// Tags in roughly delivery order: none more than 8 places
			// from its own.
			order := make([]uint64, n)
			pos := make(map[uint64]float64, n)
			for i := range order {
				order[i] = uint64(i + 1)
				pos[order[i]] = float64(i) + 8*r.Float64()
			}
			slices.SortFunc(order, func(x, y uint64) int { return cmp.Compare(pos[x], pos[y]) })
			held := map[uint64]bool{} // settled only at the end: a slow handler
			if seed%8 >= 4 {
				for _, tag := range order[:n/100] {
					held[tag] = true
				}
			}
			var wg sync.WaitGroup
			work := make(chan uint64)
			for range 4 {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for tag := range work {
						settle(t, f, a, tag, tag%17 == 0)
					}
				}()
			}
			for _, tag := range order {
				if !held[tag] {
					work <- tag
				}
			}
			close(work)
			wg.Wait()
			for tag := range held {
				settle(t, f, a, tag, false)
			}
			a.close(true)
			if len(f.outstanding) != 0 {
				t.Errorf("%d deliveries outstanding after close, e.g. %v", len(f.outstanding), first(f.outstanding))
			}
		})
	}
}

// TestAcksCoalesce: in-order acks with the default window go out as one
// multiple ack per quarter window, and a rejected delivery in the run
// does not break it.
func TestAcksCoalesce(t *testing.T) {
	const n = 1024
	f := newFakeChannel(t, n)
	a := newAcks(f, quietLog(), time.Hour, 256)
	for tag := uint64(1); tag <= n; tag++ {
		settle(t, f, a, tag, tag%100 == 0)
	}
	if len(f.outstanding) >= 64 {
		t.Fatalf("%d outstanding before close, want under 64 (every 64th ack flushes)", len(f.outstanding))
	}
	a.close(true)
	if len(f.outstanding) != 0 {
		t.Fatalf("%d outstanding after close, want 0", len(f.outstanding))
	}
	if want := n/64 + n/100; f.frames > want {
		t.Errorf("%d frames for %d in-order deliveries, want at most %d", f.frames, n, want)
	}
}

func settle(t *testing.T, f *fakeChannel, a *acks, tag uint64, reject bool) {
	if reject {
		if err := a.settle(tag, func() error { return f.reject(tag) }); err != nil {
			t.Error(err)
		}
		return
	}
	f.handle(tag)
	if err := a.ack(tag); err != nil {
		t.Error(err)
	}
}

func first(m map[uint64]bool) uint64 {
	for k := range m {
		return k
	}
	return 0
}

// TestAcksFlushOnTimer: a lone acknowledgement goes out within the delay,
// and one held behind an unsettled older delivery is not held longer.
func TestAcksFlushOnTimer(t *testing.T) {
	f := newFakeChannel(t, 3)
	a := newAcks(f, quietLog(), 5*time.Millisecond, 256)
	defer a.close(false)
	f.handle(2)
	if err := a.ack(2); err != nil { // tag 1 still runs
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		f.mu.Lock()
		done := !f.outstanding[2]
		f.mu.Unlock()
		if done {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the ack of tag 2 was never sent while tag 1 was unsettled")
		}
		time.Sleep(time.Millisecond)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if !f.outstanding[1] || !f.outstanding[3] {
		t.Errorf("outstanding = %v, want 1 and 3 still", f.outstanding)
	}
}

// TestAcksDropOnLoss: closing without a flush (the channel is gone)
// sends nothing, and later acks go out at once.
func TestAcksDropOnLoss(t *testing.T) {
	f := newFakeChannel(t, 2)
	a := newAcks(f, quietLog(), time.Hour, 256)
	f.handle(1)
	_ = a.ack(1)
	a.close(false)
	a.close(true) // idempotent: the first close decided
	if f.frames != 0 {
		t.Fatalf("%d frames sent for a lost channel", f.frames)
	}
	f.handle(2)
	if err := a.ack(2); err != nil || f.outstanding[2] {
		t.Fatalf("ack after close: err %v, outstanding %v", err, f.outstanding)
	}
}
