package fakems

import (
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"strings"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"

	"github.com/oauthbridge/oauthbridge/internal/logging"
	"github.com/oauthbridge/oauthbridge/tokens"
)

// SMTP limits, as Exchange Online's submission endpoint has them.
const (
	smtpDomain          = "FAKE.prod.outlook.com"
	smtpMaxMessageBytes = 150 << 20 // advertised as SIZE 157286400
	smtpMaxRecipients   = 500       // Exchange's default per-message recipient limit
	smtpMaxAuthConns    = 3         // concurrent authenticated connections per mailbox
	smtpReadTimeout     = 10 * time.Minute
	smtpWriteTimeout    = time.Minute
)

// Exchange's SMTP replies (microsoft-365.md §2.4, §6.2).
var (
	errSMTPAuthFailed = &smtp.SMTPError{Code: 535, EnhancedCode: smtp.EnhancedCode{5, 7, 3}, Message: "Authentication unsuccessful [" + smtpDomain + "]"}
	errSMTPNotAuthed  = &smtp.SMTPError{Code: 530, EnhancedCode: smtp.EnhancedCode{5, 7, 57}, Message: "Client not authenticated to send mail."}
	errSMTPSendAs     = &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 7, 60}, Message: "SMTP; Client does not have permissions to send as this sender"}
	errSMTPConnLimit  = &smtp.SMTPError{Code: 432, EnhancedCode: smtp.EnhancedCode{4, 3, 2}, Message: "Concurrent connections limit exceeded."}
	errSMTPUnknown    = &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 1, 1}, Message: "User unknown"}

	// SMTP AUTH switched off (microsoft-365.md §3.4, §6.2); it blocks
	// OAuth too.
	errSMTPAuthDisabledTenant  = &smtp.SMTPError{Code: 535, EnhancedCode: smtp.EnhancedCode{5, 7, 139}, Message: "Authentication unsuccessful, SmtpClientAuthentication is disabled for the Tenant. Visit https://aka.ms/smtp_auth_disabled for more information."}
	errSMTPAuthDisabledMailbox = &smtp.SMTPError{Code: 535, EnhancedCode: smtp.EnhancedCode{5, 7, 139}, Message: "Authentication unsuccessful, SmtpClientAuthentication is disabled for the Mailbox. Visit https://aka.ms/smtp_auth_disabled for more information."}
)

// SMTPAuthSetting is a mailbox's SmtpClientAuthenticationDisabled
// (Set-CASMailbox): follow the tenant ($null), or override it.
type SMTPAuthSetting int

const (
	SMTPAuthFollowTenant SMTPAuthSetting = iota // $null: the tenant setting applies
	SMTPAuthEnabled                             // $false: enabled whatever the tenant says
	SMTPAuthDisabled                            // $true: disabled for this mailbox
)

// SetTenantSMTPAuthDisabled models Set-TransportConfig
// -SmtpClientAuthenticationDisabled: while true, AUTH on the fake's SMTP
// server answers "535 5.7.139 ... disabled for the Tenant" for mailboxes
// that follow the tenant setting.
func (f *Fake) SetTenantSMTPAuthDisabled(disabled bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.smtpAuthTenant = disabled
}

// SetMailboxSMTPAuth models Set-CASMailbox -SmtpClientAuthenticationDisabled
// for mailbox (the mailbox setting wins over the tenant's). A disabled
// mailbox gets "535 5.7.139 ... disabled for the Mailbox".
func (f *Fake) SetMailboxSMTPAuth(mailbox string, s SMTPAuthSetting) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.mailboxLocked(mailbox).smtpAuth = s
}

// SetSMTPDropInData: while true, the SMTP server closes the connection in the
// middle of reading DATA, and nothing is delivered.
func (f *Fake) SetSMTPDropInData(b bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.smtpDropInData = b
}

func (f *Fake) newSMTPServer(tlsConfig *tls.Config) *smtp.Server {
	srv := smtp.NewServer(smtp.BackendFunc(func(c *smtp.Conn) (smtp.Session, error) {
		log := f.log.With("proto", "smtp", "conn", logging.ConnID(), "remote", c.Conn().RemoteAddr().String())
		return &smtpSession{f: f, c: c, log: log}, nil
	}))
	srv.Domain = smtpDomain
	srv.TLSConfig = tlsConfig
	srv.AllowInsecureAuth = false // AUTH is offered only after STARTTLS
	srv.MaxMessageBytes = smtpMaxMessageBytes
	srv.MaxRecipients = smtpMaxRecipients
	srv.ReadTimeout = smtpReadTimeout
	srv.WriteTimeout = smtpWriteTimeout
	srv.EnableSMTPUTF8 = true
	srv.EnableDSN = true
	srv.ErrorLog = printfLogger{f.log.With("proto", "smtp")}
	return srv
}

// smtpSession is one SMTP session (go-smtp makes a new one after STARTTLS).
type smtpSession struct {
	f   *Fake
	c   *smtp.Conn
	log *slog.Logger

	mailbox string // authenticated user= mailbox, "" before AUTH
	counted bool   // holds one of the mailbox's connection slots
	from    string
	to      []string
}

var _ interface {
	smtp.Session
	smtp.AuthSession
} = (*smtpSession)(nil)

func (s *smtpSession) AuthMechanisms() []string { return []string{tokens.XOAUTH2} }

func (s *smtpSession) Auth(mech string) (sasl.Server, error) {
	if mech != tokens.XOAUTH2 {
		return nil, smtp.ErrAuthUnknownMechanism
	}
	if s.f.opts.Google {
		return googleSASL(s.checkGoogleXOAUTH2), nil
	}
	return &xoauth2Server{check: s.checkXOAUTH2}, nil
}

