// Package redisstore keeps the claims of package idempotency, and the
// delivery counts of package dlq, in Redis, shared by every instance of a
// service: a single server, Sentinel, or a Cluster.
//
//	client := redis.NewClient(&redis.Options{Addr: "redis:6379", ReadTimeout: time.Second, WriteTimeout: time.Second})
//	store := redisstore.New(client, redisstore.Config{})
//	if err := idempotency.Check(ctx, store); err != nil {
//		return err // Redis cannot be reached: fail at start-up, not per message
//	}
//	dedup, err := idempotency.New(store, idempotency.Config{Namespace: "billing"})
//	deadLetter, err := dlq.New(dlq.Config{Producer: p, Group: "billing", MaxAttempts: 5, AttemptCounter: store})
//
// It is a package of its own so that package idempotency, and programs that
// keep their claims elsewhere, do not link a Redis client.
//
// Every operation is one round trip running a small Lua script (or a
// single command) over a single key, so it is atomic and works with a
// Redis Cluster client as well as with a single server or Sentinel. Errors
// from Redis itself (a refused or dropped connection, a timeout, a cluster
// or replica that does not serve) wrap mq.ErrUnavailable.
package redisstore

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/mqkit/mq"
	"github.com/mqkit/mq/idempotency"
)

// Config configures a Store. The zero value is ready to use.
type Config struct {
	// Prefix is prepended to every claim key the store writes, so several
	// stores (or other data) can share one Redis. Default "mq:idem:".
	Prefix string

	// AttemptPrefix is prepended to every delivery count key the store
	// writes as a dlq.AttemptCounter. Default "mq:attempts:".
	AttemptPrefix string
}

// Store is an idempotency.Store and a dlq.AttemptCounter in Redis, shared
// by every process that uses the same Redis and prefixes.
//
// Each claim is one Redis string whose value says whether it is held or
// done and by which token, with the lease or keep time as its expiry: Redis
// forgets finished and abandoned keys by itself. Each delivery count is one
// Redis integer with its own expiry.
//
// Timeouts are the client's (redis.Options ReadTimeout and WriteTimeout);
// set them so a Redis outage fails calls quickly instead of stalling
// handlers. It is safe for concurrent use.
type Store struct {
	client        redis.UniversalClient
	prefix        string
	attemptPrefix string
}

var (
	_ idempotency.Store  = (*Store)(nil)
	_ idempotency.Pinger = (*Store)(nil)
)

// New returns a store that keeps its keys in Redis through client: a
// *redis.Client, *redis.ClusterClient, *redis.Ring or any other
// redis.UniversalClient. The store does not close the client.
func New(client redis.UniversalClient, cfg Config) *Store {
	if cfg.Prefix == "" {
		cfg.Prefix = "mq:idem:"
	}
	if cfg.AttemptPrefix == "" {
		cfg.AttemptPrefix = "mq:attempts:"
	}
	return &Store{client: client, prefix: cfg.Prefix, attemptPrefix: cfg.AttemptPrefix}
}

// Values: "h:" + token while held, "d:" + token once done.
const (
	heldPrefix = "h:"
	donePrefix = "d:"
)

// claimScript takes KEYS[1] for ARGV[2] ms when it is absent.
// Returns 1 acquired, 2 done, 3 held by someone.
var claimScript = redis.NewScript(`
local v = redis.call('GET', KEYS[1])
if v == false then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
if string.sub(v, 1, 2) == 'd:' then return 2 end
return 3
`)

// completeScript marks KEYS[1] done by ARGV[2] for ARGV[3] ms, when it is
// held by ARGV[1] or absent. Returns 1 done, 0 owned by another token.
var completeScript = redis.NewScript(`
local v = redis.call('GET', KEYS[1])
if v == false or v == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
  return 1
end
if v == ARGV[2] then return 1 end
return 0
`)

// releaseScript deletes KEYS[1] when it is held by ARGV[1]. Returns 1
// released or absent, 0 owned by another token or done.
var releaseScript = redis.NewScript(`
local v = redis.call('GET', KEYS[1])
if v == false then return 1 end
if v == ARGV[1] then
  redis.call('DEL', KEYS[1])
  return 1
end
return 0
`)

// extendScript sets the expiry of KEYS[1] to ARGV[2] ms when it is held by
// ARGV[1]. Returns 1 extended, 0 not held by that token.
var extendScript = redis.NewScript(`
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
`)

// countScript adds one to KEYS[1] and sets its expiry to ARGV[1] ms.
// Returns the new count.
var countScript = redis.NewScript(`
local n = redis.call('INCR', KEYS[1])
redis.call('PEXPIRE', KEYS[1], ARGV[1])
return n
`)

// undoScript takes one off KEYS[1], deleting it at zero; an absent key
// stays absent. Returns the new count.
var undoScript = redis.NewScript(`
local v = tonumber(redis.call('GET', KEYS[1]))
if v == nil then return 0 end
if v <= 1 then
  redis.call('DEL', KEYS[1])
  return 0
end
return redis.call('DECR', KEYS[1])
`)

