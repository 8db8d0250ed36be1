package fakems

import (
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/subtle"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"time"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapserver/imapmemserver"
	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"
	"github.com/golang-jwt/jwt/v5"
)

// Google mode (Options.Google): the fake plays Google Workspace instead of
// Microsoft 365. The identity endpoints are Google's (GET/POST
// /o/oauth2/v2/auth, POST /token under AuthorityURL) with the
// authorization-code (+PKCE, access_type=offline, prompt=consent), refresh
// and JWT bearer (service account with domain-wide delegation) grants;
// IMAP, POP3 and SMTP take tokens with the scope https://mail.google.com/
// for the token's own account only, and answer a bad token with Gmail's
// XOAUTH2 error challenge (base64 JSON) before the failure.

// GoogleMailScope is Gmail's scope for IMAP, POP and SMTP.
const GoogleMailScope = "https://mail.google.com/"

const (
	audGoogle = "https://mail.google.com"
	// googleMaxRefreshTokens: "a limit of 100 refresh tokens per Google
	// Account per OAuth 2.0 client ID"; a new one revokes the oldest.
	googleMaxRefreshTokens = 100
	// googleMaxAssertionLifetime: exp - iat of an assertion, at most an hour.
	googleMaxAssertionLifetime = time.Hour
)

// Gmail's replies.
var (
	googleIMAPAuthFailed = &imap.Error{Type: imap.StatusResponseTypeNo, Code: imap.ResponseCodeAuthenticationFailed, Text: "Invalid credentials (Failure)"}
	googleSMTPAuthFailed = &smtp.SMTPError{Code: 535, EnhancedCode: smtp.EnhancedCode{5, 7, 8}, Message: "Username and Password not accepted. For more information, go to https://support.google.com/mail/?p=BadCredentials"}
	googlePOP3AuthFailed = "-ERR [AUTH] Username and password not accepted."
	googlePOP3AuthOK     = "+OK Welcome."
)

// googleChallenge is Gmail's XOAUTH2 error challenge (before base64).
func googleChallenge() []byte {
	b, _ := json.Marshal(map[string]string{"status": "400", "schemes": "Bearer", "scope": GoogleMailScope})
	return b
}

// serviceAccount is a Google service account known to the fake.
type serviceAccount struct {
	email, clientID, keyID string
	pub                    *rsa.PublicKey
	scopes                 map[string]bool // domain-wide delegation
}

// googleState is the Google mode's directory, guarded by Fake.mu.
type googleState struct {
	serviceAccounts map[string]*serviceAccount // by email
	consented       map[string]bool            // consentKey -> the person consented once
	refreshOrder    map[string][]string        // consentKey -> refresh tokens, oldest first
	lastAuth        url.Values                 // the last authorize request's query
	refused         map[string]bool            // mailboxes whose tokens Gmail refuses (SetGoogleRefuseTokens)
	imapConns       map[string]int             // authenticated IMAP sessions per mailbox
	imapLimit       int                        // 0: GoogleIMAPMaxConnections
	pop3Forms       map[string]int             // POP3 AUTH XOAUTH2 forms seen: "one-line", "two-step"
}

// GooglePOP3AuthForms counts the POP3 AUTH XOAUTH2 commands seen by form:
// "one-line" (AUTH XOAUTH2 <base64>) and "two-step".
func (f *Fake) GooglePOP3AuthForms() map[string]int {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := map[string]int{}
	for k, v := range f.google.pop3Forms {
		out[k] = v
	}
	return out
}

// GoogleIMAPMaxConnections is Gmail's limit of simultaneous IMAP
// connections per account; the next login gets "NO [ALERT] Too many
// simultaneous connections. (Failure)".
const GoogleIMAPMaxConnections = 15

var googleIMAPTooMany = &imap.Error{Type: imap.StatusResponseTypeNo, Code: imap.ResponseCodeAlert, Text: "Too many simultaneous connections. (Failure)"}

// noChallenge is a failure sent without the XOAUTH2 error challenge: the
// token was fine.
type noChallenge struct{ error }

