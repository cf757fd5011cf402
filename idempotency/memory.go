package idempotency

import (
	"context"
	"fmt"
	"strconv"
	"sync"
	"time"
)

// MemoryStoreConfig configures a MemoryStore. The zero value is ready to
// use.
type MemoryStoreConfig struct {
	// MaxKeys bounds the completed keys kept. When a Complete would exceed
	// it, the keys completed longest ago are forgotten first (a duplicate of
	// one of them arriving later would run again). Keys currently claimed
	// are never evicted; there are at most as many of them as handlers
	// running. Default 100000.
	MaxKeys int
}

// MemoryStore is a Store in the process's memory. It is bounded (see
// MaxKeys) and forgets keys when their lease or keep time ends, checked
// lazily on every call: it starts no goroutine and needs no Close.
//
// It deduplicates only what this process sees; services with several
// instances need a shared store such as package redisstore's. It is safe
// for concurrent use.
//
// It is also a dlq.AttemptCounter (CountAttempt, UndoAttempt,
// ForgetAttempts), with its counts apart from its claims. Its counts die
// with the process, so it cannot end a crash loop: it serves tests and
// single-process programs; use a shared store such as redisstore's where
// the broker keeps no delivery count.
type MemoryStore struct {
	maxKeys int
	epoch   time.Time // monotonic base of memEntry.expires

	mu    sync.Mutex
	keys  map[string]memEntry
	done  []doneRef // completed keys, oldest first; may hold stale refs
	head  int       // done[:head] were popped
	nDone int       // completed keys in keys
	seq   uint64    // last token issued

	counts    map[string]attemptCount // dlq.AttemptCounter counts
	nextSweep int                     // sweep expired counts when len(counts) reaches it
}

// attemptCount is one key's delivery count.
type attemptCount struct {
	n       int
	expires time.Duration // since epoch
}

// memEntry is one key's state. It holds no pointers, so a store with many
// keys costs the garbage collector little.
type memEntry struct {
	token   uint64        // the holder's token (its claim's sequence number)
	expires time.Duration // since epoch
	done    bool
}

// doneRef names a completed entry. It is stale when keys[key] is no longer
// that entry (the key expired, was evicted or claimed again). It repeats
// the entry's expiry, so the sweep finds nothing to do without a lookup.
type doneRef struct {
	key     string
	token   uint64
	expires time.Duration
}

var _ Store = (*MemoryStore)(nil)

// NewMemoryStore returns an empty in-memory store.
func NewMemoryStore(cfg MemoryStoreConfig) *MemoryStore {
	if cfg.MaxKeys <= 0 {
		cfg.MaxKeys = 100000
	}
	return &MemoryStore{maxKeys: cfg.MaxKeys, epoch: time.Now(), keys: make(map[string]memEntry), counts: make(map[string]attemptCount), nextSweep: minCountSweep}
}

// Claim implements Store.
func (s *MemoryStore) Claim(ctx context.Context, key string, lease time.Duration) (Claim, error) {
	if err := checkDurations("lease", lease); err != nil {
		return Claim{}, err
	}
	if err := ctx.Err(); err != nil {
		return Claim{}, fmt.Errorf("idempotency: claim: %w", err)
	}
	now := time.Since(s.epoch)
	s.mu.Lock()
	defer s.mu.Unlock()
	s.sweepLocked(now)
	if e, ok := s.keys[key]; ok && now < e.expires {
		if e.done {
			return Claim{Status: AlreadyDone}, nil
		}
		return Claim{Status: Busy}, nil
	} else if ok && e.done {
		s.nDone-- // expired; its doneRef is now stale
	}
	s.seq++
	s.keys[key] = memEntry{token: s.seq, expires: now + lease}
	return Claim{Status: Acquired, Token: strconv.FormatUint(s.seq, 36)}, nil
}

// Complete implements Store.
func (s *MemoryStore) Complete(ctx context.Context, key, token string, keep time.Duration) error {
	if err := checkDurations("keep", keep); err != nil {
		return err
	}
	tok, ok := parseToken(token)
	if !ok {
		return fmt.Errorf("%w (complete %q: malformed token)", ErrNotOwner, key)
	}
	now := time.Since(s.epoch)
	s.mu.Lock()
	defer s.mu.Unlock()
	e, ok := s.keys[key]
	if ok && now >= e.expires {
		s.dropLocked(key, e)
		ok = false
	}
	switch {
	case !ok:
		// Our lease expired and nobody claimed the key since: the work
		// is done all the same, so record it.
	case e.token != tok:
		return fmt.Errorf("%w (complete %q)", ErrNotOwner, key)
	case e.done:
		return nil
	}
	s.keys[key] = memEntry{token: tok, expires: now + keep, done: true}
	s.done = append(s.done, doneRef{key: key, token: tok, expires: now + keep})
	s.nDone++
	s.sweepLocked(now)
	return nil
}

