// Package config loads and validates oauthbridge's HCL configuration.
//
// Parsing uses hclparse + gohcl (not hclsimple, which rejects file names not
// ending in .hcl and throws away the source needed for good diagnostics).
// Every semantic check produces an hcl.Diagnostic that points at the
// offending attribute, so `oauthbridge check` prints file:line:col and the
// source line. Defaults live in one place, defaults(), and are set before
// decoding: gohcl leaves absent optional attributes alone.
package config

import (
	"crypto/tls"
	"crypto/x509"
	"time"

	"github.com/hashicorp/hcl/v2"
)

// Named defaults. Each has a config attribute of the same meaning; the
// comment says where the number comes from.
const (
	DefaultStateDir = "/var/lib/oauthbridge"

	// Pre-auth limits follow go-imap's imapserver: 30 s per command, 50 KiB lines.
	DefaultPreauthTimeout  = 30 * time.Second
	DefaultMaxLineBytes    = 50 * 1024
	DefaultMaxLiteralBytes = 4 * 1024 // a LOGIN literal is a user name or a password
	// IMAP IDLE must be re-issued within 29 minutes (RFC 2177), so the idle
	// timeout after login must be longer than that.
	DefaultIMAPIdleTimeout = 35 * time.Minute
	// RFC 1939 section 3: a POP3 autologout timer must be at least 10 minutes.
	DefaultPOP3IdleTimeout = 10 * time.Minute
	DefaultMaxConnections  = 1000 // per protocol, all users together
	DefaultUpstreamTimeout = 30 * time.Second
	// Exchange's POP/IMAP logins take "several seconds"; a login waiting for a
	// free per-account upstream slot waits this long before being refused.
	DefaultConnectionWait = 5 * time.Second

	// SMTP: 35 MB is Exchange Online's default send limit; 500 recipients is its
	// default per-message recipient limit; 10 min / 1 min timeouts are maddy's.
	DefaultMaxMessageBytes        = 35 * 1024 * 1024
	DefaultMaxRecipients          = 500
	DefaultSMTPReadTimeout        = 10 * time.Minute
	DefaultSMTPWriteTimeout       = time.Minute
	DefaultAccountSMTPConnections = 3 // Exchange: "up to three concurrent connections" per mailbox
	DefaultAccountConnections     = 10

	// Graph path (send_via = "graph" or "auto"): Microsoft Graph allows 4
	// concurrent requests per app and mailbox. An account on send_via =
	// "auto" that switched to Graph after "535 5.7.139" tries SMTP again
	// after this interval.
	DefaultGraphConcurrency = 4
	DefaultAutoSMTPRecheck  = 6 * time.Hour
	DefaultGraphURL         = "https://graph.microsoft.com"

	DefaultShutdownTimeout = 30 * time.Second
	DefaultAdminListen     = "127.0.0.1:8025"
)

// Config is a loaded, validated configuration. Fields tagged hcl are the
// public schema (see config.hcl.example); the others are derived during
// validation.
type Config struct {
	StateDir  string `hcl:"state_dir,optional"`
	LogFormat string `hcl:"log_format,optional"` // auto | json | text
	LogLevel  string `hcl:"log_level,optional"`  // debug | info | warn | error

	// The listener blocks: built from fileSchema by validate (two
	// stages: the HCL as written, then the typed runtime values).
	IMAP *IMAPBlock
	POP3 *POP3Block
	SMTP *SMTPBlock

	TLS       *TLSBlock   `hcl:"tls,block"`
	Admin     *AdminBlock // admin { }: adminSchema, then Remain into AdminBlock
	Store     *StoreBlock // built from storeSchema by validateStore
	Providers []*Provider // built from providerSchema (schema.go)
	Accounts  []*Account  `hcl:"account,block"`
	Users     []*User     `hcl:"user,block"`

	Alerts *AlertsBlock // alerts.go; built from alertsSchema by validateAlerts

	StateDirRange  hcl.Range `hcl:"state_dir,attr_range"`
	LogFormatRange hcl.Range `hcl:"log_format,attr_range"`
	LogLevelRange  hcl.Range `hcl:"log_level,attr_range"`

	// Derived.
	schema         *fileSchema // the first stage of the file (load only)
	Path           string
	CredentialsDir string // where credential("name") read from
	Warnings       hcl.Diagnostics
	deferred       hcl.Diagnostics // secrets that could not be read (Options.DeferSecrets)
	files          map[string]*hcl.File
	inProcess      bool          // Options.InProcess
	deferSecrets   bool          // Options.DeferSecrets
	Shutdown       time.Duration // shutdown_timeout, resolved
	LocalTLS       *tls.Config   // nil when there is no tls block
	ProviderByName map[string]*Provider
	AccountByName  map[string]*Account
	UserByName     map[string]*User
}

