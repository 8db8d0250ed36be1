package localauth

import (
	"context"
	"log/slog"

	"github.com/oauthbridge/oauthbridge/internal/metrics"
)

// Login attempt results, used in the audit line and the
// oauthbridge_logins_total metric.
const (
	ResultOK               = "ok"
	ResultBadCredentials   = "bad_credentials"
	ResultThrottled        = "throttled"         // not checked: this name's password checks are rate-limited
	ResultBusy             = "busy"              // not checked: every password-check slot stayed in use
	ResultNeedsLogin       = "needs_login"       // the account's token needs a person
	ResultFailing          = "failing"           // app registration/config problem
	ResultTemporary        = "temporary"         // token endpoint or upstream temporarily unavailable
	ResultUpstreamRejected = "upstream_rejected" // the upstream refused our token
	ResultUnavailable      = "unavailable"       // per-account connection limit reached
	ResultError            = "error"
)

// Attempt describes one login attempt for the audit line. Never put a
// password or token in it.
type Attempt struct {
	Proto   string // imap, pop3, smtp
	User    string // as typed by the client (truncated to 64 bytes)
	Remote  string
	Result  string // one of the Result* constants
	Account string // empty when the credentials did not match
	Mailbox string
	Err     error // detail for the sysadmin (never contains secrets)
}

// Audit writes the one audit line for a login attempt, counts it in
// oauthbridge_logins_total of m (nil: not counted) and reports it to obs
// (nil: nobody observes; observe.go). Failures that need a person are
// logged at error level, other failures at warn.
func Audit(log *slog.Logger, m *metrics.Metrics, obs *Observers, a Attempt) {
	if m != nil {
		m.Logins.WithLabelValues(a.Proto, a.Result).Inc()
	}
	obs.Notify(a)
	user := a.User
	if len(user) > 64 {
		user = user[:64] + "..."
	}
	attrs := []slog.Attr{
		slog.String("proto", a.Proto),
		slog.String("user", user),
		slog.String("remote", a.Remote),
		slog.String("result", a.Result),
	}
	if a.Account != "" {
		attrs = append(attrs, slog.String("account", a.Account))
	}
	if a.Mailbox != "" {
		attrs = append(attrs, slog.String("mailbox", a.Mailbox))
	}
	if a.Err != nil {
		attrs = append(attrs, slog.String("error", a.Err.Error()))
	}
	level := slog.LevelInfo
	switch a.Result {
	case ResultOK:
	case ResultNeedsLogin, ResultFailing, ResultUpstreamRejected:
		level = slog.LevelError
	default:
		level = slog.LevelWarn
	}
	log.LogAttrs(context.Background(), level, "login", attrs...)
}
