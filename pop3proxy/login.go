package pop3proxy

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/oauthbridge/oauthbridge/internal/frontdoor"
	"github.com/oauthbridge/oauthbridge/internal/limiter"
	"github.com/oauthbridge/oauthbridge/internal/localauth"
	"github.com/oauthbridge/oauthbridge/internal/metrics"
	"github.com/oauthbridge/oauthbridge/internal/splice"
	"github.com/oauthbridge/oauthbridge/tokens"
)

// login checks the local credentials, logs in upstream and, on success,
// splices until the session ends. It writes exactly one audit line and
// reports whether the connection is finished.
func (c *session) login(ctx context.Context, user, pass string) bool {
	at := localauth.Attempt{Proto: "pop3", User: user, Remote: c.remote}

	u, err := c.srv.opts.Auth.Check(ctx, user, pass, c.remote)
	if err == nil {
		// Check's user table may predate this connection's snapshot; the
		// snapshot decides which account the user maps to.
		if cu := c.cfg.UserByName[u.Name]; cu != nil && cu.Account != nil {
			u = cu
		} else {
			err = fmt.Errorf("pop3proxy: user %q is not in the current configuration: %w", user, localauth.ErrInvalid)
		}
	}
	if err != nil {
		if ctx.Err() != nil {
			return true
		}
		f := frontdoor.Classify(err)
		at.Result, at.Err = f.Kind.String(), err
		localauth.Audit(c.audit, at)
		hangUp, werr := c.fails.Failed(ctx)
		if werr != nil {
			return true
		}
		if hangUp {
			c.closeWith(failureReply(f.Kind))
			return true
		}
		return c.reply(failureReply(f.Kind)) != nil
	}

	acct := u.Account
	at.Account, at.Mailbox = acct.Name, acct.Mailbox
	log := c.log.With("user", user, "account", acct.Name, "mailbox", acct.Mailbox, "upstream", acct.Provider.POP3Server)

	release, err := c.srv.opts.Limiter.Acquire(ctx, "mail:"+acct.Name, acct.MaxConnections, c.lim.ConnectionWait)
	if err != nil {
		if errors.Is(err, limiter.ErrLimit) {
			metrics.UpstreamErrors.WithLabelValues("pop3", "limit").Inc()
		}
		at.Result, at.Err = localauth.ResultUnavailable, fmt.Errorf("pop3proxy: account %q has %d connections (max_connections): %w", acct.Name, acct.MaxConnections, err)
		localauth.Audit(c.audit, at)
		c.closeWith(replyInUse)
		return true
	}
	defer release()

	if acct.ReadsViaGraph() {
		return c.serveGraph(ctx, log, acct, &at) // graph.go: served locally, not spliced
	}
	up, err := c.srv.connectUpstream(ctx, log, acct, c.lim.UpstreamTimeout)
	if err != nil {
		reply := c.failure(err, &at)
		localauth.Audit(c.audit, at)
		c.closeWith(reply)
		return true
	}
	// A login that completes during a drain is refused like in every proxy.
	if err := c.fs.BeginSplice(); err != nil {
		up.conn.Close()
		at.Result, at.Err = localauth.ResultTemporary, fmt.Errorf("pop3proxy: login completed during shutdown: %w", err)
		localauth.Audit(c.audit, at)
		c.closeWith(replyShutdown)
		return true
	}

	at.Result = localauth.ResultOK
	localauth.Audit(c.audit, at)
	if err := c.reply(replyLoggedIn); err != nil {
		up.conn.Close()
		return true
	}
	// Hand the readers to the splice and drop every other reference to the
	// pre-auth buffers, as imapproxy does: once the splice has forwarded
	// what they hold, an idle session keeps none of them.
	cbr, ubr := c.br, up.br
	c.br, up.br = nil, nil
	st := splice.Run(ctx, c.conn, cbr, up.conn, ubr, c.lim.IdleTimeout)
	metrics.BytesRelayed.WithLabelValues("pop3", "up").Add(float64(st.Up))
	metrics.BytesRelayed.WithLabelValues("pop3", "down").Add(float64(st.Down))
	log.Info("session closed", "bytes_in", st.Up, "bytes_out", st.Down, "duration", time.Since(c.start).Round(time.Millisecond).String())
	return true
}

// failureReply is the one mapping from a failed local login to POP3's
// wire text: only a checked wrong password is [AUTH].
func failureReply(k frontdoor.Kind) string {
	switch k {
	case frontdoor.BadCredentials:
		return replyInvalidCreds
	case frontdoor.Throttled:
		return replyThrottled
	}
	return replyBusy
}

// failure maps a token or upstream error to the client's reply and fills
// the audit attempt.
func (c *session) failure(err error, at *localauth.Attempt) string {
	at.Err = err
	var te *tokens.Error
	var ue *upstreamError
	switch {
	case errors.As(err, &te):
		switch te.Kind {
		case tokens.NeedsLogin:
			at.Result = localauth.ResultNeedsLogin
			return fmt.Sprintf("-ERR [SYS/PERM] mailbox needs re-authorisation: run 'oauthbridge login %s'", at.Account)
		case tokens.Failing:
			at.Result = localauth.ResultFailing
			return replyFailing
		}
		at.Result = localauth.ResultTemporary
		return replyTemporary
	case errors.As(err, &ue) && ue.Class == classAuth:
		at.Result = localauth.ResultUpstreamRejected
		at.Err = fmt.Errorf("%w; hint: %s", err, rejectHint(at.Mailbox))
		return replyRejected
	}
	// Network, TLS, timeouts, an unexpected greeting, or an error from a
	// token source that is not *tokens.Error: all may pass by themselves.
	at.Result = localauth.ResultTemporary
	return replyTemporary
}

func rejectHint(mailbox string) string {
	return fmt.Sprintf("the token is valid at Microsoft's token endpoint but Exchange refused it for %s; check that POP3 is enabled for the mailbox (Set-CASMailbox -PopEnabled $true), that the signed-in user has FullAccess to it when it is shared, and for flow = \"app\" that the service principal is registered in Exchange Online (New-ServicePrincipal, Add-MailboxPermission)", mailbox)
}
