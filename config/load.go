package config

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/netip"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/hashicorp/hcl/v2"
	"github.com/hashicorp/hcl/v2/gohcl"
	"github.com/hashicorp/hcl/v2/hclparse"
	"golang.org/x/crypto/bcrypt"
)

// Error carries the diagnostics of a configuration that failed to load,
// together with the parsed source files so they can be printed with their
// source lines.
type Error struct {
	Diags hcl.Diagnostics
	Files map[string]*hcl.File
}

func (e *Error) Error() string { return "config: " + e.Diags.Error() }

// WriteTo prints the diagnostics Terraform-style: file, line, the source line
// and the detail.
func (e *Error) WriteTo(w io.Writer) (int64, error) {
	wr := hcl.NewDiagnosticTextWriter(w, e.Files, 100, false)
	return 0, wr.WriteDiagnostics(e.Diags)
}

// Options tune LoadWith and ParseWith.
type Options struct {
	// CredentialsDir is where credential("name") reads; "" means
	// $CREDENTIALS_DIRECTORY when set, else DefaultCredentialsDir (see
	// ResolveCredentialsDir).
	CredentialsDir string
	// DeferSecrets lets a secret that env(), file() or credential() cannot
	// read stay unresolved instead of failing the load, provided it is the
	// value of a secret attribute (client_secret, password_hash). Commands
	// that only talk to a running daemon set it; a command that needs the
	// secrets calls Config.SecretsError first.
	DeferSecrets bool
	// InProcess accepts what only a bridge run inside a test wants: port 0
	// in listen addresses (the kernel picks a free port) and a
	// configuration without accounts. serve and check do not set it: a
	// listener on a random port, or a bridge with no account, serves nobody.
	InProcess bool
}

// Load reads, decodes and validates the configuration file at path, for
// in-process use (Options.InProcess: tests, the demo, benchmarks). The
// command line uses LoadWith. On any error it returns an *Error, or an
// error wrapping the file's read error.
func Load(path string) (*Config, error) {
	return LoadWith(path, Options{InProcess: true})
}

// LoadWith is Load with options.
func LoadWith(path string, o Options) (*Config, error) {
	src, err := os.ReadFile(path)
	if err != nil {
		return nil, &Error{Diags: hcl.Diagnostics{readError(path, err)}}
	}
	return ParseWith(path, src, o)
}

// readError turns a failure to read the configuration file into a
// diagnostic that names the fix. It is a configuration error (exit status 2,
// which the unit's RestartPreventExitStatus= keeps from a restart loop): a
// restart cannot make an unreadable file readable.
func readError(path string, err error) *hcl.Diagnostic {
	detail := err.Error() + "."
	switch {
	case errors.Is(err, fs.ErrNotExist):
		detail += " Create it from config.hcl.example (the Debian package installs one), or give another file with -config PATH."
	case errors.Is(err, fs.ErrPermission):
		detail += fmt.Sprintf(" This process runs as uid %d, gid %d%s.", os.Getuid(), os.Getgid(), ownerOf(path)) +
			" The packaged service runs as the system user oauthbridge and the file holds password hashes, so make it readable by that group only:" +
			" chown root:oauthbridge " + path + " && chmod 0640 " + path + " (and the directory: chmod 0755 " + filepath.Dir(path) + ")."
	}
	return &hcl.Diagnostic{Severity: hcl.DiagError, Summary: "Cannot read the configuration file " + path, Detail: detail}
}

// ownerOf describes path's owner and mode for readError, or "" when it
// cannot be seen.
func ownerOf(path string) string {
	st, err := os.Stat(path)
	if err != nil {
		return ""
	}
	if sys, ok := st.Sys().(*syscall.Stat_t); ok {
		return fmt.Sprintf("; %s is owned by uid %d, gid %d with mode %04o", path, sys.Uid, sys.Gid, st.Mode().Perm())
	}
	return fmt.Sprintf("; %s has mode %04o", path, st.Mode().Perm())
}

// Parse is Load for a configuration already in memory; filename is used in
// diagnostics.
func Parse(filename string, src []byte) (*Config, error) {
	return ParseWith(filename, src, Options{InProcess: true})
}

// ParseWith is LoadWith for a configuration already in memory.
func ParseWith(filename string, src []byte, o Options) (*Config, error) {
	ls := &loadState{deferSecrets: o.DeferSecrets}
	ls.credDir, ls.credSource = ResolveCredentialsDir(o.CredentialsDir)
	p := hclparse.NewParser()
	f, diags := p.ParseHCL(src, filename)
	cfg := defaults()
	cfg.Path = filename
	cfg.CredentialsDir = ls.credDir
	cfg.inProcess = o.InProcess
	cfg.deferSecrets = o.DeferSecrets
	if !diags.HasErrors() {
		// Two stages: the first-stage parts of the file as written
		// (fileSchema) first, the rest of the file into cfg; validate
		// builds the runtime values.
		sch := &fileSchema{}
		diags = append(diags, filterUnknown(gohcl.DecodeBody(f.Body, ls.evalContext(), sch))...)
		if !diags.HasErrors() {
			diags = append(diags, filterUnknown(gohcl.DecodeBody(sch.Remain, ls.evalContext(), cfg))...)
			for _, ps := range sch.Providers {
				ps.rt = &Provider{Name: ps.Name, DefRange: ps.DefRange}
				diags = append(diags, filterUnknown(gohcl.DecodeBody(ps.Remain, ls.evalContext(), ps.rt))...)
				cfg.Providers = append(cfg.Providers, ps.rt)
			}
			if as := sch.Admin; as != nil {
				cfg.Admin = &AdminBlock{DefRange: as.DefRange}
				diags = append(diags, filterUnknown(gohcl.DecodeBody(as.Remain, ls.evalContext(), cfg.Admin))...)
			}
		}
		cfg.schema = sch
	}
	if !diags.HasErrors() && len(ls.failures) > 0 {
		if !cfg.collectDeferred(ls.failures) {
			// A secret function failed for an attribute that is not a
			// secret (a tenant = env("X"), say): report it as a plain load.
			o.DeferSecrets = false
			return ParseWith(filename, src, o)
		}
	}
	if !diags.HasErrors() {
		diags = append(diags, cfg.validate()...)
	}
	if diags.HasErrors() {
		return nil, &Error{Diags: diags, Files: p.Files()}
	}
	cfg.files = p.Files()
	return cfg, nil
}

