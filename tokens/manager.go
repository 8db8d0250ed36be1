package tokens

import (
	"cmp"
	"context"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"log/slog"
	mrand "math/rand/v2"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/oauthbridge/oauthbridge/config"
	"github.com/oauthbridge/oauthbridge/internal/metrics"
)

// Named defaults of Options.
const (
	// DefaultRefreshMargin: background refresh starts this long before the
	// access token expires (plus jitter), clamped to a quarter of the
	// token's lifetime for short-lived tokens.
	DefaultRefreshMargin = 10 * time.Minute
	// DefaultIdleRefresh: an idle delegated account is refreshed at least
	// this often, so its refresh token never reaches Entra's 90-day
	// inactivity limit (AADSTS700082).
	DefaultIdleRefresh = 72 * time.Hour
	// DefaultSafetyMargin: a cached access token is not handed out when it
	// expires within this margin (clamped to a tenth of its lifetime), so
	// it does not expire in the middle of an upstream login.
	DefaultSafetyMargin = time.Minute
	// DefaultRequestTimeout bounds one request to the token endpoint.
	DefaultRequestTimeout = 30 * time.Second
	// DefaultRetryMin and DefaultRetryMax bound the exponential backoff
	// after temporary failures (network, 5xx, 429).
	DefaultRetryMin = 2 * time.Second
	DefaultRetryMax = 5 * time.Minute
	// DefaultFailingRetry: a configuration error (bad secret, missing
	// consent) is retried this often in the background; a reload retries
	// at once.
	DefaultFailingRetry = 15 * time.Minute
	// DefaultStorePoll: how often the daemon checks the store file for
	// sign-ins written by another process (`oauthbridge login`).
	DefaultStorePoll = 5 * time.Second
	// DefaultBrowserLoginTTL: how long a browser sign-in state is accepted
	// (Entra's authorization codes live about 10 minutes too).
	DefaultBrowserLoginTTL = 10 * time.Minute
	// maxPendingBrowserLogins bounds unfinished browser sign-ins.
	maxPendingBrowserLogins = 256
	// defaultTokenLifetime is assumed when the endpoint sends no expires_in.
	defaultTokenLifetime = time.Hour
)

// Options configure a Manager. All fields are optional.
type Options struct {
	Logger *slog.Logger
	// HTTPClient talks to the identity platform. Nil: a client with a
	// RequestTimeout timeout whose TLS roots are the provider's RootCAs.
	HTTPClient *http.Client
	// Now is the clock; nil means time.Now. Tests use a fake clock.
	Now func() time.Time
	// RefreshMargin, IdleRefresh, SafetyMargin, RequestTimeout, RetryMin,
	// RetryMax, FailingRetry, StorePoll: see the Default* constants.
	RefreshMargin  time.Duration
	IdleRefresh    time.Duration
	SafetyMargin   time.Duration
	RequestTimeout time.Duration
	RetryMin       time.Duration
	RetryMax       time.Duration
	FailingRetry   time.Duration
	StorePoll      time.Duration
	// KeyFile holds the store's 32-byte key. Default: the systemd
	// credential token-store-key when present, else state_dir/key,
	// created on first use. A systemd credential path may be given.
	KeyFile string
	// Credential, if set, returns the client credential for a provider
	// (e.g. a certificate). Nil or a nil result: the provider's
	// client_secret, or none for a public client.
	Credential func(p *config.Provider) ClientCredential
}

// Manager keeps every account's tokens valid, serves them to the proxies
// (it implements Source), runs the sign-in flows and persists tokens in
// the encrypted store.
type Manager struct {
	opts  Options
	log   *slog.Logger
	now   func() time.Time
	store *store
	// sleep waits between device-code polls; tests replace it.
	sleep func(ctx context.Context, d time.Duration) error

	mu       sync.RWMutex
	cfg      *config.Config
	accounts map[string]*account

	clientsMu sync.Mutex
	clients   map[*config.Provider]*http.Client

	pendMu  sync.Mutex
	pending map[string]*pendingLogin

	pathMu sync.Mutex
	paths  map[string]sendPath // account -> the send path the SMTP proxy reports

	storeErrMu  sync.Mutex
	storeErr    string
	storeLogged string

	base    context.Context
	cancel  context.CancelFunc
	runMu   sync.Mutex // orders spawn against Close
	stopped bool
	wg      sync.WaitGroup
	wake    chan struct{}
	started sync.Once
	closed  sync.Once
}

