package memory_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/mqkit/mq"
	"github.com/mqkit/mq/memory"
	"github.com/mqkit/mq/mqtest"
)

func TestConformance(t *testing.T) {
	b := memory.NewBroker(memory.Config{})
	t.Cleanup(func() { _ = b.Close() })
	mqtest.Run(t, mqtest.Harness{
		Open: func(testing.TB) *mq.Client { return mq.NewClient(b.Conn()) },
		Features: mqtest.Features{
			KeepsEarlyMessages:    true,
			Attempts:              mqtest.AttemptsExact,
			KeyOrderAcrossMembers: true,
		},
		DelayLateness: time.Second,
	})
}

// TestDeliveriesOwnTheirBody: a handler that edits Body in place does not
// change what another group receives, as on a real broker. Before, every
// group shared the produced bytes. (A retry in the same consumer hands the
// handler the same *mq.Message again: that is the consumer's, on every
// backend.)
func TestDeliveriesOwnTheirBody(t *testing.T) {
	b := memory.NewBroker(memory.Config{})
	c := mq.NewClient(b.Conn(), mq.WithNackBackoff(time.Millisecond, time.Millisecond))
	t.Cleanup(func() { _ = c.Close(); _ = b.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	type seen struct {
		group string
		body  string
	}
	got := make(chan seen, 10)
	edited := make(chan struct{})
	for _, group := range []string{"scribbler", "reader"} {
		cons, err := c.Consumer(ctx, "t", mq.WithGroup(group))
		if err != nil {
			t.Fatal(err)
		}
		h := mq.HandlerFunc(func(_ context.Context, m *mq.Message) error {
			if group == "reader" {
				<-edited
			}
			got <- seen{group, string(m.Body)}
			if group == "scribbler" {
				for i := range m.Body {
					m.Body[i] = 'X' // say, decrypting in place
				}
				close(edited)
			}
			return nil
		})
		cctx, stop := context.WithCancel(ctx)
		done := make(chan error, 1)
		go func() { done <- cons.Consume(cctx, h) }()
		t.Cleanup(func() {
			stop()
			if err := <-done; err != nil {
				t.Error(err)
			}
		})
	}
	// The reader looks at its message only after the scribbler edited its.
	if err := c.Producer().Produce(ctx, "t", &mq.Message{Body: []byte("pay 12 EUR")}); err != nil {
		t.Fatal(err)
	}
	for range 2 {
		select {
		case s := <-got:
			if s.body != "pay 12 EUR" {
				t.Errorf("%s received %q, want the produced body", s.group, s.body)
			}
		case <-ctx.Done():
			t.Fatal("messages not delivered")
		}
	}
}

func TestDeleteGroup(t *testing.T) {
	ctx := context.Background()
	b := memory.NewBroker(memory.Config{Capacity: 2, FailWhenFull: true})
	t.Cleanup(func() { _ = b.Close() })
	c := mq.NewClient(b.Conn())
	defer c.Close()
	slow, err := c.Consumer(ctx, "t", mq.WithGroup("slow"))
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Producer().Produce(ctx, "t", &mq.Message{}, &mq.Message{}); err != nil {
		t.Fatal(err)
	}
	if err := c.Producer().Produce(ctx, "t", &mq.Message{}); !errors.Is(err, mq.ErrBufferFull) {
		t.Fatalf("Produce into a full group: %v, want ErrBufferFull", err)
	}
	if err := c.DeleteGroup(ctx, "t", "slow"); !errors.Is(err, mq.ErrGroupActive) {
		t.Fatalf("DeleteGroup of a group with a member: %v, want a refusal", err)
	}
	if err := slow.Close(); err != nil {
		t.Fatal(err)
	}
	if err := c.DeleteGroup(ctx, "t", "slow"); err != nil {
		t.Fatal(err)
	}
	for _, s := range b.Stats() {
		if s.Group == "slow" {
			t.Fatalf("group still there after DeleteGroup: %+v", s)
		}
	}
	if err := c.DeleteGroup(ctx, "t", "slow"); err != nil {
		t.Fatalf("deleting a deleted group: %v, want nil", err)
	}
	if err := c.DeleteGroup(ctx, "no-such-topic", "g"); err != nil {
		t.Fatalf("deleting a group of an unknown topic: %v, want nil", err)
	}
}

func TestLagAndPing(t *testing.T) {
	ctx := context.Background()
	b := memory.NewBroker(memory.Config{})
	c := mq.NewClient(b.Conn())
	defer c.Close()
	if err := c.Ping(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Lag(ctx, "t", "g"); !errors.Is(err, mq.ErrUnknownGroup) {
		t.Fatalf("Lag of an unknown group: %v, want ErrUnknownGroup", err)
	}
	cons, err := c.Consumer(ctx, "t", mq.WithGroup("g"))
	if err != nil {
		t.Fatal(err)
	}
	defer cons.Close()
	if err := c.Producer().Produce(ctx, "t", &mq.Message{Key: "a"}, &mq.Message{Key: "a"}, &mq.Message{Key: "b"}); err != nil {
		t.Fatal(err)
	}
	time.Sleep(20 * time.Millisecond)
	lag, err := c.Lag(ctx, "t", "g")
	if err != nil {
		t.Fatal(err)
	}
	if len(lag) != 1 || lag[0].Backlog != 3 || lag[0].Unacked != 0 || lag[0].OldestAge < 20*time.Millisecond {
		t.Fatalf("lag before consuming: %+v, want backlog 3, unacked 0, oldest at least 20ms", lag)
	}
	hold := make(chan struct{})
	held := make(chan struct{}, 3)
	cctx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() {
		done <- cons.Consume(cctx, mq.HandlerFunc(func(context.Context, *mq.Message) error {
			held <- struct{}{}
			<-hold
			return nil
		}))
	}()
	<-held
	lag, err = c.Lag(ctx, "t", "g")
	if err != nil {
		t.Fatal(err)
	}
	if lag[0].Backlog+lag[0].Unacked != 3 || lag[0].Unacked == 0 {
		t.Fatalf("lag while handling: %+v, want the 3 split between backlog and unacked", lag)
	}
	close(hold)
	deadline := time.Now().Add(5 * time.Second)
	for {
		lag, err = c.Lag(ctx, "t", "g")
		if err != nil {
			t.Fatal(err)
		}
		if lag[0] == (mq.PartitionLag{}) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("lag after handling everything: %+v, want all zero", lag)
		}
		time.Sleep(5 * time.Millisecond)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	_ = b.Close()
	if err := c.Ping(ctx); err == nil {
		t.Fatal("Ping of a closed broker succeeded")
	}
}

// TestDelayedWaitsForRoomWhenFull: with when_full=error a due delayed
// message waits for room in a full group instead of being dropped, and
// later ones still move.
func TestDelayedWaitsForRoomWhenFull(t *testing.T) {
	b := memory.NewBroker(memory.Config{Capacity: 1, FailWhenFull: true})
	c := mq.NewClient(b.Conn())
	t.Cleanup(func() { _ = c.Close(); _ = b.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	cons, err := c.Consumer(ctx, "t", mq.WithGroup("g"))
	if err != nil {
		t.Fatal(err)
	}
	defer cons.Close()
	p := c.Producer()
	if err := p.Produce(ctx, "t", &mq.Message{Body: []byte("fill")}); err != nil {
		t.Fatal(err)
	}
	if err := p.Produce(ctx, "t", (&mq.Message{Body: []byte("d1")}).DeliverAfter(20*time.Millisecond), (&mq.Message{Body: []byte("d2")}).DeliverAfter(40*time.Millisecond)); err != nil {
		t.Fatal(err)
	}
	time.Sleep(100 * time.Millisecond) // both due while the group is full
	var got []string
	_ = cons.Consume(ctx, mq.HandlerFunc(func(_ context.Context, m *mq.Message) error {
		got = append(got, string(m.Body))
		if len(got) == 3 {
			cancel()
		}
		return nil
	}))
	if len(got) != 3 {
		t.Fatalf("handled %q, want fill, d1, d2", got)
	}
}

// TestDelayedFullTopicHoldsOnlyItself: while one topic's group is full and
// its due delayed message waits for room, another topic's due messages
// still move (each topic has its own mover).
func TestDelayedFullTopicHoldsOnlyItself(t *testing.T) {
	b := memory.NewBroker(memory.Config{Capacity: 1})
	c := mq.NewClient(b.Conn())
	t.Cleanup(func() { _ = c.Close(); _ = b.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	full, err := c.Consumer(ctx, "full", mq.WithGroup("g"))
	if err != nil {
		t.Fatal(err)
	}
	defer full.Close() // never consumes: its group stays full
	p := c.Producer()
	if err := p.Produce(ctx, "full", &mq.Message{Body: []byte("fill")}); err != nil {
		t.Fatal(err)
	}
	if err := p.Produce(ctx, "full", (&mq.Message{Body: []byte("stuck")}).DeliverAfter(10*time.Millisecond)); err != nil {
		t.Fatal(err)
	}
	time.Sleep(50 * time.Millisecond) // the full topic's mover now waits for room
	other, err := c.Consumer(ctx, "other", mq.WithGroup("g"))
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	if err := p.Produce(ctx, "other", (&mq.Message{Body: []byte("free")}).DeliverAfter(10*time.Millisecond)); err != nil {
		t.Fatal(err)
	}
	var got string
	_ = other.Consume(ctx, mq.HandlerFunc(func(_ context.Context, m *mq.Message) error {
		got = string(m.Body)
		cancel()
		return nil
	}))
	if got != "free" {
		t.Fatalf("the other topic's due message did not arrive while the first topic was full (got %q)", got)
	}
	st, err := c.Scheduled(context.Background(), "full")
	if err != nil {
		t.Fatal(err)
	}
	if st.Waiting != 1 || st.NextDue.IsZero() {
		t.Errorf("full topic: %+v, want 1 waiting with its due time (its mover holds it, waiting for room)", st)
	}
	if st, err := c.Scheduled(context.Background(), "never-used"); err != nil || st.Waiting != 0 {
		t.Errorf("Scheduled of a topic without delayed messages = %+v, %v", st, err)
	}
}
