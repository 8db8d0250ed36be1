// Package daemon wires oauthbridge together for `oauthbridge serve` and
// `oauthbridge demo`: it binds the listeners, starts the token manager, the
// three proxies and the admin listener, reloads on SIGHUP and drains on
// SIGTERM.
package daemon

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/oauthbridge/oauthbridge/config"
	"github.com/oauthbridge/oauthbridge/imapproxy"
	"github.com/oauthbridge/oauthbridge/internal/admin"
	"github.com/oauthbridge/oauthbridge/internal/alerts"
	"github.com/oauthbridge/oauthbridge/internal/limiter"
	"github.com/oauthbridge/oauthbridge/internal/localauth"
	"github.com/oauthbridge/oauthbridge/internal/metrics"
	"github.com/oauthbridge/oauthbridge/internal/sdnotify"
	"github.com/oauthbridge/oauthbridge/pop3proxy"
	"github.com/oauthbridge/oauthbridge/smtpproxy"
	"github.com/oauthbridge/oauthbridge/tokens"
)

// Admin listener timeouts: requests are small and answers quick, so an idle
// or slow client cannot hold a goroutine and a file descriptor (shared with
// the mail listeners) for long.
const (
	AdminReadHeaderTimeout = 10 * time.Second
	AdminReadTimeout       = 30 * time.Second
	AdminWriteTimeout      = 60 * time.Second
	AdminIdleTimeout       = 2 * time.Minute
)

// Version is set by the CLI from build information.
var Version = "dev"

// Options configure a Daemon.
type Options struct {
	Logger *slog.Logger
	// TokenOptions are passed to tokens.NewManager (tests shorten timings).
	TokenOptions tokens.Options
	// Alerts tunes the alert engine (tests: clock, retry timings, events).
	Alerts alerts.Options
}

// Daemon is a running bridge.
type Daemon struct {
	log    *slog.Logger
	cfg    atomic.Pointer[config.Config]
	tokens *tokens.Manager
	met    *metrics.Metrics // on the registry served at /metrics
	auth   *localauth.Authenticator
	mail   *limiter.Limiter // IMAP + POP3 per account
	smtpL  *limiter.Limiter

	imap  *imapproxy.Server
	pop3  *pop3proxy.Server
	smtp  *smtpproxy.Server
	admin *http.Server

	alerts      *alerts.Engine       // alerts.go
	logins      *localauth.Observers // this daemon's login attempts, for alerts
	stopObserve func()

	// graphIMAP serves the IMAP logins of read_via = "graph" accounts.
	graphIMAP *graphIMAP

	mu        sync.Mutex
	listeners []boundListener
	adminLn   net.Listener
	ready     atomic.Bool
	serveWG   sync.WaitGroup
	cancel    context.CancelFunc

	stopping atomic.Bool           // Shutdown has started
	failed   atomic.Pointer[error] // a listener died: not ready, Run exits non-zero
	fatal    chan error            // the first listener death, for Run
}

type boundListener struct {
	proto       string // imap, pop3, smtp
	implicitTLS bool
	ln          net.Listener
}

// New builds a daemon for cfg. Nothing is bound until Start.
func New(cfg *config.Config, opts Options) (*Daemon, error) {
	log := opts.Logger
	if log == nil {
		log = slog.Default()
	}
	d := &Daemon{log: log, mail: &limiter.Limiter{}, smtpL: &limiter.Limiter{}, fatal: make(chan error, 1)}
	d.cfg.Store(cfg)
	// One registry for every component's metrics, served at /metrics.
	reg := metrics.NewRegistry()
	d.met = metrics.New(reg)
	reg.MustRegister(metrics.NewReadyGauge(d.readyErr))
	to := opts.TokenOptions
	to.Registerer = reg
	if to.Logger == nil {
		to.Logger = log.With("component", "tokens")
	}
	m, err := tokens.NewManager(cfg, to)
	if err != nil {
		return nil, err
	}
	d.tokens = m
	d.auth = localauth.New(cfg, localauth.Options{})
	current := func() *config.Config { return d.cfg.Load() }
	if d.graphIMAP, err = newGraphIMAP(current, m, log); err != nil {
		return nil, err
	}
	d.logins = &localauth.Observers{}
	d.imap = imapproxy.New(imapproxy.Options{Config: current, Auth: d.auth, Tokens: m, Limiter: d.mail, Logger: log, Registerer: reg, LoginObservers: d.loginObservers(), Graph: d.graphIMAP.srv})
	d.pop3 = pop3proxy.New(pop3proxy.Options{Config: current, Auth: d.auth, Tokens: m, Limiter: d.mail, Logger: log, Registerer: reg, LoginObservers: d.loginObservers(),
		GraphMailboxes: &d.graphIMAP.mailboxes})
	d.smtp = smtpproxy.New(smtpproxy.Options{Config: current, Auth: d.auth, Tokens: m, Limiter: d.smtpL, Logger: log, Registerer: reg, LoginObservers: d.loginObservers()})
	d.newAlerts(opts.Alerts)
	h := admin.New(admin.Options{Config: current, Tokens: m, Ready: d.readyErr, Metrics: reg, Logger: log.With("component", "admin"), Version: Version})
	d.admin = &http.Server{
		Handler:           h,
		ReadHeaderTimeout: AdminReadHeaderTimeout,
		ReadTimeout:       AdminReadTimeout,
		WriteTimeout:      AdminWriteTimeout,
		IdleTimeout:       AdminIdleTimeout,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelWarn),
	}
	return d, nil
}

