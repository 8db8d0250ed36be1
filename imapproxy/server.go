package imapproxy

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/oauthbridge/oauthbridge/config"
	"github.com/oauthbridge/oauthbridge/internal/frontdoor"
	"github.com/oauthbridge/oauthbridge/internal/limiter"
	"github.com/oauthbridge/oauthbridge/internal/localauth"
	"github.com/oauthbridge/oauthbridge/internal/logging"
	"github.com/oauthbridge/oauthbridge/internal/metrics"
	"github.com/oauthbridge/oauthbridge/tokens"
)

// Named defaults of this package (the configurable limits live in
// config.ProxyLimits).
const (
	// MaxBadCommands BAD answers before login end the connection with BYE.
	MaxBadCommands = 3
	// MaxPreauthCommands bounds how long a client can stay unauthenticated
	// by sending valid commands (NOOP, CAPABILITY) just within
	// preauth_timeout: the next one ends the connection with BYE, as
	// pop3proxy does.
	MaxPreauthCommands = 50
	// closeWriteTimeout bounds the last BYE written to a client that is
	// refused (shutdown, too many connections).
	closeWriteTimeout = time.Second
	// maxUpstreamLine bounds one upstream response line before the splice.
	maxUpstreamLine = 64 * 1024
)

// errTooManyFiles is the accept error that warrants a retry, not a stop.
var errTooManyFiles error = syscall.EMFILE

// Options configure a Server. Config, Auth, Tokens and Limiter are required.
type Options struct {
	Config  func() *config.Config    // current configuration snapshot, read once per connection
	Auth    *localauth.Authenticator // local user/password check
	Tokens  tokens.Source            // upstream access tokens
	Limiter *limiter.Limiter         // shared with POP3: key "mail:"+account
	Logger  *slog.Logger             // nil: discard

	// Failures is the per-connection failure policy shared with POP3 and
	// SMTP (delay before each failed login's reply, BYE after a few); zero
	// values take frontdoor's defaults.
	Failures frontdoor.Policy
	// IsLoopback decides whether a remote address is local enough to accept
	// a plaintext password without TLS. nil uses localauth.IsLoopback.
	IsLoopback func(net.Addr) bool
}

// Server is the IMAP side of the bridge.
type Server struct {
	opts   Options
	log    *slog.Logger
	ctx    context.Context // cancelled when Shutdown gives up waiting
	cancel context.CancelFunc

	mu        sync.Mutex
	closed    bool
	listeners map[net.Listener]struct{}
	sessions  map[*session]struct{}
	wg        sync.WaitGroup

	draining atomic.Bool
	active   atomic.Int64
}

// New returns a Server; call Serve or ServeConn to use it.
func New(opts Options) *Server {
	if opts.Logger == nil {
		opts.Logger = logging.Discard
	}
	opts.Failures = opts.Failures.Resolved()
	if opts.IsLoopback == nil {
		opts.IsLoopback = localauth.IsLoopback
	}
	if opts.Limiter == nil {
		opts.Limiter = &limiter.Limiter{}
	}
	ctx, cancel := context.WithCancel(context.Background())
	return &Server{
		opts:      opts,
		log:       opts.Logger,
		ctx:       ctx,
		cancel:    cancel,
		listeners: map[net.Listener]struct{}{},
		sessions:  map[*session]struct{}{},
	}
}

