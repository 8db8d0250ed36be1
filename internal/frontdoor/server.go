package frontdoor

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/oauthbridge/oauthbridge/internal/logging"
	"github.com/oauthbridge/oauthbridge/internal/metrics"
)

// Named defaults of the server loop.
const (
	// DefaultHandshakeTimeout bounds an implicit-TLS handshake when Limits
	// gives none (the proxies pass their preauth_timeout).
	DefaultHandshakeTimeout = 30 * time.Second
	// RefusalWriteTimeout bounds writing the one line that refuses a
	// connection (too many connections, shutting down).
	RefusalWriteTimeout = time.Second
	// CutWait bounds how long Shutdown waits for sessions to notice that
	// their connections were closed once its context ended.
	CutWait = 5 * time.Second
	// MaxRefusalHandshakes bounds the implicit-TLS handshakes run at once
	// only to tell a client that max_connections is reached; beyond it such
	// connections are closed without a word.
	MaxRefusalHandshakes = 16
	// minAcceptBackoff and maxAcceptBackoff: after a failed Accept the loop
	// waits 5 ms, doubling up to 1 s, as net/http and imapserver do.
	minAcceptBackoff = 5 * time.Millisecond
	maxAcceptBackoff = time.Second
)

// ErrShuttingDown is returned by Session.BeginSplice during a drain: the
// login completed, but the session must be refused with the protocol's
// temporary error instead of being spliced.
var ErrShuttingDown = errors.New("frontdoor: shutting down")

// Reason says why a connection is refused before its session starts.
type Reason int

const (
	// TooManyConnections: the listener's max_connections is reached.
	TooManyConnections Reason = iota + 1
	// ShuttingDown: the server is draining.
	ShuttingDown
)

func (r Reason) String() string {
	switch r {
	case TooManyConnections:
		return "too many connections"
	case ShuttingDown:
		return "shutting down"
	}
	return "unknown"
}

// Limits are what the front door reads once per connection, at accept time,
// so that a reload applies to the next connection.
type Limits struct {
	// MaxConnections caps the sessions served at once; 0 or less: no cap.
	// A connection counts from its accept (its TLS handshake included); the
	// refusal is written after the handshake, so it is readable.
	MaxConnections int
	// HandshakeTimeout bounds the implicit-TLS handshake; 0 means
	// DefaultHandshakeTimeout.
	HandshakeTimeout time.Duration
	// TLS is used on implicit-TLS listeners; nil refuses them (logged).
	TLS *tls.Config
	// Snapshot is handed to the session as Session.Snapshot, typically the
	// configuration these limits were read from.
	Snapshot any
}

// Options configure a Server. Proto, Limits, Serve and Refuse are required.
type Options struct {
	// Proto names the protocol in logs and metrics ("imap", "pop3", "smtp").
	Proto string
	// Logger receives the loop's lines; nil discards them.
	Logger *slog.Logger
	// Metrics counts the sessions; nil: a private set.
	Metrics *metrics.Metrics
	// Limits returns the limits for a new connection.
	Limits func() Limits
	// WrapConn, if set, wraps each accepted connection below TLS (smtpproxy
	// keeps its per-connection state there). The wrapper must pass
	// deadlines and Close through to c.
	WrapConn func(s *Session, c net.Conn) net.Conn
	// Serve runs one admitted session and returns when it is over; the
	// front door then closes the connection. A panic in Serve is recovered
	// and logged.
	Serve func(*Session)
	// Refuse writes the protocol's last line for a connection refused
	// before its session starts, e.g. "* BYE Too many connections". The
	// write deadline is already set; on an implicit-TLS listener w is the
	// TLS connection.
	Refuse func(w io.Writer, why Reason)
}

// Server owns the accept loops, the connection tracking, the limits and the
// drain of one proxy. It is safe for concurrent use.
type Server struct {
	opts  Options
	log   *slog.Logger
	sleep func(stop <-chan struct{}, d time.Duration) bool // tests replace it

	cut    context.Context // cancelled when Shutdown stops waiting: closes every connection
	cancel context.CancelFunc

	draining  atomic.Bool
	refusing  atomic.Int32 // implicit-TLS handshakes run only to refuse
	drainOnce sync.Once
	drainCh   chan struct{} // closed when Shutdown starts: stops accept backoffs

	mu        sync.Mutex
	listeners map[net.Listener]struct{}
	sessions  map[*Session]struct{}
	admitted  int
	emptyOnce sync.Once
	empty     chan struct{} // closed when draining and no session is left
}

