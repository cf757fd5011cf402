package mqtest

import (
	"context"
	"fmt"
	"sort"
	"sync"
	"testing"
	"time"

	"github.com/mqkit/mq"
)

// Features says what the backend under test keeps exact where the
// contract leaves room. The suite checks each flag both ways: a backend
// that claims a feature must show it, and one that does not must show the
// documented behaviour instead, so the README's table of where backends
// differ is a set of tested facts. The zero value claims nothing.
type Features struct {
	// KeepsEarlyMessages: a message produced while its topic has no
	// consumer group at all is delivered to the first group that
	// subscribes. When false, the suite checks that it is not.
	KeepsEarlyMessages bool

	// Attempts is what Message.Attempt counts when a message goes back to
	// the broker (its consumer closed before finishing it) and another
	// member of the group receives it.
	Attempts AttemptCount

	// KeyOrderAcrossMembers: messages with one key are handled in produce
	// order, one at a time, also when several consumers share the group.
	// When false the suite does not check it (two members may then run
	// one key at once).
	KeyOrderAcrossMembers bool
}

// AttemptCount says how a backend counts deliveries across members.
type AttemptCount int

const (
	// AttemptsReset: the broker keeps no count; each new delivery after a
	// hand-back starts at 1 again (Kafka).
	AttemptsReset AttemptCount = iota
	// AttemptsRedelivered: the broker only says whether a message was
	// delivered before, so Attempt is 2 for every redelivery (RabbitMQ
	// classic queues).
	AttemptsRedelivered
	// AttemptsExact: the broker counts deliveries; Attempt is 1, 2, 3, …
	AttemptsExact
)

func (a AttemptCount) String() string {
	switch a {
	case AttemptsReset:
		return "reset to 1"
	case AttemptsRedelivered:
		return "2 on every redelivery"
	case AttemptsExact:
		return "exact"
	}
	return fmt.Sprintf("AttemptCount(%d)", int(a))
}

// want returns the Attempt of the n-th delivery (from 1).
func (a AttemptCount) want(n int) int {
	switch a {
	case AttemptsExact:
		return n
	case AttemptsRedelivered:
		return min(n, 2)
	}
	return 1
}

func (s *suite) testEarlyMessages(t *testing.T) {
	c := s.open(t)
	topic := s.topic(t)
	s.produce(t, c.Producer(), topic, &mq.Message{ID: "early", Key: "k"})
	rec := newRecorder()
	s.start(t, s.open(t), topic, "first", rec.handler())
	if s.h.Features.KeepsEarlyMessages {
		rec.waitIDs(t, s.h.Timeout, []string{"early"})
		return
	}
	// The backend says it does not hand such messages to groups: check
	// that the group indeed sees only what came after it.
	s.produce(t, c.Producer(), topic, &mq.Message{ID: "later", Key: "k"})
	rec.waitIDs(t, s.h.Timeout, []string{"later"})
	time.Sleep(s.h.SettleTime)
	if n := rec.count("early"); n != 0 {
		t.Errorf("a message produced before any group was delivered %d times, but Features.KeepsEarlyMessages is false: update the harness and the README", n)
	}
}

func (s *suite) testAttemptsAcrossMembers(t *testing.T) {
	c := s.open(t)
	topic := s.topic(t)
	const deliveries = 3
	var got []int
	for i := range deliveries {
		m := s.open(t)
		cons, err := m.Consumer(s.ctx(t), topic, mq.WithGroup("g"), mq.WithShutdownTimeout(100*time.Millisecond))
		if err != nil {
			t.Fatal(err)
		}
		if i == 0 {
			s.produce(t, c.Producer(), topic, &mq.Message{ID: "again", Key: "k"})
		}
		seen := make(chan int, 1)
		consumed := make(chan error, 1)
		go func() {
			consumed <- cons.Consume(context.Background(), mq.HandlerFunc(func(ctx context.Context, m *mq.Message) error {
				select {
				case seen <- m.Attempt:
				default:
				}
				<-ctx.Done() // never finishes: the message goes back at Close
				return ctx.Err()
			}))
		}()
		select {
		case a := <-seen:
			got = append(got, a)
		case <-time.After(s.h.Timeout):
			t.Fatalf("delivery %d never arrived", i+1)
		}
		if err := cons.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
		if err := <-consumed; err != nil {
			t.Errorf("Consume: %v", err)
		}
	}
	want := make([]int, deliveries)
	for i := range want {
		want[i] = s.h.Features.Attempts.want(i + 1)
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("Attempt over %d deliveries to successive members: %v, want %v (Features.Attempts: %v)", deliveries, got, want, s.h.Features.Attempts)
	}
}

// handling is one handler call, for the order checks.
type handling struct {
	member     int
	seq        int
	start, end time.Time
}

func (s *suite) testKeyOrderAcrossMembers(t *testing.T) {
	if !s.h.Features.KeyOrderAcrossMembers {
		t.Skip("Features.KeyOrderAcrossMembers is false: this backend (as configured) does not keep key order across members")
	}
	topic := s.topic(t)
	const keys, perKey, members = 48, 6, 2
	var mu sync.Mutex
	byKey := map[string][]handling{}
	done := map[string]bool{}
	all := make(chan struct{})
	for member := range members {
		s.start(t, s.open(t), topic, "g", func(_ context.Context, m *mq.Message) error {
			var seq int
			_, _ = fmt.Sscan(string(m.Body), &seq)
			h := handling{member: member, seq: seq, start: time.Now()}
			time.Sleep(2 * time.Millisecond)
			h.end = time.Now()
			mu.Lock()
			byKey[m.Key] = append(byKey[m.Key], h)
			if !done[m.ID] {
				done[m.ID] = true
				if len(done) == keys*perKey {
					close(all)
				}
			}
			mu.Unlock()
			return nil
		}, mq.WithConcurrency(4))
	}
	var msgs []*mq.Message
	for i := range perKey {
		for k := range keys {
			msgs = append(msgs, &mq.Message{ID: fmt.Sprintf("k%d-%d", k, i), Key: fmt.Sprintf("k%d", k), Body: []byte(fmt.Sprint(i))})
		}
	}
	s.produce(t, s.open(t).Producer(), topic, msgs...)
	select {
	case <-all:
	case <-time.After(s.h.Timeout):
		mu.Lock()
		n := len(done)
		mu.Unlock()
		t.Fatalf("%d of %d messages handled before the timeout", n, len(msgs))
	}
	mu.Lock()
	defer mu.Unlock()
	used := map[int]bool{}
	for key, hs := range byKey {
		sort.Slice(hs, func(i, j int) bool { return hs[i].start.Before(hs[j].start) })
		next := 0 // the lowest sequence not yet handled
		for i, h := range hs {
			used[h.member] = true
			if i > 0 && h.start.Before(hs[i-1].end) {
				t.Errorf("key %s: seq %d (member %d) started before seq %d (member %d) ended: two handlers on one key at once", key, h.seq, h.member, hs[i-1].seq, hs[i-1].member)
			}
			switch {
			case h.seq == next:
				next++
			case h.seq > next:
				t.Errorf("key %s: seq %d handled before seq %d", key, h.seq, next)
				next = h.seq + 1
			}
			// h.seq < next: a redelivery of a handled message (allowed).
		}
	}
	t.Logf("%d messages over %d keys; members that handled messages: %d of %d", len(msgs), keys, len(used), members)
}
