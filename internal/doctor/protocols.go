package doctor

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/textproto"
	"strings"
	"time"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapclient"
	"github.com/emersion/go-smtp"

	"github.com/oauthbridge/oauthbridge/config"
	"github.com/oauthbridge/oauthbridge/tokens"
)

func (r *run) noToken(c Check) {
	c.Status, c.Detail = Skip, "needs an Exchange Online token (see token-outlook)"
	r.add(c)
}

// dialTLS connects to server with implicit TLS, the connection bounded by
// the check's deadline.
func (r *run) dialTLS(ctx context.Context, server string) (net.Conn, error) {
	d := tls.Dialer{NetDialer: &net.Dialer{}, Config: r.p.UpstreamTLS(server)}
	conn, err := d.DialContext(ctx, "tcp", server)
	if err != nil {
		return nil, err
	}
	if dl, ok := ctx.Deadline(); ok {
		_ = conn.SetDeadline(dl)
	}
	context.AfterFunc(ctx, func() { conn.Close() })
	return conn, nil
}

// openMailbox is the start of the IMAP and POP3 login checks: without an
// Exchange Online token c is skipped; otherwise server (the provider's
// setting attr) is dialled with implicit TLS within the check's deadline,
// and a failed dial is c's failure. When ok is false c has been added;
// otherwise the caller runs its dialogue on conn, calls done (which closes
// conn) and adds c.
func (r *run) openMailbox(c Check, server, attr string) (conn net.Conn, done func(), ok bool) {
	if r.outlook == "" {
		r.noToken(c)
		return nil, nil, false
	}
	ctx, cancel := r.checkCtx()
	conn, err := r.dialTLS(ctx, server)
	if err != nil {
		cancel()
		dialFailure(&c, server, attr, r.p.Name, err)
		r.add(c)
		return nil, nil, false
	}
	return conn, func() { conn.Close(); cancel() }, true
}

// xoauth2Refused is c's failure when server refused the XOAUTH2 login
// (command) of a token just issued; upstream is its reply.
func (r *run) xoauth2Refused(c *Check, server, command, upstream string) {
	c.Status, c.Upstream = Fail, upstream
	c.Detail = fmt.Sprintf("%s refused %s XOAUTH2 for %s although the token was just issued", server, command, r.a.Mailbox)
}

func imapText(err error) string {
	var ie *imap.Error
	if errors.As(err, &ie) {
		s := string(ie.Type)
		if ie.Code != "" {
			s += " [" + string(ie.Code) + "]"
		}
		return s + " " + ie.Text
	}
	return err.Error()
}

func (r *run) checkIMAP() {
	c := Check{ID: "imap", Name: "IMAP login (XOAUTH2) and EXAMINE INBOX"}
	server := r.p.IMAPServer
	conn, done, ok := r.openMailbox(c, server, "imap_server")
	if !ok {
		return
	}
	defer done()
	cl := imapclient.New(conn, nil)
	defer cl.Close()
	if err := cl.WaitGreeting(); err != nil {
		c.Status, c.Detail = Fail, fmt.Sprintf("%s: no IMAP greeting: %v", server, err)
		c.Meaning, c.Fix = "the server at imap_server does not speak IMAP over TLS", []string{"check imap_server of provider " + r.p.Name + " (Exchange Online: outlook.office365.com:993)"}
		r.add(c)
		return
	}
	if err := cl.Authenticate(tokens.NewXOAUTH2Client(r.a.Mailbox, r.outlook)); err != nil {
		r.xoauth2Refused(&c, server, "AUTHENTICATE", imapText(err))
		var ie *imap.Error
		if errors.As(err, &ie) {
			r.imapDenied = true
		}
		r.add(c)
		return
	}
	data, err := cl.Select("INBOX", &imap.SelectOptions{ReadOnly: true}).Wait()
	if err != nil {
		c.Status, c.Upstream = Fail, imapText(err)
		c.Detail = fmt.Sprintf("AUTHENTICATE succeeded, but EXAMINE INBOX of %s failed: Exchange accepted the token and cannot open the mailbox for it", r.a.Mailbox)
		var ie *imap.Error
		if errors.As(err, &ie) {
			r.imapDenied = true
		}
		r.add(c)
		return
	}
	_ = cl.Logout().Wait()
	c.Status = Pass
	c.Detail = fmt.Sprintf("AUTHENTICATE XOAUTH2 as %s and EXAMINE INBOX on %s: %d message(s)", r.a.Mailbox, server, data.NumMessages)
	r.add(c)
}

