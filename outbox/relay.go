package outbox

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"hash/fnv"
	"log/slog"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"

	"github.com/mqkit/mq"
	"github.com/mqkit/mq/internal/backoff"
	"github.com/mqkit/mq/outbox/internal/wire"
)

// Notifier wakes a relay when rows may have been added: package
// pgxoutbox's Listener LISTENs on the table's channel, which the table's
// trigger notifies when a transaction that inserted rows commits.
type Notifier interface {
	// Wait blocks until a notification arrives (nil), ctx is done
	// (ctx.Err()) or the notifier fails (an error; the relay logs it and
	// calls Wait again after a backoff). A notifier that had to reconnect
	// should return nil once it listens again, since notifications sent
	// meanwhile are lost.
	Wait(ctx context.Context) error
}

// Config configures a Relay. The zero value is ready to use.
type Config struct {
	// Table is the outbox table. Default DefaultTable.
	Table Table

	// Notifier wakes the relay as soon as rows commit. Without one the
	// relay finds them by polling, up to PollInterval late.
	Notifier Notifier

	// PollInterval is how often an idle relay looks for rows without a
	// notification. Default 1s with a Notifier, 100ms without.
	PollInterval time.Duration

	// BatchSize is the most rows published per transaction. Default 500.
	BatchSize int

	// Workers is how many batches the relay runs at once, each on
	// partitions of its own. Default 1.
	Workers int

	// MaxPartitions is the most partitions one batch takes (of
	// Partitions). Lower it to share the work among relays and workers
	// rather than take turns. Default Partitions.
	MaxPartitions int

	// ProduceTimeout bounds one batch's Produce calls. A batch under way
	// when Run's context is canceled finishes within it, so a stopping
	// relay leaves nothing to publish twice. Default 30s.
	ProduceTimeout time.Duration

	// Logger receives errors the relay retries. Default slog.Default().
	Logger *slog.Logger
}

// Relay publishes the committed rows of an outbox table through an
// mq.Producer and deletes them once the broker accepted them. See the
// package documentation for its guarantees. Run it in every instance of a
// service: relays share the work through advisory locks.
type Relay struct {
	db      *sql.DB
	p       mq.Producer
	cfg     Config
	table   string
	lockKey int32 // the first key of the partitions' advisory locks
	running atomic.Bool

	published, batches, failures atomic.Uint64
}

// Stats counts what a relay did since it was made.
type Stats struct {
	// Published is the number of rows Produce accepted.
	Published uint64
	// Batches is the number of batches that published rows.
	Batches uint64
	// Failures is the number of batches that failed (and were retried).
	Failures uint64
}

