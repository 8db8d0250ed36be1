package fakems

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
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
	if a.secret == "" {
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

func (f *Fake) grantClientCredentials(a *app, form url.Values) (*tokenResponse, *aadError) {
	if a.secret == "" {
		return nil, newAADError(401, "invalid_client", 7000218, "The request body must contain the following parameter: 'client_assertion' or 'client_secret'.")
	}
	scope := strings.TrimSpace(form.Get("scope"))
	fields := strings.Fields(scope)
	// "Including scopes for multiple resources will result in an error."
	resources := map[string]bool{}
	for _, fl := range fields {
		l := strings.ToLower(fl)
		switch {
		case strings.HasPrefix(l, "https://graph.microsoft.com/"):
			resources[audGraph] = true
		case strings.HasPrefix(l, "https://outlook.office365.com/"), strings.HasPrefix(l, "https://outlook.office.com/"):
			resources[audOutlook] = true
		}
	}
	if len(resources) > 1 {
		return nil, newAADError(400, "invalid_scope", 700022, "The provided value for the input parameter scope is not valid because it contains more than one resource. Scope %s is not valid.", scope)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	var tok string
	switch {
	case len(fields) == 1 && strings.EqualFold(fields[0], scopeApp):
		scope = scopeApp
		tok = f.mintLocked(&accessToken{clientID: a.id, app: true, aud: audOutlook, scopes: []string{scopeApp}})
	case len(fields) == 1 && strings.EqualFold(fields[0], ScopeGraphDefault):
		scope = ScopeGraphDefault
		tok = f.mintLocked(&accessToken{clientID: a.id, app: true, aud: audGraph, scopes: []string{ScopeGraphDefault}, roles: slices.Clone(f.appRoles[a.id])})
	default:
		return nil, newAADError(400, "invalid_scope", 1002012, "The provided value for scope %s is not valid. Client credential flows must have a scope value with /.default suffixed to the resource identifier (application ID URI); for Exchange use %s, for Microsoft Graph %s.", scope, scopeApp, ScopeGraphDefault)
	}
	return &tokenResponse{
		TokenType:    "Bearer",
		Scope:        scope,
		ExpiresIn:    f.lifetimeSeconds(),
		ExtExpiresIn: f.lifetimeSeconds(),
		AccessToken:  tok,
	}, nil
}

func (f *Fake) grantRefresh(a *app, form url.Values) (*tokenResponse, *aadError) {
	rt := form.Get("refresh_token")
	if rt == "" {
		return nil, newAADError(400, "invalid_request", 900144, "The request body must contain the following parameter: 'refresh_token'.")
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	rec := f.refresh[rt]
	if rec == nil || rec.clientID != a.id {
		return nil, newAADError(400, "invalid_grant", 9002313, "Invalid request. Request is malformed or invalid.")
	}
	if at, ok := f.revokedAt[rec.upn]; ok && rec.revoked {
		return nil, newAADError(400, "invalid_grant", 50173, "The provided grant has expired due to it being revoked, a fresh auth token is needed. The user might have changed or reset their password. The grant was issued on '%s' and the TokensValidFrom date (before which tokens are not valid) for this user is '%s'.",
			rec.issued.UTC().Format(time.RFC3339Nano), at.UTC().Format(time.RFC3339Nano))
	}
	if !f.now().Before(rec.issued.Add(refreshTokenLifetime)) {
		return nil, newAADError(400, "invalid_grant", 700082, "The refresh token has expired due to inactivity. The token was issued on %s and was inactive for 90.00:00:00.", rec.issued.UTC().Format(time.RFC3339Nano))
	}
	scopes := rec.scopes
	if s := form.Get("scope"); s != "" {
		req, aerr := parseScopes(s)
		if aerr != nil {
			return nil, aerr
		}
		req.offline = rec.scopes.offline
		scopes = req
	}
	// Rotation: a new refresh token every time; the old one stays valid,
	// as Microsoft's does ("doesn't revoke old refresh tokens"). Refresh
	// tokens "aren't tied to a resource": the same one is redeemed for
	// Outlook and for Graph, limited by what the user consented to.
	return f.issueDelegatedLocked(rec.upn, a.id, scopes)
}

func (f *Fake) grantAuthCode(a *app, form url.Values) (*tokenResponse, *aadError) {
	code := form.Get("code")
	if code == "" {
		return nil, newAADError(400, "invalid_request", 900144, "The request body must contain the following parameter: 'code'.")
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	c := f.codes[code]
	if c == nil || c.clientID != a.id {
		return nil, newAADError(400, "invalid_grant", 9002313, "Invalid request. Request is malformed or invalid.")
	}
	if c.used {
		return nil, newAADError(400, "invalid_grant", 54005, "OAuth2 Authorization code was already redeemed, please retry with a new valid code or use an existing refresh token.")
	}
	if !f.now().Before(c.expires) {
		return nil, newAADError(400, "invalid_grant", 70008, "The provided authorization code or refresh token has expired due to inactivity. Send a new interactive authorization request for this user and resource.")
	}
	if form.Get("redirect_uri") != c.redirectURI {
		return nil, newAADError(400, "invalid_grant", 500112, "The reply address '%s' does not match the reply address '%s' provided when requesting Authorization code.", form.Get("redirect_uri"), c.redirectURI)
	}
	verifier := form.Get("code_verifier")
	switch {
	case c.challenge == "" && a.secret == "":
		return nil, newAADError(400, "invalid_request", 9002325, "Proof Key for Code Exchange is required for cross-origin authorization code redemption.")
	case c.challenge != "":
		got := verifier
		if c.challengeMethod == "S256" {
			sum := sha256.Sum256([]byte(verifier))
			got = base64.RawURLEncoding.EncodeToString(sum[:])
		}
		if verifier == "" || subtle.ConstantTimeCompare([]byte(got), []byte(c.challenge)) != 1 {
			return nil, newAADError(400, "invalid_grant", 501481, "The Code_Verifier does not match the code_challenge supplied in the authorization request.")
		}
	}
	c.used = true
	scopes := c.scopes
	if s := form.Get("scope"); s != "" {
		req, aerr := parseScopes(s)
		if aerr != nil {
			return nil, aerr
		}
		req.offline = req.offline || c.scopes.offline
		scopes = req
	}
	return f.issueDelegatedLocked(c.upn, a.id, scopes)
}

func (f *Fake) grantDeviceCode(a *app, form url.Values) (*tokenResponse, *aadError) {
	dc := form.Get("device_code")
	if dc == "" {
		return nil, newAADError(400, "invalid_request", 900144, "The request body must contain the following parameter: 'device_code'.")
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	d := f.devices[dc]
	if d == nil || d.clientID != a.id {
		return nil, newAADError(400, "bad_verification_code", 70018, "The provided value for the input parameter 'device_code' is not valid.")
	}
	if f.slowDown > 0 {
		f.slowDown--
		return nil, newAADError(400, "slow_down", 0, "Polling too frequently; increase the interval by 5 seconds.")
	}
	if d.state == deviceRedeemed {
		return nil, newAADError(400, "invalid_grant", 90120, "The request was already authorized or declined.")
	}
	if !f.now().Before(d.expires) {
		return nil, newAADError(400, "expired_token", 70019, "Verification code expired.")
	}
	switch d.state {
	case devicePending:
		return nil, newAADError(400, "authorization_pending", 70016, "OAuth 2.0 device flow error. Authorization is pending. Continue polling.")
	case deviceDenied:
		return nil, newAADError(400, "authorization_declined", 65004, "User declined to consent to access the app.")
	}
	d.state = deviceRedeemed
	return f.issueDelegatedLocked(d.upn, a.id, d.scopes)
}

func (f *Fake) lifetimeSeconds() int {
	return int(f.opts.AccessTokenLifetime.Round(time.Second) / time.Second)
}

// mintLocked stores a new access token and returns its opaque value.
func (f *Fake) mintLocked(at *accessToken) string {
	at.expires = f.now().Add(f.opts.AccessTokenLifetime)
	tok := "EwB" + randomToken(64)
	f.access[tok] = at
	return tok
}

// issueDelegatedLocked issues an access token for upn for the resource of
// the first scope in scopes ("If the scopes specified in this request span
// multiple resource server, then the Microsoft identity platform returns a
// token for the resource specified in the first scope"), a refresh token if
// offline_access was granted, and an id_token if openid was requested. Every
// scope of that resource must have been consented to by upn for clientID,
// else AADSTS65001 (consent_required). For Graph's .default the token gets
// the consented Graph scopes.
func (f *Fake) issueDelegatedLocked(upn, clientID string, scopes scopeSet) (*tokenResponse, *aadError) {
	aud := scopes.first
	if aud == "" {
		aud = audOutlook
	}
	consented := f.consent[consentKey(clientID, upn)]
	var granted []string
	for _, sc := range scopes.forResource(aud) {
		switch {
		case consented[sc]:
			granted = append(granted, sc)
		case aud == audGraph && scopes.graphDefault:
			// .default: only what was consented.
		default:
			return nil, f.consentRequired(clientID, sc)
		}
	}
	if len(granted) == 0 {
		return nil, f.consentRequired(clientID, aud+"/.default")
	}
	resp := &tokenResponse{
		TokenType:    "Bearer",
		Scope:        strings.Join(granted, " "),
		ExpiresIn:    f.lifetimeSeconds(),
		ExtExpiresIn: f.lifetimeSeconds(),
		AccessToken:  f.mintLocked(&accessToken{upn: upn, clientID: clientID, aud: aud, scopes: granted}),
	}
	if scopes.offline {
		rt := "1.AQ" + randomToken(96)
		f.refresh[rt] = &refreshToken{upn: upn, clientID: clientID, scopes: scopes, issued: f.now()}
		resp.RefreshToken = rt
	}
	if scopes.openid {
		resp.IDToken = f.idToken(upn, clientID)
	}
	return resp, nil
}

// consentRequired is Entra's answer to a token request for a permission the
// user (or an admin) never consented to. Entra's text does not name the
// permission; the fake logs it.
func (f *Fake) consentRequired(clientID, scope string) *aadError {
	f.log.Debug("fakems: token refused: no consent", "client_id", clientID, "scope", scope)
	e := newAADError(400, "invalid_grant", 65001, "The user or administrator has not consented to use the application with ID '%s' named 'Fake'. Send an interactive authorization request for this user and resource.", clientID)
	e.suberror = "consent_required"
	return e
}

func consentKey(clientID, upn string) string { return clientID + "\x00" + norm(upn) }

// grantConsentLocked records that upn consented to scopes for clientID at a
// sign-in, except the scopes WithholdConsent blocks for that app.
func (f *Fake) grantConsentLocked(clientID, upn string, scopes []string) {
	k := consentKey(clientID, upn)
	m := f.consent[k]
	if m == nil {
		m = make(map[string]bool)
		f.consent[k] = m
	}
	for _, sc := range scopes {
		if !f.withheld[clientID][sc] {
			m[sc] = true
		}
	}
}

// idToken returns an HS256 JWT (key private to the fake) with the claims
// oauthbridge reads.
func (f *Fake) idToken(upn, clientID string) string {
	now := f.now()
	name := upn
	if i := strings.IndexByte(upn, '@'); i > 0 {
		name = upn[:i]
	}
	claims := map[string]any{
		"aud":                clientID,
		"iss":                f.AuthorityURL + "/" + f.TenantID + "/v2.0",
		"iat":                now.Unix(),
		"nbf":                now.Unix(),
		"exp":                now.Add(idTokenLifetime).Unix(),
		"name":               name,
		"oid":                oidFor(upn),
		"preferred_username": upn,
		"upn":                upn,
		"email":              upn,
		"sub":                randomLikeSub(upn, clientID),
		"tid":                f.TenantID,
		"ver":                "2.0",
	}
	enc := func(v any) string {
		b, _ := json.Marshal(v)
		return base64.RawURLEncoding.EncodeToString(b)
	}
	signing := enc(map[string]string{"alg": "HS256", "typ": "JWT"}) + "." + enc(claims)
	mac := hmac.New(sha256.New, f.jwtKey)
	mac.Write([]byte(signing))
	return signing + "." + base64.RawURLEncoding.EncodeToString(mac.Sum(nil))
}

func (f *Fake) handleDeviceCode(w http.ResponseWriter, r *http.Request) {
	_ = r.ParseForm()
	clientID := r.PostForm.Get("client_id")
	f.mu.Lock()
	a := f.apps[clientID]
	f.mu.Unlock()
	if a == nil {
		f.writeAADError(w, newAADError(400, "unauthorized_client", 700016, "Application with identifier '%s' was not found in the directory 'Fake'.", clientID))
		return
	}
	scopes, aerr := parseScopes(r.PostForm.Get("scope"))
	if aerr != nil {
		f.writeAADError(w, aerr)
		return
	}
	f.mu.Lock()
	d := &deviceAuth{
		deviceCode: "DAQABAAEAAA" + randomToken(48),
		clientID:   clientID,
		scopes:     scopes,
		expires:    f.now().Add(f.opts.DeviceCodeLifetime),
	}
	for {
		d.userCode = newUserCode()
		if f.userCodes[d.userCode] == nil {
			break
		}
	}
	f.devices[d.deviceCode] = d
	f.userCodes[d.userCode] = d
	f.mu.Unlock()

	verify := f.AuthorityURL + "/devicelogin"
	writeJSON(w, http.StatusOK, map[string]any{
		"user_code":        d.userCode,
		"device_code":      d.deviceCode,
		"verification_uri": verify,
		"expires_in":       int(f.opts.DeviceCodeLifetime / time.Second),
		"interval":         f.opts.DeviceInterval,
		"message":          fmt.Sprintf("To sign in, use a web browser to open the page %s and enter the code %s to authenticate.", verify, d.userCode),
	})
}

// ApproveDevice plays the person who opens the verification page, enters
// userCode and signs in as upn.
func (f *Fake) ApproveDevice(userCode, upn string) error {
	return f.decideDevice(userCode, upn, true)
}

// DenyDevice plays the person who declines the sign-in; the next poll gets
// authorization_declined.
func (f *Fake) DenyDevice(userCode string) error {
	return f.decideDevice(userCode, "", false)
}

func (f *Fake) decideDevice(userCode, upn string, approve bool) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	d := f.userCodes[strings.ToUpper(strings.TrimSpace(userCode))]
	if d == nil {
		return fmt.Errorf("fakems: device login: unknown code %q", userCode)
	}
	if !f.now().Before(d.expires) {
		return errors.New("fakems: device login: AADSTS70019: the code has expired")
	}
	if d.state != devicePending {
		return errors.New("fakems: device login: AADSTS90120: the request was already authorized or declined")
	}
	if !approve {
		d.state = deviceDenied
		return nil
	}
	if !f.users[norm(upn)] {
		return fmt.Errorf("fakems: device login: AADSTS50034: the user account %q does not exist", upn)
	}
	d.upn, d.state = norm(upn), deviceApproved
	f.grantConsentLocked(d.clientID, d.upn, d.scopes.all())
	return nil
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

// ---- Test hooks ----

// IssueAccessToken mints a delegated Outlook token for upn with all three
// mail scopes, without any token request.
func (f *Fake) IssueAccessToken(upn string) string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.mintLocked(&accessToken{upn: norm(upn), aud: audOutlook, scopes: slices.Clone(mailScopes)})
}

// IssueAppToken mints an app-only Outlook token for clientID.
func (f *Fake) IssueAppToken(clientID string) string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.mintLocked(&accessToken{clientID: clientID, app: true, aud: audOutlook, scopes: []string{scopeApp}})
}

// IssueGraphToken mints a delegated Microsoft Graph token for upn with the
// given scopes (full URIs such as ScopeGraphMailSend), without any token
// request or consent check. No scopes means Mail.Send, Mail.Send.Shared
// and Mail.ReadWrite.
func (f *Fake) IssueGraphToken(upn string, scopes ...string) string {
	if len(scopes) == 0 {
		scopes = []string{ScopeGraphMailSend, ScopeGraphMailSendShared, ScopeGraphMailReadWrite}
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.mintLocked(&accessToken{upn: norm(upn), aud: audGraph, scopes: slices.Clone(scopes)})
}

// IssueGraphAppToken mints an app-only Microsoft Graph token for clientID
// with the roles SetAppRoles gave it.
func (f *Fake) IssueGraphAppToken(clientID string) string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.mintLocked(&accessToken{clientID: clientID, app: true, aud: audGraph, scopes: []string{ScopeGraphDefault}, roles: slices.Clone(f.appRoles[clientID])})
}

// SetAppRoles sets the application permissions (RoleMailSend,
// RoleMailReadWrite) of clientID on Microsoft Graph, as an admin granting
// them with admin consent. Client-credentials tokens for
// https://graph.microsoft.com/.default minted afterwards carry them.
func (f *Fake) SetAppRoles(clientID string, roles ...string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.appRoles[clientID] = slices.Clone(roles)
}

// GrantConsent records that upn (or an admin on upn's behalf) consented to
// scopes (full URIs) for clientID, as a sign-in asking for them does.
func (f *Fake) GrantConsent(clientID, upn string, scopes ...string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	k := consentKey(clientID, upn)
	if f.consent[k] == nil {
		f.consent[k] = make(map[string]bool)
	}
	for _, sc := range scopes {
		f.consent[k][sc] = true
	}
}

// RevokeConsent withdraws upn's consent to scopes for clientID. Token
// requests that need one of them then fail with AADSTS65001.
func (f *Fake) RevokeConsent(clientID, upn string, scopes ...string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, sc := range scopes {
		delete(f.consent[consentKey(clientID, upn)], sc)
	}
}

// WithholdConsent makes sign-ins for clientID stop granting scopes, like a
// tenant where users may not consent to these permissions and no admin has.
// Simplification: the sign-in itself still succeeds for the other scopes
// (real Entra would show "Need admin approval"); a later token request for
// a withheld scope fails with AADSTS65001 consent_required. nil scopes lifts
// nothing; use GrantConsent to consent for one user anyway.
func (f *Fake) WithholdConsent(clientID string, scopes ...string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.withheld[clientID] == nil {
		f.withheld[clientID] = make(map[string]bool)
	}
	for _, sc := range scopes {
		f.withheld[clientID][sc] = true
	}
}

// ExpireAccessToken makes tok invalid from now on.
func (f *Fake) ExpireAccessToken(tok string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if at := f.access[tok]; at != nil {
		at.expired = true
	}
}

// RevokeRefreshTokens revokes every refresh token issued to upn so far
// ("Revoke sessions"): later refresh_token grants with them fail with
// 400 invalid_grant AADSTS50173. Tokens from a new sign-in work.
func (f *Fake) RevokeRefreshTokens(upn string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	upn = norm(upn)
	f.revokedAt[upn] = f.now()
	for _, rt := range f.refresh {
		if rt.upn == upn {
			rt.revoked = true
		}
	}
}

// SetTokenFault makes POST /token (all grants) misbehave until reset with
// TokenFault{}.
func (f *Fake) SetTokenFault(fault TokenFault) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.fault = fault
}

// TokenRequests returns the number of POST /token requests seen.
func (f *Fake) TokenRequests() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.tokenReqs
}

// TokenRequestsByGrant returns the POST /token requests seen by grant_type.
func (f *Fake) TokenRequestsByGrant() map[string]int {
	f.mu.Lock()
	defer f.mu.Unlock()
	m := make(map[string]int, len(f.tokenReqsByGrant))
	for k, v := range f.tokenReqsByGrant {
		m[k] = v
	}
	return m
}

// SetDeviceSlowDown makes the next n device-code polls get slow_down.
func (f *Fake) SetDeviceSlowDown(n int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.slowDown = n
}

// SetSignInUser sets who "signs in" on /authorize; "" means login_hint.
func (f *Fake) SetSignInUser(upn string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.signInUser = upn
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
