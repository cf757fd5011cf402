package mq_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mqkit/mq"
	"github.com/mqkit/mq/memory"
)

// runBatch consumes topic of a fresh mem:// broker with h at concurrency
// conc until stop returns true, and returns the client for producing.
func batchClient(t *testing.T) *mq.Client {
	b := memory.NewBroker(memory.Config{})
	c := mq.NewClient(b.Conn(), mq.WithNackBackoff(time.Millisecond, 5*time.Millisecond))
	t.Cleanup(func() { _ = c.Close(); _ = b.Close() })
	return c
}

func consumeUntil(t *testing.T, c *mq.Client, topic string, conc int, h mq.Handler, done <-chan struct{}) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cons, err := c.Consumer(ctx, topic, mq.WithGroup("g"), mq.WithConcurrency(conc))
	if err != nil {
		t.Fatal(err)
	}
	defer cons.Close()
	go func() {
		select {
		case <-done:
		case <-ctx.Done():
		}
		cancel()
	}()
	if err := cons.Consume(ctx, h); err != nil {
		t.Fatal(err)
	}
	select {
	case <-done:
	default:
		t.Fatal("timed out")
	}
}

// TestBatchFailsOnlyTheFailed: batches fill up to Size; a *BatchError
// sends back only the messages it marks, which come again with Attempt 2;
// per-key order holds across batches.
func TestBatchFailsOnlyTheFailed(t *testing.T) {
	c := batchClient(t)
	const n, keys = 1000, 50
	var msgs []*mq.Message
	for i := range n {
		msgs = append(msgs, &mq.Message{Key: fmt.Sprint("k", i%keys), Body: []byte(fmt.Sprint(i))})
	}
	if err := c.Producer().Produce(context.Background(), "t", msgs...); err != nil {
		t.Fatal(err)
	}
	var (
		mu      sync.Mutex
		calls   = map[string][]int{} // id -> attempts seen
		last    = map[string]int{}   // key -> last body index handled
		sizes   []int
		handled int
		done    = make(chan struct{})
	)
	h := mq.Batch(mq.BatchHandlerFunc(func(_ context.Context, ms []*mq.Message) error {
		mu.Lock()
		defer mu.Unlock()
		sizes = append(sizes, len(ms))
		errs := make([]error, len(ms))
		keysSeen := map[string]bool{}
		for i, m := range ms {
			if keysSeen[m.Key] {
				t.Errorf("key %s twice in one batch", m.Key)
			}
			keysSeen[m.Key] = true
			calls[m.ID] = append(calls[m.ID], m.Attempt)
			var idx int
			fmt.Sscan(string(m.Body), &idx)
			if idx%97 == 0 && m.Attempt == 1 {
				errs[i] = errors.New("transient")
				continue
			}
			if prev, ok := last[m.Key]; ok && prev > idx {
				t.Errorf("key %s: %d handled after %d", m.Key, idx, prev)
			}
			last[m.Key] = idx
			handled++
		}
		if handled == n {
			close(done)
		}
		return &mq.BatchError{Errs: errs}
	}), mq.BatchOptions{Size: 50, Linger: 20 * time.Millisecond})
	consumeUntil(t, c, "t", 50, h, done)

	mu.Lock()
	defer mu.Unlock()
	for _, m := range msgs {
		var idx int
		fmt.Sscan(string(m.Body), &idx)
		want := "[1]"
		if idx%97 == 0 {
			want = "[1 2]"
		}
		if got := fmt.Sprint(calls[m.ID]); got != want {
			t.Errorf("message %d: attempts %s, want %s", idx, got, want)
		}
	}
	most, total := 0, 0
	for _, s := range sizes {
		most, total = max(most, s), total+s
	}
	if most < 25 {
		t.Errorf("largest batch %d of 50 (concurrency 50, %d keys): batches do not fill", most, keys)
	}
	t.Logf("%d batches, mean size %.1f, largest %d", len(sizes), float64(total)/float64(len(sizes)), most)
}

// TestBatchPanicAndWholeFailure: a panic or a plain error fails every
// message of its batch; all come back and nothing hangs.
func TestBatchPanicAndWholeFailure(t *testing.T) {
	c := batchClient(t)
	var msgs []*mq.Message
	for i := range 40 {
		msgs = append(msgs, &mq.Message{Key: fmt.Sprint("k", i), Body: []byte(fmt.Sprint(i))})
	}
	if err := c.Producer().Produce(context.Background(), "t", msgs...); err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	round := 0
	ok := map[string]bool{}
	done := make(chan struct{})
	h := mq.Batch(mq.BatchHandlerFunc(func(_ context.Context, ms []*mq.Message) error {
		mu.Lock()
		defer mu.Unlock()
		round++
		switch round {
		case 1:
			panic("boom")
		case 2:
			return errors.New("all failed")
		}
		for _, m := range ms {
			ok[m.ID] = true
		}
		if len(ok) == len(msgs) {
			close(done)
		}
		return nil
	}), mq.BatchOptions{Size: 10, Linger: 5 * time.Millisecond})
	var attempts sync.Map
	wrapped := mq.HandlerFunc(func(ctx context.Context, m *mq.Message) error {
		err := h.Handle(ctx, m)
		var pe *mq.PanicError
		if errors.As(err, &pe) {
			attempts.Store(m.ID, "panic")
		}
		return err
	})
	consumeUntil(t, c, "t", 10, wrapped, done)
	n := 0
	attempts.Range(func(any, any) bool { n++; return true })
	if n == 0 {
		t.Fatal("no message saw the batch's *mq.PanicError")
	}
}

