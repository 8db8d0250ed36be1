package frontdoor

import (
	"errors"
	"fmt"

	"github.com/oauthbridge/oauthbridge/internal/localauth"
	"github.com/oauthbridge/oauthbridge/tokens"
)

// Kind classifies a failed login, from the local password check to the
// upstream's answer to the bridge's token. Only BadCredentials means that a
// password was checked and found wrong; no other kind may ever be reported
// to the client as wrong credentials. Each proxy has one switch from Kind
// to its wire text.
type Kind int

const (
	// BadCredentials: the password was checked and is wrong, or the name
	// does not exist (the client cannot tell which).
	BadCredentials Kind = iota + 1
	// Throttled: not checked, because this user name's password checks are
	// rate-limited after recent attempts.
	Throttled
	// Busy: not checked, because every password-check slot stayed in use.
	Busy
	// AccountBusy: the account's connection slots
	// (max_connections) stayed in use for connection_wait.
	AccountBusy
	// NeedsLogin: the account's token needs a person to sign in again
	// (Failure.Account names it for the "oauthbridge login" hint).
	NeedsLogin
	// Failing: the app registration or the bridge's configuration is wrong;
	// an administrator must act (see the log).
	Failing
	// Temporary: the token endpoint or the upstream is having trouble that
	// passes by itself.
	Temporary
	// Unreachable: the upstream server could not be reached (dial, TLS
	// handshake, timeout).
	Unreachable
	// Rejected: the upstream refused the bridge's valid token for this
	// mailbox (mailbox permissions, protocol disabled).
	Rejected
	// Stopping: the login completed while the bridge drains.
	Stopping
)

// String names the kind as the audit line and the logins metric do.
func (k Kind) String() string {
	switch k {
	case BadCredentials:
		return localauth.ResultBadCredentials
	case Throttled:
		return localauth.ResultThrottled
	case Busy:
		return localauth.ResultBusy
	case AccountBusy:
		return localauth.ResultUnavailable
	case NeedsLogin:
		return localauth.ResultNeedsLogin
	case Failing:
		return localauth.ResultFailing
	case Temporary, Unreachable, Stopping:
		return localauth.ResultTemporary
	case Rejected:
		return localauth.ResultUpstreamRejected
	}
	return localauth.ResultError
}

// Temporary reports whether the client should simply try again later.
func (k Kind) Temporary() bool { return k != BadCredentials }

// Local reports whether the failure is the local password check's: those
// run through the per-connection failure policy (delay, hang-up after a
// few), the others are answered at once.
func (k Kind) Local() bool { return k == BadCredentials || k == Throttled || k == Busy }

// Failure is a failed login: its kind, the detail for the log and, where
// the wire text needs them, the account and its limit.
type Failure struct {
	Kind Kind
	Err  error
	// Account is the account the login resolved to ("" before that).
	Account string
	// Max is the account's max_connections (AccountBusy).
	Max int
	// Class is the oauthbridge_upstream_errors_total class of an upstream
	// failure ("dial", "tls", "timeout", "protocol", "auth", "limit"), ""
	// for none.
	Class string
	// Retry: the upstream refused the token after it was sent; one retry
	// with a fresh token may help (it may have been revoked early).
	Retry bool
	// Google: the upstream is Gmail, so a Rejected reply names Google
	// rather than Microsoft 365.
	Google bool
}

func (f *Failure) Error() string {
	if f.Err == nil {
		return "frontdoor: login failed: " + f.Kind.String()
	}
	return f.Err.Error()
}

func (f *Failure) Unwrap() error { return f.Err }

// Classify turns an error from a Checker (localauth's Check, or a caller's
// PasswordChecker returning the public errors of package audit, which are
// localauth's) into a Failure. An error it does not know (never a checked
// password) counts as Busy, and one that also says throttled or busy is
// not BadCredentials, so nothing but a checked wrong password is reported
// as wrong credentials.
func Classify(err error) *Failure {
	switch {
	case errors.Is(err, localauth.ErrThrottled):
		return &Failure{Kind: Throttled, Err: err}
	case errors.Is(err, localauth.ErrBusy):
		return &Failure{Kind: Busy, Err: err}
	case errors.Is(err, localauth.ErrInvalid):
		return &Failure{Kind: BadCredentials, Err: err}
	}
	return &Failure{Kind: Busy, Err: err}
}

// TokenFailure turns an error from a tokens.Source into a Failure: who has
// to act decides the kind. An error that is not a *tokens.Error counts as
// Temporary.
func TokenFailure(account string, err error) *Failure {
	f := &Failure{Kind: Temporary, Err: err, Account: account}
	switch tokens.KindOf(err) {
	case tokens.NeedsLogin:
		f.Kind = NeedsLogin
	case tokens.Failing:
		f.Kind = Failing
	}
	return f
}

// AsFailure returns the *Failure in err's chain, or nil.
func AsFailure(err error) *Failure {
	var f *Failure
	if errors.As(err, &f) {
		return f
	}
	return nil
}

// Failuref is a Failure of kind k whose detail is formatted as fmt.Errorf
// does (use %w to keep a cause).
func Failuref(k Kind, format string, args ...any) *Failure {
	return &Failure{Kind: k, Err: fmt.Errorf(format, args...)}
}
