package admin

import (
	"context"
	"crypto/rand"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/oauthbridge/oauthbridge/config"
	"github.com/oauthbridge/oauthbridge/internal/localauth"
	"github.com/oauthbridge/oauthbridge/internal/logging"
	"github.com/oauthbridge/oauthbridge/internal/metrics"
	"github.com/oauthbridge/oauthbridge/tokens"
)

// Named limits and timeouts.
const (
	// DefaultCallbackTimeout bounds the code-for-token exchange behind
	// /oauth/callback.
	DefaultCallbackTimeout = time.Minute
	// DefaultDeviceLoginTimeout bounds a device-code login started through
	// the API; Entra's device codes expire after 15 minutes.
	DefaultDeviceLoginTimeout = 20 * time.Minute
	// DefaultMaxFlashBytes caps the message shown after a sign-in; it comes
	// from the query string, so anybody can craft one.
	DefaultMaxFlashBytes = 500
	// DefaultMaxBodyBytes caps POST bodies (the forms carry one token).
	DefaultMaxBodyBytes = 16 * 1024
	// CallbackPath is where Entra redirects after a browser sign-in; the
	// redirect URI registered in the app is public_url + CallbackPath.
	CallbackPath = "/oauth/callback"
	// APIRequestHeader must be present (any non-empty value) on POSTs to
	// /api/. The CLI sets it; a cross-site browser request cannot.
	APIRequestHeader = "X-OAuthBridge-Request"
)

// Tokens is what the admin listener needs from the token manager;
// *tokens.Manager implements it.
type Tokens interface {
	Status() []tokens.AccountStatus
	// BrowserLoginURL returns the authorization-code (+PKCE) URL that signs
	// account in and comes back to redirectURI; its state is bound to
	// account.
	BrowserLoginURL(account, redirectURI string) (string, error)
	// CompleteBrowserLogin validates state, redeems code and returns the
	// account the state was issued for.
	CompleteBrowserLogin(ctx context.Context, state, code string) (account string, err error)
	// StartDeviceLogin starts a device-code login; the channel delivers its
	// final result (nil on success) once.
	StartDeviceLogin(ctx context.Context, account string) (*tokens.DeviceLogin, <-chan error, error)
}

var _ Tokens = (*tokens.Manager)(nil)

// Options configure the handler. Config and Tokens are required.
type Options struct {
	Config  func() *config.Config // the current configuration; called per request, so reloads apply
	Tokens  Tokens
	Ready   func() error // nil error = ready; nil func = always ready
	Logger  *slog.Logger // nil = discard
	Version string

	// Auth tunes the Basic-auth check (cache, throttling); zero = localauth's defaults.
	Auth localauth.Options
	// Now is the clock for relative times on the status page; nil = time.Now.
	Now func() time.Time
	// Metrics is the registry served at /metrics (the daemon's, which every
	// component registers on); nil: one with the Go and process collectors
	// only.
	Metrics prometheus.Gatherer
}

func (h *handler) gatherer() prometheus.Gatherer {
	if h.opts.Metrics != nil {
		return h.opts.Metrics
	}
	return metrics.NewRegistry()
}

type handler struct {
	opts    Options
	log     *slog.Logger
	mux     *http.ServeMux
	csrfKey [32]byte
	cop     *http.CrossOriginProtection

	authMu   sync.Mutex
	auth     *localauth.Authenticator
	authUser string // user and hash auth was built for
	authHash string

	trustedMu sync.Mutex
	trusted   map[string]bool // origins already added to cop

	devMu  sync.Mutex
	device map[string]*deviceState
}

