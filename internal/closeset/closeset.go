// Package closeset keeps the open parts of a connection (its
// subscriptions) so that closing the connection closes every one of them
// exactly once, also while others are being added or closed concurrently.
package closeset

import (
	"errors"
	"sync"
)

// Set holds members until they are removed or the set is closed. The zero
// value is an empty, open set. It is safe for concurrent use.
type Set[T interface {
	comparable
	Close() error
}] struct {
	mu     sync.Mutex
	closed bool
	m      map[T]struct{}
}

// Add adds x and reports true, or reports false when the set is closed
// (the caller then closes x itself).
func (s *Set[T]) Add(x T) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return false
	}
	if s.m == nil {
		s.m = make(map[T]struct{})
	}
	s.m[x] = struct{}{}
	return true
}

// Remove forgets x (a member that closed by itself).
func (s *Set[T]) Remove(x T) {
	s.mu.Lock()
	delete(s.m, x)
	s.mu.Unlock()
}

// Closed reports whether CloseAll was called.
func (s *Set[T]) Closed() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.closed
}

// Len returns the number of members.
func (s *Set[T]) Len() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.m)
}

// CloseAll marks the set closed, so Add refuses new members, and closes
// every member outside the lock (a member's Close may call Remove). It
// returns their errors joined. Only the first call closes anything; later
// ones return nil and report false.
func (s *Set[T]) CloseAll() (first bool, err error) {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return false, nil
	}
	s.closed = true
	members := make([]T, 0, len(s.m))
	for x := range s.m {
		members = append(members, x)
	}
	s.mu.Unlock()
	var errs []error
	for _, x := range members {
		errs = append(errs, x.Close())
	}
	return true, errors.Join(errs...)
}