var _ Source = (*Manager)(nil)

// account is one configured account's live state. mu guards every field.
type account struct {
	name string
	log  *slog.Logger

	mu       sync.Mutex
	cfg      *config.Account
	ent      entry         // what is (or will be) in the store
	gen      uint64        // bumped by a sign-in, an adoption or a binding change: discards stale refresh results
	inflight chan struct{} // closed when the running refresh ends; nil when none runs
	lastErr  *Error        // of the last failed refresh, nil after a success
	nextTry  time.Time     // no refresh before this (backoff, failing retry)
	backoff  time.Duration
	jitter   time.Duration // random extra refresh margin of the current token
	logged   string        // the permanent error last logged at error level

	// grantMu serialises every redemption of the refresh token (Exchange
	// and Graph): each uses the newest one and stores a rotated one before
	// the next can start.
	grantMu sync.Mutex
	graph   graphState // the Graph token's refresh state (graph.go)
}

// NewManager opens (or creates) the token store in cfg.StateDir and builds
// the accounts of cfg. A damaged store, a wrong key or a key/store file
// readable by others is an error that says what to do; nothing is reset.
func NewManager(cfg *config.Config, opts Options) (*Manager, error) {
	if cfg == nil {
		return nil, errors.New("tokens: nil config")
	}
	opts.RefreshMargin = cmp.Or(opts.RefreshMargin, DefaultRefreshMargin)
	opts.IdleRefresh = cmp.Or(opts.IdleRefresh, DefaultIdleRefresh)
	opts.SafetyMargin = cmp.Or(opts.SafetyMargin, DefaultSafetyMargin)
	opts.RequestTimeout = cmp.Or(opts.RequestTimeout, DefaultRequestTimeout)
	opts.RetryMin = cmp.Or(opts.RetryMin, DefaultRetryMin)
	opts.RetryMax = max(cmp.Or(opts.RetryMax, DefaultRetryMax), opts.RetryMin)
	opts.FailingRetry = cmp.Or(opts.FailingRetry, DefaultFailingRetry)
	opts.StorePoll = cmp.Or(opts.StorePoll, DefaultStorePoll)
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.KeyFile == "" {
		opts.KeyFile = credentialKeyFile()
	}
	st, disk, err := openStore(cfg.StateDir, opts.KeyFile)
	if err != nil {
		return nil, err
	}
	m := &Manager{
		opts:     opts,
		log:      opts.Logger,
		now:      opts.Now,
		store:    st,
		sleep:    sleepCtx,
		cfg:      cfg,
		accounts: map[string]*account{},
		clients:  map[*config.Provider]*http.Client{},
		pending:  map[string]*pendingLogin{},
		wake:     make(chan struct{}, 1),
	}
	m.base, m.cancel = context.WithCancel(context.Background())
	for name, ac := range cfg.AccountByName {
		m.accounts[name] = m.newAccount(ac, disk[name])
	}
	return m, nil
}

func (m *Manager) newAccount(ac *config.Account, stored *entry) *account {
	a := &account{name: ac.Name, cfg: ac, log: m.log.With("account", ac.Name)}
	a.ent = entry{State: StateUnknown, Binding: binding(ac)}
	if stored != nil {
		if stored.Binding == a.ent.Binding {
			a.ent = *stored
			a.jitter = randJitter(a.margin())
			if stored.ErrorKind != 0 && stored.LastError != "" {
				a.lastErr = a.errorFromEntry()
			}
		} else {
			a.log.Warn("tokens: the stored token belongs to another app registration, flow or person; it is ignored",
				"fix", fmt.Sprintf("run 'oauthbridge login %s'", ac.Name))
		}
	}
	m.publishMetrics(a)
	return a
}

