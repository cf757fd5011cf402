package idempotency

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"time"

	"github.com/redis/go-redis/v9"
)

// RedisStoreConfig configures a RedisStore. The zero value is ready to use.
type RedisStoreConfig struct {
	// Prefix is prepended to every key the store writes, so several
	// stores (or other data) can share one Redis. Default "mq:idem:".
	Prefix string
}

// RedisStore is a Store in Redis, shared by every process that uses the
// same Redis and prefix. Each key is one Redis string whose value says
// whether it is held or done and by which token, with the lease or keep
// time as its expiry: Redis forgets finished and abandoned keys by itself.
//
// Every operation is one round trip running a small Lua script over a
// single key, so it is atomic and works with a Redis Cluster client as
// well as with a single server or Sentinel. It is safe for concurrent use.
//
// Timeouts are the client's (redis.Options ReadTimeout and WriteTimeout);
// set them so a Redis outage fails calls quickly instead of stalling
// handlers.
type RedisStore struct {
	client redis.UniversalClient
	prefix string
}

var _ Store = (*RedisStore)(nil)

// NewRedisStore returns a store that keeps its keys in Redis through
// client: a *redis.Client, *redis.ClusterClient, *redis.Ring or any other
// redis.UniversalClient. The store does not close the client.
func NewRedisStore(client redis.UniversalClient, cfg RedisStoreConfig) *RedisStore {
	if cfg.Prefix == "" {
		cfg.Prefix = "mq:idem:"
	}
	return &RedisStore{client: client, prefix: cfg.Prefix}
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

// Claim implements Store.
func (s *RedisStore) Claim(ctx context.Context, key string, lease time.Duration) (Claim, error) {
	if err := checkDurations("lease", lease); err != nil {
		return Claim{}, err
	}
	tok := newToken()
	n, err := claimScript.Run(ctx, s.client, []string{s.prefix + key}, heldPrefix+tok, millis(lease)).Int()
	if err != nil {
		return Claim{}, fmt.Errorf("idempotency: redis claim %q: %w", key, err)
	}
	switch n {
	case 1:
		return Claim{Status: Acquired, Token: tok}, nil
	case 2:
		return Claim{Status: AlreadyDone}, nil
	default:
		return Claim{Status: Busy}, nil
	}
}

// Complete implements Store.
func (s *RedisStore) Complete(ctx context.Context, key, token string, keep time.Duration) error {
	if err := checkDurations("keep", keep); err != nil {
		return err
	}
	n, err := completeScript.Run(ctx, s.client, []string{s.prefix + key}, heldPrefix+token, donePrefix+token, millis(keep)).Int()
	if err != nil {
		return fmt.Errorf("idempotency: redis complete %q: %w", key, err)
	}
	if n != 1 {
		return fmt.Errorf("%w (complete %q)", ErrNotOwner, key)
	}
	return nil
}

// Release implements Store.
func (s *RedisStore) Release(ctx context.Context, key, token string) error {
	n, err := releaseScript.Run(ctx, s.client, []string{s.prefix + key}, heldPrefix+token).Int()
	if err != nil {
		return fmt.Errorf("idempotency: redis release %q: %w", key, err)
	}
	if n != 1 {
		return fmt.Errorf("%w (release %q)", ErrNotOwner, key)
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