// Release implements Store.
func (s *MemoryStore) Release(ctx context.Context, key, token string) error {
	tok, _ := parseToken(token)
	now := time.Since(s.epoch)
	s.mu.Lock()
	defer s.mu.Unlock()
	e, ok := s.keys[key]
	if !ok {
		return nil
	}
	if now >= e.expires {
		s.dropLocked(key, e)
		return nil
	}
	if e.token != tok || e.done {
		return fmt.Errorf("%w (release %q)", ErrNotOwner, key)
	}
	s.dropLocked(key, e)
	return nil
}

// Extend implements Store.
func (s *MemoryStore) Extend(ctx context.Context, key, token string, lease time.Duration) error {
	if err := checkDurations("lease", lease); err != nil {
		return err
	}
	tok, _ := parseToken(token)
	now := time.Since(s.epoch)
	s.mu.Lock()
	defer s.mu.Unlock()
	e, ok := s.keys[key]
	if !ok || e.done || e.token != tok || now >= e.expires {
		return fmt.Errorf("%w (extend %q)", ErrNotOwner, key)
	}
	e.expires = now + lease
	s.keys[key] = e
	return nil
}

// minCountSweep is the fewest counts at which CountAttempt sweeps out
// expired ones.
const minCountSweep = 1024

// CountAttempt implements dlq.AttemptCounter: it adds one to key's count,
// sets it to expire ttl from now, and returns it.
func (s *MemoryStore) CountAttempt(ctx context.Context, key string, ttl time.Duration) (int, error) {
	if err := checkDurations("ttl", ttl); err != nil {
		return 0, err
	}
	if err := ctx.Err(); err != nil {
		return 0, fmt.Errorf("idempotency: count attempt: %w", err)
	}
	now := time.Since(s.epoch)
	s.mu.Lock()
	defer s.mu.Unlock()
	c := s.counts[key]
	if now >= c.expires {
		c.n = 0
	}
	c.n++
	c.expires = now + ttl
	s.counts[key] = c
	if len(s.counts) >= s.nextSweep {
		for k, c := range s.counts {
			if now >= c.expires {
				delete(s.counts, k)
			}
		}
		s.nextSweep = max(minCountSweep, 2*len(s.counts))
	}
	return c.n, nil
}

// UndoAttempt implements dlq.AttemptCounter: it takes one off key's count.
func (s *MemoryStore) UndoAttempt(ctx context.Context, key string) error {
	now := time.Since(s.epoch)
	s.mu.Lock()
	defer s.mu.Unlock()
	c, ok := s.counts[key]
	switch {
	case !ok:
	case c.n <= 1 || now >= c.expires:
		delete(s.counts, key)
	default:
		c.n--
		s.counts[key] = c
	}
	return nil
}

// ForgetAttempts implements dlq.AttemptCounter: it deletes key's count.
func (s *MemoryStore) ForgetAttempts(ctx context.Context, key string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.counts, key)
	return nil
}

// Len returns how many keys the store holds, claimed or completed,
// including expired ones not swept yet.
func (s *MemoryStore) Len() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.keys)
}

// parseToken reads a token made by Claim; tokens are never 0.
func parseToken(token string) (uint64, bool) {
	n, err := strconv.ParseUint(token, 36, 64)
	return n, err == nil && n != 0
}

// dropLocked forgets key, whose entry is e.
func (s *MemoryStore) dropLocked(key string, e memEntry) {
	delete(s.keys, key)
	if e.done {
		s.nDone--
	}
}

// sweepLocked forgets completed keys from the oldest while they are stale,
// expired, or more than maxKeys.
func (s *MemoryStore) sweepLocked(now time.Duration) {
	for s.head < len(s.done) {
		r := s.done[s.head]
		if s.nDone <= s.maxKeys && now < r.expires {
			break // (if r is stale, the refs behind it wait their turn)
		}
		if e, ok := s.keys[r.key]; ok && e.done && e.token == r.token {
			s.dropLocked(r.key, e)
		}
		s.done[s.head] = doneRef{}
		s.head++
	}
	if s.head >= 64 && s.head*2 >= len(s.done) {
		n := copy(s.done, s.done[s.head:])
		clear(s.done[n:])
		s.done = s.done[:n]
		s.head = 0
	}
}
