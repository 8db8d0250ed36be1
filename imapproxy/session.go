package imapproxy

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"time"

	"github.com/oauthbridge/oauthbridge/config"
	"github.com/oauthbridge/oauthbridge/internal/aside"
	"github.com/oauthbridge/oauthbridge/internal/frontdoor"
	"github.com/oauthbridge/oauthbridge/internal/localauth"
	"github.com/oauthbridge/oauthbridge/internal/splice"
)

// Client-facing texts. The sysadmin gets the detail in the log line.
const (
	replyInvalidCreds   = "NO [AUTHENTICATIONFAILED] Invalid credentials"
	replyThrottled      = "NO [UNAVAILABLE] Too many login attempts for this user right now; password not checked, try again shortly"
	replyBusy           = "NO [UNAVAILABLE] Bridge busy checking passwords; password not checked, try again shortly"
	replyNeedsLogin     = "NO [UNAVAILABLE] mailbox needs re-authorisation: run 'oauthbridge login %s'"
	replyFailing        = "NO [UNAVAILABLE] mailbox unavailable: bridge configuration problem, see the bridge log"
	replyTemporary      = "NO [UNAVAILABLE] mailbox temporarily unavailable; try again later"
	replyUnreachable    = "NO [UNAVAILABLE] mailbox server unreachable; try again later"
	replyRejected       = "NO [AUTHENTICATIONFAILED] Microsoft 365 refused the bridge's login to this mailbox; see the bridge log"
	replyRejectedGoogle = "NO [AUTHENTICATIONFAILED] Google refused the bridge's login to this mailbox; see the bridge log"
	replyTooMany        = "NO [UNAVAILABLE] too many connections for this mailbox (max %d); try again later"
	replyPrivacy        = "NO [PRIVACYREQUIRED] Plaintext passwords are not allowed on this connection; use TLS"
	replyPrivacySTARTTL = "NO [PRIVACYREQUIRED] Plaintext passwords are not allowed on this connection; use STARTTLS first"
	replyShuttingDown   = "NO [UNAVAILABLE] Server shutting down; try again later"
)

// session is one client connection.
type session struct {
	srv      *Server
	fs       *frontdoor.Session
	cfg      *config.Config
	lim      config.ProxyLimits
	raw      net.Conn // as accepted
	log      *slog.Logger
	auditLog *slog.Logger

	conn net.Conn // raw, or the TLS conn over it

	isTLS    bool
	remoteIP string
	br       *bufio.Reader
	bw       *bufio.Writer
	rd       cmdReader
	bad      int
	fails    *frontdoor.Conn // per-connection failure policy
	commands int             // commands read before login

	// rest, set by a successful login (which then reports the
	// connection done), is the rest of the session: serveSession runs
	// it once run has returned (see there).
	rest func()
}

// canAuth applies the front door's plaintext-password rule.
func (c *session) canAuth() bool {
	return frontdoor.PlaintextAllowed(c.isTLS, c.raw.RemoteAddr(), c.cfg.IMAP.AllowInsecureAuth, c.srv.opts.IsLoopback)
}

// caps is the fixed, conservative pre-auth capability list. LITERAL+ is
// not advertised but {n+} is accepted anyway.
func (c *session) caps() string {
	caps := "IMAP4rev1 ID SASL-IR"
	if c.cfg.LocalTLS != nil && !c.isTLS {
		caps += " STARTTLS"
	}
	if c.canAuth() {
		caps += " AUTH=PLAIN AUTH=LOGIN"
	} else {
		caps += " LOGINDISABLED"
	}
	return caps
}

func (c *session) send(line string) error {
	_ = c.conn.SetWriteDeadline(time.Now().Add(c.lim.PreauthTimeout))
	c.bw.WriteString(line)
	c.bw.WriteString("\r\n")
	return c.bw.Flush()
}

func (c *session) reply(tag, text string) error {
	if tag == "" {
		tag = "*"
	}
	return c.send(tag + " " + text)
}

