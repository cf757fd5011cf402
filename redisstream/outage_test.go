package redisstream_test

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mqkit/mq"
	"github.com/mqkit/mq/integration/testbed"
)

// orderLedger checks per-key order and loss across broker outages. Each
// message has a key and a per-key sequence number (its body), produced in
// sequence order, the next only after the previous was confirmed.
//
// A first-time reorder is a message whose first handling starts after the
// first handling of a message of the same key with a higher sequence
// number started: for every key and n, the first handling of seq n+1
// must not start before the first handling of seq n. Each late message
// counts once. Redeliveries (a message handled again) are not reorders. An overlap is two members running handlers of the same
// key at the same time. Lost is confirmed and never handled.
type orderLedger struct {
	mu        sync.Mutex
	confirmed map[string]bool           // message ID -> confirmed by Produce
	started   map[string]int            // message ID -> handlings started
	next      map[string]int            // key -> 1 + the highest seq started
	running   map[string]map[int]int    // key -> member -> handlers running
	last      map[string]map[int]string // key -> member -> ID of its last handling, for reports
	reorders  []string
	overlaps  []string
	dups      int
	cancelled int // handlings that ended with their context (lost ownership)
	// Every slowEvery-th message of a key (staggered over the keys) takes
	// slowWork instead of the handler's work: handlers are then running
	// whenever the broker stops answering.
	slowEvery int
	slowWork  time.Duration
	slowStart chan int // gets the member (if there is room) when a slow handling starts
	produceErrs,
	unavailable int // produce errors, and of them those wrapping mq.ErrUnavailable
}

func newOrderLedger() *orderLedger {
	return &orderLedger{
		confirmed: map[string]bool{},
		started:   map[string]int{},
		next:      map[string]int{},
		running:   map[string]map[int]int{},
		last:      map[string]map[int]string{},
	}
}

// handler returns the handler of member who. It runs for about work,
// returning early (with the context's error) when its context ends, as a
// handler honouring cancellation does.
func (l *orderLedger) handler(who int, work time.Duration) mq.HandlerFunc {
	return func(ctx context.Context, m *mq.Message) error {
		seq, err := strconv.Atoi(string(m.Body))
		if err != nil {
			return mq.Permanent(err)
		}
		l.mu.Lock()
		l.started[m.ID]++
		if l.started[m.ID] == 1 {
			if next := l.next[m.Key]; seq < next {
				l.reorders = append(l.reorders, fmt.Sprintf("%s: member %d started #%d for the first time after #%d had started", m.Key, who, seq, next-1))
			} else {
				l.next[m.Key] = seq + 1
			}
		} else {
			l.dups++
		}
		if l.running[m.Key] == nil {
			l.running[m.Key] = map[int]int{}
			l.last[m.Key] = map[int]string{}
		}
		for other, n := range l.running[m.Key] {
			if other != who && n > 0 {
				l.overlaps = append(l.overlaps, fmt.Sprintf("%s: member %d started #%d while member %d was running %s", m.Key, who, seq, other, l.last[m.Key][other]))
			}
		}
		l.running[m.Key][who]++
		l.last[m.Key][who] = fmt.Sprintf("#%d", seq)
		l.mu.Unlock()
		defer func() {
			l.mu.Lock()
			l.running[m.Key][who]--
			l.mu.Unlock()
		}()
		d := work
		var k int
		if _, err := fmt.Sscanf(m.Key, "key-%d", &k); err == nil && l.slowEvery > 0 && (seq+31*k)%l.slowEvery == 0 {
			d = l.slowWork
			select {
			case l.slowStart <- who:
			default:
			}
		}
		t := time.NewTimer(d)
		defer t.Stop()
		select {
		case <-t.C:
			return nil
		case <-ctx.Done():
			l.mu.Lock()
			l.cancelled++
			l.mu.Unlock()
			return ctx.Err()
		}
	}
}

// produce sends keys messages per round, one per key with the round as
// sequence number, until ctx ends. A round that fails is sent again with
// the same IDs until it is confirmed; only then does the next start.
func (l *orderLedger) produce(ctx context.Context, p mq.Producer, topic string, keys int, every time.Duration) {
	for seq := 0; ctx.Err() == nil; seq++ {
		batch := make([]*mq.Message, keys)
		for k := range batch {
			batch[k] = &mq.Message{Key: fmt.Sprintf("key-%02d", k), Body: []byte(strconv.Itoa(seq))}
		}
		for {
			pctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			err := p.Produce(pctx, topic, batch...)
			cancel()
			if err == nil {
				break
			}
			l.mu.Lock()
			l.produceErrs++
			if errors.Is(err, mq.ErrUnavailable) {
				l.unavailable++
			}
			l.mu.Unlock()
			if ctx.Err() != nil {
				return // never confirmed: not counted
			}
			time.Sleep(50 * time.Millisecond)
		}
		l.mu.Lock()
		for _, m := range batch {
			l.confirmed[m.ID] = true
		}
		l.mu.Unlock()
		select {
		case <-ctx.Done():
			return
		case <-time.After(every):
		}
	}
}

// lost returns how many confirmed messages were never handled.
func (l *orderLedger) lost() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := 0
	for id := range l.confirmed {
		if l.started[id] == 0 {
			n++
		}
	}
	return n
}

