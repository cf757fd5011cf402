package closeset

import (
	"errors"
	"sync"
	"sync/atomic"
	"testing"
)

type member struct {
	set    *Set[*member]
	closes atomic.Int32
	err    error
}

func (m *member) Close() error {
	m.closes.Add(1)
	m.set.Remove(m) // as a subscription forgets itself
	return m.err
}

func TestCloseAll(t *testing.T) {
	var s Set[*member]
	boom := errors.New("boom")
	a, b := &member{set: &s}, &member{set: &s, err: boom}
	if !s.Add(a) || !s.Add(b) {
		t.Fatal("Add refused a member of an open set")
	}
	first, err := s.CloseAll()
	if !first || !errors.Is(err, boom) {
		t.Fatalf("CloseAll = %v, %v; want true and the members' errors", first, err)
	}
	if again, err := s.CloseAll(); again || err != nil {
		t.Fatalf("second CloseAll = %v, %v; want false, nil", again, err)
	}
	if a.closes.Load() != 1 || b.closes.Load() != 1 {
		t.Fatalf("members closed %d and %d times, want once each", a.closes.Load(), b.closes.Load())
	}
	if s.Add(&member{set: &s}) {
		t.Fatal("Add accepted a member after CloseAll")
	}
	if !s.Closed() || s.Len() != 0 {
		t.Fatalf("Closed() = %v, Len() = %d after CloseAll", s.Closed(), s.Len())
	}
}

func TestConcurrentAddAndClose(t *testing.T) {
	for range 100 {
		var s Set[*member]
		var wg sync.WaitGroup
		ms := make([]*member, 50)
		added := make([]bool, len(ms))
		for i := range ms {
			ms[i] = &member{set: &s}
			wg.Add(1)
			go func() {
				defer wg.Done()
				added[i] = s.Add(ms[i])
			}()
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, _ = s.CloseAll()
		}()
		wg.Wait()
		_, _ = s.CloseAll()
		for i, m := range ms {
			if want := int32(0); !added[i] && m.closes.Load() != want {
				t.Fatalf("a refused member was closed by the set")
			}
			if added[i] && m.closes.Load() != 1 {
				t.Fatalf("an added member was closed %d times, want once", m.closes.Load())
			}
		}
	}
}
