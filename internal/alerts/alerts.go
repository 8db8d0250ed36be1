package alerts

import (
	"context"
	"errors"
	"log/slog"
	"net/http"
	"os"
	"sync"
	"time"

	"github.com/oauthbridge/oauthbridge/audit"
	"github.com/oauthbridge/oauthbridge/config"
	"github.com/oauthbridge/oauthbridge/tokens"
)

// Delivery defaults. A webhook answers in milliseconds; ten seconds cover a
// slow proxy without letting a hanging receiver hold the queue for long.
// Eight attempts from 5 s doubling to at most 5 min span about 12 minutes:
// a receiver restarting or a short network outage does not lose an alert.
// Sending mail goes through Microsoft 365 like any message (the SMTP
// proxy's upstream timeout applies inside); two minutes bound one attempt.
const (
	DefaultWebhookTimeout = 10 * time.Second
	DefaultEmailTimeout   = 2 * time.Minute
	DefaultRetryMin       = 5 * time.Second
	DefaultRetryMax       = 5 * time.Minute
	DefaultMaxAttempts    = 8
	DefaultQueueSize      = 256 // per channel; beyond it alerts are dropped (and logged)
)

// Condition names what is wrong. They are the condition field of the
// webhook payload and, CamelCased with an Oauthbridge prefix, its
// alertname label.
type Condition string

const (
	NeedsLogin            Condition = "needs_login"
	RefreshFailing        Condition = "refresh_failing"
	CredentialExpiring    Condition = "credential_expiring"
	GraphFallback         Condition = "graph_fallback"
	UpstreamLoginFailures Condition = "upstream_login_failures"
)

// alertName is the alertname label of a condition, the same name as the
// matching Prometheus rule in contrib/prometheus/alerts.yml.
func (c Condition) alertName() string {
	switch c {
	case NeedsLogin:
		return "OauthbridgeAccountNeedsLogin"
	case RefreshFailing:
		return "OauthbridgeTokenRefreshFailing"
	case CredentialExpiring:
		return "OauthbridgeCredentialExpiring"
	case GraphFallback:
		return "OauthbridgeSendingViaGraph"
	case UpstreamLoginFailures:
		return "OauthbridgeUpstreamLoginsFailing"
	}
	return "Oauthbridge"
}

func (c Condition) severity() string {
	switch c {
	case CredentialExpiring, GraphFallback:
		return "warning"
	}
	return "critical"
}

// State is firing (the condition started) or resolved (it cleared).
type State string

const (
	Firing   State = "firing"
	Resolved State = "resolved"
)

// Alert is one announcement: a condition of one subject that started or
// cleared. It never contains a token or a secret.
type Alert struct {
	Key        string    `json:"key"` // condition/subject: stable across firing and resolved
	Condition  Condition `json:"condition"`
	State      State     `json:"state"`
	Severity   string    `json:"severity"`
	Account    string    `json:"account,omitempty"`
	Mailbox    string    `json:"mailbox,omitempty"`
	Provider   string    `json:"provider,omitempty"`
	Credential string    `json:"credential,omitempty"` // "secret" or "certificate NAME"
	Message    string    `json:"message"`
	Fix        string    `json:"fix,omitempty"`
	StartsAt   time.Time `json:"starts_at"`
	EndsAt     time.Time `json:"ends_at,omitzero"`
}

// CredentialExpiry is one client credential of a provider and when it
// expires (the fields of tokens' credential list: certificates come from
// there, client secrets from client_secret_expires).
type CredentialExpiry struct {
	Provider string
	Kind     string // "certificate" or "secret"
	Name     string
	NotAfter time.Time
	InUse    bool
}

// Sender submits a message through one of the bridge's accounts (the SMTP
// proxy's Send: XOAUTH2 submission or Microsoft Graph, as the account's
// clients' mail goes). It returns nil only when Microsoft 365 accepted it.
type Sender interface {
	Send(ctx context.Context, acct *config.Account, from string, rcpts []string, msg []byte) error
}

// Event is what the Engine reports to Options.OnEvent (tests synchronise
// on it). Kinds: "firing" and "resolved" when a condition changes,
// "evaluated" after each evaluation (its firing and resolved events come
// before it), "delivered", "retry", "failed", "dropped" and "skipped" per
// channel.
type Event struct {
	Kind    string
	Channel string // "webhook" or "email"; "" for firing/resolved
	Alert   Alert
	Attempt int
	Err     error
}

