package idempotency

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/mqkit/mq"
)

// Config configures the deduplication middleware made by New.
type Config struct {
	// Namespace separates the keys of consumers that must each process
	// every message: use the consumer group's name (or the service's).
	// Two consumer groups sharing a store with the same namespace would
	// skip each other's messages, so Namespace is required.
	Namespace string

	// KeyFunc returns a message's deduplication key. Default: the message
	// ID; a message marked with mq.HeaderIDNotUnique (a foreign message
	// whose backend had to derive its ID) then runs without deduplication,
	// since another message may share its ID. Return a business key (say, the "payment-id" header) to skip
	// messages that carry the same request under different IDs. A message
	// for which KeyFunc returns "" fails with an error wrapping
	// ErrEmptyKey, marked mq.Permanent: such a message cannot be
	// deduplicated, and running it unguarded could repeat its effect, so
	// it goes to the dead-letter topic (if one is configured) instead.
	KeyFunc func(m *mq.Message) string

	// Lease is how long a claim keeps other consumers from running the
	// same message without being renewed. The middleware renews it every
	// Lease/3 while the handler runs (Store.Extend), so a handler may run
	// longer than Lease; when a holder crashes, its duplicates wait up to
	// this long. A store outage longer than about two thirds of Lease
	// lets the claim expire under a running handler (it is then cancelled
	// once the store answers again). Default 1 minute.
	Lease time.Duration

	// Keep is how long a completed key is remembered: duplicates arriving
	// later than that run again. Default 24 hours.
	Keep time.Duration

	// Logger receives store errors the middleware cannot return (see New).
	// Default slog.Default().
	Logger *slog.Logger
}

