package smtpproxy

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/oauthbridge/oauthbridge/config"
	"github.com/oauthbridge/oauthbridge/internal/frontdoor"
	"github.com/oauthbridge/oauthbridge/internal/limiter"
	"github.com/oauthbridge/oauthbridge/internal/localauth"
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
	// shutdownPoll is how often Shutdown nudges idle connections to close.
	shutdownPoll = 50 * time.Millisecond
	// rejectWriteTimeout bounds writing the 421 to a connection over the
	// max_connections limit.
	rejectWriteTimeout = time.Second
	// abortWait is how long Shutdown waits for connection goroutines after
	// closing their sockets once its context expired.
	abortWait = 2 * time.Second
)

// Options configure a Server. Config, Auth and Tokens are required.
type Options struct {
	Config  func() *config.Config // current configuration snapshot (reload); read per session
	Auth    *localauth.Authenticator
	Tokens  tokens.Source    // AccessToken(ctx, account) / Rejected(account, tok)
	Limiter *limiter.Limiter // key "smtp:"+account; nil = a private limiter
	Logger  *slog.Logger     // nil = discard

	// Failures is the per-connection failure policy shared with IMAP and
	// POP3 (delay before each failed AUTH's reply, disconnect after a few);
	// zero values take frontdoor's defaults.
	Failures frontdoor.Policy
	// GraphTokens serves Microsoft Graph tokens for accounts with send_via
	// "graph" or "auto". Nil: Tokens.For(tokens.Graph) when Tokens is a
	// *tokens.Manager.
	GraphTokens tokens.Source
	// GraphHTTP talks to Microsoft Graph and its upload URLs. Nil: a client
	// per provider trusting the system roots plus the provider's ca_file.
	GraphHTTP *http.Client
}

// Server is the SMTP submission proxy. One Server may serve several
// listeners.
type Server struct {
	opts Options
	log  *slog.Logger

	ctx    context.Context // cancelled when Shutdown gives up waiting
	cancel context.CancelFunc

	mu      sync.Mutex
	closing bool
	servers []*smtp.Server
	conns   map[*trackedConn]struct{}
	wg      sync.WaitGroup // Serve calls

	noBDAT bool         // tests: send DATA upstream even where CHUNKING is offered
	gb     graphBackend // the Graph path (graph.go)
}

// New returns a Server; call Serve for each listener.
func New(opts Options) *Server {
	if opts.Logger == nil {
		opts.Logger = logging.Discard
	}
	if opts.Limiter == nil {
		opts.Limiter = &limiter.Limiter{}
	}
	opts.Failures = opts.Failures.Resolved()
	ctx, cancel := context.WithCancel(context.Background())
	return &Server{
		opts:   opts,
		log:    opts.Logger.With("proto", "smtp"),
		ctx:    ctx,
		cancel: cancel,
		conns:  map[*trackedConn]struct{}{},
	}
}

// ErrServerClosed is returned by Serve after Shutdown. It wraps
// net.ErrClosed, so callers that treat a closed listener as a normal stop
// need no special case.
var ErrServerClosed = fmt.Errorf("smtpproxy: server closed: %w", net.ErrClosed)

// Serve accepts connections on ln until Shutdown. With implicitTLS every
// connection starts with a TLS handshake using Config().LocalTLS (the "465"
// style); otherwise STARTTLS is offered when a tls block is configured.
// Listener-level limits are taken from the configuration current now.
func (s *Server) Serve(ln net.Listener, implicitTLS bool) error {
	if s.opts.Config == nil || s.opts.Auth == nil || s.opts.Tokens == nil {
		return errors.New("smtpproxy: Options.Config, Auth and Tokens are required")
	}
	cfg := s.opts.Config()
	sm := cfg.SMTP
	if sm == nil {
		return errors.New("smtpproxy: configuration has no smtp block")
	}
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

	var tlsCfg *tls.Config
	if cfg.LocalTLS != nil {
		// Read the certificate per handshake so a reload's new certificate
		// is used by the next client.
		tlsCfg = &tls.Config{GetConfigForClient: s.localTLS, MinVersion: tls.VersionTLS12}
	}
	if implicitTLS && tlsCfg == nil {
		return errors.New("smtpproxy: an implicit-TLS listener needs a tls block")
	}
	srv.TLSConfig = tlsCfg

	var l net.Listener = &trackingListener{Listener: ln, srv: s, plain: !implicitTLS}
	if implicitTLS {
		l = tls.NewListener(l, tlsCfg)
	}

	s.mu.Lock()
	if s.closing {
		s.mu.Unlock()
		ln.Close()
		return ErrServerClosed
	}
	s.servers = append(s.servers, srv)
	s.wg.Add(1)
	s.mu.Unlock()
	defer s.wg.Done()

	s.log.Info("smtp listener started", "listen", ln.Addr().String(), "implicit_tls", implicitTLS, "starttls", !implicitTLS && tlsCfg != nil)
	err := srv.Serve(l)
	if err == nil {
		return ErrServerClosed
	}
	return fmt.Errorf("smtpproxy: serve %s: %w", ln.Addr(), err)
}

func (s *Server) localTLS(*tls.ClientHelloInfo) (*tls.Config, error) {
	if c := s.opts.Config().LocalTLS; c != nil {
		return c, nil
	}
	return nil, errors.New("smtpproxy: no tls block configured")
}

