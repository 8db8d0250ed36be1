package imapproxy

import (
	"context"
	"io"
	"log/slog"
	"net"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/oauthbridge/oauthbridge/audit"
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
	// maxUpstreamLine bounds one upstream response line before the splice.
	maxUpstreamLine = 64 * 1024
)

// Options configure a Server. Config, Auth, Tokens and Limiter are required.
type Options struct {
	Config  func() *config.Config // current configuration snapshot, read once per connection
	Auth    PasswordChecker       // local user/password check
	Tokens  tokens.Source         // upstream access tokens
	Limiter SlotLimiter           // shared with POP3: key "mail:"+account
	Logger  *slog.Logger          // nil: discard
	// Registerer receives the oauthbridge_* metrics (the daemon passes one
	// registry to every component); nil: a private registry.
	Registerer prometheus.Registerer

	// LoginObservers, if set, see every login attempt this server audits,
	// with its result and no secret (package audit; the daemon's alert
	// engine counts failed upstream logins with them); nil: nobody
	// observes.
	LoginObservers []audit.LoginObserver

	// FailureDelay is how long the reply to a failed login waits (0:
	// 1 s, negative: none); MaxFailures failed logins
	// end the connection (0: 3). IMAP, POP3 and SMTP apply the same policy.
	FailureDelay time.Duration
	MaxFailures  int
	// IsLoopback decides whether a remote address is local enough to accept
	// a plaintext password without TLS. nil uses localauth.IsLoopback.
	IsLoopback func(net.Addr) bool

	// Graph serves the accounts whose mail is read through Microsoft
	// Graph (read_via = "graph") after the local login, instead of the
	// splice to Exchange's IMAP. nil: every account is spliced.
	Graph GraphServer
}

// Server is the IMAP side of the bridge.
type Server struct {
	opts     Options
	m        *metrics.Metrics
	log      *slog.Logger
	fd       *frontdoor.Server
	gate     *frontdoor.Gate
	failures frontdoor.Policy
	ctx      context.Context // cancelled when Shutdown gives up waiting
}

// New returns a Server; call Serve or ServeConn to use it.
func New(opts Options) *Server {
	if opts.Logger == nil {
		opts.Logger = logging.Discard
	}
	if opts.IsLoopback == nil {
		opts.IsLoopback = localauth.IsLoopback
	}
	if opts.Limiter == nil {
		opts.Limiter = &limiter.Limiter{}
	}
	s := &Server{opts: opts, log: opts.Logger, failures: frontdoor.Policy{FailureDelay: opts.FailureDelay, MaxFailures: opts.MaxFailures}.Resolved()}
	s.gate = &frontdoor.Gate{
		Auth: opts.Auth, Tokens: opts.Tokens, Limiter: opts.Limiter,
		// The slot is shared with POP3: max_connections counts both.
		Slot: func(l *frontdoor.Login) frontdoor.Slot {
			return frontdoor.Slot{Key: "mail:" + l.Account.Name, Max: l.Account.MaxConnections, Wait: l.Config.IMAP.Limits.ConnectionWait}
		},
		TokenTimeout: func(l *frontdoor.Login) time.Duration { return l.Config.IMAP.Limits.UpstreamTimeout },
	}
	s.m = metrics.New(opts.Registerer)
	s.fd = frontdoor.New(frontdoor.Options{
		Metrics: s.m,
		Proto:   "imap",
		Logger:  opts.Logger,
		Limits: func() frontdoor.Limits {
			cfg := s.opts.Config()
			return frontdoor.Limits{
				MaxConnections:   cfg.IMAP.Limits.MaxConnections,
				HandshakeTimeout: cfg.IMAP.Limits.PreauthTimeout,
				TLS:              cfg.LocalTLS,
				Snapshot:         cfg,
			}
		},
		Serve:  s.serveSession,
		Refuse: refuse,
	})
	s.ctx = s.fd.Context()
	return s
}

// refuse is the last line of a connection refused before its greeting.
func refuse(w io.Writer, why frontdoor.Reason) {
	switch why {
	case frontdoor.TooManyConnections:
		_, _ = io.WriteString(w, "* BYE Too many connections\r\n")
	default:
		_, _ = io.WriteString(w, "* BYE Server shutting down\r\n")
	}
}

// Serve accepts connections on ln until Shutdown (see frontdoor.Server.Serve
// for the accept policy). With implicitTLS each connection is wrapped in TLS
// with the LocalTLS of the configuration current at accept time, so
// reloaded certificates apply to new connections. It returns nil after
// Shutdown, or a *ListenerError when the listener fails for good.
func (s *Server) Serve(ln net.Listener, implicitTLS bool) error {
	return s.fd.Serve(ln, implicitTLS)
}

// ServeConn serves one client connection and returns when it is finished;
// the connection is closed on return.
func (s *Server) ServeConn(conn net.Conn, implicitTLS bool) {
	s.fd.ServeConn(conn, implicitTLS)
}

func (s *Server) serveSession(fs *frontdoor.Session) {
	cfg := fs.Snapshot.(*config.Config)
	conn := fs.Conn()
	sess := &session{
		srv: s, fs: fs, cfg: cfg, lim: cfg.IMAP.Limits, raw: conn, conn: conn, isTLS: fs.TLS(),
		log: fs.Log, auditLog: s.log.With("conn", fs.ID), fails: s.failures.Conn(),
	}
	sess.run()
	// The rest of a logged-in session (the splice, or the Graph-served
	// session) runs here, after the pre-auth frames (login, the upstream's
	// TLS handshake) have returned: the goroutine then waits, for hours,
	// on a shallow stack that the garbage collector shrinks to a few KiB.
	if rest := sess.rest; rest != nil {
		sess.rest = nil
		rest()
	}
}

// ActiveSessions reports the client connections currently being served.
func (s *Server) ActiveSessions() int { return s.fd.ActiveSessions() }

// Shutdown stops accepting, ends pre-auth sessions with BYE, and waits for
// the remaining sessions (logged-in ones run their splice undisturbed)
// until ctx is done; then it closes them and returns ctx's error.
func (s *Server) Shutdown(ctx context.Context) error { return s.fd.Shutdown(ctx) }
