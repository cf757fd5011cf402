package kafka

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/IBM/sarama"
	"github.com/mqkit/mq"
	"github.com/mqkit/mq/internal/backoff"
)

// statsPartitionBytes is the most Scheduled reads of one level partition.
const statsPartitionBytes = 256 << 10

// Scheduled implements mq.Scheduler: it reads what waits in topic's level
// topics past the relay group's committed offsets.
//
// Waiting counts the records of every level partition between the relay
// group's committed offset (or the oldest retained one) and the last
// stable offset. It reads up to 256 KiB of each level partition, and is
// exact where everything waiting fits; past that it adds the rest by
// offset, which also counts the commit markers of the relay's
// transactions there (one per move into that partition), so it may count
// a little more than waits. A message being moved counts once, where it
// was until the move commits.
//
// NextDue is the earliest HeaderDeliverAt of the records read. Where a
// partition holds more than was read, the records not read are due no
// earlier than the last one read was appended plus the level's wait, and
// NextDue is at most that. It is zero when nothing waits, and when a
// partition holds records none of which could be read.
func (c *Conn) Scheduled(ctx context.Context, topic string) (mq.ScheduleStats, error) {
	if c.isClosed() {
		return mq.ScheduleStats{}, mq.ErrClosed
	}
	// Level topics made a moment ago may not have their leaders yet.
	for attempt := 1; ; attempt++ {
		st, err := c.scheduled(ctx, topic)
		if err == nil || !errors.Is(err, mq.ErrUnavailable) || attempt == 5 {
			return st, err
		}
		if !backoff.Sleep(ctx, time.Duration(attempt)*100*time.Millisecond, nil) {
			return mq.ScheduleStats{}, ctx.Err()
		}
	}
}

func (c *Conn) scheduled(ctx context.Context, topic string) (mq.ScheduleStats, error) {
	exist, err := c.levelTopics([]string{topic})
	if err != nil {
		return mq.ScheduleStats{}, err
	}
	levels := exist[topic]
	if len(levels) == 0 {
		return mq.ScheduleStats{}, nil
	}
	names := make([]string, len(levels))
	waits := make(map[string]time.Duration, len(levels))
	for j, i := range levels {
		names[j] = levelTopic(topic, i)
		waits[names[j]] = levelDuration(i)
	}
	if err := c.client.RefreshMetadata(names...); err != nil {
		return mq.ScheduleStats{}, classify(fmt.Errorf("kafka: metadata of delay level topics of %q: %w", topic, err))
	}
	type tp struct {
		topic string
		part  int32
	}
	parts := map[string][]int32{}
	byLeader := map[*sarama.Broker][]tp{}
	for _, n := range names {
		ps, err := c.client.Partitions(n)
		if err != nil {
			return mq.ScheduleStats{}, classify(fmt.Errorf("kafka: partitions of %q: %w", n, err))
		}
		parts[n] = ps
		for _, p := range ps {
			b, err := c.client.Leader(n, p)
			if err != nil {
				return mq.ScheduleStats{}, classify(fmt.Errorf("kafka: leader of %s/%d: %w", n, p, err))
			}
			byLeader[b] = append(byLeader[b], tp{n, p})
		}
	}
	if err := ctx.Err(); err != nil {
		return mq.ScheduleStats{}, err
	}
	admin, err := c.adminClient()
	if err != nil {
		return mq.ScheduleStats{}, classify(fmt.Errorf("kafka: admin client: %w", err))
	}
	offs, err := admin.ListConsumerGroupOffsets(delayRelayGroup(topic), parts)
	if err != nil {
		return mq.ScheduleStats{}, classify(fmt.Errorf("kafka: offsets of group %q: %w", delayRelayGroup(topic), err))
	}
	if offs.Err != sarama.ErrNoError {
		return mq.ScheduleStats{}, classify(fmt.Errorf("kafka: offsets of group %q: %w", delayRelayGroup(topic), offs.Err))
	}

	var st mq.ScheduleStats
	unknownDue := false
	for b, tps := range byLeader {
		if err := ctx.Err(); err != nil {
			return mq.ScheduleStats{}, err
		}
		// Where to start: the committed offset, or the oldest retained
		// one when there is none or it is older.
		oreq := sarama.NewOffsetRequest(c.sc.Version)
		for _, x := range tps {
			oreq.AddBlock(x.topic, x.part, sarama.OffsetOldest, 1)
		}
		oresp, err := b.GetAvailableOffsets(oreq)
		if err != nil {
			_ = b.Close()
			return mq.ScheduleStats{}, classify(fmt.Errorf("kafka: oldest offsets of delay level topics of %q: %w", topic, err))
		}
		freq := &sarama.FetchRequest{Version: 11, MaxBytes: 64 << 20, Isolation: sarama.ReadCommitted, SessionEpoch: -1}
		starts := make(map[tp]int64, len(tps))
		for _, x := range tps {
			blk := oresp.GetBlock(x.topic, x.part)
			if blk == nil || blk.Err != sarama.ErrNoError || len(blk.Offsets) != 1 {
				return mq.ScheduleStats{}, classify(fmt.Errorf("kafka: oldest offset of %s/%d: %w", x.topic, x.part, blockErr(blk)))
			}
			start := blk.Offsets[0]
			if cb := offs.GetBlock(x.topic, x.part); cb != nil && cb.Offset > start {
				start = cb.Offset
			}
			starts[x] = start
			freq.AddBlock(x.topic, x.part, start, statsPartitionBytes, -1)
		}
		fresp, err := b.Fetch(freq)
		if err != nil {
			_ = b.Close()
			return mq.ScheduleStats{}, classify(fmt.Errorf("kafka: read delay level topics of %q: %w", topic, err))
		}
		for _, x := range tps {
			blk := fresp.GetBlock(x.topic, x.part)
			if blk == nil || blk.Err != sarama.ErrNoError {
				return mq.ScheduleStats{}, classify(fmt.Errorf("kafka: read %s/%d: %w", x.topic, x.part, fetchErr(blk)))
			}
			w := countWaiting(blk, starts[x], waits[x.topic])
			st.Waiting += w.waiting
			if w.waiting == 0 {
				continue
			}
			if w.due.IsZero() {
				unknownDue = true
			} else if st.NextDue.IsZero() || w.due.Before(st.NextDue) {
				st.NextDue = w.due
			}
		}
	}
	if unknownDue || st.Waiting == 0 {
		st.NextDue = time.Time{}
	}
	return st, nil
}

