package kafka_test

import (
	"context"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mqkit/mq"
	"github.com/mqkit/mq/integration/testbed"
)

// execution is one run of a handler.
type execution struct {
	key        string
	seq        int
	member     int
	start, end time.Time
	ok         bool // returned nil
}

// TestRebalanceKeepsKeysExclusive consumes a keyed stream while members
// join and leave the group, and checks message by message what the Kafka
// backend promises across a rebalance:
//
//   - nothing is lost: every message is handled successfully at least once;
//   - a key is never handled by two handlers at once, on one member or
//     across members: a member stops handling a partition (its running
//     handlers are cancelled and what waits is dropped) when its drain
//     ends, before the partition's next owner starts; the handlers here
//     honour ctx, as the package documentation asks;
//   - per-key order holds across members: no message of a key starts
//     before the key's previous message finished successfully somewhere
//     (a redelivery restarts from the committed offset, so a message may
//     run again, but never ahead of its predecessor).
//
// Some handlers take longer than the drain timeout, so revokes catch them
// running. Before partitions reported their loss (Delivery.Lost), such a
// handler kept running after its member had given the partition up, and
// the member went on starting the partition's queued messages, beside the
// new owner handling the same keys.
func TestRebalanceKeepsKeysExclusive(t *testing.T) {
	if testing.Short() {
		t.Skip("needs a Kafka broker; skipped with -short")
	}
	b := testbed.SharedKafka(t)
	const (
		partitions   = 6
		keys         = 60
		perKey       = 50
		drainTimeout = 250 * time.Millisecond
		slow         = 800 * time.Millisecond // longer than the drain
	)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	open := func() *mq.Client {
		c, err := mq.Open(ctx, fmt.Sprintf("%s/?create_topics=true&partitions=%d&session_timeout=6s&drain_timeout=%s", b.URL, partitions, drainTimeout))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = c.Close() })
		return c
	}
	topic, group := "rebalance-order-"+mq.NewID(), "g-"+mq.NewID()

	var mu sync.Mutex
	var execs []execution
	okSeen := map[string]bool{}
	handler := func(member int) mq.Handler {
		return mq.HandlerFunc(func(ctx context.Context, m *mq.Message) error {
			start := time.Now()
			seq, err := strconv.Atoi(string(m.Body))
			if err != nil {
				return mq.Permanent(err)
			}
			d := 2 * time.Millisecond
			if seq%25 == 12 {
				d = slow
			}
			select {
			case <-time.After(d):
			case <-ctx.Done():
				err = ctx.Err()
			}
			mu.Lock()
			execs = append(execs, execution{key: m.Key, seq: seq, member: member, start: start, end: time.Now(), ok: err == nil})
			if err == nil {
				okSeen[m.Key+"/"+string(m.Body)] = true
			}
			mu.Unlock()
			return err
		})
	}
	type member struct {
		cons mq.Consumer
		stop context.CancelFunc
		done chan error
	}
	join := func(id int) *member {
		cons, err := open().Consumer(ctx, topic, mq.WithGroup(group), mq.WithConcurrency(8))
		if err != nil {
			t.Fatal(err)
		}
		cctx, stop := context.WithCancel(ctx)
		m := &member{cons: cons, stop: stop, done: make(chan error, 1)}
		go func() { m.done <- cons.Consume(cctx, handler(id)) }()
		return m
	}
	leave := func(m *member) {
		m.stop()
		if err := <-m.done; err != nil {
			t.Errorf("Consume: %v", err)
		}
		if err := m.cons.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	}

	begin := time.Now()
	m1 := join(1)
	prodDone := make(chan error, 1)
	go func() {
		p := open().Producer()
		n := 0
		for n < keys*perKey {
			batch := make([]*mq.Message, 0, 100)
			for ; len(batch) < cap(batch) && n < keys*perKey; n++ {
				batch = append(batch, &mq.Message{Key: fmt.Sprintf("k%02d", n%keys), Body: []byte(strconv.Itoa(n / keys))})
			}
			if err := p.Produce(ctx, topic, batch...); err != nil {
				prodDone <- err
				return
			}
			time.Sleep(200 * time.Millisecond)
		}
		prodDone <- nil
	}()
	time.Sleep(1500 * time.Millisecond)
	m2 := join(2)
	time.Sleep(1500 * time.Millisecond)
	m3 := join(3)
	time.Sleep(2 * time.Second)
	leave(m1)
	if err := <-prodDone; err != nil {
		t.Fatalf("produce: %v", err)
	}
	for {
		mu.Lock()
		n := len(okSeen)
		mu.Unlock()
		if n == keys*perKey {
			break
		}
		if ctx.Err() != nil || time.Since(begin) > 90*time.Second {
			t.Fatalf("only %d of %d messages handled successfully", n, keys*perKey)
		}
		time.Sleep(100 * time.Millisecond)
	}
	elapsed := time.Since(begin)
	leave(m2)
	leave(m3)

	mu.Lock()
	defer mu.Unlock()
	byKey := map[string][]execution{}
	for _, e := range execs {
		byKey[e.key] = append(byKey[e.key], e)
	}
	var bad []string
	report := func(format string, args ...any) {
		if len(bad) < 20 {
			bad = append(bad, fmt.Sprintf(format, args...))
		}
	}
	cancelled, rerun, maxAcross := 0, 0, time.Duration(0)
	closest := time.Duration(-1) // smallest gap between a key's runs on two members
	for key, es := range byKey {
		slices.SortFunc(es, func(a, b execution) int { return a.start.Compare(b.start) })
		firstOK := map[int]time.Time{} // earliest successful end per seq
		firstStart := map[int]time.Time{}
		runs := map[int]int{}
		for _, e := range es {
			runs[e.seq]++
			if !e.ok {
				cancelled++
			}
			if t0, ok := firstStart[e.seq]; !ok || e.start.Before(t0) {
				firstStart[e.seq] = e.start
			}
			if e.ok {
				if t0, ok := firstOK[e.seq]; !ok || e.end.Before(t0) {
					firstOK[e.seq] = e.end
				}
			}
		}
		for _, n := range runs {
			rerun += n - 1
		}
		// Exclusive: sorted by start, each execution must begin after every
		// earlier one of the key has ended.
		for i, e := range es {
			for _, p := range es[:i] {
				if p.member != e.member && p.end.Before(e.start) {
					if gap := e.start.Sub(p.end); closest < 0 || gap < closest {
						closest = gap
					}
				}
				if overlap := p.end.Sub(e.start); overlap > 0 {
					if p.member != e.member {
						maxAcross = max(maxAcross, overlap)
					}
					report("key %s: #%d on member %d [%v, %v] overlaps #%d on member %d [%v, %v] by %v",
						key, e.seq, e.member, e.start.Sub(begin), e.end.Sub(begin), p.seq, p.member, p.start.Sub(begin), p.end.Sub(begin), overlap)
				}
			}
		}
		// Order: #s never starts before #s-1 first finished.
		for s := 1; s < perKey; s++ {
			if fs, ok := firstStart[s]; ok && fs.Before(firstOK[s-1]) {
				report("key %s: #%d started at %v, before #%d first finished at %v", key, s, fs.Sub(begin), s-1, firstOK[s-1].Sub(begin))
			}
		}
	}
	t.Logf("%d messages over %d keys and %d partitions, 3 members joining and leaving: %d handler runs, %d cancelled by a lost partition, %d runs again after a revoke, all handled in %v; closest hand-over of a key between members %v",
		keys*perKey, keys, partitions, len(execs), cancelled, rerun, elapsed.Round(time.Millisecond), closest)
	if len(bad) > 0 {
		t.Errorf("per-key exclusivity or order broken across the rebalances (largest overlap across members %v):\n%s", maxAcross, strings.Join(bad, "\n"))
	}
}
