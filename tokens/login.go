package tokens

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"strings"
	"time"

	"golang.org/x/oauth2"

	"github.com/oauthbridge/oauthbridge/config"
)

// slowDownStep is added to the device-code poll interval on slow_down
// (RFC 8628 section 3.5).
const slowDownStep = 5 * time.Second

// pendingLogin is an unfinished browser sign-in, keyed by its state.
type pendingLogin struct {
	account     string
	verifier    string // PKCE code_verifier: a secret
	redirectURI string
	expires     time.Time
}

func (m *Manager) delegatedAccount(name string) (*account, *config.Account, error) {
	a := m.account(name)
	if a == nil {
		return nil, nil, &Error{Account: name, Kind: Failing, Reason: "no such account",
			Fix: "add an account block with this name to the configuration"}
	}
	a.mu.Lock()
	ac := a.cfg
	a.mu.Unlock()
	if ac.Flow == config.FlowApp {
		return nil, nil, &Error{Account: name, Kind: Failing, Reason: "the account uses the app flow (client credentials), which has no sign-in",
			Fix: "nothing to sign in; for app-flow problems see 'oauthbridge status'"}
	}
	return a, ac, nil
}

// StartDeviceLogin starts a device-code sign-in for a delegated account.
// The returned DeviceLogin says where the person signs in and which code
// to type. Polling runs in the background until the sign-in completes, the
// code expires or the manager closes (ctx bounds only the first request,
// so a web handler may return at once); the channel then yields nil on
// success or the error, and is closed.
func (m *Manager) StartDeviceLogin(ctx context.Context, name string) (*DeviceLogin, <-chan error, error) {
	a, ac, err := m.delegatedAccount(name)
	if err != nil {
		return nil, nil, err
	}
	p := ac.Provider
	if p.IsGoogle() {
		return nil, nil, googleDeviceError(ac)
	}
	// The device-code leg may cover several resources (consent for Graph
	// too); the token it yields is for the first, Exchange.
	form := url.Values{"client_id": {p.ClientID}, "scope": {strings.Join(LoginScopes(ac), " ")}}
	var dr deviceResponse
	if err := m.postForm(ctx, p, Endpoints(p).DeviceAuthURL, form, &dr); err != nil {
		return nil, nil, m.loginError(ac, "device-code request", err)
	}
	if dr.DeviceCode == "" || dr.UserCode == "" {
		return nil, nil, &Error{Account: name, Kind: Temporary, Reason: "the device-code answer has no code", Fix: "try again"}
	}
	if dr.VerificationURI == "" {
		dr.VerificationURI = dr.VerificationURL
	}
	interval := time.Duration(dr.Interval) * time.Second
	if interval <= 0 {
		interval = 5 * time.Second // RFC 8628 default
	}
	life := time.Duration(dr.ExpiresIn) * time.Second
	if life <= 0 {
		life = 15 * time.Minute // Entra's default
	}
	dl := &DeviceLogin{
		Account:         name,
		VerificationURI: dr.VerificationURI,
		UserCode:        dr.UserCode,
		Expires:         m.now().Add(life),
		Interval:        int(interval / time.Second),
		Message:         dr.Message,
	}
	ch := make(chan error, 1)
	pollCtx, cancel := context.WithTimeout(m.base, life)
	ok := m.spawn(func() {
		defer cancel()
		ch <- m.pollDevice(pollCtx, a, ac, dr.DeviceCode, interval)
		close(ch)
	})
	if !ok {
		cancel()
		return nil, nil, &Error{Account: name, Kind: Temporary, Reason: "oauthbridge is shutting down", Fix: "try again"}
	}
	a.log.Info("tokens: device-code sign-in started", "user", ac.LoginHint(), "expires", dl.Expires)
	return dl, ch, nil
}

func (m *Manager) pollDevice(ctx context.Context, a *account, ac *config.Account, deviceCode string, interval time.Duration) error {
	p := ac.Provider
	expired := &Error{Account: a.name, Kind: NeedsLogin, AADSTS: 70019, Reason: "the device code expired before the sign-in finished",
		Fix: fmt.Sprintf("start the sign-in again: run 'oauthbridge login %s'", a.name)}
	for {
		if err := m.sleep(ctx, interval); err != nil {
			if errors.Is(err, context.DeadlineExceeded) {
				return expired
			}
			return &Error{Account: a.name, Kind: Temporary, Reason: "the sign-in was cancelled", Fix: "start the sign-in again", Err: err}
		}
		tr, err := m.tokenRequest(ctx, p, url.Values{
			"grant_type":  {"urn:ietf:params:oauth:grant-type:device_code"},
			"device_code": {deviceCode},
		})
		if err == nil {
			return m.finishLogin(a, ac, tr, "device code")
		}
		var re *oauth2.RetrieveError
		if errors.As(err, &re) {
			switch re.ErrorCode {
			case "authorization_pending":
				continue
			case "slow_down":
				interval += slowDownStep
				continue
			case "expired_token", "code_expired":
				return expired
			}
		}
		te := classify(ac, err)
		if te.Kind == Temporary {
			if ctx.Err() != nil {
				return expired
			}
			a.log.Warn("tokens: device-code poll failed; retrying", "error", te.Error())
			continue
		}
		a.log.Error("tokens: device-code sign-in failed", "error", te.Error(), "aadsts", te.AADSTS)
		return te
	}
}