// New returns a Server.
func New(opts Options) *Server {
	if opts.Logger == nil {
		opts.Logger = logging.Discard
	}
	if opts.Metrics == nil {
		opts.Metrics = metrics.New(nil)
	}
	ctx, cancel := context.WithCancel(context.Background())
	return &Server{
		opts:      opts,
		log:       opts.Logger,
		sleep:     sleep,
		cut:       ctx,
		cancel:    cancel,
		drainCh:   make(chan struct{}),
		listeners: map[net.Listener]struct{}{},
		sessions:  map[*Session]struct{}{},
		empty:     make(chan struct{}),
	}
}

func sleep(stop <-chan struct{}, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-stop:
		return false
	}
}

// ListenerError is returned by Serve when its listener fails for good (not
// because of Shutdown). The daemon treats it as fatal: a bridge that lost a
// listener must not stay "ready".
type ListenerError struct {
	Proto string
	Addr  string
	Err   error
}

func (e *ListenerError) Error() string {
	return fmt.Sprintf("frontdoor: %s listener %s failed: %v", e.Proto, e.Addr, e.Err)
}

func (e *ListenerError) Unwrap() error { return e.Err }

// Transient reports whether an Accept error is worth retrying: timeouts,
// running out of file descriptors, buffers or memory, and the errors that
// accept(2) passes on from a connection that was already gone (Linux's man
// page says to retry those like EAGAIN). Anything else (a closed or broken
// listening socket) means the listener is dead.
func Transient(err error) bool {
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return true
	}
	var errno syscall.Errno
	if !errors.As(err, &errno) {
		return false
	}
	switch errno {
	case syscall.EMFILE, syscall.ENFILE, syscall.ENOBUFS, syscall.ENOMEM,
		syscall.ECONNABORTED, syscall.ECONNRESET, syscall.EINTR, syscall.EAGAIN,
		syscall.EPROTO, syscall.EPERM, syscall.ENETDOWN, syscall.ENOPROTOOPT,
		syscall.EHOSTDOWN, syscall.ENONET, syscall.EHOSTUNREACH, syscall.EOPNOTSUPP,
		syscall.ENETUNREACH, syscall.ETIMEDOUT:
		return true
	}
	return false
}

// Serve accepts connections on ln until Shutdown and serves each in its own
// goroutine; with implicitTLS each starts with a TLS handshake. A transient
// Accept error is logged and retried after a backoff, forever. Serve returns
// nil after Shutdown, or a *ListenerError when the listener fails for good.
func (s *Server) Serve(ln net.Listener, implicitTLS bool) error {
	s.mu.Lock()
	if s.draining.Load() {
		s.mu.Unlock()
		ln.Close()
		return nil
	}
	s.listeners[ln] = struct{}{}
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		delete(s.listeners, ln)
		s.mu.Unlock()
	}()

	addr := ln.Addr().String()
	var backoff time.Duration
	for {
		c, err := ln.Accept()
		if err != nil {
			if s.draining.Load() {
				return nil
			}
			if !Transient(err) {
				le := &ListenerError{Proto: s.opts.Proto, Addr: addr, Err: err}
				s.log.Error("listener failed; it accepts no more connections", "proto", s.opts.Proto, "listen", addr, "error", err)
				return le
			}
			backoff = min(max(2*backoff, minAcceptBackoff), maxAcceptBackoff)
			s.log.Warn("accept failed; retrying", "proto", s.opts.Proto, "listen", addr, "error", err, "retry_in", backoff.String())
			if !s.sleep(s.drainCh, backoff) {
				return nil
			}
			continue
		}
		backoff = 0
		go s.ServeConn(c, implicitTLS)
	}
}