// pop3Line reads one POP3 reply line.
func pop3Line(tp *textproto.Conn) (string, bool, error) {
	line, err := tp.ReadLine()
	if err != nil {
		return "", false, err
	}
	return line, strings.HasPrefix(line, "+OK"), nil
}

func (r *run) checkPOP3() {
	c := Check{ID: "pop3", Name: "POP3 login (XOAUTH2) and STAT"}
	server := r.p.POP3Server
	conn, done, ok := r.openMailbox(c, server, "pop3_server")
	if !ok {
		return
	}
	defer done()
	tp := textproto.NewConn(conn)
	protoFail := func(stage string, err error) {
		c.Status, c.Detail = Fail, fmt.Sprintf("%s: %s: %v", server, stage, err)
		c.Meaning, c.Fix = "the POP3 dialogue broke off", []string{"check pop3_server of provider " + r.p.Name + " (Exchange Online: outlook.office365.com:995) and run the doctor again"}
		r.add(c)
	}
	if line, ok, err := pop3Line(tp); err != nil || !ok {
		if err == nil {
			err = errors.New("greeting " + line)
		}
		protoFail("greeting", err)
		return
	}
	// Exchange takes XOAUTH2 in two steps only (microsoft-365.md §2.3).
	if err := tp.PrintfLine("AUTH XOAUTH2"); err != nil {
		protoFail("AUTH", err)
		return
	}
	line, err := tp.ReadLine()
	if err != nil {
		protoFail("AUTH", err)
		return
	}
	if !strings.HasPrefix(line, "+") || strings.HasPrefix(line, "+OK") {
		c.Status, c.Upstream = Fail, line
		c.Detail = server + " does not offer AUTH XOAUTH2"
		c.Meaning, c.Fix = "the server at pop3_server is not Exchange Online's POP3", []string{"check pop3_server of provider " + r.p.Name + " (Exchange Online: outlook.office365.com:995)"}
		r.add(c)
		return
	}
	if err := tp.PrintfLine("%s", tokens.XOAUTH2Base64(r.a.Mailbox, r.outlook)); err != nil {
		protoFail("AUTH", err)
		return
	}
	line, ok, err = pop3Line(tp)
	if err != nil {
		protoFail("AUTH", err)
		return
	}
	if !ok {
		r.xoauth2Refused(&c, server, "AUTH", line)
		r.popDenied = true
		r.add(c)
		return
	}
	if err := tp.PrintfLine("STAT"); err != nil {
		protoFail("STAT", err)
		return
	}
	line, ok, err = pop3Line(tp)
	if err != nil || !ok {
		if err == nil {
			err = errors.New(line)
		}
		protoFail("STAT", err)
		return
	}
	_ = tp.PrintfLine("QUIT")
	_, _, _ = pop3Line(tp)
	n := "?"
	if f := strings.Fields(line); len(f) >= 2 {
		n = f[1]
	}
	c.Status = Pass
	c.Detail = fmt.Sprintf("AUTH XOAUTH2 as %s and STAT on %s: %s message(s)", r.a.Mailbox, server, n)
	r.add(c)
}

// explainDenied says why Exchange refused the mailbox over IMAP and/or
// POP3 after issuing the token: the same token working over the other
// protocol rules out the mailbox rights, so the protocol is disabled for
// the mailbox; both refused points at FullAccess (when the token's
// identity is not the mailbox itself).
func (r *run) explainDenied() {
	find := func(id string) *Check {
		for i := range r.checks {
			if r.checks[i].ID == id {
				return &r.checks[i]
			}
		}
		return nil
	}
	ic, pc := find("imap"), find("pop3")
	if ic == nil || pc == nil {
		return
	}
	mb := r.a.Mailbox
	enable := func(flags string) []string {
		return []string{psPrefix, fmt.Sprintf("Set-CASMailbox -Identity %s %s", mb, flags)}
	}
	denied := func(c *Check, proto, flag string, otherOK bool) {
		if otherOK {
			c.Meaning = fmt.Sprintf("the same token works over the other protocol, so the token and the mailbox rights are fine: %s is disabled for mailbox %s", proto, mb)
			c.Fix = enable(flag + " $true")
			return
		}
		if r.needsFullAccess() {
			c.Meaning = fmt.Sprintf("Exchange does not let %s open mailbox %s: it has no FullAccess on it (Exchange answers a missing permission and a disabled protocol alike)", r.identity(), mb)
			c.Fix = append(r.fullAccessFix(), fmt.Sprintf("if it has FullAccess already, %s is disabled for the mailbox: Set-CASMailbox -Identity %s %s $true", proto, mb, flag))
			return
		}
		c.Meaning = fmt.Sprintf("%s is disabled for mailbox %s (or %s is not that mailbox's own account)", proto, mb, r.a.LoginHint())
		c.Fix = enable(flag + " $true")
	}
	if r.imapDenied {
		denied(ic, "IMAP", "-ImapEnabled", pc.Status == Pass)
	}
	if r.popDenied {
		denied(pc, "POP3", "-PopEnabled", ic.Status == Pass)
	}
	if r.imapDenied && r.popDenied && !r.needsFullAccess() {
		ic.Fix = enable("-ImapEnabled $true -PopEnabled $true")
		pc.Fix = ic.Fix
	}
}

