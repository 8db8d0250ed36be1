package fakems

import (
	"crypto/hmac"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/json"
	"net/url"
	"slices"
	"strings"
	"time"
)

func (f *Fake) grantClientCredentials(a *app, form url.Values) (*tokenResponse, *aadError) {
	if a.secret == "" && !f.hasCertificates(a.id) { // public client
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
