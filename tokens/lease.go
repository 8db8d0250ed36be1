package tokens

import (
	"errors"
	"fmt"
	"path/filepath"
	"time"

	"github.com/oauthbridge/oauthbridge/config"
	"github.com/oauthbridge/oauthbridge/internal/metrics"
)

// openTokenStore opens the store that cfg's store block names.
func openTokenStore(cfg *config.Config, opts Options, met *metrics.Metrics) (tokenStore, map[string]*entry, error) {
	if !cfg.Store.Shared() {
		return openStore(cfg.StateDir, opts.KeyFile)
	}
	kf := opts.KeyFile
	if kf == "" {
		kf = filepath.Join(cfg.StateDir, KeyFileName)
	}
	return openPostgres(cfg.Store, kf, opts.Logger, met)
}

// storeDown is the error of a refresh that did not run because the shared
// store cannot be reached: a refresh token is never redeemed unless the
// rotated one can be stored.
func storeDown(a *account, err error) *Error {
	if !errors.Is(err, errStoreDown) {
		return &Error{Account: a.name, Kind: Temporary, Reason: "cannot use the shared token store: " + err.Error(),
			Fix: "see the error; cached access tokens keep serving until they expire", Err: err}
	}
	return &Error{Account: a.name, Kind: Temporary,
		Reason: "the shared token store (store dsn) is unreachable, so the refresh token is not redeemed: " + err.Error(),
		Fix:    "check that the database runs and is reachable from this host; cached access tokens keep serving until they expire", Err: err}
}

// holdGrant is called by a redemption (refresh, refreshGraph) for resource
// r with a.grantMu held, for the account generation gen. With the file
// store it returns at once. With a shared store it takes the grant's lease
// (waiting while another replica holds it) and brings a.ent up to date:
// tokens this replica could not store yet are written first, and a newer
// stored row is adopted. fresh reports that the adopted row already holds
// a token for r that needs no redemption. The caller ends the lease (end)
// once the redemption's result is stored. The returned generation replaces
// gen (adopting another replica's sign-in bumps it).
func (m *Manager) holdGrant(a *account, r Resource, gen uint64) (l *lease, newGen uint64, fresh bool, err error) {
	newGen = gen
	for {
		l, err = m.store.claim(m.base, a.name)
		if err != nil {
			return nil, gen, false, storeDown(a, err)
		}
		if l.held && l.row == nil { // the file store
			return l, gen, false, nil
		}
		if l.held {
			if m.leaseHook != nil {
				m.leaseHook("claimed", a.name, l)
			}
			// A replica stopped (SIGSTOP, a paused VM) right after taking
			// the lease may resume after another took it over: look again
			// before redeeming anything.
			if !m.store.confirm(a.name, l) {
				l.end()
				continue
			}
			break
		}
		// Another replica redeems this grant now: wait for its result
		// instead of redeeming the same refresh token.
		if m.leaseHook != nil {
			m.leaseHook("waiting", a.name, l)
		}
		if err := sleepCtx(m.base, min(m.cfgStore().Poll, maxLeaseWait)); err != nil {
			return nil, gen, false, err
		}
		row, err := m.store.get(m.base, a.name)
		if err != nil {
			return nil, gen, false, storeDown(a, err)
		}
		if g, took := m.takeRow(a, gen, row); took {
			newGen = g
			if m.freshFor(a, r) {
				return &lease{}, newGen, true, nil
			}
		}
		gen = newGen
	}
	row := *l.row
	a.mu.Lock()
	unsaved, cur := a.unsaved, a.ent
	a.mu.Unlock()
	if unsaved && (row.ent == nil || row.version == cur.Version) {
		// This replica's newest tokens (a refresh or sign-in whose write
		// failed) never reached the store; the row still holds what they
		// replaced. Store them before anything redeems again.
		newer, werr := m.store.update(map[string]*entry{a.name: &cur})
		m.noteStoreErr(werr)
		if werr != nil {
			l.end()
			return nil, gen, false, storeDown(a, werr)
		}
		a.mu.Lock()
		if a.gen == gen {
			a.unsaved = false
			if d := newer[a.name]; d != nil {
				row = storeRow{version: d.Version, ent: d}
			} else {
				row = storeRow{} // ours are the stored ones now
				a.ent.Version = cur.Version
				a.log.Info("tokens: tokens that could not be stored earlier are now in the shared store")
			}
		}
		a.mu.Unlock()
	}
	newGen, _ = m.takeRow(a, gen, row)
	// The tokens may be fresh already: adopted just now, or by the poll
	// while this redemption waited to start.
	return l, newGen, m.freshFor(a, r), nil
}