// New returns middleware that runs the handler at most once per key (see
// the package documentation for the life cycle), or an error when store is
// nil or cfg is invalid. New does not contact the store: call Check at
// start-up for that.
//
// The store key is "<Namespace>:<topic>:<key>", so the same key on two
// topics is two keys. For every message:
//
//   - a store error from Claim is returned wrapped in mq.ErrUnavailable
//     (the message comes back later without using up an attempt, and is
//     never dead-lettered for it): dedup fails closed, it never runs a
//     handler it cannot guard;
//   - AlreadyDone: the handler is skipped and nil returned, so the
//     duplicate is acknowledged;
//   - Busy: an error wrapping ErrBusy (and so mq.ErrInProgress) is
//     returned;
//   - Acquired: the handler runs, and the claim is extended every Lease/3
//     until it returns. If it returns an error (or panics) the claim is
//     released and the handler's error returned unchanged. If it returns
//     nil the key is completed and nil returned.
//
// If an extension finds the claim no longer held by this handler
// (ErrNotOwner: it expired during a store outage, or the store lost it),
// the handler's context is cancelled with a cause wrapping ErrNotOwner
// and mq.ErrInProgress, the key is neither completed nor released, and
// that cause is returned even if the handler returned nil: another
// consumer may be running the message, so this one must not record it
// done, and it comes back later (without using up an attempt) to be
// skipped or run. An extension that fails for another reason (the store is down) is
// logged and tried again at the next interval.
//
// When Complete or Release fails (a store outage, or ErrNotOwner because
// the lease expired), the middleware logs it and still returns the
// handler's result. For Complete this is a deliberate trade-off: the
// handler has already run, and returning an error would make the message
// come back and run again for certain; returning nil acknowledges it, and
// only a duplicate that arrives after the lease expires could run again.
// A failed Release leaves the claim until its lease expires, which delays
// the retry but repeats nothing.
//
// Claim runs with the handler's context; Complete and Release run with a
// context that is not cancelled with it, so a claim is settled even when a
// handler times out.
func New(store Store, cfg Config) (mq.Middleware, error) {
	if store == nil {
		return nil, errors.New("idempotency: New needs a Store")
	}
	if cfg.Namespace == "" {
		return nil, errors.New("idempotency: Config.Namespace is required (use the consumer group's name)")
	}
	if cfg.Lease < 0 || cfg.Keep < 0 {
		return nil, fmt.Errorf("idempotency: Lease (%v) and Keep (%v) must not be negative", cfg.Lease, cfg.Keep)
	}
	if cfg.Lease == 0 {
		cfg.Lease = time.Minute
	}
	if cfg.Keep == 0 {
		cfg.Keep = 24 * time.Hour
	}
	byID := cfg.KeyFunc == nil
	if byID {
		cfg.KeyFunc = func(m *mq.Message) string { return m.ID }
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	warnOnce := new(sync.Once) // shared by every handler the middleware wraps
	return func(next mq.Handler) mq.Handler {
		return &dedup{next: next, store: store, cfg: cfg, prefix: cfg.Namespace + ":", byID: byID, warnOnce: warnOnce}
	}, nil
}

type dedup struct {
	next   mq.Handler
	store  Store
	cfg    Config
	prefix string // Namespace + ":"
	byID   bool   // the key is the message ID (no KeyFunc given)

	warnOnce *sync.Once // about messages whose ID is not unique
}

func (d *dedup) Handle(ctx context.Context, m *mq.Message) error {
	if d.byID && m.Header(mq.HeaderIDNotUnique) == "true" {
		// Distinct messages may share this ID (a foreign producer set
		// none): skipping one as a "duplicate" would lose it. Run it
		// unguarded, at least once.
		d.warnOnce.Do(func() {
			d.cfg.Logger.Warn("idempotency: messages without a producer-set ID are not deduplicated (their derived IDs may repeat); set a message ID to have them deduplicated",
				"topic", m.Topic, "id", m.ID)
		})
		return d.next.Handle(ctx, m)
	}
	k := d.cfg.KeyFunc(m)
	if k == "" {
		return mq.Permanent(fmt.Errorf("%w: message %s on topic %q", ErrEmptyKey, m.ID, m.Topic))
	}
	key := d.prefix + m.Topic + ":" + k
	c, err := d.store.Claim(ctx, key, d.cfg.Lease)
	if err != nil {
		if mq.IsPermanent(err) {
			return err
		}
		return unavailable(fmt.Sprintf("idempotency: claim %q", key), err)
	}
	switch c.Status {
	case Acquired:
	case AlreadyDone:
		mq.SetOutcome(ctx, mq.OutcomeDuplicate)
		return nil
	case Busy:
		return fmt.Errorf("%w (key %q)", ErrBusy, key)
	default:
		return fmt.Errorf("idempotency: store returned unknown claim status %v for key %q", c.Status, key)
	}

	hctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	ext := d.extend(hctx, cancel, m, key, c.Token)
	returned := false
	defer func() {
		if !returned { // the handler panicked: free the key for the retry
			if !ext.stop() {
				d.release(ctx, key, c.Token)
			}
		}
	}()
	err = d.next.Handle(hctx, m)
	returned = true
	if ext.stop() {
		// The claim was lost while the handler ran: someone else may run
		// the message, so neither complete nor release it.
		cause := context.Cause(hctx)
		if err != nil {
			return fmt.Errorf("%w (handler error: %w)", cause, err)
		}
		return cause
	}

	if err != nil {
		d.release(ctx, key, c.Token)
		return err
	}
	if cerr := d.store.Complete(context.WithoutCancel(ctx), key, c.Token, d.cfg.Keep); cerr != nil {
		d.cfg.Logger.Error("idempotency: could not mark message done; a duplicate arriving after the lease may run again",
			"id", m.ID, "topic", m.Topic, "key", key, "error", cerr)
	}
	return nil
}

func (d *dedup) release(ctx context.Context, key, token string) {
	if err := d.store.Release(context.WithoutCancel(ctx), key, token); err != nil {
		d.cfg.Logger.Warn("idempotency: could not release claim; the message waits for the lease to expire",
			"key", key, "error", err)
	}
}

// extender renews one claim every third of the lease while its handler
// runs, with one timer: each renewal arms the next. Its callbacks run in
// the timer's goroutines; stop waits for a running one, so nothing of it
// outlives the handler.
type extender struct {
	d          *dedup
	m          *mq.Message
	key, token string
	every      time.Duration
	hctx       context.Context         // the handler's
	lose       context.CancelCauseFunc // cancels hctx

	mu        sync.Mutex
	timer     *time.Timer
	stopped   bool
	lost      bool
	cancelRun context.CancelFunc // cancels the Extend call in progress
	running   sync.WaitGroup     // a renewal in progress
}

// extend starts renewing the claim on key held by token; lose cancels the
// handler's context hctx when the claim is lost.
func (d *dedup) extend(hctx context.Context, lose context.CancelCauseFunc, m *mq.Message, key, token string) *extender {
	e := &extender{d: d, m: m, key: key, token: token, every: max(d.cfg.Lease/3, time.Millisecond), hctx: hctx, lose: lose}
	e.mu.Lock()
	e.timer = time.AfterFunc(e.every, e.renew)
	e.mu.Unlock()
	return e
}

func (e *extender) renew() {
	e.mu.Lock()
	if e.stopped {
		e.mu.Unlock()
		return
	}
	e.running.Add(1)
	// Not the handler's context: a handler timeout must not fail the
	// renewal. stop cancels it, so it never delays the handler's return.
	ctx, cancel := context.WithCancel(context.WithoutCancel(e.hctx))
	e.cancelRun = cancel
	e.mu.Unlock()
	defer e.running.Done()

	err := e.d.store.Extend(ctx, e.key, e.token, e.d.cfg.Lease)
	cancel()
	e.mu.Lock()
	defer e.mu.Unlock()
	e.cancelRun = nil
	switch {
	case e.stopped:
		// The handler returned meanwhile; the result no longer matters.
	case errors.Is(err, ErrNotOwner):
		e.lost = true
		e.d.cfg.Logger.Error("idempotency: claim lost while the handler ran; cancelling the handler, another consumer may run the message",
			"id", e.m.ID, "topic", e.m.Topic, "key", e.key, "error", err)
		e.lose(fmt.Errorf("idempotency: claim lost while the handler ran; another consumer may be running the message: %w (%w)", mq.ErrInProgress, err))
	default:
		if err != nil {
			e.d.cfg.Logger.Warn("idempotency: could not extend claim; trying again",
				"id", e.m.ID, "topic", e.m.Topic, "key", e.key, "error", err, "retry_in", e.every)
		}
		e.timer.Reset(e.every)
	}
}

// stop ends the renewals, waits for one in progress, and reports whether
// the claim was lost.
func (e *extender) stop() (lost bool) {
	e.mu.Lock()
	e.stopped = true
	e.timer.Stop()
	if e.cancelRun != nil {
		e.cancelRun()
	}
	e.mu.Unlock()
	e.running.Wait()
	return e.lost
}
