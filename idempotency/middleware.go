package idempotency

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
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
	// ID. Return a business key (say, the "payment-id" header) to skip
	// messages that carry the same request under different IDs. A message
	// for which KeyFunc returns "" fails with an error wrapping
	// ErrEmptyKey, marked mq.Permanent: such a message cannot be
	// deduplicated, and running it unguarded could repeat its effect, so
	// it goes to the dead-letter topic (if one is configured) instead.
	KeyFunc func(m *mq.Message) string

	// Lease is how long a claim keeps other consumers from running the
	// same message. When a holder crashes, its duplicates wait this long.
	// It must be longer than the handler ever runs (bound the handler
	// with middleware.Timeout): once the lease expires, a duplicate may
	// run concurrently. Default 1 minute.
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
// nil or cfg is invalid.
//
// The store key is "<Namespace>:<topic>:<key>", so the same key on two
// topics is two keys. For every message:
//
//   - a store error from Claim is returned (the message comes back later):
//     dedup fails closed, it never runs a handler it cannot guard;
//   - AlreadyDone: the handler is skipped and nil returned, so the
//     duplicate is acknowledged;
//   - Busy: an error wrapping ErrBusy is returned;
//   - Acquired: the handler runs. If it returns an error (or panics) the
//     claim is released and the handler's error returned unchanged. If it
//     returns nil the key is completed and nil returned.
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
	if cfg.KeyFunc == nil {
		cfg.KeyFunc = func(m *mq.Message) string { return m.ID }
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	return func(next mq.Handler) mq.Handler {
		return &dedup{next: next, store: store, cfg: cfg, prefix: cfg.Namespace + ":"}
	}, nil
}

type dedup struct {
	next   mq.Handler
	store  Store
	cfg    Config
	prefix string // Namespace + ":"
}

func (d *dedup) Handle(ctx context.Context, m *mq.Message) error {
	k := d.cfg.KeyFunc(m)
	if k == "" {
		return mq.Permanent(fmt.Errorf("%w: message %s on topic %q", ErrEmptyKey, m.ID, m.Topic))
	}
	key := d.prefix + m.Topic + ":" + k
	c, err := d.store.Claim(ctx, key, d.cfg.Lease)
	if err != nil {
		return err
	}
	switch c.Status {
	case Acquired:
	case AlreadyDone:
		return nil
	case Busy:
		return fmt.Errorf("%w (key %q)", ErrBusy, key)
	default:
		return fmt.Errorf("idempotency: store returned unknown claim status %v for key %q", c.Status, key)
	}

	returned := false
	defer func() {
		if !returned { // the handler panicked: free the key for the retry
			d.release(ctx, key, c.Token)
		}
	}()
	err = d.next.Handle(ctx, m)
	returned = true

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
