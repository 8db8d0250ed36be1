package localauth

import "sync"

// Observers are the functions that see one daemon's login attempts: every
// attempt Audit writes with it and every upstream login reported with
// Notify (the alert engine counts failed upstream logins per account with
// them). The daemon makes one and hands it to each of its proxies, as it
// hands them its metrics registry, so two daemons in one process do not
// see each other's logins. The zero value is ready to use; a nil
// *Observers observes nothing.
type Observers struct {
	mu   sync.RWMutex
	next int
	fns  map[int]func(Attempt)
}

// Observe calls fn for every login attempt reported to o from now on,
// until the returned stop is called. fn runs on the proxy's goroutine: it
// must not block.
func (o *Observers) Observe(fn func(Attempt)) (stop func()) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.fns == nil {
		o.fns = map[int]func(Attempt){}
	}
	id := o.next
	o.next++
	o.fns[id] = fn
	return func() {
		o.mu.Lock()
		defer o.mu.Unlock()
		delete(o.fns, id)
	}
}

// Notify reports a to o's observers only: no log line, no metric. Audit
// calls it; the SMTP proxy calls it for an upstream login that has no audit
// line of its own (it logs in upstream at MAIL, after the local AUTH was
// audited). A nil o does nothing.
func (o *Observers) Notify(a Attempt) {
	if o == nil {
		return
	}
	o.mu.RLock()
	defer o.mu.RUnlock()
	for _, fn := range o.fns {
		fn(a)
	}
}