// Listener attributes shared by the imap, pop3 and smtp blocks (gohcl does
// not flatten embedded structs, so each block spells them out):
//
//	listen              = ["127.0.0.1:1143"]  plaintext, STARTTLS when tls is set
//	listen_tls          = []                  implicit TLS
//	allow_insecure_auth = false               take passwords without TLS off loopback
//	max_connections     = 1000                local connections, all users together

// IMAPBlock is the imap listener's runtime configuration: addresses, the
// plaintext rule and the resolved limits (durations, not the strings
// written in the file; see imapSchema for those).
type IMAPBlock struct {
	Listen            []string
	ListenTLS         []string
	AllowInsecureAuth bool
	MaxConnections    int // as written (0: default); Limits.MaxConnections is resolved
	Limits            ProxyLimits

	// Where the block and its listen lists are written, for diagnostics.
	DefRange, ListenRange, ListenTLSRange hcl.Range

	// GraphPoll: how often a Graph-served IMAP session in IDLE asks Graph
	// for changes (read_via = "graph"; imap { graph_poll_interval }, graphpoll.go).
	GraphPoll time.Duration
}

// POP3Block is the pop3 listener's runtime configuration (see IMAPBlock).
type POP3Block struct {
	Listen            []string
	ListenTLS         []string
	AllowInsecureAuth bool
	MaxConnections    int
	Limits            ProxyLimits

	DefRange, ListenRange, ListenTLSRange hcl.Range
}

// SMTPBlock is the smtp listener's runtime configuration (see IMAPBlock).
type SMTPBlock struct {
	Listen            []string
	ListenTLS         []string
	AllowInsecureAuth bool
	MaxConnections    int
	Domain            string // our greeting/EHLO name (resolved: the host name when not written)
	MaxMessageBytes   int64  // as written; Limits.MaxMessageBytes is resolved
	MaxRecipients     int
	Limits            SMTPLimits

	DefRange, ListenRange, ListenTLSRange hcl.Range
}

// ProxyLimits are the resolved limits of the IMAP and POP3 proxies.
type ProxyLimits struct {
	PreauthTimeout  time.Duration
	IdleTimeout     time.Duration
	UpstreamTimeout time.Duration
	ConnectionWait  time.Duration
	MaxLineBytes    int
	MaxLiteralBytes int
	MaxConnections  int
}

// SMTPLimits are the resolved limits of the SMTP proxy.
type SMTPLimits struct {
	MaxMessageBytes int64
	MaxRecipients   int
	ReadTimeout     time.Duration
	WriteTimeout    time.Duration
	UpstreamTimeout time.Duration
	ConnectionWait  time.Duration
	MaxConnections  int
	AutoSMTPRecheck time.Duration
}

// TLSBlock is the local side's certificate.
type TLSBlock struct {
	CertFile string `hcl:"cert_file"`
	KeyFile  string `hcl:"key_file"`

	CertRange hcl.Range `hcl:"cert_file,attr_range"`
	KeyRange  hcl.Range `hcl:"key_file,attr_range"`
}

// AdminBlock configures the admin listener: OAuth callback, status page,
// health, metrics and the JSON API.
type AdminBlock struct {
	Listen       string `hcl:"listen,optional"`
	PublicURL    string `hcl:"public_url,optional"`
	Username     string `hcl:"username,optional"`
	PasswordHash Secret `hcl:"password_hash,optional"`
	// MetricsPublic leaves /metrics and /readyz open when a password_hash
	// is set (they show account names and token state, so by default they
	// need the password too; Prometheus supports basic_auth).
	MetricsPublic bool `hcl:"metrics_public,optional"`

	// UseTLS is the resolved tls setting (adminSchema.TLS): the admin
	// listener serves TLS with the tls block's certificate.
	UseTLS bool

	ListenRange    hcl.Range `hcl:"listen,attr_range"`
	PublicURLRange hcl.Range `hcl:"public_url,attr_range"`
	HashRange      hcl.Range `hcl:"password_hash,attr_range"`
	DefRange       hcl.Range `hcl:",def_range"`
}

