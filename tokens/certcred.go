package tokens

import (
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha1"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"errors"
	"fmt"
	"net/url"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"golang.org/x/oauth2"

	"github.com/oauthbridge/oauthbridge/config"
)

// Certificate credentials: the app registration authenticates with a
// client assertion (RFC 7523 private_key_jwt) signed by a certificate's key
// instead of a client secret.
const (
	// ClientAssertionType is the client_assertion_type of a signed JWT.
	ClientAssertionType = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
	// DefaultAssertionLifetime: the assertion is good for one request, so
	// it lives only long enough to cross the network (MSAL uses 10 min).
	DefaultAssertionLifetime = 5 * time.Minute
	// assertionBackdate: nbf and iat lie this far in the past, so a token
	// endpoint whose clock is a little behind ours still accepts it.
	assertionBackdate = time.Minute
)

// Credential kinds of CredentialInfo.
const (
	CredentialCertificate = "certificate"
	CredentialSecret      = "secret"
)

// CredentialInfo describes one client credential of a provider, for
// status, metrics and expiry alerts. It holds no secret.
type CredentialInfo struct {
	Provider string `json:"provider"` // provider block name
	Kind     string `json:"kind"`     // "certificate" or "secret"
	// Name: for a certificate its SHA-1 thumbprint in upper-case hex (as
	// the Entra admin center shows it); for a secret "client_secret".
	Name     string    `json:"name"`
	NotAfter time.Time `json:"not_after,omitzero"` // zero when unknown
	InUse    bool      `json:"in_use"`
	// CertFile is the certificate's cert_file; empty for a secret.
	CertFile string `json:"cert_file,omitempty"`
}

// AssertionClaims are the claims of a client assertion.
type AssertionClaims struct {
	Audience  string // the token endpoint URL
	ClientID  string // iss and sub
	ID        string // jti: unique per assertion
	IssuedAt  time.Time
	NotBefore time.Time
	Expires   time.Time
}

// SignClientAssertion returns a client assertion for the token endpoint
// tokenURL signed with key (alg "RS256" or "PS256"). Its header names the
// certificate by x5t#S256 (SHA-256 of the DER certificate, RFC 7515) and,
// for token endpoints that look certificates up by SHA-1 (ADFS, older
// Entra paths), by x5t too.
func SignClientAssertion(cert *x509.Certificate, key *rsa.PrivateKey, alg string, c AssertionClaims) (string, error) {
	var method jwt.SigningMethod
	switch alg {
	case "", "RS256":
		method = jwt.SigningMethodRS256
	case "PS256":
		method = jwt.SigningMethodPS256
	default:
		return "", fmt.Errorf("unsupported assertion algorithm %q (RS256 or PS256)", alg)
	}
	// MapClaims, not RegisteredClaims: aud must be a plain string, as
	// Microsoft's libraries send it (jwt's ClaimStrings encodes an array).
	tok := jwt.NewWithClaims(method, jwt.MapClaims{
		"aud": c.Audience,
		"iss": c.ClientID,
		"sub": c.ClientID,
		"jti": c.ID,
		"iat": c.IssuedAt.Unix(),
		"nbf": c.NotBefore.Unix(),
		"exp": c.Expires.Unix(),
	})
	s256 := sha256.Sum256(cert.Raw)
	s1 := sha1.Sum(cert.Raw)
	tok.Header["x5t#S256"] = base64.RawURLEncoding.EncodeToString(s256[:])
	tok.Header["x5t"] = base64.RawURLEncoding.EncodeToString(s1[:])
	return tok.SignedString(key)
}

// certCredential signs token requests with one of a provider's client
// certificates and remembers which one the token endpoint accepted.
type certCredential struct {
	p     *config.Provider // the configuration it was built from
	certs []*config.ClientCertificate
	now   func() time.Time

	mu    sync.Mutex
	inUse int // index into certs: tried first
}

// TokenParams implements ClientCredential with the certificate in use.
func (c *certCredential) TokenParams(_ context.Context, tokenURL string) (url.Values, error) {
	c.mu.Lock()
	i := c.inUse
	c.mu.Unlock()
	return c.params(i, tokenURL)
}

