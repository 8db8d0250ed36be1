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

// Resource is the audience of an access token. One sign-in (one refresh
// token per grant) serves both: Entra's refresh tokens are not bound to a
// resource, so the same refresh token is redeemed once per resource, and
// no token request ever mixes scopes of two resources (AADSTS700022; on a
// refresh Entra would silently return a token for the first resource).
type Resource int

const (
	// Outlook is Exchange Online (https://outlook.office.com): IMAP, POP3
	// and SMTP AUTH with XOAUTH2.
	Outlook Resource = iota
	// Graph is Microsoft Graph (https://graph.microsoft.com): sendMail,
	// drafts and upload sessions.
	Graph
)

func (r Resource) String() string {
	if r == Graph {
		return "graph"
	}
	return "outlook"
}

// For returns the Source of access tokens for resource r: the proxies
// receive one per resource and never speak OAuth.
func (m *Manager) For(r Resource) Source {
	if r == Graph {
		return graphSource{m}
	}
	return m
}

type graphSource struct{ m *Manager }

func (g graphSource) AccessToken(ctx context.Context, name string) (string, error) {
	return g.m.GraphToken(ctx, name)
}
func (g graphSource) Rejected(name, tok string) { g.m.GraphRejected(name, tok) }

// GraphScopes are the delegated Microsoft Graph permissions an account's
// Graph token asks for, only those its settings can use:
//   - send_via = "graph" or "auto": Mail.Send, and Mail.ReadWrite for
//     messages over 3 MB (draft + upload session); Mail.Send.Shared and
//     Mail.ReadWrite.Shared when the signed-in person sends from another
//     mailbox (a delegate of a shared mailbox, or send_as addresses);
//   - read_via = "graph": Mail.ReadWrite, and Mail.ReadWrite.Shared when a
//     delegate reads a shared mailbox.
//
// nil when the account uses no Graph.
func GraphScopes(ac *config.Account) []string {
	g := strings.TrimSuffix(graphResource(ac.Provider), "/") + "/"
	sends, reads := graphSends(ac), ac.ReadsViaGraph()
	delegate := ac.Delegate != "" && !strings.EqualFold(ac.Delegate, ac.Mailbox)
	sendShared := sends && (delegate || len(ac.SendAs) > 0)
	var s []string
	if sends {
		s = append(s, g+"Mail.Send")
	}
	if sends || reads {
		s = append(s, g+"Mail.ReadWrite")
	}
	if sendShared {
		s = append(s, g+"Mail.Send.Shared")
	}
	if sendShared || (reads && delegate) {
		s = append(s, g+"Mail.ReadWrite.Shared")
	}
	return s
}

// graphSends reports whether the account may send through Graph.
func graphSends(ac *config.Account) bool {
	return ac.SendVia == config.SendViaGraph || ac.SendVia == config.SendViaAuto
}

// graphUse names the settings that make the account use Graph, for
// error texts: `send_via = "auto"`, `read_via = "graph"` or both.
func graphUse(ac *config.Account) string {
	var u []string
	if graphSends(ac) {
		u = append(u, fmt.Sprintf("send_via = %q", ac.SendVia))
	}
	if ac.ReadsViaGraph() {
		u = append(u, fmt.Sprintf("read_via = %q", ac.ReadVia))
	}
	return strings.Join(u, " and ")
}

// graphScopeKey identifies the permissions a delegated account's Graph
// token must have been redeemed for; "" for the app flow (its token
// carries the app's roles, whatever the settings).
func graphScopeKey(ac *config.Account) string {
	if ac.Flow == config.FlowApp {
		return ""
	}
	return strings.Join(GraphScopes(ac), " ")
}

func graphResource(p *config.Provider) string {
	if p == nil || p.GraphResource == "" {
		return config.DefaultGraphURL
	}
	return p.GraphResource
}

// graphPermissionNames lists the Graph permissions of GraphScopes for
// messages, without the resource prefix.
func graphPermissionNames(ac *config.Account) string {
	var names []string
	for _, s := range GraphScopes(ac) {
		names = append(names, s[strings.LastIndex(s, "/")+1:])
	}
	return strings.Join(names, ", ")
}

// LoginScopes are the scopes of the authorize / device-code leg of a
// sign-in: the Exchange scopes (the code is redeemed for them) plus, for
// an account with send_via "graph" or "auto", the Graph permissions, so
// that one sign-in consents to both resources.
func LoginScopes(ac *config.Account) []string {
	s := DelegatedScopes(ac.Provider)
	if ac.UsesGraph() {
		s = append(s, GraphScopes(ac)...)
	}
	return s
}