// smtpQuitTimeout bounds the QUIT that ends the SMTP session.
const smtpQuitTimeout = 5 * time.Second

// smtpSession is the authenticated SMTP session kept for send-as.
type smtpSession struct {
	c    *smtp.Client
	conn net.Conn
}

func (s *smtpSession) close() {
	_ = s.conn.SetDeadline(time.Now().Add(smtpQuitTimeout))
	_ = s.c.Quit()
	s.conn.Close()
}

func smtpText(err error) string {
	var se *smtp.SMTPError
	if errors.As(err, &se) {
		s := fmt.Sprintf("%d", se.Code)
		if se.EnhancedCode != (smtp.EnhancedCode{}) && se.EnhancedCode != smtp.NoEnhancedCode {
			s += fmt.Sprintf(" %d.%d.%d", se.EnhancedCode[0], se.EnhancedCode[1], se.EnhancedCode[2])
		}
		return s + " " + se.Message
	}
	return err.Error()
}

func (r *run) checkSMTP() {
	c := Check{ID: "smtp", Name: "SMTP AUTH XOAUTH2 (nothing sent)"}
	if !r.sendsSMTP() {
		c.Status, c.Detail = Skip, "send_via = \"graph\": messages go through Microsoft Graph (see token-graph)"
		r.add(c)
		return
	}
	if r.outlook == "" {
		r.noToken(c)
		return
	}
	// The session outlives this check (send-as uses it), so its deadline
	// is the whole run's, and each step is bounded by CheckTimeout.
	ctx, cancel := r.checkCtx()
	defer cancel()
	server := r.p.SMTPServer
	conn, err := (&net.Dialer{}).DialContext(ctx, "tcp", server)
	if err != nil {
		dialFailure(&c, server, "smtp_server", r.p.Name, err)
		r.add(c)
		return
	}
	_ = conn.SetDeadline(time.Now().Add(r.opts.CheckTimeout))
	cl, err := smtp.NewClientStartTLS(conn, r.p.UpstreamTLS(server))
	if err != nil {
		conn.Close()
		dialFailure(&c, server, "smtp_server", r.p.Name, fmt.Errorf("STARTTLS: %w", err))
		r.add(c)
		return
	}
	cl.CommandTimeout = r.opts.CheckTimeout
	if err := cl.Auth(tokens.NewXOAUTH2Client(r.a.Mailbox, r.outlook)); err != nil {
		cl.Close()
		c.Status, c.Upstream = Fail, smtpText(err)
		c.Detail = fmt.Sprintf("%s refused AUTH XOAUTH2 for %s", server, r.a.Mailbox)
		r.explainSMTP(&c, err)
		r.add(c)
		return
	}
	_ = conn.SetDeadline(time.Time{})
	r.smtpOK = &smtpSession{c: cl, conn: conn}
	c.Status = Pass
	c.Detail = fmt.Sprintf("STARTTLS and AUTH XOAUTH2 as %s on %s (nothing sent)", r.a.Mailbox, server)
	r.add(c)
}

