package pop3proxy

import (
	"context"
	"time"

	"github.com/oauthbridge/oauthbridge/config"
)

// PasswordChecker checks a local user's password; the daemon passes its
// Authenticator (rate limits, bounded bcrypt, audit-safe errors). Only a
// checked wrong password is reported to the client as wrong credentials;
// any other error is a temporary failure.
type PasswordChecker interface {
	Check(ctx context.Context, user, password, remote string) (*config.User, error)
}

// SlotLimiter hands out per-account upstream connection slots: Acquire
// waits up to wait for one of limit slots under key and returns its
// release.
type SlotLimiter interface {
	Acquire(ctx context.Context, key string, limit int, wait time.Duration) (release func(), err error)
}