func (c *session) run() {
	c.remoteIP = localauth.RemoteIP(c.raw.RemoteAddr())
	c.br = bufio.NewReaderSize(c.conn, 4096)
	c.bw = bufio.NewWriterSize(c.conn, 4096)
	c.rd = cmdReader{
		br:         c.br,
		cont:       func() error { return c.send("+ Ready for literal data") },
		maxLine:    c.lim.MaxLineBytes,
		maxLiteral: c.lim.MaxLiteralBytes,
	}
	c.log.Debug("connection accepted", "tls", c.isTLS, "password_allowed", c.canAuth())
	if err := c.send("* OK [CAPABILITY " + c.caps() + "] oauthbridge ready"); err != nil {
		return
	}
	for !c.step() {
	}
}

// step reads and answers one command; it reports whether the connection is
// finished (closed by the caller, or already spliced and over).
func (c *session) step() (done bool) {
	// During a drain the front door turns this deadline into one in the
	// past, so the read below fails at once if the check here misses it.
	_ = c.conn.SetReadDeadline(time.Now().Add(c.lim.PreauthTimeout))
	if c.fs.Draining() {
		_ = c.send("* BYE Server shutting down")
		return true
	}
	cmd, err := c.rd.readCommand()
	if err != nil {
		return c.readError(cmd.tag, err)
	}
	if c.commands++; c.commands > MaxPreauthCommands {
		c.log.Info("too many commands before login; closing", "commands", c.commands)
		_ = c.send("* BYE Too many commands before login")
		return true
	}
	switch cmd.name {
	case "CAPABILITY":
		if c.send("* CAPABILITY "+c.caps()) != nil {
			return true
		}
		return c.reply(cmd.tag, "OK CAPABILITY completed") != nil
	case "NOOP":
		return c.reply(cmd.tag, "OK NOOP completed") != nil
	case "ID":
		if cmd.id != nil {
			c.log.Debug("client id", "client_name", cmd.id["name"], "client_version", cmd.id["version"])
		}
		if c.send(`* ID ("name" "oauthbridge")`) != nil {
			return true
		}
		return c.reply(cmd.tag, "OK ID completed") != nil
	case "LOGOUT":
		_ = c.send("* BYE oauthbridge logging out")
		_ = c.reply(cmd.tag, "OK LOGOUT completed")
		return true
	case "STARTTLS":
		return c.startTLS(cmd.tag)
	case "LOGIN":
		if !c.canAuth() {
			return c.refusePlaintext(cmd.tag, "LOGIN")
		}
		return c.login(cmd.tag, cmd.user, cmd.pass)
	case "AUTHENTICATE":
		if !c.canAuth() {
			return c.refusePlaintext(cmd.tag, "AUTHENTICATE")
		}
		return c.authenticate(cmd)
	}
	return c.badCommand(cmd.tag, "Unknown command")
}

func (c *session) readError(tag string, err error) bool {
	var se *syntaxError
	var lt *literalTooLarge
	switch {
	case errors.As(err, &se):
		if err := c.rd.skipLine(); err != nil {
			return c.fatalReadError(tag, err)
		}
		return c.badCommand(tag, se.msg)
	case errors.As(err, &lt) && !lt.nonSync:
		// The client waits for a continuation it will not get; the line
		// (up to the literal's CRLF) has been read.
		return c.badCommand(tag, fmt.Sprintf("Literal too large (max %d bytes)", lt.max))
	}
	return c.fatalReadError(tag, err)
}

// fatalReadError ends the connection after an error that leaves the input
// out of sync or the client gone.
func (c *session) fatalReadError(tag string, err error) bool {
	var lt *literalTooLarge
	var ne net.Error
	switch {
	case errors.Is(err, errLineTooLong):
		c.log.Warn("command line too long; closing", "max_line_bytes", c.lim.MaxLineBytes)
		_ = c.send("* BYE Command line too long")
	case errors.As(err, &lt):
		c.log.Warn("non-synchronising literal too large; closing", "error", err)
		_ = c.reply(tag, fmt.Sprintf("BAD Literal too large (max %d bytes)", lt.max))
		_ = c.send("* BYE Literal too large")
	case errors.As(err, &ne) && ne.Timeout():
		if c.fs.Draining() {
			_ = c.send("* BYE Server shutting down")
		} else {
			c.log.Debug("pre-auth timeout", "preauth_timeout", c.lim.PreauthTimeout)
			_ = c.send("* BYE Autologout; idle for too long")
		}
	case errors.Is(err, io.EOF), errors.Is(err, net.ErrClosed), errors.Is(err, io.ErrClosedPipe):
		c.log.Debug("client closed the connection before login")
	default:
		c.log.Debug("pre-auth read failed", "error", err)
	}
	return true
}

