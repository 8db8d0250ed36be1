package frontdoor

import (
	"errors"

	"github.com/oauthbridge/oauthbridge/internal/localauth"
)

// Kind classifies a failed local login. Only BadCredentials means that a
// password was checked and found wrong; the others are temporary and must
// never be reported to the client as wrong credentials.
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
	}
	return localauth.ResultError
}

// Temporary reports whether the client should simply try again later.
func (k Kind) Temporary() bool { return k != BadCredentials }

// Failure is a failed local login: its kind and the detail for the log.
type Failure struct {
	Kind Kind
	Err  error
}

func (f *Failure) Error() string { return f.Err.Error() }
func (f *Failure) Unwrap() error { return f.Err }

// Classify turns an error from localauth's Check into a Failure. An error
// it does not know (never a checked password) counts as Busy, so it is
// never reported as wrong credentials.
func Classify(err error) *Failure {
	switch {
	case errors.Is(err, localauth.ErrInvalid):
		return &Failure{Kind: BadCredentials, Err: err}
	case errors.Is(err, localauth.ErrThrottled):
		return &Failure{Kind: Throttled, Err: err}
	}
	return &Failure{Kind: Busy, Err: err}
}