// TestBatchLingers: a lone message is handled after Linger, not held for
// a batch that never fills.
func TestBatchLingers(t *testing.T) {
	c := batchClient(t)
	if err := c.Producer().Produce(context.Background(), "t", &mq.Message{Body: []byte("alone")}); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	start := time.Now()
	var took time.Duration
	h := mq.Batch(mq.BatchHandlerFunc(func(_ context.Context, ms []*mq.Message) error {
		took = time.Since(start)
		if len(ms) != 1 {
			t.Errorf("batch of %d, want 1", len(ms))
		}
		close(done)
		return nil
	}), mq.BatchOptions{Size: 100, Linger: 30 * time.Millisecond})
	consumeUntil(t, c, "t", 100, h, done)
	if took < 30*time.Millisecond || took > 5*time.Second {
		t.Fatalf("lone message handled after %v, want about the 30ms linger", took)
	}
}

// TestBatchTypedNilError: a BatchHandler returning a nil *BatchError (a
// typed nil in an error) means nothing failed, not a panic.
func TestBatchTypedNilError(t *testing.T) {
	c := batchClient(t)
	if err := c.Producer().Produce(context.Background(), "t", &mq.Message{Key: "a"}, &mq.Message{Key: "b"}); err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	calls := map[string]int{}
	done := make(chan struct{})
	h := mq.Batch(mq.BatchHandlerFunc(func(_ context.Context, ms []*mq.Message) error {
		mu.Lock()
		defer mu.Unlock()
		for _, m := range ms {
			calls[m.ID]++
		}
		if len(calls) == 2 {
			select {
			case <-done:
			default:
				close(done)
			}
		}
		var be *mq.BatchError
		return be
	}), mq.BatchOptions{Size: 2, Linger: 20 * time.Millisecond})
	consumeUntil(t, c, "t", 2, h, done)
	time.Sleep(50 * time.Millisecond)
	mu.Lock()
	defer mu.Unlock()
	for id, n := range calls {
		if n != 1 {
			t.Errorf("message %s handled %d times, want once", id, n)
		}
	}
}

// TestBatchPanicLogged: a panicking batch handler is logged once, through
// the client's logger, with the panic value and the batch's size.
func TestBatchPanicLogged(t *testing.T) {
	var mu sync.Mutex
	var buf bytes.Buffer
	logger := slog.New(slog.NewTextHandler(lockedWriter{&mu, &buf}, nil))
	b := memory.NewBroker(memory.Config{})
	c := mq.NewClient(b.Conn(), mq.WithLogger(logger), mq.WithNackBackoff(time.Millisecond, 5*time.Millisecond))
	t.Cleanup(func() { _ = c.Close(); _ = b.Close() })
	var msgs []*mq.Message
	for i := range 5 {
		msgs = append(msgs, &mq.Message{Key: fmt.Sprint("k", i), Body: []byte("x")})
	}
	if err := c.Producer().Produce(context.Background(), "t", msgs...); err != nil {
		t.Fatal(err)
	}
	var once sync.Once
	handled := 0
	done := make(chan struct{})
	h := mq.Batch(mq.BatchHandlerFunc(func(_ context.Context, ms []*mq.Message) error {
		panicked := false
		once.Do(func() { panicked = true })
		if panicked {
			panic("kaboom")
		}
		mu.Lock()
		defer mu.Unlock()
		handled += len(ms)
		if handled == len(msgs) {
			close(done)
		}
		return nil
	}), mq.BatchOptions{Size: 5, Linger: 20 * time.Millisecond})
	consumeUntil(t, c, "t", 5, h, done)
	mu.Lock()
	out := buf.String()
	mu.Unlock()
	if n := strings.Count(out, "batch handler panicked"); n != 1 {
		t.Fatalf("%d log lines about the panic, want 1:\n%s", n, out)
	}
	if !strings.Contains(out, "kaboom") || !strings.Contains(out, "messages=") {
		t.Errorf("the line lacks the panic value or the batch size:\n%s", out)
	}
}

// lockedWriter serialises writes to w with mu.
type lockedWriter struct {
	mu *sync.Mutex
	w  io.Writer
}

func (l lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}