func (c *session) badCommand(tag, msg string) bool {
	c.bad++
	if c.reply(tag, "BAD "+msg) != nil {
		return true
	}
	if c.bad >= MaxBadCommands {
		c.log.Info("too many invalid commands before login; closing", "bad_commands", c.bad)
		_ = c.send("* BYE Too many invalid commands")
		return true
	}
	return false
}

func (c *session) refusePlaintext(tag, what string) bool {
	c.log.Warn("plaintext login refused: no TLS, remote is not loopback and allow_insecure_auth is off", "command", what)
	text := replyPrivacy
	if c.cfg.LocalTLS != nil && !c.isTLS {
		text = replyPrivacySTARTTL
	}
	return c.reply(tag, text) != nil
}

// startTLS follows go-imap's imapserver/starttls.go: whatever the client
// pipelined after STARTTLS is already in our buffer; it is fed into the TLS
// handshake (where plaintext fails it), never executed as commands.
func (c *session) startTLS(tag string) bool {
	if c.cfg.LocalTLS == nil {
		return c.reply(tag, "NO STARTTLS not supported") != nil
	}
	if c.isTLS {
		return c.badCommand(tag, "STARTTLS not available: TLS is already active")
	}
	if c.reply(tag, "OK Begin TLS negotiation now") != nil {
		return true
	}
	buffered := make([]byte, c.br.Buffered())
	_, _ = io.ReadFull(c.br, buffered)
	var clear net.Conn = c.conn
	if len(buffered) > 0 {
		clear = prefixConn{Conn: c.conn, r: io.MultiReader(bytes.NewReader(buffered), c.conn)}
	}
	tc := tls.Server(clear, c.cfg.LocalTLS)
	_ = tc.SetDeadline(time.Now().Add(c.lim.PreauthTimeout))
	if err := tc.HandshakeContext(c.srv.ctx); err != nil {
		c.log.Info("starttls handshake failed", "error", err)
		return true
	}
	c.conn = tc
	c.isTLS = true
	c.br.Reset(tc)
	c.bw.Reset(tc)
	return false
}

type prefixConn struct {
	net.Conn
	r io.Reader
}

func (p prefixConn) Read(b []byte) (int, error) { return p.r.Read(b) }

// continuation sends "+ prompt" and reads the client's one-line answer.
// cancelled is true when the client sent "*".
func (c *session) continuation(prompt string) (resp string, cancelled bool, err error) {
	if err := c.send("+ " + prompt); err != nil {
		return "", false, err
	}
	line, err := c.rd.restOfLine()
	if err != nil {
		return "", false, err
	}
	return line, line == "*", nil
}

func decodeSASL(s string) ([]byte, error) {
	if s == "=" { // an empty initial response (RFC 4959)
		return nil, nil
	}
	return base64.StdEncoding.DecodeString(s)
}

