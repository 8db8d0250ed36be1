package smtpproxy

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/textproto"
	"strings"
	"sync"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/oauthbridge/oauthbridge/config"
	"github.com/oauthbridge/oauthbridge/internal/metrics"
	"github.com/oauthbridge/oauthbridge/tokens"
)

// upstream is one authenticated submission connection to Microsoft 365.
type upstream struct {
	c       *smtp.Client
	conn    net.Conn // the TLS connection under c
	addr    string
	release func() // frees the per-account limiter slot

	closeOnce sync.Once
}

func (u *upstream) close() {
	u.closeOnce.Do(func() {
		u.conn.Close()
		if u.release != nil {
			u.release()
		}
	})
}

// quit says goodbye politely; the slot is released either way.
func (u *upstream) quit() {
	_ = u.c.Quit()
	u.close()
}

// connectError says at which step connecting upstream failed.
type connectError struct {
	stage string // dial, greeting, ehlo, starttls, tls, auth
	err   error
}

func (e *connectError) Error() string { return "smtpproxy: upstream " + e.stage + ": " + e.err.Error() }
func (e *connectError) Unwrap() error { return e.err }

// dial opens, secures and authenticates the upstream connection for the
// session's account. Every error it returns is a wire error for the client.
func (s *session) dial() (*upstream, *smtp.SMTPError) {
	acct := s.account
	lim := s.limits()
	addr := acct.Provider.SMTPServer
	log := s.log.With("upstream", addr)

	// Exchange allows three concurrent submissions per mailbox and answers
	// a fourth with 432 4.3.2; wait briefly for a slot, then answer 4xx.
	release, err := s.srv.opts.Limiter.Acquire(s.ctx, "smtp:"+acct.Name, acct.SMTPMaxConnections, lim.ConnectionWait)
	if err != nil {
		metrics.UpstreamErrors.WithLabelValues("smtp", "limit").Inc()
		log.Warn("per-mailbox SMTP connection limit reached; client told to retry", "limit", acct.SMTPMaxConnections, "error", err.Error())
		return nil, errTooManyConns
	}
	ok := false
	defer func() {
		if !ok {
			release()
		}
	}()

	tok, werr := s.token(log)
	if werr != nil {
		return nil, werr
	}
	up, err := s.connect(addr, tok, lim.UpstreamTimeout)
	if se, rejected := authRejected(err); rejected && !isSMTPAuthDisabled(se) {
		// The token may have been revoked early: forget it and try once
		// more with a fresh one.
		s.srv.opts.Tokens.Rejected(acct.Name, tok)
		log.Warn("upstream rejected the access token; retrying once with a fresh token", "error", codeString(se))
		tok, werr = s.token(log)
		if werr != nil {
			return nil, werr
		}
		up, err = s.connect(addr, tok, lim.UpstreamTimeout)
	}
	if se, rejected := authRejected(err); rejected && isSMTPAuthDisabled(se) && acct.SendVia == config.SendViaAuto {
		// send_via = "auto": Mail switches this account to Graph.
		s.smtpAuthOff = se
		metrics.UpstreamErrors.WithLabelValues("smtp", "auth").Inc()
		return nil, errUpstreamRefusedAuth
	}
	if err != nil {
		return nil, s.connectFailure(log, err)
	}
	up.release = release
	ok = true
	log.Debug("upstream connection ready")
	return up, nil
}

// token gets an access token and maps token errors to replies that keep
// the message on the client: 454 when a person or an administrator must
// act, 451 for temporary trouble.
func (s *session) token(log *slog.Logger) (string, *smtp.SMTPError) {
	ctx, cancel := context.WithTimeout(s.ctx, s.limits().UpstreamTimeout)
	defer cancel()
	acct := s.account.Name
	tok, err := s.srv.opts.Tokens.AccessToken(ctx, acct)
	if err == nil {
		return tok, nil
	}
	attrs := []any{"error", err.Error()}
	var te *tokens.Error
	if errors.As(err, &te) && te.AADSTS != 0 {
		attrs = append(attrs, "aadsts", te.AADSTS)
	}
	switch tokens.KindOf(err) {
	case tokens.NeedsLogin:
		log.Error(fmt.Sprintf("mailbox needs re-authorisation: run 'oauthbridge login %s'; mail is kept by the client (454) until then", acct), attrs...)
		return "", errNeedsLogin(acct)
	case tokens.Failing:
		log.Error("cannot get an access token: bridge or app registration configuration problem; mail is kept by the client (454)", attrs...)
		return "", errTokenFailing
	default:
		log.Warn("access token temporarily unavailable; client told to retry", attrs...)
		return "", errTokenTemporary
	}
}

