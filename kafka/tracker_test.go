package kafka

import (
	"context"
	"math/rand/v2"
	"sync"
	"testing"
	"time"

	"github.com/IBM/sarama"
)

// markSession records the offsets marked for commit.
type markSession struct {
	sarama.ConsumerGroupSession // nil: only the methods below are used
	mu                          sync.Mutex
	marks                       []int64
}

func (s *markSession) MarkOffset(_ string, _ int32, offset int64, _ string) {
	s.mu.Lock()
	s.marks = append(s.marks, offset)
	s.mu.Unlock()
}

func (s *markSession) Context() context.Context { return context.Background() }

// TestCommitNeverPassesUnfinished acks offsets in random order from many
// goroutines and checks that every commit mark covers only finished
// messages, and that the last one covers them all.
func TestCommitNeverPassesUnfinished(t *testing.T) {
	sess := &markSession{}
	p := &partition{sess: sess, topic: "t", id: 0, settled: make(chan struct{}, 1)}
	const n = 2000
	var ds []*delivery
	for i := range n {
		off := int64(100 + i*2) // gaps, as compaction or transaction markers leave
		ds = append(ds, p.track(&sarama.ConsumerMessage{Topic: "t", Offset: off}))
	}
	order := rand.Perm(n)
	var finishedMu sync.Mutex
	finished := map[int64]bool{}
	var wg sync.WaitGroup
	work := make(chan int)
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range work {
				finishedMu.Lock()
				finished[ds[i].offset] = true
				finishedMu.Unlock()
				if err := ds[i].Ack(context.Background()); err != nil {
					t.Error(err)
				}
			}
		}()
	}
	for _, i := range order {
		work <- i
	}
	close(work)
	wg.Wait()

	sess.mu.Lock()
	defer sess.mu.Unlock()
	prev := int64(0)
	for _, mark := range sess.marks {
		if mark <= prev {
			t.Fatalf("commit position went back or stood still: %d after %d", mark, prev)
		}
		prev = mark
		for _, d := range ds {
			if d.offset < mark && !finished[d.offset] {
				t.Fatalf("commit position %d passes unfinished offset %d", mark, d.offset)
			}
		}
	}
	if want := ds[n-1].offset + 1; prev != want {
		t.Errorf("final commit position %d, want %d", prev, want)
	}
	if p.waiting != 0 {
		t.Errorf("%d deliveries still counted as waiting", p.waiting)
	}
}

// TestGiveUpBlocksCommit: an offset given up (nacked after its partition was
// revoked) is never committed, so the next owner reads it again.
func TestGiveUpBlocksCommit(t *testing.T) {
	sess := &markSession{}
	p := &partition{sess: sess, topic: "t", id: 0, settled: make(chan struct{}, 1)}
	a := p.track(&sarama.ConsumerMessage{Offset: 10})
	b := p.track(&sarama.ConsumerMessage{Offset: 11})
	p.giveUp() // a will not be handled here
	if err := b.Ack(context.Background()); err != nil {
		t.Fatal(err)
	}
	if len(sess.marks) != 0 {
		t.Errorf("marked %v although offset %d never finished", sess.marks, a.offset)
	}
	done := make(chan struct{})
	go func() { p.drain(5*time.Second, nil); close(done) }()
	select {
	case <-done:
	case <-time.After(2 * time.Second):
		t.Fatal("drain waited for a given-up offset")
	}
	if err := a.Ack(context.Background()); err == nil {
		t.Error("ack after the claim ended should report that the message will be redelivered")
	}
}
