package localauth

import (
	"context"
	"log/slog"

	"github.com/oauthbridge/oauthbridge/audit"
	"github.com/oauthbridge/oauthbridge/internal/metrics"
)

// Login attempt results, used in the audit line and the
// oauthbridge_logins_total metric: the values of the public audit.Result
// (package audit documents them).
const (
	ResultOK               = string(audit.ResultOK)
	ResultBadCredentials   = string(audit.ResultBadCredentials)
	ResultThrottled        = string(audit.ResultThrottled)
	ResultBusy             = string(audit.ResultBusy)
	ResultNeedsLogin       = string(audit.ResultNeedsLogin)
	ResultFailing          = string(audit.ResultFailing)
	ResultTemporary        = string(audit.ResultTemporary)
	ResultUpstreamRejected = string(audit.ResultUpstreamRejected)
	ResultUnavailable      = string(audit.ResultUnavailable)
	ResultError            = string(audit.ResultError)
)

// Attempt describes one login attempt for the audit line. Never put a
// password or token in it. Its observers see it as an audit.LoginAttempt
// (observe.go).
type Attempt struct {
	Proto   string // imap, pop3, smtp
	User    string // as typed by the client (truncated to 64 bytes)
	Remote  string
	Result  string // one of the Result* constants
	Account string // empty when the credentials did not match
	Mailbox string
	Err     error // detail for the sysadmin (never contains secrets)
	// Upstream: the SMTP proxy's own upstream login, reported to the
	// observers only (Notify), after the local login was audited.
	Upstream bool
}

// Audit writes the one audit line for a login attempt, counts it in
// oauthbridge_logins_total of m (nil: not counted) and reports it to each
// of obs (none: nobody observes; observe.go). Failures that need a person are
// logged at error level, other failures at warn.
func Audit(log *slog.Logger, m *metrics.Metrics, obs []audit.LoginObserver, a Attempt) {
	if m != nil {
		m.Logins.WithLabelValues(a.Proto, a.Result).Inc()
	}
	Notify(obs, a)
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