// Claim implements idempotency.Store.
func (s *Store) Claim(ctx context.Context, key string, lease time.Duration) (idempotency.Claim, error) {
	if err := positive("lease", lease); err != nil {
		return idempotency.Claim{}, err
	}
	tok := newToken()
	n, err := claimScript.Run(ctx, s.client, []string{s.prefix + key}, heldPrefix+tok, millis(lease)).Int()
	if err != nil {
		return idempotency.Claim{}, redisError("claim", key, err)
	}
	switch n {
	case 1:
		return idempotency.Claim{Status: idempotency.Acquired, Token: tok}, nil
	case 2:
		return idempotency.Claim{Status: idempotency.AlreadyDone}, nil
	default:
		return idempotency.Claim{Status: idempotency.Busy}, nil
	}
}

// Complete implements idempotency.Store.
func (s *Store) Complete(ctx context.Context, key, token string, keep time.Duration) error {
	if err := positive("keep", keep); err != nil {
		return err
	}
	n, err := completeScript.Run(ctx, s.client, []string{s.prefix + key}, heldPrefix+token, donePrefix+token, millis(keep)).Int()
	if err != nil {
		return redisError("complete", key, err)
	}
	if n != 1 {
		return fmt.Errorf("%w (complete %q)", idempotency.ErrNotOwner, key)
	}
	return nil
}

// Release implements idempotency.Store.
func (s *Store) Release(ctx context.Context, key, token string) error {
	n, err := releaseScript.Run(ctx, s.client, []string{s.prefix + key}, heldPrefix+token).Int()
	if err != nil {
		return redisError("release", key, err)
	}
	if n != 1 {
		return fmt.Errorf("%w (release %q)", idempotency.ErrNotOwner, key)
	}
	return nil
}

// Extend implements idempotency.Store.
func (s *Store) Extend(ctx context.Context, key, token string, lease time.Duration) error {
	if err := positive("lease", lease); err != nil {
		return err
	}
	n, err := extendScript.Run(ctx, s.client, []string{s.prefix + key}, heldPrefix+token, millis(lease)).Int()
	if err != nil {
		return redisError("extend", key, err)
	}
	if n != 1 {
		return fmt.Errorf("%w (extend %q)", idempotency.ErrNotOwner, key)
	}
	return nil
}

// Ping implements idempotency.Pinger: it sends PING through the client
// (to every shard's primary for a Cluster client), so a store that
// cannot be reached fails at start-up with the client's error.
func (s *Store) Ping(ctx context.Context) error {
	var err error
	if cc, ok := s.client.(*redis.ClusterClient); ok {
		err = cc.ForEachMaster(ctx, func(ctx context.Context, c *redis.Client) error {
			return c.Ping(ctx).Err()
		})
	} else {
		err = s.client.Ping(ctx).Err()
	}
	if err != nil {
		return fmt.Errorf("redisstore: ping: %w: %w", mq.ErrUnavailable, err)
	}
	return nil
}

// CountAttempt implements dlq.AttemptCounter: it adds one to key's count
// and sets the count to expire ttl from now, in one round trip.
func (s *Store) CountAttempt(ctx context.Context, key string, ttl time.Duration) (int, error) {
	if err := positive("ttl", ttl); err != nil {
		return 0, err
	}
	n, err := countScript.Run(ctx, s.client, []string{s.attemptPrefix + key}, millis(ttl)).Int()
	if err != nil {
		return 0, redisError("count attempt", key, err)
	}
	return n, nil
}

// UndoAttempt implements dlq.AttemptCounter.
func (s *Store) UndoAttempt(ctx context.Context, key string) error {
	if err := undoScript.Run(ctx, s.client, []string{s.attemptPrefix + key}).Err(); err != nil {
		return redisError("undo attempt", key, err)
	}
	return nil
}

// ForgetAttempts implements dlq.AttemptCounter.
func (s *Store) ForgetAttempts(ctx context.Context, key string) error {
	if err := s.client.Del(ctx, s.attemptPrefix+key).Err(); err != nil {
		return redisError("forget attempts", key, err)
	}
	return nil
}

// redisError wraps an error of the Redis client. Everything but the
// caller's own cancellation is an outage of the store: mq.ErrUnavailable.
func redisError(op, key string, err error) error {
	if errors.Is(err, context.Canceled) {
		return fmt.Errorf("redisstore: %s %q: %w", op, key, err)
	}
	return fmt.Errorf("redisstore: %s %q: %w: %w", op, key, mq.ErrUnavailable, err)
}

func positive(what string, d time.Duration) error {
	if d <= 0 {
		return fmt.Errorf("redisstore: %s must be positive, got %v", what, d)
	}
	return nil
}

// millis rounds d up to whole milliseconds, at least 1, for PX.
func millis(d time.Duration) int64 {
	return max(1, int64((d+time.Millisecond-1)/time.Millisecond))
}

// newToken returns 128 random bits in hex: unique across processes.
func newToken() string {
	var b [16]byte
	_, _ = rand.Read(b[:]) // never fails (Go 1.24+ crashes instead)
	return hex.EncodeToString(b[:])
}
