package pop3proxy

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"encoding/base64"
	"errors"
	"io"
	"log/slog"
	"net"
	"os"
	"strings"
	"time"

	"github.com/oauthbridge/oauthbridge/config"
	"github.com/oauthbridge/oauthbridge/internal/frontdoor"
	"github.com/oauthbridge/oauthbridge/internal/localauth"
)

// Replies. Response codes follow RFC 2449 (SYS/TEMP, SYS/PERM, IN-USE) and
// RFC 3206 (AUTH).
const (
	replyGreeting       = "+OK oauthbridge POP3 ready"
	replyBye            = "+OK oauthbridge POP3 signing off"
	replyInvalidCreds   = "-ERR [AUTH] Invalid credentials"
	replyThrottled      = "-ERR [SYS/TEMP] too many login attempts for this user right now; password not checked, try again shortly"
	replyBusy           = "-ERR [SYS/TEMP] bridge busy checking passwords; password not checked, try again shortly"
	replyAutologout     = "-ERR [SYS/TEMP] autologout"
	replyShutdown       = "-ERR [SYS/TEMP] bridge shutting down, try again later"
	replyLineTooLong    = "-ERR line too long"
	replyTooManyBad     = "-ERR too many bad commands, closing connection"
	replyTooMany        = "-ERR too many commands before login, closing connection"
	replyCancelled      = "-ERR authentication cancelled"
	replyLoggedIn       = "+OK logged in"
	replyTemporary      = "-ERR [SYS/TEMP] mailbox temporarily unavailable, try again later"
	replyInUse          = "-ERR [IN-USE] too many connections to this mailbox, try again later"
	replyFailing        = "-ERR [SYS/PERM] mailbox unavailable: bridge configuration problem, see the bridge log"
	replyRejected       = "-ERR [AUTH] Microsoft 365 refused the bridge's token for this mailbox, see the bridge log"
	replyRejectedGoogle = "-ERR [AUTH] Google refused the bridge's token for this mailbox, see the bridge log"
)

// SASL LOGIN prompts, base64 of "Username:" and "Password:" as every
// client expects them.
var (
	promptUsername = base64.StdEncoding.EncodeToString([]byte("Username:"))
	promptPassword = base64.StdEncoding.EncodeToString([]byte("Password:"))
)

var (
	errLineTooLong  = errors.New("pop3proxy: line too long")
	errShuttingDown = errors.New("pop3proxy: shutting down")
)

// session is one client connection.
type session struct {
	srv   *Server
	fs    *frontdoor.Session
	cfg   *config.Config
	lim   config.ProxyLimits
	log   *slog.Logger
	audit *slog.Logger
	start time.Time

	raw    net.Conn // the accepted connection (after implicit TLS); deadlines are set here
	conn   net.Conn // raw, or the TLS connection over it
	br     *bufio.Reader
	tls    bool
	remote string // IP for localauth and the audit line

	user     string // from USER, until PASS
	bad      int
	fails    *frontdoor.Conn // per-connection failure policy
	commands int
}

func newSession(s *Server, fs *frontdoor.Session) *session {
	cfg := fs.Snapshot.(*config.Config)
	conn := fs.Conn()
	return &session{
		srv:    s,
		fs:     fs,
		cfg:    cfg,
		lim:    cfg.POP3.Limits,
		log:    fs.Log,
		audit:  s.opts.Logger.With("conn", fs.ID),
		start:  time.Now(),
		raw:    conn,
		conn:   conn,
		br:     bufio.NewReader(conn),
		tls:    fs.TLS(),
		remote: localauth.RemoteIP(conn.RemoteAddr()),
		fails:  s.failures.Conn(),
	}
}

func (c *session) setConn(conn net.Conn, isTLS bool) {
	c.conn = conn
	c.br = bufio.NewReader(conn)
	c.tls = isTLS
}

// armRead sets the pre-auth read deadline, or reports that the server is
// shutting down. During a drain the front door also moves any deadline set
// here into the past, so a read cannot slip through.
func (c *session) armRead() error {
	if c.fs.Draining() {
		return errShuttingDown
	}
	return c.raw.SetReadDeadline(time.Now().Add(c.lim.PreauthTimeout))
}

// reply writes one line (or several, joined with CRLF) to the client.
func (c *session) reply(s string) error {
	_ = c.conn.SetWriteDeadline(time.Now().Add(c.lim.PreauthTimeout))
	_, err := io.WriteString(c.conn, s+"\r\n")
	return err
}

// closeWith writes a last line; the caller closes the connection.
func (c *session) closeWith(s string) {
	_ = c.conn.SetWriteDeadline(time.Now().Add(closeWriteTimeout))
	_, _ = io.WriteString(c.conn, s+"\r\n")
}