// SetGoogleIMAPLimit changes the per-account IMAP connection limit (tests
// use a small one); 0 restores GoogleIMAPMaxConnections.
func (f *Fake) SetGoogleIMAPLimit(n int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.google.imapLimit = n
}

// takeGoogleSlot counts an authenticated IMAP session of mailbox, or
// reports that the limit is reached.
func (s *imapSession) takeGoogleSlot(mailbox string) bool {
	f := s.f
	f.mu.Lock()
	defer f.mu.Unlock()
	f.google.init()
	limit := f.google.imapLimit
	if limit <= 0 {
		limit = GoogleIMAPMaxConnections
	}
	if f.google.imapConns[mailbox] >= limit {
		return false
	}
	f.google.imapConns[mailbox]++
	s.gslot = true
	return true
}

func (s *imapSession) releaseGoogleSlot() {
	if !s.gslot {
		return
	}
	s.f.mu.Lock()
	s.f.google.imapConns[s.mb.addr]--
	s.f.mu.Unlock()
	s.gslot = false
}

func (g *googleState) init() {
	if g.serviceAccounts == nil {
		g.serviceAccounts = map[string]*serviceAccount{}
		g.consented = map[string]bool{}
		g.refreshOrder = map[string][]string{}
		g.refused = map[string]bool{}
		g.imapConns = map[string]int{}
		g.pop3Forms = map[string]int{}
	}
}

// googleRoutes adds Google's identity endpoints.
func (f *Fake) googleRoutes(mux *http.ServeMux) {
	mux.HandleFunc("GET /o/oauth2/v2/auth", f.handleGoogleAuthPage)
	mux.HandleFunc("POST /o/oauth2/v2/auth", f.handleGoogleAuthSignIn)
	mux.HandleFunc("POST /token", f.handleGoogleToken)
	mux.HandleFunc("GET /.well-known/openid-configuration", f.handleGoogleDiscovery)
}

// handleGoogleDiscovery serves Google's OpenID discovery document
// (https://accounts.google.com/.well-known/openid-configuration), trimmed
// to the endpoints the bridge uses.
func (f *Fake) handleGoogleDiscovery(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, map[string]any{
		"issuer":                           f.AuthorityURL,
		"authorization_endpoint":           f.AuthorityURL + "/o/oauth2/v2/auth",
		"token_endpoint":                   f.GoogleTokenURL(),
		"code_challenge_methods_supported": []string{"plain", "S256"},
		"grant_types_supported":            []string{"authorization_code", "refresh_token", "urn:ietf:params:oauth:grant-type:jwt-bearer"},
	})
}

// GoogleTokenURL is the Google mode's token endpoint (the service account
// assertion's aud).
func (f *Fake) GoogleTokenURL() string { return f.AuthorityURL + "/token" }

// AddServiceAccount creates a service account and returns its JSON key,
// as Google Cloud console hands it out. Its token_uri is the fake's.
func (f *Fake) AddServiceAccount(email string) ([]byte, error) {
	k, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		return nil, err
	}
	der, err := x509.MarshalPKCS8PrivateKey(k)
	if err != nil {
		return nil, err
	}
	sum := sha256.Sum256([]byte("sa:" + email))
	sa := &serviceAccount{email: norm(email), keyID: randomToken(20), pub: &k.PublicKey, scopes: map[string]bool{},
		clientID: fmt.Sprintf("1%020d", (uint64(sum[0])<<56|uint64(sum[1])<<48|uint64(sum[2])<<40|uint64(sum[3])<<32|uint64(sum[4])<<24)%1e18)}
	f.mu.Lock()
	f.google.init()
	f.google.serviceAccounts[sa.email] = sa
	f.mu.Unlock()
	return json.MarshalIndent(map[string]string{
		"type":           "service_account",
		"project_id":     "fake-project",
		"private_key_id": sa.keyID,
		"private_key":    string(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})),
		"client_email":   sa.email,
		"client_id":      sa.clientID,
		"auth_uri":       f.AuthorityURL + "/o/oauth2/auth",
		"token_uri":      f.GoogleTokenURL(),
	}, "", "  ")
}