// ServeConn serves one accepted connection and returns when it is over; the
// connection is closed on return. With implicitTLS it first runs the TLS
// handshake, bounded by the handshake timeout; the connection counts toward
// max_connections from its accept, and a refusal (too many connections,
// shutting down) is written after the handshake, through TLS.
func (s *Server) ServeConn(nc net.Conn, implicitTLS bool) {
	lim := s.opts.Limits()
	sess := s.track(nc, lim)
	defer s.untrack(sess)
	defer func() {
		// One broken session must not take the bridge down (imapserver and
		// go-smtp do the same).
		if v := recover(); v != nil {
			sess.Log.Error("panic in session", "error", fmt.Sprint(v), "stack", string(debug.Stack()))
		}
	}()
	// A connection counts toward max_connections from its accept, so
	// connections stuck in their TLS handshake cannot push the sessions
	// past the cap.
	why := s.admit(sess, lim.MaxConnections)
	if implicitTLS {
		if lim.TLS == nil {
			sess.Log.Error("implicit-TLS listener without a tls block; closing connection")
			return
		}
		if why == TooManyConnections {
			// The refusal is only readable through TLS; a bounded number
			// of refusal handshakes run at once, the others are closed
			// without a word.
			if n := s.refusing.Add(1); n > MaxRefusalHandshakes {
				s.refusing.Add(-1)
				sess.Log.Warn("connection closed: max_connections reached and too many refusals in progress", "max_connections", lim.MaxConnections)
				return
			}
			defer s.refusing.Add(-1)
		}
		d := lim.HandshakeTimeout
		if d <= 0 {
			d = DefaultHandshakeTimeout
		}
		tc := tls.Server(sess.conn, lim.TLS)
		_ = tc.SetDeadline(time.Now().Add(d))
		if err := tc.HandshakeContext(s.cut); err != nil {
			sess.Log.Info("tls handshake failed", "error", err)
			return
		}
		_ = tc.SetDeadline(time.Time{})
		sess.conn = tc
		sess.tls = true
		if why == 0 && s.draining.Load() {
			why = ShuttingDown // the drain started during the handshake
		}
	}

	if why != 0 {
		if why == TooManyConnections {
			sess.Log.Warn("connection refused: max_connections reached", "max_connections", lim.MaxConnections)
		} else {
			sess.Log.Info("connection refused: shutting down")
		}
		_ = sess.conn.SetWriteDeadline(time.Now().Add(RefusalWriteTimeout))
		s.opts.Refuse(sess.conn, why)
		return
	}
	// Shutdown's cut closes the connection wherever the session is (the
	// handshake above is bounded by the same context).
	stop := context.AfterFunc(s.cut, func() { sess.raw.Close() })
	defer stop()
	m := s.opts.Metrics
	m.SessionsTotal.WithLabelValues(s.opts.Proto).Inc()
	m.SessionsActive.WithLabelValues(s.opts.Proto).Inc()
	defer m.SessionsActive.WithLabelValues(s.opts.Proto).Dec()
	s.opts.Serve(sess)
}

func (s *Server) track(nc net.Conn, lim Limits) *Session {
	id := logging.ConnID()
	remote := "unknown"
	if a := nc.RemoteAddr(); a != nil {
		remote = a.String()
	}
	sess := &Session{
		ID:       id,
		Log:      s.log.With("proto", s.opts.Proto, "conn", id, "remote", remote),
		Snapshot: lim.Snapshot,
		srv:      s,
		start:    time.Now(),
	}
	sess.raw = &trackedConn{Conn: nc, sess: sess, closed: make(chan struct{})}
	sess.conn = sess.raw
	if s.opts.WrapConn != nil {
		sess.conn = s.opts.WrapConn(sess, sess.raw)
	}
	s.mu.Lock()
	s.sessions[sess] = struct{}{}
	s.mu.Unlock()
	return sess
}

// admit counts the session against maxConns, or says why it is refused.
func (s *Server) admit(sess *Session, maxConns int) Reason {
	s.mu.Lock()
	defer s.mu.Unlock()
	switch {
	case s.draining.Load():
		return ShuttingDown
	case maxConns > 0 && s.admitted >= maxConns:
		return TooManyConnections
	}
	s.admitted++
	sess.admitted = true
	return 0
}

func (s *Server) untrack(sess *Session) {
	sess.raw.Close()
	s.mu.Lock()
	delete(s.sessions, sess)
	if sess.admitted {
		s.admitted--
	}
	if s.draining.Load() && len(s.sessions) == 0 {
		s.emptyOnce.Do(func() { close(s.empty) })
	}
	s.mu.Unlock()
	sess.Log.Debug("connection closed", "duration", time.Since(sess.start).Round(time.Millisecond).String())
}

// ActiveSessions reports the connections being served, including those
// still in their TLS handshake.
func (s *Server) ActiveSessions() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.sessions)
}

// Draining reports whether Shutdown has started.
func (s *Server) Draining() bool { return s.draining.Load() }

// Shutdown drains: it stops accepting, makes every session that is not
// spliced (or held, see Session.Hold) end with the protocol's text at its
// next read, and waits for the others until ctx ends. Then it closes every
// connection and returns ctx's error; it returns nil when no session had to
// be cut.
func (s *Server) Shutdown(ctx context.Context) error {
	s.mu.Lock()
	s.draining.Store(true)
	s.drainOnce.Do(func() { close(s.drainCh) })
	for ln := range s.listeners {
		ln.Close()
	}
	sessions := make([]*Session, 0, len(s.sessions))
	for sess := range s.sessions {
		sessions = append(sessions, sess)
	}
	if len(s.sessions) == 0 {
		s.emptyOnce.Do(func() { close(s.empty) })
	}
	s.mu.Unlock()
	for _, sess := range sessions {
		sess.interrupt()
	}

	select {
	case <-s.empty:
		s.cancel()
		return nil
	case <-ctx.Done():
	}
	s.cancel() // closes every connection (AfterFunc in ServeConn)
	t := time.NewTimer(CutWait)
	defer t.Stop()
	select {
	case <-s.empty:
	case <-t.C:
		s.log.Warn("sessions still running after their connections were closed", "proto", s.opts.Proto, "sessions", s.ActiveSessions())
	}
	return ctx.Err()
}

