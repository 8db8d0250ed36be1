package tokens

import (
	"context"
	"errors"
	"fmt"
)

// Kind says who has to act on a token error.
type Kind int

const (
	// Temporary: the token endpoint or network is having trouble; retry later.
	// Proxies answer IMAP NO [UNAVAILABLE], POP3 -ERR [SYS/TEMP], SMTP 4xx.
	Temporary Kind = iota + 1
	// NeedsLogin: a person must sign in again (`oauthbridge login ACCOUNT`).
	NeedsLogin
	// Failing: the app registration or configuration is wrong (bad or expired
	// client secret, app not found, missing consent for the app flow); an
	// administrator must fix it.
	Failing
)

func (k Kind) String() string {
	switch k {
	case Temporary:
		return "temporary"
	case NeedsLogin:
		return "needs_login"
	case Failing:
		return "failing"
	}
	return "unknown"
}

// Error is the only error type that crosses from tokens to the proxies. Its
// message names the fix and never contains a token or a secret.
type Error struct {
	Account string
	Kind    Kind
	AADSTS  int    // Entra error code, 0 if none
	Reason  string // what went wrong, for the sysadmin
	Fix     string // what to do about it
	Err     error  // underlying error, for %w chains; never printed with secrets
}

func (e *Error) Error() string {
	s := fmt.Sprintf("tokens: account %q: %s", e.Account, e.Reason)
	if e.AADSTS != 0 {
		s += fmt.Sprintf(" (AADSTS%d)", e.AADSTS)
	}
	if e.Fix != "" {
		s += ": " + e.Fix
	}
	return s
}

func (e *Error) Unwrap() error { return e.Err }

// KindOf returns the Kind of a token error, or Temporary for any error that
// is not an *Error (a context deadline, a network error): unknown trouble is
// retried, never reported as needing a person.
func KindOf(err error) Kind {
	var te *Error
	if errors.As(err, &te) {
		return te.Kind
	}
	return Temporary
}

// Source is what the proxies ask for tokens. *Manager implements it; tests
// may use a stub.
type Source interface {
	// AccessToken returns a valid access token for the named account. It
	// serves the cached token while it is valid (no token request on the
	// login path) and otherwise refreshes, collapsing concurrent demands.
	// Errors are *Error.
	AccessToken(ctx context.Context, account string) (string, error)
	// Rejected tells the manager that the upstream server refused tok for
	// account, so the next AccessToken must not return it again.
	Rejected(account, tok string)
}
