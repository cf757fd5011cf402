package dlq_test

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/mqkit/mq"
	"github.com/mqkit/mq/dlq"
	"github.com/mqkit/mq/integration/testbed"
	_ "github.com/mqkit/mq/kafka"
)

// TestRedriveKafkaMovesEachLetterOnce redrives a Kafka dead-letter topic
// twice, the second time from another client as a restarted process would,
// and counts what reaches the source topic: each dead letter exactly once.
//
// The dead-letter topic holds a duplicate (two dead letters with one ID, as
// at-least-once dead-lettering can leave): Redrive leaves the second copy
// for a later call, and Kafka cannot commit past a message left
// unacknowledged, so the letters behind it in its partition must be left
// too. Acknowledging them instead made the next Redrive read and move them
// a second time.
func TestRedriveKafkaMovesEachLetterOnce(t *testing.T) {
	if testing.Short() {
		t.Skip("needs a Kafka broker; skipped with -short")
	}
	b := testbed.SharedKafka(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	open := func() *mq.Client {
		c, err := mq.Open(ctx, b.URL+"/?create_topics=true&partitions=3&session_timeout=6s")
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = c.Close() })
		return c
	}
	c1 := open()
	src := "redrive-src-" + mq.NewID()
	dlqTopic := dlq.DefaultTopic(src)
	if err := dlq.Ensure(ctx, c1, dlqTopic); err != nil {
		t.Fatal(err)
	}
	// Collect what reaches the source topic, from before the first redrive.
	var mu sync.Mutex
	arrived := map[string]int{}
	cons, err := c1.Consumer(ctx, src, mq.WithGroup("svc"))
	if err != nil {
		t.Fatal(err)
	}
	cctx, stop := context.WithCancel(ctx)
	consumed := make(chan error, 1)
	go func() {
		consumed <- cons.Consume(cctx, mq.HandlerFunc(func(_ context.Context, m *mq.Message) error {
			mu.Lock()
			arrived[m.ID]++
			mu.Unlock()
			return nil
		}))
	}()

	// 40 dead letters over 8 keys; L-05 is dead-lettered twice, and 10
	// more letters of its key follow its duplicate.
	letter := func(i int, key string) *mq.Message {
		return &mq.Message{ID: fmt.Sprintf("L-%02d", i), Key: key, Body: []byte(fmt.Sprint(i)),
			Headers: map[string]string{dlq.HeaderTopic: src, dlq.HeaderReason: dlq.ReasonError}}
	}
	var letters []*mq.Message
	want := map[string]int{}
	for i := range 30 {
		letters = append(letters, letter(i, fmt.Sprintf("k%d", i%8)))
	}
	letters = append(letters, letter(5, "k5"))
	for i := 30; i < 40; i++ {
		letters = append(letters, letter(i, "k5"))
	}
	for _, m := range letters {
		want[m.ID]++
	}
	if err := c1.Producer().Produce(ctx, dlqTopic, letters...); err != nil {
		t.Fatal(err)
	}

	var moved []string
	for i, c := range []*mq.Client{c1, open(), open()} {
		res, err := dlq.Redrive(ctx, c, dlqTopic, nil, dlq.WithIdle(3*time.Second))
		if err != nil {
			t.Fatalf("redrive %d: %v", i+1, err)
		}
		t.Logf("redrive %d: moved %d, kept %d, left %d for a later call", i+1, len(res.Moved), res.Kept, res.Left)
		moved = append(moved, res.Moved...)
	}
	if len(moved) != len(letters) {
		t.Errorf("redrives moved %d dead letters in all, want %d", len(moved), len(letters))
	}

	// Wait for the source consumer to catch up (and for anything extra).
	deadline := time.Now().Add(time.Minute)
	for {
		mu.Lock()
		n := 0
		for _, k := range arrived {
			n += k
		}
		mu.Unlock()
		if n >= len(letters) || time.Now().After(deadline) {
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	time.Sleep(2 * time.Second) // room for a second arrival
	stop()
	if err := <-consumed; err != nil {
		t.Errorf("Consume: %v", err)
	}
	mu.Lock()
	defer mu.Unlock()
	for _, id := range slices.Sorted(maps.Keys(want)) {
		if arrived[id] != want[id] {
			t.Errorf("%s reached the source topic %d times, want %d (one per dead letter)", id, arrived[id], want[id])
		}
	}
	for id := range arrived {
		if want[id] == 0 {
			t.Errorf("unexpected %s on the source topic", id)
		}
	}
}
