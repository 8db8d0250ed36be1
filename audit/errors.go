package audit

import "errors"

// Errors a password checker returns to tell the proxies why it refused a
// login: the Check method of imapproxy.PasswordChecker,
// pop3proxy.PasswordChecker and smtpproxy.PasswordChecker, whether it is
// the daemon's own or a caller's. Return one of them, or an error that
// wraps it (fmt.Errorf("%w: ...", audit.ErrBadCredentials)); the proxies
// test with errors.Is, log the whole error for the administrator and
// never show its text to the client.
//
// Only ErrBadCredentials makes the client hear "wrong credentials"
// (IMAP NO [AUTHENTICATIONFAILED], POP3 -ERR [AUTH], SMTP 535 5.7.8; the
// attempt's Result is ResultBadCredentials), and a legacy client then
// stops retrying that password. Return it only for a password that was
// checked and found wrong, or a user name that does not exist. An error
// that also wraps ErrThrottled or ErrBusy is not reported as wrong
// credentials.
//
// Every other error is a temporary failure, which clients retry:
// ErrThrottled is answered as throttled (Result ResultThrottled), and
// ErrBusy, or any error wrapping neither sentinel (a context's error, a
// database that does not answer), as busy (Result ResultBusy). Both are
// IMAP NO [UNAVAILABLE], POP3 -ERR [SYS/TEMP] and SMTP 454 4.7.0, whose
// text says the password was not checked.
var (
	// ErrBadCredentials: the password was checked and is wrong, or the
	// user does not exist.
	ErrBadCredentials = errors.New("invalid credentials")
	// ErrThrottled: not checked, because this user name's password
	// checks are rate-limited right now.
	ErrThrottled = errors.New("throttled: too many password checks for this user name right now, not checked")
	// ErrBusy: not checked, because the checker had no capacity for it
	// (every password-check slot stayed in use).
	ErrBusy = errors.New("busy: every password-check slot stayed in use, not checked")
)