// BrowserLoginURL returns the authorization-code + PKCE (S256) sign-in URL
// for a delegated account. The state is random, bound to the account,
// single-use and valid for DefaultBrowserLoginTTL; login_hint is the
// person who must sign in. redirectURI must be registered in the app
// registration (the admin listener's /oauth/callback).
func (m *Manager) BrowserLoginURL(name, redirectURI string) (string, error) {
	_, ac, err := m.delegatedAccount(name)
	if err != nil {
		return "", err
	}
	if redirectURI == "" {
		return "", errors.New("tokens: browser sign-in needs a redirect URI")
	}
	state := randomID(32)
	verifier := oauth2.GenerateVerifier()
	now := m.now()
	m.pendMu.Lock()
	for s, pl := range m.pending {
		if !now.Before(pl.expires) {
			delete(m.pending, s)
		}
	}
	if len(m.pending) >= maxPendingBrowserLogins {
		m.pendMu.Unlock()
		return "", errors.New("tokens: too many unfinished browser sign-ins; try again in a few minutes")
	}
	m.pending[state] = &pendingLogin{account: name, verifier: verifier, redirectURI: redirectURI, expires: now.Add(DefaultBrowserLoginTTL)}
	m.pendMu.Unlock()
	oc := m.oauthConfig(ac, redirectURI)
	opts := []oauth2.AuthCodeOption{oauth2.S256ChallengeOption(verifier), oauth2.SetAuthURLParam("login_hint", ac.LoginHint())}
	if ac.Provider.IsGoogle() {
		opts = append(opts, googleAuthParams()...)
	}
	return oc.AuthCodeURL(state, opts...), nil
}

func (m *Manager) oauthConfig(ac *config.Account, redirectURI string) *oauth2.Config {
	return &oauth2.Config{
		ClientID:    ac.Provider.ClientID,
		Endpoint:    Endpoints(ac.Provider),
		RedirectURL: redirectURI,
		Scopes:      LoginScopes(ac), // the authorize leg consents to Graph too; the code is redeemed for Exchange
	}
}

// CompleteBrowserLogin redeems the authorization code of a browser sign-in
// (the admin /oauth/callback calls it with the query's state and code) and
// returns the account it was for.
func (m *Manager) CompleteBrowserLogin(ctx context.Context, state, code string) (string, error) {
	m.pendMu.Lock()
	pl := m.pending[state]
	delete(m.pending, state) // single use, even when it fails below
	m.pendMu.Unlock()
	if pl == nil || state == "" {
		return "", errors.New("tokens: unknown or already used sign-in state; start the sign-in again")
	}
	if !m.now().Before(pl.expires) {
		return pl.account, &Error{Account: pl.account, Kind: NeedsLogin, Reason: "the sign-in took longer than 10 minutes",
			Fix: "start the sign-in again"}
	}
	if code == "" {
		return pl.account, &Error{Account: pl.account, Kind: NeedsLogin, Reason: "the sign-in returned no authorization code", Fix: "start the sign-in again"}
	}
	a, ac, err := m.delegatedAccount(pl.account)
	if err != nil {
		return pl.account, err
	}
	form := url.Values{
		"grant_type":    {"authorization_code"},
		"code":          {code},
		"redirect_uri":  {pl.redirectURI},
		"code_verifier": {pl.verifier},
	}
	if !ac.Provider.IsGoogle() { // Google takes the scope from the authorize leg only
		form.Set("scope", strings.Join(DelegatedScopes(ac.Provider), " "))
	}
	tr, err := m.tokenRequest(ctx, ac.Provider, form)
	if err != nil {
		return pl.account, m.loginError(ac, "authorization-code redemption", err)
	}
	return pl.account, m.finishLogin(a, ac, tr, "browser")
}

