package smtpproxy

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/oauthbridge/oauthbridge/audit"
	"github.com/oauthbridge/oauthbridge/config"
	"github.com/oauthbridge/oauthbridge/internal/frontdoor"
	"github.com/oauthbridge/oauthbridge/internal/limiter"
	"github.com/oauthbridge/oauthbridge/internal/logging"
	"github.com/oauthbridge/oauthbridge/internal/metrics"
	"github.com/oauthbridge/oauthbridge/tokens"
)

// Named defaults that have no config attribute.
const (
	// DefaultMaxLineLength bounds one command or body line from the client.
	// go-smtp's default is 2000 (RFC 5321's 1000, doubled); legacy
	// generators emit unwrapped HTML and base64, so the bridge is more
	// lenient and lets the upstream decide.
	DefaultMaxLineLength = 64 * 1024
	// DefaultSubmissionTimeout is how long the bridge waits for the
	// upstream's reply after the final "." (go-smtp's client default: RFC
	// 5321's 10 minutes plus a margin). Exchange scans large messages before
	// answering.
	DefaultSubmissionTimeout = 12 * time.Minute
)

// Options configure a Server. Config, Auth and Tokens are required.
type Options struct {
	Config  func() *config.Config // current configuration snapshot (reload); read per session
	Auth    PasswordChecker
	Tokens  tokens.Source // AccessToken(ctx, account) / Rejected(account, tok)
	Limiter SlotLimiter   // key "smtp:"+account; nil = a private limiter
	Logger  *slog.Logger  // nil = discard
	// Registerer receives the oauthbridge_* metrics (the daemon passes one
	// registry to every component); nil: a private registry.
	Registerer prometheus.Registerer

	// LoginObservers, if set, see every login attempt this server audits,
	// with its result and no secret, and every upstream login at MAIL or
	// Send (audit.LoginAttempt.Upstream; the daemon's alert engine counts
	// failed upstream logins with them); nil: nobody observes.
	LoginObservers []audit.LoginObserver

	// FailureDelay is how long the reply to a failed login waits (0:
	// 1 s, negative: none); MaxFailures failed logins
	// end the connection (0: 3). IMAP, POP3 and SMTP apply the same policy.
	FailureDelay time.Duration
	MaxFailures  int
	// GraphTokens serves Microsoft Graph tokens for accounts with send_via
	// "graph" or "auto". Nil: Tokens.For(tokens.Graph) when Tokens is a
	// *tokens.Manager.
	GraphTokens tokens.Source
	// GraphHTTP talks to Microsoft Graph and its upload URLs. Nil: a client
	// per provider trusting the system roots plus the provider's ca_file.
	GraphHTTP *http.Client
}

// Server is the SMTP submission proxy. One Server may serve several
// listeners. go-smtp owns the SMTP dialogue, the front door (accept policy,
// max_connections after TLS, drain) owns the connections: it hands each
// admitted one to go-smtp through a frontdoor.Handoff.
type Server struct {
	opts     Options
	m        *metrics.Metrics
	log      *slog.Logger
	failures frontdoor.Policy

	fd   *frontdoor.Server
	gate *frontdoor.Gate
	ctx  context.Context // cancelled when Shutdown gives up waiting

	// One go-smtp server per configuration generation: a connection is
	// served by the one built from the configuration it was accepted
	// under, so a reload's domain, sizes, timeouts and STARTTLS offer apply
	// to new connections while older ones keep theirs.
	mu     sync.Mutex
	gens   map[*config.Config]*generation
	closed bool

	noBDAT       bool         // tests: send DATA upstream even where CHUNKING is offered
	noPipelining bool         // tests: treat the upstream as not offering PIPELINING
	afterCheck   func()       // tests: runs between a login's password check and its drain check
	gb           graphBackend // the Graph path (graph.go)
}

