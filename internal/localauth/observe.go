package localauth

import (
	"sync"

	"github.com/oauthbridge/oauthbridge/audit"
)

// Notify reports a to each of obs only: no log line, no metric. Audit
// calls it; the SMTP proxy calls it for an upstream login that has no audit
// line of its own (it logs in upstream at MAIL, after the local AUTH was
// audited). A nil observer in obs is skipped.
func Notify(obs []audit.LoginObserver, a Attempt) {
	if len(obs) == 0 {
		return
	}
	pub := a.Public()
	for _, o := range obs {
		if o != nil {
			o.ObserveLogin(pub)
		}
	}
}

// Public is a as its observers see it.
func (a Attempt) Public() audit.LoginAttempt {
	return audit.LoginAttempt{
		Proto:    a.Proto,
		User:     a.User,
		Remote:   a.Remote,
		Result:   audit.Result(a.Result),
		Account:  a.Account,
		Mailbox:  a.Mailbox,
		Err:      a.Err,
		Upstream: a.Upstream,
	}
}

// Observers are the functions that see one daemon's login attempts: it is
// the audit.LoginObserver the daemon hands to each of its proxies (as it
// hands them its metrics registry), so two daemons in one process do not
// see each other's logins; the daemon's alert engine subscribes to it with
// Observe and counts failed upstream logins per account. The zero value is
// ready to use; a nil *Observers observes nothing.
type Observers struct {
	mu   sync.RWMutex
	next int
	fns  map[int]func(audit.LoginAttempt)
}

var _ audit.LoginObserver = (*Observers)(nil)

// Observe calls fn for every login attempt reported to o from now on,
// until the returned stop is called. fn runs on the proxy's goroutine: it
// must not block.
func (o *Observers) Observe(fn func(audit.LoginAttempt)) (stop func()) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.fns == nil {
		o.fns = map[int]func(audit.LoginAttempt){}
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

// ObserveLogin reports a to o's subscribers. A nil o does nothing.
func (o *Observers) ObserveLogin(a audit.LoginAttempt) {
	if o == nil {
		return
	}
	o.mu.RLock()
	defer o.mu.RUnlock()
	for _, fn := range o.fns {
		fn(a)
	}
}