// graphState is the Graph token's refresh state of an account; the token
// itself is in account.ent (GraphAccessToken...). Callers hold a.mu.
type graphState struct {
	gen      uint64        // account gen this state belongs to; older state is reset
	inflight chan struct{} // closed when the running Graph redemption ends
	lastErr  *Error
	nextTry  time.Time
	backoff  time.Duration
	jitter   time.Duration
	logged   string
	used     bool // a Graph token was asked for: keep it fresh in the background
}

// graphLocked returns a's Graph state, reset after a sign-in, an adoption
// or a binding change.
func (a *account) graphLocked() *graphState {
	if a.graph.gen != a.gen {
		a.graph = graphState{gen: a.gen, used: a.graph.used, inflight: a.graph.inflight}
	}
	return &a.graph
}

func (a *account) graphLifetime() time.Duration {
	if a.ent.GraphIssued.IsZero() || !a.ent.GraphExpiry.After(a.ent.GraphIssued) {
		return defaultTokenLifetime
	}
	return a.ent.GraphExpiry.Sub(a.ent.GraphIssued)
}

func (m *Manager) graphUsable(a *account, now time.Time) bool {
	if a.ent.GraphAccessToken == "" || !graphScopeFits(a) {
		return false
	}
	safety := min(m.opts.SafetyMargin, a.graphLifetime()/10)
	return now.Before(a.ent.GraphExpiry.Add(-safety))
}

// graphScopeFits reports whether the Graph token was redeemed for the
// permissions the account's settings need now (send_via and read_via may
// have changed since). Callers hold a.mu.
func graphScopeFits(a *account) bool {
	return a.ent.GraphScope == "" || a.ent.GraphScope == a.graphKey
}

// graphDue is when the Graph token's background refresh is due (zero:
// never): only for accounts that send through Graph, once a Graph token
// was asked for (send_via = "graph" from the start). Callers hold a.mu.
func (m *Manager) graphDue(a *account, now time.Time) time.Time {
	g := a.graphLocked()
	if !a.cfg.UsesGraph() || g.inflight != nil || a.ent.State == StateNeedsLogin {
		return time.Time{}
	}
	if !g.used && a.cfg.SendVia != config.SendViaGraph && !a.cfg.ReadsViaGraph() {
		return time.Time{}
	}
	if a.cfg.Flow != config.FlowApp && a.ent.RefreshToken == "" {
		return time.Time{}
	}
	if g.lastErr != nil && g.nextTry.After(now) {
		return g.nextTry
	}
	if a.ent.GraphAccessToken == "" || !graphScopeFits(a) {
		return now
	}
	margin := min(m.opts.RefreshMargin, a.graphLifetime()/4)
	return a.ent.GraphExpiry.Add(-margin - g.jitter)
}