// New returns a Server; call Serve for each listener.
func New(opts Options) *Server {
	if opts.Logger == nil {
		opts.Logger = logging.Discard
	}
	if opts.Limiter == nil {
		opts.Limiter = &limiter.Limiter{}
	}
	s := &Server{
		opts: opts,
		log:  opts.Logger.With("proto", "smtp"),
		gens: map[*config.Config]*generation{},

		failures: frontdoor.Policy{FailureDelay: opts.FailureDelay, MaxFailures: opts.MaxFailures}.Resolved(),
	}
	s.gate = &frontdoor.Gate{
		Auth: opts.Auth, Tokens: opts.Tokens, Limiter: opts.Limiter,
		// Exchange allows three concurrent submissions per mailbox.
		Slot: func(l *frontdoor.Login) frontdoor.Slot {
			return frontdoor.Slot{Key: "smtp:" + l.Account.Name, Max: l.Account.SMTPMaxConnections, Wait: smtpLimits(l.Config).ConnectionWait}
		},
		TokenTimeout: func(l *frontdoor.Login) time.Duration { return smtpLimits(l.Config).UpstreamTimeout },
	}
	s.m = metrics.New(opts.Registerer)
	s.fd = frontdoor.New(frontdoor.Options{
		Metrics:  s.m,
		Proto:    "smtp",
		Logger:   opts.Logger,
		Limits:   s.limits,
		WrapConn: s.wrapConn,
		Serve:    s.serveConn,
		Refuse:   refuse,
	})
	s.ctx = s.fd.Context()
	return s
}

func (s *Server) limits() frontdoor.Limits {
	lim := frontdoor.Limits{MaxConnections: config.DefaultMaxConnections}
	if cfg := s.opts.Config(); cfg != nil {
		lim.Snapshot = cfg
		lim.TLS = cfg.LocalTLS
		if cfg.SMTP != nil && cfg.SMTP.Limits.MaxConnections > 0 {
			lim.MaxConnections = cfg.SMTP.Limits.MaxConnections
		}
	}
	return lim
}

// snapshot is the configuration the connection was accepted under: its
// limits, its plaintext rule and the account a login resolves to all come
// from it. Without a front-door connection (tests), the current one.
func (s *Server) snapshot(tc *trackedConn) *config.Config {
	if tc != nil {
		if cfg, ok := tc.fs.Snapshot.(*config.Config); ok && cfg != nil {
			return cfg
		}
	}
	return s.opts.Config()
}

// refuse is the only line of a connection refused before its greeting
// (RFC 5321 section 3.8: 421, then close).
func refuse(w io.Writer, why frontdoor.Reason) {
	switch why {
	case frontdoor.TooManyConnections:
		_, _ = io.WriteString(w, "421 4.3.2 Too many connections, try again later\r\n")
	default:
		_, _ = io.WriteString(w, drainLine)
	}
}

// ErrServerClosed is returned by Serve after Shutdown. It wraps
// net.ErrClosed, so callers that treat a closed listener as a normal stop
// need no special case.
var ErrServerClosed = fmt.Errorf("smtpproxy: server closed: %w", net.ErrClosed)

// Serve accepts connections on ln until Shutdown. With implicitTLS every
// connection starts with a TLS handshake using Config().LocalTLS (the "465"
// style); otherwise STARTTLS is offered when a tls block is configured.
// The SMTP settings (domain, sizes, timeouts, the STARTTLS offer) are those
// of the configuration current when each connection is accepted. It
// returns ErrServerClosed after Shutdown, or an error wrapping a
// *ListenerError when the listener fails.
func (s *Server) Serve(ln net.Listener, implicitTLS bool) error {
	if s.opts.Config == nil || s.opts.Auth == nil || s.opts.Tokens == nil {
		return errors.New("smtpproxy: Options.Config, Auth and Tokens are required")
	}
	cfg := s.opts.Config()
	if cfg.SMTP == nil {
		return errors.New("smtpproxy: configuration has no smtp block")
	}
	if implicitTLS && cfg.LocalTLS == nil {
		return errors.New("smtpproxy: an implicit-TLS listener needs a tls block")
	}

	if s.fd.Draining() {
		ln.Close()
		return ErrServerClosed
	}
	// The current configuration's go-smtp server runs from the start (its
	// loop is one goroutine for the life of the configuration).
	if g := s.acquire(cfg); g != nil {
		s.release(g)
	}
	starttls := cfg.LocalTLS != nil
	s.log.Info("smtp listener started", "listen", ln.Addr().String(), "implicit_tls", implicitTLS, "starttls", !implicitTLS && starttls)
	if err := s.fd.Serve(ln, implicitTLS); err != nil {
		return fmt.Errorf("smtpproxy: serve %s: %w", ln.Addr(), err)
	}
	return ErrServerClosed
}