// Tokens returns the token manager (for the demo and tests).
func (d *Daemon) Tokens() *tokens.Manager { return d.tokens }

// Config returns the configuration in force.
func (d *Daemon) Config() *config.Config { return d.cfg.Load() }

func (d *Daemon) readyErr() error {
	if err := d.failed.Load(); err != nil {
		return *err
	}
	if !d.ready.Load() {
		return errors.New("listeners are not bound yet")
	}
	if _, err := os.Stat(d.cfg.Load().StateDir); err != nil {
		return fmt.Errorf("state_dir unreadable: %v", err)
	}
	// A shared token store (store type postgres) that does not answer:
	// cached tokens still serve, but a load balancer should prefer a
	// replica that can refresh.
	return d.tokens.StoreHealth()
}

// Start binds every listener, then starts the token manager and serving.
// Any bind error stops everything already bound and is returned: a bridge
// that silently lacks a listener would lose mail.
func (d *Daemon) Start(ctx context.Context) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	cfg := d.cfg.Load()
	ctx, d.cancel = context.WithCancel(ctx)
	bind := func(proto string, addrs []string, implicit bool) error {
		for _, a := range addrs {
			ln, err := net.Listen("tcp", a)
			if err != nil {
				return fmt.Errorf("daemon: %s listen %s: %w", proto, a, err)
			}
			d.listeners = append(d.listeners, boundListener{proto, implicit, ln})
		}
		return nil
	}
	err := errors.Join(
		bind("imap", cfg.IMAP.Listen, false), bind("imap", cfg.IMAP.ListenTLS, true),
		bind("pop3", cfg.POP3.Listen, false), bind("pop3", cfg.POP3.ListenTLS, true),
		bind("smtp", cfg.SMTP.Listen, false), bind("smtp", cfg.SMTP.ListenTLS, true),
	)
	if err == nil {
		d.adminLn, err = net.Listen("tcp", cfg.Admin.Listen)
		if err != nil {
			err = fmt.Errorf("daemon: admin listen %s: %w", cfg.Admin.Listen, err)
		} else if cfg.Admin.UseTLS {
			// Off loopback (or with admin tls = true) the admin listener
			// serves TLS with the tls block's certificate, read per
			// handshake so a reload's certificate applies.
			d.adminLn = tls.NewListener(d.adminLn, &tls.Config{GetConfigForClient: d.adminTLS, MinVersion: tls.VersionTLS12})
		}
	}
	if err != nil {
		for _, l := range d.listeners {
			l.ln.Close()
		}
		d.listeners = nil
		return err
	}
	d.tokens.Start(ctx)
	d.startAlerts(ctx)
	for _, l := range d.listeners {
		d.serveWG.Add(1)
		go func() {
			defer d.serveWG.Done()
			var err error
			switch l.proto {
			case "imap":
				err = d.imap.Serve(l.ln, l.implicitTLS)
			case "pop3":
				err = d.pop3.Serve(l.ln, l.implicitTLS)
			case "smtp":
				err = d.smtp.Serve(l.ln, l.implicitTLS)
			}
			if err != nil && !errors.Is(err, smtpproxy.ErrServerClosed) && !d.stopping.Load() {
				d.listenerFailed(l, err)
			}
		}()
		d.log.Info("listening", "proto", l.proto, "addr", l.ln.Addr().String(), "tls", l.implicitTLS)
	}
	d.serveWG.Add(1)
	go func() {
		defer d.serveWG.Done()
		if err := d.admin.Serve(d.adminLn); err != nil && !errors.Is(err, http.ErrServerClosed) {
			d.log.Error("admin listener stopped", "error", err)
		}
	}()
	d.log.Info("listening", "proto", "admin", "addr", d.adminLn.Addr().String(), "public_url", cfg.Admin.PublicURL)
	d.ready.Store(true)
	return nil
}

func (d *Daemon) adminTLS(*tls.ClientHelloInfo) (*tls.Config, error) {
	if c := d.cfg.Load().LocalTLS; c != nil {
		return c, nil
	}
	return nil, errors.New("daemon: the admin listener serves TLS but no tls block is configured")
}

// listenerFailed handles a listener that stopped while the daemon runs (the
// front door retries every transient accept error, so this one is for
// good): /readyz fails from now on, and Run drains and returns an error, so
// the process exits non-zero and systemd restarts it instead of running
// without the listener.
func (d *Daemon) listenerFailed(l boundListener, err error) {
	name := l.proto
	if l.implicitTLS {
		name += " (implicit TLS)"
	}
	err = fmt.Errorf("daemon: %s listener %s stopped: %w", name, l.ln.Addr(), err)
	d.failed.CompareAndSwap(nil, &err)
	d.log.Error("listener stopped; the bridge is no longer ready and exits so the service manager restarts it",
		"proto", l.proto, "addr", l.ln.Addr().String(), "implicit_tls", l.implicitTLS, "error", err)
	select {
	case d.fatal <- err:
	default:
	}
}