func blockErr(b *sarama.OffsetResponseBlock) error {
	if b == nil {
		return sarama.ErrIncompleteResponse
	}
	if b.Err != sarama.ErrNoError {
		return b.Err
	}
	return sarama.ErrOffsetOutOfRange
}

func fetchErr(b *sarama.FetchResponseBlock) error {
	if b == nil {
		return sarama.ErrIncompleteResponse
	}
	return b.Err
}

// partWaiting is what waits in one level partition.
type partWaiting struct {
	waiting int64
	due     time.Time // the earliest due time, or a lower bound of it; zero: unknown
}

// countWaiting counts the records of a read_committed fetch of one level
// partition from offset start, as a consumer sees them: no control
// records, none of aborted transactions, none before start. What the
// fetch did not reach, up to the last stable offset, is counted by offset.
func countWaiting(blk *sarama.FetchResponseBlock, start int64, wait time.Duration) partWaiting {
	var w partWaiting
	end := blk.LastStableOffset
	if end < 0 {
		end = blk.HighWaterMarkOffset
	}
	aborted := slices.Clone(blk.AbortedTransactions)
	slices.SortFunc(aborted, func(a, b *sarama.AbortedTransaction) int { return int(a.FirstOffset - b.FirstOffset) })
	abortedPIDs := map[int64]bool{}
	next := start // the first offset not looked at
	var lastAppend time.Time
	for _, rs := range blk.RecordsSet {
		b := rs.RecordBatch
		if b == nil { // a legacy message set: not written by this package
			break
		}
		for len(aborted) > 0 && aborted[0].FirstOffset <= b.LastOffset() {
			abortedPIDs[aborted[0].ProducerID] = true
			aborted = aborted[1:]
		}
		switch {
		case b.Control:
			if len(b.Records) > 0 && isAbortMarker(b.Records[0]) {
				delete(abortedPIDs, b.ProducerID)
			}
		case b.IsTransactional && abortedPIDs[b.ProducerID]:
		default:
			for _, rec := range b.Records {
				off := b.FirstOffset + rec.OffsetDelta
				if off < start {
					continue
				}
				ts := b.FirstTimestamp.Add(rec.TimestampDelta)
				if b.LogAppendTime {
					ts = b.MaxTimestamp
				}
				due := ts.Add(wait)
				if d, ok := deliverAtOf(&sarama.ConsumerMessage{Headers: rec.Headers}); ok {
					due = d
				}
				w.waiting++
				if w.due.IsZero() || due.Before(w.due) {
					w.due = due
				}
				lastAppend = ts
				next = off + 1
			}
		}
		if b.PartialTrailingRecord {
			break
		}
		next = max(next, b.LastOffset()+1)
	}
	if rest := end - next; rest > 0 {
		w.waiting += rest
		if lastAppend.IsZero() {
			w.due = time.Time{} // nothing read to bound it by
		} else if bound := lastAppend.Add(wait); bound.Before(w.due) {
			w.due = bound
		}
	}
	return w
}

// isAbortMarker reports whether a control record is an abort marker: its
// key is a version (int16) and a type (int16), 0 for abort.
func isAbortMarker(r *sarama.Record) bool {
	return len(r.Key) >= 4 && binary.BigEndian.Uint16(r.Key[2:4]) == 0
}