func (s *Server) newSMTPServer(cfg *config.Config) *smtp.Server {
	sm := cfg.SMTP
	lim := sm.Limits
	srv := smtp.NewServer(smtp.BackendFunc(s.newSession))
	srv.Domain = sm.Domain
	srv.MaxMessageBytes = lim.MaxMessageBytes
	srv.MaxRecipients = lim.MaxRecipients
	srv.MaxLineLength = DefaultMaxLineLength
	srv.ReadTimeout = lim.ReadTimeout
	srv.WriteTimeout = lim.WriteTimeout
	// The plaintext-password rule is decided per connection in the session
	// (TLS, loopback peer, or allow_insecure_auth), so go-smtp's per-server
	// switch is left open and AuthMechanisms hides AUTH where it is refused.
	srv.AllowInsecureAuth = true
	// Exchange Online offers SMTPUTF8 and DSN; both are forwarded through
	// smtp.MailOptions/RcptOptions (see upstreamMailOptions).
	srv.EnableSMTPUTF8 = true
	srv.EnableDSN = true
	srv.ErrorLog = errorLog{s.log}
	if cfg.LocalTLS != nil {
		// STARTTLS. Read the certificate per handshake so a reload's new
		// certificate is used by the next client. (Implicit TLS is done by
		// the front door, which reads it per connection too.)
		srv.TLSConfig = &tls.Config{GetConfigForClient: s.localTLS, MinVersion: tls.VersionTLS12}
	}
	return srv
}

func (s *Server) localTLS(*tls.ClientHelloInfo) (*tls.Config, error) {
	if c := s.opts.Config().LocalTLS; c != nil {
		return c, nil
	}
	return nil, errors.New("smtpproxy: no tls block configured")
}

// wrapConn puts smtpproxy's per-connection state under TLS, where go-smtp's
// reads and writes pass through it.
func (s *Server) wrapConn(fs *frontdoor.Session, c net.Conn) net.Conn {
	tc := &trackedConn{Conn: c, fs: fs, id: fs.ID, log: fs.Log, fails: s.failures.Conn()}
	fs.Value = tc
	return tc
}

// generation is the go-smtp server of one configuration and the handoff
// that feeds it; conns counts the connections it serves.
type generation struct {
	cfg     *config.Config
	gs      *smtp.Server
	handoff *frontdoor.Handoff
	conns   int
}

// acquire returns the generation for cfg, creating it if needed; nil after
// Shutdown.
func (s *Server) acquire(cfg *config.Config) *generation {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil
	}
	g := s.gens[cfg]
	if g == nil {
		g = &generation{cfg: cfg, gs: s.newSMTPServer(cfg), handoff: frontdoor.NewHandoff(nil)}
		go g.gs.Serve(g.handoff) // returns when the handoff is closed
		s.gens[cfg] = g
	}
	g.conns++
	s.retireIdleLocked()
	return g
}

// release ends one connection of g.
func (s *Server) release(g *generation) {
	s.mu.Lock()
	defer s.mu.Unlock()
	g.conns--
	s.retireIdleLocked()
}