// AllowDomainWideDelegation grants the service account domain-wide
// delegation for scopes (Admin console > Security > API controls);
// without scopes it removes the grant.
func (f *Fake) AllowDomainWideDelegation(email string, scopes ...string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.google.init()
	if sa := f.google.serviceAccounts[norm(email)]; sa != nil {
		sa.scopes = map[string]bool{}
		for _, s := range scopes {
			sa.scopes[s] = true
		}
	}
}

// LastGoogleAuthorize returns the query of the last authorize request
// (access_type, prompt, code_challenge ...), for tests.
func (f *Fake) LastGoogleAuthorize() url.Values {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.google.lastAuth
}

// googleError is Google's token endpoint error body.
type googleError struct {
	status     int
	code, desc string
}

func gErr(status int, code, desc string) *googleError {
	return &googleError{status: status, code: code, desc: desc}
}

func writeGoogleError(w http.ResponseWriter, e *googleError) {
	writeJSON(w, e.status, map[string]string{"error": e.code, "error_description": e.desc})
}

func (f *Fake) handleGoogleToken(w http.ResponseWriter, r *http.Request) {
	_ = r.ParseForm()
	grant := r.PostForm.Get("grant_type")
	f.mu.Lock()
	f.tokenReqs++
	f.tokenReqsByGrant[grant]++
	fault := f.fault
	f.mu.Unlock()
	switch {
	case fault.Hang:
		select {
		case <-r.Context().Done():
		case <-f.done:
		}
		panic(http.ErrAbortHandler)
	case fault.Code != "":
		writeGoogleError(w, gErr(max(fault.Status, http.StatusBadRequest), fault.Code, "Injected fault."))
		return
	case fault.Status != 0:
		http.Error(w, http.StatusText(fault.Status), fault.Status)
		return
	}
	var resp *tokenResponse
	var gerr *googleError
	switch grant {
	case "urn:ietf:params:oauth:grant-type:jwt-bearer":
		resp, gerr = f.googleJWTBearer(r.PostForm.Get("assertion"))
	case GrantAuthorizationCode, GrantRefreshToken:
		a, e := f.googleClient(r)
		if e != nil {
			gerr = e
		} else if grant == GrantAuthorizationCode {
			resp, gerr = f.googleAuthCode(a, r.PostForm)
		} else {
			resp, gerr = f.googleRefresh(a, r.PostForm)
		}
	case "":
		gerr = gErr(400, "unsupported_grant_type", "Invalid grant_type: ")
	default:
		gerr = gErr(400, "unsupported_grant_type", "Invalid grant_type: "+grant)
	}
	if gerr != nil {
		f.log.Debug("fakems: google token request refused", "grant", grant, "error", gerr.code, "desc", gerr.desc)
		writeGoogleError(w, gerr)
		return
	}
	writeJSON(w, http.StatusOK, resp)
}

// googleClient checks the OAuth client: Google wants the secret even for
// a Desktop app client.
func (f *Fake) googleClient(r *http.Request) (*app, *googleError) {
	id, secret := r.PostForm.Get("client_id"), r.PostForm.Get("client_secret")
	if u, p, ok := r.BasicAuth(); ok {
		id, secret = u, p
	}
	f.mu.Lock()
	a := f.apps[id]
	f.mu.Unlock()
	if a == nil {
		return nil, gErr(401, "invalid_client", "The OAuth client was not found.")
	}
	if secret == "" || subtle.ConstantTimeCompare([]byte(secret), []byte(a.secret)) != 1 {
		return nil, gErr(401, "invalid_client", "Unauthorized")
	}
	return a, nil
}

