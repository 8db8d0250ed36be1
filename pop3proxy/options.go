package pop3proxy

import (
	"context"
	"time"

	"github.com/oauthbridge/oauthbridge/config"
)

// PasswordChecker checks a local user's password; the daemon passes its
// Authenticator (rate limits, bounded bcrypt, audit-safe errors), and a
// caller may pass its own. Check returns the configured user (one of the
// configuration's users; its account is the one the login reaches) or an
// error, which the proxies test with errors.Is against the errors of
// package audit (return one, or wrap it with %w):
//
//   - audit.ErrBadCredentials: the password was checked and is wrong, or
//     the user does not exist. Only this is reported to the client as
//     wrong credentials (IMAP NO [AUTHENTICATIONFAILED], POP3 -ERR [AUTH],
//     SMTP 535 5.7.8), and audited as audit.ResultBadCredentials.
//   - audit.ErrThrottled: not checked, this user's password checks are
//     rate-limited; a temporary failure saying so (IMAP NO [UNAVAILABLE],
//     POP3 -ERR [SYS/TEMP], SMTP 454 4.7.0), audit.ResultThrottled.
//   - audit.ErrBusy, or any other error (also one that wraps
//     ErrBadCredentials together with ErrThrottled or ErrBusy): not
//     checked, the same temporary failure saying the bridge is busy,
//     audit.ResultBusy.
//
// The client never sees the error's text; the log and the
// LoginAttempt.Err of the audit do.
type PasswordChecker interface {
	Check(ctx context.Context, user, password, remote string) (*config.User, error)
}

// SlotLimiter hands out per-account upstream connection slots: Acquire
// waits up to wait for one of limit slots under key and returns its
// release.
type SlotLimiter interface {
	Acquire(ctx context.Context, key string, limit int, wait time.Duration) (release func(), err error)
}
