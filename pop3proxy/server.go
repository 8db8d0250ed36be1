package pop3proxy

import (
	"context"
	"crypto/tls"
	"errors"
	"log/slog"
	"net"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"time"

	"github.com/oauthbridge/oauthbridge/config"
	"github.com/oauthbridge/oauthbridge/internal/frontdoor"
	"github.com/oauthbridge/oauthbridge/internal/limiter"
	"github.com/oauthbridge/oauthbridge/internal/localauth"
	"github.com/oauthbridge/oauthbridge/internal/logging"
	"github.com/oauthbridge/oauthbridge/internal/metrics"
	"github.com/oauthbridge/oauthbridge/tokens"
)

// Named limits of the pre-auth phase that are not configurable. The
// configurable ones (timeouts, line length, connection counts) come from
// config.ProxyLimits.
const (
	// MaxBadCommands unknown or malformed commands close the connection
	// (a cross-protocol defence, as go-imap's imapserver does for IMAP).
	MaxBadCommands = 3
	// MaxPreauthCommands bounds how long a client can stay unauthenticated
	// with valid commands; a real client needs fewer than ten.
	MaxPreauthCommands = 50
	// maxUpstreamLine bounds a line read from the upstream before the splice.
	maxUpstreamLine = 64 * 1024
	// closeWriteTimeout bounds the last -ERR written to a client on close.
	closeWriteTimeout = 5 * time.Second
)

// Options configure a Server. Config, Auth, Tokens and Limiter are required.
type Options struct {
	// Config returns the current configuration snapshot. It is read once per
	// connection, so a reload applies to the next connection.
	Config func() *config.Config
	// Auth checks local user names and passwords.
	Auth *localauth.Authenticator
	// Tokens hands out access tokens per account.
	Tokens tokens.Source
	// Limiter caps upstream connections per account. It must be the one the
	// IMAP proxy uses too: Exchange counts IMAP and POP3 against the same
	// mailbox. Key "mail:"+account.
	Limiter *limiter.Limiter
	// Logger receives connection and audit lines; nil discards them.
	Logger *slog.Logger

	// Failures is the per-connection failure policy shared with IMAP and
	// SMTP (delay before each failed login's -ERR, close after a few); zero
	// values take frontdoor's defaults.
	Failures frontdoor.Policy
	// IsLoopback decides whether a peer is on this host, where a password may
	// cross without TLS. nil uses localauth.IsLoopback.
	IsLoopback func(net.Addr) bool
}

// Server is a POP3 front end that authenticates locally and splices to the
// account's Microsoft 365 mailbox.
type Server struct {
	opts Options

	base   context.Context // cancelled when Shutdown gives up waiting
	cancel context.CancelFunc

	mu        sync.Mutex
	closing   atomic.Bool
	listeners map[net.Listener]struct{}
	sessions  map[*session]struct{}
	wg        sync.WaitGroup
	active    atomic.Int64
}

// New returns a Server; call Serve or ServeConn to use it. A nil Limiter
// gets a private one (then IMAP and POP3 do not share per-account slots).
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
		base:      ctx,
		cancel:    cancel,
		listeners: map[net.Listener]struct{}{},
		sessions:  map[*session]struct{}{},
	}
}

// Serve accepts connections on ln until Shutdown, handling each in its own
// goroutine. With implicitTLS every connection starts with a TLS handshake
// using the LocalTLS of the configuration current at accept time. It
// returns nil after Shutdown (as imapproxy does), or the listener's error.
func (s *Server) Serve(ln net.Listener, implicitTLS bool) error {
	s.mu.Lock()
	if s.closing.Load() {
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
		conn, err := ln.Accept()
		if err != nil {
			if s.closing.Load() {
				return nil
			}
			if errors.Is(err, net.ErrClosed) {
				return err
			}
			// Out of file descriptors and the like: back off as net/http
			// and imapserver do, 5 ms doubling up to 1 s.
			if backoff == 0 {
				backoff = 5 * time.Millisecond
			} else {
				backoff = min(2*backoff, time.Second)
			}
			s.opts.Logger.Warn("pop3 accept failed; retrying", "proto", "pop3", "error", err, "retry_in", backoff)
			select {
			case <-time.After(backoff):
			case <-s.base.Done():
				return nil
			}
			continue
		}
		backoff = 0
		go s.ServeConn(conn, implicitTLS)
	}
}

// ServeConn handles one client connection and returns when it is closed.
// With implicitTLS it first runs a TLS handshake (unless conn already is a
// *tls.Conn).
func (s *Server) ServeConn(conn net.Conn, implicitTLS bool) {
	cfg := s.opts.Config()
	c := newSession(s, cfg, conn)

	s.mu.Lock()
	if s.closing.Load() {
		s.mu.Unlock()
		if !implicitTLS {
			c.closeWith(replyShutdown)
		}
		conn.Close()
		return
	}
	s.wg.Add(1)
	s.sessions[c] = struct{}{}
	s.mu.Unlock()
	n := s.active.Add(1)
	metrics.SessionsActive.WithLabelValues("pop3").Inc()
	metrics.SessionsTotal.WithLabelValues("pop3").Inc()
	defer func() {
		s.mu.Lock()
		delete(s.sessions, c)
		s.mu.Unlock()
		s.active.Add(-1)
		metrics.SessionsActive.WithLabelValues("pop3").Dec()
		s.wg.Done()
	}()
	defer func() { c.conn.Close() }() // c.conn changes with STLS
	// A hard shutdown closes the client connection wherever the session is.
	stop := context.AfterFunc(s.base, func() { conn.Close() })
	defer stop()
	defer func() {
		if v := recover(); v != nil {
			c.log.Error("panic in pop3 session", "error", v, "stack", string(debug.Stack()))
		}
	}()

	if implicitTLS {
		if _, ok := conn.(*tls.Conn); !ok {
			if cfg.LocalTLS == nil {
				c.log.Error("implicit-TLS listener without a tls block; closing connection")
				return
			}
			tc := tls.Server(conn, cfg.LocalTLS)
			if err := c.armRead(); err != nil {
				return
			}
			_ = conn.SetWriteDeadline(time.Now().Add(c.lim.PreauthTimeout))
			if err := tc.HandshakeContext(s.base); err != nil {
				c.log.Info("tls handshake failed", "error", err)
				return
			}
			c.setConn(tc, true)
		}
	}
	if _, ok := c.conn.(*tls.Conn); ok {
		c.tls = true
	}
	if max := c.lim.MaxConnections; max > 0 && n > int64(max) {
		c.log.Warn("too many pop3 connections; refusing", "max_connections", max)
		c.closeWith("-ERR [SYS/TEMP] too many connections, try again later")
		return
	}
	c.run(s.base)
}

// Shutdown stops accepting connections, tells clients that have not logged
// in yet that the bridge is going away, and waits for logged-in sessions to
// end. When ctx expires first it closes them and returns ctx's error.
// Nothing is ever written into a spliced session.
func (s *Server) Shutdown(ctx context.Context) error {
	s.mu.Lock()
	s.closing.Store(true)
	for ln := range s.listeners {
		ln.Close()
	}
	for c := range s.sessions {
		c.kick()
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
		s.cancel() // closes spliced sessions and aborts logins in progress
		<-done
		return ctx.Err()
	}
}

// ActiveSessions reports the connections being served, logged in or not.
func (s *Server) ActiveSessions() int { return int(s.active.Load()) }
