package fakems

import (
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"

	"golang.org/x/oauth2"
)

// Identity platform lifetimes that Options does not expose.
const (
	authCodeLifetime     = 10 * time.Minute    // "codes expire after about 10 minutes"
	refreshTokenLifetime = 90 * 24 * time.Hour // 90-day inactivity window
	idTokenLifetime      = time.Hour
)

// Grant types as sent in grant_type.
const (
	GrantClientCredentials = "client_credentials"
	GrantRefreshToken      = "refresh_token"
	GrantAuthorizationCode = "authorization_code"
	GrantDeviceCode        = "urn:ietf:params:oauth:grant-type:device_code"
)

// TokenFault makes POST /token misbehave until reset with TokenFault{}.
//
//   - Hang: never answer until the request's context is done or Close.
//   - Code (+AADSTS, Status default 400): answer with Entra's error JSON.
//   - Status alone (500, 503, 429, ...): answer that status with a plain-text
//     body and no OAuth error code, like a gateway in front of Entra;
//     429 and 503 carry "Retry-After: 1".
type TokenFault struct {
	Status int
	Hang   bool
	Code   string
	AADSTS int
}

type accessToken struct {
	upn      string // delegated tokens
	clientID string
	app      bool
	aud      string   // resource: audOutlook or audGraph
	scopes   []string // delegated permissions (full scope URIs), or the app's .default
	roles    []string // application permissions (Graph app tokens)
	expires  time.Time
	expired  bool // ExpireAccessToken
}

type refreshToken struct {
	upn      string
	clientID string
	scopes   scopeSet
	issued   time.Time
	revoked  bool // RevokeRefreshTokens
}

type authCode struct {
	clientID, redirectURI      string
	challenge, challengeMethod string
	upn                        string
	scopes                     scopeSet
	expires                    time.Time
	used                       bool
}

type deviceState int

const (
	devicePending deviceState = iota
	deviceApproved
	deviceDenied
	deviceRedeemed
)

type deviceAuth struct {
	deviceCode, userCode string
	clientID             string
	scopes               scopeSet
	expires              time.Time
	state                deviceState
	upn                  string
}

// scopeSet is a parsed delegated scope parameter. It may name scopes of
// two resources (Outlook and Graph): /authorize and /devicecode accept that
// for consent; a token is always for one resource, the first one named.
type scopeSet struct {
	mail                            []string // canonical outlook.office.com scopes, in canonical order
	graph                           []string // canonical graph.microsoft.com scopes, in canonical order
	graphDefault                    bool     // https://graph.microsoft.com/.default was asked for
	first                           string   // resource of the first resource scope: audOutlook or audGraph
	offline, openid, profile, email bool
}

// forResource returns the scopes of one resource.
func (s scopeSet) forResource(aud string) []string {
	if aud == audGraph {
		return s.graph
	}
	return s.mail
}

// all returns the resource scopes of both resources.
func (s scopeSet) all() []string { return append(slices.Clone(s.mail), s.graph...) }

// aadError is an error answer of the token endpoint in Entra's shape.
type aadError struct {
	status   int
	code     string
	aadsts   int
	desc     string
	suberror string // e.g. "consent_required" with AADSTS65001
}

func (e *aadError) Error() string { return fmt.Sprintf("%s AADSTS%d: %s", e.code, e.aadsts, e.desc) }

func newAADError(status int, code string, aadsts int, format string, args ...any) *aadError {
	return &aadError{status: status, code: code, aadsts: aadsts, desc: fmt.Sprintf(format, args...)}
}

// Canonical mail scopes in the order responses list them.
var mailScopes = []string{scopeIMAP, scopePOP, scopeSMTP}

// Resources (token audiences) the fake issues tokens for.
const (
	audOutlook = "https://outlook.office.com"
	audGraph   = "https://graph.microsoft.com"
)

// Microsoft Graph delegated permissions the fake knows, as full scope URIs.
// Other Graph permissions are refused as invalid scopes (AADSTS70011): the
// fake does not model them.
const (
	ScopeGraphMailSend            = "https://graph.microsoft.com/Mail.Send"
	ScopeGraphMailSendShared      = "https://graph.microsoft.com/Mail.Send.Shared"
	ScopeGraphMailReadWrite       = "https://graph.microsoft.com/Mail.ReadWrite"
	ScopeGraphMailReadWriteShared = "https://graph.microsoft.com/Mail.ReadWrite.Shared"
	// ScopeGraphDefault is the Graph resource's .default: the app flow asks
	// for it (roles come from SetAppRoles); delegated, it means every
	// consented Graph permission.
	ScopeGraphDefault = "https://graph.microsoft.com/.default"
	// ScopeOutlookAppDefault is the Exchange app-only scope for IMAP, POP
	// and SMTP.
	ScopeOutlookAppDefault = scopeApp
)

