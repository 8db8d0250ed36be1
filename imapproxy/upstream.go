package imapproxy

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/base64"
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"
	"time"

	"github.com/oauthbridge/oauthbridge/config"
	"github.com/oauthbridge/oauthbridge/internal/frontdoor"
	"github.com/oauthbridge/oauthbridge/tokens"
)

// upstream is an upstream IMAP connection before the splice.
type upstream struct {
	conn net.Conn
	br   *bufio.Reader
	bw   *bufio.Writer
	seq  int
}

func (u *upstream) nextTag() string {
	u.seq++
	return "ob" + strconv.Itoa(u.seq)
}

func (u *upstream) readLine() (string, error) {
	var line []byte
	for {
		chunk, err := u.br.ReadSlice('\n')
		line = append(line, chunk...)
		if err == nil {
			break
		}
		if !errors.Is(err, bufio.ErrBufferFull) {
			return "", err
		}
		if len(line) > maxUpstreamLine {
			return "", fmt.Errorf("imapproxy: upstream line longer than %d bytes", maxUpstreamLine)
		}
	}
	return strings.TrimRight(string(line), "\r\n"), nil
}

func (u *upstream) write(s string) error {
	u.bw.WriteString(s)
	return u.bw.Flush()
}

// status splits "OK [CODE args] text" into its parts.
func status(s string) (typ, code, text string) {
	typ, rest, _ := strings.Cut(s, " ")
	typ = strings.ToUpper(typ)
	if strings.HasPrefix(rest, "[") {
		if end := strings.IndexByte(rest, ']'); end > 0 {
			code, rest = rest[1:end], strings.TrimPrefix(rest[end+1:], " ")
		}
	}
	return typ, code, rest
}

// postAuthCaps cleans the upstream's capability list for the client:
// STARTTLS and LOGINDISABLED make no sense once logged in.
func postAuthCaps(caps string) string {
	var out []string
	for _, c := range strings.Fields(caps) {
		switch strings.ToUpper(c) {
		case "STARTTLS", "LOGINDISABLED":
			continue
		}
		out = append(out, c)
	}
	if len(out) == 0 {
		return "IMAP4rev1"
	}
	return strings.Join(out, " ")
}

// transient reports whether an upstream NO/BAD/BYE line is Exchange
// throttling or a backend outage (microsoft-365.md §5.3), Gmail's
// connection limit ("NO [ALERT] Too many simultaneous connections.
// (Failure)", §8), or carries an RFC 5530 code for a temporary condition
// (Dovecot: "NO [UNAVAILABLE] Temporary authentication failure."). Such a
// failure clears by itself: the client is told to retry and the token is
// not blamed.
func transient(line string) bool {
	t := strings.ToLower(line)
	return strings.Contains(t, "throttled") || strings.Contains(t, "server unavailable") || strings.Contains(t, "connection closed") ||
		strings.Contains(t, "[unavailable]") || strings.Contains(t, "[inuse]") || strings.Contains(t, "too many simultaneous connections")
}

// upstreamLogin logs in to the account's mailbox. When the upstream refuses
// the token, the token source is told and one fresh token is tried (unless
// the source hands out the same token again, which cannot help).
func (c *session) upstreamLogin(ctx context.Context, g *frontdoor.Grant) (*upstream, string, *frontdoor.Failure) {
	acct := g.Account
	tok, f := g.Token(ctx)
	if f != nil {
		return nil, "", f
	}
	up, caps, f := c.tryUpstream(ctx, acct, tok)
	if f == nil || !f.Retry {
		return up, caps, f
	}
	g.Rejected(tok)
	tok2, f2 := g.Token(ctx)
	if f2 != nil {
		f2.Err = fmt.Errorf("%w (after the upstream refused the previous token: %v)", f2.Err, f.Err)
		return nil, "", f2
	}
	if tok2 == tok {
		return nil, "", f
	}
	up, caps, f = c.tryUpstream(ctx, acct, tok2)
	if f != nil && f.Retry {
		g.Rejected(tok2)
	}
	return up, caps, f
}