// readLine reads one client line of at most MaxLineBytes, without its line
// ending.
func (c *session) readLine() (string, error) {
	if err := c.armRead(); err != nil {
		return "", err
	}
	return readLimitedLine(c.br, c.lim.MaxLineBytes)
}

func readLimitedLine(br *bufio.Reader, max int) (string, error) {
	var line []byte
	for {
		chunk, err := br.ReadSlice('\n')
		if max > 0 && len(line)+len(chunk) > max+2 { // +2: the CRLF is not part of the limit
			return "", errLineTooLong
		}
		line = append(line, chunk...)
		if err == nil {
			break
		}
		if err != bufio.ErrBufferFull {
			return "", err
		}
	}
	line = bytes.TrimSuffix(line, []byte("\n"))
	line = bytes.TrimSuffix(line, []byte("\r"))
	return string(line), nil
}

// parseCommand splits a POP3 command line into its upper-cased keyword and
// the rest of the line. The argument keeps inner spaces: RFC 1939 allows
// them in a PASS argument.
func parseCommand(line string) (cmd, arg string) {
	cmd, arg, _ = strings.Cut(line, " ")
	return strings.ToUpper(cmd), arg
}

// canAuth applies the front door's plaintext-password rule.
func (c *session) canAuth() bool {
	return frontdoor.PlaintextAllowed(c.tls, c.raw.RemoteAddr(), c.cfg.POP3.AllowInsecureAuth, c.srv.opts.IsLoopback)
}

func (c *session) tlsRequired() string {
	c.log.Warn("plaintext login refused: no TLS, remote is not loopback and allow_insecure_auth is off")
	if c.cfg.LocalTLS != nil && !c.tls {
		return "-ERR [AUTH] plaintext authentication requires TLS, use STLS"
	}
	return "-ERR [AUTH] plaintext authentication requires TLS, connect to the TLS port"
}

func (c *session) capabilities() string {
	lines := []string{"+OK capability list follows"}
	if c.canAuth() {
		lines = append(lines, "USER", "SASL PLAIN LOGIN")
	}
	if c.cfg.LocalTLS != nil && !c.tls {
		lines = append(lines, "STLS")
	}
	// Only what holds end to end without having asked the upstream yet:
	// Exchange supports TOP and UIDL, and our own replies carry codes.
	lines = append(lines, "TOP", "UIDL", "RESP-CODES", "AUTH-RESP-CODE", "IMPLEMENTATION oauthbridge", ".")
	return strings.Join(lines, "\r\n")
}

// run is the pre-auth loop. It returns when the connection should be
// closed; a successful login splices inside it.
func (c *session) run(ctx context.Context) {
	if err := c.reply(replyGreeting); err != nil {
		return
	}
	for {
		line, err := c.readLine()
		if err != nil {
			c.readFailed(err)
			return
		}
		c.commands++
		if c.commands > MaxPreauthCommands {
			c.closeWith(replyTooMany)
			return
		}
		cmd, arg := parseCommand(line)
		var stop bool
		switch cmd {
		case "CAPA":
			err = c.reply(c.capabilities())
		case "QUIT":
			c.closeWith(replyBye)
			return
		case "STLS":
			stop = c.startTLS(arg)
		case "USER":
			switch {
			case arg == "":
				stop = c.badCommand("-ERR USER needs a user name")
			case !c.canAuth():
				err = c.reply(c.tlsRequired())
			default:
				c.user = arg
				err = c.reply("+OK send PASS")
			}
		case "PASS":
			if c.user == "" {
				stop = c.badCommand("-ERR send USER first")
				break
			}
			user := c.user
			c.user = ""
			stop = c.login(ctx, user, arg)
		case "AUTH":
			stop = c.authenticate(ctx, arg)
		default:
			// Covers APOP, NOOP (a TRANSACTION command), STAT before login,
			// and anything that is not POP3 at all.
			stop = c.badCommand("-ERR unknown command or not valid before login")
		}
		if stop || err != nil {
			return
		}
	}
}

// readFailed answers a failed read where that helps the client.
func (c *session) readFailed(err error) {
	switch {
	case errors.Is(err, errShuttingDown):
		c.closeWith(replyShutdown)
	case errors.Is(err, errLineTooLong):
		c.log.Warn("command line too long; closing", "max_line_bytes", c.lim.MaxLineBytes)
		c.closeWith(replyLineTooLong)
	case errors.Is(err, os.ErrDeadlineExceeded):
		if c.fs.Draining() {
			c.closeWith(replyShutdown)
		} else {
			c.log.Info("pre-auth timeout; closing", "timeout", c.lim.PreauthTimeout)
			c.closeWith(replyAutologout)
		}
	}
}