// waitAll waits until nothing confirmed is unhandled, and fails the test
// after timeout.
func (l *orderLedger) waitAll(t *testing.T, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for l.lost() > 0 {
		if time.Now().After(deadline) {
			t.Errorf("%d confirmed messages were never handled within %v", l.lost(), timeout)
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// report fails the test for reorders and overlaps and logs the counts.
func (l *orderLedger) report(t *testing.T) {
	t.Helper()
	l.mu.Lock()
	defer l.mu.Unlock()
	t.Logf("confirmed %d, handled %d distinct, duplicates %d, handlers cancelled %d, first-time reorders %d, overlaps %d, produce errors %d (%d wrapping mq.ErrUnavailable)",
		len(l.confirmed), len(l.started), l.dups, l.cancelled, len(l.reorders), len(l.overlaps), l.produceErrs, l.unavailable)
	show := func(what string, list []string) {
		if len(list) == 0 {
			return
		}
		sort.Strings(list)
		t.Errorf("%d %s, for example:\n%s", len(list), what, strings.Join(list[:min(len(list), 10)], "\n"))
	}
	show("first-time reorders", l.reorders)
	show("overlapping handlings of one key by two members", l.overlaps)
}

// TestRestartKeepsKeyOrder restarts Redis (which keeps its data: append
// only, fsync always) again and again under load, with one consumer
// running several handlers at once. A read cut off by the restart may
// have been served (its entries added to the consumer's pending list)
// without the reply arriving: the consumer must get those entries back
// before newer ones, not after claim_idle, or their keys are handled out
// of order. Nothing may be lost, and no message may be handled for the
// first time before an earlier message of its key.
func TestRestartKeepsKeyOrder(t *testing.T) {
	br := testbed.Redis(t)
	for _, tc := range []struct{ name, params string }{
		{"unsharded", "?claim_idle=2s&block=300ms"},
		// A restart takes longer than the lease: the consumer gives its
		// shards up, takes them again and claims what is pending.
		{"sharded", "?shards=4&shard_lease=2s&claim_idle=2s&block=300ms"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			prod, cons := openURL(t, br.URL+tc.params), openURL(t, br.URL+tc.params)
			topic := topicName(t)
			l := newOrderLedger()
			consume(t, cons, topic, "g", l.handler(0, 2*time.Millisecond), mq.WithConcurrency(8))

			pctx, stop := context.WithCancel(ctx)
			var wg sync.WaitGroup
			wg.Add(1)
			go func() {
				defer wg.Done()
				l.produce(pctx, prod.Producer(), topic, 8, 2*time.Millisecond)
			}()
			begin := time.Now()
			const restarts = 4
			for i := range restarts {
				time.Sleep(1500 * time.Millisecond)
				rctx, cancel := context.WithTimeout(ctx, 30*time.Second)
				err := br.Restart(rctx)
				cancel()
				if err != nil {
					stop()
					wg.Wait()
					t.Fatalf("restart %d: %v", i+1, err)
				}
			}
			time.Sleep(time.Second)
			stop()
			wg.Wait()
			t.Logf("%d restarts under load in %v", restarts, time.Since(begin).Round(time.Millisecond))
			l.waitAll(t, 20*time.Second)
			l.report(t)
		})
	}
}

// openURL opens a client and closes it after the test.
func openURL(t testing.TB, u string) *mq.Client {
	t.Helper()
	c, err := mq.Open(context.Background(), u)
	if err != nil {
		t.Fatalf("mq.Open: %v", err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}

// TestPauseFencesShards pauses Redis for longer than the shard lease, twice,
// while two members of a sharded group handle a steady load. Each member
// gives its shards up by its own clock before Redis can expire their
// leases (cancelling its running handlers, which honour their context),
// so after the pause a shard's new holder never runs a key while the old
// one still does; the new holder claims what was pending, so nothing is
// lost and every key's messages are first handled in produce order,
// checked message by message across the members.
func TestPauseFencesShards(t *testing.T) {
	br := testbed.Redis(t)
	const params = "?shards=4&shard_lease=2s&claim_idle=2s&block=300ms"
	ctx := context.Background()
	prod := openURL(t, br.URL+params)
	members := []*mq.Client{openURL(t, br.URL+params), openURL(t, br.URL+params)}
	topic := topicName(t)
	l := newOrderLedger()
	l.slowEvery, l.slowWork, l.slowStart = 400, 3*time.Second, make(chan int, 1)
	for who, c := range members {
		consume(t, c, topic, "g", l.handler(who, 5*time.Millisecond), mq.WithConcurrency(4))
	}
	pctx, stop := context.WithCancel(ctx)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		l.produce(pctx, prod.Producer(), topic, 8, 20*time.Millisecond)
	}()
	defer func() {
		stop()
		wg.Wait()
	}()
	begin := time.Now()
	const pauses, pause = 2, 4 * time.Second
	for i := range pauses {
		time.Sleep(2 * time.Second)
		// Pause while a slow handler runs: it is still running when its
		// member's lease deadline passes, and must be cancelled.
		select {
		case <-l.slowStart:
		default:
		}
		select {
		case <-l.slowStart:
		case <-time.After(10 * time.Second):
			t.Fatal("no slow handling started within 10s")
		}
		if err := br.Pause(ctx); err != nil {
			t.Fatalf("pause %d: %v", i+1, err)
		}
		time.Sleep(pause)
		uctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		err := br.Unpause(uctx)
		cancel()
		if err != nil {
			t.Fatalf("unpause %d: %v", i+1, err)
		}
	}
	time.Sleep(3 * time.Second)
	stop()
	wg.Wait()
	t.Logf("%d pauses of %v (shard lease 2s) under load in %v", pauses, pause, time.Since(begin).Round(time.Millisecond))
	l.waitAll(t, 30*time.Second)
	l.report(t)
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.cancelled == 0 {
		t.Error("no handler was cancelled: the pauses never caught a member with work in flight, so fencing went untested")
	}
}
