package tokens

import (
	"time"

	"github.com/oauthbridge/oauthbridge/config"
)

// The send path of a send_via = "auto" account. The SMTP proxy decides it
// (it switches an account to Microsoft Graph when Microsoft 365 refuses
// SMTP AUTH, and back when SMTP works again) and reports it with
// SetSendPath. tokens shows it in Status and keeps it in the account's
// store entry, so that after a restart the proxy starts in the kept state
// (SendPath) instead of making a failing SMTP AUTH attempt again, and a
// graph_fallback alert does not resolve and fire again. It is written only
// when the path, its reason or its recheck time changes (a switch, or a
// failed recheck every auto_smtp_recheck), never per message, through the
// store's ordinary write (compare-and-swap in a shared store; replicas
// then share the kept path). tokens does not act on it.

// keptPath is an account's reported send path.
type keptPath struct {
	Path      string    `json:"path"`
	Reason    string    `json:"reason,omitempty"`
	Since     time.Time `json:"since,omitzero"`
	RecheckAt time.Time `json:"recheck_at,omitzero"` // try SMTP again from then on
}

func (p keptPath) same(q keptPath) bool {
	return p.Path == q.Path && p.Reason == q.Reason && p.Since.Equal(q.Since) && p.RecheckAt.Equal(q.RecheckAt)
}

// SetSendPath records the path an account's messages take now ("smtp" or
// "graph"), why, and (on "graph") when SMTP is tried again, for Status,
// the admin page and the next start. The SMTP proxy calls it when an
// account with send_via = "auto" switches or a recheck fails. The store
// is written in the background.
func (m *Manager) SetSendPath(account, path, reason string, recheckAt time.Time) {
	a := m.account(account)
	if a == nil {
		return
	}
	m.pathMu.Lock()
	if m.paths == nil {
		m.paths = map[string]keptPath{}
	}
	cur, ok := m.paths[account]
	if ok && cur.Path == path && cur.Reason == reason && cur.RecheckAt.Equal(recheckAt) {
		m.pathMu.Unlock()
		return
	}
	sp := keptPath{Path: path, Reason: reason, Since: m.now(), RecheckAt: recheckAt}
	if ok && cur.Path == path {
		sp.Since = cur.Since
	}
	m.paths[account] = sp
	m.pathMu.Unlock()
	m.spawn(func() { m.savePath(a) })
}

// SendPath returns the send path last reported for an account with
// send_via = "auto", by this process or (kept in the token store) before
// its start. ok is false when none is known or the account's send_via is
// not "auto" (a kept path is then ignored).
func (m *Manager) SendPath(account string) (path, reason string, since, recheckAt time.Time, ok bool) {
	a := m.account(account)
	if a == nil {
		return "", "", time.Time{}, time.Time{}, false
	}
	a.mu.Lock()
	sp, ok := m.keptPathFor(a)
	a.mu.Unlock()
	return sp.Path, sp.Reason, sp.Since, sp.RecheckAt, ok
}

// keptPathFor returns a's reported send path if its send_via is "auto".
// Callers hold a.mu.
func (m *Manager) keptPathFor(a *account) (keptPath, bool) {
	if a.cfg.SendVia != config.SendViaAuto {
		return keptPath{}, false
	}
	m.pathMu.Lock()
	defer m.pathMu.Unlock()
	sp, ok := m.paths[a.name]
	return sp, ok
}

// seedPaths takes the kept send paths of the store entries of "auto"
// accounts that have no reported one, and drops those of accounts that
// are gone or no longer "auto" (their entries lose it at the next write).
// Callers hold m.mu, or own m (NewManager).
func (m *Manager) seedPaths() {
	m.pathMu.Lock()
	defer m.pathMu.Unlock()
	if m.paths == nil {
		m.paths = map[string]keptPath{}
	}
	for name := range m.paths {
		if _, ok := m.accounts[name]; !ok {
			delete(m.paths, name)
		}
	}
	for name, a := range m.accounts {
		a.mu.Lock()
		switch {
		case a.cfg.SendVia != config.SendViaAuto:
			delete(m.paths, name)
			a.ent.KeptPath = nil
		case a.ent.KeptPath != nil && a.ent.KeptPath.Path != "":
			if _, ok := m.paths[name]; !ok {
				m.paths[name] = *a.ent.KeptPath
			}
		}
		a.mu.Unlock()
	}
}

// reportedPath returns the path to store with a new sign-in of ac.
func (m *Manager) reportedPath(ac *config.Account) *keptPath {
	if ac.SendVia != config.SendViaAuto {
		return nil
	}
	m.pathMu.Lock()
	defer m.pathMu.Unlock()
	if sp, ok := m.paths[ac.Name]; ok {
		return &sp
	}
	return nil
}

// maxPathWrites bounds the attempts to store a send path that race other
// writes of the entry (another replica's refresh, another sign-in).
const maxPathWrites = 3

// savePath writes a's reported send path into its store entry. It holds
// the grant lock, so no refresh of a runs (and installs an entry copied
// before) meanwhile.
func (m *Manager) savePath(a *account) {
	a.grantMu.Lock()
	defer a.grantMu.Unlock()
	if m.store.shared() {
		// Take another replica's newer row first: the write then does
		// not conflict.
		a.mu.Lock()
		gen := a.gen
		a.mu.Unlock()
		if row, err := m.store.get(m.base, a.name); err == nil && !a.unsavedNow() {
			m.takeRow(a, gen, row)
		}
	}
	for range maxPathWrites {
		a.mu.Lock()
		sp, ok := m.keptPathFor(a)
		if !ok || (a.ent.KeptPath != nil && a.ent.KeptPath.same(sp)) {
			a.mu.Unlock()
			return
		}
		gen, ent := a.gen, a.ent
		a.mu.Unlock()
		ent.KeptPath = &sp
		newer, err := m.store.update(map[string]*entry{a.name: &ent})
		m.noteStoreErr(err)
		if err != nil {
			a.log.Warn("tokens: cannot keep the account's send path in the token store; after a restart it starts on SMTP again", "error", err)
			return
		}
		a.mu.Lock()
		if a.gen != gen {
			a.mu.Unlock()
			continue // a sign-in or reload replaced the entry: write again
		}
		d := newer[a.name]
		switch {
		case d == nil:
			a.ent.Version = ent.Version
			a.unsaved = false // a shared store took this replica's tokens too
			if _, still := m.keptPathFor(a); !still {
				// A reload took send_via away from "auto" during the
				// write: the path stays dropped (the next write drops
				// it from the store).
				a.mu.Unlock()
				return
			}
			// Written; if the path changed meanwhile, the next round
			// writes the newer one.
			a.ent.KeptPath = ent.KeptPath
		case d.Binding != binding(a.cfg):
			a.mu.Unlock()
			return
		case m.store.shared():
			m.takeRowLocked(a, d)
		default:
			m.adoptLocked(a, d, "a newer sign-in was found in the token store")
		}
		a.mu.Unlock()
	}
}

func (a *account) unsavedNow() bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.unsaved
}
