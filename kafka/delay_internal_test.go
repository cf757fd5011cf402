package kafka

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/IBM/sarama"
	"github.com/mqkit/mq"
)

func TestLevelFor(t *testing.T) {
	ms := time.Millisecond
	for _, c := range []struct {
		left time.Duration
		want int
	}{
		{-time.Second, 0}, {0, 0}, {99 * ms, 0},
		{100 * ms, 1}, {199 * ms, 1}, {200 * ms, 2}, {399 * ms, 2}, {400 * ms, 3},
		{time.Second, 4}, {3100 * ms, 5}, {time.Minute, 10}, {mq.MaxDelay, 29}, {10 * mq.MaxDelay, 29},
	} {
		if got := levelFor(c.left); got != c.want {
			t.Errorf("levelFor(%v) = %d, want %d", c.left, got, c.want)
		}
	}
	// The longest level not over what is left: never early, at most
	// half of it left over (above the first level).
	for r := delayGranularity; r <= mq.MaxDelay; r = r*3/2 + 7*time.Millisecond {
		l := levelDuration(levelFor(r))
		if l > r || (r < levelDuration(delayLevels-1) && r-l >= l) {
			t.Errorf("levelFor(%v) waits %v", r, l)
		}
	}
	if levelDuration(delayLevels-1) > mq.MaxDelay || 2*levelDuration(delayLevels-1) <= mq.MaxDelay {
		t.Errorf("the last level waits %v: want the longest power-of-two level not over mq.MaxDelay (%v)", levelDuration(delayLevels-1), mq.MaxDelay)
	}
}

func TestLevelTopic(t *testing.T) {
	for i, want := range map[int]string{0: "orders.mq-delay-0ms", 1: "orders.mq-delay-100ms", 4: "orders.mq-delay-800ms", 29: "orders.mq-delay-26843545600ms"} {
		if got := levelTopic("orders", i); got != want {
			t.Errorf("levelTopic(orders, %d) = %q, want %q", i, got, want)
		}
	}
	if r := levelRetention(29); r < levelDuration(29)+7*24*time.Hour {
		t.Errorf("level 29 keeps records %v, less than it holds them", r)
	}
}

func TestDelayCheck(t *testing.T) {
	c := &Conn{sc: &sarama.Config{Version: sarama.V2_4_0_0}}
	if err := c.delayCheck("t"); !errors.Is(err, mq.ErrDelayUnsupported) {
		t.Errorf("protocol 2.4: %v, want mq.ErrDelayUnsupported", err)
	}
	c.sc.Version = sarama.V2_8_0_0
	if err := c.delayCheck("t"); err != nil {
		t.Errorf("protocol 2.8: %v", err)
	}
	if err := c.delayCheck(strings.Repeat("x", 230)); !errors.Is(err, mq.ErrInvalidMessage) || !strings.Contains(err.Error(), "249") {
		t.Errorf("long topic name: %v, want mq.ErrInvalidMessage naming the limit", err)
	}
}

func deliverAtHeader(t time.Time) []*sarama.RecordHeader {
	return []*sarama.RecordHeader{{Key: []byte(mq.HeaderDeliverAt), Value: []byte(t.UTC().Format(time.RFC3339Nano))}}
}

func TestActAt(t *testing.T) {
	appended := time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
	level := 800 * time.Millisecond
	ready := appended.Add(level)
	for _, c := range []struct {
		name    string
		headers []*sarama.RecordHeader
		want    time.Time
	}{
		{"more to wait after the level: at the level's end", deliverAtHeader(ready.Add(time.Second)), ready},
		{"due within the granularity after the level: when due", deliverAtHeader(ready.Add(40 * time.Millisecond)), ready.Add(40 * time.Millisecond)},
		{"due before the level ends: at the level's end", deliverAtHeader(ready.Add(-time.Second)), ready},
		{"no due time: at the level's end", nil, ready},
		{"unreadable due time: at the level's end", []*sarama.RecordHeader{{Key: []byte(mq.HeaderDeliverAt), Value: []byte("soon")}}, ready},
	} {
		m := &sarama.ConsumerMessage{Timestamp: appended, Headers: c.headers}
		if got := actAt(m, level); !got.Equal(c.want) {
			t.Errorf("%s: actAt = %v, want %v", c.name, got, c.want)
		}
	}
}

