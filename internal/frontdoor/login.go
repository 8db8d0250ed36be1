package frontdoor

import (
	"context"
	"errors"
	"fmt"
	"net"
	"sync"
	"time"

	"github.com/oauthbridge/oauthbridge/config"
	"github.com/oauthbridge/oauthbridge/internal/limiter"
	"github.com/oauthbridge/oauthbridge/internal/localauth"
	"github.com/oauthbridge/oauthbridge/tokens"
)

// PlaintextAllowed is the one plaintext-password rule of the three
// proxies (imapserver's and go-smtp's): a password may be taken over TLS,
// from a peer on this host, or where the administrator set
// allow_insecure_auth. isLoopback nil means localauth.IsLoopback.
func PlaintextAllowed(isTLS bool, remote net.Addr, allowInsecure bool, isLoopback func(net.Addr) bool) bool {
	if isTLS || allowInsecure {
		return true
	}
	if isLoopback == nil {
		isLoopback = localauth.IsLoopback
	}
	return isLoopback(remote)
}

// Slot is the per-account connection slot a login holds while it uses its
// upstream: a limiter key, its limit and how long to wait for a free one.
type Slot struct {
	Key  string // e.g. "mail:"+account (IMAP and POP3 share it)
	Max  int    // 0 or less: no limit
	Wait time.Duration
}

// Checker checks a local user's password (localauth.Authenticator, or a
// caller's PasswordChecker). Its errors are classified by Classify: only
// localauth.ErrInvalid (audit.ErrBadCredentials) is a wrong password.
type Checker interface {
	Check(ctx context.Context, user, password, remote string) (*config.User, error)
}

// Slots hands out per-account connection slots (limiter.Limiter). A wait
// that ends without a slot returns an error wrapping limiter.ErrLimit.
type Slots interface {
	Acquire(ctx context.Context, key string, limit int, wait time.Duration) (release func(), err error)
}

// Gate is one proxy's login pipeline: local credential -> account (one
// resolution rule) -> per-account connection slot -> token. Each step's
// failure is a *Failure, so each proxy keeps one switch from Kind to its
// wire text.
type Gate struct {
	Auth    Checker
	Tokens  tokens.Source
	Limiter Slots
	// Slot says which slot a login holds (Open); nil holds none.
	Slot func(*Login) Slot
	// TokenTimeout bounds one token request (upstream_timeout); 0: only
	// the caller's context.
	TokenTimeout func(*Login) time.Duration
}

// Login is a checked local login, resolved to its account.
//
// The account-resolution rule: the account is the user's in Config, the
// configuration snapshot the connection was accepted under (the one whose
// limits, TLS and plaintext rule the connection already uses). The password
// itself is checked against the newest user table, so a reload that removes
// a user or changes a password applies at once; a user that only the newest
// configuration knows gets a temporary failure on this connection ("reconnect"),
// never a mix of two configurations' settings.
type Login struct {
	// Name is the configured user name.
	Name    string
	User    *config.User
	Account *config.Account
	Config  *config.Config
}

// Check runs the local credential and resolves the account in cfg, the
// connection's snapshot (nil: the authenticator's own table).
func (g *Gate) Check(ctx context.Context, cfg *config.Config, user, pass, remote string) (*Login, *Failure) {
	u, err := g.Auth.Check(ctx, user, pass, remote)
	if err != nil {
		return nil, Classify(err)
	}
	if cfg != nil {
		cu := cfg.UserByName[u.Name]
		if cu == nil {
			return nil, Failuref(Temporary, "frontdoor: user %q was added by a reload after this connection was opened; the client must reconnect", u.Name)
		}
		u = cu
	}
	acct := u.Account
	if acct == nil || acct.Provider == nil { // config validation prevents this; never panic on it
		return nil, Failuref(Failing, "frontdoor: user %q has no resolved account or provider", u.Name)
	}
	return &Login{Name: u.Name, User: u, Account: acct, Config: cfg}, nil
}

// Open takes the login's connection slot (Gate.Slot) and returns the Grant
// that holds it. The caller must Release the Grant.
func (g *Gate) Open(ctx context.Context, l *Login) (*Grant, *Failure) {
	gr := &Grant{Login: l, tokens: g.Tokens, release: func() {}}
	if g.TokenTimeout != nil {
		gr.timeout = g.TokenTimeout(l)
	}
	if g.Slot == nil {
		return gr, nil
	}
	sl := g.Slot(l)
	lim := g.Limiter
	if lim == nil {
		return gr, nil
	}
	release, err := lim.Acquire(ctx, sl.Key, sl.Max, sl.Wait)
	if err != nil {
		f := &Failure{Kind: AccountBusy, Account: l.Account.Name, Max: sl.Max}
		if errors.Is(err, limiter.ErrLimit) {
			f.Class = "limit"
		} else {
			f.Kind = Temporary // the context ended (shutdown)
		}
		f.Err = fmt.Errorf("frontdoor: account %q already has max_connections = %d upstream connections; waited %s: %w",
			l.Account.Name, sl.Max, sl.Wait, err)
		return nil, f
	}
	gr.release = release
	return gr, nil
}

// Login is the whole pipeline up to the slot: Check, then Open. On success
// the login succeeded locally; the Grant carries the account and its token
// source, and the proxy continues with its upstream (or another backend).
func (g *Gate) Login(ctx context.Context, cfg *config.Config, user, pass, remote string) (*Grant, *Failure) {
	l, f := g.Check(ctx, cfg, user, pass, remote)
	if f != nil {
		return nil, f
	}
	gr, f := g.Open(ctx, l)
	if f != nil {
		return nil, f
	}
	return gr, nil
}

// Grant is a successful login holding its account's connection slot: the
// single point where a proxy learns "login succeeded, here is the account
// and its token source".
type Grant struct {
	*Login
	tokens  tokens.Source
	timeout time.Duration
	once    sync.Once
	release func()
}

// Tokens is the source of the account's tokens.
func (g *Grant) Tokens() tokens.Source { return g.tokens }

// Token returns an access token for the account; a failure says who has to
// act (NeedsLogin, Failing) or that it passes by itself (Temporary).
func (g *Grant) Token(ctx context.Context) (string, *Failure) {
	if g.tokens == nil {
		return "", Failuref(Failing, "frontdoor: no token source for account %q", g.Account.Name)
	}
	if g.timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, g.timeout)
		defer cancel()
	}
	tok, err := g.tokens.AccessToken(ctx, g.Account.Name)
	if err != nil {
		return "", TokenFailure(g.Account.Name, err)
	}
	return tok, nil
}

// Rejected tells the token source that the upstream refused tok, so the
// next Token does not return it again.
func (g *Grant) Rejected(tok string) {
	if g.tokens != nil {
		g.tokens.Rejected(g.Account.Name, tok)
	}
}

// Release gives the connection slot back; it may be called more than once.
func (g *Grant) Release() { g.once.Do(g.release) }

// Detach hands the slot's release to the caller (who must call it) and
// makes Release a no-op: for a slot that must outlive this Grant.
func (g *Grant) Detach() (release func()) {
	r := g.release
	g.once.Do(func() {})
	return r
}
