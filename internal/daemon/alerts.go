package daemon

import (
	"context"
	"path/filepath"

	"github.com/oauthbridge/oauthbridge/audit"
	"github.com/oauthbridge/oauthbridge/internal/alerts"
)

// newAlerts builds the alert engine (the alerts block): it reads the
// configuration in force and the token manager's status, counts the
// proxies' failed upstream logins and sends alert mail through the SMTP
// proxy's upstream path. o carries test settings (clock, retry timings,
// events); the wiring fields are filled here.
func (d *Daemon) newAlerts(o alerts.Options) {
	o.Config = d.cfg.Load
	o.Status = d.tokens.Status
	if o.Sender == nil {
		o.Sender = d.smtp
	}
	if o.Logger == nil {
		o.Logger = d.log.With("component", "alerts")
	}
	if o.StateFile == "" {
		o.StateFile = filepath.Join(d.cfg.Load().StateDir, alerts.StateFileName)
	}
	if o.Credentials == nil {
		o.Credentials = d.credentialExpiries
	}
	if o.TokensSettled == nil {
		// The first evaluation after a (re)start waits for the tokens'
		// first refresh round, then runs at once.
		o.TokensSettled = d.tokens.FirstRound()
	}
	d.alerts = alerts.New(o)
}

// startAlerts starts the engine and subscribes it to this daemon's login
// attempts (d.logins, handed to each proxy; another daemon in the same
// process has its own); it
// publishes the gauges the Prometheus alerting rules compare with.
func (d *Daemon) startAlerts(ctx context.Context) {
	d.alerts.Start(ctx)
	d.stopObserve = d.logins.Observe(d.alerts.LoginAttempt)
	d.publishLimits()
}

// loginObservers is what the daemon hands to each proxy as its
// LoginObservers: d.logins, which startAlerts subscribes the alert engine
// to.
func (d *Daemon) loginObservers() []audit.LoginObserver {
	return []audit.LoginObserver{d.logins}
}

// reloadAlerts applies a reloaded configuration: a changed alerts block
// takes effect at the evaluation this triggers; the alert state stays.
func (d *Daemon) reloadAlerts() {
	d.publishLimits()
	d.alerts.Kick()
}

func (d *Daemon) publishLimits() {
	cfg := d.cfg.Load()
	d.met.MaxConnections.WithLabelValues("imap").Set(float64(cfg.IMAP.Limits.MaxConnections))
	d.met.MaxConnections.WithLabelValues("pop3").Set(float64(cfg.POP3.Limits.MaxConnections))
	d.met.MaxConnections.WithLabelValues("smtp").Set(float64(cfg.SMTP.Limits.MaxConnections))
}

// stopAlerts unsubscribes and stops the engine.
func (d *Daemon) stopAlerts() {
	if d.stopObserve != nil {
		d.stopObserve()
	}
	d.alerts.Close()
}

// Alerts returns the alert engine (tests evaluate it on demand).
func (d *Daemon) Alerts() *alerts.Engine { return d.alerts }

// credentialExpiries maps the token manager's credentials (certificates,
// read from their files) onto the alert engine's list; an entry without a
// known expiry (a secret without client_secret_expires) cannot expire.
func (d *Daemon) credentialExpiries() []alerts.CredentialExpiry {
	var out []alerts.CredentialExpiry
	for _, c := range d.tokens.Credentials() {
		if c.NotAfter.IsZero() {
			continue
		}
		out = append(out, alerts.CredentialExpiry{Provider: c.Provider, Kind: c.Kind, Name: c.Name, NotAfter: c.NotAfter, InUse: c.InUse})
	}
	return out
}
