package config

import (
	"crypto/rsa"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"net"
	"net/url"
	"strconv"
	"strings"

	"github.com/hashicorp/hcl/v2"
)

// Provider types (the provider block's type).
const (
	ProviderMicrosoft = "microsoft"
	ProviderGoogle    = "google"
)

// Google Workspace / Gmail defaults (microsoft-365.md §8). authority is
// the sign-in host; the token endpoint is on another host, so an
// authority override (a local test fake) moves both: {authority}/o/oauth2/v2/auth
// and {authority}/token.
const (
	GoogleAuthority = "https://accounts.google.com"
	GoogleAuthPath  = "/o/oauth2/v2/auth"
	GoogleTokenURL  = "https://oauth2.googleapis.com/token"
	GoogleIMAP      = "imap.gmail.com:993"
	GooglePOP3      = "pop.gmail.com:995"
	GoogleSMTP      = "smtp.gmail.com:587" // STARTTLS; smtp.gmail.com:465 is implicit TLS
	// GoogleMailScope is the only scope Gmail's IMAP, POP and SMTP accept.
	GoogleMailScope = "https://mail.google.com/"
	// DefaultGoogleAccountConnections: Gmail allows about 15 simultaneous
	// IMAP connections per account and then answers "NO [ALERT] Too many
	// simultaneous connections. (Failure)".
	DefaultGoogleAccountConnections = 15
)

// ServiceAccount is the part of a Google service account JSON key the
// bridge uses. PrivateKey is the PEM key: a secret.
type ServiceAccount struct {
	Email      string // client_email: the JWT's iss
	ClientID   string // client_id: what domain-wide delegation is granted to
	KeyID      string // private_key_id: the JWT header's kid
	PrivateKey Secret
}

// IsGoogle reports whether p is a Google provider; false for nil.
func (p *Provider) IsGoogle() bool { return p != nil && p.Type == ProviderGoogle }

// AuthURL returns a Google provider's authorization endpoint.
func (p *Provider) AuthURL() string { return p.Authority + GoogleAuthPath }

func (p *Provider) defaultAccountConnections() int {
	if p.IsGoogle() {
		return DefaultGoogleAccountConnections
	}
	return DefaultAccountConnections
}