// Provider is one Entra app registration.
type Provider struct {
	Name         string `hcl:"name,label"`
	Type         string `hcl:"type,optional"`
	Cloud        string `hcl:"cloud,optional"`
	Tenant       string `hcl:"tenant,optional"`    // microsoft: required (checked in resolve)
	ClientID     string `hcl:"client_id,optional"` // microsoft: required; google: for delegated accounts
	ClientSecret Secret `hcl:"client_secret,optional"`
	Authority    string `hcl:"authority,optional"`
	IMAPServer   string `hcl:"imap_server,optional"`
	POP3Server   string `hcl:"pop3_server,optional"`
	SMTPServer   string `hcl:"smtp_server,optional"`
	GraphURL     string `hcl:"graph_url,optional"`
	CAFile       string `hcl:"ca_file,optional"`
	// ClientCertificates authenticate the app with a signed client
	// assertion instead of client_secret (certs.go).
	ClientCertificates []*ClientCertificate `hcl:"client_certificate,block"`

	// SecretExpires is the secret's Expires date from Entra
	// (client_secret_expires, parsed from providerSchema): shown in status,
	// alerted on (alerts.go); zero when unset.
	SecretExpires time.Time
	// ServiceAccountKey is a Google service account's JSON key (type =
	// "google", flow = "app"), usually file("...json") or credential("...").
	ServiceAccountKey Secret `hcl:"service_account_key,optional"`

	DefRange       hcl.Range `hcl:",def_range"`
	SecretRange    hcl.Range `hcl:"client_secret,attr_range"`
	TypeRange      hcl.Range `hcl:"type,attr_range"`
	CloudRange     hcl.Range `hcl:"cloud,attr_range"`
	TenantRange    hcl.Range `hcl:"tenant,attr_range"`
	AuthorityRange hcl.Range `hcl:"authority,attr_range"`
	CAFileRange    hcl.Range `hcl:"ca_file,attr_range"`
	IMAPRange      hcl.Range `hcl:"imap_server,attr_range"`
	POP3Range      hcl.Range `hcl:"pop3_server,attr_range"`
	SMTPRange      hcl.Range `hcl:"smtp_server,attr_range"`
	GraphRange     hcl.Range `hcl:"graph_url,attr_range"`
	ClientIDRange  hcl.Range `hcl:"client_id,attr_range"`
	SAKeyRange     hcl.Range `hcl:"service_account_key,attr_range"`

	// Derived from the cloud preset and the overrides.
	ScopePrefix string // e.g. "https://outlook.office.com/"
	AppScope    string // e.g. "https://outlook.office365.com/.default"
	// GraphResource is the cloud's Microsoft Graph resource, the prefix of
	// Graph scopes and the audience of Graph tokens, e.g.
	// "https://graph.microsoft.com". It follows cloud, never graph_url: a
	// local fake at graph_url still checks the real audience.
	GraphResource string
	// UsesGraph: some account of this provider has send_via "graph" or
	// "auto", so consent and sign-in include the Graph permissions.
	UsesGraph bool
	RootCAs   *x509.CertPool // system roots plus ca_file; nil = system roots only
	// Google only (google.go): the token endpoint and the parsed
	// service_account_key (nil without one).
	TokenURL       string
	ServiceAccount *ServiceAccount
}

