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
//     ErrBusy wraps [mq.ErrInProgress]: middleware.Retry and the consumer
//     wait on it without using up attempts, and dead-letter middleware
//     never dead-letters it.
//
// While the handler runs, the middleware extends the claim every third of
// the lease ([Store.Extend]), so a handler that runs longer than the lease
// still keeps duplicates out. A holder that crashes stops extending, and
// its claim expires with its lease ([Config.Lease], default 1 minute),
// after which another consumer may run the message. A holder that finds
// its claim taken over (the store lost it, or could not be reached for a
// whole lease) has its handler's context cancelled and does not complete
// the key.
//
// # Store outages
//
// A store that cannot be reached is an outage, not a bad message: the
// middleware returns its Claim error wrapped in [mq.ErrUnavailable], so
// middleware.Retry and the consumer retry the message without using up its
// attempts, and dead-letter middleware never dead-letters it. Dedup fails
// closed: no handler runs unguarded while the store is down.
//
// Call [Check] at start-up, before consuming, so a store that cannot be
// reached (a wrong address, a firewall, a password) stops the service with
// a clear error instead of holding every message back:
//
//	store := redisstore.New(client, redisstore.Config{})
//	if err := idempotency.Check(ctx, store); err != nil {
//		return err // "idempotency: store check failed: ...: connection refused"
//	}
//
// # Stores
//
// [NewMemoryStore] keeps keys in the process: it deduplicates the
// redeliveries one consumer sees, not messages handled by several instances
// of a service. Package [github.com/mqkit/mq/idempotency/redisstore] keeps
// them in Redis (a single server, Sentinel or a Cluster), shared by every
// instance; it lives in a package of its own so that a program that does
// not use it does not link a Redis client. Package
// [github.com/mqkit/mq/idempotency/storetest] is the conformance suite a
// Store passes.
//
// Both stores also implement dlq.AttemptCounter, the delivery count that
// outlives a process, which package dlq uses to end crash loops on brokers
// that keep no delivery count (see package dlq).
//
// # Guarantee
//
// Dedup narrows at-least-once towards exactly-once, but cannot reach it on
// its own: a handler that succeeded and then lost its store connection
// before Complete, or whose claim was lost while it ran (its context is
// then cancelled, but Go cannot stop it), can run again. For effects that
// must never repeat, make the effect itself idempotent too (for example
// with the message ID as an idempotency key at the payment provider).
package idempotency

import (
	"context"
	"crypto/rand"
	"encoding/hex"
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
//	held --Extend(token)--> held (expires after the new lease)
//	held --Release(token)--> absent
//	held --lease expires--> absent
//	done --keep expires (or evicted)--> absent
//
// Implementations must bound the time their calls take (a network store
// uses its client's timeouts): the middleware calls Complete, Release and
// Extend with a context that is not cancelled when the handler's is, so the
// claim is settled even after a handler timeout. An error that means the
// store could not be reached or did not serve should wrap
// mq.ErrUnavailable; the middleware wraps Claim errors in it anyway.
//
// Package storetest checks an implementation against this contract.
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

	// Extend renews token's claim on key so that it expires lease (which
	// must be positive) from now. If token does not hold the key (it was
	// released, completed, or its lease expired, whether or not another
	// holder claimed it since), Extend changes nothing and returns an
	// error wrapping ErrNotOwner: the caller can no longer be sure that
	// nobody else runs the work.
	Extend(ctx context.Context, key, token string, lease time.Duration) error
}

// Pinger is implemented by stores that can check their connection cheaply.
// Check uses it when a store has it.
type Pinger interface {
	// Ping returns nil when the store can be reached and serves requests,
	// and an error wrapping mq.ErrUnavailable when it cannot.
	Ping(ctx context.Context) error
}

// Check reports whether store can be reached and serves claims. Call it at
// service start-up, before consuming, to fail fast with a clear error (a
// wrong address, a refused connection, a bad password) instead of holding
// back every message while the middleware retries its claims:
//
//	if err := idempotency.Check(ctx, store); err != nil {
//		return fmt.Errorf("billing: %w", err)
//	}
//
// A store that implements Pinger is pinged; any other store is checked by
// claiming and releasing a key of its own ("mq-check:" and a random
// suffix). Bound ctx with a timeout: a store behind a black-holed address
// may otherwise wait for its client's timeouts. The error wraps
// mq.ErrUnavailable.
func Check(ctx context.Context, store Store) error {
	if store == nil {
		return errors.New("idempotency: Check needs a Store")
	}
	if p, ok := store.(Pinger); ok {
		if err := p.Ping(ctx); err != nil {
			return unavailable("idempotency: store check failed", err)
		}
		return nil
	}
	key := "mq-check:" + newToken()
	c, err := store.Claim(ctx, key, time.Minute)
	if err != nil {
		return unavailable("idempotency: store check failed", err)
	}
	if c.Status == Acquired {
		if err := store.Release(ctx, key, c.Token); err != nil {
			return unavailable("idempotency: store check failed", err)
		}
	}
	return nil
}

// unavailable prefixes err with what failed and makes sure it wraps
// mq.ErrUnavailable.
func unavailable(what string, err error) error {
	if errors.Is(err, mq.ErrUnavailable) {
		return fmt.Errorf("%s: %w", what, err)
	}
	return fmt.Errorf("%s: %w: %w", what, mq.ErrUnavailable, err)
}

// Errors of this package, checkable with errors.Is.
var (
	// ErrBusy is returned by the middleware when another consumer holds
	// the message's key: the message should come back later.
	// It wraps mq.ErrInProgress, so dead-letter middleware never
	// dead-letters it.
	ErrBusy = fmt.Errorf("idempotency: message is being processed by another consumer: %w", mq.ErrInProgress)

	// ErrNotOwner is returned by Store.Complete, Store.Release and
	// Store.Extend when the token no longer holds the key: its lease
	// expired and another holder claimed it (or, for Extend, it is no
	// longer held at all).
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

// newToken returns 128 random bits in hex: unique across processes.
func newToken() string {
	var b [16]byte
	_, _ = rand.Read(b[:]) // never fails (Go 1.24+ crashes instead)
	return hex.EncodeToString(b[:])
}