// SecretsError reports the secrets a load with Options.DeferSecrets could
// not read, as an *Error with their file and line; nil when every secret
// was read.
func (c *Config) SecretsError() error {
	if len(c.deferred) == 0 {
		return nil
	}
	return &Error{Diags: c.deferred, Files: c.files}
}

// WarningsError returns the configuration's warnings as an *Error for
// printing, or nil.
func (c *Config) WarningsError() *Error {
	if len(c.Warnings) == 0 {
		return nil
	}
	return &Error{Diags: c.Warnings, Files: c.files}
}

// collectDeferred finds the placeholders of unreadable secrets in the
// secret attributes and records a diagnostic for each. It reports false
// when some placeholder went elsewhere.
func (c *Config) collectDeferred(failures []string) bool {
	used := make([]bool, len(failures))
	note := func(v Secret, rng, def hcl.Range, what string) {
		s := v.Reveal()
		for i, msg := range failures {
			if strings.Contains(s, fmt.Sprintf("%s%d\x00", unresolvedMarker, i)) {
				used[i] = true
				c.deferred = append(c.deferred, diagAt(rng, def, "Secret not available", what+": "+msg))
			}
		}
	}
	for _, p := range c.Providers {
		note(p.ClientSecret, p.SecretRange, p.DefRange, fmt.Sprintf("provider %q client_secret", p.Name))
		note(p.ServiceAccountKey, p.SAKeyRange, p.DefRange, fmt.Sprintf("provider %q service_account_key", p.Name))
	}
	if c.Admin != nil {
		note(c.Admin.PasswordHash, c.Admin.HashRange, c.Admin.DefRange, "admin password_hash")
	}
	for _, u := range c.Users {
		note(u.PasswordHash, u.HashRange, u.DefRange, fmt.Sprintf("user %q password_hash", u.Name))
	}
	for _, u := range used {
		if !u {
			return false
		}
	}
	return true
}

// Unresolved reports whether the secret could not be read (a load with
// Options.DeferSecrets); its value is then a placeholder, never a secret.
func (s Secret) Unresolved() bool { return strings.Contains(string(s), unresolvedMarker) }

// filterUnknown drops the follow-up "value must be known" diagnostic that HCL
// adds after a failing function call: the first diagnostic already says what
// is wrong.
func filterUnknown(diags hcl.Diagnostics) hcl.Diagnostics {
	hasFunc := false
	for _, d := range diags {
		if d.Summary == "Invalid function argument" || d.Summary == "Error in function call" {
			hasFunc = true
		}
	}
	if !hasFunc {
		return diags
	}
	var out hcl.Diagnostics
	for _, d := range diags {
		if d.Summary == "Unsuitable value type" && strings.Contains(d.Detail, "must be known") {
			continue
		}
		out = append(out, d)
	}
	return out
}

func defaults() *Config {
	stateDir := DefaultStateDir
	if d := os.Getenv("STATE_DIRECTORY"); d != "" { // systemd StateDirectory=
		stateDir = strings.Split(d, ":")[0]
	}
	return &Config{
		StateDir:  stateDir,
		LogFormat: "auto",
		LogLevel:  "info",
	}
}

func diagAt(rng hcl.Range, fallback hcl.Range, summary, detail string) *hcl.Diagnostic {
	r := rng
	if r.Filename == "" || (r.Start.Line == 0 && r.End.Line == 0) {
		r = fallback
	}
	return &hcl.Diagnostic{Severity: hcl.DiagError, Summary: summary, Detail: detail, Subject: r.Ptr()}
}

func parseDuration(s string, def time.Duration, rng, fallback hcl.Range, name string, diags *hcl.Diagnostics) time.Duration {
	if s == "" {
		return def
	}
	d, err := time.ParseDuration(s)
	if err != nil || d <= 0 {
		detail := fmt.Sprintf("%s must be a positive Go duration such as \"30s\", \"10m\" or \"1h30m\"", name)
		if err != nil {
			detail += ": " + err.Error()
		}
		*diags = append(*diags, diagAt(rng, fallback, "Invalid duration", detail))
		return def
	}
	return d
}

func orInt(v, def int) int {
	if v <= 0 {
		return def
	}
	return v
}

