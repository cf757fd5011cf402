// Package idempotency skips messages that were already processed, so a
// handler with side effects (charging a card, sending an e-mail) runs once
// per message even though brokers deliver at least once.
//
// # How it works
//
// Every message has a key: its ID by default, or a business key chosen by
// [Config.KeyFunc]. Before the handler runs, the middleware claims the key
// in a [Store] with a lease:
//
//   - Acquired: the handler runs. If it succeeds the claim is completed and
//     the key stays marked done for [Config.Keep] (default 24h); if it fails
//     or panics, the claim is released, so a retry can run.
//   - AlreadyDone: the handler is skipped and the message acknowledged.
//   - Busy: another consumer holds the claim and is running the handler
//     right now. The middleware returns an error wrapping [ErrBusy], so the
//     message comes back later, when the holder has either completed (the
//     duplicate is then skipped) or failed and released (it then runs).
//     middleware.Retry waits on ErrBusy without using up attempts.
//
// A holder that crashes leaves a claim that expires with its lease
// ([Config.Lease], default 1 minute), after which another consumer may run
// the message. The lease must therefore be longer than the handler ever
// runs: bound handlers with middleware.Timeout well below the lease.
//
// # Stores
//
// [NewMemoryStore] keeps keys in the process: it deduplicates the
// redeliveries one consumer sees, not messages handled by several instances
// of a service. [NewRedisStore] keeps them in Redis (a single server,
// Sentinel or a Cluster), shared by every instance.
//
// # Guarantee
//
// Dedup narrows at-least-once towards exactly-once, but cannot reach it on
// its own: a handler that succeeded and then lost its store connection
// before Complete, or that ran longer than its lease, can run again. For
// effects that must never repeat, make the effect itself idempotent too
// (for example with the message ID as an idempotency key at the payment
// provider).
package idempotency

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/mqkit/mq"
)

// Status is the outcome of a claim.
type Status int

// Claim outcomes.
const (
	// Acquired: the caller now holds the key and should do the work, then
	// call Complete or Release with the claim's token.
	Acquired Status = iota + 1
	// AlreadyDone: the work was completed earlier; skip it.
	AlreadyDone
	// Busy: another holder's lease on the key has not expired yet.
	Busy
)

// String returns the status name.
func (s Status) String() string {
	switch s {
	case Acquired:
		return "acquired"
	case AlreadyDone:
		return "already done"
	case Busy:
		return "busy"
	}
	return fmt.Sprintf("Status(%d)", int(s))
}

// Claim is the result of Store.Claim.
type Claim struct {
	// Status says whether the key was acquired, is done, or is busy.
	Status Status
	// Token identifies this holder when Status is Acquired (empty
	// otherwise). Complete and Release act only for the token that holds
	// the key, so a holder whose lease expired cannot clobber a new one.
	Token string
}

// Store records which keys are being processed and which are done. All
// methods are safe for concurrent use, also from several processes when the
// store is shared (as the Redis store is).
//
// A key goes through this life cycle:
//
//	absent --Claim--> held (token, expires after the lease)
//	held --Complete(token)--> done (expires after keep)
//	held --Release(token)--> absent
//	held --lease expires--> absent
//	done --keep expires (or evicted)--> absent
//
// Implementations must bound the time their calls take (a network store
// uses its client's timeouts): the middleware calls Complete and Release
// with a context that is not cancelled when the handler's is, so the claim
// is settled even after a handler timeout.
type Store interface {
	// Claim tries to take key for lease. It returns Acquired with a new
	// token when the key was absent (or its holder's lease had expired),
	// AlreadyDone when it was completed and is still kept, and Busy when
	// another holder's lease is still running. lease must be positive.
	Claim(ctx context.Context, key string, lease time.Duration) (Claim, error)

	// Complete marks key done for keep (which must be positive), when token
	// holds it, or when the key is absent because token's lease expired and
	// nobody claimed it since. Completing a key that token already
	// completed returns nil. If another token holds or completed the key,
	// Complete changes nothing and returns an error wrapping ErrNotOwner.
	Complete(ctx context.Context, key, token string, keep time.Duration) error

	// Release gives up token's claim on key, so the key can be claimed
	// again at once. Releasing an absent key (the lease expired) returns
	// nil. If another token holds the key, or the key is done, Release
	// changes nothing and returns an error wrapping ErrNotOwner.
	Release(ctx context.Context, key, token string) error
}

// Errors of this package, checkable with errors.Is.
var (
	// ErrBusy is returned by the middleware when another consumer holds
	// the message's key: the message should come back later.
	// It wraps mq.ErrInProgress, so dead-letter middleware never
	// dead-letters it.
	ErrBusy = fmt.Errorf("idempotency: message is being processed by another consumer: %w", mq.ErrInProgress)

	// ErrNotOwner is returned by Store.Complete and Store.Release when the
	// token no longer holds the key: its lease expired and another holder
	// claimed it.
	ErrNotOwner = errors.New("idempotency: claim is not held by this token")

	// ErrEmptyKey is returned (marked mq.Permanent) by the middleware when
	// KeyFunc gives a message an empty key.
	ErrEmptyKey = errors.New("idempotency: empty deduplication key")
)

func checkDurations(op string, d time.Duration) error {
	if d <= 0 {
		return fmt.Errorf("idempotency: %s duration must be positive, got %v", op, d)
	}
	return nil
}