func (f *Fake) googleAuthCode(a *app, form url.Values) (*tokenResponse, *googleError) {
	f.mu.Lock()
	defer f.mu.Unlock()
	c := f.codes[form.Get("code")]
	switch {
	case c == nil || c.clientID != a.id || c.used || !f.now().Before(c.expires):
		return nil, gErr(400, "invalid_grant", "Malformed auth code.")
	case form.Get("redirect_uri") != c.redirectURI:
		return nil, gErr(400, "redirect_uri_mismatch", "Bad Request")
	}
	if c.challenge != "" {
		sum := sha256.Sum256([]byte(form.Get("code_verifier")))
		if subtle.ConstantTimeCompare([]byte(base64.RawURLEncoding.EncodeToString(sum[:])), []byte(c.challenge)) != 1 {
			return nil, gErr(400, "invalid_grant", "Invalid code verifier.")
		}
	}
	c.used = true
	resp := &tokenResponse{
		TokenType:   "Bearer",
		Scope:       GoogleMailScope + " openid https://www.googleapis.com/auth/userinfo.email",
		ExpiresIn:   f.lifetimeSeconds(),
		AccessToken: f.mintLocked(&accessToken{upn: c.upn, clientID: a.id, aud: audGoogle, scopes: []string{GoogleMailScope}}),
		IDToken:     f.idToken(c.upn, a.id),
	}
	if c.scopes.offline { // access_type=offline with a consent screen shown
		resp.RefreshToken = f.googleNewRefreshLocked(c.upn, a.id)
	}
	return resp, nil
}

// googleNewRefreshLocked issues a refresh token; the 101st for the same
// account and client silently revokes the oldest.
func (f *Fake) googleNewRefreshLocked(upn, clientID string) string {
	rt := "1//0" + randomToken(64)
	f.refresh[rt] = &refreshToken{upn: upn, clientID: clientID, issued: f.now()}
	k := consentKey(clientID, upn)
	order := append(f.google.refreshOrder[k], rt)
	for len(order) > googleMaxRefreshTokens {
		if old := f.refresh[order[0]]; old != nil {
			old.revoked = true
		}
		order = order[1:]
	}
	f.google.refreshOrder[k] = order
	return rt
}

func (f *Fake) googleRefresh(a *app, form url.Values) (*tokenResponse, *googleError) {
	f.mu.Lock()
	defer f.mu.Unlock()
	rec := f.refresh[form.Get("refresh_token")]
	if rec == nil || rec.clientID != a.id {
		return nil, gErr(400, "invalid_grant", "Bad Request")
	}
	if rec.revoked {
		return nil, gErr(400, "invalid_grant", "Token has been expired or revoked.")
	}
	// Google does not rotate refresh tokens: the answer has none.
	return &tokenResponse{
		TokenType:   "Bearer",
		Scope:       GoogleMailScope,
		ExpiresIn:   f.lifetimeSeconds(),
		AccessToken: f.mintLocked(&accessToken{upn: rec.upn, clientID: a.id, aud: audGoogle, scopes: []string{GoogleMailScope}}),
	}, nil
}