// Addr returns the bound address of the first listener of proto ("imap",
// "imaps", "pop3", "pop3s", "smtp", "smtps" or "admin"), or "".
func (d *Daemon) Addr(proto string) string {
	d.mu.Lock()
	defer d.mu.Unlock()
	if proto == "admin" {
		if d.adminLn == nil {
			return ""
		}
		return d.adminLn.Addr().String()
	}
	for _, l := range d.listeners {
		name := l.proto
		if l.implicitTLS {
			name += "s"
		}
		if name == proto {
			return l.ln.Addr().String()
		}
	}
	return ""
}

// Reload applies a new configuration: users, passwords, accounts, TLS
// certificates, limits and the SMTP listener settings take effect for new
// connections (established sessions keep running on what they started
// with); log_level and log_format at once. Listener addresses cannot change
// without a restart; each change is logged by name, not applied (see
// reload.go).
func (d *Daemon) Reload(cfg *config.Config) error {
	old := d.cfg.Load()
	if err := d.tokens.Reload(cfg); err != nil {
		return fmt.Errorf("daemon: reload tokens: %w", err)
	}
	d.cfg.Store(cfg)
	d.auth.SetUsers(cfg)
	d.reloadAlerts()
	d.reportReload(old, cfg)
	return nil
}

// Shutdown stops accepting, lets sessions finish until ctx is done, then
// closes what is left and stops the token manager.
func (d *Daemon) Shutdown(ctx context.Context) error {
	d.stopping.Store(true)
	d.ready.Store(false)
	var wg sync.WaitGroup
	errs := make([]error, 4)
	for i, s := range []interface{ Shutdown(context.Context) error }{d.imap, d.pop3, d.smtp, d.admin} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = s.Shutdown(ctx)
		}()
	}
	wg.Wait()
	d.admin.Close()
	for _, l := range d.listeners {
		l.ln.Close()
	}
	d.serveWG.Wait()
	if d.cancel != nil {
		d.cancel()
	}
	d.stopAlerts()
	errs = append(errs, d.graphIMAP.close(), d.tokens.Close())
	return errors.Join(errs...)
}

// Run serves until SIGTERM/SIGINT, reloading configPath on SIGHUP. The first
// SIGTERM drains for the configured shutdown_timeout; a second one exits at
// once. load re-reads the configuration (so diagnostics can be logged).
func Run(ctx context.Context, d *Daemon, load func() (*config.Config, error)) error {
	// Catch signals before binding: a SIGHUP that arrives during start-up
	// must not kill the process (SIGHUP's default action).
	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, syscall.SIGHUP, syscall.SIGTERM, syscall.SIGINT)
	defer signal.Stop(sigs)
	if err := d.Start(ctx); err != nil {
		return err
	}
	sdnotify.Ready()
	sdnotify.Status("serving")
	for {
		var sig os.Signal
		var failure error
		select {
		case sig = <-sigs:
		case <-ctx.Done():
			sig = syscall.SIGTERM
		case failure = <-d.fatal:
		}
		if sig == syscall.SIGHUP {
			sdnotify.Reloading()
			cfg, err := load()
			if err != nil {
				var ce *config.Error
				if errors.As(err, &ce) {
					d.log.Error("reload refused: invalid configuration; the old one keeps serving", "error", ce.Diags.Error())
				} else {
					d.log.Error("reload refused; the old configuration keeps serving", "error", err)
				}
			} else if err := d.Reload(cfg); err != nil {
				d.log.Error("reload failed; the old configuration keeps serving", "error", err)
			}
			sdnotify.Ready()
			continue
		}
		sdnotify.Stopping()
		timeout := d.cfg.Load().Shutdown
		if failure != nil {
			// The sessions on the other listeners drain as for SIGTERM;
			// then Run returns the failure, so the process exits non-zero.
			d.log.Error("shutting down because a listener stopped; a SIGTERM or SIGINT exits at once", "error", failure, "timeout", timeout.String())
		} else {
			d.log.Info("shutting down; a second SIGTERM or SIGINT exits at once", "signal", sig.String(), "timeout", timeout.String())
		}
		sctx, cancel := context.WithTimeout(context.Background(), timeout)
		done := make(chan error, 1)
		go func() { done <- d.Shutdown(sctx) }()
		for {
			select {
			case err := <-done:
				cancel()
				d.log.Info("stopped")
				if failure != nil {
					return errors.Join(failure, err)
				}
				return err
			case sig2 := <-sigs:
				if sig2 == syscall.SIGHUP {
					// A `systemctl reload` or a logrotate hook during the
					// drain must not cut the sessions that are finishing.
					d.log.Warn("reload ignored: shutting down", "signal", sig2.String())
					continue
				}
				cancel()
				d.log.Warn("second signal: exiting at once", "signal", sig2.String())
				return errors.Join(failure, errors.New("daemon: forced exit on second signal"))
			}
		}
	}
}