// tryUpstream dials the account's IMAP server, authenticates with XOAUTH2
// and checks that the session is usable. On success the connection has no
// deadline and its reader may hold bytes for the splice.
func (c *session) tryUpstream(ctx context.Context, acct *config.Account, tok string) (*upstream, string, *frontdoor.Failure) {
	server := acct.Provider.IMAPServer
	timeout := c.lim.UpstreamTimeout
	dctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	d := tls.Dialer{NetDialer: &net.Dialer{}, Config: acct.Provider.UpstreamTLS(server)}
	conn, err := d.DialContext(dctx, "tcp", server)
	if err != nil {
		var cv *tls.CertificateVerificationError
		switch {
		case errors.As(err, &cv):
			return nil, "", &frontdoor.Failure{Kind: frontdoor.Failing, Class: "tls",
				Err: fmt.Errorf("imapproxy: upstream %s: certificate not trusted (check the provider's ca_file / imap_server): %w", server, err)}
		case errors.Is(err, context.DeadlineExceeded):
			return nil, "", &frontdoor.Failure{Kind: frontdoor.Unreachable, Class: "timeout",
				Err: fmt.Errorf("imapproxy: upstream %s: no connection within upstream_timeout %s: %w", server, timeout, err)}
		}
		return nil, "", &frontdoor.Failure{Kind: frontdoor.Unreachable, Class: "dial",
			Err: fmt.Errorf("imapproxy: upstream %s: %w", server, err)}
	}
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	defer stop()
	_ = conn.SetDeadline(time.Now().Add(timeout))
	up := &upstream{conn: conn, br: bufio.NewReaderSize(conn, 32*1024), bw: bufio.NewWriterSize(conn, 8*1024)}

	caps, f := up.login(acct, tok)
	if f != nil {
		conn.Close()
		var ne net.Error
		if errors.As(f.Err, &ne) && ne.Timeout() {
			f.Class = "timeout"
			f.Err = fmt.Errorf("imapproxy: upstream %s did not answer within upstream_timeout %s: %w", server, timeout, f.Err)
		}
		return nil, "", f
	}
	_ = conn.SetDeadline(time.Time{})
	return up, caps, nil
}

