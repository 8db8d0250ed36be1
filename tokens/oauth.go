package tokens

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"golang.org/x/oauth2"

	"github.com/oauthbridge/oauthbridge/config"
	"github.com/oauthbridge/oauthbridge/graph"
)

// maxTokenResponse caps a token endpoint answer (x/oauth2 uses 1 MiB too).
const maxTokenResponse = 1 << 20

// Endpoints returns the v2.0 authorize, token and device-code URLs of p:
// {Authority}/{Tenant}/oauth2/v2.0/{authorize,token,devicecode}.
func Endpoints(p *config.Provider) oauth2.Endpoint {
	if p.IsGoogle() {
		return googleEndpoint(p)
	}
	base := strings.TrimSuffix(p.Authority, "/") + "/" + url.PathEscape(p.Tenant) + "/oauth2/v2.0/"
	return oauth2.Endpoint{
		AuthURL:       base + "authorize",
		TokenURL:      base + "token",
		DeviceAuthURL: base + "devicecode",
		AuthStyle:     oauth2.AuthStyleInParams, // Entra: never try the Basic header first
	}
}

// DelegatedScopes are the scopes of a delegated sign-in: one token for
// IMAP, POP3 and SMTP (all on the same Exchange resource), a refresh token,
// and an id_token that says who signed in.
func DelegatedScopes(p *config.Provider) []string {
	if p.IsGoogle() {
		return googleDelegatedScopes()
	}
	return []string{
		p.ScopePrefix + "IMAP.AccessAsUser.All",
		p.ScopePrefix + "POP.AccessAsUser.All",
		p.ScopePrefix + "SMTP.Send",
		"offline_access", "openid", "profile", "email",
	}
}

// ConsentURL returns the admin-consent URL for p's app registration:
// {authority}/{tenant}/v2.0/adminconsent?client_id=..&redirect_uri=..&scope=..
// The scope is the Exchange resource's .default, which consents to every
// Exchange permission the registration lists (delegated and application).
// When an account of p sends through Microsoft Graph (send_via "graph" or
// "auto"), Graph's .default is added, so the same consent covers the
// Graph permissions of the registration. Microsoft says not to use
// /common for admin consent, so common and consumers become organizations.
func ConsentURL(p *config.Provider, redirectURI string) string {
	tenant := p.Tenant
	switch strings.ToLower(tenant) {
	case "common", "consumers":
		tenant = "organizations"
	}
	scope := p.AppScope
	if p.UsesGraph {
		scope += " " + graphResource(p) + "/.default"
	}
	q := url.Values{"client_id": {p.ClientID}, "scope": {scope}}
	if redirectURI != "" {
		q.Set("redirect_uri", redirectURI)
	}
	return strings.TrimSuffix(p.Authority, "/") + "/" + url.PathEscape(tenant) + "/v2.0/adminconsent?" + q.Encode()
}

// ClientCredential authenticates an app registration at the token endpoint.
// It is the client secret, none (a public client), or the provider's
// client certificates (certcred.go: a signed client_assertion, RFC 7523);
// Options.Credential may install another.
type ClientCredential interface {
	// TokenParams returns the form parameters that authenticate the client
	// in one request to tokenURL: client_secret, or client_assertion_type
	// and client_assertion. Nil means a public client: nothing is sent.
	TokenParams(ctx context.Context, tokenURL string) (url.Values, error)
}

// SecretCredential is a client secret from the configuration.
type SecretCredential config.Secret

// TokenParams implements ClientCredential.
func (s SecretCredential) TokenParams(context.Context, string) (url.Values, error) {
	if s == "" {
		return nil, nil // public client: must not send a secret (AADSTS700025)
	}
	return url.Values{"client_secret": {string(s)}}, nil
}

// tokenResponse is a successful token endpoint answer. It holds secrets.
type tokenResponse struct {
	AccessToken  string  `json:"access_token"`
	TokenType    string  `json:"token_type"`
	RefreshToken string  `json:"refresh_token"`
	ExpiresIn    flexInt `json:"expires_in"`
	Scope        string  `json:"scope"`
	IDToken      string  `json:"id_token"`
}

// flexInt accepts a JSON number or a string of digits (ADFS sends strings).
type flexInt int64

func (f *flexInt) UnmarshalJSON(b []byte) error {
	s := strings.Trim(string(b), `"`)
	if s == "" || s == "null" {
		*f = 0
		return nil
	}
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil {
		return fmt.Errorf("expires_in: %w", err)
	}
	*f = flexInt(n)
	return nil
}

// deviceResponse is the devicecode endpoint's answer. It holds a secret.
type deviceResponse struct {
	DeviceCode      string  `json:"device_code"`
	UserCode        string  `json:"user_code"`
	VerificationURI string  `json:"verification_uri"`
	VerificationURL string  `json:"verification_url"` // older spelling
	ExpiresIn       flexInt `json:"expires_in"`
	Interval        flexInt `json:"interval"`
	Message         string  `json:"message"`
}