// Account is one upstream mailbox and how its token is obtained.
type Account struct {
	Name               string   `hcl:"name,label"`
	ProviderName       string   `hcl:"provider"`
	Mailbox            string   `hcl:"mailbox"`
	Flow               string   `hcl:"flow,optional"`
	Delegate           string   `hcl:"delegate,optional"`
	SendAs             []string `hcl:"send_as,optional"`
	SendVia            string   `hcl:"send_via,optional"`    // smtp | graph | auto
	ReadVia            string   `hcl:"read_via,optional"`    // imap | graph
	POP3Folder         string   `hcl:"pop3_folder,optional"` // read_via = "graph": the folder POP3 serves
	POP3Delete         string   `hcl:"pop3_delete,optional"` // read_via = "graph": move | delete
	MaxConnections     int      `hcl:"max_connections,optional"`
	SMTPMaxConnections int      `hcl:"smtp_max_connections,optional"`

	DefRange      hcl.Range `hcl:",def_range"`
	ProviderRange hcl.Range `hcl:"provider,attr_range"`
	MailboxRange  hcl.Range `hcl:"mailbox,attr_range"`
	FlowRange     hcl.Range `hcl:"flow,attr_range"`
	DelegateRange hcl.Range `hcl:"delegate,attr_range"`
	SendAsRange   hcl.Range `hcl:"send_as,attr_range"`
	MaxConnRange  hcl.Range `hcl:"max_connections,attr_range"`
	SMTPConnRange hcl.Range `hcl:"smtp_max_connections,attr_range"`
	SendViaRange  hcl.Range `hcl:"send_via,attr_range"`
	ReadViaRange  hcl.Range `hcl:"read_via,attr_range"`
	POP3DelRange  hcl.Range `hcl:"pop3_delete,attr_range"`

	Provider *Provider // resolved
}

// Flows.
const (
	FlowDelegated = "delegated"
	FlowApp       = "app"
)

// Send paths of an account (send_via).
const (
	SendViaSMTP  = "smtp"  // SMTP submission with XOAUTH2 (the default)
	SendViaGraph = "graph" // Microsoft Graph sendMail
	SendViaAuto  = "auto"  // SMTP; Graph while SMTP AUTH is disabled (535 5.7.139)
)

// UsesGraph reports whether the account may send or read through
// Microsoft Graph (its sign-in then includes the Graph permissions).
func (a *Account) UsesGraph() bool {
	return a.SendVia == SendViaGraph || a.SendVia == SendViaAuto || a.ReadVia == ReadViaGraph
}

// Read paths of an account (read_via), and what POP3 DELE does on Graph.
const (
	ReadViaIMAP  = "imap"  // IMAP/POP3 logins are spliced to Exchange (the default)
	ReadViaGraph = "graph" // IMAP/POP3 logins are served by the bridge from Microsoft Graph

	// DefaultPOP3Folder is the folder POP3 serves with read_via = "graph":
	// a Graph well-known folder name or a path such as "Inbox/Tickets".
	DefaultPOP3Folder = "inbox"
	POP3DeleteMove    = "move"   // DELE + QUIT moves the message to Deleted Items (the default)
	POP3DeleteDelete  = "delete" // DELE + QUIT deletes it (Graph DELETE: to Recoverable Items)
)

// ReadsViaGraph reports whether the account's IMAP and POP3 logins are
// served from Microsoft Graph.
func (a *Account) ReadsViaGraph() bool { return a.ReadVia == ReadViaGraph }

// User is a local credential used by a legacy system.
type User struct {
	Name         string `hcl:"name,label"`
	PasswordHash Secret `hcl:"password_hash"`
	AccountName  string `hcl:"account"`

	DefRange     hcl.Range `hcl:",def_range"`
	HashRange    hcl.Range `hcl:"password_hash,attr_range"`
	AccountRange hcl.Range `hcl:"account,attr_range"`

	Account *Account // resolved
}

// SenderAllowed reports whether addr may be used as the envelope sender of
// a message submitted for this account: the mailbox itself or one of
// send_as, compared case-insensitively.
func (a *Account) SenderAllowed(addr string) bool {
	if equalFoldASCII(addr, a.Mailbox) {
		return true
	}
	for _, s := range a.SendAs {
		if equalFoldASCII(addr, s) {
			return true
		}
	}
	return false
}

// AllowedSenders lists the mailbox and its send_as addresses.
func (a *Account) AllowedSenders() []string {
	return append([]string{a.Mailbox}, a.SendAs...)
}

// LoginHint is who signs in for a delegated account: the delegate, or the
// mailbox itself when no delegate is set.
func (a *Account) LoginHint() string {
	if a.Delegate != "" {
		return a.Delegate
	}
	return a.Mailbox
}

func equalFoldASCII(a, b string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := 0; i < len(a); i++ {
		x, y := a[i], b[i]
		if 'A' <= x && x <= 'Z' {
			x += 'a' - 'A'
		}
		if 'A' <= y && y <= 'Z' {
			y += 'a' - 'A'
		}
		if x != y {
			return false
		}
	}
	return true
}
