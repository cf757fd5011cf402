package mq

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// sDel and sSub are a backend that hands out random keys under a few
// ownership scopes, which a goroutine revokes at random while the
// dispatcher runs, and count how every delivery was settled.
type sDel struct {
	m       *Message
	seq     int
	lost    chan struct{}
	settles atomic.Int32
	acks    atomic.Int32
}

func (d *sDel) Message() *Message     { return d.m }
func (d *sDel) Lost() <-chan struct{} { return d.lost }

func (d *sDel) Ack(context.Context) error {
	d.settles.Add(1)
	d.acks.Add(1)
	return nil
}
func (d *sDel) Nack(context.Context) error { d.settles.Add(1); return nil }

type sSub struct {
	mu     sync.Mutex
	all    []*sDel
	scopes []chan struct{}
	n      int
	total  int
	keys   int
	r      *rand.Rand
}

func (s *sSub) Receive(ctx context.Context, max int) ([]Delivery, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.n >= s.total {
		s.mu.Unlock()
		<-ctx.Done()
		s.mu.Lock()
		return nil, ctx.Err()
	}
	k := 1 + s.r.IntN(max)
	var out []Delivery
	for i := 0; i < k && s.n < s.total; i++ {
		sc := s.scopes[s.r.IntN(len(s.scopes))]
		key := fmt.Sprint("k", s.r.IntN(s.keys))
		if s.r.IntN(10) == 0 {
			key = ""
		}
		d := &sDel{m: &Message{ID: fmt.Sprint(s.n), Key: key, Attempt: 1}, seq: s.n, lost: sc}
		s.n++
		s.all = append(s.all, d)
		out = append(out, d)
	}
	return out, nil
}
func (s *sSub) Close() error { return nil }

func (s *sSub) loseOne() {
	s.mu.Lock()
	i := s.r.IntN(len(s.scopes))
	close(s.scopes[i])
	s.scopes[i] = make(chan struct{})
	s.mu.Unlock()
}

// TestStressDispatcher runs the dispatcher against random keys, random
// failures and panics, ownership scopes lost at random every half
// millisecond and a shutdown at a random moment, and checks the
// invariants: every delivery settled exactly once, no key run twice at
// once or out of order, nothing left outstanding, no goroutine left.
func TestStressDispatcher(t *testing.T) {
	base := runtime.NumGoroutine()
	iters := 30
	if testing.Short() {
		iters = 5
	}
	for iter := 0; iter < iters; iter++ {
		r := rand.New(rand.NewPCG(uint64(iter), 7))
		sub := &sSub{total: 3000, keys: 1 + r.IntN(40), r: rand.New(rand.NewPCG(uint64(iter), 9))}
		for range 1 + r.IntN(4) {
			sub.scopes = append(sub.scopes, make(chan struct{}))
		}
		o := defaultOptions()
		o.concurrency = 1 + r.IntN(8)
		o.maxInFlight = o.concurrency + r.IntN(40)
		o.nackBackoff = time.Millisecond
		o.maxNackBackoff = 3 * time.Millisecond
		o.shutdownTimeout = 50 * time.Millisecond
		var running sync.Map // key -> *atomic.Int32
		var lastSeq sync.Map // key -> int
		var violations atomic.Int32
		var lmu sync.Mutex
		h := HandlerFunc(func(ctx context.Context, m *Message) error {
			var seq int
			if _, err := fmt.Sscan(m.ID, &seq); err != nil {
				t.Error(err)
			}
			if m.Key != "" {
				c, _ := running.LoadOrStore(m.Key, new(atomic.Int32))
				if c.(*atomic.Int32).Add(1) != 1 {
					violations.Add(1)
				}
				defer c.(*atomic.Int32).Add(-1)
				lmu.Lock()
				if p, ok := lastSeq.Load(m.Key); ok && p.(int) > seq {
					violations.Add(1)
				}
				lastSeq.Store(m.Key, seq)
				lmu.Unlock()
			}
			if rand.IntN(3) == 0 {
				time.Sleep(time.Duration(rand.IntN(200)) * time.Microsecond)
			}
			switch rand.IntN(10) {
			case 0, 1, 2:
				return errors.New("fail")
			case 3:
				panic("boom")
			}
			return nil
		})
		d := newDispatcher(h, sub, o)
		if iter%2 == 0 {
			d.info = &DeliveryInfo{}
		}
		ctx, cancel := context.WithCancel(context.Background())
		stopLose := make(chan struct{})
		var lw sync.WaitGroup
		lw.Add(1)
		go func() {
			defer lw.Done()
			for {
				select {
				case <-stopLose:
					return
				case <-time.After(time.Duration(rand.IntN(500)) * time.Microsecond):
					sub.loseOne()
				}
			}
		}()
		go func() {
			time.Sleep(time.Duration(5+r.IntN(60)) * time.Millisecond)
			cancel()
		}()
		done := make(chan error)
		go func() { done <- d.run(ctx) }()
		select {
		case <-done:
		case <-time.After(20 * time.Second):
			buf := make([]byte, 1<<20)
			n := runtime.Stack(buf, true)
			t.Fatalf("iter %d: run hung\n%s", iter, buf[:n])
		}
		close(stopLose)
		lw.Wait()
		if v := violations.Load(); v > 0 {
			t.Errorf("iter %d: %d key-order violations", iter, v)
		}
		for _, dl := range sub.all {
			if n := dl.settles.Load(); n != 1 {
				t.Errorf("iter %d: delivery %d (key %q) settled %d times", iter, dl.seq, dl.m.Key, n)
			}
		}
		d.mu.Lock()
		if d.outstanding != 0 {
			t.Errorf("iter %d: outstanding %d after run returned", iter, d.outstanding)
		}
		d.mu.Unlock()
	}
	time.Sleep(50 * time.Millisecond)
	if g := runtime.NumGoroutine(); g > base+2 {
		buf := make([]byte, 1<<20)
		n := runtime.Stack(buf, true)
		t.Errorf("goroutines %d > base %d\n%s", g, base, buf[:n])
	}
}