// connect dials addr and runs greeting, EHLO, STARTTLS (certificate
// verified), EHLO and AUTH XOAUTH2.
//
// The plaintext part is done by hand because go-smtp's client has no public
// STARTTLS and its NewClientStartTLS would greet as "localhost"; after the
// handshake, go-smtp's Client takes over, fed a synthetic 220 greeting (a
// server sends none after STARTTLS).
func (s *session) connect(addr, tok string, timeout time.Duration) (*upstream, error) {
	domain := "localhost"
	if s.cfg != nil && s.cfg.SMTP != nil && s.cfg.SMTP.Domain != "" {
		domain = s.cfg.SMTP.Domain
	}
	d := net.Dialer{Timeout: timeout}
	raw, err := d.DialContext(s.ctx, "tcp", addr)
	if err != nil {
		return nil, &connectError{"dial", err}
	}
	stop := context.AfterFunc(s.ctx, func() { raw.Close() })
	defer stop()
	fail := func(stage string, err error) (*upstream, error) {
		raw.Close()
		return nil, &connectError{stage, err}
	}
	_ = raw.SetDeadline(time.Now().Add(timeout))
	tp := textproto.NewConn(raw)
	if _, err := readReply(tp, 220); err != nil {
		return fail("greeting", err)
	}
	if err := tp.PrintfLine("EHLO %s", domain); err != nil {
		return fail("ehlo", err)
	}
	ehlo, err := readReply(tp, 250)
	if err != nil {
		return fail("ehlo", err)
	}
	if !hasExtension(ehlo, "STARTTLS") {
		return fail("starttls", errors.New("server does not offer STARTTLS; refusing to send a token in the clear"))
	}
	if err := tp.PrintfLine("STARTTLS"); err != nil {
		return fail("starttls", err)
	}
	if _, err := readReply(tp, 220); err != nil {
		return fail("starttls", err)
	}
	if tp.R.Buffered() > 0 {
		// RFC 3207 section 6: nothing may follow the 220 in plaintext.
		return fail("starttls", errors.New("server sent data after STARTTLS"))
	}
	tc := tls.Client(raw, s.account.Provider.UpstreamTLS(addr))
	if err := tc.HandshakeContext(s.ctx); err != nil {
		return fail("tls", err)
	}
	_ = raw.SetDeadline(time.Time{}) // go-smtp sets its own per command

	c := smtp.NewClient(&greetedConn{Conn: tc, pending: []byte("220 " + addr + " ESMTP (TLS)\r\n")})
	c.CommandTimeout = timeout
	c.SubmissionTimeout = DefaultSubmissionTimeout
	if err := c.Hello(domain); err != nil {
		return fail("ehlo", err)
	}
	if err := c.Auth(tokens.NewXOAUTH2Client(s.account.Mailbox, tok)); err != nil {
		return fail("auth", err)
	}
	return &upstream{c: c, conn: tc, addr: addr}, nil
}

// readReply reads one reply; a code other than want comes back as an
// *smtp.SMTPError.
func readReply(tp *textproto.Conn, want int) (string, error) {
	_, msg, err := tp.ReadResponse(want)
	var pe *textproto.Error
	if errors.As(err, &pe) {
		return "", replyError(pe.Code, pe.Msg)
	}
	return msg, err
}

// hasExtension looks for ext among the EHLO reply's keyword lines.
func hasExtension(ehlo, ext string) bool {
	lines := strings.Split(ehlo, "\n")
	for _, l := range lines[1:] {
		if f := strings.Fields(l); len(f) > 0 && strings.EqualFold(f[0], ext) {
			return true
		}
	}
	return false
}

// greetedConn hands go-smtp's client a greeting before the real stream.
type greetedConn struct {
	net.Conn
	pending []byte
}

