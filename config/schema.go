package config

import (
	"time"

	"github.com/hashicorp/hcl/v2"
)

// fileSchema is the first stage of a configuration file: the parts whose
// HCL as written (source ranges, raw strings such as "30m" or a date) is
// turned into other typed values, namely the imap, pop3 and smtp blocks,
// shutdown_timeout, the store and alerts blocks, the provider blocks
// (client_secret_expires) and the admin block (tls). validate and its
// helpers build the runtime values (IMAPBlock, POP3Block, SMTPBlock,
// Config.Shutdown, StoreBlock, AlertsBlock, Provider.SecretExpires,
// AdminBlock.UseTLS) from it; consumers only ever see those. Remain is the
// rest of the file, decoded into Config.
type fileSchema struct {
	IMAP            *imapSchema       `hcl:"imap,block"`
	POP3            *pop3Schema       `hcl:"pop3,block"`
	SMTP            *smtpSchema       `hcl:"smtp,block"`
	ShutdownTimeout string            `hcl:"shutdown_timeout,optional"`
	Store           *storeSchema      `hcl:"store,block"`
	Alerts          *alertsSchema     `hcl:"alerts,block"`
	Providers       []*providerSchema `hcl:"provider,block"`
	Admin           *adminSchema      `hcl:"admin,block"`
	Remain          hcl.Body          `hcl:",remain"`

	ShutdownTimeoutRange hcl.Range `hcl:"shutdown_timeout,attr_range"`
}

func (im *imapSchema) runtime() *IMAPBlock {
	return &IMAPBlock{Listen: im.Listen, ListenTLS: im.ListenTLS, AllowInsecureAuth: im.AllowInsecureAuth,
		MaxConnections: im.MaxConnections, Limits: im.Limits, GraphPoll: im.GraphPoll,
		DefRange: im.DefRange, ListenRange: im.ListenRange, ListenTLSRange: im.ListenTLSRange}
}

func (po *pop3Schema) runtime() *POP3Block {
	return &POP3Block{Listen: po.Listen, ListenTLS: po.ListenTLS, AllowInsecureAuth: po.AllowInsecureAuth,
		MaxConnections: po.MaxConnections, Limits: po.Limits,
		DefRange: po.DefRange, ListenRange: po.ListenRange, ListenTLSRange: po.ListenTLSRange}
}

func (sm *smtpSchema) runtime() *SMTPBlock {
	return &SMTPBlock{Listen: sm.Listen, ListenTLS: sm.ListenTLS, AllowInsecureAuth: sm.AllowInsecureAuth,
		MaxConnections: sm.MaxConnections, Domain: sm.Domain, MaxMessageBytes: sm.MaxMessageBytes,
		MaxRecipients: sm.MaxRecipients, Limits: sm.Limits,
		DefRange: sm.DefRange, ListenRange: sm.ListenRange, ListenTLSRange: sm.ListenTLSRange}
}

// imapSchema is the imap { } block as written (first stage).
type imapSchema struct {
	Listen            []string `hcl:"listen,optional"`
	ListenTLS         []string `hcl:"listen_tls,optional"`
	AllowInsecureAuth bool     `hcl:"allow_insecure_auth,optional"`
	MaxConnections    int      `hcl:"max_connections,optional"`
	PreauthTimeout    string   `hcl:"preauth_timeout,optional"`
	IdleTimeout       string   `hcl:"idle_timeout,optional"`
	UpstreamTimeout   string   `hcl:"upstream_timeout,optional"`
	ConnectionWait    string   `hcl:"connection_wait,optional"`
	MaxLineBytes      int      `hcl:"max_line_bytes,optional"`
	MaxLiteralBytes   int      `hcl:"max_literal_bytes,optional"`

	DefRange            hcl.Range `hcl:",def_range"`
	ListenRange         hcl.Range `hcl:"listen,attr_range"`
	ListenTLSRange      hcl.Range `hcl:"listen_tls,attr_range"`
	PreauthTimeoutRange hcl.Range `hcl:"preauth_timeout,attr_range"`
	IdleTimeoutRange    hcl.Range `hcl:"idle_timeout,attr_range"`
	UpstreamRange       hcl.Range `hcl:"upstream_timeout,attr_range"`
	WaitRange           hcl.Range `hcl:"connection_wait,attr_range"`
	MaxConnRange        hcl.Range `hcl:"max_connections,attr_range"`
	MaxLineRange        hcl.Range `hcl:"max_line_bytes,attr_range"`
	MaxLiteralRange     hcl.Range `hcl:"max_literal_bytes,attr_range"`

	// graph_poll_interval (graphpoll.go).
	GraphPollInterval      string    `hcl:"graph_poll_interval,optional"`
	GraphPollIntervalRange hcl.Range `hcl:"graph_poll_interval,attr_range"`

	Limits    ProxyLimits   // built by validate
	GraphPoll time.Duration // built by validate
}

