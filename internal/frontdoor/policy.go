package frontdoor

import (
	"context"
	"time"
)

// Named defaults of the per-connection failure policy.
const (
	// DefaultFailureDelay is how long the reply to a failed login waits,
	// so guessing over one connection is slow (imapserver-style ~1 s).
	DefaultFailureDelay = time.Second
	// DefaultMaxFailures failed logins end the connection.
	DefaultMaxFailures = 3
)

// Policy is the per-connection failure policy of all three proxies: every
// failed login (wrong password, throttled or busy) waits FailureDelay before
// its reply, and the MaxFailures-th ends the connection after its reply.
type Policy struct {
	// FailureDelay: 0 means DefaultFailureDelay, negative means none (tests).
	FailureDelay time.Duration
	// MaxFailures: 0 or less means DefaultMaxFailures.
	MaxFailures int
	// After replaces time.After (tests).
	After func(time.Duration) <-chan time.Time
}

// Resolved returns p with the defaults filled in.
func (p Policy) Resolved() Policy {
	if p.FailureDelay == 0 {
		p.FailureDelay = DefaultFailureDelay
	}
	if p.MaxFailures <= 0 {
		p.MaxFailures = DefaultMaxFailures
	}
	if p.After == nil {
		p.After = time.After
	}
	return p
}

// Conn applies a Policy to one connection. The zero value is not usable;
// get one from Policy.Conn.
type Conn struct {
	p        Policy
	failures int
}

// Conn returns the failure state of a new connection.
func (p Policy) Conn() *Conn { return &Conn{p: p.Resolved()} }

// Failures reports how many logins failed on this connection.
func (c *Conn) Failures() int { return c.failures }

// Failed records a failed login of any kind and waits the failure delay.
// It reports whether the connection must be closed after the reply
// (MaxFailures reached), and ctx's error if ctx ended during the wait (then
// the caller should close without a reply).
func (c *Conn) Failed(ctx context.Context) (hangUp bool, err error) {
	c.failures++
	if d := c.p.FailureDelay; d > 0 {
		select {
		case <-c.p.After(d):
		case <-ctx.Done():
			return true, ctx.Err()
		}
	}
	return c.failures >= c.p.MaxFailures, nil
}