// NewRelay returns a relay that publishes the rows of cfg.Table in db
// through p. It does not contact the database: Run does.
func NewRelay(db *sql.DB, p mq.Producer, cfg Config) (*Relay, error) {
	if db == nil || p == nil {
		return nil, errors.New("outbox: NewRelay needs a *sql.DB and an mq.Producer")
	}
	name, err := cfg.Table.name()
	if err != nil {
		return nil, err
	}
	if cfg.PollInterval < 0 || cfg.BatchSize < 0 || cfg.Workers < 0 || cfg.MaxPartitions < 0 || cfg.ProduceTimeout < 0 {
		return nil, errors.New("outbox: Config durations and sizes must not be negative")
	}
	if cfg.PollInterval == 0 {
		cfg.PollInterval = 100 * time.Millisecond
		if cfg.Notifier != nil {
			cfg.PollInterval = time.Second
		}
	}
	if cfg.BatchSize == 0 {
		cfg.BatchSize = 500
	}
	if cfg.Workers == 0 {
		cfg.Workers = 1
	}
	if cfg.MaxPartitions == 0 || cfg.MaxPartitions > Partitions {
		cfg.MaxPartitions = Partitions
	}
	if cfg.ProduceTimeout == 0 {
		cfg.ProduceTimeout = 30 * time.Second
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	return &Relay{db: db, p: p, cfg: cfg, table: name, lockKey: partitionLockKey(name)}, nil
}

// partitionLockKey is the first key of the two-key advisory locks
// pg_try_advisory_xact_lock(key, partition) a relay takes on table's
// partitions. (Two-key advisory locks never collide with the one-key
// locks writers take.)
func partitionLockKey(table string) int32 {
	h := fnv.New32a()
	h.Write([]byte("mq-outbox-relay\x00" + table))
	return int32(h.Sum32())
}

// Stats returns the relay's counters.
func (r *Relay) Stats() Stats {
	return Stats{Published: r.published.Load(), Batches: r.batches.Load(), Failures: r.failures.Load()}
}

// Run publishes rows until ctx is canceled, then lets the batches under
// way finish (bounded by ProduceTimeout) and returns nil. Database and
// broker errors are logged and retried with a backoff; they never end
// Run. Run may not be called while it runs.
func (r *Relay) Run(ctx context.Context) error {
	if !r.running.CompareAndSwap(false, true) {
		return errors.New("outbox: Relay.Run is already running")
	}
	defer r.running.Store(false)
	wakes := make([]chan struct{}, r.cfg.Workers)
	for i := range wakes {
		wakes[i] = make(chan struct{}, 1)
	}
	var wg sync.WaitGroup
	if r.cfg.Notifier != nil {
		wg.Go(func() { r.listen(ctx, wakes) })
	}
	for i := range wakes {
		wg.Go(func() { r.work(ctx, wakes[i]) })
	}
	wg.Wait()
	return nil
}

// listen turns notifications into wake-ups of every worker.
func (r *Relay) listen(ctx context.Context, wakes []chan struct{}) {
	failures := 0
	for ctx.Err() == nil {
		err := r.cfg.Notifier.Wait(ctx)
		if ctx.Err() != nil {
			return
		}
		if err != nil {
			failures++
			r.cfg.Logger.Warn("outbox: relay notifier failed; polling until it is back", "table", r.table, "error", err)
			if !backoff.Sleep(ctx, retryWait(failures), nil) {
				return
			}
		} else {
			failures = 0
		}
		for _, w := range wakes {
			select {
			case w <- struct{}{}:
			default:
			}
		}
	}
}

// work runs batches until ctx is done: back to back while they come back
// full, else after a wake-up or PollInterval.
func (r *Relay) work(ctx context.Context, wake <-chan struct{}) {
	failures := 0
	offset := rand.IntN(Partitions) // where this worker starts trying partitions
	timer := time.NewTimer(0)
	defer timer.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		default:
		}
		n, err := r.batch(ctx, offset)
		offset = (offset + 1) % Partitions
		if err != nil {
			r.failures.Add(1)
			failures++
			d := retryWait(failures)
			r.cfg.Logger.Warn("outbox: relay batch failed; retrying", "table", r.table, "error", err, "retry_in", d)
			if !backoff.Sleep(ctx, d, nil) {
				return
			}
			continue
		}
		failures = 0
		if n >= r.cfg.BatchSize {
			continue
		}
		timer.Reset(jitter(r.cfg.PollInterval))
		select {
		case <-ctx.Done():
			return
		case <-wake:
		case <-timer.C:
		}
	}
}

// batch publishes up to BatchSize rows of the partitions it can lock, in
// one transaction, and returns how many it read.
func (r *Relay) batch(ctx context.Context, offset int) (int, error) {
	if ctx.Err() != nil {
		return 0, nil
	}
	// A batch that started finishes even when ctx is canceled meanwhile:
	// rows published but not deleted would be published again.
	bctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), r.cfg.ProduceTimeout)
	defer cancel()
	tx, err := r.db.BeginTx(bctx, nil)
	if err != nil {
		return 0, fmt.Errorf("outbox: relay %s: begin: %w", r.table, err)
	}
	defer func() { _ = tx.Rollback() }()

	// The locks are taken in a statement of their own: the rows are read
	// by the next statement, whose snapshot is taken after the locks are
	// held and so sees every delete of the relay that held them before.
	parts, err := r.lockPartitions(bctx, tx, offset)
	if err != nil || len(parts) == 0 {
		return 0, err
	}
	msgs, seqs, err := r.read(bctx, tx, parts)
	if err != nil || len(msgs) == 0 {
		return 0, err
	}
	done, perr := r.produce(bctx, msgs)
	var del []int64
	for i, ok := range done {
		if ok {
			del = append(del, seqs[i])
		}
	}
	if len(del) > 0 {
		if _, err := tx.ExecContext(bctx, "DELETE FROM "+r.table+" WHERE seq IN ("+wire.IntList(del)+")"); err != nil {
			return 0, errors.Join(perr, fmt.Errorf("outbox: relay %s: delete %d published rows (they will be published again): %w", r.table, len(del), err))
		}
		if err := tx.Commit(); err != nil {
			return 0, errors.Join(perr, fmt.Errorf("outbox: relay %s: commit the delete of %d published rows (they may be published again): %w", r.table, len(del), err))
		}
		r.published.Add(uint64(len(del)))
		r.batches.Add(1)
	}
	if perr != nil {
		return 0, perr
	}
	return len(msgs), nil
}

