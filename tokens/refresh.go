package tokens

import (
	"context"
	"fmt"
	mrand "math/rand/v2"
	"net/url"
	"strings"
	"time"

	"github.com/oauthbridge/oauthbridge/config"
)

// startRefresh starts the account's refresh unless one runs already and
// returns a channel closed when it ends. Callers hold a.mu.
func (m *Manager) startRefresh(a *account) chan struct{} {
	if a.inflight != nil {
		return a.inflight
	}
	done := make(chan struct{})
	a.inflight = done
	gen, ac := a.gen, a.cfg
	if !m.spawn(func() { m.refresh(a, done, gen, ac) }) {
		a.inflight = nil // closed: no new requests
		close(done)
	}
	return done
}

// spawn runs f in a goroutine that Close waits for, unless the manager is
// closed already.
func (m *Manager) spawn(f func()) bool {
	m.runMu.Lock()
	defer m.runMu.Unlock()
	if m.stopped {
		return false
	}
	m.wg.Add(1)
	go func() {
		defer m.wg.Done()
		f()
	}()
	return true
}

// refresh runs one token request for a. The result is published only if
// no sign-in, adoption or binding change happened meanwhile (gen).
func (m *Manager) refresh(a *account, done chan struct{}, gen uint64, ac *config.Account) {
	defer m.signal()
	a.grantMu.Lock()
	defer a.grantMu.Unlock()
	// A shared store: take the grant's lease and the stored tokens first.
	l, gen, fresh, herr := m.holdGrant(a, Outlook, gen)
	if herr != nil {
		m.refreshFailed(a, done, gen, ac, herr, m.now())
		return
	}
	defer l.end()
	a.mu.Lock()
	if fresh { // another replica refreshed it: nothing to redeem
		a.inflight = nil
		close(done)
		a.mu.Unlock()
		return
	}
	rt := a.ent.RefreshToken // the newest: a Graph redemption may have rotated it
	base := a.ent.Version    // what a shared store's write compares against
	loginAt := a.ent.LoginAt
	a.mu.Unlock()
	p := ac.Provider
	var tr *tokenResponse
	var err error
	if p.IsGoogle() {
		tr, err = m.googleGrant(m.base, ac, rt, loginAt) // google.go
	} else {
		var form url.Values
		if ac.Flow == config.FlowApp {
			form = url.Values{"grant_type": {"client_credentials"}, "scope": {p.AppScope}}
		} else {
			form = url.Values{"grant_type": {"refresh_token"}, "refresh_token": {rt},
				"scope": {strings.Join(DelegatedScopes(p), " ")}}
		}
		tr, err = m.tokenRequest(m.base, p, form)
	}
	now := m.now()
	if err != nil {
		m.refreshFailed(a, done, gen, ac, err, now)
		return
	}
	if m.leaseHook != nil {
		m.leaseHook("redeemed", a.name, l)
	}

	a.mu.Lock()
	if a.gen != gen { // a sign-in or reload replaced the tokens meanwhile
		a.inflight = nil
		close(done)
		a.mu.Unlock()
		return
	}
	ent := a.ent
	a.mu.Unlock()
	ent.Version = base
	ent.AccessToken = tr.AccessToken
	if tr.RefreshToken != "" {
		ent.RefreshToken = tr.RefreshToken // Entra rotates refresh tokens on every use
	}
	ent.Issued, ent.Expiry = now, now.Add(tr.lifetime())
	ent.LastRefresh = now
	ent.State, ent.LastError, ent.ErrorKind, ent.AADSTS, ent.Fix = StateOK, "", 0, 0, ""
	// Persist the rotated refresh token before anything can use it: the
	// next refresh cannot start until done is closed below.
	newer, serr := m.store.update(map[string]*entry{a.name: &ent})
	m.noteStoreErr(serr)

	a.mu.Lock()
	defer a.mu.Unlock()
	defer close(done)
	a.inflight = nil
	m.met.TokenRefreshes.WithLabelValues(a.name, "ok").Inc()
	if a.gen != gen {
		return // a sign-in or reload replaced the tokens meanwhile
	}
	if d := newer[a.name]; d != nil && d.Binding == ent.Binding {
		m.adoptLocked(a, d, "a newer sign-in was found in the token store")
		return
	}
	if a.lastErr != nil {
		a.log.Info("tokens: token refresh works again")
	}
	a.ent = ent
	a.unsaved = serr != nil && m.store.shared() // written first when the store is back
	a.lastErr, a.backoff, a.nextTry, a.logged = nil, 0, time.Time{}, ""
	a.jitter = randJitter(min(m.opts.RefreshMargin, a.margin()))
	a.log.Debug("tokens: access token refreshed", "expires", ent.Expiry)
	m.publishMetricsLocked(a)
}

