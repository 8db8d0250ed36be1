package daemon

import (
	"slices"

	"github.com/oauthbridge/oauthbridge/config"
	"github.com/oauthbridge/oauthbridge/internal/logging"
)

// What a reload applies, and what it cannot:
//
//   - applied to new connections: users and passwords (at once, also on
//     open connections), accounts and providers, the tls block's
//     certificates, every limit and timeout of the imap, pop3 and smtp
//     blocks, allow_insecure_auth, the SMTP domain, max_message_bytes and
//     the STARTTLS offer (a tls block added enables it), admin settings
//     read per request;
//   - applied at once: log_level and log_format, shutdown_timeout;
//   - refused (the old configuration keeps serving): state_dir and the
//     store block (tokens.Manager.Reload says so);
//   - needs a restart, logged by name: the settings restartSettings lists.

// restartSettings names the settings that changed from old to cfg but only
// take effect after a restart: the bound listeners.
func restartSettings(old, cfg *config.Config) []string {
	var out []string
	for _, c := range []struct {
		name     string
		old, new []string
	}{
		{"imap.listen", old.IMAP.Listen, cfg.IMAP.Listen}, {"imap.listen_tls", old.IMAP.ListenTLS, cfg.IMAP.ListenTLS},
		{"pop3.listen", old.POP3.Listen, cfg.POP3.Listen}, {"pop3.listen_tls", old.POP3.ListenTLS, cfg.POP3.ListenTLS},
		{"smtp.listen", old.SMTP.Listen, cfg.SMTP.Listen}, {"smtp.listen_tls", old.SMTP.ListenTLS, cfg.SMTP.ListenTLS},
		{"admin.listen", []string{old.Admin.Listen}, []string{cfg.Admin.Listen}},
	} {
		if !slices.Equal(c.old, c.new) {
			out = append(out, c.name)
		}
	}
	if old.Admin.UseTLS != cfg.Admin.UseTLS {
		out = append(out, "admin.tls")
	}
	return out
}

// applyLogging sets the daemon logger's level and format from cfg (a
// logger not made by the logging package is left alone) and returns the
// settings that changed.
func (d *Daemon) applyLogging(cfg *config.Config) []string {
	c := logging.ControlOf(d.log)
	if c == nil {
		return nil
	}
	var changed []string
	lv, f := c.Set(cfg.LogFormat, cfg.LogLevel)
	if lv {
		changed = append(changed, "log_level")
	}
	if f {
		changed = append(changed, "log_format")
	}
	return changed
}

// reportReload logs what the reload applied and, by name, what needs a
// restart.
func (d *Daemon) reportReload(old, cfg *config.Config) {
	applied := d.applyLogging(cfg)
	restart := restartSettings(old, cfg)
	for _, name := range restart {
		d.log.Warn("reload: setting changed but needs a restart to apply; restart the service", "setting", name)
	}
	attrs := []any{"users", len(cfg.Users), "accounts", len(cfg.Accounts)}
	if len(applied) > 0 {
		attrs = append(attrs, "applied", applied)
	}
	if len(restart) > 0 {
		attrs = append(attrs, "needs_restart", restart)
	}
	d.log.Info("configuration reloaded", attrs...)
}