// Outlook delegated scopes, exported for tests of other packages.
const (
	ScopeIMAP = scopeIMAP
	ScopePOP  = scopePOP
	ScopeSMTP = scopeSMTP
)

// Canonical Graph scopes in the order responses list them.
var graphScopes = []string{ScopeGraphMailSend, ScopeGraphMailSendShared, ScopeGraphMailReadWrite, ScopeGraphMailReadWriteShared}

// Application permissions (roles) of the Graph resource.
const (
	RoleMailSend      = "Mail.Send"
	RoleMailReadWrite = "Mail.ReadWrite"
)

// parseScopes parses a delegated scope parameter. Resource scopes must have
// their full resource prefix (https://outlook.office.com/ or
// https://graph.microsoft.com/); OIDC scopes and offline_access may be added.
func parseScopes(s string) (scopeSet, *aadError) {
	var set scopeSet
	fields := strings.Fields(s)
	if len(fields) == 0 {
		return set, newAADError(400, "invalid_request", 900144, "The request body must contain the following parameter: 'scope'.")
	}
	want := map[string]bool{}
	note := func(aud string) {
		if set.first == "" {
			set.first = aud
		}
	}
	for _, f := range fields {
		switch l := strings.ToLower(f); l {
		case "offline_access":
			set.offline = true
		case "openid":
			set.openid = true
		case "profile":
			set.profile = true
		case "email":
			set.email = true
		case "https://outlook.office.com/.default":
			note(audOutlook)
			for _, m := range mailScopes {
				want[m] = true
			}
		case strings.ToLower(ScopeGraphDefault):
			note(audGraph)
			set.graphDefault = true
			for _, m := range graphScopes {
				want[m] = true
			}
		default:
			found := false
			for _, m := range mailScopes {
				if l == strings.ToLower(m) {
					want[m], found = true, true
					note(audOutlook)
				}
			}
			for _, m := range graphScopes {
				if l == strings.ToLower(m) {
					want[m], found = true, true
					note(audGraph)
				}
			}
			if !found {
				return set, newAADError(400, "invalid_scope", 70011, "The provided request must include a 'scope' input parameter. The provided value for the input parameter 'scope' is not valid. The scope '%s' is not valid.", f)
			}
		}
	}
	for _, m := range mailScopes {
		if want[m] {
			set.mail = append(set.mail, m)
		}
	}
	for _, m := range graphScopes {
		if want[m] {
			set.graph = append(set.graph, m)
		}
	}
	if len(set.mail) == 0 && len(set.graph) == 0 {
		return set, newAADError(400, "invalid_scope", 70011, "The provided value for the input parameter 'scope' is not valid. The scope '%s' does not contain a scope of the Office 365 Exchange Online resource (https://outlook.office.com/) or of Microsoft Graph (https://graph.microsoft.com/).", s)
	}
	return set, nil
}

// identityHandler routes the identity platform's endpoints.
func (f *Fake) identityHandler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("POST /{tenant}/oauth2/v2.0/token", f.handleToken)
	mux.HandleFunc("POST /{tenant}/oauth2/v2.0/devicecode", f.handleDeviceCode)
	mux.HandleFunc("GET /{tenant}/oauth2/v2.0/authorize", f.handleAuthorizePage)
	mux.HandleFunc("POST /{tenant}/oauth2/v2.0/authorize", f.handleAuthorizeSignIn)
	mux.HandleFunc("GET /{tenant}/v2.0/adminconsent", f.handleAdminConsent)
	mux.HandleFunc("GET /{tenant}/adminconsent", f.handleAdminConsent)
	mux.HandleFunc("GET /{tenant}/v2.0/.well-known/openid-configuration", f.handleOpenIDConfig)
	mux.HandleFunc("GET /devicelogin", f.handleDeviceLoginPage)
	mux.HandleFunc("POST /devicelogin", f.handleDeviceLoginPost)
	mux.HandleFunc("POST /introspect", f.handleIntrospect)
	if f.opts.Google {
		f.googleRoutes(mux) // google.go
	}
	return mux
}