func (m *Manager) loginError(ac *config.Account, what string, err error) error {
	te := classify(ac, err)
	var re *oauth2.RetrieveError
	if errors.As(err, &re) && re.ErrorCode == "invalid_grant" {
		if _, known := aadstsTable[te.AADSTS]; !known {
			te.Reason = "the identity platform refused the sign-in's code (invalid_grant)"
			te.Fix = fmt.Sprintf("start the sign-in again: run 'oauthbridge login %s'", ac.Name)
		}
	}
	m.log.Error("tokens: sign-in failed", "account", ac.Name, "step", what, "error", te.Error(), "aadsts", te.AADSTS)
	return te
}

// bindingChanged is the refusal of a sign-in whose account's binding
// changed (by a reload) while it ran.
func bindingChanged(a *account) error {
	e := &Error{Account: a.name, Kind: NeedsLogin, Reason: "the account's configuration (delegate, provider or flow) changed while the sign-in was running",
		Fix: fmt.Sprintf("run 'oauthbridge login %s' again", a.name)}
	a.log.Error("tokens: sign-in refused", "error", e.Error())
	return e
}

// finishLogin checks who signed in, then stores and installs the tokens.
// On a user mismatch nothing is stored.
func (m *Manager) finishLogin(a *account, ac *config.Account, tr *tokenResponse, how string) error {
	hint := ac.LoginHint()
	// A reload during the sign-in may have changed who must sign in (or the
	// provider or flow): never install tokens for the old identity.
	a.mu.Lock()
	changed := binding(a.cfg) != binding(ac)
	a.mu.Unlock()
	if changed {
		return bindingChanged(a)
	}
	who, err := signedInAs(tr.IDToken)
	if err != nil {
		e := &Error{Account: a.name, Kind: NeedsLogin, Reason: "cannot tell who signed in: " + err.Error(),
			Fix: fmt.Sprintf("run 'oauthbridge login %s' again and sign in as %s", a.name, hint)}
		a.log.Error("tokens: sign-in refused", "error", e.Error())
		return e
	}
	if !strings.EqualFold(who, hint) {
		e := &Error{Account: a.name, Kind: NeedsLogin,
			Reason: fmt.Sprintf("user mismatch: signed in as %s, but account %s expects %s; sign in as %s", who, a.name, hint, hint),
			Fix:    fmt.Sprintf("run 'oauthbridge login %s' again and sign in as %s (sign out of %s first)", a.name, hint, who)}
		a.log.Error("tokens: sign-in refused", "error", e.Error(), "user", who)
		return e
	}
	if tr.RefreshToken == "" {
		e := &Error{Account: a.name, Kind: Failing, Reason: "the sign-in returned no refresh token (offline_access was not granted)",
			Fix: fmt.Sprintf("allow offline_access for the app registration of provider %s, then run 'oauthbridge login %s'", ac.ProviderName, a.name)}
		if ac.Provider.IsGoogle() {
			e.Reason = "Google's sign-in returned no refresh token"
			e.Fix = fmt.Sprintf("run 'oauthbridge login %s' again; if it persists, remove the app's access at https://myaccount.google.com/permissions and sign in again", a.name)
		}
		a.log.Error("tokens: sign-in refused", "error", e.Error())
		return e
	}
	now := m.now()
	ent := entry{
		RefreshToken: tr.RefreshToken,
		AccessToken:  tr.AccessToken,
		Issued:       now,
		Expiry:       now.Add(tr.lifetime()),
		SignedInAs:   who,
		LastRefresh:  now,
		State:        StateOK,
		LoginID:      randomID(12),
		LoginAt:      now,
		Binding:      binding(ac),
		KeptPath:     m.reportedPath(ac), // a sign-in does not change the send path
	}
	_, serr := m.store.update(map[string]*entry{a.name: &ent})
	m.noteStoreErr(serr)
	if m.loginStoredHook != nil {
		m.loginStoredHook(a.name)
	}

	a.mu.Lock()
	// Check again under the lock that installs: a reload during the store
	// write may have changed the binding (the written entry then carries
	// the old binding, which the new one never adopts).
	if binding(a.cfg) != ent.Binding {
		a.mu.Unlock()
		return bindingChanged(a)
	}
	a.ent = ent
	a.unsaved = serr != nil && m.store.shared() // written first when the store is back
	a.gen++
	a.lastErr, a.backoff, a.nextTry, a.logged = nil, 0, time.Time{}, ""
	a.jitter = randJitter(min(m.opts.RefreshMargin, a.margin()))
	m.publishMetricsLocked(a)
	a.mu.Unlock()
	m.met.TokenRefreshes.WithLabelValues(a.name, "ok").Inc()
	a.log.Info("tokens: signed in", "user", who, "via", how)
	m.signal()
	if serr != nil {
		return fmt.Errorf("tokens: account %q: signed in as %s, but the token store could not be saved (the tokens are kept in memory until restart): %w", a.name, who, serr)
	}
	return nil
}