// googleJWTBearer redeems a service account assertion: RS256 signed with
// the service account's key, iss = its email, aud = the token endpoint,
// exp - iat at most an hour, scope granted by domain-wide delegation, sub
// a user of the domain.
func (f *Fake) googleJWTBearer(assertion string) (*tokenResponse, *googleError) {
	var sa *serviceAccount
	claims := jwt.MapClaims{}
	_, err := jwt.ParseWithClaims(assertion, claims, func(t *jwt.Token) (any, error) {
		iss, _ := claims["iss"].(string)
		f.mu.Lock()
		f.google.init()
		sa = f.google.serviceAccounts[norm(iss)]
		f.mu.Unlock()
		if sa == nil {
			return nil, errors.New("unknown service account")
		}
		return sa.pub, nil
	}, jwt.WithValidMethods([]string{"RS256"}), jwt.WithAudience(f.GoogleTokenURL()), jwt.WithExpirationRequired(),
		jwt.WithIssuedAt(), jwt.WithTimeFunc(f.now), jwt.WithLeeway(time.Minute))
	switch {
	case sa == nil && err != nil:
		return nil, gErr(401, "invalid_client", "The OAuth client was not found.")
	case errors.Is(err, jwt.ErrTokenSignatureInvalid):
		return nil, gErr(400, "invalid_grant", "Invalid JWT Signature.")
	case errors.Is(err, jwt.ErrTokenExpired), errors.Is(err, jwt.ErrTokenUsedBeforeIssued):
		return nil, gErr(400, "invalid_grant", "Invalid JWT: Token must be a short-lived token (60 minutes) and in a reasonable timeframe. Check your iat and exp values in the JWT claim.")
	case errors.Is(err, jwt.ErrTokenInvalidAudience):
		return nil, gErr(400, "invalid_grant", "Invalid JWT: Failed audience check.")
	case err != nil:
		return nil, gErr(400, "invalid_grant", "Invalid JWT: "+err.Error())
	}
	iat, _ := claims.GetIssuedAt()
	exp, _ := claims.GetExpirationTime()
	if iat == nil || exp.Sub(iat.Time) > googleMaxAssertionLifetime {
		return nil, gErr(400, "invalid_grant", "Invalid JWT: Token must be a short-lived token (60 minutes) and in a reasonable timeframe. Check your iat and exp values in the JWT claim.")
	}
	scope, _ := claims["scope"].(string)
	sub, _ := claims["sub"].(string)
	f.mu.Lock()
	defer f.mu.Unlock()
	scopes := strings.Fields(scope)
	if len(scopes) == 0 {
		return nil, gErr(400, "invalid_scope", "Invalid oauth scope or ID token audience provided.")
	}
	for _, s := range scopes {
		if !sa.scopes[s] {
			return nil, gErr(401, "unauthorized_client", "Client is unauthorized to retrieve access tokens using this method, or client not authorized for any of the scopes requested.")
		}
	}
	if sub == "" || f.mailboxes[norm(sub)] == nil {
		return nil, gErr(400, "invalid_grant", "Invalid email or User ID")
	}
	return &tokenResponse{
		TokenType:   "Bearer",
		ExpiresIn:   f.lifetimeSeconds(),
		AccessToken: f.mintLocked(&accessToken{upn: norm(sub), clientID: sa.clientID, aud: audGoogle, scopes: scopes}),
	}, nil
}

// googleAuthorize validates an authorize request; a nil redirect means the
// error is shown as a page.
func (f *Fake) googleAuthorize(v url.Values) (*url.URL, string) {
	f.mu.Lock()
	a := f.apps[v.Get("client_id")]
	f.mu.Unlock()
	if a == nil {
		return nil, "invalid_client: The OAuth client was not found."
	}
	ru, err := url.Parse(v.Get("redirect_uri"))
	if err != nil || ru.Scheme != "http" || (ru.Hostname() != "127.0.0.1" && ru.Hostname() != "localhost") {
		// A Desktop app client accepts loopback redirects only.
		return nil, "redirect_uri_mismatch: You can't sign in to this app because it doesn't comply with Google's OAuth 2.0 policy."
	}
	if v.Get("response_type") != "code" {
		return ru, "unsupported_response_type"
	}
	if !slices.Contains(strings.Fields(v.Get("scope")), GoogleMailScope) {
		return ru, "invalid_scope"
	}
	return ru, ""
}

func (f *Fake) handleGoogleAuthPage(w http.ResponseWriter, r *http.Request) {
	v := r.URL.Query()
	f.mu.Lock()
	f.google.lastAuth = v
	login := f.signInUser
	f.mu.Unlock()
	ru, e := f.googleAuthorize(v)
	if e != "" {
		if ru == nil {
			renderPage(w, http.StatusBadRequest, pageData{Title: "Sign in with Google", Error: e})
			return
		}
		redirectWith(w, r, ru, url.Values{"error": {e}, "state": {v.Get("state")}})
		return
	}
	if login == "" {
		login = v.Get("login_hint")
	}
	hidden := map[string]string{}
	for _, k := range []string{"client_id", "response_type", "redirect_uri", "scope", "state", "code_challenge", "code_challenge_method", "login_hint", "prompt", "access_type"} {
		if x := v.Get(k); x != "" {
			hidden[k] = x
		}
	}
	renderPage(w, http.StatusOK, pageData{Title: "Sign in with Google", Form: true, Action: r.URL.Path, Hidden: hidden, Login: login})
}

