package pop3proxy

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"strings"
	"time"

	"github.com/oauthbridge/oauthbridge/config"
	"github.com/oauthbridge/oauthbridge/internal/frontdoor"
	"github.com/oauthbridge/oauthbridge/tokens"
)

// Upstream failure classes, also the class label of
// oauthbridge_upstream_errors_total.
const (
	classDial     = "dial"
	classTLS      = "tls"
	classTimeout  = "timeout"
	classProtocol = "protocol"
	classAuth     = "auth"
	// classTemporary: the server itself said the failure is temporary
	// (RFC 3206 [SYS/TEMP], RFC 2449 [IN-USE]); the token is not blamed.
	classTemporary = "temporary"
)

// upstreamError is a failed upstream login. Reply quotes the server's line
// when there was one; it never contains the token.
type upstreamError struct {
	Class     string
	Server    string
	Reply     string // the upstream's -ERR (or unexpected) line
	Challenge string // decoded XOAUTH2 error challenge, if any
	// TokenSent is true when the refusal came after the token: only then is
	// a fresh token worth a retry.
	TokenSent bool
	Google    bool // the account's provider is Google (wording of the replies)
	Err       error
}

func (e *upstreamError) Error() string {
	s := fmt.Sprintf("pop3proxy: upstream %s: %s", e.Server, e.Class)
	if e.Reply != "" {
		s += fmt.Sprintf(": server said %q", e.Reply)
	}
	if e.Challenge != "" {
		s += fmt.Sprintf(" (challenge %q)", e.Challenge)
	}
	if e.Err != nil {
		s += ": " + e.Err.Error()
	}
	return s
}

func (e *upstreamError) Unwrap() error { return e.Err }

// upstream is a logged-in upstream connection and the reader that holds
// whatever the server sent after its +OK.
type upstream struct {
	conn net.Conn
	br   *bufio.Reader
}

// connectUpstream gets a token and logs in to the account's POP3 server.
// When the server refuses the token it tells the token source and tries
// once more with a fresh one (the token may have been revoked early).
func (s *Server) connectUpstream(ctx context.Context, log *slog.Logger, g *frontdoor.Grant, timeout time.Duration) (*upstream, *frontdoor.Failure) {
	acct := g.Account
	for attempt := 1; ; attempt++ {
		tok, f := g.Token(ctx)
		if f != nil {
			return nil, f
		}
		uctx, cancel := context.WithTimeout(ctx, timeout)
		up, err := dialXOAUTH2(uctx, acct, tok)
		cancel()
		if err == nil {
			return up, nil
		}
		var ue *upstreamError
		if errors.As(err, &ue) {
			s.m.UpstreamErrors.WithLabelValues("pop3", ue.Class).Inc()
			if ue.Class == classAuth && ue.TokenSent {
				g.Rejected(tok)
				if attempt == 1 && ctx.Err() == nil {
					log.Warn("upstream refused the token; retrying with a fresh one", "error", err)
					continue
				}
			}
		}
		return nil, upstreamFailure(acct.Name, acct.Mailbox, err)
	}
}

