package pop3proxy

import (
	"context"
	"io"
	"log/slog"
	"net"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/oauthbridge/oauthbridge/audit"
	"github.com/oauthbridge/oauthbridge/config"
	"github.com/oauthbridge/oauthbridge/graphmail"
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
	Auth PasswordChecker
	// Tokens hands out access tokens per account.
	Tokens tokens.Source
	// Limiter caps upstream connections per account. It must be the one the
	// IMAP proxy uses too: Exchange counts IMAP and POP3 against the same
	// mailbox. Key "mail:"+account.
	Limiter SlotLimiter
	// Logger receives connection and audit lines; nil discards them.
	Logger *slog.Logger
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
	// IsLoopback decides whether a peer is on this host, where a password may
	// cross without TLS. nil uses localauth.IsLoopback.
	IsLoopback func(net.Addr) bool

	// Accounts with read_via = "graph" (graph.go): GraphTokens serves their
	// Microsoft Graph tokens (nil: Tokens.For(tokens.Graph) when Tokens is
	// a *tokens.Manager); GraphHTTP talks to Graph (nil: a client per
	// provider trusting its ca_file); GraphMail tunes graphmail.
	GraphTokens tokens.Source
	GraphHTTP   *http.Client
	GraphMail   graphmail.Options
	// GraphMailboxes, if set, is shared with the IMAP side so that both
	// count against one limit of 4 Graph requests per mailbox (key: the
	// account name; see graphMailbox). Nil: a private one.
	GraphMailboxes *graphmail.Registry
}

// Server is a POP3 front end that authenticates locally and splices to the
// account's Microsoft 365 mailbox.
type Server struct {
	opts     Options
	m        *metrics.Metrics
	fd       *frontdoor.Server
	gate     *frontdoor.Gate
	failures frontdoor.Policy
	base     context.Context // cancelled when Shutdown gives up waiting
	gb       graphBackend    // read_via = "graph" (graph.go)
}

// New returns a Server; call Serve or ServeConn to use it. A nil Limiter
// gets a private one (then IMAP and POP3 do not share per-account slots).
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
	s := &Server{opts: opts, failures: frontdoor.Policy{FailureDelay: opts.FailureDelay, MaxFailures: opts.MaxFailures}.Resolved()}
	s.gate = &frontdoor.Gate{
		Auth: opts.Auth, Tokens: opts.Tokens, Limiter: opts.Limiter,
		// The slot is shared with IMAP: max_connections counts both.
		Slot: func(l *frontdoor.Login) frontdoor.Slot {
			return frontdoor.Slot{Key: "mail:" + l.Account.Name, Max: l.Account.MaxConnections, Wait: l.Config.POP3.Limits.ConnectionWait}
		},
		TokenTimeout: func(l *frontdoor.Login) time.Duration { return l.Config.POP3.Limits.UpstreamTimeout },
	}
	s.m = metrics.New(opts.Registerer)
	s.fd = frontdoor.New(frontdoor.Options{
		Metrics: s.m,
		Proto:   "pop3",
		Logger:  opts.Logger,
		Limits: func() frontdoor.Limits {
			cfg := s.opts.Config()
			return frontdoor.Limits{
				MaxConnections:   cfg.POP3.Limits.MaxConnections,
				HandshakeTimeout: cfg.POP3.Limits.PreauthTimeout,
				TLS:              cfg.LocalTLS,
				Snapshot:         cfg,
			}
		},
		Serve:  s.serveSession,
		Refuse: refuse,
	})
	s.base = s.fd.Context()
	return s
}

// refuse is the last line of a connection refused before its greeting.
func refuse(w io.Writer, why frontdoor.Reason) {
	switch why {
	case frontdoor.TooManyConnections:
		_, _ = io.WriteString(w, "-ERR [SYS/TEMP] too many connections, try again later\r\n")
	default:
		_, _ = io.WriteString(w, replyShutdown+"\r\n")
	}
}

// Serve accepts connections on ln until Shutdown, handling each in its own
// goroutine (see frontdoor.Server.Serve for the accept policy). With
// implicitTLS every connection starts with a TLS handshake using the
// LocalTLS of the configuration current at accept time. It returns nil
// after Shutdown, or a *ListenerError when the listener fails for
// good.
func (s *Server) Serve(ln net.Listener, implicitTLS bool) error {
	return s.fd.Serve(ln, implicitTLS)
}

// ServeConn handles one client connection and returns when it is closed.
// With implicitTLS it first runs a TLS handshake.
func (s *Server) ServeConn(conn net.Conn, implicitTLS bool) {
	s.fd.ServeConn(conn, implicitTLS)
}

func (s *Server) serveSession(fs *frontdoor.Session) {
	c := newSession(s, fs)
	defer func() { c.conn.Close() }() // c.conn changes with STLS
	c.run(s.base)
}

// Shutdown stops accepting connections, tells clients that have not logged
// in yet that the bridge is going away, and waits for logged-in sessions to
// end. When ctx expires first it closes them and returns ctx's error.
// Nothing is ever written into a spliced session.
func (s *Server) Shutdown(ctx context.Context) error { return s.fd.Shutdown(ctx) }

// ActiveSessions reports the connections being served, logged in or not.
func (s *Server) ActiveSessions() int { return s.fd.ActiveSessions() }