func (r *run) explainSMTP(c *Check, err error) {
	mb := r.a.Mailbox
	var se *smtp.SMTPError
	if !errors.As(err, &se) {
		c.Meaning = "the SMTP dialogue broke off"
		c.Fix = []string{"check smtp_server of provider " + r.p.Name + " (Exchange Online: smtp.office365.com:587) and run the doctor again"}
		return
	}
	auto := ""
	if r.a.SendVia == config.SendViaAuto && r.graph != "" {
		auto = "; with send_via = \"auto\" the bridge sends through Microsoft Graph meanwhile"
	}
	ec := se.EnhancedCode
	switch {
	case ec == smtp.EnhancedCode{5, 7, 139} && strings.Contains(se.Message, "SmtpClientAuthentication is disabled for the Tenant"):
		c.Meaning = "SMTP AUTH is switched off for the whole tenant; this blocks OAuth logins too" + auto
		c.Fix = []string{psPrefix,
			fmt.Sprintf("Set-CASMailbox -Identity %s -SmtpClientAuthenticationDisabled $false", mb),
			"(this mailbox only, which wins over the tenant setting; for every mailbox: Set-TransportConfig -SmtpClientAuthenticationDisabled $false)"}
	case ec == smtp.EnhancedCode{5, 7, 139} && strings.Contains(se.Message, "SmtpClientAuthentication is disabled"):
		c.Meaning = "SMTP AUTH is switched off for mailbox " + mb + "; this blocks OAuth logins too" + auto
		c.Fix = []string{psPrefix, fmt.Sprintf("Set-CASMailbox -Identity %s -SmtpClientAuthenticationDisabled $false", mb)}
	case ec == smtp.EnhancedCode{5, 7, 139} && strings.Contains(se.Message, "security defaults"):
		c.Meaning = "the tenant's security defaults block this sign-in for SMTP"
		c.Fix = []string{"Entra admin center > Identity > Overview > Properties > Manage security defaults, or move to Conditional Access policies that allow it"}
	case ec == smtp.EnhancedCode{5, 7, 139}:
		c.Meaning = "a tenant policy (Conditional Access or an authentication policy) refuses this SMTP sign-in"
		c.Fix = []string{"Entra admin center > Protection > Conditional Access > Sign-in logs of " + r.identity() + ": find the policy that failed and exclude this app or sign-in"}
	case se.Code == 535:
		if r.needsFullAccess() {
			c.Meaning = fmt.Sprintf("Exchange accepted no SMTP login for %s with this token: %s has no FullAccess on it", mb, r.identity())
			c.Fix = r.fullAccessFix()
			if r.a.Flow == config.FlowApp {
				c.Fix = append(c.Fix, "and the app registration needs the Office 365 Exchange Online application permission SMTP.SendAsApp with admin consent: "+r.consentURL())
			}
		} else {
			c.Meaning = fmt.Sprintf("Exchange refused the token for SMTP: %s is not the account signed in, or SMTP AUTH is blocked for it", mb)
			c.Fix = []string{fmt.Sprintf("run 'oauthbridge login %s' and sign in as %s", r.a.Name, mb)}
		}
	case se.Code/100 == 4:
		c.Meaning = "a temporary refusal (e.g. 432 4.3.2: the mailbox's 3 concurrent SMTP sessions are in use)"
		c.Fix = []string{fmt.Sprintf("run 'oauthbridge doctor %s' again; if it persists, lower smtp_max_connections of the accounts on %s", r.a.Name, mb)}
	default:
		c.Meaning = "Exchange refused SMTP AUTH"
		c.Fix = []string{"see the reply above"}
	}
}