// takeRow installs a stored row that is newer than a's tokens. It reports
// the (possibly new) generation and whether it took the row.
func (m *Manager) takeRow(a *account, gen uint64, row storeRow) (uint64, bool) {
	d := row.ent
	a.mu.Lock()
	defer a.mu.Unlock()
	if d == nil || a.gen != gen || d.Version == a.ent.Version || d.Binding != binding(a.cfg) {
		return gen, false
	}
	m.takeRowLocked(a, d)
	return a.gen, true
}

// takeRowLocked installs d, the shared store's newer entry for a: another
// replica's refresh (same sign-in) or sign-in. Callers hold a.mu.
func (m *Manager) takeRowLocked(a *account, d *entry) {
	if a.unsaved {
		a.log.Warn("tokens: tokens this replica could not store are discarded: another replica stored newer ones")
		a.unsaved = false
	}
	if d.LoginID != a.ent.LoginID {
		m.adoptLocked(a, d, "a sign-in made through another replica")
		return
	}
	a.ent = *d
	a.lastErr, a.backoff, a.nextTry, a.logged = nil, 0, time.Time{}, ""
	if d.ErrorKind != 0 && d.LastError != "" {
		a.lastErr = a.errorFromEntry()
	}
	a.jitter = randJitter(min(m.opts.RefreshMargin, a.margin()))
	m.publishMetricsLocked(a)
}

// freshFor reports whether a's token for r is valid and not due for a
// refresh (by expiry, as refreshDue and graphDue compute it, or by idle
// time), so a redemption would be wasted: another replica refreshed.
func (m *Manager) freshFor(a *account, r Resource) bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	now := m.now()
	if r == Graph {
		g := a.graphLocked()
		return m.graphUsable(a, now) && now.Before(a.ent.GraphExpiry.Add(-min(m.opts.RefreshMargin, a.graphLifetime()/4)-g.jitter))
	}
	if !m.usable(a, now) || !now.Before(a.ent.Expiry.Add(-min(m.opts.RefreshMargin, a.margin())-a.jitter)) {
		return false
	}
	idle := a.cfg.Flow != config.FlowApp && !a.ent.LastRefresh.IsZero() && !now.Before(a.ent.LastRefresh.Add(m.opts.IdleRefresh))
	return !idle
}

func (m *Manager) cfgStore() *config.StoreBlock {
	m.mu.RLock()
	defer m.mu.RUnlock()
	if m.cfg.Store == nil {
		return &config.StoreBlock{Type: config.StoreFile, Poll: config.DefaultStorePoll}
	}
	return m.cfg.Store
}

// flushUnsaved writes tokens that a shared store could not take when they
// were obtained, as soon as it answers again (called by the poll).
func (m *Manager) flushUnsaved() {
	if !m.store.shared() {
		return
	}
	m.mu.RLock()
	var todo []*account
	for _, a := range m.accounts {
		a.mu.Lock()
		if a.unsaved {
			todo = append(todo, a)
		}
		a.mu.Unlock()
	}
	m.mu.RUnlock()
	for _, a := range todo {
		if !a.grantMu.TryLock() {
			continue // a redemption runs; it writes them first
		}
		a.mu.Lock()
		gen := a.gen
		a.mu.Unlock()
		l, _, _, err := m.holdGrant(a, Outlook, gen)
		if err == nil {
			l.end()
		}
		a.grantMu.Unlock()
	}
}

// StoreHealth is nil while the token store can be used; otherwise it says
// why not (the shared store's database is unreachable). Readiness checks
// report it.
func (m *Manager) StoreHealth() error {
	if err := m.store.health(); err != nil {
		return fmt.Errorf("token store: %w", err)
	}
	return nil
}

// sameStore reports whether two store blocks name the same token store
// with the same settings (a reload cannot change them).
func sameStore(x, y *config.StoreBlock) bool {
	if x == nil || y == nil {
		return !x.Shared() && !y.Shared()
	}
	if !x.Shared() {
		return !y.Shared()
	}
	return x.Type == y.Type && x.DSN == y.DSN && x.Replica == y.Replica &&
		x.Lease == y.Lease && x.Heartbeat == y.Heartbeat && x.Poll == y.Poll
}