func (f *Fake) handleGoogleAuthSignIn(w http.ResponseWriter, r *http.Request) {
	_ = r.ParseForm()
	v := r.PostForm
	ru, e := f.googleAuthorize(v)
	if e != "" {
		if ru == nil {
			renderPage(w, http.StatusBadRequest, pageData{Title: "Sign in with Google", Error: e})
			return
		}
		redirectWith(w, r, ru, url.Values{"error": {e}, "state": {v.Get("state")}})
		return
	}
	if v.Get("action") == "deny" {
		redirectWith(w, r, ru, url.Values{"error": {"access_denied"}, "state": {v.Get("state")}})
		return
	}
	upn := norm(v.Get("login"))
	f.mu.Lock()
	defer f.mu.Unlock()
	if !f.users[upn] {
		renderPage(w, http.StatusOK, pageData{Title: "Sign in with Google", Error: "Couldn't find your Google Account"})
		return
	}
	f.google.init()
	k := consentKey(v.Get("client_id"), upn)
	// Google returns a refresh token when the consent screen is shown:
	// the first time, or again with prompt=consent.
	showConsent := !f.google.consented[k] || slices.Contains(strings.Fields(v.Get("prompt")), "consent")
	f.google.consented[k] = true
	c := &authCode{clientID: v.Get("client_id"), redirectURI: v.Get("redirect_uri"), challenge: v.Get("code_challenge"),
		challengeMethod: v.Get("code_challenge_method"), upn: upn, expires: f.now().Add(authCodeLifetime)}
	c.scopes.offline = v.Get("access_type") == "offline" && showConsent
	code := "4/0" + randomToken(48)
	f.codes[code] = c
	redirectWith(w, r, ru, url.Values{"code": {code}, "state": {v.Get("state")}, "scope": {v.Get("scope")}})
}

// checkGoogleBearer checks an XOAUTH2 login as Gmail does: a known,
// unexpired token with Gmail's scope, for its own account only.
func (f *Fake) checkGoogleBearer(user, token string) bearerCheck {
	f.mu.Lock()
	defer f.mu.Unlock()
	var res bearerCheck
	at := f.access[token]
	if at == nil || at.expired || !f.now().Before(at.expires) || at.aud != audGoogle || !slices.Contains(at.scopes, GoogleMailScope) {
		return res
	}
	res.who, res.tokenOK = at.upn, true
	if f.google.refused[at.upn] {
		res.tokenOK = false
		return res
	}
	if mb := f.mailboxes[norm(user)]; mb != nil && mb.addr == at.upn {
		res.mailbox, res.mailboxOK = mb, true
	}
	return res
}

// ServeSMTPS adds an implicit-TLS submission listener (like
// smtp.gmail.com:465) to the SMTP server and returns its address. Call it
// before Close, not concurrently with it.
func (f *Fake) ServeSMTPS() (string, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", fmt.Errorf("fakems: listen: %w", err)
	}
	f.rawLns = append(f.rawLns, ln)
	tl := tls.NewListener(&trackedListener{Listener: ln, t: f.conns}, &tls.Config{Certificates: []tls.Certificate{f.cert}, MinVersion: tls.VersionTLS12})
	f.goServe("smtps", func() error { return f.smtpSrv.Serve(tl) })
	return ln.Addr().String(), nil
}

// SetGoogleRefuseTokens makes Gmail's IMAP, POP and SMTP refuse every
// token for mailbox (the account's access was removed, or IMAP/POP is off
// for it), while the token endpoint still issues them.
func (f *Fake) SetGoogleRefuseTokens(mailbox string, refuse bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.google.init()
	f.google.refused[norm(mailbox)] = refuse
}

