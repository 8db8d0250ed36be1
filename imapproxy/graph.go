package imapproxy

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"time"

	"github.com/oauthbridge/oauthbridge/config"
	"github.com/oauthbridge/oauthbridge/graph"
	"github.com/oauthbridge/oauthbridge/internal/localauth"
	"github.com/oauthbridge/oauthbridge/tokens"
)

// GraphServer serves an IMAP session from Microsoft Graph for a client the
// proxy has logged in (imapgraph.Server implements it).
type GraphServer interface {
	// Serves reports whether acct is read through Graph.
	Serves(acct *config.Account) bool
	// ServeLoggedIn answers the login tagged tag and serves the session
	// until it ends; in holds what the proxy read ahead of the client.
	// started is called once, before the client's answer, with nil or
	// the reason the mailbox cannot be served.
	ServeLoggedIn(ctx context.Context, conn net.Conn, in io.Reader, tag, account, user string, log *slog.Logger, started func(error))
}

// serveGraph hands a logged-in client to the Graph-served IMAP session
// instead of splicing it to Exchange: it leaves that session in c.rest. It
// writes the login's audit line once the mailbox was checked.
func (c *session) serveGraph(tag, user string, acct *config.Account, a localauth.Attempt) bool {
	if err := c.fs.BeginSplice(); err != nil {
		a.Result, a.Err = localauth.ResultTemporary, fmt.Errorf("imapproxy: login completed during shutdown: %w", err)
		localauth.Audit(c.auditLog, c.srv.m, c.srv.opts.LoginObservers, a)
		_ = c.reply(tag, replyShuttingDown)
		_ = c.send("* BYE Server shutting down")
		return true
	}
	log := c.log.With("user", user, "account", acct.Name, "mailbox", acct.Mailbox, "read_via", "graph")
	c.bw, c.rd.br = nil, nil
	_ = c.conn.SetDeadline(time.Time{})
	c.rest = func() { c.graphSession(tag, user, acct.Name, a, log) }
	return true
}

// graphSession serves the Graph-served session until it ends.
func (c *session) graphSession(tag, user, account string, a localauth.Attempt, log *slog.Logger) {
	in := c.br
	c.br = nil
	start := time.Now()
	c.srv.opts.Graph.ServeLoggedIn(c.srv.ctx, c.conn, in, tag, account, user, log, func(err error) {
		a.Result, a.Err = graphResult(err), err
		localauth.Audit(c.auditLog, c.srv.m, c.srv.opts.LoginObservers, a)
	})
	log.Info("session closed", "duration", time.Since(start).Round(time.Millisecond).String())
}

// graphResult classifies why a Graph-served mailbox could not be opened.
func graphResult(err error) string {
	if err == nil {
		return localauth.ResultOK
	}
	var te *tokens.Error
	if errors.As(err, &te) {
		switch te.Kind {
		case tokens.NeedsLogin:
			return localauth.ResultNeedsLogin
		case tokens.Failing:
			return localauth.ResultFailing
		}
		return localauth.ResultTemporary
	}
	if ge, ok := graph.AsError(err); ok {
		switch ge.Status {
		case http.StatusUnauthorized:
			return localauth.ResultUpstreamRejected
		case http.StatusForbidden:
			return localauth.ResultFailing
		}
	}
	return localauth.ResultTemporary
}