// authenticate handles AUTHENTICATE PLAIN and LOGIN, with or without an
// initial response (SASL-IR).
func (c *session) authenticate(cmd *command) bool {
	tag := cmd.tag
	// next returns the initial response first, then asks with prompt.
	ir := cmd.ir
	next := func(prompt string) ([]byte, bool, error) {
		var s string
		if ir != nil {
			s, ir = *ir, nil
		} else {
			line, cancelled, err := c.continuation(prompt)
			if err != nil || cancelled {
				return nil, cancelled, err
			}
			s = line
		}
		b, err := decodeSASL(s)
		if err != nil {
			return nil, false, &syntaxError{msg: "invalid base64 in AUTHENTICATE"}
		}
		return b, false, nil
	}
	fail := func(err error, cancelled bool) bool {
		var se *syntaxError
		switch {
		case cancelled:
			return c.badCommand(tag, "AUTHENTICATE cancelled")
		case errors.As(err, &se):
			return c.badCommand(tag, se.msg)
		}
		return c.fatalReadError(tag, err)
	}

	switch cmd.mech {
	case "PLAIN":
		b, cancelled, err := next("")
		if err != nil || cancelled {
			return fail(err, cancelled)
		}
		parts := bytes.Split(b, []byte{0})
		if len(parts) != 3 {
			return c.badCommand(tag, "malformed PLAIN response")
		}
		authz, user, pass := string(parts[0]), string(parts[1]), string(parts[2])
		if authz != "" && authz != user {
			// Grammar, not a password check: its own reply, the same
			// failure policy.
			localauth.Audit(c.auditLog, c.srv.m, c.srv.opts.LoginObservers, localauth.Attempt{
				Proto: "imap", User: user, Remote: c.remoteIP, Result: localauth.ResultBadCredentials,
				Err: fmt.Errorf("imapproxy: authorization identity %q differs from the user; acting as another user is not supported", authz),
			})
			return c.authFailed(tag, "NO [AUTHORIZATIONFAILED] authorization identity must be empty or equal to the user name")
		}
		return c.login(tag, user, pass)
	case "LOGIN":
		u, cancelled, err := next("VXNlcm5hbWU6") // "Username:"
		if err != nil || cancelled {
			return fail(err, cancelled)
		}
		p, cancelled, err := next("UGFzc3dvcmQ6") // "Password:"
		if err != nil || cancelled {
			return fail(err, cancelled)
		}
		return c.login(tag, string(u), string(p))
	}
	return c.reply(tag, "NO Unsupported authentication mechanism") != nil
}

// failureReply is the one mapping from a failed login to IMAP's wire
// text: only a checked wrong password (and the upstream refusing the
// bridge's token for this mailbox) is AUTHENTICATIONFAILED; everything
// temporary is UNAVAILABLE.
func failureReply(f *frontdoor.Failure) string {
	switch f.Kind {
	case frontdoor.BadCredentials:
		return replyInvalidCreds
	case frontdoor.Throttled:
		return replyThrottled
	case frontdoor.Busy:
		return replyBusy
	case frontdoor.AccountBusy:
		return fmt.Sprintf(replyTooMany, f.Max)
	case frontdoor.NeedsLogin:
		return fmt.Sprintf(replyNeedsLogin, f.Account)
	case frontdoor.Failing:
		return replyFailing
	case frontdoor.Unreachable:
		return replyUnreachable
	case frontdoor.Rejected:
		if f.Google {
			return replyRejectedGoogle
		}
		return replyRejected
	case frontdoor.Stopping:
		return replyShuttingDown
	}
	return replyTemporary
}

// authFailed answers a failed local login after the shared per-connection
// failure delay and ends the connection after the policy's limit.
func (c *session) authFailed(tag, text string) bool {
	hangUp, err := c.fails.Failed(c.srv.ctx)
	if err != nil {
		return true
	}
	if c.reply(tag, text) != nil {
		return true
	}
	if hangUp {
		_ = c.send("* BYE Too many authentication failures")
		return true
	}
	return false
}

// loginFailed writes the attempt's one audit line and answers a failed
// login; it reports whether the connection is finished.
func (c *session) loginFailed(tag string, a *localauth.Attempt, f *frontdoor.Failure) bool {
	if err := c.srv.ctx.Err(); err != nil { // shutdown gave up waiting on this session
		a.Result, a.Err = localauth.ResultError, fmt.Errorf("imapproxy: login aborted by shutdown: %w (%v)", err, f)
		localauth.Audit(c.auditLog, c.srv.m, c.srv.opts.LoginObservers, *a)
		return true
	}
	if f.Class != "" {
		c.srv.m.UpstreamErrors.WithLabelValues("imap", f.Class).Inc()
	}
	if f.Account != "" && a.Account == "" {
		a.Account = f.Account
	}
	a.Result, a.Err = f.Kind.String(), f.Err
	localauth.Audit(c.auditLog, c.srv.m, c.srv.opts.LoginObservers, *a)
	switch {
	case f.Kind.Local():
		return c.authFailed(tag, failureReply(f))
	case f.Kind == frontdoor.Stopping:
		_ = c.reply(tag, failureReply(f))
		_ = c.send("* BYE Server shutting down")
		return true
	}
	return c.reply(tag, failureReply(f)) != nil
}