func (c *Config) validate() hcl.Diagnostics {
	var diags hcl.Diagnostics
	file := hcl.Range{Filename: c.Path, Start: hcl.InitialPos, End: hcl.InitialPos}

	switch c.LogFormat {
	case "auto", "json", "text":
	default:
		diags = append(diags, diagAt(c.LogFormatRange, file, "Invalid log_format", `log_format must be "auto", "json" or "text"`))
	}
	switch c.LogLevel {
	case "debug", "info", "warn", "error":
	default:
		diags = append(diags, diagAt(c.LogLevelRange, file, "Invalid log_level", `log_level must be "debug", "info", "warn" or "error"`))
	}
	sch := c.schema
	if sch == nil {
		sch = &fileSchema{}
	}
	c.Shutdown = parseDuration(sch.ShutdownTimeout, DefaultShutdownTimeout, sch.ShutdownTimeoutRange, file, "shutdown_timeout", &diags)
	if c.StateDir == "" {
		diags = append(diags, diagAt(c.StateDirRange, file, "Missing state_dir", "state_dir names the directory for the encrypted token store and its key, e.g. \"/var/lib/oauthbridge\"."))
	} else if !filepath.IsAbs(c.StateDir) {
		diags = append(diags, diagAt(c.StateDirRange, file, "Relative state_dir",
			fmt.Sprintf("state_dir %q is relative, so the token store would depend on the directory oauthbridge is started from (/ under systemd, another one in a shell). Write an absolute path such as \"/var/lib/oauthbridge\".", c.StateDir)))
	} else if st, err := os.Stat(c.StateDir); err == nil && !st.IsDir() {
		diags = append(diags, diagAt(c.StateDirRange, file, "state_dir is not a directory",
			fmt.Sprintf("state_dir %q exists and is not a directory; serve keeps the token store and its key in that directory.", c.StateDir)))
	}

	// Local TLS.
	if c.TLS != nil {
		cert, err := tls.LoadX509KeyPair(c.TLS.CertFile, c.TLS.KeyFile)
		if err != nil {
			d := diagAt(c.TLS.CertRange, file, "Unusable TLS certificate",
				fmt.Sprintf("Loading cert_file %q with key_file %q: %v. The files must be PEM and readable by the service user.", c.TLS.CertFile, c.TLS.KeyFile, err))
			if c.deferSecrets && (errors.Is(err, fs.ErrNotExist) || errors.Is(err, fs.ErrPermission)) {
				c.deferred = append(c.deferred, d) // a key an admin shell cannot read: only serve needs it
			} else {
				diags = append(diags, d)
			}
		} else {
			c.LocalTLS = &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
		}
	}

	// Listener blocks, from their first stage. An absent block gets its
	// default loopback listener.
	if sch.IMAP == nil {
		sch.IMAP = &imapSchema{Listen: []string{"127.0.0.1:1143"}}
	}
	if sch.POP3 == nil {
		sch.POP3 = &pop3Schema{Listen: []string{"127.0.0.1:1110"}}
	}
	if sch.SMTP == nil {
		sch.SMTP = &smtpSchema{Listen: []string{"127.0.0.1:1587"}}
	}
	im := sch.IMAP
	c.checkListeners("imap", im.Listen, im.ListenTLS, im.AllowInsecureAuth, im.ListenRange, im.ListenTLSRange, orRange(im.DefRange, file), &diags)
	im.Limits = ProxyLimits{
		PreauthTimeout:  parseDuration(im.PreauthTimeout, DefaultPreauthTimeout, im.PreauthTimeoutRange, im.DefRange, "preauth_timeout", &diags),
		IdleTimeout:     parseDuration(im.IdleTimeout, DefaultIMAPIdleTimeout, im.IdleTimeoutRange, im.DefRange, "idle_timeout", &diags),
		UpstreamTimeout: parseDuration(im.UpstreamTimeout, DefaultUpstreamTimeout, im.UpstreamRange, im.DefRange, "upstream_timeout", &diags),
		ConnectionWait:  parseDuration(im.ConnectionWait, DefaultConnectionWait, im.WaitRange, im.DefRange, "connection_wait", &diags),
		MaxLineBytes:    orInt(im.MaxLineBytes, DefaultMaxLineBytes),
		MaxLiteralBytes: orInt(im.MaxLiteralBytes, DefaultMaxLiteralBytes),
		MaxConnections:  orInt(im.MaxConnections, DefaultMaxConnections),
	}
	checkGraphPoll(&diags, im)
	positive(&diags, im.DefRange, "imap", "max_connections", im.MaxConnections, im.MaxConnRange, DefaultMaxConnections)
	positive(&diags, im.DefRange, "imap", "max_line_bytes", im.MaxLineBytes, im.MaxLineRange, DefaultMaxLineBytes)
	positive(&diags, im.DefRange, "imap", "max_literal_bytes", im.MaxLiteralBytes, im.MaxLiteralRange, DefaultMaxLiteralBytes)
	if im.Limits.IdleTimeout < 29*time.Minute {
		diags = append(diags, diagAt(im.IdleTimeoutRange, im.DefRange, "idle_timeout too short",
			"IMAP clients re-issue IDLE every 29 minutes (RFC 2177), so an idle_timeout below 29m drops healthy IDLE sessions. Use at least \"30m\"."))
	}
	po := sch.POP3
	c.checkListeners("pop3", po.Listen, po.ListenTLS, po.AllowInsecureAuth, po.ListenRange, po.ListenTLSRange, orRange(po.DefRange, file), &diags)
	po.Limits = ProxyLimits{
		PreauthTimeout:  parseDuration(po.PreauthTimeout, DefaultPreauthTimeout, po.PreauthTimeoutRange, po.DefRange, "preauth_timeout", &diags),
		IdleTimeout:     parseDuration(po.IdleTimeout, DefaultPOP3IdleTimeout, po.IdleTimeoutRange, po.DefRange, "idle_timeout", &diags),
		UpstreamTimeout: parseDuration(po.UpstreamTimeout, DefaultUpstreamTimeout, po.UpstreamRange, po.DefRange, "upstream_timeout", &diags),
		ConnectionWait:  parseDuration(po.ConnectionWait, DefaultConnectionWait, po.WaitRange, po.DefRange, "connection_wait", &diags),
		MaxLineBytes:    orInt(po.MaxLineBytes, DefaultMaxLineBytes),
		MaxLiteralBytes: 0,
		MaxConnections:  orInt(po.MaxConnections, DefaultMaxConnections),
	}
	positive(&diags, po.DefRange, "pop3", "max_connections", po.MaxConnections, po.MaxConnRange, DefaultMaxConnections)
	positive(&diags, po.DefRange, "pop3", "max_line_bytes", po.MaxLineBytes, po.MaxLineRange, DefaultMaxLineBytes)
	sm := sch.SMTP
	c.checkListeners("smtp", sm.Listen, sm.ListenTLS, sm.AllowInsecureAuth, sm.ListenRange, sm.ListenTLSRange, orRange(sm.DefRange, file), &diags)
	if sm.Domain == "" {
		if h, err := os.Hostname(); err == nil && h != "" {
			sm.Domain = h
		} else {
			sm.Domain = "localhost"
		}
	}
	sm.Limits = SMTPLimits{
		MaxMessageBytes: sm.MaxMessageBytes,
		MaxRecipients:   orInt(sm.MaxRecipients, DefaultMaxRecipients),
		ReadTimeout:     parseDuration(sm.ReadTimeout, DefaultSMTPReadTimeout, sm.ReadTimeoutRange, sm.DefRange, "read_timeout", &diags),
		WriteTimeout:    parseDuration(sm.WriteTimeout, DefaultSMTPWriteTimeout, sm.WriteTimeoutRange, sm.DefRange, "write_timeout", &diags),
		UpstreamTimeout: parseDuration(sm.UpstreamTimeout, DefaultUpstreamTimeout, sm.UpstreamRange, sm.DefRange, "upstream_timeout", &diags),
		ConnectionWait:  parseDuration(sm.ConnectionWait, DefaultConnectionWait, sm.WaitRange, sm.DefRange, "connection_wait", &diags),
		MaxConnections:  orInt(sm.MaxConnections, DefaultMaxConnections),
		AutoSMTPRecheck: parseDuration(sm.AutoSMTPRecheck, DefaultAutoSMTPRecheck, sm.RecheckRange, sm.DefRange, "auto_smtp_recheck", &diags),
	}
	if sm.Limits.MaxMessageBytes <= 0 {
		sm.Limits.MaxMessageBytes = DefaultMaxMessageBytes
	}
	positive(&diags, sm.DefRange, "smtp", "max_connections", sm.MaxConnections, sm.MaxConnRange, DefaultMaxConnections)
	positive(&diags, sm.DefRange, "smtp", "max_message_bytes", int(min(sm.MaxMessageBytes, 1<<40)), sm.MaxMessageRange, DefaultMaxMessageBytes)
	positive(&diags, sm.DefRange, "smtp", "max_recipients", sm.MaxRecipients, sm.MaxRcptRange, DefaultMaxRecipients)
	c.IMAP, c.POP3, c.SMTP = im.runtime(), po.runtime(), sm.runtime()
	c.schema = nil // consumers get the runtime blocks only
	if len(im.Listen)+len(im.ListenTLS)+len(po.Listen)+len(po.ListenTLS)+len(sm.Listen)+len(sm.ListenTLS) == 0 {
		diags = append(diags, diagAt(hcl.Range{}, file, "No mail listener",
			"The imap, pop3 and smtp blocks all have empty listen and listen_tls lists, so the bridge would serve nothing. Remove a block to get its default loopback listener, or give it a listen address."))
	}

	c.validateStore(sch.Store, file, &diags)

	// Admin listener.
	if c.Admin == nil {
		c.Admin = &AdminBlock{}
	}
	if c.Admin.Listen == "" {
		c.Admin.Listen = DefaultAdminListen
	}
	c.checkAddr(&diags, "admin listen", c.Admin.Listen, c.Admin.ListenRange, orRange(c.Admin.DefRange, file), "127.0.0.1:8025", c.inProcess)
	c.checkAddressClashes(&diags, file)
	adminOffLoopback := !isLoopbackHostPort(c.Admin.Listen)
	c.Admin.UseTLS = adminOffLoopback
	var adminTLSRange hcl.Range
	if as := sch.Admin; as != nil && as.TLS != nil {
		c.Admin.UseTLS, adminTLSRange = *as.TLS, as.TLSRange
	}
	switch {
	case adminOffLoopback && !c.Admin.UseTLS:
		diags = append(diags, diagAt(adminTLSRange, orRange(c.Admin.DefRange, file), "Admin listener without TLS",
			"The admin listener is not on a loopback address, so it must use TLS: the admin password and the status page would cross the network in clear. Remove tls = false (the admin listener then uses the tls block), or listen on 127.0.0.1 behind a reverse proxy."))
	case c.Admin.UseTLS && c.TLS == nil:
		why := "admin tls = true"
		if adminOffLoopback {
			why = "The admin listener is not on a loopback address, so it"
		}
		diags = append(diags, diagAt(c.Admin.ListenRange, orRange(c.Admin.DefRange, file), "Admin listener needs a tls block",
			why+" serves TLS with the certificate of the tls block; add a tls block (cert_file, key_file), or listen on 127.0.0.1."))
	}
	if c.Admin.PublicURL == "" {
		scheme := "http://"
		if c.Admin.UseTLS {
			scheme = "https://"
		}
		c.Admin.PublicURL = scheme + c.Admin.Listen
	} else if u, err := url.Parse(c.Admin.PublicURL); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		diags = append(diags, diagAt(c.Admin.PublicURLRange, c.Admin.DefRange, "Invalid public_url",
			"public_url must be an absolute http(s) URL such as \"https://bridge.example.com\"; the OAuth redirect URI is public_url + \"/oauth/callback\"."))
	} else if u.Scheme != "https" && adminOffLoopback {
		diags = append(diags, diagAt(c.Admin.PublicURLRange, c.Admin.DefRange, "Insecure public_url",
			"The admin listener is not on a loopback address, so public_url must be https: browsers send the admin password and the OAuth code to it."))
	}
	c.Admin.PublicURL = strings.TrimSuffix(c.Admin.PublicURL, "/")
	if u, err := url.Parse(c.Admin.PublicURL); err == nil && u.Scheme == "http" && !isLoopbackHostPort(hostPortOf(u)) {
		c.Warnings = append(c.Warnings, &hcl.Diagnostic{Severity: hcl.DiagWarning, Summary: "Browser sign-in needs an https public_url",
			Detail:  fmt.Sprintf("The OAuth redirect URI would be %s/oauth/callback; Entra accepts http redirect URIs only for localhost, so the status page's Connect button would fail (device-code logins still work). Set admin.public_url to the https URL a reverse proxy serves, e.g. \"https://bridge.example.com\".", c.Admin.PublicURL),
			Subject: orRange(c.Admin.PublicURLRange, orRange(c.Admin.DefRange, file)).Ptr()})
	}
	if c.Admin.PasswordHash != "" {
		if _, err := bcrypt.Cost([]byte(c.Admin.PasswordHash.Reveal())); err != nil && !c.Admin.PasswordHash.Unresolved() {
			diags = append(diags, diagAt(c.Admin.HashRange, c.Admin.DefRange, "Malformed bcrypt hash",
				"admin password_hash is not a bcrypt hash; create one with `oauthbridge hash-password`."))
		}
		if c.Admin.Username == "" {
			c.Admin.Username = "admin"
		}
	}
	if !isLoopbackHostPort(c.Admin.Listen) && c.Admin.PasswordHash == "" {
		diags = append(diags, diagAt(c.Admin.ListenRange, orRange(c.Admin.DefRange, file), "Unprotected admin listener",
			"The admin listener is not on a loopback address, so it needs password_hash (from `oauthbridge hash-password`) to protect the status page and its Connect buttons."))
	}

	// Providers.
	c.ProviderByName = map[string]*Provider{}
	for _, p := range c.Providers {
		if prev, ok := c.ProviderByName[p.Name]; ok {
			diags = append(diags, dupDiag("provider", p.Name, p.DefRange, prev.DefRange))
			continue
		}
		c.ProviderByName[p.Name] = p
		diags = append(diags, p.resolve()...)
		c.validateCertificates(p, time.Now(), &diags)
	}

	// Accounts.
	c.AccountByName = map[string]*Account{}
	for _, a := range c.Accounts {
		if prev, ok := c.AccountByName[a.Name]; ok {
			diags = append(diags, dupDiag("account", a.Name, a.DefRange, prev.DefRange))
			continue
		}
		c.AccountByName[a.Name] = a
		p, ok := c.ProviderByName[a.ProviderName]
		if !ok {
			diags = append(diags, diagAt(a.ProviderRange, a.DefRange, "Undefined provider",
				fmt.Sprintf("account %q refers to provider %q, which is not defined. Defined providers: %s.", a.Name, a.ProviderName, names(c.ProviderByName))))
		}
		a.Provider = p
		if !strings.Contains(a.Mailbox, "@") {
			diags = append(diags, diagAt(a.MailboxRange, a.DefRange, "Invalid mailbox", fmt.Sprintf("mailbox %q is not an e-mail address; it is the XOAUTH2 user=, e.g. \"helpdesk@contoso.com\".", a.Mailbox)))
		}
		if a.Flow == "" {
			a.Flow = FlowDelegated
		}
		switch a.Flow {
		case FlowDelegated:
		case FlowApp:
			if p.IsGoogle() {
				break // checkGoogleAccount (google.go)
			}
			if a.Delegate != "" {
				diags = append(diags, diagAt(a.DelegateRange, a.DefRange, "delegate with app flow",
					"delegate names the person who signs in for a delegated account; an app-flow account has no sign-in. Remove delegate or use flow = \"delegated\"."))
			}
			if p != nil && p.ClientSecret == "" && len(p.ClientCertificates) == 0 {
				diags = append(diags, diagAt(a.FlowRange, a.DefRange, "App flow needs a client secret",
					fmt.Sprintf("account %q uses flow = \"app\" (client credentials), so provider %q needs client_secret or a client_certificate block.", a.Name, p.Name)))
			}
			if p != nil {
				switch strings.ToLower(p.Tenant) {
				case "common", "organizations", "consumers":
					diags = append(diags, diagAt(p.TenantRange, p.DefRange, "App flow needs a tenant",
						fmt.Sprintf("account %q uses flow = \"app\", which Entra does not allow over /%s (AADSTS9001023); set tenant to the tenant's GUID or domain.", a.Name, p.Tenant)))
				}
			}
		default:
			diags = append(diags, diagAt(a.FlowRange, a.DefRange, "Invalid flow", `flow must be "delegated" (a person signs in once) or "app" (client credentials).`))
		}
		if a.Delegate != "" && !strings.Contains(a.Delegate, "@") {
			diags = append(diags, diagAt(a.DelegateRange, a.DefRange, "Invalid delegate", "delegate must be the sign-in name (UPN) of the person who has access to the mailbox, e.g. \"alice@contoso.com\"."))
		}
		for _, s := range a.SendAs {
			if !strings.Contains(s, "@") {
				diags = append(diags, diagAt(a.SendAsRange, a.DefRange, "Invalid send_as address", fmt.Sprintf("%q is not an e-mail address.", s)))
			}
		}
		if p.IsGoogle() {
			diags = append(diags, a.checkGoogleAccount(p)...)
		}
		positive(&diags, a.DefRange, fmt.Sprintf("account %q", a.Name), "max_connections", a.MaxConnections, a.MaxConnRange, DefaultAccountConnections)
		positive(&diags, a.DefRange, fmt.Sprintf("account %q", a.Name), "smtp_max_connections", a.SMTPMaxConnections, a.SMTPConnRange, DefaultAccountSMTPConnections)
		switch a.SendVia {
		case "":
			a.SendVia = SendViaSMTP
		case SendViaSMTP, SendViaGraph, SendViaAuto:
		default:
			diags = append(diags, diagAt(a.SendViaRange, a.DefRange, "Invalid send_via",
				fmt.Sprintf(`account %q: send_via must be "smtp" (SMTP submission with XOAUTH2, the default), "graph" (Microsoft Graph sendMail) or "auto" (SMTP, switching to Graph while the tenant or mailbox has SMTP AUTH disabled).`, a.Name)))
		}
		checkReadVia(&diags, a)
		if p != nil && a.UsesGraph() {
			p.UsesGraph = true
		}
		if a.MaxConnections <= 0 {
			a.MaxConnections = p.defaultAccountConnections()
		}
		if a.SMTPMaxConnections <= 0 {
			a.SMTPMaxConnections = DefaultAccountSMTPConnections
		}
	}

	// Users.
	c.UserByName = map[string]*User{}
	for _, u := range c.Users {
		if prev, ok := c.UserByName[u.Name]; ok {
			diags = append(diags, dupDiag("user", u.Name, u.DefRange, prev.DefRange))
			continue
		}
		c.UserByName[u.Name] = u
		if u.Name == "" || strings.ContainsAny(u.Name, " \t\r\n\x00\"") {
			diags = append(diags, diagAt(u.DefRange, file, "Invalid user name", "A user name may not be empty or contain spaces, quotes or control characters."))
		}
		if _, err := bcrypt.Cost([]byte(u.PasswordHash.Reveal())); err != nil && !u.PasswordHash.Unresolved() {
			diags = append(diags, diagAt(u.HashRange, u.DefRange, "Malformed bcrypt hash",
				fmt.Sprintf("user %q: password_hash is not a bcrypt hash ($2a$/$2b$/$2y$...). Create one with `oauthbridge hash-password`.", u.Name)))
		}
		a, ok := c.AccountByName[u.AccountName]
		if !ok {
			diags = append(diags, diagAt(u.AccountRange, u.DefRange, "Undefined account",
				fmt.Sprintf("user %q refers to account %q, which is not defined. Defined accounts: %s.", u.Name, u.AccountName, names(c.AccountByName))))
		}
		u.Account = a
	}

	c.validateAlerts(sch.Providers, sch.Alerts, file, &diags)

	// A configuration that serves nothing is a mistake, not a setup: serve
	// would start, create the store and answer every login with "no such
	// user".
	if len(c.Accounts) == 0 && !c.inProcess {
		diags = append(diags, diagAt(hcl.Range{}, file, "No account",
			"The configuration defines no account block, so the bridge would serve nothing. Add a provider block (the Entra app registration) and an account block (the mailbox); config.hcl.example shows both."))
	} else {
		served := map[string]bool{}
		for _, u := range c.Users {
			served[u.AccountName] = true
		}
		for _, a := range c.Accounts {
			if !served[a.Name] {
				c.Warnings = append(c.Warnings, &hcl.Diagnostic{Severity: hcl.DiagWarning, Summary: "Account without a user",
					Detail:  fmt.Sprintf("No user block maps to account %q, so no legacy client can reach it yet. Add user \"NAME\" { password_hash = \"...\" (from `oauthbridge hash-password`), account = %q }.", a.Name, a.Name),
					Subject: a.DefRange.Ptr()})
			}
		}
	}
	return diags
}