// pop3Schema is the pop3 { } block as written (first stage).
type pop3Schema struct {
	Listen            []string `hcl:"listen,optional"`
	ListenTLS         []string `hcl:"listen_tls,optional"`
	AllowInsecureAuth bool     `hcl:"allow_insecure_auth,optional"`
	MaxConnections    int      `hcl:"max_connections,optional"`
	PreauthTimeout    string   `hcl:"preauth_timeout,optional"`
	IdleTimeout       string   `hcl:"idle_timeout,optional"`
	UpstreamTimeout   string   `hcl:"upstream_timeout,optional"`
	ConnectionWait    string   `hcl:"connection_wait,optional"`
	MaxLineBytes      int      `hcl:"max_line_bytes,optional"`

	DefRange            hcl.Range `hcl:",def_range"`
	ListenRange         hcl.Range `hcl:"listen,attr_range"`
	ListenTLSRange      hcl.Range `hcl:"listen_tls,attr_range"`
	PreauthTimeoutRange hcl.Range `hcl:"preauth_timeout,attr_range"`
	IdleTimeoutRange    hcl.Range `hcl:"idle_timeout,attr_range"`
	UpstreamRange       hcl.Range `hcl:"upstream_timeout,attr_range"`
	WaitRange           hcl.Range `hcl:"connection_wait,attr_range"`
	MaxConnRange        hcl.Range `hcl:"max_connections,attr_range"`
	MaxLineRange        hcl.Range `hcl:"max_line_bytes,attr_range"`

	Limits ProxyLimits // built by validate
}

// smtpSchema is the smtp { } block as written (first stage).
type smtpSchema struct {
	Listen            []string `hcl:"listen,optional"`
	ListenTLS         []string `hcl:"listen_tls,optional"`
	AllowInsecureAuth bool     `hcl:"allow_insecure_auth,optional"`
	MaxConnections    int      `hcl:"max_connections,optional"`
	Domain            string   `hcl:"domain,optional"` // our greeting/EHLO name
	MaxMessageBytes   int64    `hcl:"max_message_bytes,optional"`
	MaxRecipients     int      `hcl:"max_recipients,optional"`
	ReadTimeout       string   `hcl:"read_timeout,optional"`
	WriteTimeout      string   `hcl:"write_timeout,optional"`
	UpstreamTimeout   string   `hcl:"upstream_timeout,optional"`
	ConnectionWait    string   `hcl:"connection_wait,optional"`
	AutoSMTPRecheck   string   `hcl:"auto_smtp_recheck,optional"` // send_via = "auto": retry SMTP after this long on Graph

	DefRange          hcl.Range `hcl:",def_range"`
	ListenRange       hcl.Range `hcl:"listen,attr_range"`
	ListenTLSRange    hcl.Range `hcl:"listen_tls,attr_range"`
	RecheckRange      hcl.Range `hcl:"auto_smtp_recheck,attr_range"`
	ReadTimeoutRange  hcl.Range `hcl:"read_timeout,attr_range"`
	WriteTimeoutRange hcl.Range `hcl:"write_timeout,attr_range"`
	UpstreamRange     hcl.Range `hcl:"upstream_timeout,attr_range"`
	WaitRange         hcl.Range `hcl:"connection_wait,attr_range"`
	MaxConnRange      hcl.Range `hcl:"max_connections,attr_range"`
	MaxMessageRange   hcl.Range `hcl:"max_message_bytes,attr_range"`
	MaxRcptRange      hcl.Range `hcl:"max_recipients,attr_range"`

	Limits SMTPLimits // built by validate
}

// providerSchema is the first stage of a provider block: the attributes
// whose raw string is parsed into another field (client_secret_expires,
// a date, into Provider.SecretExpires). Remain, the rest of the block, is
// decoded into rt, the runtime Provider.
type providerSchema struct {
	Name string `hcl:"name,label"`
	// ClientSecretExpires is the secret's Expires date from Entra
	// ("2027-06-30" or RFC 3339).
	ClientSecretExpires string    `hcl:"client_secret_expires,optional"`
	SecretExpiresRange  hcl.Range `hcl:"client_secret_expires,attr_range"`
	DefRange            hcl.Range `hcl:",def_range"`
	Remain              hcl.Body  `hcl:",remain"`

	rt *Provider
}

// adminSchema is the first stage of the admin block: tls as written (unset,
// true or false) beside its range. validate resolves it into
// AdminBlock.UseTLS; Remain is decoded into the AdminBlock.
type adminSchema struct {
	// TLS serves the admin listener over TLS with the tls block's
	// certificate. Off loopback it defaults to true and cannot be false:
	// Basic auth and the status page must not cross the network in clear.
	TLS      *bool     `hcl:"tls,optional"`
	TLSRange hcl.Range `hcl:"tls,attr_range"`
	DefRange hcl.Range `hcl:",def_range"`
	Remain   hcl.Body  `hcl:",remain"`
}
