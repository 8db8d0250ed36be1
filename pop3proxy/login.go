package pop3proxy

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/oauthbridge/oauthbridge/internal/frontdoor"
	"github.com/oauthbridge/oauthbridge/internal/localauth"
	"github.com/oauthbridge/oauthbridge/internal/splice"
)

// login runs the front door's login pipeline (local credentials, account,
// per-account slot) and on success continues in loggedIn. It writes exactly
// one audit line and reports whether the connection is finished.
func (c *session) login(ctx context.Context, user, pass string) bool {
	at := localauth.Attempt{Proto: "pop3", User: user, Remote: c.remote}
	g, f := c.srv.gate.Login(ctx, c.cfg, user, pass, c.remote)
	if f != nil {
		return c.loginFailed(ctx, &at, f)
	}
	defer g.Release()
	return c.loggedIn(ctx, &at, g)
}

// loggedIn runs once the local login succeeded: g is the account, its
// connection slot and its token source. It logs in upstream with XOAUTH2
// and splices until the session ends.
func (c *session) loggedIn(ctx context.Context, at *localauth.Attempt, g *frontdoor.Grant) bool {
	acct := g.Account
	at.Account, at.Mailbox = acct.Name, acct.Mailbox
	log := c.log.With("user", at.User, "account", acct.Name, "mailbox", acct.Mailbox, "upstream", acct.Provider.POP3Server)

	if acct.ReadsViaGraph() {
		return c.serveGraph(ctx, log, acct, at) // graph.go: served locally, not spliced
	}
	up, f := c.srv.connectUpstream(ctx, log, g, c.lim.UpstreamTimeout)
	if f != nil {
		return c.loginFailed(ctx, at, f)
	}
	// A login that completes during a drain is refused like in every proxy.
	if err := c.fs.BeginSplice(); err != nil {
		up.conn.Close()
		return c.loginFailed(ctx, at, &frontdoor.Failure{Kind: frontdoor.Stopping, Err: fmt.Errorf("pop3proxy: login completed during shutdown: %w", err)})
	}

	at.Result = localauth.ResultOK
	localauth.Audit(c.audit, c.srv.m, c.srv.opts.LoginObservers, *at)
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
	c.srv.m.BytesRelayed.WithLabelValues("pop3", "up").Add(float64(st.Up))
	c.srv.m.BytesRelayed.WithLabelValues("pop3", "down").Add(float64(st.Down))
	log.Info("session closed", "bytes_in", st.Up, "bytes_out", st.Down, "duration", time.Since(c.start).Round(time.Millisecond).String())
	return true
}

// loginFailed writes the attempt's audit line and answers a failed login:
// a local failure goes through the per-connection failure policy, any
// later one closes the connection after its reply.
func (c *session) loginFailed(ctx context.Context, at *localauth.Attempt, f *frontdoor.Failure) bool {
	if err := ctx.Err(); err != nil { // shutdown gave up on this session
		at.Result, at.Err = localauth.ResultError, fmt.Errorf("pop3proxy: login aborted by shutdown: %w (%v)", err, f)
		localauth.Audit(c.audit, c.srv.m, c.srv.opts.LoginObservers, *at)
		return true
	}
	if f.Class != "" {
		c.srv.m.UpstreamErrors.WithLabelValues("pop3", f.Class).Inc()
	}
	if f.Account != "" && at.Account == "" {
		at.Account = f.Account
	}
	at.Result, at.Err = f.Kind.String(), f.Err
	localauth.Audit(c.audit, c.srv.m, c.srv.opts.LoginObservers, *at)
	if !f.Kind.Local() {
		c.closeWith(failureReply(f))
		return true
	}
	hangUp, werr := c.fails.Failed(ctx)
	if werr != nil {
		return true
	}
	if hangUp {
		c.closeWith(failureReply(f))
		return true
	}
	return c.reply(failureReply(f)) != nil
}

// failureReply is the one mapping from a failed login to POP3's wire text:
// only a checked wrong password (and the upstream refusing the bridge's
// token for this mailbox) is [AUTH]; everything temporary is [SYS/TEMP].
func failureReply(f *frontdoor.Failure) string {
	switch f.Kind {
	case frontdoor.BadCredentials:
		return replyInvalidCreds
	case frontdoor.Throttled:
		return replyThrottled
	case frontdoor.Busy:
		return replyBusy
	case frontdoor.AccountBusy:
		return replyInUse
	case frontdoor.NeedsLogin:
		return fmt.Sprintf("-ERR [SYS/PERM] mailbox needs re-authorisation: run 'oauthbridge login %s'", f.Account)
	case frontdoor.Failing:
		return replyFailing
	case frontdoor.Rejected:
		if f.Google {
			return replyRejectedGoogle
		}
		return replyRejected
	case frontdoor.Stopping:
		return replyShutdown
	}
	// Temporary, Unreachable: network, TLS, timeouts, an unexpected
	// greeting, a token endpoint in trouble; all may pass by themselves.
	return replyTemporary
}

// upstreamFailure turns a failed upstream login into the front door's
// Failure.
func upstreamFailure(account, mailbox string, err error) *frontdoor.Failure {
	f := &frontdoor.Failure{Kind: frontdoor.Temporary, Err: err, Account: account}
	var ue *upstreamError
	if errors.As(err, &ue) {
		switch ue.Class {
		case classAuth:
			f.Kind = frontdoor.Rejected
			f.Err = fmt.Errorf("%w; hint: %s", err, rejectHint(mailbox))
			if ue.Google {
				f.Google = true
				f.Err = fmt.Errorf("%w; hint: Gmail refused the token for %s: check that POP is on for the account (Gmail settings > Forwarding and POP/IMAP; for Workspace also the Admin console) and that the token is the mailbox's own (a service account needs domain-wide delegation for https://mail.google.com/)", err, mailbox)
			}
		case classDial, classTimeout:
			f.Kind = frontdoor.Unreachable
		}
	}
	return f
}

func rejectHint(mailbox string) string {
	return fmt.Sprintf("the token is valid at Microsoft's token endpoint but Exchange refused it for %s; check that POP3 is enabled for the mailbox (Set-CASMailbox -PopEnabled $true), that the signed-in user has FullAccess to it when it is shared, and for flow = \"app\" that the service principal is registered in Exchange Online (New-ServicePrincipal, Add-MailboxPermission)", mailbox)
}