func (r *run) checkSendAs() {
	var addrs []string
	for _, s := range r.a.SendAs {
		if !strings.EqualFold(s, r.a.Mailbox) {
			addrs = append(addrs, s)
		}
	}
	if len(addrs) == 0 {
		r.add(Check{ID: "send-as", Name: "send as other addresses", Status: Skip, Detail: "no send_as addresses configured"})
		return
	}
	for _, addr := range addrs {
		c := Check{ID: "send-as", Name: "send as " + addr + " (MAIL FROM, then RSET)"}
		switch {
		case !r.sendsSMTP():
			c.Status = Skip
			c.Detail = "send_via = \"graph\": Graph checks Send As only when a message is sent (403 ErrorSendAsDenied), which doctor does not do; grant it beforehand: Add-RecipientPermission -Identity " + addr + " -Trustee " + r.a.LoginHint() + " -AccessRights SendAs"
			r.add(c)
			continue
		case r.smtpOK == nil:
			c.Status, c.Detail = Skip, "needs a working SMTP AUTH (see smtp)"
			r.add(c)
			continue
		}
		cl := r.smtpOK.c
		_ = r.smtpOK.conn.SetDeadline(time.Now().Add(r.opts.CheckTimeout))
		err := cl.Mail(addr, nil)
		if err != nil {
			c.Status, c.Upstream = Fail, smtpText(err)
			c.Detail = fmt.Sprintf("Exchange refused MAIL FROM:<%s> for %s", addr, r.a.Mailbox)
			var se *smtp.SMTPError
			if errors.As(err, &se) && se.Code/100 == 5 {
				c.Meaning = fmt.Sprintf("%s has no Send As permission on %s", r.a.Mailbox, addr)
				if r.a.Flow == config.FlowApp {
					c.Meaning = fmt.Sprintf("the app's service principal has no Send As permission on %s", addr)
				}
				c.Fix = r.sendAsFix(addr)
			} else if errors.As(err, &se) {
				c.Meaning = "a temporary refusal; run the doctor again"
			} else {
				c.Meaning = "the SMTP session broke off"
				r.smtpOK.conn.Close()
				r.smtpOK = nil
				r.add(c)
				continue
			}
			_ = cl.Reset()
			r.add(c)
			continue
		}
		if err := cl.Reset(); err != nil {
			c.Status, c.Detail = Fail, "RSET after MAIL FROM failed: "+smtpText(err)
			c.Meaning = "the SMTP session broke off; nothing was sent"
			r.add(c)
			continue
		}
		c.Status = Pass
		c.Detail = fmt.Sprintf("MAIL FROM:<%s> accepted, then RSET (nothing sent). Exchange refuses a missing Send As either here (550 5.7.60) or only at the end of DATA (554 5.2.252 SendAsDenied), which cannot be seen without sending a message", addr)
		r.add(c)
	}
}

func (r *run) checkHeadroom() {
	c := Check{ID: "headroom", Name: "connection headroom"}
	var names []string
	imapSum, smtpSum := 0, 0
	var smtpNames []string
	for _, a := range r.cfg.Accounts {
		if !strings.EqualFold(a.Mailbox, r.a.Mailbox) {
			continue
		}
		names = append(names, fmt.Sprintf("%s: %d", a.Name, a.MaxConnections))
		imapSum += a.MaxConnections
		if a.SendVia != config.SendViaGraph {
			smtpNames = append(smtpNames, fmt.Sprintf("%s: %d", a.Name, a.SMTPMaxConnections))
			smtpSum += a.SMTPMaxConnections
		}
	}
	var bad, fix []string
	if imapSum > ExchangeMailboxConnections {
		bad = append(bad, fmt.Sprintf("the bridge may open %d IMAP/POP3 sessions to %s (max_connections %s); Exchange Online allows %d per mailbox and protocol, and logins beyond it fail with \"User is authenticated but not connected.\"", imapSum, r.a.Mailbox, strings.Join(names, ", "), ExchangeMailboxConnections))
		fix = append(fix, fmt.Sprintf("lower max_connections of the account(s) on %s so that they add up to at most %d (10 leaves room for Outlook and phones on the same mailbox), then systemctl reload oauthbridge", r.a.Mailbox, ExchangeOnPremConnections))
	}
	if smtpSum > ExchangeSMTPConnections {
		bad = append(bad, fmt.Sprintf("the bridge may open %d SMTP sessions for %s (smtp_max_connections %s); Exchange allows %d concurrent submissions per mailbox (432 4.3.2 beyond)", smtpSum, r.a.Mailbox, strings.Join(smtpNames, ", "), ExchangeSMTPConnections))
		fix = append(fix, fmt.Sprintf("lower smtp_max_connections of the account(s) on %s so that they add up to at most %d, then systemctl reload oauthbridge", r.a.Mailbox, ExchangeSMTPConnections))
	}
	if len(bad) > 0 {
		c.Status, c.Detail = Fail, strings.Join(bad, "; ")
		c.Meaning = "at busy times the bridge's own sessions would be refused by Exchange"
		c.Fix = fix
		r.add(c)
		return
	}
	c.Status = Pass
	c.Detail = fmt.Sprintf("IMAP/POP3: up to %d session(s) of Exchange's %d per mailbox", imapSum, ExchangeMailboxConnections)
	if imapSum > ExchangeOnPremConnections {
		c.Detail += fmt.Sprintf(" (some tenants are reported to refuse more than %d)", ExchangeOnPremConnections)
	}
	if r.sendsSMTP() {
		c.Detail += fmt.Sprintf("; SMTP: up to %d of %d", smtpSum, ExchangeSMTPConnections)
	}
	r.add(c)
}