func (c *certCredential) params(i int, tokenURL string) (url.Values, error) {
	cc := c.certs[i]
	if cc.Cert == nil || cc.Key == nil {
		return nil, fmt.Errorf("client certificate %s of provider %s: the certificate or key file could not be read at load time; fix it and reload", cc.CertFile, c.p.Name)
	}
	now := c.now()
	a, err := SignClientAssertion(cc.Cert, cc.Key, cc.Algorithm, AssertionClaims{
		Audience: tokenURL, ClientID: c.p.ClientID, ID: newJTI(),
		IssuedAt: now.Add(-assertionBackdate), NotBefore: now.Add(-assertionBackdate),
		Expires: now.Add(DefaultAssertionLifetime),
	})
	if err != nil {
		return nil, fmt.Errorf("sign the client assertion with certificate %s: %w", cc.Thumbprint(), err)
	}
	return url.Values{"client_assertion_type": {ClientAssertionType}, "client_assertion": {a}}, nil
}

// newJTI returns a random UUID (version 4), the jti form Entra's own
// libraries send.
func newJTI() string {
	raw := make([]byte, 16)
	if _, err := rand.Read(raw); err != nil {
		panic("tokens: crypto/rand failed: " + err.Error())
	}
	raw[6] = raw[6]&0x0f | 0x40
	raw[8] = raw[8]&0x3f | 0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", raw[0:4], raw[4:6], raw[6:8], raw[8:10], raw[10:16])
}

// order is the order in which to try the certificates: the one in use,
// then the others in configuration order; a certificate outside its
// validity (by our clock) goes last, so an expired one costs no refused
// request while its successor works.
func (c *certCredential) order() []int {
	c.mu.Lock()
	out := []int{c.inUse}
	for i := range c.certs {
		if i != c.inUse {
			out = append(out, i)
		}
	}
	c.mu.Unlock()
	now := c.now()
	stale := func(i int) int {
		if cert := c.certs[i].Cert; cert != nil && !now.After(cert.NotAfter) && !now.Before(cert.NotBefore) {
			return 0
		}
		return 1
	}
	slices.SortStableFunc(out, func(a, b int) int { return stale(a) - stale(b) })
	return out
}

// certRefusalCodes are the AADSTS codes that say the token endpoint refused
// the certificate itself, so another certificate may do better. From
// Microsoft.Identity.Web's list of certificate errors (it reloads
// certificates on exactly these): 700027 key not found / signature invalid /
// key expired, 7000274 and 1000502 certificate outside its validity period,
// 7000214 and 7000277 certificate revoked.
var certRefusalCodes = map[int]bool{700027: true, 7000274: true, 1000502: true, 7000214: true, 7000277: true}

func isCertRefusal(err error) bool {
	var re *oauth2.RetrieveError
	if !errors.As(err, &re) || re.Response == nil || re.Response.StatusCode >= 500 {
		return false
	}
	return certRefusalCodes[aadstsOf(re)]
}

// certTokenRequest sends form with a client assertion, trying the next
// client certificate when the token endpoint refuses one (rotation: the
// old certificate was removed from the app registration, or expired). A
// network error or any other refusal is not a reason to switch.
func (m *Manager) certTokenRequest(ctx context.Context, p *config.Provider, c *certCredential, form url.Values) (*tokenResponse, error) {
	tokenURL := Endpoints(p).TokenURL
	order := c.order()
	var tried []*config.ClientCertificate
	for n, i := range order {
		cc := c.certs[i]
		extra, err := c.params(i, tokenURL)
		if err != nil {
			if n < len(order)-1 {
				continue
			}
			return nil, fmt.Errorf("tokens: client credential: %w", err)
		}
		f := url.Values{}
		for k, v := range form {
			f[k] = v
		}
		for k, v := range extra {
			f[k] = v
		}
		tried = append(tried, cc)
		var tr tokenResponse
		err = m.postForm(ctx, p, tokenURL, f, &tr)
		if err == nil {
			if tr.AccessToken == "" {
				return nil, errors.New("tokens: token response has no access_token")
			}
			c.mu.Lock()
			switched := c.inUse != i
			c.inUse = i
			c.mu.Unlock()
			if switched {
				m.log.Warn("tokens: the token endpoint accepts the other client certificate; it is used from now on",
					"provider", p.Name, "thumbprint", cc.Thumbprint(), "cert_file", cc.CertFile, "not_after", cc.Cert.NotAfter)
				m.publishCredentialMetrics()
			}
			return &tr, nil
		}
		if !isCertRefusal(err) || n == len(order)-1 {
			return nil, &certError{err: err, used: cc, tried: tried, now: c.now()}
		}
		m.log.Warn("tokens: the token endpoint refused a client certificate; trying the next client_certificate block",
			"provider", p.Name, "thumbprint", cc.Thumbprint(), "cert_file", cc.CertFile, "error", err)
	}
	return nil, errors.New("tokens: provider has no client certificate")
}