// batch builds a record batch of n records from offset first, appended at
// at, the i-th due at due(i).
func testBatch(first int64, n int, at time.Time, due func(int) time.Time) *sarama.Records {
	b := &sarama.RecordBatch{FirstOffset: first, LastOffsetDelta: int32(n - 1), FirstTimestamp: at, MaxTimestamp: at, LogAppendTime: true}
	for i := range n {
		b.Records = append(b.Records, &sarama.Record{OffsetDelta: int64(i), Headers: deliverAtHeader(due(i))})
	}
	return &sarama.Records{RecordBatch: b}
}

func marker(offset, pid int64, abort bool) *sarama.Records {
	typ := byte(1)
	if abort {
		typ = 0
	}
	return &sarama.Records{RecordBatch: &sarama.RecordBatch{
		FirstOffset: offset, Control: true, IsTransactional: true, ProducerID: pid,
		Records: []*sarama.Record{{Key: []byte{0, 0, 0, typ}}},
	}}
}

func TestCountWaiting(t *testing.T) {
	at := time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
	wait := 400 * time.Millisecond
	dueAt := func(base time.Duration) func(int) time.Time {
		return func(i int) time.Time { return at.Add(base + time.Duration(i)*time.Millisecond) }
	}
	txn := func(r *sarama.Records, pid int64) *sarama.Records {
		r.RecordBatch.IsTransactional, r.RecordBatch.ProducerID = true, pid
		return r
	}
	blk := &sarama.FetchResponseBlock{
		HighWaterMarkOffset: 19, LastStableOffset: 19,
		AbortedTransactions: []*sarama.AbortedTransaction{{ProducerID: 8, FirstOffset: 16}},
		RecordsSet: []*sarama.Records{
			testBatch(10, 3, at, dueAt(time.Second)),                  // 10-12, fetched from 11
			txn(testBatch(13, 2, at, dueAt(500*time.Millisecond)), 7), // 13-14, committed
			marker(15, 7, false),
			txn(testBatch(16, 2, at, dueAt(time.Millisecond)), 8), // 16-17, aborted: not waiting
			marker(18, 8, true),
		},
	}
	w := countWaiting(blk, 11, wait)
	if w.waiting != 4 || !w.due.Equal(at.Add(500*time.Millisecond)) {
		t.Errorf("countWaiting = %d waiting, due %v; want 4 (offsets 11-14), due %v", w.waiting, w.due, at.Add(500*time.Millisecond))
	}

	// More than one fetch: the rest counted by offset, and due no
	// earlier than the last record read was appended plus the wait.
	blk.HighWaterMarkOffset, blk.LastStableOffset = 30, 25
	w = countWaiting(blk, 11, wait)
	if w.waiting != 4+6 || !w.due.Equal(at.Add(wait)) {
		t.Errorf("countWaiting of a partial read = %d waiting, due %v; want 10, due %v", w.waiting, w.due, at.Add(wait))
	}

	// Nothing left after the committed offset but a commit marker.
	w = countWaiting(&sarama.FetchResponseBlock{HighWaterMarkOffset: 16, LastStableOffset: 16, RecordsSet: []*sarama.Records{marker(15, 7, false)}}, 15, wait)
	if w.waiting != 0 {
		t.Errorf("a commit marker counted: %d waiting", w.waiting)
	}

	// Records that could not be read: counted, due unknown.
	w = countWaiting(&sarama.FetchResponseBlock{HighWaterMarkOffset: 40, LastStableOffset: 40}, 30, wait)
	if w.waiting != 10 || !w.due.IsZero() {
		t.Errorf("unread partition = %d waiting, due %v; want 10, unknown", w.waiting, w.due)
	}
}