// Options configure an Engine. Config and Status are required.
type Options struct {
	Config func() *config.Config
	Status func() []tokens.AccountStatus
	// Credentials lists certificate (and other) credentials with their
	// expiry; nil: only client_secret_expires of the providers.
	Credentials func() []CredentialExpiry
	// Sender sends the alert mail; nil: email_to is not served (logged).
	Sender Sender
	// HTTPClient posts to the webhook; nil: a client of its own.
	HTTPClient *http.Client
	Now        func() time.Time // nil: time.Now
	Logger     *slog.Logger
	// Delivery timings; zero: the Default* constants.
	WebhookTimeout time.Duration
	EmailTimeout   time.Duration
	RetryMin       time.Duration
	RetryMax       time.Duration
	MaxAttempts    int
	QueueSize      int
	// OnEvent, if set, is called for each Event (from the evaluating or
	// the delivering goroutine; it must not block).
	OnEvent func(Event)
	// Hostname names this bridge in messages; "": os.Hostname.
	Hostname string
	// StateFile keeps the firing alerts across restarts (the daemon:
	// state_dir/alerts.json); "": kept in memory only.
	StateFile string
	// TokensSettled, if set, is closed when the token manager has ended
	// its first refresh round (tokens.Manager.FirstRound). The engine
	// evaluates at once then, so a token that is dead at (re)start is
	// announced within seconds rather than one check_interval later.
	// Until then it does not evaluate (a Kick waits for it): Status would
	// still show the tokens as stored before the restart, which could
	// announce a false alarm or resolve a restored alert that still
	// holds. If the round takes longer than check_interval the engine
	// evaluates then, as without it. Nil: the first evaluation is one
	// check_interval after Start.
	TokensSettled <-chan struct{}
}

// Engine evaluates the alert conditions and delivers alerts.
type Engine struct {
	opts Options
	log  *slog.Logger
	host string

	evalMu sync.Mutex // one evaluation at a time

	mu        sync.Mutex
	active    map[string]Alert     // firing conditions by key
	failSince map[string]time.Time // account -> first evaluation that saw its refresh failing
	logins    map[string]*loginTrack
	restored  map[string]time.Time // upstream_login_failures alerts of the previous run, by account
	saveErr   string

	webhookQ chan job
	emailQ   chan job
	kick     chan struct{}

	startOnce sync.Once
	stopOnce  sync.Once
	cancel    context.CancelFunc
	wg        sync.WaitGroup
}

// loginTrack is an account's recent failed upstream logins.
type loginTrack struct {
	failures []time.Time
	proto    string
	lastErr  string
}

// New returns an Engine; nothing runs until Start.
func New(opts Options) *Engine {
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	if opts.WebhookTimeout <= 0 {
		opts.WebhookTimeout = DefaultWebhookTimeout
	}
	if opts.EmailTimeout <= 0 {
		opts.EmailTimeout = DefaultEmailTimeout
	}
	if opts.RetryMin <= 0 {
		opts.RetryMin = DefaultRetryMin
	}
	if opts.RetryMax <= 0 {
		opts.RetryMax = DefaultRetryMax
	}
	if opts.MaxAttempts <= 0 {
		opts.MaxAttempts = DefaultMaxAttempts
	}
	if opts.QueueSize <= 0 {
		opts.QueueSize = DefaultQueueSize
	}
	if opts.HTTPClient == nil {
		opts.HTTPClient = &http.Client{Transport: http.DefaultTransport.(*http.Transport).Clone()}
	}
	host := opts.Hostname
	if host == "" {
		host, _ = os.Hostname()
		if host == "" {
			host = "localhost"
		}
	}
	e := &Engine{
		opts:      opts,
		log:       opts.Logger,
		host:      host,
		active:    map[string]Alert{},
		failSince: map[string]time.Time{},
		logins:    map[string]*loginTrack{},
		restored:  map[string]time.Time{},
		webhookQ:  make(chan job, opts.QueueSize),
		emailQ:    make(chan job, opts.QueueSize),
		kick:      make(chan struct{}, 1),
	}
	e.mu.Lock()
	e.loadLocked() // state.go
	e.mu.Unlock()
	return e
}