// Serve accepts connections on ln until Shutdown. With implicitTLS each
// connection is wrapped in TLS with the LocalTLS of the configuration
// current at accept time, so reloaded certificates apply to new connections.
// It returns nil after Shutdown.
func (s *Server) Serve(ln net.Listener, implicitTLS bool) error {
	s.mu.Lock()
	if s.closed {
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

	var backoff time.Duration
	for {
		c, err := ln.Accept()
		if err != nil {
			if s.isClosed() {
				return nil
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() || errors.Is(err, errTooManyFiles) {
				// Back off like net/http and imapserver: 5 ms doubling to 1 s.
				backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
				s.log.Warn("imap accept failed; retrying", "proto", "imap", "error", err, "retry_in", backoff)
				select {
				case <-time.After(backoff):
					continue
				case <-s.ctx.Done():
					return nil
				}
			}
			return err
		}
		backoff = 0
		go s.ServeConn(c, implicitTLS)
	}
}

func (s *Server) isClosed() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.closed
}

// ServeConn serves one client connection and returns when it is finished;
// the connection is closed on return.
func (s *Server) ServeConn(conn net.Conn, implicitTLS bool) {
	defer conn.Close()
	id := logging.ConnID()
	log := s.log.With("proto", "imap", "conn", id, "remote", conn.RemoteAddr().String())
	defer func() {
		// One broken session must not take the bridge down (imapserver does the same).
		if v := recover(); v != nil {
			log.Error("panic in imap session", "error", fmt.Sprint(v), "stack", string(debug.Stack()))
		}
	}()

	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		_ = conn.SetWriteDeadline(time.Now().Add(closeWriteTimeout))
		_, _ = conn.Write([]byte("* BYE Server shutting down\r\n"))
		return
	}
	s.wg.Add(1)
	sess := &session{srv: s, raw: conn, conn: conn, log: log, auditLog: s.log.With("conn", id), fails: s.opts.Failures.Conn()}
	s.sessions[sess] = struct{}{}
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		delete(s.sessions, sess)
		s.mu.Unlock()
		s.wg.Done()
	}()
	// A hard shutdown closes the client connection; the splice has its own
	// AfterFunc for the upstream side.
	stop := context.AfterFunc(s.ctx, func() { conn.Close() })
	defer stop()

	metrics.SessionsTotal.WithLabelValues("imap").Inc()
	cfg := s.opts.Config()
	sess.cfg = cfg
	sess.lim = cfg.IMAP.Limits
	if n := s.active.Add(1); n > int64(sess.lim.MaxConnections) {
		s.active.Add(-1)
		log.Warn("too many imap connections; refusing", "max_connections", sess.lim.MaxConnections)
		_ = conn.SetWriteDeadline(time.Now().Add(closeWriteTimeout))
		_, _ = conn.Write([]byte("* BYE Too many connections\r\n"))
		return
	}
	defer s.active.Add(-1)
	metrics.SessionsActive.WithLabelValues("imap").Inc()
	defer metrics.SessionsActive.WithLabelValues("imap").Dec()

	if implicitTLS {
		if cfg.LocalTLS == nil {
			log.Error("implicit-TLS listener without a tls block; closing connection")
			return
		}
		tc := tls.Server(conn, cfg.LocalTLS)
		_ = tc.SetDeadline(time.Now().Add(sess.lim.PreauthTimeout))
		if err := tc.HandshakeContext(s.ctx); err != nil {
			log.Info("tls handshake failed", "error", err)
			return
		}
		sess.setConn(tc) // under the lock: Shutdown may be reading conn right now
		sess.isTLS = true
	}
	sess.run()
}

// ActiveSessions reports the client connections currently being served.
func (s *Server) ActiveSessions() int { return int(s.active.Load()) }

// Shutdown stops accepting, ends idle pre-auth sessions with BYE, and waits
// for the remaining sessions (logged-in ones run their splice undisturbed)
// until ctx is done; then it closes them and returns ctx's error.
func (s *Server) Shutdown(ctx context.Context) error {
	s.mu.Lock()
	s.closed = true
	s.draining.Store(true)
	for ln := range s.listeners {
		ln.Close()
	}
	for sess := range s.sessions {
		sess.interruptPreauth()
	}
	s.mu.Unlock()

	done := make(chan struct{})
	go func() {
		s.wg.Wait()
		close(done)
	}()
	select {
	case <-done:
		s.cancel()
		return nil
	case <-ctx.Done():
		s.cancel()
		<-done
		return ctx.Err()
	}
}