// binding names what an account's tokens are bound to: the flow, the app
// registration and, for delegated accounts, the person who signs in.
func binding(ac *config.Account) string {
	var p config.Provider
	if ac.Provider != nil {
		p = *ac.Provider
	}
	b := ac.Flow + "|" + p.Authority + "|" + strings.ToLower(p.Tenant) + "|" + p.ClientID
	if ac.Flow != config.FlowApp {
		b += "|" + strings.ToLower(ac.LoginHint())
	}
	return b
}

func sleepCtx(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

func randomID(n int) string {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		panic("tokens: crypto/rand failed: " + err.Error())
	}
	return base64.RawURLEncoding.EncodeToString(b)
}

func randJitter(margin time.Duration) time.Duration {
	if margin <= 4 {
		return 0
	}
	return mrand.N(margin / 4)
}

func (m *Manager) account(name string) *account {
	m.mu.RLock()
	defer m.mu.RUnlock()
	return m.accounts[name]
}

func (m *Manager) signal() {
	select {
	case m.wake <- struct{}{}:
	default:
	}
}

// lifetime is the current access token's total validity.
func (a *account) lifetime() time.Duration {
	if a.ent.Issued.IsZero() || !a.ent.Expiry.After(a.ent.Issued) {
		return defaultTokenLifetime
	}
	return a.ent.Expiry.Sub(a.ent.Issued)
}

func (a *account) margin() time.Duration { return a.lifetime() / 4 }

// usable reports whether the cached access token may be handed out now.
func (m *Manager) usable(a *account, now time.Time) bool {
	if a.ent.AccessToken == "" {
		return false
	}
	safety := min(m.opts.SafetyMargin, a.lifetime()/10)
	return now.Before(a.ent.Expiry.Add(-safety))
}

// refreshDue is when the background refresh of the current token is due
// (zero: never). Callers hold a.mu.
func (m *Manager) refreshDue(a *account, now time.Time) time.Time {
	if a.inflight != nil || a.ent.State == StateNeedsLogin {
		return time.Time{}
	}
	delegated := a.cfg.Flow != config.FlowApp
	if delegated && a.ent.RefreshToken == "" {
		return time.Time{}
	}
	if a.lastErr != nil && a.nextTry.After(now) {
		return a.nextTry
	}
	if a.ent.AccessToken == "" {
		return now
	}
	margin := min(m.opts.RefreshMargin, a.margin())
	due := a.ent.Expiry.Add(-margin - a.jitter)
	if delegated && !a.ent.LastRefresh.IsZero() {
		if idle := a.ent.LastRefresh.Add(m.opts.IdleRefresh); idle.Before(due) {
			due = idle
		}
	}
	if a.lastErr != nil && a.nextTry.After(due) {
		due = a.nextTry
	}
	return due
}

// blocked returns the error to give without a token request: the account
// needs a sign-in, or it is backing off after a failure. Callers hold a.mu.
func (m *Manager) blocked(a *account, now time.Time) *Error {
	if a.cfg.Flow != config.FlowApp && (a.ent.RefreshToken == "" || a.ent.State == StateNeedsLogin) {
		if a.lastErr != nil && a.lastErr.Kind == NeedsLogin {
			return a.lastErr
		}
		return &Error{Account: a.name, Kind: NeedsLogin, Reason: "nobody has signed in for this account yet",
			Fix: fmt.Sprintf("run 'oauthbridge login %s' and sign in as %s", a.name, a.cfg.LoginHint())}
	}
	if a.inflight == nil && a.lastErr != nil && a.nextTry.After(now) {
		return a.lastErr
	}
	return nil
}

