// Package limiter caps concurrent upstream connections per account. IMAP and
// POP3 share one counter per account (Exchange counts both against the
// mailbox); SMTP uses its own, smaller one.
package limiter

import (
	"context"
	"errors"
	"sync"
	"time"
)

// ErrLimit is returned when no slot became free within the wait.
var ErrLimit = errors.New("limiter: per-account connection limit reached")

// Limiter hands out slots per key. The zero value is ready to use.
type Limiter struct {
	mu   sync.Mutex
	keys map[string]*state
}

type state struct {
	inUse   int
	changed chan struct{} // closed and replaced whenever a slot is released
}

// Acquire waits up to wait for one of limit slots under key. The limit is
// read at each call, so a reload that changes it takes effect for the next
// login. On success it returns a release function that must be called exactly
// once.
func (l *Limiter) Acquire(ctx context.Context, key string, limit int, wait time.Duration) (func(), error) {
	var timeout <-chan time.Time
	if wait > 0 {
		t := time.NewTimer(wait)
		defer t.Stop()
		timeout = t.C
	}
	for {
		l.mu.Lock()
		if l.keys == nil {
			l.keys = map[string]*state{}
		}
		s := l.keys[key]
		if s == nil {
			s = &state{changed: make(chan struct{})}
			l.keys[key] = s
		}
		if s.inUse < limit {
			s.inUse++
			l.mu.Unlock()
			var once sync.Once
			return func() { once.Do(func() { l.release(key) }) }, nil
		}
		ch := s.changed
		l.mu.Unlock()
		if wait <= 0 {
			return nil, ErrLimit
		}
		select {
		case <-ch:
		case <-timeout:
			return nil, ErrLimit
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
}

func (l *Limiter) release(key string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	s := l.keys[key]
	s.inUse--
	close(s.changed)
	s.changed = make(chan struct{})
	if s.inUse == 0 {
		delete(l.keys, key)
	}
}

// InUse reports the slots held under key.
func (l *Limiter) InUse(key string) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	if s := l.keys[key]; s != nil {
		return s.inUse
	}
	return 0
}
