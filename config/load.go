package config

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"net/url"
	"os"
	"strings"
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

// Load reads, decodes and validates the configuration file at path. On any
// error it returns an *Error.
func Load(path string) (*Config, error) {
	src, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	return Parse(path, src)
}

// Parse is Load for a configuration already in memory; filename is used in
// diagnostics.
func Parse(filename string, src []byte) (*Config, error) {
	p := hclparse.NewParser()
	f, diags := p.ParseHCL(src, filename)
	cfg := defaults()
	cfg.Path = filename
	if !diags.HasErrors() {
		diags = append(diags, filterUnknown(gohcl.DecodeBody(f.Body, evalContext(), cfg))...)
	}
	if !diags.HasErrors() {
		diags = append(diags, cfg.validate()...)
	}
	if diags.HasErrors() {
		return nil, &Error{Diags: diags, Files: p.Files()}
	}
	return cfg, nil
}

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
		StateDir:        stateDir,
		LogFormat:       "auto",
		LogLevel:        "info",
		ShutdownTimeout: DefaultShutdownTimeout.String(),
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
		diags = append(diags, diagAt(hcl.Range{}, file, "Invalid log_format", `log_format must be "auto", "json" or "text"`))
	}
	switch c.LogLevel {
	case "debug", "info", "warn", "error":
	default:
		diags = append(diags, diagAt(hcl.Range{}, file, "Invalid log_level", `log_level must be "debug", "info", "warn" or "error"`))
	}
	c.Shutdown = parseDuration(c.ShutdownTimeout, DefaultShutdownTimeout, c.ShutdownTimeoutRange, file, "shutdown_timeout", &diags)
	if c.StateDir == "" {
		diags = append(diags, diagAt(hcl.Range{}, file, "Missing state_dir", "state_dir names the directory for the encrypted token store and its key, e.g. \"/var/lib/oauthbridge\"."))
	}

	// Local TLS.
	if c.TLS != nil {
		cert, err := tls.LoadX509KeyPair(c.TLS.CertFile, c.TLS.KeyFile)
		if err != nil {
			diags = append(diags, diagAt(c.TLS.CertRange, file, "Unusable TLS certificate",
				fmt.Sprintf("Loading cert_file %q with key_file %q: %v. The files must be PEM and readable by the service user.", c.TLS.CertFile, c.TLS.KeyFile, err)))
		} else {
			c.LocalTLS = &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
		}
	}

	// Listener blocks. An absent block gets its default loopback listener.
	if c.IMAP == nil {
		c.IMAP = &IMAPBlock{Listen: []string{"127.0.0.1:1143"}}
	}
	if c.POP3 == nil {
		c.POP3 = &POP3Block{Listen: []string{"127.0.0.1:1110"}}
	}
	if c.SMTP == nil {
		c.SMTP = &SMTPBlock{Listen: []string{"127.0.0.1:1587"}}
	}
	im := c.IMAP
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
	if im.Limits.IdleTimeout < 29*time.Minute {
		diags = append(diags, diagAt(im.IdleTimeoutRange, im.DefRange, "idle_timeout too short",
			"IMAP clients re-issue IDLE every 29 minutes (RFC 2177), so an idle_timeout below 29m drops healthy IDLE sessions. Use at least \"30m\"."))
	}
	po := c.POP3
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
	sm := c.SMTP
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
	}
	if sm.Limits.MaxMessageBytes <= 0 {
		sm.Limits.MaxMessageBytes = DefaultMaxMessageBytes
	}

	// Admin listener.
	if c.Admin == nil {
		c.Admin = &AdminBlock{}
	}
	if c.Admin.Listen == "" {
		c.Admin.Listen = DefaultAdminListen
	}
	if _, _, err := net.SplitHostPort(c.Admin.Listen); err != nil {
		diags = append(diags, diagAt(c.Admin.ListenRange, orRange(c.Admin.DefRange, file), "Invalid listen address", fmt.Sprintf("admin listen %q: %v; write host:port, e.g. \"127.0.0.1:8025\"", c.Admin.Listen, err)))
	}
	adminOffLoopback := !isLoopbackHostPort(c.Admin.Listen)
	c.Admin.UseTLS = adminOffLoopback
	if c.Admin.TLS != nil {
		c.Admin.UseTLS = *c.Admin.TLS
	}
	switch {
	case adminOffLoopback && !c.Admin.UseTLS:
		diags = append(diags, diagAt(c.Admin.TLSRange, orRange(c.Admin.DefRange, file), "Admin listener without TLS",
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
	if c.Admin.PasswordHash != "" {
		if _, err := bcrypt.Cost([]byte(c.Admin.PasswordHash.Reveal())); err != nil {
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
	}

	// Accounts.
	c.AccountByName = map[string]*Account{}
	c.SMTPAccountByEmail = map[string]*Account{}
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
			if a.Delegate != "" {
				diags = append(diags, diagAt(a.DelegateRange, a.DefRange, "delegate with app flow",
					"delegate names the person who signs in for a delegated account; an app-flow account has no sign-in. Remove delegate or use flow = \"delegated\"."))
			}
			if p != nil && p.ClientSecret == "" {
				diags = append(diags, diagAt(a.FlowRange, a.DefRange, "App flow needs a client secret",
					fmt.Sprintf("account %q uses flow = \"app\" (client credentials), so provider %q needs client_secret.", a.Name, p.Name)))
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
		if a.MaxConnections <= 0 {
			a.MaxConnections = DefaultAccountConnections
		}
		if a.SMTPMaxConnections <= 0 {
			a.SMTPMaxConnections = DefaultAccountSMTPConnections
		}
		c.SMTPAccountByEmail[strings.ToLower(a.Mailbox)] = a
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
		if _, err := bcrypt.Cost([]byte(u.PasswordHash.Reveal())); err != nil {
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
	return diags
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
		if _, _, err := net.SplitHostPort(addr); err != nil {
			*diags = append(*diags, diagAt(plainRange, def, "Invalid listen address", fmt.Sprintf("%s listen %q: %v; write host:port such as \"127.0.0.1:1143\" or \"[::1]:1143\"", block, addr, err)))
			continue
		}
		if !isLoopbackHostPort(addr) && c.TLS == nil && !insecure {
			*diags = append(*diags, diagAt(plainRange, def, "Plaintext passwords on a network address",
				fmt.Sprintf("%s listen %q is not a loopback address and there is no tls block, so legacy clients would send passwords in the clear. Add a tls { cert_file, key_file } block (the bridge then requires STARTTLS before login), listen on 127.0.0.1, or set allow_insecure_auth = true in the %s block if the network is trusted.", block, addr, block)))
		}
	}
	for _, addr := range implicit {
		if _, _, err := net.SplitHostPort(addr); err != nil {
			*diags = append(*diags, diagAt(tlsRange, def, "Invalid listen address", fmt.Sprintf("%s listen_tls %q: %v", block, addr, err)))
			continue
		}
		if c.TLS == nil {
			*diags = append(*diags, diagAt(tlsRange, def, "listen_tls needs a certificate",
				fmt.Sprintf("%s listen_tls %q is an implicit-TLS listener; add a tls { cert_file = ..., key_file = ... } block.", block, addr)))
		}
	}
}

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

// IsLoopback reports whether a listen address is loopback-only.
func IsLoopback(addr string) bool { return isLoopbackHostPort(addr) }

// cloud presets, from microsoft-365.md §1.2.
type cloudPreset struct {
	authority, imap, pop3, smtp, scopePrefix, appScope string
}

var clouds = map[string]cloudPreset{
	"global":    {"https://login.microsoftonline.com", "outlook.office365.com:993", "outlook.office365.com:995", "smtp.office365.com:587", "https://outlook.office.com/", "https://outlook.office365.com/.default"},
	"usgov":     {"https://login.microsoftonline.us", "outlook.office365.us:993", "outlook.office365.us:995", "smtp.office365.us:587", "https://outlook.office365.us/", "https://outlook.office365.us/.default"},
	"usgov-dod": {"https://login.microsoftonline.us", "outlook-dod.office365.us:993", "outlook-dod.office365.us:995", "outlook-dod.office365.us:587", "https://outlook.office365.us/", "https://outlook.office365.us/.default"},
	"china":     {"https://login.partner.microsoftonline.cn", "partner.outlook.cn:993", "partner.outlook.cn:995", "smtp.partner.outlook.cn:587", "https://partner.outlook.cn/", "https://partner.outlook.cn/.default"},
}

func (p *Provider) resolve() hcl.Diagnostics {
	var diags hcl.Diagnostics
	if p.Type == "" {
		p.Type = "microsoft"
	}
	if p.Type != "microsoft" {
		diags = append(diags, diagAt(p.TypeRange, p.DefRange, "Unsupported provider type", `type must be "microsoft" (the only provider so far).`))
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
		if _, _, err := net.SplitHostPort(s.v); err != nil {
			diags = append(diags, diagAt(s.rng, p.DefRange, "Invalid server address", fmt.Sprintf("%q: %v; write host:port.", s.v, err)))
		}
	}
	p.ScopePrefix = preset.scopePrefix
	p.AppScope = preset.appScope
	if p.Tenant == "" {
		diags = append(diags, diagAt(p.TenantRange, p.DefRange, "Missing tenant", "tenant is the directory's GUID or domain, or \"organizations\"/\"common\" for delegated-only multi-tenant apps."))
	}
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

// ErrNoAccount is returned by lookups for an account that does not exist.
var ErrNoAccount = errors.New("config: no such account")