// retireIdleLocked ends the go-smtp loop of every generation that serves
// no connection and is not the current configuration's.
func (s *Server) retireIdleLocked() {
	cur := s.opts.Config()
	for cfg, g := range s.gens {
		if g.conns == 0 && cfg != cur {
			g.handoff.Close()
			delete(s.gens, cfg)
		}
	}
}

// serveConn runs while go-smtp serves one admitted connection, with the
// go-smtp server of the configuration the connection was accepted under.
func (s *Server) serveConn(fs *frontdoor.Session) {
	tc := fs.Value.(*trackedConn)
	cfg := s.snapshot(tc)
	if cfg == nil || cfg.SMTP == nil {
		tc.log.Error("no smtp block in the configuration; closing connection")
		return
	}
	g := s.acquire(cfg)
	if g == nil {
		return
	}
	defer s.release(g)
	tc.log.Debug("connection accepted")
	g.handoff.Serve(fs)
	tc.setSession(nil)
}

// Shutdown stops accepting, lets messages whose DATA is in progress finish
// until ctx is done, ends the other connections with a 421, and then closes
// whatever is left (an unfinished DATA is never completed upstream).
func (s *Server) Shutdown(ctx context.Context) error {
	err := s.fd.Shutdown(ctx)
	s.mu.Lock()
	s.closed = true
	for _, g := range s.gens {
		g.handoff.Close() // go-smtp's loops end
	}
	s.mu.Unlock()
	return err
}

// ActiveSessions reports the number of open client connections.
func (s *Server) ActiveSessions() int { return s.fd.ActiveSessions() }

// trackedConn is the client connection under TLS (when there is TLS), as
// the front door accepted it. It carries the per-connection logger, the
// failed-AUTH state, the drain hold for a message body, the abort of the
// current session's upstream connection when Shutdown cuts, and a
// read-ahead buffer while a body is received.
type trackedConn struct {
	net.Conn
	fs  *frontdoor.Session
	id  string
	log *slog.Logger

	// fails is the connection's failed-AUTH state; it outlives go-smtp's
	// sessions (a new one after STARTTLS). hangUp closes the connection
	// right after the next reply is written (the limit was reached).
	fails  *frontdoor.Conn
	hangUp atomic.Bool

	mu        sync.Mutex
	inData    bool        // a message body is being received
	release   func()      // the front door's drain hold while inData
	stopAbort func() bool // unregisters the abort of the current session
	top       net.Conn    // what go-smtp reads and writes (TLS after STARTTLS); nil before EHLO

	// Read-ahead while a body is received; only the connection's reading
	// goroutine touches these.
	ra     *[]byte
	raRest []byte // read ahead, not yet returned
}

// ClientReadAhead is the read-ahead buffer a client connection gets while
// it sends a message body. go-smtp reads its connection 4 KiB at a time,
// a system call each; with the read-ahead it is one call per up to 64 KiB.
// The buffer goes back to a pool as soon as it is drained after the body,
// so idle connections hold none.
const ClientReadAhead = 64 << 10

var readAheadPool = sync.Pool{New: func() any { b := make([]byte, ClientReadAhead); return &b }}

func (c *trackedConn) Read(p []byte) (int, error) {
	if len(c.raRest) > 0 {
		n := copy(p, c.raRest)
		c.raRest = c.raRest[n:]
		return n, nil
	}
	c.mu.Lock()
	inData := c.inData
	c.mu.Unlock()
	if !inData || len(p) >= ClientReadAhead {
		if c.ra != nil {
			readAheadPool.Put(c.ra)
			c.ra, c.raRest = nil, nil
		}
		n, err := c.Conn.Read(p)
		if n == 0 && err != nil && !inData {
			err = c.drained(err)
		}
		return n, err
	}
	if c.ra == nil {
		c.ra = readAheadPool.Get().(*[]byte)
	}
	n, err := c.Conn.Read(*c.ra)
	m := copy(p, (*c.ra)[:n])
	c.raRest = (*c.ra)[m:n]
	if len(c.raRest) > 0 {
		// The bytes come first; a failed connection fails again on the
		// next read.
		return m, nil
	}
	return m, err
}