// badCommand answers an invalid command and reports whether the
// connection must now be closed.
func (c *session) badCommand(reply string) bool {
	c.bad++
	if c.bad >= MaxBadCommands {
		c.log.Info("too many invalid commands before login; closing", "bad_commands", c.bad)
		c.closeWith(replyTooManyBad)
		return true
	}
	return c.reply(reply) != nil
}

// startTLS implements STLS (RFC 2595). Bytes the client pipelined behind
// STLS are fed into the TLS handshake, never executed as commands, as
// go-imap's imapserver does for STARTTLS.
func (c *session) startTLS(arg string) bool {
	if arg != "" {
		return c.badCommand("-ERR STLS takes no argument")
	}
	if c.tls || c.cfg.LocalTLS == nil {
		return c.badCommand("-ERR STLS not available")
	}
	if err := c.reply("+OK begin TLS negotiation"); err != nil {
		return true
	}
	var pending []byte
	if n := c.br.Buffered(); n > 0 {
		pending, _ = c.br.Peek(n)
		pending = append([]byte(nil), pending...)
	}
	tc := tls.Server(&prefixConn{Conn: c.conn, r: io.MultiReader(bytes.NewReader(pending), c.conn)}, c.cfg.LocalTLS)
	if err := c.armRead(); err != nil {
		return true
	}
	_ = c.conn.SetWriteDeadline(time.Now().Add(c.lim.PreauthTimeout))
	if err := tc.HandshakeContext(c.srv.base); err != nil {
		c.log.Info("stls handshake failed", "error", err)
		return true
	}
	c.setConn(tc, true)
	// RFC 2595 section 4: forget everything learned before TLS.
	c.user = ""
	return false
}

// prefixConn replays bytes that were read ahead before the TLS handshake.
type prefixConn struct {
	net.Conn
	r io.Reader
}

func (p *prefixConn) Read(b []byte) (int, error) { return p.r.Read(b) }

// authenticate implements AUTH (RFC 5034) with PLAIN and LOGIN, and the bare
// AUTH of RFC 1734 that lists the mechanisms.
func (c *session) authenticate(ctx context.Context, arg string) bool {
	if arg == "" {
		return c.reply("+OK\r\nPLAIN\r\nLOGIN\r\n.") != nil
	}
	mech, ir, hasIR := strings.Cut(arg, " ")
	mech = strings.ToUpper(mech)
	if mech != "PLAIN" && mech != "LOGIN" {
		return c.badCommand("-ERR [AUTH] unsupported SASL mechanism, use PLAIN or LOGIN")
	}
	if !c.canAuth() {
		return c.reply(c.tlsRequired()) != nil
	}
	// step returns the client's next response: the initial response if it
	// came with the command, otherwise one line after a "+ " challenge.
	step := func(challenge string, useIR bool) (data []byte, cancelled bool, err error) {
		var s string
		if useIR {
			s = ir
		} else {
			if err := c.reply("+ " + challenge); err != nil {
				return nil, false, err
			}
			if s, err = c.readLine(); err != nil {
				return nil, false, err
			}
		}
		if s == "*" {
			return nil, true, nil
		}
		if s == "=" { // RFC 5034: an empty initial response
			return []byte{}, false, nil
		}
		data, err = base64.StdEncoding.DecodeString(s)
		if err != nil {
			return nil, false, errBadBase64
		}
		return data, false, nil
	}
	// fail maps a step error to the connection's fate.
	fail := func(err error) bool {
		if errors.Is(err, errBadBase64) {
			return c.badCommand("-ERR invalid base64 in SASL response")
		}
		c.readFailed(err)
		return true
	}

	switch mech {
	case "PLAIN":
		data, cancelled, err := step("", hasIR)
		if err != nil {
			return fail(err)
		}
		if cancelled {
			return c.reply(replyCancelled) != nil
		}
		parts := strings.Split(string(data), "\x00")
		if len(parts) != 3 {
			return c.badCommand("-ERR malformed PLAIN response")
		}
		if parts[0] != "" && parts[0] != parts[1] {
			return c.reply("-ERR [AUTH] authorization identity must be empty or the user name") != nil
		}
		return c.login(ctx, parts[1], parts[2])
	default: // LOGIN
		user, cancelled, err := step(promptUsername, hasIR)
		if err != nil {
			return fail(err)
		}
		if cancelled {
			return c.reply(replyCancelled) != nil
		}
		pass, cancelled, err := step(promptPassword, false)
		if err != nil {
			return fail(err)
		}
		if cancelled {
			return c.reply(replyCancelled) != nil
		}
		return c.login(ctx, string(user), string(pass))
	}
}

var errBadBase64 = errors.New("pop3proxy: invalid base64")