// dialXOAUTH2 connects with implicit TLS and runs the two-step AUTH XOAUTH2
// that Exchange's POP3 service requires (microsoft-365.md §2.3):
//
//	S: +OK The Microsoft Exchange POP3 service is ready.
//	C: AUTH XOAUTH2
//	S: +
//	C: <base64 user=...^Aauth=Bearer ...^A^A>
//	S: +OK User successfully authenticated.
//
// An error challenge ("+ <base64 json>", Google's style) is answered with an
// empty line, after which the server sends its -ERR. A Google account sends
// the one-line form, AUTH XOAUTH2 <base64>, which Gmail documents.
func dialXOAUTH2(ctx context.Context, acct *config.Account, token string) (*upstream, error) {
	server := acct.Provider.POP3Server
	fail := func(class string, err error) error {
		if errors.Is(err, os.ErrDeadlineExceeded) || errors.Is(err, context.DeadlineExceeded) {
			class = classTimeout
		}
		return &upstreamError{Class: class, Server: server, Err: err}
	}

	d := &tls.Dialer{
		NetDialer: &net.Dialer{KeepAliveConfig: net.KeepAliveConfig{Enable: true, Idle: time.Minute, Interval: time.Minute}},
		Config:    acct.Provider.UpstreamTLS(server),
	}
	conn, err := d.DialContext(ctx, "tcp", server)
	if err != nil {
		class := classDial
		var certErr *tls.CertificateVerificationError
		var unknownAuth x509.UnknownAuthorityError
		var hostErr x509.HostnameError
		var recErr tls.RecordHeaderError
		if errors.As(err, &certErr) || errors.As(err, &unknownAuth) || errors.As(err, &hostErr) || errors.As(err, &recErr) {
			class = classTLS
		}
		return nil, fail(class, err)
	}
	ok := false
	defer func() {
		if !ok {
			conn.Close()
		}
	}()
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	defer stop()
	if dl, has := ctx.Deadline(); has {
		_ = conn.SetDeadline(dl)
	}
	br := bufio.NewReader(conn)

	read := func() (string, error) {
		line, err := readLimitedLine(br, maxUpstreamLine)
		if err != nil && ctx.Err() != nil {
			err = fmt.Errorf("%w: %w", ctx.Err(), err)
		}
		return line, err
	}
	write := func(s string) error {
		_, err := io.WriteString(conn, s+"\r\n")
		return err
	}

	greeting, err := read()
	if err != nil {
		return nil, fail(classProtocol, fmt.Errorf("reading greeting: %w", err))
	}
	if !strings.HasPrefix(greeting, "+OK") {
		return nil, &upstreamError{Class: classProtocol, Server: server, Reply: greeting}
	}
	var line string
	if acct.Provider.IsGoogle() {
		// Gmail documents the one-line form (microsoft-365.md §8).
		if err := write("AUTH " + tokens.XOAUTH2 + " " + tokens.XOAUTH2Base64(acct.Mailbox, token)); err != nil {
			return nil, fail(classProtocol, err)
		}
	} else {
		if err := write("AUTH " + tokens.XOAUTH2); err != nil {
			return nil, fail(classProtocol, err)
		}
		line, err := read()
		if err != nil {
			return nil, fail(classProtocol, fmt.Errorf("reading AUTH continuation: %w", err))
		}
		if line != "+" && !strings.HasPrefix(line, "+ ") {
			// -ERR here means the server does not offer XOAUTH2 at all.
			return nil, &upstreamError{Class: classAuth, Server: server, Reply: line}
		}
		if err := write(tokens.XOAUTH2Base64(acct.Mailbox, token)); err != nil {
			return nil, fail(classProtocol, err)
		}
	}
	line, err = read()
	if err != nil {
		return nil, fail(classProtocol, fmt.Errorf("reading AUTH result: %w", err))
	}
	var challenge string
	if line == "+" || strings.HasPrefix(line, "+ ") {
		b, _ := base64.StdEncoding.DecodeString(strings.TrimSpace(strings.TrimPrefix(line, "+")))
		challenge = strings.TrimSpace(string(b))
		if err := write(""); err != nil {
			return nil, fail(classProtocol, err)
		}
		if line, err = read(); err != nil {
			return nil, fail(classProtocol, fmt.Errorf("reading AUTH result after challenge: %w", err))
		}
	}
	if !strings.HasPrefix(line, "+OK") {
		class := classAuth
		if u := strings.ToUpper(line); strings.Contains(u, "[SYS/TEMP]") || strings.Contains(u, "[IN-USE]") {
			class = classTemporary
		}
		return nil, &upstreamError{Class: class, Server: server, Reply: line, Challenge: challenge, TokenSent: true, Google: acct.Provider.IsGoogle()}
	}
	if !stop() {
		return nil, fail(classTimeout, ctx.Err())
	}
	_ = conn.SetDeadline(time.Time{})
	ok = true
	return &upstream{conn: conn, br: br}, nil
}