// IssueGoogleToken mints a Gmail access token for upn, for tests.
func (f *Fake) IssueGoogleToken(upn string) string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.mintLocked(&accessToken{upn: norm(upn), aud: audGoogle, scopes: []string{GoogleMailScope}})
}

// googleSASL is the server side of Gmail's XOAUTH2: a failed check is
// answered with the JSON error challenge first.
func googleSASL(check func(user, token string, err error) error) sasl.Server {
	return &xoauth2Server{check: check, failChallenge: googleChallenge()}
}

func (s *imapSession) checkGoogleXOAUTH2(user, token string, perr error) error {
	if perr != nil {
		return googleIMAPAuthFailed
	}
	res := s.f.checkGoogleBearer(user, token)
	if !res.mailboxOK {
		s.log.Info("fakems: google imap authenticate failed", "mailbox", user, "token_ok", res.tokenOK)
		return googleIMAPAuthFailed
	}
	if !s.takeGoogleSlot(res.mailbox.addr) {
		s.log.Info("fakems: google imap connection limit", "mailbox", res.mailbox.addr)
		return noChallenge{googleIMAPTooMany}
	}
	s.mb = res.mailbox
	s.UserSession = imapmemserver.NewUserSession(res.mailbox.user)
	s.log = s.log.With("user", res.who, "mailbox", res.mailbox.addr)
	s.log.Info("fakems: google imap authenticated")
	return nil
}

func (s *smtpSession) checkGoogleXOAUTH2(user, token string, perr error) error {
	if perr != nil {
		return googleSMTPAuthFailed
	}
	res := s.f.checkGoogleBearer(user, token)
	if !res.mailboxOK {
		s.log.Info("fakems: google smtp auth failed", "mailbox", user, "token_ok", res.tokenOK)
		return googleSMTPAuthFailed
	}
	s.mailbox = res.mailbox.addr
	s.log = s.log.With("user", res.who, "mailbox", s.mailbox)
	s.log.Info("fakems: google smtp authenticated")
	return nil
}

// authGoogle is Gmail's POP3 AUTH XOAUTH2: the one-line form
// (AUTH XOAUTH2 <base64>) or two steps; a bad token gets the JSON error
// challenge, whose answer (an empty line) is followed by -ERR.
func (p *pop3Conn) authGoogle(arg string) error {
	mech, ir, _ := strings.Cut(arg, " ")
	ir = strings.TrimSpace(ir)
	switch {
	case mech == "":
		return p.writeLine("+OK\r\nXOAUTH2\r\nPLAIN\r\nOAUTHBEARER\r\n.")
	case !strings.EqualFold(mech, "XOAUTH2"):
		return p.writeLine("-ERR [AUTH] Unsupported mechanism.")
	}
	form := "one-line"
	if ir == "" {
		form = "two-step"
	}
	p.f.mu.Lock()
	p.f.google.init()
	p.f.google.pop3Forms[form]++
	p.f.mu.Unlock()
	if ir == "" {
		if err := p.writeLine("+ "); err != nil {
			return err
		}
		line, err := p.readLine()
		if err != nil {
			return err
		}
		if line == "*" {
			return p.writeLine("-ERR [AUTH] Authentication cancelled.")
		}
		ir = strings.TrimSpace(line)
	}
	var res bearerCheck
	if resp, err := base64.StdEncoding.DecodeString(ir); err == nil {
		if user, token, perr := parseXOAUTH2(resp); perr == nil {
			res = p.f.checkGoogleBearer(user, token)
		}
	}
	if !res.mailboxOK {
		p.log.Info("fakems: google pop3 auth failed", "token_ok", res.tokenOK)
		if err := p.writeLine("+ " + base64.StdEncoding.EncodeToString(googleChallenge())); err != nil {
			return err
		}
		if _, err := p.readLine(); err != nil {
			return err
		}
		return p.writeLine(googlePOP3AuthFailed)
	}
	return p.loggedIn(res, "-ERR [SYS/TEMP] Temporary system problem. Try again later.", "fakems: google pop3 authenticated", googlePOP3AuthOK)
}
