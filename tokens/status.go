package tokens

import (
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/oauthbridge/oauthbridge/config"
	"github.com/oauthbridge/oauthbridge/internal/metrics"
)

// Reload applies a new configuration: added accounts are loaded from the
// store, removed ones forgotten (their stored tokens stay on disk), and an
// account whose app registration, flow or person changed starts over.
// A failing account is retried at once (its secret may have been fixed).
func (m *Manager) Reload(cfg *config.Config) error {
	if cfg == nil {
		return errors.New("tokens: reload: nil config")
	}
	if cfg.StateDir != m.cfg.StateDir {
		return fmt.Errorf("tokens: reload: state_dir changed from %s to %s; restart oauthbridge to use the new one", m.cfg.StateDir, cfg.StateDir)
	}
	if !sameStore(cfg.Store, m.cfg.Store) {
		return errors.New("tokens: reload: the store block changed; restart oauthbridge to use the new token store")
	}
	disk, err := m.store.load()
	if err != nil {
		m.log.Warn("tokens: reload: cannot read the token store", "error", err)
		disk = map[string]*entry{}
	}
	m.mu.Lock()
	for name, ac := range cfg.AccountByName {
		a, ok := m.accounts[name]
		if !ok {
			m.accounts[name] = m.newAccount(ac, disk[name])
			m.log.Info("tokens: account added", "account", name)
			continue
		}
		a.mu.Lock()
		old := binding(a.cfg)
		oldGraph := a.graphKey
		a.cfg, a.graphKey = ac, graphScopeKey(ac)
		if nb := binding(ac); nb != old {
			a.gen++
			a.ent = entry{State: StateUnknown, Binding: nb}
			if d := disk[name]; d != nil && d.Binding == nb {
				a.ent = *d
			}
			a.lastErr, a.backoff, a.nextTry, a.logged = nil, 0, time.Time{}, ""
			a.log.Info("tokens: account's app registration, flow or sign-in person changed; its old tokens are not used")
		} else if a.ent.State == StateFailing || (a.lastErr != nil && a.lastErr.Kind == Failing) {
			a.nextTry, a.logged = time.Time{}, ""
			a.lastErr = nil
			a.ent.State = StateOK
		}
		if ng := a.graphKey; ng != oldGraph && ac.Flow != config.FlowApp {
			// send_via or read_via changed what Graph permissions the
			// account needs: a Graph token for the old ones is not used
			// (graphScopeFits), and the new ones are tried now instead of
			// after an old error's back-off. Missing consent then shows in
			// status as the Graph error naming the sign-in to run.
			g := a.graphLocked()
			g.lastErr, g.backoff, g.nextTry, g.logged = nil, 0, time.Time{}, ""
			if ng != "" {
				a.log.Info("tokens: the Microsoft Graph permissions this account needs changed; its Graph token is requested again", "graph_permissions", graphPermissionNames(ac))
			}
		}
		m.publishMetricsLocked(a)
		a.mu.Unlock()
	}
	for name := range m.accounts {
		if _, ok := cfg.AccountByName[name]; !ok {
			delete(m.accounts, name)
			m.met.TokenExpiry.DeleteLabelValues(name)
			for _, s := range metrics.AccountStates {
				m.met.AccountState.DeleteLabelValues(name, s)
			}
			m.log.Info("tokens: account removed", "account", name)
		}
	}
	m.cfg = cfg
	m.seedPaths() // sendpath.go: kept send paths of added accounts; none for non-"auto" ones
	m.mu.Unlock()
	m.clientsMu.Lock()
	m.clients = map[*config.Provider]*http.Client{}
	m.clientsMu.Unlock()
	m.adoptFrom(disk)
	m.publishCredentialMetrics()
	m.signal()
	return nil
}

// state is the account's state as Status and metrics show it. Callers
// hold a.mu.
func (m *Manager) state(a *account, now time.Time) State {
	switch {
	case a.ent.State == StateNeedsLogin:
		return StateNeedsLogin
	case a.lastErr != nil && a.lastErr.Kind == Failing:
		return StateFailing
	case a.cfg.Flow != config.FlowApp && a.ent.RefreshToken == "":
		return StateNeedsLogin // nobody has signed in yet: the first day's most common problem
	case a.lastErr != nil && a.lastErr.Kind == Temporary && !m.usable(a, now):
		return StateFailing // refresh failing and no valid token left
	case a.cfg.Flow == config.FlowApp && a.ent.AccessToken == "" && a.lastErr == nil:
		return StateUnknown
	}
	return StateOK
}

func (m *Manager) publishMetrics(a *account) {
	a.mu.Lock()
	defer a.mu.Unlock()
	m.publishMetricsLocked(a)
}

func (m *Manager) publishMetricsLocked(a *account) {
	now := m.now()
	m.met.SetAccountState(a.name, string(m.state(a, now)))
	if !a.ent.Expiry.IsZero() {
		m.met.TokenExpiry.WithLabelValues(a.name).Set(a.ent.Expiry.Sub(now).Seconds())
	}
}

// Status returns every account's state, sorted by account name. It never
// contains a token or a secret.
func (m *Manager) Status() []AccountStatus {
	m.mu.RLock()
	accts := make([]*account, 0, len(m.accounts))
	for _, a := range m.accounts {
		accts = append(accts, a)
	}
	m.mu.RUnlock()
	m.storeErrMu.Lock()
	storeErr := m.storeErr
	m.storeErrMu.Unlock()
	leases := m.store.leases()
	out := make([]AccountStatus, 0, len(accts))
	for _, a := range accts {
		a.mu.Lock()
		now := m.now()
		st := AccountStatus{
			Account:     a.name,
			Mailbox:     a.cfg.Mailbox,
			Flow:        a.cfg.Flow,
			Delegate:    a.cfg.Delegate,
			SignedInAs:  a.ent.SignedInAs,
			State:       m.state(a, now),
			Expiry:      a.ent.Expiry,
			LastRefresh: a.ent.LastRefresh,
		}
		if e := a.lastErr; e != nil {
			st.LastError, st.Fix, st.AADSTS = e.Reason, e.Fix, e.AADSTS
		} else if e := m.blocked(a, now); e != nil {
			st.LastError, st.Fix = e.Reason, e.Fix
		}
		m.graphStatusLocked(a, &st, now)
		if a.cfg.Provider != nil {
			st.ClientSecretExpires = a.cfg.Provider.SecretExpires
		}
		if herr := m.store.health(); herr != nil && st.LastError == "" {
			st.LastError = herr.Error() + "; cached access tokens keep serving until they expire"
			st.Fix = m.store.fix()
		}
		if storeErr != "" && st.LastError == "" {
			st.LastError = "cannot save the token store: " + storeErr
			st.Fix = m.store.fix()
		}
		if li, ok := leases[a.name]; ok && li.Until.After(time.Now()) {
			st.LeaseHolder, st.LeaseUntil = li.Holder, li.Until
		}
		a.mu.Unlock()
		out = append(out, st)
	}
	slices.SortFunc(out, func(x, y AccountStatus) int { return strings.Compare(x.Account, y.Account) })
	return out
}