func (s *smtpSession) checkXOAUTH2(user, token string, perr error) error {
	s.f.countSMTPAuth(user)
	if perr != nil {
		s.log.Info("fakems: smtp auth failed", "error", perr)
		return errSMTPAuthFailed
	}
	res := s.f.checkBearer(scopeSMTP, user, token)
	if !res.tokenOK || !res.mailboxOK {
		s.log.Info("fakems: smtp auth failed", "mailbox", user, "token_ok", res.tokenOK)
		return errSMTPAuthFailed
	}
	addr := res.mailbox.addr
	s.f.mu.Lock()
	switch {
	case res.mailbox.smtpAuth == SMTPAuthDisabled:
		s.f.mu.Unlock()
		s.log.Info("fakems: smtp auth disabled for the mailbox", "mailbox", addr)
		return errSMTPAuthDisabledMailbox
	case res.mailbox.smtpAuth == SMTPAuthFollowTenant && s.f.smtpAuthTenant:
		s.f.mu.Unlock()
		s.log.Info("fakems: smtp auth disabled for the tenant", "mailbox", addr)
		return errSMTPAuthDisabledTenant
	}
	if s.f.smtpAuthConns[addr] >= smtpMaxAuthConns {
		s.f.mu.Unlock()
		s.log.Info("fakems: smtp concurrent connection limit", "mailbox", addr)
		return errSMTPConnLimit
	}
	s.f.smtpAuthConns[addr]++
	s.f.mu.Unlock()
	s.mailbox, s.counted = addr, true
	s.log = s.log.With("user", res.who, "mailbox", addr)
	s.log.Info("fakems: smtp authenticated")
	return nil
}

func (s *smtpSession) Mail(from string, _ *smtp.MailOptions) error {
	if s.mailbox == "" {
		return errSMTPNotAuthed
	}
	if n := norm(from); n != s.mailbox {
		s.f.mu.Lock()
		mb := s.f.mailboxes[s.mailbox]
		ok := mb != nil && mb.sendAs[n]
		s.f.mu.Unlock()
		if !ok {
			return errSMTPSendAs
		}
	}
	s.from = from
	return nil
}

func (s *smtpSession) Rcpt(to string, _ *smtp.RcptOptions) error {
	if s.mailbox == "" {
		return errSMTPNotAuthed
	}
	if strings.HasPrefix(norm(to), "reject-") {
		return errSMTPUnknown
	}
	s.to = append(s.to, to)
	return nil
}

// dropAfter is how much of the DATA stream SetSMTPDropInData lets through
// before the connection is cut.
const dropAfter = 1

func (s *smtpSession) Data(r io.Reader) error {
	if s.mailbox == "" {
		return errSMTPNotAuthed
	}
	s.f.mu.Lock()
	drop := s.f.smtpDropInData
	s.f.mu.Unlock()
	if drop {
		_, _ = io.ReadFull(r, make([]byte, dropAfter))
		s.log.Info("fakems: smtp dropping connection in DATA (fault)")
		nc := s.c.Conn()
		if tc, ok := nc.(*tls.Conn); ok {
			nc = tc.NetConn() // cut the socket; no TLS close_notify
		}
		_ = nc.Close()
		return errors.New("fakems: smtp: connection dropped in DATA")
	}
	if s.f.opts.DiscardSubmitted {
		n, err := io.Copy(io.Discard, r)
		if err != nil {
			return err
		}
		s.f.mu.Lock()
		s.f.submitted++
		s.f.submittedBytes += n
		s.f.mu.Unlock()
		return s.accepted(n)
	}
	data, err := io.ReadAll(r)
	if err != nil {
		return err
	}
	msg := SentMessage{AuthUser: s.mailbox, From: s.from, To: slices.Clone(s.to), Data: data}
	s.f.mu.Lock()
	s.f.sent = append(s.f.sent, msg)
	s.f.submitted++
	s.f.submittedBytes += int64(len(data))
	var local []*mailbox
	for _, rcpt := range s.to {
		if mb := s.f.mailboxes[norm(rcpt)]; mb != nil {
			local = append(local, mb)
		}
	}
	sender := s.f.mailboxes[s.mailbox]
	s.f.mu.Unlock()
	for _, mb := range local {
		if err := s.f.appendRaw(mb, "INBOX", data, nil); err != nil {
			s.log.Warn("fakems: smtp local delivery failed", "error", err)
		}
	}
	if sender != nil {
		// Exchange saves messages submitted with SMTP AUTH to Sent Items.
		_ = s.f.appendRaw(sender, "Sent Items", data, nil)
	}
	return s.accepted(int64(len(data)))
}

// accepted logs an accepted message and returns Exchange's 250 reply.
func (s *smtpSession) accepted(n int64) error {
	id := randomToken(12)
	s.log.Info("fakems: smtp message accepted", "bytes_in", n, "rcpts", len(s.to))
	// go-smtp always answers a nil Data error with "250 2.0.0 OK: queued";
	// returning a 250 SMTPError is how the reply text is chosen.
	return &smtp.SMTPError{Code: 250, EnhancedCode: smtp.EnhancedCode{2, 0, 0}, Message: fmt.Sprintf("OK <%s@%s> [Hostname=%s]", id, smtpDomain, smtpDomain)}
}

func (s *smtpSession) Reset() {
	s.from, s.to = "", nil
}

func (s *smtpSession) Logout() error {
	if s.counted {
		s.f.mu.Lock()
		s.f.smtpAuthConns[s.mailbox]--
		s.f.mu.Unlock()
		s.counted = false
	}
	return nil
}