// drainLine ends a session that the drain catches between commands; a
// connection refused during the drain gets the same text (refuse).
const drainLine = "421 4.3.2 Server shutting down, try again later\r\n"

// drained turns the read timeout with which the front door's drain ends an
// idle session into the bridge's own 421, written through the session's
// TLS if it has any (go-smtp would answer a timeout with its "Idle
// timeout" text); the error returned makes go-smtp end quietly.
func (c *trackedConn) drained(err error) error {
	var ne net.Error
	if !c.fs.Draining() || !errors.As(err, &ne) || !ne.Timeout() {
		return err
	}
	c.mu.Lock()
	top := c.top
	c.mu.Unlock()
	if top == nil {
		top = c.fs.Conn()
	}
	_ = top.SetWriteDeadline(time.Now().Add(frontdoor.RefusalWriteTimeout))
	_, _ = io.WriteString(top, drainLine)
	c.log.Info("session ended: shutting down")
	return fmt.Errorf("smtpproxy: session ended by the drain: %w", net.ErrClosed)
}

// Write writes to the client and, once the failure limit was reached,
// closes the connection after the reply that reports it.
func (c *trackedConn) Write(p []byte) (int, error) {
	n, err := c.Conn.Write(p)
	if c.hangUp.Load() {
		c.log.Info("closing connection: too many failed AUTH attempts")
		c.Close()
	}
	return n, err
}

// setInData marks the start or end of a message body. The front door's
// drain waits for a body in progress (Hold). At the start it also re-arms
// the read deadline, undoing a drain interrupt that raced with the DATA
// command: the body gets the full read timeout.
func (c *trackedConn) setInData(v bool, readTimeout time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.inData = v
	if !v {
		if c.release != nil {
			c.release()
			c.release = nil
		}
		return
	}
	if c.release == nil {
		c.release = c.fs.Hold()
	}
	if readTimeout > 0 {
		_ = c.fs.Conn().SetReadDeadline(time.Now().Add(readTimeout))
	}
}

// setSession makes Shutdown's cut abort sess's upstream connection (nil:
// the session ended).
func (c *trackedConn) setSession(sess *session) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.stopAbort != nil {
		c.stopAbort()
		c.stopAbort = nil
	}
	c.top = nil
	if sess != nil {
		c.stopAbort = context.AfterFunc(c.fs.Context(), sess.abortUpstream)
		if sess.conn != nil {
			c.top = sess.conn.Conn()
		}
	}
}

// errShuttingDown answers an AUTH that succeeds while the server drains
// (RFC 5321 section 4.2.5: 421 may answer any command when the service must
// shut down).
var errShuttingDown = &smtp.SMTPError{Code: 421, EnhancedCode: smtp.EnhancedCode{4, 3, 2}, Message: "Server shutting down, try again later"}

// connOf finds the trackedConn under a go-smtp connection (which may have
// been upgraded to TLS by STARTTLS or the implicit-TLS listener).
func connOf(c *smtp.Conn) *trackedConn {
	nc := c.Conn()
	if t, ok := nc.(*tls.Conn); ok {
		nc = t.NetConn()
	}
	tc, _ := nc.(*trackedConn)
	return tc
}

// errorLog adapts go-smtp's Printf logger to slog. go-smtp reports
// connection errors (mostly clients hanging up) and recovered panics here.
type errorLog struct{ log *slog.Logger }

func (l errorLog) Printf(format string, v ...any) { l.print(fmt.Sprintf(format, v...)) }
func (l errorLog) Println(v ...any)               { l.print(strings.TrimSuffix(fmt.Sprintln(v...), "\n")) }

func (l errorLog) print(msg string) {
	if strings.Contains(msg, "panic") {
		l.log.Error("smtp server: " + msg)
		return
	}
	l.log.Debug("smtp server: " + msg)
}