// login reads the greeting, authenticates and probes. It returns the
// post-auth capabilities for the client's tagged OK.
func (u *upstream) login(acct *config.Account, tok string) (string, *frontdoor.Failure) {
	server := acct.Provider.IMAPServer
	ioFail := func(stage string, err error) *frontdoor.Failure {
		return &frontdoor.Failure{Kind: frontdoor.Unreachable, Class: "protocol",
			Err: fmt.Errorf("imapproxy: upstream %s: %s: %w", server, stage, err)}
	}
	protoFail := func(format string, args ...any) *frontdoor.Failure {
		return &frontdoor.Failure{Kind: frontdoor.Temporary, Class: "protocol",
			Err: fmt.Errorf("imapproxy: upstream %s: "+format, append([]any{server}, args...)...)}
	}

	greeting, err := u.readLine()
	if err != nil {
		return "", ioFail("reading the greeting", err)
	}
	if typ, _, _ := status(strings.TrimPrefix(greeting, "* ")); !strings.HasPrefix(greeting, "* ") || typ != "OK" {
		return "", protoFail("unexpected greeting %q", truncate(greeting, 200))
	}

	// AUTHENTICATE XOAUTH2 with the initial response on the command line
	// (SASL-IR), as Exchange documents it.
	tag := u.nextTag()
	if err := u.write(tag + " AUTHENTICATE XOAUTH2 " + tokens.XOAUTH2Base64(acct.Mailbox, tok) + "\r\n"); err != nil {
		return "", ioFail("sending AUTHENTICATE", err)
	}
	var authCaps, challenge string
	for {
		line, err := u.readLine()
		if err != nil {
			return "", ioFail("reading the AUTHENTICATE result", err)
		}
		if strings.HasPrefix(line, "+") {
			// The XOAUTH2 error challenge (base64 JSON). Per the mechanism,
			// answer with an empty line; the tagged NO follows.
			challenge = decodeChallenge(strings.TrimSpace(strings.TrimPrefix(line, "+")))
			if err := u.write("\r\n"); err != nil {
				return "", ioFail("answering the XOAUTH2 challenge", err)
			}
			continue
		}
		if rest, ok := strings.CutPrefix(line, "* "); ok {
			if c, ok := cutFold(rest, "CAPABILITY "); ok {
				authCaps = c
			}
			continue
		}
		rest, ok := strings.CutPrefix(line, tag+" ")
		if !ok {
			continue
		}
		typ, code, _ := status(rest)
		if typ == "OK" {
			if c, ok := cutFold(code, "CAPABILITY "); ok {
				authCaps = c
			}
			break
		}
		if transient(rest) {
			return "", &frontdoor.Failure{Kind: frontdoor.Temporary, Class: "auth",
				Err: fmt.Errorf("imapproxy: upstream %s answered AUTHENTICATE with %q; the server is throttling, at its connection limit or unavailable, the client should retry later", server, truncate(rest, 300))}
		}
		detail := fmt.Sprintf("%q", truncate(rest, 300))
		if challenge != "" {
			detail += fmt.Sprintf(" (error challenge %s)", challenge)
		}
		if acct.Provider.IsGoogle() {
			return "", &frontdoor.Failure{Kind: frontdoor.Rejected, Class: "auth", Retry: true, Google: true,
				Err: fmt.Errorf("imapproxy: upstream %s refused XOAUTH2 for user=%s: %s; check that IMAP is on for %s (Gmail settings, and for Workspace the Admin console's IMAP setting) and that the token is %s's own (a person signs in as the mailbox; a service account needs domain-wide delegation for https://mail.google.com/)",
					server, acct.Mailbox, detail, acct.Mailbox, acct.Mailbox)}
		}
		return "", &frontdoor.Failure{Kind: frontdoor.Rejected, Class: "auth", Retry: true,
			Err: fmt.Errorf("imapproxy: upstream %s refused XOAUTH2 for user=%s: %s; check that the app registration has the delegated IMAP.AccessAsUser.All permission with consent (or IMAP.AccessAsApp plus an Exchange service principal for flow = \"app\"), that IMAP is enabled for the mailbox, and that the delegate has FullAccess on %s",
				server, acct.Mailbox, detail, acct.Mailbox)}
	}

	// Exchange can accept the token and then answer the first command with
	// "BAD User is authenticated but not connected." (microsoft-365.md §6.1),
	// so the login only counts once CAPABILITY and a NOOP have succeeded.
	capTag, noopTag := u.nextTag(), u.nextTag()
	if err := u.write(capTag + " CAPABILITY\r\n" + noopTag + " NOOP\r\n"); err != nil {
		return "", ioFail("sending the post-login probe", err)
	}
	var probeCaps, failed string
	seen := 0
	for seen < 2 {
		line, err := u.readLine()
		if err != nil {
			if failed != "" {
				break // the server gave up on us after refusing; report its words
			}
			return "", ioFail("reading the post-login probe", err)
		}
		if rest, ok := strings.CutPrefix(line, "* "); ok {
			if c, ok := cutFold(rest, "CAPABILITY "); ok {
				probeCaps = c
			} else if typ, _, _ := status(rest); typ == "BYE" && failed == "" {
				failed = line
			}
			continue
		}
		for _, t := range []string{capTag, noopTag} {
			if rest, ok := strings.CutPrefix(line, t+" "); ok {
				seen++
				if typ, _, _ := status(rest); typ != "OK" && failed == "" {
					failed = rest
				}
			}
		}
	}
	if failed != "" {
		if transient(failed) {
			return "", &frontdoor.Failure{Kind: frontdoor.Temporary, Class: "protocol",
				Err: fmt.Errorf("imapproxy: upstream %s answered the post-login probe with %q; Exchange is throttling or unavailable", server, truncate(failed, 300))}
		}
		who := acct.LoginHint()
		if acct.Flow == config.FlowApp {
			who = "<the app's service principal>"
		}
		return "", &frontdoor.Failure{Kind: frontdoor.Rejected, Class: "auth",
			Err: fmt.Errorf("imapproxy: upstream %s accepted the token but answered the next command with %q: the signed-in user has no access to mailbox %s; grant FullAccess (Add-MailboxPermission -Identity %s -User %s -AccessRights FullAccess), check the account's mailbox (user=) and the signed-in user, and that IMAP is enabled for the mailbox",
				server, truncate(failed, 300), acct.Mailbox, acct.Mailbox, who)}
	}
	if probeCaps == "" {
		probeCaps = authCaps
	}
	return postAuthCaps(probeCaps), nil
}

// cutFold is strings.CutPrefix, ignoring ASCII case in the prefix.
func cutFold(s, prefix string) (string, bool) {
	if len(s) >= len(prefix) && strings.EqualFold(s[:len(prefix)], prefix) {
		return s[len(prefix):], true
	}
	return s, false
}

// decodeChallenge turns the base64 JSON of an XOAUTH2 error challenge into
// text for the log; it holds a status and scope, never a token.
func decodeChallenge(s string) string {
	b, err := base64.StdEncoding.DecodeString(s)
	if err != nil || len(b) == 0 {
		return strconv.Quote(truncate(s, 200))
	}
	return strconv.Quote(truncate(string(b), 300))
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "..."
}
