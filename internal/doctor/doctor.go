// Package doctor runs every check an account needs against the real
// upstream and says, for each failure, what it means and the exact command
// that fixes it: `oauthbridge doctor [ACCOUNT]` and the admin API's
// POST /api/doctor.
//
// The checks, in order, each pass, fail or skip (with why), and a failure
// never stops the later ones:
//
//	config         the account's configuration and secrets
//	reach          the identity platform: DNS, TLS, clock skew against its Date header
//	token-outlook  an Exchange Online token (IMAP, POP3, SMTP)
//	token-graph    a Microsoft Graph token (send_via = "graph" or "auto")
//	imap           AUTHENTICATE XOAUTH2 and SELECT INBOX
//	pop3           AUTH XOAUTH2 and STAT
//	smtp           STARTTLS and AUTH XOAUTH2, nothing sent
//	graph          send_via = "graph" or "auto": read the Drafts folder through Graph, nothing sent
//	send-as        MAIL FROM:<send_as address> then RSET, nothing sent
//	headroom       the configured connection caps against Exchange's per-mailbox limits
//
// Tokens come from a Tokens (the token manager): the daemon's own when the
// checks run inside it, so that doctor never redeems a refresh token behind
// the running daemon's back. doctor speaks IMAP, POP3 and SMTP itself (the
// proxies never speak OAuth, tokens never speaks IMAP). No token and no
// secret is ever put in a Report.
package doctor

import (
	"context"
	"net"
	"net/http"
	"sort"
	"strings"
	"time"

	"github.com/oauthbridge/oauthbridge/config"
	"github.com/oauthbridge/oauthbridge/tokens"
)

// Named limits.
const (
	// DefaultCheckTimeout bounds one check (a dial, a login, a token).
	DefaultCheckTimeout = 15 * time.Second
	// DefaultMaxClockSkew: a local clock further than this from the identity
	// platform's is a failure (tokens carry nbf/exp; Kerberos and most
	// token validators allow 5 minutes).
	DefaultMaxClockSkew = 5 * time.Minute
	// ExchangeMailboxConnections is Exchange Online's concurrent IMAP (and,
	// separately, POP3) connection limit per mailbox (Exchange Online
	// throttling FAQ); on-premises Exchange defaults to 16.
	ExchangeMailboxConnections = 20
	// ExchangeOnPremConnections is on-premises Exchange's default
	// MaxConnectionsPerUser, which some tenants are reported to hit.
	ExchangeOnPremConnections = 16
	// ExchangeSMTPConnections is Exchange Online's limit of concurrent SMTP
	// AUTH submissions per mailbox ("432 4.3.2 Concurrent connections limit
	// exceeded").
	ExchangeSMTPConnections = 3
)

// Status is a check's result.
type Status string

const (
	Pass Status = "pass"
	Fail Status = "fail"
	Skip Status = "skip"
)

// Check is one line of the report.
type Check struct {
	ID     string `json:"id"`     // config, reach, token-outlook, token-graph, imap, pop3, smtp, graph, send-as, headroom
	Name   string `json:"name"`   // what was checked, for people
	Status Status `json:"status"` // pass, fail, skip
	// Detail says what happened (on a skip: why it did not run).
	Detail string `json:"detail"`
	// Upstream is the server's or identity platform's reply, verbatim.
	Upstream string `json:"upstream,omitempty"`
	AADSTS   int    `json:"aadsts,omitempty"`
	// Meaning and Fix explain a failure: Fix lines are commands (PowerShell,
	// a consent URL, an oauthbridge command) or a portal path, with the
	// configuration's real names filled in.
	Meaning string   `json:"meaning,omitempty"`
	Fix     []string `json:"fix,omitempty"`
}

// AccountReport is the result of every check of one account.
type AccountReport struct {
	Account  string  `json:"account"`
	Mailbox  string  `json:"mailbox"`
	Flow     string  `json:"flow"`
	Delegate string  `json:"delegate,omitempty"`
	SendVia  string  `json:"send_via"`
	OK       bool    `json:"ok"` // no check failed
	Checks   []Check `json:"checks"`
}

// Report is the result of a doctor run: the -json output and the body of
// POST /api/doctor.
type Report struct {
	// Source says where the checks ran: "daemon" (inside the running
	// service, with its tokens) or "local" (this process, with the token
	// store).
	Source   string          `json:"source"`
	OK       bool            `json:"ok"` // every check of every account passed or was skipped
	Started  time.Time       `json:"started"`
	Accounts []AccountReport `json:"accounts"`
}

// Tokens hands out access tokens per resource; *tokens.Manager implements
// it.
type Tokens interface {
	For(r tokens.Resource) tokens.Source
}

var _ Tokens = (*tokens.Manager)(nil)