func (m *Manager) refreshFailed(a *account, done chan struct{}, gen uint64, ac *config.Account, err error, now time.Time) {
	te := classify(ac, err)
	m.met.TokenRefreshes.WithLabelValues(a.name, te.Kind.String()).Inc()
	a.mu.Lock()
	a.inflight = nil
	if a.gen != gen {
		close(done)
		a.mu.Unlock()
		return
	}
	a.lastErr = te
	a.ent.LastError, a.ent.ErrorKind, a.ent.AADSTS, a.ent.Fix = te.Reason, te.Kind, te.AADSTS, te.Fix
	persist := false
	switch te.Kind {
	case Temporary:
		a.backoff = min(max(a.backoff*2, m.opts.RetryMin), m.opts.RetryMax)
		// Full jitter in [backoff/2, backoff) spreads retries of many accounts.
		wait := a.backoff/2 + mrand.N(a.backoff/2+1)
		a.nextTry = now.Add(wait)
		if a.backoff == m.opts.RetryMin || a.backoff == m.opts.RetryMax {
			a.log.Warn("tokens: token refresh failed; retrying", "error", te.Error(), "aadsts", te.AADSTS, "retry_in", wait.Round(time.Millisecond))
		} else {
			a.log.Debug("tokens: token refresh failed; retrying", "error", te.Error(), "retry_in", wait.Round(time.Millisecond))
		}
	case NeedsLogin:
		a.ent.State = StateNeedsLogin
		a.nextTry = time.Time{}
		persist = true
	default:
		a.ent.State = StateFailing
		a.nextTry = now.Add(m.opts.FailingRetry)
		persist = true
	}
	if te.Kind != Temporary {
		// Log a permanent failure once, not on every login or retry.
		if key := fmt.Sprint(te.Kind, te.AADSTS, te.Reason); a.logged != key {
			a.logged = key
			a.log.Error("tokens: token refresh failed permanently", "error", te.Error(), "aadsts", te.AADSTS, "state", a.ent.State)
		}
	}
	ent := a.ent
	m.publishMetricsLocked(a)
	close(done)
	a.mu.Unlock()
	if persist {
		_, serr := m.store.update(map[string]*entry{a.name: &ent})
		m.noteStoreErr(serr)
		a.mu.Lock()
		if serr == nil && a.gen == gen && a.ent.LoginID == ent.LoginID {
			a.ent.Version = ent.Version
		}
		a.mu.Unlock()
	}
}

// errorFromEntry rebuilds the last error from the stored fields.
func (a *account) errorFromEntry() *Error {
	return &Error{Account: a.name, Kind: a.ent.ErrorKind, AADSTS: a.ent.AADSTS, Reason: a.ent.LastError, Fix: a.ent.Fix}
}

// adoptLocked replaces a's tokens by a newer stored sign-in.
func (m *Manager) adoptLocked(a *account, d *entry, why string) {
	a.ent = *d
	a.gen++
	a.lastErr, a.backoff, a.nextTry, a.logged = nil, 0, time.Time{}, ""
	if d.ErrorKind != 0 && d.LastError != "" {
		a.lastErr = a.errorFromEntry()
	}
	a.jitter = randJitter(min(m.opts.RefreshMargin, a.margin()))
	a.log.Info("tokens: adopted tokens from the token store", "reason", why, "user", d.SignedInAs)
	m.publishMetricsLocked(a)
}