// AccessToken implements Source. A cached token that is valid (minus a
// small safety margin) is returned without any token request. Otherwise
// the caller joins the account's single refresh and waits for it at most
// until ctx is done; a later caller gets the result.
func (m *Manager) AccessToken(ctx context.Context, name string) (string, error) {
	a := m.account(name)
	if a == nil {
		return "", &Error{Account: name, Kind: Failing, Reason: "no such account",
			Fix: "add an account block with this name to the configuration, or fix the user's account attribute"}
	}
	a.mu.Lock()
	now := m.now()
	if m.usable(a, now) {
		tok := a.ent.AccessToken
		if due := m.refreshDue(a, now); !due.IsZero() && !due.After(now) {
			m.startRefresh(a) // ahead of expiry, in the background
		}
		a.mu.Unlock()
		return tok, nil
	}
	if err := m.blocked(a, now); err != nil {
		a.mu.Unlock()
		return "", err
	}
	done := m.startRefresh(a)
	a.mu.Unlock()

	select {
	case <-done:
	case <-ctx.Done():
		return "", &Error{Account: name, Kind: Temporary, Reason: "the token endpoint did not answer in time",
			Fix: "none if it recovers; otherwise check the network path to " + authorityOf(a.cfg), Err: ctx.Err()}
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if m.usable(a, m.now()) {
		return a.ent.AccessToken, nil
	}
	if a.lastErr != nil {
		return "", a.lastErr
	}
	if err := m.blocked(a, m.now()); err != nil {
		return "", err
	}
	if m.base.Err() != nil {
		return "", &Error{Account: name, Kind: Temporary, Reason: "oauthbridge is shutting down", Fix: "none"}
	}
	return "", &Error{Account: name, Kind: Temporary, Reason: "no valid access token after a refresh", Fix: fixBackOff}
}

// Rejected implements Source: the upstream server refused tok, so it is
// dropped and the next AccessToken refreshes.
func (m *Manager) Rejected(name, tok string) {
	a := m.account(name)
	if a == nil || tok == "" {
		return
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.ent.AccessToken == tok {
		a.ent.AccessToken = ""
		a.log.Info("tokens: upstream rejected the access token; the next login refreshes it")
	}
}

// startRefresh starts the account's refresh unless one runs already and
// returns a channel closed when it ends. Callers hold a.mu.
func (m *Manager) startRefresh(a *account) chan struct{} {
	if a.inflight != nil {
		return a.inflight
	}
	done := make(chan struct{})
	a.inflight = done
	gen, ac, rt := a.gen, a.cfg, a.ent.RefreshToken
	if !m.spawn(func() { m.refresh(a, done, gen, ac, rt) }) {
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
func (m *Manager) refresh(a *account, done chan struct{}, gen uint64, ac *config.Account, rt string) {
	defer m.signal()
	a.grantMu.Lock()
	defer a.grantMu.Unlock()
	a.mu.Lock()
	rt = a.ent.RefreshToken // the newest: a Graph redemption may have rotated it
	a.mu.Unlock()
	p := ac.Provider
	var form url.Values
	if ac.Flow == config.FlowApp {
		form = url.Values{"grant_type": {"client_credentials"}, "scope": {p.AppScope}}
	} else {
		form = url.Values{"grant_type": {"refresh_token"}, "refresh_token": {rt},
			"scope": {strings.Join(DelegatedScopes(p), " ")}}
	}
	tr, err := m.tokenRequest(m.base, p, form)
	now := m.now()
	if err != nil {
		m.refreshFailed(a, done, gen, ac, err, now)
		return
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
	metrics.TokenRefreshes.WithLabelValues(a.name, "ok").Inc()
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
	a.lastErr, a.backoff, a.nextTry, a.logged = nil, 0, time.Time{}, ""
	a.jitter = randJitter(min(m.opts.RefreshMargin, a.margin()))
	a.log.Debug("tokens: access token refreshed", "expires", ent.Expiry)
	m.publishMetricsLocked(a)
}

func (m *Manager) refreshFailed(a *account, done chan struct{}, gen uint64, ac *config.Account, err error, now time.Time) {
	te := classify(ac, err)
	metrics.TokenRefreshes.WithLabelValues(a.name, te.Kind.String()).Inc()
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
		next := m.tick()
		timer.Reset(max(min(next, m.opts.StorePoll-time.Since(lastPoll)), 10*time.Millisecond))
	}
}

// tick starts every refresh that is due and returns the time until the
// next one.
func (m *Manager) tick() time.Duration {
	m.mu.RLock()
	accts := make([]*account, 0, len(m.accounts))
	for _, a := range m.accounts {
		accts = append(accts, a)
	}
	m.mu.RUnlock()
	next := time.Hour
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
		m.publishMetricsLocked(a)
		a.mu.Unlock()
	}
	return next
}

// pollStore adopts sign-ins that another process wrote to the store.
func (m *Manager) pollStore() {
	st := m.store.stamp()
	m.store.mu.Lock()
	changed := st != m.store.last
	m.store.mu.Unlock()
	if !changed {
		return
	}
	disk, stamp, err := m.store.read()
	if err != nil {
		m.log.Warn("tokens: cannot read the token store for new sign-ins", "error", err)
		return
	}
	m.store.mu.Lock()
	m.store.last = stamp
	m.store.mu.Unlock()
	m.adoptFrom(disk)
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
		if d.Binding == binding(a.cfg) && d.LoginID != "" && d.LoginAt.After(a.ent.LoginAt) {
			m.adoptLocked(a, d, "a sign-in made by another oauthbridge process")
		}
		a.mu.Unlock()
	}
}

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
	disk, _, err := m.store.read()
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
		a.cfg = ac
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
		m.publishMetricsLocked(a)
		a.mu.Unlock()
	}
	for name := range m.accounts {
		if _, ok := cfg.AccountByName[name]; !ok {
			delete(m.accounts, name)
			metrics.TokenExpiry.DeleteLabelValues(name)
			for _, s := range metrics.AccountStates {
				metrics.AccountState.DeleteLabelValues(name, s)
			}
			m.log.Info("tokens: account removed", "account", name)
		}
	}
	m.cfg = cfg
	m.mu.Unlock()
	m.clientsMu.Lock()
	m.clients = map[*config.Provider]*http.Client{}
	m.clientsMu.Unlock()
	m.adoptFrom(disk)
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
	metrics.SetAccountState(a.name, string(m.state(a, now)))
	if !a.ent.Expiry.IsZero() {
		metrics.TokenExpiry.WithLabelValues(a.name).Set(a.ent.Expiry.Sub(now).Seconds())
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
		if storeErr != "" && st.LastError == "" {
			st.LastError = "cannot save the token store: " + storeErr
			st.Fix = "check free space and permissions of " + m.store.dir + "; tokens are kept in memory until then"
		}
		a.mu.Unlock()
		out = append(out, st)
	}
	slices.SortFunc(out, func(x, y AccountStatus) int { return strings.Compare(x.Account, y.Account) })
	return out
}

// Close stops the refresh loop and any running sign-in polls and waits for
// them. The store needs no closing: every write is complete on return.
func (m *Manager) Close() error {
	m.closed.Do(func() {
		m.runMu.Lock()
		m.stopped = true
		m.runMu.Unlock()
		m.cancel()
		m.wg.Wait()
	})
	return nil
}

// CredentialKeyName is the systemd credential that, when present, holds the
// store key instead of state_dir/key (LoadCredential=token-store-key:/path or
// LoadCredentialEncrypted= with systemd-creds), so the key need not sit next
// to the store it protects.
const CredentialKeyName = "token-store-key"

func credentialKeyFile() string {
	dir := os.Getenv("CREDENTIALS_DIRECTORY")
	if dir == "" {
		return ""
	}
	p := filepath.Join(dir, CredentialKeyName)
	if _, err := os.Stat(p); err != nil {
		return ""
	}
	return p
}