func (g *greetedConn) Read(p []byte) (int, error) {
	if len(g.pending) > 0 {
		n := copy(p, g.pending)
		g.pending = g.pending[n:]
		return n, nil
	}
	return g.Conn.Read(p)
}

// authRejected reports a permanent upstream AUTH failure (535 and friends).
func authRejected(err error) (*smtp.SMTPError, bool) {
	var ce *connectError
	if !errors.As(err, &ce) || ce.stage != "auth" {
		return nil, false
	}
	se, ok := asSMTP(ce.err)
	if !ok || se.Code/100 != 5 {
		return nil, false
	}
	return se, true
}

// isSMTPAuthDisabled matches 535 5.7.139: SMTP AUTH is switched off for
// the tenant or mailbox (or blocked by security defaults / Conditional
// Access). A fresh token does not help.
func isSMTPAuthDisabled(se *smtp.SMTPError) bool {
	return se.EnhancedCode == smtp.EnhancedCode{5, 7, 139}
}

// connectFailure logs why the upstream connection failed, in words an
// administrator can act on, and returns the client's reply. Nothing here
// bounces a message: a bridge-side problem is always 4xx.
func (s *session) connectFailure(log *slog.Logger, err error) *smtp.SMTPError {
	var ce *connectError
	if !errors.As(err, &ce) {
		ce = &connectError{"dial", err}
	}
	se, isSMTP := asSMTP(ce.err)
	switch {
	case ce.stage == "auth" && isSMTP && se.Code/100 == 5:
		metrics.UpstreamErrors.WithLabelValues("smtp", "auth").Inc()
		log.Error(explainAuthRejection(se, s.account.Mailbox), "error", codeString(se))
		return errUpstreamRefusedAuth
	case isSMTP && se.Code/100 == 4:
		class := "protocol"
		if se.EnhancedCode == (smtp.EnhancedCode{4, 3, 2}) {
			class = "limit"
		}
		metrics.UpstreamErrors.WithLabelValues("smtp", class).Inc()
		log.Warn("upstream refused the connection temporarily; client told to retry", "stage", ce.stage, "error", codeString(se))
		return se
	case ce.stage == "tls":
		metrics.UpstreamErrors.WithLabelValues("smtp", "tls").Inc()
		log.Error("upstream TLS handshake failed (is the server certificate trusted? see the provider's ca_file)", "error", ce.err.Error())
		return errUpstreamUnreachable
	case ce.stage == "dial":
		metrics.UpstreamErrors.WithLabelValues("smtp", "dial").Inc()
		log.Warn("upstream unreachable; client told to retry", "error", ce.err.Error())
		return errUpstreamUnreachable
	default:
		metrics.UpstreamErrors.WithLabelValues("smtp", errorClass(ce.err)).Inc()
		log.Warn("upstream connection failed; client told to retry", "stage", ce.stage, "error", ce.err.Error())
		return errUpstreamUnreachable
	}
}

func explainAuthRejection(se *smtp.SMTPError, mailbox string) string {
	if isSMTPAuthDisabled(se) {
		return fmt.Sprintf("Microsoft 365 refused SMTP AUTH for %s: authenticated client submission (SMTP AUTH) is disabled for this mailbox or the whole tenant, "+
			"or blocked by security defaults or Conditional Access. An Exchange administrator can enable it with "+
			"'Set-CASMailbox -Identity %s -SmtpClientAuthenticationDisabled $false' (or tenant-wide 'Set-TransportConfig -SmtpClientAuthenticationDisabled $false'); "+
			"see https://aka.ms/smtp_auth_disabled. Clients are told to retry (454) until then", mailbox, mailbox)
	}
	return fmt.Sprintf("Microsoft 365 rejected the access token for %s even after a refresh. Check that the app registration has the delegated SMTP.Send permission with consent "+
		"(or, for an app-only account, that the Exchange service principal exists and has FullAccess/SendAs on the mailbox: New-ServicePrincipal, Add-MailboxPermission), "+
		"that the signed-in user may send as the mailbox, and that SMTP AUTH is enabled for it (Set-CASMailbox -Identity %s -SmtpClientAuthenticationDisabled $false). "+
		"Permission changes can take up to an hour. Clients are told to retry (454) until then", mailbox, mailbox)
}