// certError is a refused token request signed with a client certificate;
// classify uses it to name the certificate in the fix.
type certError struct {
	err   error
	used  *config.ClientCertificate // the last one tried
	tried []*config.ClientCertificate
	now   time.Time
}

func (e *certError) Error() string { return e.err.Error() }
func (e *certError) Unwrap() error { return e.err }

// Fixes for certificate refusals; {provider} is expanded by classify.
const (
	uploadPath = "Entra admin center → App registrations → the app of provider {provider} → Certificates & secrets → Certificates → Upload certificate"
	fixCertNew = "run 'oauthbridge cert new -cn oauthbridge-{provider} -provider {provider} -cert /etc/oauthbridge/{provider}-new.crt -key /etc/oauthbridge/credentials/{provider}-new.key', upload the new certificate (" + uploadPath + "), add it as a client_certificate block of provider {provider} and reload (restart if its key is a new LoadCredential=)"
	fixClock   = "check the system clock: timedatectl must say 'System clock synchronized: yes' (the bridge signs each client assertion for " + "5 minutes from its own clock)"
	fixRevoked = "the certificate was revoked; " + fixCertNew
	fixJWT     = "check authority and tenant of provider {provider} (the assertion's audience is the token endpoint URL)"
)

// certRemedy refines the reason and fix of a certificate refusal with the
// certificate's thumbprint, file and expiry. It runs after classify's table.
func certRemedy(e *Error, err error) {
	var ce *certError
	if !errors.As(err, &ce) || ce.used == nil || ce.used.Cert == nil {
		return
	}
	cert := ce.used.Cert
	thumb := ce.used.Thumbprint()
	expired := ce.now.After(cert.NotAfter)
	switch e.AADSTS {
	case 700027, 7000274, 1000502:
		if expired {
			e.Reason = fmt.Sprintf("client certificate %s (%s) expired on %s", thumb, ce.used.CertFile, cert.NotAfter.UTC().Format("2006-01-02 15:04 MST"))
			e.Fix = "the certificate expired: " + fixCertNew
			return
		}
		if e.AADSTS != 700027 {
			e.Reason = fmt.Sprintf("Entra says client certificate %s (%s, valid %s to %s) is outside its validity period", thumb, ce.used.CertFile, cert.NotBefore.UTC().Format("2006-01-02"), cert.NotAfter.UTC().Format("2006-01-02"))
			e.Fix = fixClock + "; if the clock is right, " + fixCertNew
			return
		}
		e.Reason = fmt.Sprintf("the app registration does not accept client certificate %s (%s): it is not uploaded there, or key_file is not its key", thumb, ce.used.CertFile)
		e.Fix = fmt.Sprintf("upload the certificate %s (%s) to the app registration of provider {provider} (%s); if it is listed there, key_file does not belong to it", thumb, ce.used.CertFile, uploadPath)
		if len(ce.tried) > 1 {
			var ts []string
			for _, t := range ce.tried {
				ts = append(ts, t.Thumbprint())
			}
			e.Reason = "the app registration accepts none of the provider's client certificates (tried " + strings.Join(ts, ", ") + ")"
			if best := newestValid(ce.tried, ce.now); best != nil {
				e.Fix = fmt.Sprintf("upload the certificate %s (%s, expires %s) to the app registration of provider {provider} (%s)", best.Thumbprint(), best.CertFile, best.Cert.NotAfter.UTC().Format("2006-01-02"), uploadPath)
			}
		}
	case 7000214, 7000277:
		e.Reason = fmt.Sprintf("client certificate %s (%s) was revoked", thumb, ce.used.CertFile)
	}
}