// login runs one login attempt through the front door's pipeline (local
// credentials, account, per-account slot), then loggedIn continues with
// the upstream. It writes exactly one audit line.
func (c *session) login(tag, user, pass string) bool {
	// On a goroutine of its own: its deep stack is freed when the login is
	// over, the session's goroutine keeps a small one for the rest.
	return aside.Run(func() bool { return c.loginAside(tag, user, pass) })
}

// loginAside is login, on the goroutine that aside.Run starts.
func (c *session) loginAside(tag, user, pass string) bool {
	a := localauth.Attempt{Proto: "imap", User: user, Remote: c.remoteIP}
	g, f := c.srv.gate.Login(c.srv.ctx, c.cfg, user, pass, c.remoteIP)
	if f != nil {
		return c.loginFailed(tag, &a, f)
	}
	handedOver := false
	defer func() {
		if !handedOver {
			g.Release()
		}
	}()
	done := c.loggedIn(tag, &a, g)
	if rest := c.rest; rest != nil {
		// The slot is held until the rest of the session is over.
		c.rest = func() {
			defer g.Release()
			rest()
		}
		handedOver = true
	}
	return done
}

// loggedIn runs once the local login succeeded: g is the account, its
// connection slot and its token source. It logs in upstream with XOAUTH2,
// answers the client's tag and leaves the splice in c.rest.
func (c *session) loggedIn(tag string, a *localauth.Attempt, g *frontdoor.Grant) bool {
	acct, user := g.Account, a.User
	a.Account, a.Mailbox = acct.Name, acct.Mailbox
	if c.srv.opts.Graph != nil && c.srv.opts.Graph.Serves(acct) {
		// read_via = "graph": served here, not spliced (graph.go). The
		// slot is g's, released when the session is over.
		return c.serveGraph(tag, user, acct, *a)
	}
	up, caps, f := c.upstreamLogin(c.srv.ctx, g)
	if f != nil {
		return c.loginFailed(tag, a, f)
	}
	// A login that completes during a drain is refused like in every proxy:
	// a temporary error, and the client retries against the next process.
	if err := c.fs.BeginSplice(); err != nil {
		up.conn.Close()
		return c.loginFailed(tag, a, &frontdoor.Failure{Kind: frontdoor.Stopping, Err: fmt.Errorf("imapproxy: login completed during shutdown: %w", err)})
	}
	a.Result = localauth.ResultOK
	localauth.Audit(c.auditLog, c.srv.m, c.srv.opts.LoginObservers, *a)

	log := c.log.With("user", user, "account", acct.Name, "mailbox", acct.Mailbox, "upstream", acct.Provider.IMAPServer)
	if err := c.reply(tag, "OK [CAPABILITY "+caps+"] Logged in"); err != nil {
		up.conn.Close()
		log.Info("client went away during login", "error", err)
		return true
	}
	c.bw, c.rd.br, up.bw = nil, nil, nil
	c.rest = func() { c.splice(up, log) }
	return true
}

// splice copies between the logged-in client and up until either ends.
func (c *session) splice(up *upstream, log *slog.Logger) {
	start := time.Now()
	// Hand the readers to the splice and drop every other reference to the
	// pre-auth buffers: once the splice has forwarded what they hold, an
	// idle session keeps none of them (see splice.SmallBuffer).
	cbr, ubr := c.br, up.br
	c.br, up.br = nil, nil
	st := splice.Run(c.srv.ctx, c.conn, cbr, up.conn, ubr, c.lim.IdleTimeout)
	c.srv.m.BytesRelayed.WithLabelValues("imap", "up").Add(float64(st.Up))
	c.srv.m.BytesRelayed.WithLabelValues("imap", "down").Add(float64(st.Down))
	// bytes_in: client to server; bytes_out: server to client.
	log.Info("session closed", "bytes_in", st.Up, "bytes_out", st.Down, "duration", time.Since(start).Round(time.Millisecond).String())
}