// positive refuses a limit written as zero or negative: orInt would
// silently replace it with the default, which is not what whoever wrote
// "max_connections = 0" meant.
func positive(diags *hcl.Diagnostics, def hcl.Range, block, attr string, v int, rng hcl.Range, dflt int) {
	if rng.Filename == "" || v > 0 {
		return
	}
	*diags = append(*diags, diagAt(rng, def, "Invalid "+attr,
		fmt.Sprintf("%s %s = %d: it must be a positive number. Remove the line to use the default (%d).", block, attr, v, dflt)))
}

// checkAddr validates a host:port the bridge listens on: the port must be a
// number from 1 to 65535 (0, "pick any free port", only with
// Options.InProcess). It reports whether addr is usable.
func (c *Config) checkAddr(diags *hcl.Diagnostics, what, addr string, rng, def hcl.Range, example string, allowZero bool) bool {
	_, port, err := net.SplitHostPort(addr)
	if err != nil {
		*diags = append(*diags, diagAt(rng, def, "Invalid listen address", fmt.Sprintf("%s %q: %v; write host:port such as %q", what, addr, err, example)))
		return false
	}
	n, err := strconv.Atoi(port)
	switch {
	case err != nil || n < 0 || n > 65535:
		*diags = append(*diags, diagAt(rng, def, "Invalid port", fmt.Sprintf("%s %q: the port must be a number from 1 to 65535, e.g. %q", what, addr, example)))
		return false
	case n == 0 && !allowZero:
		*diags = append(*diags, diagAt(rng, def, "Invalid port", fmt.Sprintf("%s %q: port 0 would make the kernel pick a random port that no client knows; give the port, e.g. %q", what, addr, example)))
		return false
	}
	return true
}