// Start runs the evaluation loop (once when Options.TokensSettled is
// closed, then every check_interval, and at Kick) and the delivery workers
// until ctx is done or Close. Calls after the first do nothing.
func (e *Engine) Start(ctx context.Context) {
	e.startOnce.Do(func() {
		ctx, e.cancel = context.WithCancel(ctx)
		e.wg.Add(3)
		go func() { defer e.wg.Done(); e.worker(ctx, "webhook", e.webhookQ) }()
		go func() { defer e.wg.Done(); e.worker(ctx, "email", e.emailQ) }()
		go func() { defer e.wg.Done(); e.loop(ctx) }()
	})
}

// Close stops the loop and the workers; alerts still queued are dropped.
func (e *Engine) Close() {
	e.stopOnce.Do(func() {
		if e.cancel != nil {
			e.cancel()
		}
		e.wg.Wait()
		if n := len(e.webhookQ) + len(e.emailQ); n > 0 {
			e.log.Warn("alerts: stopping with alerts not yet delivered; the conditions still present are announced again after the restart", "undelivered", n)
		}
	})
}

// Kick asks the loop for an evaluation soon (a reload, a burst of failed
// logins). It never blocks.
func (e *Engine) Kick() {
	select {
	case e.kick <- struct{}{}:
	default:
	}
}

func (e *Engine) loop(ctx context.Context) {
	settled := e.opts.TokensSettled // nil once the first evaluation ran
	for {
		every := config.DefaultAlertCheckInterval
		if cfg := e.opts.Config(); cfg != nil && cfg.Alerts != nil && cfg.Alerts.EvaluateEvery > 0 {
			every = cfg.Alerts.EvaluateEvery
		}
		kick := e.kick
		if settled != nil {
			kick = nil // a kick before the tokens settled waits for them
		}
		t := time.NewTimer(every)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		case <-settled:
			t.Stop()
		case <-kick:
			t.Stop()
		}
		settled = nil
		e.Evaluate()
	}
}

func (e *Engine) event(ev Event) {
	if e.opts.OnEvent != nil {
		e.opts.OnEvent(ev)
	}
}

// LoginAttempt records one login attempt a proxy of this engine's daemon
// audited (the daemon subscribes it to its localauth.Observers, which it
// hands to each proxy as Options.LoginObservers). Failed upstream logins (the upstream refused the token, or it
// could not be reached: results upstream_rejected and temporary, unless
// the token itself was missing) count towards upstream_login_failures; a
// successful login clears the count.
// It never blocks.
func (e *Engine) LoginAttempt(a audit.LoginAttempt) {
	if a.Account == "" {
		return
	}
	switch a.Result {
	case audit.ResultOK:
		e.mu.Lock()
		_, had := e.logins[a.Account]
		_, restored := e.restored[a.Account]
		had = had || restored
		delete(e.logins, a.Account)
		delete(e.restored, a.Account)
		e.mu.Unlock()
		if had {
			e.Kick()
		}
	case audit.ResultUpstreamRejected, audit.ResultTemporary:
		var te *tokens.Error
		if errors.As(a.Err, &te) {
			return // no token: refresh_failing and needs_login cover it
		}
		cfg := e.opts.Config()
		if cfg == nil || cfg.Alerts == nil {
			return
		}
		now := e.opts.Now()
		e.mu.Lock()
		tr := e.logins[a.Account]
		if tr == nil {
			tr = &loginTrack{}
			e.logins[a.Account] = tr
		}
		tr.failures = pruned(tr.failures, now, cfg.Alerts.LoginWindow)
		tr.failures = append(tr.failures, now)
		tr.proto = a.Proto
		if a.Err != nil {
			tr.lastErr = a.Err.Error()
		}
		reached := len(tr.failures) == cfg.Alerts.LoginFailures
		e.mu.Unlock()
		if reached {
			e.Kick()
		}
	}
}

// pruned drops the failures older than window (in place).
func pruned(ts []time.Time, now time.Time, window time.Duration) []time.Time {
	i := 0
	for i < len(ts) && now.Sub(ts[i]) > window {
		i++
	}
	return append(ts[:0], ts[i:]...)
}

// Active returns the firing alerts (for tests and the status page).
func (e *Engine) Active() []Alert {
	e.mu.Lock()
	defer e.mu.Unlock()
	out := make([]Alert, 0, len(e.active))
	for _, a := range e.active {
		out = append(out, a)
	}
	return out
}