// Session is one tracked connection, handed to Options.Serve.
type Session struct {
	// ID is the connection's log id.
	ID string
	// Log carries proto, conn and remote.
	Log *slog.Logger
	// Snapshot is Limits.Snapshot at accept time.
	Snapshot any
	// Value is the proxy's own per-connection state (set in Options.Serve),
	// for code that finds the session again through SessionOf.
	Value any

	srv      *Server
	raw      *trackedConn
	conn     net.Conn // raw (wrapped by WrapConn), or the implicit-TLS connection over it
	tls      bool
	start    time.Time
	admitted bool

	mu      sync.Mutex // guards protect against the drain
	protect int        // > 0: spliced or held; the drain does not interrupt
}

// Conn returns the client connection: the TLS connection on an implicit-TLS
// listener, otherwise the accepted one. Its read deadlines are moved to the
// past while the server drains, unless the session is spliced or held.
func (s *Session) Conn() net.Conn { return s.conn }

// TLS reports whether the connection came through an implicit-TLS handshake.
func (s *Session) TLS() bool { return s.tls }

// Context is cancelled when Shutdown stops waiting and cuts every session.
func (s *Session) Context() context.Context { return s.srv.cut }

// Draining reports whether the server is draining.
func (s *Session) Draining() bool { return s.srv.draining.Load() }

// Closed is closed when the connection has been closed, by anyone.
func (s *Session) Closed() <-chan struct{} { return s.raw.closed }

// BeginSplice marks the session as logged in for good: from now on the drain
// leaves it alone until Shutdown's context ends, and nothing is ever written
// into it. During a drain it returns ErrShuttingDown instead: the proxy then
// refuses the login with its temporary error (the same rule in every
// protocol).
func (s *Session) BeginSplice() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.srv.draining.Load() {
		return ErrShuttingDown
	}
	s.protect++
	return nil
}

// Hold protects a piece of work that was accepted before a drain (an SMTP
// message body) until release is called; then the drain catches the session
// at its next read.
func (s *Session) Hold() (release func()) {
	s.mu.Lock()
	s.protect++
	s.mu.Unlock()
	var once sync.Once
	return func() {
		once.Do(func() {
			s.mu.Lock()
			s.protect--
			s.mu.Unlock()
			s.interrupt()
		})
	}
}

// interrupt makes a pending read of an unprotected session return at once
// when the server is draining.
func (s *Session) interrupt() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.srv.draining.Load() && s.protect == 0 {
		_ = s.raw.Conn.SetReadDeadline(past)
	}
}

// past is a deadline that has already expired.
var past = time.Unix(1, 0)

// trackedConn is the accepted connection. While the server drains, a read
// deadline set on an unprotected session is replaced by one in the past, so
// its next read fails with a timeout and the proxy ends it with its
// "shutting down" text; together with interrupt, no read can slip through.
type trackedConn struct {
	net.Conn
	sess      *Session
	closeOnce sync.Once
	closed    chan struct{}
}

func (c *trackedConn) SetReadDeadline(t time.Time) error {
	c.sess.mu.Lock()
	defer c.sess.mu.Unlock()
	if c.sess.srv.draining.Load() && c.sess.protect == 0 {
		t = past
	}
	return c.Conn.SetReadDeadline(t)
}

func (c *trackedConn) SetDeadline(t time.Time) error {
	c.sess.mu.Lock()
	defer c.sess.mu.Unlock()
	if c.sess.srv.draining.Load() && c.sess.protect == 0 {
		_ = c.Conn.SetWriteDeadline(t)
		return c.Conn.SetReadDeadline(past)
	}
	return c.Conn.SetDeadline(t)
}

func (c *trackedConn) Close() error {
	err := c.Conn.Close()
	c.closeOnce.Do(func() { close(c.closed) })
	return err
}

// SessionOf returns the Session of a connection the front door handed out,
// looking under a *tls.Conn (STARTTLS, implicit TLS), or nil.
func SessionOf(c net.Conn) *Session {
	if tc, ok := c.(*tls.Conn); ok {
		c = tc.NetConn()
	}
	if t, ok := c.(*trackedConn); ok {
		return t.sess
	}
	return nil
}

// Context is cancelled when Shutdown stops waiting and cuts every session;
// logins and upstream dials should use it.
func (s *Server) Context() context.Context { return s.cut }