// boundAddr is one address the daemon binds, for the clash check.
type boundAddr struct {
	what, addr, host, port string
	rng                    hcl.Range
}

// checkAddressClashes refuses two listeners on the same address and port
// (serve could bind only the first), including a wildcard host (":993",
// "0.0.0.0:993", "[::]:993") against any host on the same port. Port 0 is
// never a clash.
func (c *Config) checkAddressClashes(diags *hcl.Diagnostics, file hcl.Range) {
	var all []boundAddr
	add := func(what string, addrs []string, rng, def hcl.Range) {
		for _, a := range addrs {
			host, port, err := net.SplitHostPort(a)
			if err != nil || port == "0" {
				continue
			}
			all = append(all, boundAddr{what, a, normHost(host), port, orRange(rng, def)})
		}
	}
	add("imap listen", c.IMAP.Listen, c.IMAP.ListenRange, orRange(c.IMAP.DefRange, file))
	add("imap listen_tls", c.IMAP.ListenTLS, c.IMAP.ListenTLSRange, orRange(c.IMAP.DefRange, file))
	add("pop3 listen", c.POP3.Listen, c.POP3.ListenRange, orRange(c.POP3.DefRange, file))
	add("pop3 listen_tls", c.POP3.ListenTLS, c.POP3.ListenTLSRange, orRange(c.POP3.DefRange, file))
	add("smtp listen", c.SMTP.Listen, c.SMTP.ListenRange, orRange(c.SMTP.DefRange, file))
	add("smtp listen_tls", c.SMTP.ListenTLS, c.SMTP.ListenTLSRange, orRange(c.SMTP.DefRange, file))
	add("admin listen", []string{c.Admin.Listen}, c.Admin.ListenRange, orRange(c.Admin.DefRange, file))
	for i, b := range all {
		for _, a := range all[:i] {
			if a.port != b.port || (a.host != b.host && a.host != "*" && b.host != "*") {
				continue
			}
			where := a.what + " (this file)"
			if a.rng.Filename != "" && a.rng.Start.Line > 0 {
				where = fmt.Sprintf("%s at %s:%d", a.what, a.rng.Filename, a.rng.Start.Line)
			}
			*diags = append(*diags, diagAt(b.rng, file, "Address used twice",
				fmt.Sprintf("%s %q and %s %q both need port %s on the same address, so serve could bind only one of them. Give each listener its own port.", b.what, b.addr, where, a.addr, b.port)))
			break
		}
	}
}