// Endpoint returns the x/oauth2 endpoint for tenant, with
// AuthStyleInParams as Entra wants.
func (f *Fake) Endpoint(tenant string) oauth2.Endpoint {
	base := f.AuthorityURL + "/" + tenant + "/oauth2/v2.0"
	return oauth2.Endpoint{
		AuthURL:       base + "/authorize",
		TokenURL:      base + "/token",
		DeviceAuthURL: base + "/devicecode",
		AuthStyle:     oauth2.AuthStyleInParams,
	}
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store, no-cache")
	w.Header().Set("Pragma", "no-cache")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

// writeAADError writes Entra's error body:
// {"error","error_description":"AADSTSn: ...","error_codes":[n],"timestamp","trace_id","correlation_id","error_uri"}.
func (f *Fake) writeAADError(w http.ResponseWriter, e *aadError) {
	trace, corr := newGUID(), newGUID()
	ts := f.now().UTC().Format("2006-01-02 15:04:05Z")
	body := map[string]any{
		"error":          e.code,
		"timestamp":      ts,
		"trace_id":       trace,
		"correlation_id": corr,
	}
	desc := e.desc
	if e.aadsts != 0 {
		desc = fmt.Sprintf("AADSTS%d: %s", e.aadsts, e.desc)
		body["error_codes"] = []int{e.aadsts}
		body["error_uri"] = f.AuthorityURL + "/error?code=" + strconv.Itoa(e.aadsts)
	}
	if e.suberror != "" {
		body["suberror"] = e.suberror
	}
	body["error_description"] = fmt.Sprintf("%s Trace ID: %s Correlation ID: %s Timestamp: %s", desc, trace, corr, ts)
	status := e.status
	if status == 0 {
		status = http.StatusBadRequest
	}
	writeJSON(w, status, body)
}

// tokenResponse is the token endpoint's success body.
type tokenResponse struct {
	TokenType    string `json:"token_type"`
	Scope        string `json:"scope"`
	ExpiresIn    int    `json:"expires_in"`
	ExtExpiresIn int    `json:"ext_expires_in"`
	AccessToken  string `json:"access_token"`
	RefreshToken string `json:"refresh_token,omitempty"`
	IDToken      string `json:"id_token,omitempty"`
}

func (f *Fake) handleToken(w http.ResponseWriter, r *http.Request) {
	_ = r.ParseForm()
	grant := r.PostForm.Get("grant_type")

	f.mu.Lock()
	f.tokenReqs++
	f.tokenReqsByGrant[grant]++
	fault := f.fault
	f.mu.Unlock()

	log := f.log.With("proto", "http", "remote", r.RemoteAddr)
	switch {
	case fault.Hang:
		log.Debug("fakems: token request hanging (fault)", "grant", grant)
		select {
		case <-r.Context().Done():
		case <-f.done:
		}
		// Never answer: drop the connection without a response.
		panic(http.ErrAbortHandler)
	case fault.Code != "":
		status := fault.Status
		if status == 0 {
			status = http.StatusBadRequest
		}
		f.writeAADError(w, newAADError(status, fault.Code, fault.AADSTS, "Injected fault."))
		return
	case fault.Status != 0:
		if fault.Status == http.StatusTooManyRequests || fault.Status == http.StatusServiceUnavailable {
			w.Header().Set("Retry-After", "1")
		}
		http.Error(w, http.StatusText(fault.Status), fault.Status)
		return
	}

	resp, aerr := f.token(r, grant)
	if aerr != nil {
		log.Debug("fakems: token request refused", "grant", grant, "error", aerr.code, "aadsts", aerr.aadsts)
		f.writeAADError(w, aerr)
		return
	}
	writeJSON(w, http.StatusOK, resp)
}

// clientAuth checks the client's identity and secret for a token request.
// Confidential clients must present their secret; public clients must not.
func (f *Fake) clientAuth(r *http.Request) (*app, *aadError) {
	clientID := r.PostForm.Get("client_id")
	secret, hasSecret := r.PostForm.Get("client_secret"), r.PostForm.Has("client_secret")
	if u, p, ok := r.BasicAuth(); ok {
		if v, err := url.QueryUnescape(u); err == nil {
			u = v
		}
		if v, err := url.QueryUnescape(p); err == nil {
			p = v
		}
		clientID, secret, hasSecret = u, p, true
	}
	if clientID == "" {
		return nil, newAADError(400, "invalid_request", 900144, "The request body must contain the following parameter: 'client_id'.")
	}
	f.mu.Lock()
	a := f.apps[clientID]
	f.mu.Unlock()
	if a == nil {
		return nil, newAADError(400, "unauthorized_client", 700016, "Application with identifier '%s' was not found in the directory 'Fake'. This can happen if the application has not been installed by the administrator of the tenant or consented to by any user in the tenant. You may have sent your authentication request to the wrong tenant.", clientID)
	}
	if r.PostForm.Has("client_assertion") || r.PostForm.Has("client_assertion_type") {
		return f.assertionAuth(r, a) // identity_certs.go
	}
	if a.secret == "" && !f.hasCertificates(a.id) {
		if hasSecret && secret != "" {
			return nil, newAADError(401, "invalid_client", 700025, "Client is public so neither 'client_assertion' nor 'client_secret' should be presented.")
		}
		return a, nil
	}
	if !hasSecret || secret == "" {
		return nil, newAADError(401, "invalid_client", 7000218, "The request body must contain the following parameter: 'client_assertion' or 'client_secret'.")
	}
	if subtle.ConstantTimeCompare([]byte(secret), []byte(a.secret)) != 1 {
		return nil, newAADError(401, "invalid_client", 7000215, "Invalid client secret provided. Ensure the secret being sent in the request is the client secret value, not the client secret ID, for a secret added to app '%s'.", a.id)
	}
	return a, nil
}

func (f *Fake) token(r *http.Request, grant string) (*tokenResponse, *aadError) {
	if grant == "" {
		return nil, newAADError(400, "invalid_request", 900144, "The request body must contain the following parameter: 'grant_type'.")
	}
	a, aerr := f.clientAuth(r)
	if aerr != nil {
		return nil, aerr
	}
	form := r.PostForm
	switch grant {
	case GrantClientCredentials:
		return f.grantClientCredentials(a, form)
	case GrantRefreshToken:
		return f.grantRefresh(a, form)
	case GrantAuthorizationCode:
		return f.grantAuthCode(a, form)
	case GrantDeviceCode:
		return f.grantDeviceCode(a, form)
	}
	return nil, newAADError(400, "unsupported_grant_type", 70003, "The app requested an unsupported grant type '%s'.", grant)
}

func (f *Fake) handleOpenIDConfig(w http.ResponseWriter, r *http.Request) {
	tenant := r.PathValue("tenant")
	base := f.AuthorityURL + "/" + tenant + "/oauth2/v2.0"
	writeJSON(w, http.StatusOK, map[string]any{
		"issuer":                           f.AuthorityURL + "/" + f.TenantID + "/v2.0",
		"authorization_endpoint":           base + "/authorize",
		"token_endpoint":                   base + "/token",
		"device_authorization_endpoint":    base + "/devicecode",
		"introspection_endpoint":           f.AuthorityURL + "/introspect",
		"response_types_supported":         []string{"code"},
		"grant_types_supported":            []string{GrantAuthorizationCode, GrantRefreshToken, GrantClientCredentials, GrantDeviceCode},
		"code_challenge_methods_supported": []string{"S256", "plain"},
		"tenant_region_scope":              "EU",
	})
}

// handleIntrospect answers an RFC 7662-style introspection: always 200,
// {"active":false} for unknown or expired tokens.
func (f *Fake) handleIntrospect(w http.ResponseWriter, r *http.Request) {
	_ = r.ParseForm()
	tok := r.PostForm.Get("token")
	f.mu.Lock()
	at := f.access[tok]
	active := at != nil && !at.expired && f.now().Before(at.expires)
	var body map[string]any
	if active {
		body = map[string]any{
			"active":     true,
			"client_id":  at.clientID,
			"scope":      strings.Join(at.scopes, " "),
			"token_type": "Bearer",
			"exp":        at.expires.Unix(),
			"aud":        at.aud,
		}
		if len(at.roles) > 0 {
			body["roles"] = at.roles
		}
		if at.app {
			body["sub"] = at.clientID
		} else {
			body["username"] = at.upn
			body["sub"] = oidFor(at.upn)
		}
	} else {
		body = map[string]any{"active": false}
	}
	f.mu.Unlock()
	writeJSON(w, http.StatusOK, body)
}

// ---- helpers ----

func randomToken(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return base64.RawURLEncoding.EncodeToString(b)
}

func formatGUID(b []byte) string {
	h := hex.EncodeToString(b[:16])
	return h[0:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:32]
}

func newGUID() string {
	b := make([]byte, 16)
	_, _ = rand.Read(b)
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	return formatGUID(b)
}

// oidFor is a stable object ID for a user.
func oidFor(upn string) string {
	sum := sha256.Sum256([]byte("oid:" + norm(upn)))
	return formatGUID(sum[:])
}

func randomLikeSub(upn, clientID string) string {
	sum := sha256.Sum256([]byte("sub:" + norm(upn) + ":" + clientID))
	return base64.RawURLEncoding.EncodeToString(sum[:])
}

// userCodeAlphabet avoids look-alike characters.
const userCodeAlphabet = "ABCDEFGHJKLMNPQRSTUVWXYZ23456789"

func newUserCode() string {
	b := make([]byte, 8)
	_, _ = rand.Read(b)
	for i := range b {
		b[i] = userCodeAlphabet[int(b[i])%len(userCodeAlphabet)]
	}
	return string(b)
}
