package mqtest

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/mqkit/mq"
	"github.com/mqkit/mq/middleware"
)

// testBatchConsume: mq.Batch on the backend under test gathers messages
// into batches, keeps per-key order, and with per-message retry outside it
// calls only the failed messages again.
func (s *suite) testBatchConsume(t *testing.T) {
	c := s.open(t)
	topic := s.topic(t)
	const n, keys, size = 600, 60, 30
	var (
		mu      sync.Mutex
		handled = map[string]int{}
		failed  = map[string]int{}
		last    = map[string]int{}
		sizes   []int
	)
	done := make(chan struct{})
	bh := mq.BatchHandlerFunc(func(_ context.Context, ms []*mq.Message) error {
		mu.Lock()
		defer mu.Unlock()
		sizes = append(sizes, len(ms))
		var errs []error
		for i, m := range ms {
			idx, _ := strconv.Atoi(string(m.Body))
			if idx%50 == 7 && failed[m.ID] == 0 {
				failed[m.ID]++
				if errs == nil {
					errs = make([]error, len(ms))
				}
				errs[i] = errors.New("bulk insert refused this row")
				continue
			}
			if prev, ok := last[m.Key]; ok && prev > idx {
				t.Errorf("key %s: message %d handled after %d", m.Key, idx, prev)
			}
			last[m.Key] = idx
			handled[m.ID]++
			if len(handled) == n {
				close(done)
			}
		}
		if errs != nil {
			return &mq.BatchError{Errs: errs}
		}
		return nil
	})
	h := mq.Chain(mq.Batch(bh, mq.BatchOptions{Size: size, Linger: 20 * time.Millisecond}),
		middleware.Retry(middleware.RetryConfig{MaxAttempts: 3, InitialInterval: 10 * time.Millisecond}))
	r := s.start(t, c, topic, "g", h.Handle, mq.WithConcurrency(size))

	p := c.Producer()
	defer p.Close()
	msgs := make([]*mq.Message, n)
	for i := range msgs {
		msgs[i] = &mq.Message{Key: fmt.Sprint("k", i%keys), Body: []byte(strconv.Itoa(i))}
	}
	for i := 0; i < n; i += 100 {
		s.produce(t, p, topic, msgs[i:i+100]...)
	}
	select {
	case <-done:
	case <-time.After(s.h.Timeout):
		mu.Lock()
		t.Fatalf("after %v, %d of %d messages handled", s.h.Timeout, len(handled), n)
	}
	time.Sleep(s.h.SettleTime)
	r.stop(t)
	mu.Lock()
	defer mu.Unlock()
	for i, m := range msgs {
		if handled[m.ID] != 1 {
			t.Errorf("message %d handled %d times, want once", i, handled[m.ID])
		}
	}
	if len(failed) != n/50 {
		t.Errorf("%d messages failed once, want %d", len(failed), n/50)
	}
	most, total := 0, 0
	for _, sz := range sizes {
		most, total = max(most, sz), total+sz
	}
	t.Logf("%d batches, mean size %.1f, largest %d (of %d)", len(sizes), float64(total)/float64(len(sizes)), most, size)
	if most < 2 {
		t.Errorf("no batch held more than one message")
	}
}