// normHost makes equal hosts compare equal: "*" for every wildcard form,
// 127.0.0.1 for localhost (what net.Listen binds), and IPs canonical.
func normHost(h string) string {
	switch h {
	case "", "0.0.0.0", "::":
		return "*"
	case "localhost":
		return "127.0.0.1"
	}
	if ip, err := netip.ParseAddr(h); err == nil {
		return ip.Unmap().String()
	}
	return strings.ToLower(h)
}

func orRange(r, fallback hcl.Range) hcl.Range {
	if r.Filename == "" {
		return fallback
	}
	return r
}

func names[T any](m map[string]T) string {
	if len(m) == 0 {
		return "(none)"
	}
	var out []string
	for k := range m {
		out = append(out, fmt.Sprintf("%q", k))
	}
	sortStrings(out)
	return strings.Join(out, ", ")
}

func dupDiag(kind, name string, rng, prev hcl.Range) *hcl.Diagnostic {
	return &hcl.Diagnostic{
		Severity: hcl.DiagError,
		Summary:  "Duplicate " + kind,
		Detail:   fmt.Sprintf("%s %q is already defined at %s; names must be unique.", kind, name, prev.String()),
		Subject:  rng.Ptr(),
	}
}

// checkListeners refuses a listener that would take plaintext passwords on
// a non-loopback address: either it needs the tls block (for STARTTLS, which
// the proxies then insist on before accepting a password) or an explicit
// allow_insecure_auth = true.
func (c *Config) checkListeners(block string, plain, implicit []string, insecure bool, plainRange, tlsRange, def hcl.Range, diags *hcl.Diagnostics) {
	for _, addr := range plain {
		if !c.checkAddr(diags, block+" listen", addr, plainRange, def, exampleListen[block], c.inProcess) {
			continue
		}
		if !isLoopbackHostPort(addr) && c.TLS == nil && !insecure {
			*diags = append(*diags, diagAt(plainRange, def, "Plaintext passwords on a network address",
				fmt.Sprintf("%s listen %q is not a loopback address and there is no tls block, so legacy clients would send passwords in the clear. Add a tls { cert_file, key_file } block (the bridge then requires STARTTLS before login), listen on 127.0.0.1, or set allow_insecure_auth = true in the %s block if the network is trusted.", block, addr, block)))
		}
	}
	for _, addr := range implicit {
		if !c.checkAddr(diags, block+" listen_tls", addr, tlsRange, def, exampleListenTLS[block], c.inProcess) {
			continue
		}
		if c.TLS == nil {
			*diags = append(*diags, diagAt(tlsRange, def, "listen_tls needs a certificate",
				fmt.Sprintf("%s listen_tls %q is an implicit-TLS listener; add a tls { cert_file = ..., key_file = ... } block.", block, addr)))
		}
	}
}