// lockPartitions takes the advisory locks of up to MaxPartitions
// partitions that hold rows and that no other relay holds, trying them
// from offset on.
func (r *Relay) lockPartitions(ctx context.Context, tx *sql.Tx, offset int) ([]int, error) {
	rows, err := tx.QueryContext(ctx, `SELECT p FROM (SELECT (s + $1) % `+fmt.Sprint(Partitions)+` AS p FROM generate_series(0, `+fmt.Sprint(Partitions-1)+`) AS s) AS c
WHERE CASE WHEN EXISTS (SELECT 1 FROM `+r.table+` AS o WHERE o.part = c.p) THEN pg_try_advisory_xact_lock($2, c.p) ELSE false END
LIMIT $3`, offset, r.lockKey, r.cfg.MaxPartitions)
	if err != nil {
		return nil, fmt.Errorf("outbox: relay %s: lock partitions: %w", r.table, err)
	}
	defer func() { _ = rows.Close() }()
	var parts []int
	for rows.Next() {
		var p int
		if err := rows.Scan(&p); err != nil {
			return nil, fmt.Errorf("outbox: relay %s: lock partitions: %w", r.table, err)
		}
		parts = append(parts, p)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("outbox: relay %s: lock partitions: %w", r.table, err)
	}
	return parts, nil
}

// outMsg is a row on its way to the broker.
type outMsg struct {
	topic string
	m     *mq.Message
}

// read returns the oldest BatchSize rows of parts, in seq order.
func (r *Relay) read(ctx context.Context, tx *sql.Tx, parts []int) ([]outMsg, []int64, error) {
	rows, err := tx.QueryContext(ctx, "SELECT seq, id, topic, key, headers, body FROM "+r.table+
		" WHERE part IN ("+wire.IntList(parts)+") ORDER BY seq LIMIT $1", r.cfg.BatchSize)
	if err != nil {
		return nil, nil, fmt.Errorf("outbox: relay %s: read rows: %w", r.table, err)
	}
	defer func() { _ = rows.Close() }()
	var msgs []outMsg
	var seqs []int64
	for rows.Next() {
		var seq int64
		var id, topic string
		var key, headers, body []byte
		if err := rows.Scan(&seq, &id, &topic, &key, &headers, &body); err != nil {
			return nil, nil, fmt.Errorf("outbox: relay %s: read rows: %w", r.table, err)
		}
		h, err := wire.DecodeHeaders(headers)
		if err != nil {
			return nil, nil, fmt.Errorf("outbox: relay %s: row %d: %w", r.table, seq, err)
		}
		msgs = append(msgs, outMsg{topic: topic, m: &mq.Message{ID: id, Key: string(key), Headers: h, Body: body}})
		seqs = append(seqs, seq)
	}
	if err := rows.Err(); err != nil {
		return nil, nil, fmt.Errorf("outbox: relay %s: read rows: %w", r.table, err)
	}
	return msgs, seqs, nil
}

// produce publishes msgs, one Produce call per topic (in the order of each
// topic's first row; different topics share no key, so their order does
// not matter), and reports which were accepted.
func (r *Relay) produce(ctx context.Context, msgs []outMsg) ([]bool, error) {
	byTopic := map[string][]int{}
	var topics []string
	for i, om := range msgs {
		if _, ok := byTopic[om.topic]; !ok {
			topics = append(topics, om.topic)
		}
		byTopic[om.topic] = append(byTopic[om.topic], i)
	}
	done := make([]bool, len(msgs))
	var errs []error
	for _, topic := range topics {
		idx := byTopic[topic]
		batch := make([]*mq.Message, len(idx))
		for j, i := range idx {
			batch[j] = msgs[i].m
		}
		if err := r.p.Produce(ctx, topic, batch...); err != nil {
			errs = append(errs, fmt.Errorf("outbox: relay %s: produce %d messages to %q: %w", r.table, len(batch), topic, err))
			continue
		}
		for _, i := range idx {
			done[i] = true
		}
	}
	return done, errors.Join(errs...)
}

// retryWait is the wait after the n-th failure in a row.
func retryWait(n int) time.Duration {
	return backoff.Equal(backoff.Exp(n, 100*time.Millisecond, 5*time.Second))
}

// jitter spreads d over [0.75d, 1.25d), so that relays started together
// do not poll together.
func jitter(d time.Duration) time.Duration {
	return d*3/4 + rand.N(d/2+1)
}
