package smtpproxy

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/oauthbridge/oauthbridge/config"
	"github.com/oauthbridge/oauthbridge/internal/frontdoor"
	"github.com/oauthbridge/oauthbridge/internal/localauth"
)

// Send submits msg (a complete RFC 5322 message) for account acct, from the
// envelope sender from to rcpts, exactly as a local client's transaction
// would go: SMTP submission with XOAUTH2, or Microsoft Graph for send_via =
// "graph" and for a send_via = "auto" account that switched. It is the
// bridge's own mail (alerts); the token comes from the server's token
// source, so the caller never speaks OAuth. It returns nil only when
// Microsoft 365 accepted the message; otherwise the error carries the
// reply a client would have got (an *smtp.SMTPError) or the failure.
func (s *Server) Send(ctx context.Context, acct *config.Account, from string, rcpts []string, msg []byte) error {
	if acct == nil || acct.Provider == nil {
		return errors.New("smtpproxy: send: no account or provider")
	}
	if len(rcpts) == 0 {
		return errors.New("smtpproxy: send: no recipients")
	}
	sctx, cancel := context.WithCancel(s.ctx)
	defer cancel()
	stop := context.AfterFunc(ctx, cancel)
	defer stop()
	cfg := s.opts.Config()
	sess := &session{
		srv:     s,
		log:     s.log.With("account", acct.Name, "mailbox", acct.Mailbox, "origin", "bridge"),
		ctx:     sctx,
		cancel:  cancel,
		start:   time.Now(),
		cfg:     cfg,
		user:    "(bridge)",
		account: acct,
		// The bridge's own login: no local credential, the account given.
		checked: &frontdoor.Login{Name: "(bridge)", Account: acct, Config: cfg},
	}
	defer sess.Logout()
	if err := sess.Mail(from, nil); err != nil {
		return fmt.Errorf("smtpproxy: send: MAIL FROM: %w", err)
	}
	for _, r := range rcpts {
		if err := sess.Rcpt(r, nil); err != nil {
			sess.Reset()
			return fmt.Errorf("smtpproxy: send: RCPT TO %s: %w", r, err)
		}
	}
	err := sess.Data(bytes.NewReader(msg))
	if se, ok := asSMTP(err); ok && se.Code == 250 {
		return nil
	}
	sess.Reset()
	if err == nil { // Data always answers; never claim success without a 250
		err = errors.New("no reply")
	}
	return fmt.Errorf("smtpproxy: send: DATA: %w", err)
}

// notifyUpstreamLogin reports the outcome of an upstream SMTP login to the
// server's login observers (Options.LoginObservers; alerts count failures
// per account): the local AUTH was audited already, before the upstream
// was dialled.
func (s *Server) notifyUpstreamLogin(acct *config.Account, err error) {
	a := localauth.Attempt{Proto: "smtp", Upstream: true, Account: acct.Name, Mailbox: acct.Mailbox, Result: localauth.ResultOK}
	if err != nil {
		a.Result, a.Err = localauth.ResultTemporary, err
		var ce *connectError
		if se, ok := asSMTP(err); ok && errors.As(err, &ce) && ce.stage == "auth" && se.Code/100 == 5 {
			a.Result = localauth.ResultUpstreamRejected
		}
	}
	localauth.Notify(s.opts.LoginObservers, a)
}