var (
	exampleListen    = map[string]string{"imap": "127.0.0.1:1143", "pop3": "127.0.0.1:1110", "smtp": "127.0.0.1:1587"}
	exampleListenTLS = map[string]string{"imap": "0.0.0.0:993", "pop3": "0.0.0.0:995", "smtp": "0.0.0.0:465"}
)

// isLoopbackHostPort reports whether a host:port listens on loopback only.
// "localhost" counts; an empty host (all interfaces) does not.
func isLoopbackHostPort(addr string) bool {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return false
	}
	if host == "localhost" {
		return true
	}
	ip, err := netip.ParseAddr(host)
	return err == nil && ip.IsLoopback()
}

// cloud presets, from microsoft-365.md §1.2.
type cloudPreset struct {
	authority, imap, pop3, smtp, scopePrefix, appScope, graph string
}

// Microsoft Graph per national cloud (graph_url default and Graph token
// resource): global https://graph.microsoft.com, US Government (GCC High)
// https://graph.microsoft.us, US DoD https://dod-graph.microsoft.us, China
// (21Vianet) https://microsoftgraph.chinacloudapi.cn.
var clouds = map[string]cloudPreset{
	"global":    {"https://login.microsoftonline.com", "outlook.office365.com:993", "outlook.office365.com:995", "smtp.office365.com:587", "https://outlook.office.com/", "https://outlook.office365.com/.default", DefaultGraphURL},
	"usgov":     {"https://login.microsoftonline.us", "outlook.office365.us:993", "outlook.office365.us:995", "smtp.office365.us:587", "https://outlook.office365.us/", "https://outlook.office365.us/.default", "https://graph.microsoft.us"},
	"usgov-dod": {"https://login.microsoftonline.us", "outlook-dod.office365.us:993", "outlook-dod.office365.us:995", "outlook-dod.office365.us:587", "https://outlook.office365.us/", "https://outlook.office365.us/.default", "https://dod-graph.microsoft.us"},
	"china":     {"https://login.partner.microsoftonline.cn", "partner.outlook.cn:993", "partner.outlook.cn:995", "smtp.partner.outlook.cn:587", "https://partner.outlook.cn/", "https://partner.outlook.cn/.default", "https://microsoftgraph.chinacloudapi.cn"},
}