// noteStoreErr records (and logs once) a failure to write the store. The
// tokens stay in memory and keep serving.
func (m *Manager) noteStoreErr(err error) {
	m.storeErrMu.Lock()
	defer m.storeErrMu.Unlock()
	if err == nil {
		if m.storeErr != "" {
			m.log.Info("tokens: the token store is writable again")
		}
		m.storeErr, m.storeLogged = "", ""
		return
	}
	m.storeErr = err.Error()
	if m.storeLogged != m.storeErr {
		m.storeLogged = m.storeErr
		m.log.Error("tokens: cannot save the token store; tokens are kept in memory until it works", "error", err)
	}
}

// Start runs the background refresh loop until ctx is done or the manager
// is closed: tokens are refreshed ahead of expiry and idle delegated
// accounts at least every IdleRefresh; the store file is polled for
// sign-ins made by another process.
// Calls after the first do nothing.
func (m *Manager) Start(ctx context.Context) {
	m.started.Do(func() { m.spawn(func() { m.loop(ctx) }) })
}

func (m *Manager) loop(ctx context.Context) {
	timer := time.NewTimer(0)
	defer timer.Stop()
	lastPoll := time.Now()
	first := true
	for {
		select {
		case <-ctx.Done():
			return
		case <-m.base.Done():
			return
		case <-timer.C:
		case <-m.wake:
		}
		if time.Since(lastPoll) >= m.opts.StorePoll {
			m.pollStore()
			lastPoll = time.Now()
		}
		next, running := m.tick()
		if first {
			first = false
			m.endFirstRound(running) // firstround.go
		}
		timer.Reset(max(min(next, m.opts.StorePoll-time.Since(lastPoll)), 10*time.Millisecond))
	}
}

// tick starts every refresh that is due and returns the time until the
// next one and the refreshes (Exchange and Graph) running now.
func (m *Manager) tick() (time.Duration, []chan struct{}) {
	m.mu.RLock()
	accts := make([]*account, 0, len(m.accounts))
	for _, a := range m.accounts {
		accts = append(accts, a)
	}
	m.mu.RUnlock()
	next := time.Hour
	var running []chan struct{}
	for _, a := range accts {
		a.mu.Lock()
		now := m.now()
		due := m.refreshDue(a, now)
		if !due.IsZero() {
			if !due.After(now) {
				m.startRefresh(a)
			} else {
				next = min(next, due.Sub(now))
			}
		}
		if gdue := m.graphDue(a, now); !gdue.IsZero() { // the Graph token (graph.go)
			if !gdue.After(now) {
				m.startGraphRefresh(a)
			} else {
				next = min(next, gdue.Sub(now))
			}
		}
		if a.inflight != nil { // started here, or by a login before
			running = append(running, a.inflight)
		}
		if g := a.graphLocked(); g.inflight != nil {
			running = append(running, g.inflight)
		}
		m.publishMetricsLocked(a)
		a.mu.Unlock()
	}
	return next, running
}

// pollStore adopts sign-ins that another process wrote to the store and,
// in a shared store, other replicas' refreshes.
func (m *Manager) pollStore() {
	disk, err := m.store.poll()
	if err != nil && !m.store.shared() {
		m.log.Warn("tokens: cannot read the token store for new sign-ins", "error", err)
	} // a shared store logs when it becomes unreachable and when it is back
	if disk != nil {
		m.adoptFrom(disk)
	}
	if err == nil {
		m.flushUnsaved()
	}
}

func (m *Manager) adoptFrom(disk map[string]*entry) {
	m.mu.RLock()
	defer m.mu.RUnlock()
	for name, a := range m.accounts {
		d := disk[name]
		if d == nil {
			continue
		}
		a.mu.Lock()
		switch {
		case d.Binding != binding(a.cfg):
		case d.LoginID != "" && d.LoginAt.After(a.ent.LoginAt):
			m.adoptLocked(a, d, "a sign-in made by another oauthbridge process")
		case m.store.shared() && d.LoginID == a.ent.LoginID && d.Version > a.ent.Version:
			m.takeRowLocked(a, d) // another replica's refresh
		}
		a.mu.Unlock()
	}
}