func newestValid(cs []*config.ClientCertificate, now time.Time) *config.ClientCertificate {
	var best *config.ClientCertificate
	for _, c := range cs {
		if c.Cert == nil || now.After(c.Cert.NotAfter) || now.Before(c.Cert.NotBefore) {
			continue
		}
		if best == nil || c.Cert.NotAfter.After(best.Cert.NotAfter) {
			best = c
		}
	}
	return best
}

// certCreds holds the Manager's certificate credentials by provider name.
type certCreds struct {
	mu        sync.Mutex
	byName    map[string]*certCredential
	published map[[3]string]bool // metric label sets now exported
}

// certCredential returns p's certificate credential, or nil when p has no
// client_certificate block. After a reload (a new *config.Provider) it is
// rebuilt from the new files, keeping the certificate that worked when it
// is still configured.
func (m *Manager) certCredential(p *config.Provider) *certCredential {
	if p == nil || len(p.ClientCertificates) == 0 {
		return nil
	}
	m.certs.mu.Lock()
	defer m.certs.mu.Unlock()
	if m.certs.byName == nil {
		m.certs.byName = map[string]*certCredential{}
	}
	old := m.certs.byName[p.Name]
	if old != nil && old.p == p {
		return old
	}
	c := &certCredential{p: p, certs: p.ClientCertificates, now: m.now}
	if old != nil {
		old.mu.Lock()
		was := old.certs[old.inUse].Thumbprint()
		old.mu.Unlock()
		for i, cc := range c.certs {
			if cc.Thumbprint() == was && was != "" {
				c.inUse = i
			}
		}
	}
	m.certs.byName[p.Name] = c
	var desc []string
	for i, cc := range c.certs {
		d := cc.Thumbprint() + " (" + cc.CertFile
		if cc.Cert != nil {
			d += ", expires " + cc.Cert.NotAfter.UTC().Format("2006-01-02")
		}
		if i == c.inUse {
			d += ", tried first"
		}
		desc = append(desc, d+")")
	}
	m.log.Info("tokens: provider authenticates with client certificates", "provider", p.Name, "certificates", strings.Join(desc, "; "))
	return c
}

// Credentials returns the client credentials of every configured provider:
// each client certificate (with its thumbprint and expiry, and whether it
// is the one in use) or the client secret. A public client has none.
func (m *Manager) Credentials() []CredentialInfo {
	m.mu.RLock()
	cfg := m.cfg
	m.mu.RUnlock()
	var out []CredentialInfo
	for _, p := range cfg.Providers {
		if c := m.certCredential(p); c != nil {
			c.mu.Lock()
			inUse := c.inUse
			c.mu.Unlock()
			for i, cc := range c.certs {
				ci := CredentialInfo{Provider: p.Name, Kind: CredentialCertificate, Name: cc.Thumbprint(), InUse: i == inUse, CertFile: cc.CertFile}
				if cc.Cert != nil {
					ci.NotAfter = cc.Cert.NotAfter
				}
				out = append(out, ci)
			}
			continue
		}
		if p.ClientSecret != "" {
			out = append(out, CredentialInfo{Provider: p.Name, Kind: CredentialSecret, Name: "client_secret", InUse: true})
		}
	}
	slices.SortStableFunc(out, func(a, b CredentialInfo) int { return strings.Compare(a.Provider, b.Provider) })
	return out
}

// publishCredentialMetrics sets oauthbridge_credential_expiry_timestamp_seconds
// for every credential with a known expiry and drops the label sets of
// credentials no longer configured.
func (m *Manager) publishCredentialMetrics() {
	infos := m.Credentials()
	m.certs.mu.Lock()
	defer m.certs.mu.Unlock()
	now := map[[3]string]bool{}
	for _, ci := range infos {
		if ci.NotAfter.IsZero() {
			continue
		}
		k := [3]string{ci.Provider, ci.Kind, ci.Name}
		now[k] = true
		m.met.CredentialExpiry.WithLabelValues(k[:]...).Set(float64(ci.NotAfter.Unix()))
	}
	for k := range m.certs.published {
		if !now[k] {
			m.met.CredentialExpiry.DeleteLabelValues(k[:]...)
		}
	}
	m.certs.published = now
}