func (p *Provider) resolve() hcl.Diagnostics {
	var diags hcl.Diagnostics
	if p.Type == "" {
		p.Type = ProviderMicrosoft
	}
	if p.Type == ProviderGoogle {
		return p.resolveGoogle()
	}
	if p.Type != ProviderMicrosoft {
		diags = append(diags, diagAt(p.TypeRange, p.DefRange, "Unsupported provider type", `type must be "microsoft" (Microsoft 365 / Entra ID) or "google" (Google Workspace / Gmail).`))
	}
	if p.ClientID == "" {
		diags = append(diags, diagAt(p.ClientIDRange, p.DefRange, "Missing client_id", "client_id is the Application (client) ID of the Entra app registration."))
	}
	if p.ServiceAccountKey != "" {
		diags = append(diags, diagAt(p.SAKeyRange, p.DefRange, "service_account_key needs type = \"google\"",
			"service_account_key is a Google service account's JSON key; a Microsoft provider authenticates with client_secret."))
	}
	if p.Cloud == "" {
		p.Cloud = "global"
	}
	preset, ok := clouds[p.Cloud]
	if !ok {
		diags = append(diags, diagAt(p.CloudRange, p.DefRange, "Unknown cloud", `cloud must be "global", "usgov", "usgov-dod" or "china".`))
		preset = clouds["global"]
	}
	if p.Authority == "" {
		p.Authority = preset.authority
	}
	p.Authority = strings.TrimSuffix(p.Authority, "/")
	if u, err := url.Parse(p.Authority); err != nil || u.Host == "" || (u.Scheme != "https" && u.Scheme != "http") {
		diags = append(diags, diagAt(p.AuthorityRange, p.DefRange, "Invalid authority", "authority must be an https URL such as \"https://login.microsoftonline.com\"."))
	} else if u.Scheme == "http" && !isLoopbackHostPort(hostPortOf(u)) {
		diags = append(diags, diagAt(p.AuthorityRange, p.DefRange, "Insecure authority", "authority may use plain http only on a loopback address (a local test fake); use https."))
	}
	if p.IMAPServer == "" {
		p.IMAPServer = preset.imap
	}
	if p.POP3Server == "" {
		p.POP3Server = preset.pop3
	}
	if p.SMTPServer == "" {
		p.SMTPServer = preset.smtp
	}
	for _, s := range []struct {
		v   string
		rng hcl.Range
	}{{p.IMAPServer, p.IMAPRange}, {p.POP3Server, p.POP3Range}, {p.SMTPServer, p.SMTPRange}} {
		if _, port, err := net.SplitHostPort(s.v); err != nil {
			diags = append(diags, diagAt(s.rng, p.DefRange, "Invalid server address", fmt.Sprintf("%q: %v; write host:port.", s.v, err)))
		} else if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 {
			diags = append(diags, diagAt(s.rng, p.DefRange, "Invalid port", fmt.Sprintf("%q: the port must be a number from 1 to 65535.", s.v)))
		}
	}
	if p.GraphURL == "" {
		p.GraphURL = preset.graph
	}
	p.GraphURL = strings.TrimSuffix(p.GraphURL, "/")
	if u, err := url.Parse(p.GraphURL); err != nil || u.Host == "" || (u.Scheme != "https" && u.Scheme != "http") || (u.Path != "" && u.Path != "/") || u.RawQuery != "" {
		diags = append(diags, diagAt(p.GraphRange, p.DefRange, "Invalid graph_url",
			"graph_url is the Microsoft Graph endpoint without a path, e.g. \"https://graph.microsoft.com\" (the bridge adds /v1.0/...)."))
	} else if u.Scheme == "http" && !isLoopbackHostPort(hostPortOf(u)) {
		diags = append(diags, diagAt(p.GraphRange, p.DefRange, "Insecure graph_url", "graph_url may use plain http only on a loopback address (a local test fake); use https."))
	}
	p.ScopePrefix = preset.scopePrefix
	p.AppScope = preset.appScope
	p.GraphResource = preset.graph
	if p.Tenant == "" {
		diags = append(diags, diagAt(p.TenantRange, p.DefRange, "Missing tenant", "tenant is the directory's GUID or domain, or \"organizations\"/\"common\" for delegated-only multi-tenant apps."))
	}
	diags = append(diags, p.loadCAFile()...)
	return diags
}

// loadCAFile reads ca_file into RootCAs (system roots plus ca_file).
func (p *Provider) loadCAFile() hcl.Diagnostics {
	var diags hcl.Diagnostics
	if p.CAFile != "" {
		pem, err := os.ReadFile(p.CAFile)
		if err != nil {
			diags = append(diags, diagAt(p.CAFileRange, p.DefRange, "Unreadable ca_file", err.Error()))
		} else {
			pool, err := x509.SystemCertPool()
			if err != nil || pool == nil {
				pool = x509.NewCertPool()
			}
			if !pool.AppendCertsFromPEM(pem) {
				diags = append(diags, diagAt(p.CAFileRange, p.DefRange, "Invalid ca_file", fmt.Sprintf("%s holds no PEM certificate.", p.CAFile)))
			}
			p.RootCAs = pool
		}
	}
	return diags
}

func hostPortOf(u *url.URL) string {
	if u.Port() == "" {
		return net.JoinHostPort(u.Hostname(), "80")
	}
	return u.Host
}

// UpstreamTLS returns the TLS client configuration for connections to
// server (host:port) of this provider: certificates verified against the
// system roots plus ca_file.
func (p *Provider) UpstreamTLS(server string) *tls.Config {
	host, _, err := net.SplitHostPort(server)
	if err != nil {
		host = server
	}
	return &tls.Config{ServerName: host, RootCAs: p.RootCAs, MinVersion: tls.VersionTLS12}
}
