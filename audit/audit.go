package audit

// Result is the outcome of a login attempt. Its values are the "result" of
// the proxies' audit line and the result label of the
// oauthbridge_logins_total metric.
type Result string

// The results of a login attempt. Only ResultBadCredentials means that a
// password was checked and found wrong.
const (
	ResultOK             Result = "ok"
	ResultBadCredentials Result = "bad_credentials" // wrong password, or no such local user
	ResultThrottled      Result = "throttled"       // not checked: this name's password checks are rate-limited
	ResultBusy           Result = "busy"            // not checked: every password-check slot stayed in use
	ResultNeedsLogin     Result = "needs_login"     // the account's token needs a person to sign in again
	ResultFailing        Result = "failing"         // app registration or configuration problem
	ResultTemporary      Result = "temporary"       // token endpoint or upstream temporarily unavailable
	// ResultUpstreamRejected: the upstream refused the bridge's token for
	// this mailbox (mailbox permissions, protocol disabled).
	ResultUpstreamRejected Result = "upstream_rejected"
	ResultUnavailable      Result = "unavailable" // the account's connection limit (max_connections) was reached
	ResultError            Result = "error"       // anything else, e.g. the bridge shutting down mid-login
)

// Protocols of a LoginAttempt.
const (
	IMAP = "imap"
	POP3 = "pop3"
	SMTP = "smtp"
)

// LoginAttempt is one login attempt a proxy audited. It never carries a
// password or a token.
type LoginAttempt struct {
	Proto string // IMAP, POP3 or SMTP
	// User is the local user name as the client sent it (empty for an
	// Upstream attempt).
	User   string
	Remote string // the client's IP address (empty for an Upstream attempt)
	Result Result
	// Account and Mailbox name the configured account the local user
	// logs in to; Account is empty when the local credentials did not
	// match.
	Account string
	Mailbox string
	// Err is the detail for the administrator when Result is not
	// ResultOK (it may be nil). It never contains a password or a token;
	// errors.As finds the underlying errors, such as a *tokens.Error.
	Err error
	// Upstream is set on the SMTP proxy's report of its own login to the
	// upstream server, which happens at MAIL FROM (or for a message sent
	// by the bridge itself), after the local login was reported on its
	// own. IMAP and POP3 report the upstream login in the local attempt.
	Upstream bool
}

// LoginObserver sees login attempts. ObserveLogin is called on the
// connection's goroutine before the client gets its reply, concurrently
// for different connections: it must be safe for concurrent use and must
// not block.
type LoginObserver interface {
	ObserveLogin(LoginAttempt)
}

// LoginObserverFunc is a function that is a LoginObserver.
type LoginObserverFunc func(LoginAttempt)

// ObserveLogin calls f(a).
func (f LoginObserverFunc) ObserveLogin(a LoginAttempt) { f(a) }