// Options configure Run. Tokens is required unless SecretsError says the
// secrets are missing.
type Options struct {
	Tokens Tokens
	// Source is copied into the report ("daemon" or "local").
	Source string
	// SecretsError, if not nil, is why the configuration's secrets could
	// not be read: the config check fails with it and nothing needing a
	// token runs.
	SecretsError error
	CheckTimeout time.Duration // default DefaultCheckTimeout
	MaxClockSkew time.Duration // default DefaultMaxClockSkew
	Now          func() time.Time
	// Resolver resolves host names; nil = net.DefaultResolver.
	Resolver *net.Resolver
	// HTTPClient, if set, is used for the identity platform and Graph;
	// nil = a client trusting the provider's RootCAs.
	HTTPClient *http.Client
}

// Run runs every check of the named accounts (all accounts, sorted by name,
// when names is empty). Unknown names are reported as a failed config check.
func Run(ctx context.Context, cfg *config.Config, names []string, opts Options) *Report {
	if opts.CheckTimeout <= 0 {
		opts.CheckTimeout = DefaultCheckTimeout
	}
	if opts.MaxClockSkew <= 0 {
		opts.MaxClockSkew = DefaultMaxClockSkew
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.Resolver == nil {
		opts.Resolver = net.DefaultResolver
	}
	if len(names) == 0 {
		for n := range cfg.AccountByName {
			names = append(names, n)
		}
		sort.Strings(names)
	}
	rep := &Report{Source: opts.Source, OK: true, Started: opts.Now().UTC()}
	for _, n := range names {
		ar := runAccount(ctx, cfg, n, &opts)
		rep.OK = rep.OK && ar.OK
		rep.Accounts = append(rep.Accounts, ar)
	}
	return rep
}

// run is the state of one account's checks.
type run struct {
	ctx    context.Context
	cfg    *config.Config
	a      *config.Account
	p      *config.Provider
	opts   *Options
	checks []Check

	outlook, graph string // tokens obtained (never reported)
	imapDenied     bool   // Exchange refused the mailbox over IMAP although the token was issued
	popDenied      bool
	smtpOK         *smtpSession // an authenticated SMTP session for send-as, closed at the end
	hc             *http.Client // the account's HTTPS client (httpClient), idle connections closed at the end
}

func runAccount(ctx context.Context, cfg *config.Config, name string, opts *Options) AccountReport {
	a := cfg.AccountByName[name]
	if a == nil {
		var known []string
		for n := range cfg.AccountByName {
			known = append(known, n)
		}
		sort.Strings(known)
		return AccountReport{Account: name, OK: false, Checks: []Check{{
			ID: "config", Name: "configuration", Status: Fail,
			Detail:  "no account " + quote(name) + " in " + cfg.Path,
			Meaning: "the account name given is not an account block of this configuration",
			Fix:     []string{"use one of: " + strings.Join(known, ", ")},
		}}}
	}
	r := &run{ctx: ctx, cfg: cfg, a: a, p: a.Provider, opts: opts}
	sendVia := a.SendVia
	if sendVia == "" {
		sendVia = config.SendViaSMTP
	}
	r.checkConfig()
	r.checkReach()
	r.checkTokens()
	r.checkIMAP()
	r.checkPOP3()
	r.explainDenied()
	r.checkSMTP()
	r.checkGraph()
	r.checkSendAs()
	r.checkHeadroom()
	if r.smtpOK != nil {
		r.smtpOK.close()
	}
	if r.hc != nil {
		r.hc.CloseIdleConnections()
	}
	ar := AccountReport{Account: a.Name, Mailbox: a.Mailbox, Flow: a.Flow, SendVia: sendVia, OK: true, Checks: r.checks}
	if a.Flow != config.FlowApp {
		ar.Delegate = a.LoginHint()
	}
	for _, c := range r.checks {
		if c.Status == Fail {
			ar.OK = false
		}
	}
	return ar
}

func (r *run) add(c Check) int {
	r.checks = append(r.checks, c)
	return len(r.checks) - 1
}

// checkCtx is the context of one check.
func (r *run) checkCtx() (context.Context, context.CancelFunc) {
	return context.WithTimeout(r.ctx, r.opts.CheckTimeout)
}

func quote(s string) string { return "\"" + s + "\"" }

// identity is who Exchange sees behind the token: the signed-in person of
// a delegated account, the app's service principal for the app flow.
func (r *run) identity() string {
	if r.a.Flow == config.FlowApp {
		return "the service principal of app " + r.p.ClientID
	}
	return r.a.LoginHint()
}

// needsFullAccess: the token's identity is not the mailbox itself, so
// Exchange requires FullAccess on it.
func (r *run) needsFullAccess() bool {
	return r.a.Flow == config.FlowApp || !strings.EqualFold(r.a.LoginHint(), r.a.Mailbox)
}

func (r *run) sendsSMTP() bool { return r.a.SendVia != config.SendViaGraph }
