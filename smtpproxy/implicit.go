package smtpproxy

import (
	"context"
	"crypto/tls"
	"errors"
	"net"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/oauthbridge/oauthbridge/tokens"
)

// ImplicitTLSPort is the submission port with TLS from the first byte
// (RFC 8314), e.g. smtp.gmail.com:465. Any other port gets STARTTLS.
const ImplicitTLSPort = "465"

// errGoogleRefusedAuth is errUpstreamRefusedAuth for a Google account.
var errGoogleRefusedAuth = &smtp.SMTPError{Code: 454, EnhancedCode: smtp.EnhancedCode{4, 7, 0}, Message: "Google refused the bridge's login for this mailbox; an administrator must act, see the bridge log"}

// implicitTLSPort is ImplicitTLSPort; tests point it at a port of their own.
var implicitTLSPort = ImplicitTLSPort

// implicitTLS reports whether addr is an implicit-TLS submission port.
func implicitTLS(addr string) bool {
	_, port, err := net.SplitHostPort(addr)
	return err == nil && port == implicitTLSPort
}

// connectImplicitTLS is connect for port 465: TLS (certificate verified),
// greeting, EHLO and AUTH XOAUTH2.
func (s *session) connectImplicitTLS(addr, tok, domain string, timeout time.Duration) (*upstream, error) {
	ctx, cancel := context.WithTimeout(s.ctx, timeout)
	defer cancel()
	d := net.Dialer{Timeout: timeout}
	raw, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, &connectError{"dial", err}
	}
	bc := &batchConn{Conn: raw}
	conn := tls.Client(bc, s.account.Provider.UpstreamTLS(addr))
	if err := conn.HandshakeContext(ctx); err != nil {
		raw.Close()
		var cv *tls.CertificateVerificationError
		var rh tls.RecordHeaderError
		if errors.As(err, &cv) || errors.As(err, &rh) {
			return nil, &connectError{"tls", err}
		}
		return nil, &connectError{"dial", err}
	}
	stop := context.AfterFunc(s.ctx, func() { conn.Close() })
	defer stop()
	fail := func(stage string, err error) (*upstream, error) {
		conn.Close()
		return nil, &connectError{stage, err}
	}
	c := smtp.NewClient(conn)
	c.CommandTimeout = timeout
	c.SubmissionTimeout = DefaultSubmissionTimeout
	if err := c.Hello(domain); err != nil {
		return fail("ehlo", err)
	}
	if err := c.Auth(tokens.NewXOAUTH2Client(s.account.Mailbox, tok)); err != nil {
		return fail("auth", err)
	}
	up := s.srv.newUpstream(c, conn, addr)
	up.batch = bc
	return up, nil
}