// Shutdown stops accepting, lets messages whose DATA is in progress finish
// until ctx is done, closes idle connections with a 421, and then closes
// whatever is left (an unfinished DATA is never completed upstream).
func (s *Server) Shutdown(ctx context.Context) error {
	s.mu.Lock()
	s.closing = true
	servers := append([]*smtp.Server(nil), s.servers...)
	s.mu.Unlock()

	done := make(chan struct{})
	var swg sync.WaitGroup
	for _, srv := range servers {
		swg.Add(1)
		go func() {
			defer swg.Done()
			_ = srv.Shutdown(ctx) // closes the listener, waits for the conns or ctx
		}()
	}
	go func() { swg.Wait(); close(done) }()

	tick := time.NewTicker(shutdownPoll)
	defer tick.Stop()
	for {
		s.nudgeIdle()
		select {
		case <-done:
			if ctx.Err() == nil {
				s.wg.Wait()
				return nil
			}
			// go-smtp's Shutdown also returns when ctx ends, so done and
			// ctx.Done() can be ready together: the sessions still open
			// must be aborted either way.
			s.abortAll()
			return ctx.Err()
		case <-ctx.Done():
			s.abortAll()
			select {
			case <-done:
			case <-time.After(abortWait):
			}
			return ctx.Err()
		case <-tick.C:
		}
	}
}

// nudgeIdle sets a read deadline in the past on every connection that is
// not receiving a message body: go-smtp then answers "421 4.4.2 Idle
// timeout" and closes it. A command being processed gets its reply first;
// the next poll catches the connection when it waits again.
func (s *Server) nudgeIdle() {
	s.mu.Lock()
	conns := make([]*trackedConn, 0, len(s.conns))
	for c := range s.conns {
		conns = append(conns, c)
	}
	s.mu.Unlock()
	past := time.Now().Add(-time.Second)
	for _, c := range conns {
		c.mu.Lock()
		if !c.inData {
			_ = c.Conn.SetReadDeadline(past)
		}
		c.mu.Unlock()
	}
}

// abortAll closes every connection and its upstream connection; used when
// the shutdown grace period is over. go-smtp's Close cannot be used after
// its Shutdown (it returns ErrServerClosed without closing anything).
func (s *Server) abortAll() {
	s.cancel()
	s.mu.Lock()
	conns := make([]*trackedConn, 0, len(s.conns))
	for c := range s.conns {
		conns = append(conns, c)
	}
	s.mu.Unlock()
	for _, c := range conns {
		c.mu.Lock()
		sess := c.sess
		c.mu.Unlock()
		if sess != nil {
			sess.abortUpstream()
		}
		c.Close()
	}
}

// ActiveSessions reports the number of open client connections.
func (s *Server) ActiveSessions() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.conns)
}

// track registers an accepted connection, or returns nil when it must be
// refused (max_connections reached or shutting down).
func (s *Server) track(c net.Conn) *trackedConn {
	max := config.DefaultMaxConnections
	if cfg := s.opts.Config(); cfg != nil && cfg.SMTP != nil && cfg.SMTP.Limits.MaxConnections > 0 {
		max = cfg.SMTP.Limits.MaxConnections
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closing || len(s.conns) >= max {
		return nil
	}
	id := logging.ConnID()
	tc := &trackedConn{
		Conn:  c,
		srv:   s,
		id:    id,
		start: time.Now(),
		log:   s.log.With("conn", id, "remote", c.RemoteAddr().String()),
		fails: s.opts.Failures.Conn(),
	}
	s.conns[tc] = struct{}{}
	metrics.SessionsActive.WithLabelValues("smtp").Inc()
	metrics.SessionsTotal.WithLabelValues("smtp").Inc()
	return tc
}

func (s *Server) forget(c *trackedConn) {
	s.mu.Lock()
	delete(s.conns, c)
	s.mu.Unlock()
	metrics.SessionsActive.WithLabelValues("smtp").Dec()
}

// trackingListener counts connections against smtp max_connections and
// wraps each one in a trackedConn.
type trackingListener struct {
	net.Listener
	srv   *Server
	plain bool
}

func (l *trackingListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		if tc := l.srv.track(c); tc != nil {
			tc.log.Debug("connection accepted")
			return tc, nil
		}
		l.srv.log.Warn("connection refused: smtp max_connections reached or shutting down", "remote", c.RemoteAddr().String())
		go func() {
			if l.plain {
				_ = c.SetWriteDeadline(time.Now().Add(rejectWriteTimeout))
				_, _ = c.Write([]byte("421 4.3.2 Too many connections, try again later\r\n"))
			}
			c.Close()
		}()
	}
}

// trackedConn is the raw client connection (under TLS when there is TLS).
// It carries the per-connection logger and lets Shutdown find connections
// that are idle versus receiving a message body.
type trackedConn struct {
	net.Conn
	srv   *Server
	id    string
	start time.Time
	log   *slog.Logger

	closeOnce sync.Once

	// fails is the connection's failed-AUTH state; it outlives go-smtp's
	// sessions (a new one after STARTTLS). hangUp closes the connection
	// right after the next reply is written (the limit was reached).
	fails  *frontdoor.Conn
	hangUp atomic.Bool

	mu     sync.Mutex
	inData bool     // a message body is being received: Shutdown waits for it
	sess   *session // current session, for aborting its upstream

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
		return c.Conn.Read(p)
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

func (c *trackedConn) Close() error {
	err := c.Conn.Close()
	c.closeOnce.Do(func() {
		c.srv.forget(c)
		c.log.Debug("connection closed", "duration", time.Since(c.start).Round(time.Millisecond).String())
	})
	return err
}

// setInData marks the start or end of a message body. At the start it also
// re-arms the read deadline, undoing a shutdown nudge that raced with the
// DATA command: the body gets the full read timeout.
func (c *trackedConn) setInData(v bool, readTimeout time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.inData = v
	if v && readTimeout > 0 {
		_ = c.Conn.SetReadDeadline(time.Now().Add(readTimeout))
	}
}

func (c *trackedConn) setSession(sess *session) {
	c.mu.Lock()
	c.sess = sess
	c.mu.Unlock()
}

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