// resolveGoogle fills a google provider's defaults and checks what only
// Microsoft has (tenant, cloud, Graph) is absent.
func (p *Provider) resolveGoogle() hcl.Diagnostics {
	var diags hcl.Diagnostics
	notHere := func(set bool, rng hcl.Range, attr, why string) {
		if set {
			diags = append(diags, diagAt(rng, p.DefRange, attr+" is a Microsoft setting",
				fmt.Sprintf("provider %q has type = \"google\", which has no %s (%s); remove the line.", p.Name, attr, why)))
		}
	}
	notHere(p.Tenant != "", p.TenantRange, "tenant", "a Google Workspace domain is identified by the mailbox addresses")
	notHere(p.Cloud != "", p.CloudRange, "cloud", "Google has one cloud")
	notHere(p.GraphURL != "", p.GraphRange, "graph_url", "Microsoft Graph does not serve Gmail")
	if len(p.ClientCertificates) > 0 {
		diags = append(diags, diagAt(p.ClientCertificates[0].DefRange, p.DefRange, "client_certificate is a Microsoft setting",
			fmt.Sprintf("provider %q has type = \"google\": Google authenticates a Workspace app with a service account's key (service_account_key = file(\"/path/key.json\")), not with an uploaded certificate; remove the client_certificate block.", p.Name)))
	}

	p.TokenURL = GoogleTokenURL
	if p.Authority == "" {
		p.Authority = GoogleAuthority
	} else {
		p.Authority = strings.TrimSuffix(p.Authority, "/")
		p.TokenURL = p.Authority + "/token"
	}
	if u, err := url.Parse(p.Authority); err != nil || u.Host == "" || (u.Scheme != "https" && u.Scheme != "http") {
		diags = append(diags, diagAt(p.AuthorityRange, p.DefRange, "Invalid authority", "authority must be an https URL such as \""+GoogleAuthority+"\" (leave it out for Google's own endpoints)."))
	} else if u.Scheme == "http" && !isLoopbackHostPort(hostPortOf(u)) {
		diags = append(diags, diagAt(p.AuthorityRange, p.DefRange, "Insecure authority", "authority may use plain http only on a loopback address (a local test fake); use https."))
	}
	if p.IMAPServer == "" {
		p.IMAPServer = GoogleIMAP
	}
	if p.POP3Server == "" {
		p.POP3Server = GooglePOP3
	}
	if p.SMTPServer == "" {
		p.SMTPServer = GoogleSMTP
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
	p.ScopePrefix, p.AppScope, p.GraphResource = "", GoogleMailScope, ""
	if p.ServiceAccountKey != "" && !p.ServiceAccountKey.Unresolved() {
		sa, err := ParseServiceAccountKey([]byte(p.ServiceAccountKey.Reveal()))
		if err != nil {
			diags = append(diags, diagAt(p.SAKeyRange, p.DefRange, "Unusable service_account_key",
				fmt.Sprintf("provider %q: %v. service_account_key is the JSON key file Google Cloud console gives for a service account (IAM & Admin > Service accounts > Keys > Add key > JSON), read with file(\"/path/key.json\") or credential(\"name\").", p.Name, err)))
		} else {
			p.ServiceAccount = sa
		}
	}
	diags = append(diags, p.loadCAFile()...)
	return diags
}

// ParseServiceAccountKey reads a Google service account JSON key. Errors
// never quote the key.
func ParseServiceAccountKey(b []byte) (*ServiceAccount, error) {
	var k struct {
		Type         string `json:"type"`
		ClientEmail  string `json:"client_email"`
		ClientID     string `json:"client_id"`
		PrivateKeyID string `json:"private_key_id"`
		PrivateKey   string `json:"private_key"`
	}
	if err := json.Unmarshal(b, &k); err != nil {
		return nil, fmt.Errorf("it is not JSON (%s)", jsonErrorKind(err))
	}
	if k.Type != "service_account" {
		return nil, fmt.Errorf("its type is %q, not \"service_account\" (an OAuth client's JSON is not a service account key)", k.Type)
	}
	if !strings.Contains(k.ClientEmail, "@") {
		return nil, fmt.Errorf("it has no client_email")
	}
	blk, _ := pem.Decode([]byte(k.PrivateKey))
	if blk == nil {
		return nil, fmt.Errorf("its private_key is not PEM")
	}
	key, err := x509.ParsePKCS8PrivateKey(blk.Bytes)
	if err != nil {
		if rk, err2 := x509.ParsePKCS1PrivateKey(blk.Bytes); err2 == nil {
			key, err = rk, nil
		}
	}
	if err != nil {
		return nil, fmt.Errorf("its private_key cannot be parsed")
	}
	if _, ok := key.(*rsa.PrivateKey); !ok {
		return nil, fmt.Errorf("its private_key is not an RSA key (Google signs service account assertions with RS256)")
	}
	return &ServiceAccount{Email: k.ClientEmail, ClientID: k.ClientID, KeyID: k.PrivateKeyID, PrivateKey: Secret(k.PrivateKey)}, nil
}

// jsonErrorKind names a JSON error without quoting the input.
func jsonErrorKind(err error) string {
	switch e := err.(type) {
	case *json.SyntaxError:
		return fmt.Sprintf("syntax error at byte %d", e.Offset)
	case *json.UnmarshalTypeError:
		return fmt.Sprintf("field %q has the wrong type", e.Field)
	}
	return "malformed"
}

// checkGoogleAccount checks an account of a google provider: Gmail accepts
// a token only for the mailbox's own account, so a person signs in as the
// mailbox (no delegate), and the app flow is a service account with
// domain-wide delegation.
func (a *Account) checkGoogleAccount(p *Provider) hcl.Diagnostics {
	var diags hcl.Diagnostics
	if a.Delegate != "" {
		diags = append(diags, diagAt(a.DelegateRange, a.DefRange, "delegate with a Google provider",
			fmt.Sprintf("account %q: Gmail's IMAP, POP and SMTP accept a token only for the mailbox's own Google account, so %s itself signs in. Remove delegate, or use a service account with domain-wide delegation (flow = \"app\" and service_account_key in provider %q).", a.Name, a.Mailbox, p.Name)))
	}
	if a.UsesGraph() {
		diags = append(diags, diagAt(a.SendViaRange, a.DefRange, "send_via with a Google provider",
			fmt.Sprintf("account %q: send_via %q uses Microsoft Graph, which does not serve Gmail; remove send_via (SMTP with XOAUTH2 to %s).", a.Name, a.SendVia, p.SMTPServer)))
	}
	switch a.Flow {
	case FlowApp:
		if p.ServiceAccountKey == "" {
			diags = append(diags, diagAt(a.FlowRange, a.DefRange, "App flow needs a service account key",
				fmt.Sprintf("account %q uses flow = \"app\", which for Google is a service account with domain-wide delegation: set service_account_key = file(\"/path/key.json\") (or credential(\"name\")) in provider %q, and in the Workspace Admin console (Security > Access and data control > API controls > Domain-wide delegation) allow the service account's client ID the scope %s.", a.Name, p.Name, GoogleMailScope)))
		}
	case FlowDelegated:
		if p.ClientID == "" {
			diags = append(diags, diagAt(p.ClientIDRange, p.DefRange, "Missing client_id",
				fmt.Sprintf("account %q signs in a person, which needs an OAuth client of provider %q: create one (Google Cloud console > APIs & Services > Credentials > Create credentials > OAuth client ID, type \"Desktop app\") and set client_id and client_secret.", a.Name, p.Name)))
		} else if p.ClientSecret == "" {
			diags = append(diags, diagAt(p.SecretRange, p.DefRange, "Missing client_secret",
				fmt.Sprintf("account %q signs in a person: Google's token endpoint wants the OAuth client's secret even for a \"Desktop app\" client; set client_secret in provider %q.", a.Name, p.Name)))
		}
	}
	return diags
}