// New returns the admin listener's handler.
func New(opts Options) http.Handler {
	if opts.Logger == nil {
		opts.Logger = logging.Discard
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	h := &handler{
		opts:    opts,
		log:     opts.Logger.With("proto", "admin"),
		mux:     http.NewServeMux(),
		cop:     http.NewCrossOriginProtection(),
		trusted: map[string]bool{},
		device:  map[string]*deviceState{},
	}
	if _, err := rand.Read(h.csrfKey[:]); err != nil {
		panic("admin: no randomness: " + err.Error())
	}

	open := func(pattern string, f http.HandlerFunc) { h.mux.Handle(pattern, f) }
	protected := func(pattern string, f http.HandlerFunc) { h.mux.Handle(pattern, h.protect(f)) }

	monitored := func(pattern string, f http.HandlerFunc) { h.mux.Handle(pattern, h.monitored(f)) }

	open("GET /healthz", h.healthz)
	monitored("GET /readyz", h.readyz)
	monitored("GET /metrics", promhttp.HandlerFor(h.gatherer(), promhttp.HandlerOpts{}).ServeHTTP)
	open("GET "+CallbackPath, h.callback)
	protected("GET /{$}", h.statusPage)
	protected("POST /connect/{account}", h.connect)
	protected("GET /api/accounts", h.apiAccounts)
	protected("GET /api/accounts/{name}", h.apiAccount)
	protected("GET /api/credentials", h.apiCredentials) // credentials.go
	protected("POST /api/accounts/{name}/device-login", h.apiDeviceStart)
	protected("GET /api/accounts/{name}/device-login", h.apiDeviceResult)
	protected("POST /api/doctor", h.apiDoctor)
	return h
}

func (h *handler) config() *config.Config {
	var cfg *config.Config
	if h.opts.Config != nil {
		cfg = h.opts.Config()
	}
	if cfg == nil {
		cfg = &config.Config{}
	}
	if cfg.Admin == nil {
		c := *cfg
		c.Admin = &config.AdminBlock{}
		cfg = &c
	}
	return cfg
}

// ServeHTTP sets the headers every response carries, then routes.
func (h *handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	hd := w.Header()
	// No script, no frames, no external anything; inline <style> only.
	csp := "default-src 'none'; style-src 'unsafe-inline'; img-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
	// Chrome applies form-action to the redirect that follows a form POST, so the
	// Connect form must be allowed to end up at the identity platform.
	for _, o := range h.authorityOrigins() {
		csp += " " + o
	}
	hd.Set("Content-Security-Policy", csp)
	hd.Set("X-Frame-Options", "DENY")
	hd.Set("X-Content-Type-Options", "nosniff")
	// The callback URL carries an authorization code; never leak it in a Referer.
	hd.Set("Referrer-Policy", "no-referrer")
	hd.Set("Cache-Control", "no-store")
	h.mux.ServeHTTP(w, r)
}

// authorityOrigins lists the scheme://host of every configured identity
// platform.
func (h *handler) authorityOrigins() []string {
	var out []string
	seen := map[string]bool{}
	for _, p := range h.config().Providers {
		u, err := url.Parse(p.Authority)
		if err != nil || u.Host == "" || (u.Scheme != "https" && u.Scheme != "http") {
			continue
		}
		o := u.Scheme + "://" + u.Host
		if !seen[o] {
			seen[o] = true
			out = append(out, o)
		}
	}
	return out
}

func (h *handler) healthz(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Write([]byte("ok\n"))
}

// readyz answers 200 "ready" when the daemon is serving and no delegated
// account needs a sign-in. A configured account nobody has signed in yet
// (or whose grant was revoked) cannot serve its legacy clients, and nothing
// but a person fixes that, so the bridge is not ready: 503 with one line
// per account naming the command that fixes it. Accounts whose refreshes
// fail for a while (failing) do not change readiness: retrying is the
// bridge's job, and their state is on the status page and in the metrics.
func (h *handler) readyz(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	if h.opts.Ready != nil {
		if err := h.opts.Ready(); err != nil {
			w.WriteHeader(http.StatusServiceUnavailable)
			w.Write([]byte("not ready: " + err.Error() + "\n"))
			return
		}
	}
	var reasons []string
	for _, s := range h.opts.Tokens.Status() {
		if s.State == tokens.StateNeedsLogin {
			reasons = append(reasons, fmt.Sprintf("not ready: account %s needs login: run 'oauthbridge login %s'", s.Account, s.Account))
		}
	}
	if len(reasons) > 0 {
		sort.Strings(reasons)
		w.WriteHeader(http.StatusServiceUnavailable)
		w.Write([]byte(strings.Join(reasons, "\n") + "\n"))
		return
	}
	w.Write([]byte("ready\n"))
}

// remoteIP is the client address of r without its port.
func remoteIP(r *http.Request) string {
	if host, _, err := net.SplitHostPort(r.RemoteAddr); err == nil {
		return host
	}
	return r.RemoteAddr
}

// hostAllowed reports whether the Host header of an unauthenticated
// request names this listener: a loopback address, localhost, or the
// public_url host. Anything else is a DNS-rebinding attempt.
func hostAllowed(cfg *config.Config, host string) bool {
	if u, err := url.Parse(cfg.Admin.PublicURL); err == nil && u.Host != "" && strings.EqualFold(u.Host, host) {
		return true
	}
	if strings.EqualFold(host, cfg.Admin.Listen) {
		return true
	}
	name := host
	if hn, _, err := net.SplitHostPort(host); err == nil {
		name = hn
	}
	name = strings.TrimSuffix(strings.TrimPrefix(name, "["), "]")
	if strings.EqualFold(name, "localhost") {
		return true
	}
	ip := net.ParseIP(name)
	return ip != nil && ip.IsLoopback()
}
