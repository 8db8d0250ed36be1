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
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

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
	// Registerer receives the token metrics (oauthbridge_token_*); nil: a
	// private registry.
	Registerer prometheus.Registerer
}

// Manager keeps every account's tokens valid, serves them to the proxies
// (it implements Source), runs the sign-in flows and persists tokens in
// the encrypted store.
type Manager struct {
	opts  Options
	met   *metrics.Metrics
	log   *slog.Logger
	now   func() time.Time
	store tokenStore
	// leaseHook, if set, is called at the steps of a shared store's lease
	// ("claimed", "redeemed", "waiting"); tests freeze a replica there.
	leaseHook func(step, account string, l *lease)
	// loginStoredHook, if set, is called by a sign-in between its store
	// write and installing the tokens (tests reload there).
	loginStoredHook func(account string)
	// sleep waits between device-code polls; tests replace it.
	sleep func(ctx context.Context, d time.Duration) error

	mu       sync.RWMutex
	cfg      *config.Config
	accounts map[string]*account

	clientsMu sync.Mutex
	clients   map[*config.Provider]*http.Client

	certs certCreds // client certificate credentials by provider (certcred.go)

	pendMu  sync.Mutex
	pending map[string]*pendingLogin

	pathMu sync.Mutex
	paths  map[string]keptPath // account -> the send path the SMTP proxy reports (sendpath.go)

	storeErrMu  sync.Mutex
	storeErr    string
	storeLogged string

	base    context.Context
	cancel  context.CancelFunc
	runMu   sync.Mutex // orders spawn against Close
	stopped bool
	wg      sync.WaitGroup
	wake    chan struct{}
	round   chan struct{} // closed when the first refresh round ended (firstround.go)
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
	graphKey string        // graphScopeKey(cfg), kept with cfg: compared on every Graph token lookup
	ent      entry         // what is (or will be) in the store
	gen      uint64        // bumped by a sign-in, an adoption or a binding change: discards stale refresh results
	inflight chan struct{} // closed when the running refresh ends; nil when none runs
	lastErr  *Error        // of the last failed refresh, nil after a success
	nextTry  time.Time     // no refresh before this (backoff, failing retry)
	backoff  time.Duration
	jitter   time.Duration // random extra refresh margin of the current token
	logged   string        // the permanent error last logged at error level
	unsaved  bool          // shared store: ent holds tokens the store has not taken yet

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
	if opts.StorePoll == 0 && cfg.Store.Shared() {
		opts.StorePoll = cfg.Store.Poll
	}
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
	met := metrics.New(opts.Registerer)
	st, disk, err := openTokenStore(cfg, opts, met)
	if err != nil {
		return nil, err
	}
	m := &Manager{
		opts:     opts,
		met:      met,
		log:      opts.Logger,
		now:      opts.Now,
		store:    st,
		sleep:    sleepCtx,
		cfg:      cfg,
		accounts: map[string]*account{},
		clients:  map[*config.Provider]*http.Client{},
		pending:  map[string]*pendingLogin{},
		wake:     make(chan struct{}, 1),
		round:    make(chan struct{}),
	}
	m.base, m.cancel = context.WithCancel(context.Background())
	for name, ac := range cfg.AccountByName {
		m.accounts[name] = m.newAccount(ac, disk[name])
	}
	m.seedPaths()
	m.publishCredentialMetrics()
	return m, nil
}

func (m *Manager) newAccount(ac *config.Account, stored *entry) *account {
	a := &account{name: ac.Name, cfg: ac, graphKey: graphScopeKey(ac), log: m.log.With("account", ac.Name)}
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
	} else if p.ServiceAccount != nil { // google: the service account acts for the mailbox
		b += "|" + p.ServiceAccount.Email + "|" + strings.ToLower(ac.Mailbox)
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

// Close stops the refresh loop and any running sign-in polls and waits for
// them. The store needs no closing: every write is complete on return.
func (m *Manager) Close() error {
	m.closed.Do(func() {
		m.runMu.Lock()
		m.stopped = true
		m.runMu.Unlock()
		m.cancel()
		m.wg.Wait()
		m.store.close()
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
