package localauth

import "sync"

// observers receive every audited login attempt (Audit) and every upstream
// login reported with Notify; alerts count failed upstream logins per
// account with it.
var observers struct {
	mu   sync.RWMutex
	next int
	fns  map[int]func(Attempt)
}

// Observe calls fn for every login attempt from now on, until the returned
// stop is called. fn runs on the proxy's goroutine: it must not block.
func Observe(fn func(Attempt)) (stop func()) {
	observers.mu.Lock()
	defer observers.mu.Unlock()
	if observers.fns == nil {
		observers.fns = map[int]func(Attempt){}
	}
	id := observers.next
	observers.next++
	observers.fns[id] = fn
	return func() {
		observers.mu.Lock()
		defer observers.mu.Unlock()
		delete(observers.fns, id)
	}
}

// Notify reports an upstream login outcome that has no audit line of its
// own (the SMTP proxy logs in upstream at MAIL, after the local AUTH was
// audited) to the observers only: no log line, no metric.
func Notify(a Attempt) {
	observers.mu.RLock()
	defer observers.mu.RUnlock()
	for _, fn := range observers.fns {
		fn(a)
	}
}