// GraphToken returns a valid Microsoft Graph access token for the named
// account, like AccessToken does for Exchange. It is obtained by redeeming
// the account's refresh token with the Graph scopes (client credentials
// with the Graph .default scope for the app flow).
func (m *Manager) GraphToken(ctx context.Context, name string) (string, error) {
	a := m.account(name)
	if a == nil {
		return "", &Error{Account: name, Kind: Failing, Reason: "no such account",
			Fix: "add an account block with this name to the configuration, or fix the user's account attribute"}
	}
	a.mu.Lock()
	g := a.graphLocked()
	g.used = true
	now := m.now()
	if m.graphUsable(a, now) {
		tok := a.ent.GraphAccessToken
		if due := m.graphDue(a, now); !due.IsZero() && !due.After(now) {
			m.startGraphRefresh(a)
		}
		a.mu.Unlock()
		return tok, nil
	}
	if err := m.graphBlocked(a, now); err != nil {
		a.mu.Unlock()
		return "", err
	}
	done := m.startGraphRefresh(a)
	a.mu.Unlock()

	select {
	case <-done:
	case <-ctx.Done():
		return "", &Error{Account: name, Kind: Temporary, Reason: "the token endpoint did not answer in time (Microsoft Graph token)",
			Fix: "none if it recovers; otherwise check the network path to " + authorityOf(a.cfg), Err: ctx.Err()}
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if m.graphUsable(a, m.now()) {
		return a.ent.GraphAccessToken, nil
	}
	if err := m.graphBlocked(a, m.now()); err != nil {
		return "", err
	}
	if e := a.graphLocked().lastErr; e != nil {
		return "", e
	}
	return "", &Error{Account: name, Kind: Temporary, Reason: "no valid Microsoft Graph access token after a refresh", Fix: fixBackOff}
}

// graphBlocked is blocked for the Graph token. Callers hold a.mu.
func (m *Manager) graphBlocked(a *account, now time.Time) *Error {
	if a.cfg.Flow != config.FlowApp && (a.ent.RefreshToken == "" || a.ent.State == StateNeedsLogin) {
		return m.blocked(a, now)
	}
	g := a.graphLocked()
	if g.inflight == nil && g.lastErr != nil && g.nextTry.After(now) {
		return g.lastErr
	}
	return nil
}

// GraphRejected drops a Graph token that Graph refused (401).
func (m *Manager) GraphRejected(name, tok string) {
	a := m.account(name)
	if a == nil || tok == "" {
		return
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.ent.GraphAccessToken == tok {
		a.ent.GraphAccessToken = ""
		a.log.Info("tokens: Microsoft Graph rejected the access token; the next send refreshes it")
	}
}

// startGraphRefresh starts the Graph redemption unless one runs. Callers
// hold a.mu.
func (m *Manager) startGraphRefresh(a *account) chan struct{} {
	g := a.graphLocked()
	if g.inflight != nil {
		return g.inflight
	}
	done := make(chan struct{})
	g.inflight = done
	gen, ac := a.gen, a.cfg
	if !m.spawn(func() { m.refreshGraph(a, done, gen, ac) }) {
		g.inflight = nil
		close(done)
	}
	return done
}

// refreshGraph redeems the account's refresh token for Graph. It holds
// the grant lock, so it never runs beside the Exchange refresh: each
// redemption uses the newest refresh token, and a rotated one is stored
// before the next redemption can start.
func (m *Manager) refreshGraph(a *account, done chan struct{}, gen uint64, ac *config.Account) {
	defer m.signal()
	a.grantMu.Lock()
	defer a.grantMu.Unlock()
	finish := func() { // callers hold a.mu
		if a.graph.inflight == done {
			a.graph.inflight = nil
		}
		close(done)
	}
	// A shared store: take the grant's lease and the stored tokens first.
	l, gen, fresh, herr := m.holdGrant(a, Graph, gen)
	if herr != nil {
		a.mu.Lock()
		defer a.mu.Unlock()
		defer finish()
		if g := a.graphLocked(); a.gen == gen {
			g.lastErr = graphError(ac, classify(ac, herr))
			g.backoff = min(max(g.backoff*2, m.opts.RetryMin), m.opts.RetryMax)
			g.nextTry = m.now().Add(g.backoff/2 + mrand.N(g.backoff/2+1))
		}
		return
	}
	defer l.end()
	a.mu.Lock()
	if a.gen != gen || fresh {
		finish()
		a.mu.Unlock()
		return
	}
	rt := a.ent.RefreshToken
	base := a.ent.Version // what a shared store's write compares against
	a.mu.Unlock()

	p := ac.Provider
	var form url.Values
	if ac.Flow == config.FlowApp {
		form = url.Values{"grant_type": {"client_credentials"}, "scope": {graphResource(p) + "/.default"}}
	} else {
		form = url.Values{"grant_type": {"refresh_token"}, "refresh_token": {rt},
			"scope": {strings.Join(append(GraphScopes(ac), "offline_access"), " ")}}
	}
	tr, err := m.tokenRequest(m.base, p, form)
	now := m.now()
	if err != nil {
		te := graphError(ac, classify(ac, err))
		m.met.GraphTokenRefreshes.WithLabelValues(a.name, te.Kind.String()).Inc()
		a.mu.Lock()
		defer a.mu.Unlock()
		defer finish()
		if a.gen != gen {
			return
		}
		g := a.graphLocked()
		g.lastErr = te
		if te.Kind == Temporary {
			g.backoff = min(max(g.backoff*2, m.opts.RetryMin), m.opts.RetryMax)
			g.nextTry = now.Add(g.backoff/2 + mrand.N(g.backoff/2+1))
			a.log.Warn("tokens: Microsoft Graph token request failed; retrying", "error", te.Error(), "aadsts", te.AADSTS)
			return
		}
		g.nextTry = now.Add(m.opts.FailingRetry)
		if key := fmt.Sprint(te.Kind, te.AADSTS, te.Reason); g.logged != key {
			g.logged = key
			a.log.Error("tokens: cannot get a Microsoft Graph token", "error", te.Error(), "aadsts", te.AADSTS)
		}
		return
	}

	a.mu.Lock()
	if a.gen != gen {
		finish()
		a.mu.Unlock()
		return
	}
	ent := a.ent
	a.mu.Unlock()
	ent.Version = base
	ent.GraphAccessToken = tr.AccessToken
	ent.GraphIssued, ent.GraphExpiry = now, now.Add(tr.lifetime())
	ent.GraphScope = graphScopeKey(ac)
	if tr.RefreshToken != "" {
		// Entra rotates the refresh token on the Graph redemption too: it
		// replaces the stored one exactly like an Exchange refresh does.
		ent.RefreshToken = tr.RefreshToken
		ent.LastRefresh = now
	}
	newer, serr := m.store.update(map[string]*entry{a.name: &ent})
	m.noteStoreErr(serr)
	m.met.GraphTokenRefreshes.WithLabelValues(a.name, "ok").Inc()

	a.mu.Lock()
	defer a.mu.Unlock()
	defer finish()
	if a.gen != gen {
		return
	}
	if d := newer[a.name]; d != nil && d.Binding == ent.Binding {
		m.adoptLocked(a, d, "a newer sign-in was found in the token store")
		return
	}
	g := a.graphLocked()
	if g.lastErr != nil {
		a.log.Info("tokens: Microsoft Graph token works again")
	}
	a.ent.GraphAccessToken, a.ent.GraphIssued, a.ent.GraphExpiry, a.ent.GraphScope = ent.GraphAccessToken, ent.GraphIssued, ent.GraphExpiry, ent.GraphScope
	if tr.RefreshToken != "" {
		a.ent.RefreshToken, a.ent.LastRefresh = ent.RefreshToken, ent.LastRefresh
	}
	a.ent.Version = ent.Version
	a.unsaved = serr != nil && m.store.shared() // written first when the store is back
	g.lastErr, g.backoff, g.nextTry, g.logged = nil, 0, time.Time{}, ""
	g.jitter = randJitter(min(m.opts.RefreshMargin, a.graphLifetime()/4))
	a.log.Debug("tokens: Microsoft Graph access token refreshed", "expires", ent.GraphExpiry)
}

// graphError rewrites consent and permission errors of a Graph
// redemption so that they name the Graph permissions to add and where.
func graphError(ac *config.Account, te *Error) *Error {
	e := *te
	switch e.AADSTS {
	case 65001, 65004, 90094, 650057, 65005, 650056, 70011:
	default:
		switch {
		case e.Reason == codeTable["consent_required"].reason, e.Reason == codeTable["invalid_scope"].reason:
		default:
			if e.Kind == Temporary {
				e.Reason += " (Microsoft Graph token)"
			} else {
				e.Reason = "Microsoft Graph token: " + e.Reason
			}
			return &e
		}
	}
	perms := graphPermissionNames(ac)
	if ac.Flow == config.FlowApp {
		e.Kind = Failing
		// Application permissions: Mail.Send to send (Mail.ReadWrite too,
		// for messages over 3 MB); Mail.ReadWrite to read.
		need, add := "permission Mail.ReadWrite", "Mail.ReadWrite"
		switch {
		case graphSends(ac) && ac.ReadsViaGraph():
			need, add = "permissions Mail.Send and Mail.ReadWrite", "Mail.Send and Mail.ReadWrite"
		case graphSends(ac):
			need, add = "permission Mail.Send", "Mail.Send and Mail.ReadWrite (messages over 3 MB)"
		}
		e.Reason = fmt.Sprintf("the app registration has no admin consent for the Microsoft Graph application %s (%s)", need, graphUse(ac))
		e.Fix = fmt.Sprintf("in Entra: App registrations > the app of provider %s > API permissions > Add a permission > Microsoft Graph > Application permissions: add %s, then 'Grant admin consent' (or open the URL of 'oauthbridge consent-url %s'); scope it to the mailbox with RBAC for Applications or an application access policy",
			ac.ProviderName, add, ac.ProviderName)
		return &e
	}
	e.Kind = NeedsLogin
	e.Reason = fmt.Sprintf("no consent for the Microsoft Graph permissions %s that %s needs", perms, graphUse(ac))
	e.Fix = fmt.Sprintf("in Entra: App registrations > the app of provider %s > API permissions > Add a permission > Microsoft Graph > Delegated permissions: add %s; grant consent (an administrator: 'oauthbridge consent-url %s'), then run 'oauthbridge login %s' so the sign-in covers them",
		ac.ProviderName, perms, ac.ProviderName, ac.Name)
	return &e
}

// graphStatusLocked fills the sending fields of st. Callers hold a.mu.
func (m *Manager) graphStatusLocked(a *account, st *AccountStatus, now time.Time) {
	st.SendVia = a.cfg.SendVia
	sp, ok := m.keptPathFor(a)
	switch {
	case ok:
		st.SendPath, st.SendPathReason, st.SendPathSince = sp.Path, sp.Reason, sp.Since
	case a.cfg.SendVia == config.SendViaGraph:
		st.SendPath = config.SendViaGraph
	default:
		st.SendPath = config.SendViaSMTP
	}
	if !a.cfg.UsesGraph() {
		return
	}
	if a.ent.GraphAccessToken != "" {
		st.GraphExpiry = a.ent.GraphExpiry
	}
	if e := a.graphLocked().lastErr; e != nil {
		st.GraphError, st.GraphFix = e.Reason, e.Fix
		if e.AADSTS != 0 {
			st.GraphError += fmt.Sprintf(" (AADSTS%d)", e.AADSTS)
		}
	}
}
