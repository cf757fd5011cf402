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
	p := newPartition(nil, sess, "t", 0)
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
	p := newPartition(nil, sess, "t", 0)
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

func isClosed(ch <-chan struct{}) bool {
	select {
	case <-ch:
		return true
	default:
		return false
	}
}

// TestLostClosesWhenDrainEnds: the deliveries of one claim share one Lost
// channel, which stays open while the partition drains (the member still
// owns it and commits what finishes) and closes when the drain ends, by
// timeout as here; a nack during or after the drain gives the message up
// instead of queueing it again.
func TestLostClosesWhenDrainEnds(t *testing.T) {
	s := &subscription{}
	sess := &markSession{}
	p := newPartition(s, sess, "t", 0)
	a := p.track(&sarama.ConsumerMessage{Offset: 1})
	b := p.track(&sarama.ConsumerMessage{Offset: 2})
	c := p.track(&sarama.ConsumerMessage{Offset: 3})
	if a.Lost() == nil || a.Lost() != b.Lost() {
		t.Fatal("deliveries of one partition claim must share one non-nil Lost channel")
	}
	if other := newPartition(s, sess, "t", 1).track(&sarama.ConsumerMessage{}); other.Lost() == a.Lost() {
		t.Fatal("two partition claims share a Lost channel")
	}
	p.startDraining()
	done := make(chan struct{})
	go func() { p.drain(300*time.Millisecond, nil); close(done) }()
	time.Sleep(50 * time.Millisecond)
	if isClosed(a.Lost()) {
		t.Fatal("Lost closed while the partition is still draining")
	}
	if err := a.Ack(context.Background()); err != nil { // still owned: committed
		t.Fatalf("ack during the drain: %v", err)
	}
	if err := b.Nack(context.Background()); err != nil {
		t.Fatal(err)
	}
	if len(s.queue) != 0 {
		t.Fatal("a nack during the drain queued the message again instead of giving it up")
	}
	<-done // c never settles: the drain times out
	if !isClosed(a.Lost()) || !isClosed(c.Lost()) {
		t.Fatal("Lost still open after the drain ended")
	}
	if err := c.Ack(context.Background()); err == nil {
		t.Error("ack after the drain ended was accepted")
	}
	if err := c.Nack(context.Background()); err != nil || len(s.queue) != 0 {
		t.Errorf("nack after the drain ended: %v, queue %d; want it given up", err, len(s.queue))
	}
	if want := []int64{2}; len(sess.marks) != 1 || sess.marks[0] != want[0] {
		t.Errorf("marks %v, want %v: only the message acked during the drain", sess.marks, want)
	}
	p.end() // idempotent
}

// TestLostClosesWhenLeaving: a subscription that is leaving ends the drain
// at once, closing Lost, however much is unsettled; so does a drain with
// everything settled.
func TestLostClosesWhenLeaving(t *testing.T) {
	leaving := make(chan struct{})
	close(leaving)
	p := newPartition(&subscription{}, &markSession{}, "t", 0)
	d := p.track(&sarama.ConsumerMessage{Offset: 1})
	p.drain(time.Hour, leaving)
	if !isClosed(d.Lost()) {
		t.Fatal("Lost still open after a leaving drain")
	}

	p = newPartition(&subscription{}, &markSession{}, "t", 0)
	d = p.track(&sarama.ConsumerMessage{Offset: 1})
	if err := d.Ack(context.Background()); err != nil {
		t.Fatal(err)
	}
	p.drain(time.Hour, nil)
	if !isClosed(d.Lost()) {
		t.Fatal("Lost still open after a drain with nothing left")
	}
}