// httpClient returns the HTTP client for p's identity platform.
func (m *Manager) httpClient(p *config.Provider) *http.Client {
	if m.opts.HTTPClient != nil {
		return m.opts.HTTPClient
	}
	m.clientsMu.Lock()
	defer m.clientsMu.Unlock()
	if c, ok := m.clients[p]; ok {
		return c
	}
	// The bridge's one client for Microsoft's HTTPS endpoints: proxy from
	// the environment, TLS 1.2 or later against the provider's ca_file
	// roots, HTTP/2; here with RequestTimeout bounding a whole request.
	c := graph.NewHTTPClient(p.RootCAs)
	c.Timeout = m.opts.RequestTimeout
	m.clients[p] = c
	return c
}

// postForm POSTs form to endpoint and returns the answer. A response that
// is not 2xx, or carries an "error" field, becomes *oauth2.RetrieveError so
// that classify sees every endpoint error the same way. The error string
// never holds the form (which carries secrets).
func (m *Manager) postForm(ctx context.Context, p *config.Provider, endpoint string, form url.Values, into any) error {
	ctx, cancel := context.WithTimeout(ctx, m.opts.RequestTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, endpoint, strings.NewReader(form.Encode()))
	if err != nil {
		return fmt.Errorf("tokens: token request: %w", err)
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.Header.Set("Accept", "application/json")
	resp, err := m.httpClient(p).Do(req)
	if err != nil {
		return fmt.Errorf("tokens: token request: %w", err)
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxTokenResponse))
	resp.Body.Close()
	if err != nil {
		return fmt.Errorf("tokens: read token response: %w", err)
	}
	var eb struct {
		Error string `json:"error"`
		Desc  string `json:"error_description"`
		URI   string `json:"error_uri"`
	}
	jerr := json.Unmarshal(body, &eb)
	if resp.StatusCode < 200 || resp.StatusCode > 299 || eb.Error != "" {
		return &oauth2.RetrieveError{Response: resp, Body: body, ErrorCode: eb.Error, ErrorDescription: eb.Desc, ErrorURI: eb.URI}
	}
	if jerr != nil {
		return fmt.Errorf("tokens: token response is not JSON (HTTP %d)", resp.StatusCode)
	}
	if err := json.Unmarshal(body, into); err != nil {
		return fmt.Errorf("tokens: decode token response: %w", err)
	}
	return nil
}

// tokenRequest sends one token grant for p, authenticating the client with
// its credential, and returns the token response.
func (m *Manager) tokenRequest(ctx context.Context, p *config.Provider, form url.Values) (*tokenResponse, error) {
	ep := Endpoints(p)
	form.Set("client_id", p.ClientID)
	cred := m.credential(p)
	if cc, ok := cred.(*certCredential); ok {
		return m.certTokenRequest(ctx, p, cc, form) // certcred.go: tries the next certificate on refusal
	}
	extra, err := cred.TokenParams(ctx, ep.TokenURL)
	if err != nil {
		return nil, fmt.Errorf("tokens: client credential: %w", err)
	}
	for k, v := range extra {
		form[k] = v
	}
	var tr tokenResponse
	if err := m.postForm(ctx, p, ep.TokenURL, form, &tr); err != nil {
		return nil, err
	}
	if tr.AccessToken == "" {
		return nil, errors.New("tokens: token response has no access_token")
	}
	return &tr, nil
}

func (m *Manager) credential(p *config.Provider) ClientCredential {
	if m.opts.Credential != nil {
		if c := m.opts.Credential(p); c != nil {
			return c
		}
	}
	if c := m.certCredential(p); c != nil {
		return c
	}
	return SecretCredential(p.ClientSecret)
}

// lifetime is the token's validity from its expires_in, or an hour when the
// endpoint did not say (as email-oauth2-proxy assumes).
func (tr *tokenResponse) lifetime() time.Duration {
	if tr.ExpiresIn > 0 {
		return time.Duration(tr.ExpiresIn) * time.Second
	}
	return defaultTokenLifetime
}

// signedInAs returns who signed in according to an id_token: the
// preferred_username, upn or email claim. The JWT is not verified: it came
// straight from the token endpoint over TLS, and it only guards against
// signing in as the wrong person.
func signedInAs(idToken string) (string, error) {
	if idToken == "" {
		return "", errors.New("the token response has no id_token")
	}
	parts := strings.Split(idToken, ".")
	if len(parts) < 2 {
		return "", errors.New("the id_token is not a JWT")
	}
	payload, err := base64.RawURLEncoding.DecodeString(strings.TrimRight(parts[1], "="))
	if err != nil {
		return "", errors.New("the id_token payload is not base64url")
	}
	var c struct {
		PreferredUsername string `json:"preferred_username"`
		UPN               string `json:"upn"`
		Email             string `json:"email"`
	}
	if err := json.Unmarshal(payload, &c); err != nil {
		return "", errors.New("the id_token payload is not JSON")
	}
	for _, s := range []string{c.PreferredUsername, c.UPN, c.Email} {
		if s != "" {
			return s, nil
		}
	}
	return "", errors.New("the id_token names no user (no preferred_username, upn or email)")
}
