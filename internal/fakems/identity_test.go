package fakems

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"io"
	"net/http"
	"net/url"
	"os"
	"strings"
	"testing"
	"time"

	"golang.org/x/oauth2"
	"golang.org/x/oauth2/clientcredentials"

	"github.com/oauthbridge/oauthbridge/tokens"
)

func TestClientCredentials(t *testing.T) {
	t.Parallel()
	f := newFake(t, Options{})
	tests := []struct {
		name       string
		form       url.Values
		wantStatus int
		wantCode   string
		wantAADSTS int
	}{
		{"ok", url.Values{"client_id": {confApp}, "client_secret": {confSecret}, "scope": {scopeApp}}, 200, "", 0},
		{"wrong secret", url.Values{"client_id": {confApp}, "client_secret": {"nope"}, "scope": {scopeApp}}, 401, "invalid_client", 7000215},
		{"no secret", url.Values{"client_id": {confApp}, "scope": {scopeApp}}, 401, "invalid_client", 7000218},
		{"unknown client", url.Values{"client_id": {"nobody"}, "client_secret": {"x"}, "scope": {scopeApp}}, 400, "unauthorized_client", 700016},
		{"public client", url.Values{"client_id": {pubApp}, "scope": {scopeApp}}, 401, "invalid_client", 7000218},
		{"delegated scope", url.Values{"client_id": {confApp}, "client_secret": {confSecret}, "scope": {scopeIMAP}}, 400, "invalid_scope", 1002012},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			form := url.Values{"grant_type": {GrantClientCredentials}}
			for k, v := range tc.form {
				form[k] = v
			}
			st, body, _ := post(t, tokenURL(f), form)
			if tc.wantCode != "" {
				wantAADError(t, st, body, tc.wantStatus, tc.wantCode, tc.wantAADSTS)
				return
			}
			if st != 200 || body["token_type"] != "Bearer" || body["scope"] != scopeApp || body["expires_in"] != float64(3600) {
				t.Fatalf("token = %d %v", st, body)
			}
			if _, ok := body["refresh_token"]; ok {
				t.Errorf("client credentials returned a refresh token")
			}
		})
	}

	// Through x/oauth2's clientcredentials, as the tokens package will.
	cc := clientcredentials.Config{ClientID: confApp, ClientSecret: confSecret, TokenURL: tokenURL(f), Scopes: []string{scopeApp}, AuthStyle: oauth2.AuthStyleInParams}
	tok, err := cc.Token(context.Background())
	if err != nil {
		t.Fatalf("clientcredentials Token() = %v", err)
	}
	f.GrantApp(confApp, shared)
	if res := f.checkBearer(scopeIMAP, shared, tok.AccessToken); !res.tokenOK || !res.mailboxOK {
		t.Errorf("app token on granted mailbox: %+v", res)
	}
	if res := f.checkBearer(scopeIMAP, alice, tok.AccessToken); !res.tokenOK || res.mailboxOK {
		t.Errorf("app token on ungranted mailbox: %+v", res)
	}
	// HTTP Basic client authentication is accepted too.
	cc.AuthStyle = oauth2.AuthStyleInHeader
	if _, err := cc.Token(context.Background()); err != nil {
		t.Errorf("clientcredentials with Basic auth: %v", err)
	}
	if got := f.TokenRequestsByGrant()[GrantClientCredentials]; got != len(tests)+2 {
		t.Errorf("TokenRequestsByGrant()[client_credentials] = %d, want %d", got, len(tests)+2)
	}
}

func TestDeviceCodeFlow(t *testing.T) {
	t.Parallel()
	clock := &testClock{t: time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)}
	f := newFake(t, Options{Now: clock.Now, DeviceCodeLifetime: 5 * time.Minute})
	dcURL := f.AuthorityURL + "/" + tenant + "/oauth2/v2.0/devicecode"

	start := func(t *testing.T) (deviceCode, userCode string) {
		t.Helper()
		st, body, _ := post(t, dcURL, url.Values{"client_id": {pubApp}, "scope": {allScopes}})
		if st != 200 {
			t.Fatalf("devicecode = %d %v", st, body)
		}
		userCode, _ = body["user_code"].(string)
		if len(userCode) != 8 || body["verification_uri"] != f.AuthorityURL+"/devicelogin" ||
			body["expires_in"] != float64(300) || body["interval"] != float64(1) || !strings.Contains(body["message"].(string), userCode) {
			t.Fatalf("devicecode body = %v", body)
		}
		return body["device_code"].(string), userCode
	}
	poll := func(t *testing.T, dc string) (int, map[string]any) {
		t.Helper()
		st, body, _ := post(t, tokenURL(f), url.Values{"grant_type": {GrantDeviceCode}, "client_id": {pubApp}, "device_code": {dc}})
		return st, body
	}

	t.Run("pending, slow_down, approve, reuse", func(t *testing.T) {
		dc, uc := start(t)
		st, body := poll(t, dc)
		wantAADError(t, st, body, 400, "authorization_pending", 70016)
		f.SetDeviceSlowDown(1)
		st, body = poll(t, dc)
		wantAADError(t, st, body, 400, "slow_down", 0)
		st, body = poll(t, dc)
		wantAADError(t, st, body, 400, "authorization_pending", 70016)
		if err := f.ApproveDevice(strings.ToLower(uc), bob); err != nil {
			t.Fatalf("ApproveDevice() = %v", err)
		}
		st, body = poll(t, dc)
		if st != 200 || body["access_token"] == "" || body["refresh_token"] == nil || body["id_token"] == nil {
			t.Fatalf("approved poll = %d %v", st, body)
		}
		if want := scopeIMAP + " " + scopePOP + " " + scopeSMTP; body["scope"] != want {
			t.Errorf("scope = %q, want %q", body["scope"], want)
		}
		claims := jwtClaims(t, body["id_token"].(string))
		if claims["preferred_username"] != bob || claims["upn"] != bob || claims["email"] != bob || claims["aud"] != pubApp || claims["tid"] != f.TenantID || claims["oid"] == "" || claims["name"] != "bob" {
			t.Errorf("id_token claims = %v", claims)
		}
		if exp, _ := claims["exp"].(float64); int64(exp) <= clock.Now().Unix() {
			t.Errorf("id_token exp = %v, not in the future", claims["exp"])
		}
		st, body = poll(t, dc)
		wantAADError(t, st, body, 400, "invalid_grant", 90120)
		if err := f.ApproveDevice(uc, bob); err == nil {
			t.Errorf("second ApproveDevice() = nil, want error")
		}
	})
	t.Run("declined", func(t *testing.T) {
		dc, uc := start(t)
		if err := f.DenyDevice(uc); err != nil {
			t.Fatalf("DenyDevice() = %v", err)
		}
		st, body := poll(t, dc)
		wantAADError(t, st, body, 400, "authorization_declined", 65004)
	})
	t.Run("expired", func(t *testing.T) {
		dc, uc := start(t)
		clock.Advance(5*time.Minute + time.Second)
		st, body := poll(t, dc)
		wantAADError(t, st, body, 400, "expired_token", 70019)
		if err := f.ApproveDevice(uc, bob); err == nil {
			t.Errorf("ApproveDevice() on expired code = nil, want error")
		}
	})
	t.Run("unknown user or code", func(t *testing.T) {
		_, uc := start(t)
		if err := f.ApproveDevice(uc, "mallory@contoso.com"); err == nil {
			t.Errorf("ApproveDevice(unknown user) = nil, want error")
		}
		if err := f.ApproveDevice("ZZZZZZZZ", bob); err == nil {
			t.Errorf("ApproveDevice(unknown code) = nil, want error")
		}
	})
	t.Run("bad scope", func(t *testing.T) {
		st, body, _ := post(t, dcURL, url.Values{"client_id": {pubApp}, "scope": {"https://graph.microsoft.com/Mail.Read offline_access"}})
		wantAADError(t, st, body, 400, "invalid_scope", 70011)
		st, body, _ = post(t, dcURL, url.Values{"client_id": {"nope"}, "scope": {scopeIMAP}})
		wantAADError(t, st, body, 400, "unauthorized_client", 700016)
	})
	t.Run("devicelogin page", func(t *testing.T) {
		dc, uc := start(t)
		resp, err := http.Get(f.AuthorityURL + "/devicelogin?code=" + uc)
		if err != nil {
			t.Fatal(err)
		}
		page, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if !strings.Contains(string(page), `id="signin"`) || !strings.Contains(string(page), `value="`+uc+`"`) {
			t.Fatalf("devicelogin page lacks the form: %s", page)
		}
		st, _, _ := post(t, f.AuthorityURL+"/devicelogin", url.Values{"otc": {uc}, "login": {alice}, "action": {"signin"}})
		if st != 200 {
			t.Fatalf("devicelogin POST = %d", st)
		}
		st, body := poll(t, dc)
		if st != 200 {
			t.Fatalf("poll after page sign-in = %d %v", st, body)
		}
		claims := jwtClaims(t, body["id_token"].(string))
		if claims["upn"] != alice {
			t.Errorf("signed in as %v, want %s", claims["upn"], alice)
		}
	})
}

// The device flow through x/oauth2, as `oauthbridge login` will run it.
func TestDeviceCodeFlowOAuth2(t *testing.T) {
	t.Parallel()
	f := newFake(t, Options{})
	cfg := &oauth2.Config{ClientID: pubApp, Endpoint: f.Endpoint(tenant), Scopes: strings.Fields(allScopes)}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	da, err := cfg.DeviceAuth(ctx)
	if err != nil {
		t.Fatalf("DeviceAuth() = %v", err)
	}
	if err := f.ApproveDevice(da.UserCode, alice); err != nil {
		t.Fatalf("ApproveDevice() = %v", err)
	}
	tok, err := cfg.DeviceAccessToken(ctx, da)
	if err != nil {
		t.Fatalf("DeviceAccessToken() = %v", err)
	}
	if tok.RefreshToken == "" || tok.Extra("id_token") == nil {
		t.Fatalf("token lacks refresh or id token: %+v", tok)
	}

	// A declined login surfaces as a RetrieveError with the Entra code.
	da, err = cfg.DeviceAuth(ctx)
	if err != nil {
		t.Fatalf("DeviceAuth() = %v", err)
	}
	if err := f.DenyDevice(da.UserCode); err != nil {
		t.Fatal(err)
	}
	_, err = cfg.DeviceAccessToken(ctx, da)
	var re *oauth2.RetrieveError
	if !errors.As(err, &re) || re.ErrorCode != "authorization_declined" {
		t.Fatalf("DeviceAccessToken() after deny = %v, want authorization_declined", err)
	}
}

func TestRefreshToken(t *testing.T) {
	t.Parallel()
	// A frozen clock: revocation must not depend on time moving.
	clock := &testClock{t: time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)}
	f := newFake(t, Options{Now: clock.Now})
	first := deviceLogin(t, f, alice, allScopes)
	rt1 := first["refresh_token"].(string)

	refresh := func(rt, scope string) (int, map[string]any) {
		form := url.Values{"grant_type": {GrantRefreshToken}, "client_id": {pubApp}, "refresh_token": {rt}}
		if scope != "" {
			form.Set("scope", scope)
		}
		st, body, _ := post(t, tokenURL(f), form)
		return st, body
	}

	st, second := refresh(rt1, "")
	if st != 200 {
		t.Fatalf("refresh = %d %v", st, second)
	}
	rt2, _ := second["refresh_token"].(string)
	if rt2 == "" || rt2 == rt1 {
		t.Fatalf("refresh did not rotate: old %q new %q", rt1, rt2)
	}
	if second["access_token"] == first["access_token"] {
		t.Errorf("refresh returned the same access token")
	}
	// Microsoft does not revoke the old refresh token on use.
	if st, body := refresh(rt1, ""); st != 200 {
		t.Errorf("old refresh token after rotation = %d %v, want 200", st, body)
	}
	// A subset of the granted scopes is fine; more is not.
	if st, body := refresh(rt2, scopeSMTP+" offline_access"); st != 200 || body["scope"] != scopeSMTP {
		t.Errorf("refresh with subset scope = %d %v", st, body)
	}
	smtpOnly := deviceLogin(t, f, bob, scopeSMTP+" offline_access")
	if _, ok := smtpOnly["id_token"]; ok {
		t.Errorf("id_token issued without openid")
	}
	st, body := refresh(smtpOnly["refresh_token"].(string), scopeIMAP)
	wantAADError(t, st, body, 400, "invalid_grant", 65001)
	// Another client cannot use the refresh token.
	st, body, _ = post(t, tokenURL(f), url.Values{"grant_type": {GrantRefreshToken}, "client_id": {confApp}, "client_secret": {confSecret}, "refresh_token": {rt2}})
	wantAADError(t, st, body, 400, "invalid_grant", 9002313)
	// Without offline_access there is no refresh token.
	noOffline := deviceLogin(t, f, bob, scopeIMAP)
	if _, ok := noOffline["refresh_token"]; ok {
		t.Errorf("refresh token issued without offline_access")
	}

	// Revocation kills every refresh token issued so far, in Entra's shape.
	f.RevokeRefreshTokens(alice)
	for _, rt := range []string{rt1, rt2} {
		st, body := refresh(rt, "")
		wantAADError(t, st, body, 400, "invalid_grant", 50173)
	}
	// ... but a new sign-in works.
	fresh := deviceLogin(t, f, alice, allScopes)
	if st, body := refresh(fresh["refresh_token"].(string), ""); st != 200 {
		t.Errorf("refresh after re-login = %d %v", st, body)
	}
	// bob was not revoked.
	if st, _ := refresh(smtpOnly["refresh_token"].(string), ""); st != 200 {
		t.Errorf("unrevoked user's refresh = %d", st)
	}
}

func TestAuthCodePKCE(t *testing.T) {
	t.Parallel()
	clock := &testClock{t: time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)}
	f := newFake(t, Options{Now: clock.Now})
	const redirect = "http://localhost:8400/callback"
	cfg := &oauth2.Config{ClientID: pubApp, Endpoint: f.Endpoint(tenant), RedirectURL: redirect, Scopes: strings.Fields(allScopes)}

	// signIn loads the authorize page, checks the prefilled user, submits
	// the form as login, and returns the redirect's query.
	signIn := func(t *testing.T, verifier, login, wantPrefill string, extra ...oauth2.AuthCodeOption) url.Values {
		t.Helper()
		opts := append([]oauth2.AuthCodeOption{oauth2.S256ChallengeOption(verifier)}, extra...)
		authURL := cfg.AuthCodeURL("st4te", opts...)
		resp, err := noRedirect.Get(authURL)
		if err != nil {
			t.Fatal(err)
		}
		page, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 || !strings.Contains(string(page), `id="signin"`) {
			t.Fatalf("authorize page = %d %s", resp.StatusCode, page)
		}
		if !strings.Contains(string(page), `name="login" type="email" value="`+wantPrefill+`"`) {
			t.Errorf("authorize page does not prefill %q: %s", wantPrefill, page)
		}
		u, _ := url.Parse(authURL)
		form := url.Values{"login": {login}, "action": {"signin"}}
		for k, v := range u.Query() {
			form[k] = v
		}
		resp, err = noRedirect.PostForm(f.AuthorityURL+u.Path, form)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusFound {
			t.Fatalf("sign-in POST = %d, want 302", resp.StatusCode)
		}
		loc, err := url.Parse(resp.Header.Get("Location"))
		if err != nil || !strings.HasPrefix(loc.String(), redirect+"?") {
			t.Fatalf("redirect to %q", resp.Header.Get("Location"))
		}
		if loc.Query().Get("state") != "st4te" {
			t.Errorf("state = %q", loc.Query().Get("state"))
		}
		return loc.Query()
	}
	redeem := func(code, verifier, redirectURI string) (int, map[string]any) {
		st, body, _ := post(t, tokenURL(f), url.Values{"grant_type": {GrantAuthorizationCode}, "client_id": {pubApp}, "code": {code}, "redirect_uri": {redirectURI}, "code_verifier": {verifier}})
		return st, body
	}

	t.Run("ok and reuse", func(t *testing.T) {
		v := oauth2.GenerateVerifier()
		q := signIn(t, v, alice, alice, oauth2.SetAuthURLParam("login_hint", alice))
		tok, err := cfg.Exchange(context.Background(), q.Get("code"), oauth2.VerifierOption(v))
		if err != nil {
			t.Fatalf("Exchange() = %v", err)
		}
		if tok.RefreshToken == "" {
			t.Errorf("no refresh token")
		}
		if c := jwtClaims(t, tok.Extra("id_token").(string)); c["upn"] != alice {
			t.Errorf("id_token upn = %v", c["upn"])
		}
		st, body := redeem(q.Get("code"), v, redirect)
		wantAADError(t, st, body, 400, "invalid_grant", 54005)
	})
	t.Run("SetSignInUser prefill", func(t *testing.T) {
		f.SetSignInUser(bob)
		defer f.SetSignInUser("")
		v := oauth2.GenerateVerifier()
		q := signIn(t, v, bob, bob, oauth2.SetAuthURLParam("login_hint", alice))
		if st, body := redeem(q.Get("code"), v, redirect); st != 200 || jwtClaims(t, body["id_token"].(string))["upn"] != bob {
			t.Errorf("redeem = %d %v", st, body)
		}
	})
	t.Run("wrong verifier", func(t *testing.T) {
		q := signIn(t, oauth2.GenerateVerifier(), alice, "")
		st, body := redeem(q.Get("code"), oauth2.GenerateVerifier(), redirect)
		wantAADError(t, st, body, 400, "invalid_grant", 501481)
	})
	t.Run("redirect mismatch", func(t *testing.T) {
		v := oauth2.GenerateVerifier()
		q := signIn(t, v, alice, "")
		st, body := redeem(q.Get("code"), v, "http://localhost:9999/other")
		wantAADError(t, st, body, 400, "invalid_grant", 500112)
	})
	t.Run("expired code", func(t *testing.T) {
		v := oauth2.GenerateVerifier()
		q := signIn(t, v, alice, "")
		clock.Advance(11 * time.Minute)
		st, body := redeem(q.Get("code"), v, redirect)
		wantAADError(t, st, body, 400, "invalid_grant", 70008)
	})
	t.Run("unknown user", func(t *testing.T) {
		q := signIn(t, oauth2.GenerateVerifier(), "mallory@contoso.com", "")
		if q.Get("error") != "access_denied" || q.Get("code") != "" {
			t.Errorf("unknown user redirect = %v, want error=access_denied", q)
		}
	})
}

func TestTokenFaults(t *testing.T) {
	t.Parallel()
	f := newFake(t, Options{})
	form := url.Values{"grant_type": {GrantClientCredentials}, "client_id": {confApp}, "client_secret": {confSecret}, "scope": {scopeApp}}

	f.SetTokenFault(TokenFault{Status: 503})
	st, body, hdr := post(t, tokenURL(f), form)
	if st != 503 || body != nil || hdr.Get("Retry-After") == "" {
		t.Errorf("503 fault = %d %v Retry-After=%q", st, body, hdr.Get("Retry-After"))
	}
	f.SetTokenFault(TokenFault{Status: 500})
	if st, _, _ := post(t, tokenURL(f), form); st != 500 {
		t.Errorf("500 fault = %d", st)
	}
	f.SetTokenFault(TokenFault{Code: "invalid_grant", AADSTS: 70008})
	st, body, _ = post(t, tokenURL(f), form)
	wantAADError(t, st, body, 400, "invalid_grant", 70008)
	f.SetTokenFault(TokenFault{Code: "temporarily_unavailable", AADSTS: 90055, Status: 429})
	st, body, _ = post(t, tokenURL(f), form)
	wantAADError(t, st, body, 429, "temporarily_unavailable", 90055)

	f.SetTokenFault(TokenFault{Hang: true})
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	cc := clientcredentials.Config{ClientID: confApp, ClientSecret: confSecret, TokenURL: tokenURL(f), Scopes: []string{scopeApp}, AuthStyle: oauth2.AuthStyleInParams}
	start := time.Now()
	if _, err := cc.Token(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("hanging Token() = %v, want deadline exceeded", err)
	}
	if d := time.Since(start); d < 150*time.Millisecond {
		t.Errorf("hanging request returned after %v", d)
	}

	f.SetTokenFault(TokenFault{})
	if _, err := cc.Token(context.Background()); err != nil {
		t.Errorf("Token() after reset = %v", err)
	}
	if got := f.TokenRequests(); got != 6 {
		t.Errorf("TokenRequests() = %d, want 6", got)
	}
}

// A hanging token request must not keep Close from returning.
func TestCloseEndsHangingRequest(t *testing.T) {
	t.Parallel()
	f, err := Start(Options{})
	if err != nil {
		t.Fatal(err)
	}
	f.AddApp(confApp, confSecret)
	f.SetTokenFault(TokenFault{Hang: true})
	errc := make(chan error, 1)
	go func() {
		_, err := http.PostForm(tokenURL(f), url.Values{"grant_type": {GrantClientCredentials}})
		errc <- err
	}()
	for f.TokenRequests() == 0 {
		time.Sleep(5 * time.Millisecond)
	}
	done := make(chan error, 1)
	go func() { done <- f.Close() }()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("Close() = %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Close() blocked by a hanging token request")
	}
	if err := <-errc; err == nil {
		t.Errorf("hanging request got an answer after Close")
	}
}

func TestTokenExpiryAndIntrospect(t *testing.T) {
	t.Parallel()
	clock := &testClock{t: time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)}
	f := newFake(t, Options{Now: clock.Now, AccessTokenLifetime: 30 * time.Second})
	tok := deviceLogin(t, f, alice, allScopes)
	if tok["expires_in"] != float64(30) {
		t.Errorf("expires_in = %v, want 30", tok["expires_in"])
	}
	at := tok["access_token"].(string)
	introspect := func(token string) map[string]any {
		st, body, _ := post(t, f.AuthorityURL+"/introspect", url.Values{"token": {token}})
		if st != 200 {
			t.Fatalf("introspect = %d", st)
		}
		return body
	}
	if b := introspect(at); b["active"] != true || b["username"] != alice || b["client_id"] != pubApp {
		t.Errorf("introspect(valid) = %v", b)
	}
	if res := f.checkBearer(scopeIMAP, alice, at); !res.mailboxOK {
		t.Errorf("fresh token rejected: %+v", res)
	}
	clock.Advance(31 * time.Second)
	if b := introspect(at); b["active"] != false {
		t.Errorf("introspect(expired) = %v", b)
	}
	if res := f.checkBearer(scopeIMAP, alice, at); res.tokenOK {
		t.Errorf("expired token accepted")
	}
	manual := f.IssueAccessToken(alice)
	f.ExpireAccessToken(manual)
	if b := introspect(manual); b["active"] != false {
		t.Errorf("introspect(ExpireAccessToken) = %v", b)
	}
	if b := introspect("garbage"); b["active"] != false || len(b) != 1 {
		t.Errorf("introspect(garbage) = %v", b)
	}
}

func TestAdminConsent(t *testing.T) {
	t.Parallel()
	f := newFake(t, Options{})
	for _, path := range []string{"/organizations/v2.0/adminconsent", "/" + tenant + "/adminconsent"} {
		u := f.AuthorityURL + path + "?" + url.Values{"client_id": {confApp}, "redirect_uri": {"http://localhost:8400/consent"}, "state": {"xyz"}, "scope": {scopeApp}}.Encode()
		resp, err := noRedirect.Get(u)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		loc, _ := url.Parse(resp.Header.Get("Location"))
		if resp.StatusCode != http.StatusFound || loc.Query().Get("admin_consent") != "True" || loc.Query().Get("tenant") != f.TenantID || loc.Query().Get("state") != "xyz" {
			t.Errorf("GET %s = %d Location %q", path, resp.StatusCode, loc)
		}
	}
}

func TestCA(t *testing.T) {
	t.Parallel()
	f := newFake(t, Options{})
	path := t.TempDir() + "/ca.pem"
	if err := f.WriteCAFile(path); err != nil {
		t.Fatalf("WriteCAFile() = %v", err)
	}
	b, err := os.ReadFile(path)
	if err != nil || !bytes.Equal(b, f.CAPEM) {
		t.Fatalf("CA file = %q, %v", b, err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(b) {
		t.Fatal("CA file does not parse")
	}
	for _, name := range []string{"localhost", "127.0.0.1"} {
		conn, err := tls.Dial("tcp", f.POP3Addr, &tls.Config{RootCAs: pool, ServerName: name})
		if err != nil {
			t.Errorf("TLS to POP3 as %s: %v", name, err)
			continue
		}
		conn.Close()
	}
	if _, err := tls.Dial("tcp", f.IMAPAddr, &tls.Config{ServerName: "127.0.0.1"}); err == nil {
		t.Errorf("TLS without the fake CA succeeded")
	}
}

// TestMultiResourceConsent signs in once for Outlook and Graph scopes and
// redeems the same refresh token per resource, as Entra allows.
func TestMultiResourceConsent(t *testing.T) {
	t.Parallel()
	f := newFake(t, Options{})
	both := scopeIMAP + " " + scopeSMTP + " " + ScopeGraphMailSend + " " + ScopeGraphMailReadWrite + " offline_access openid"
	f.WithholdConsent(pubApp, ScopeGraphMailSendShared)
	first := deviceLogin(t, f, alice, both+" "+ScopeGraphMailSendShared)
	// The token is for the first scope's resource.
	if first["scope"] != scopeIMAP+" "+scopeSMTP {
		t.Errorf("first token scope = %v, want the Outlook scopes", first["scope"])
	}
	rt := first["refresh_token"].(string)
	refresh := func(scope string) (int, map[string]any) {
		st, body, _ := post(t, tokenURL(f), url.Values{"grant_type": {GrantRefreshToken}, "client_id": {pubApp}, "refresh_token": {rt}, "scope": {scope}})
		return st, body
	}
	st, g := refresh(ScopeGraphMailSend + " " + ScopeGraphMailReadWrite + " offline_access")
	if st != 200 || g["scope"] != ScopeGraphMailSend+" "+ScopeGraphMailReadWrite {
		t.Fatalf("refresh for Graph = %d %v", st, g)
	}
	graphTok := g["access_token"].(string)
	if st, body := sendMIME(t, f, "me", graphTok, graphMsg); st != 202 {
		t.Errorf("sendMail with the refreshed Graph token = %d %v", st, body)
	}
	// The Graph token does not open IMAP; the Outlook one does not work on Graph.
	if res := f.checkBearer(scopeIMAP, alice, graphTok); res.tokenOK {
		t.Error("Graph token accepted by IMAP")
	}
	st, body := sendMIME(t, f, "me", first["access_token"].(string), graphMsg)
	wantGraphError(t, st, body, 401, "InvalidAuthenticationToken", "Access token validation failure. Invalid audience.")

	// Two resources in a refresh: the first scope's resource wins.
	st, o := refresh(scopeSMTP + " " + ScopeGraphMailSend)
	if st != 200 || o["scope"] != scopeSMTP {
		t.Errorf("mixed refresh = %d %v, want an Outlook token", st, o)
	}
	// The withheld permission: consent_required, in Entra's shape.
	st, body = refresh(ScopeGraphMailSend + " " + ScopeGraphMailSendShared)
	wantAADError(t, st, body, 400, "invalid_grant", 65001)
	if body["suberror"] != "consent_required" {
		t.Errorf("suberror = %v", body["suberror"])
	}
	// .default gives the consented Graph scopes.
	st, d := refresh(ScopeGraphDefault)
	if st != 200 || d["scope"] != ScopeGraphMailSend+" "+ScopeGraphMailReadWrite {
		t.Errorf(".default = %d %v", st, d)
	}
	// An admin grants it for alice; revoking takes it away again.
	f.GrantConsent(pubApp, alice, ScopeGraphMailSendShared)
	if st, body := refresh(ScopeGraphMailSendShared); st != 200 {
		t.Errorf("after GrantConsent = %d %v", st, body)
	}
	f.RevokeConsent(pubApp, alice, ScopeGraphMailSend)
	st, body = refresh(ScopeGraphMailSend)
	wantAADError(t, st, body, 400, "invalid_grant", 65001)

	// An Outlook-only sign-in has no Graph consent.
	bobTok := deviceLogin(t, f, bob, scopeSMTP+" offline_access")
	st, body, _ = post(t, tokenURL(f), url.Values{"grant_type": {GrantRefreshToken}, "client_id": {pubApp}, "refresh_token": {bobTok["refresh_token"].(string)}, "scope": {ScopeGraphMailSend}})
	wantAADError(t, st, body, 400, "invalid_grant", 65001)

	// Unknown Graph permissions are invalid scopes for the fake.
	st, body, _ = post(t, f.AuthorityURL+"/"+tenant+"/oauth2/v2.0/devicecode", url.Values{"client_id": {pubApp}, "scope": {"https://graph.microsoft.com/Calendars.Read"}})
	wantAADError(t, st, body, 400, "invalid_scope", 70011)
}

// TestAuthCodeBothResources: the /authorize leg may ask for both
// resources; the code redeems for the first one.
func TestAuthCodeBothResources(t *testing.T) {
	t.Parallel()
	f := newFake(t, Options{})
	redirect := "http://localhost:8400/callback"
	cfg := &oauth2.Config{ClientID: pubApp, Endpoint: f.Endpoint(tenant), RedirectURL: redirect,
		Scopes: []string{ScopeGraphMailSend, scopeSMTP, "offline_access"}}
	verifier := oauth2.GenerateVerifier()
	authURL := cfg.AuthCodeURL("st", oauth2.S256ChallengeOption(verifier), oauth2.SetAuthURLParam("login_hint", alice))
	u, _ := url.Parse(authURL)
	form := u.Query()
	form.Set("login", alice)
	form.Set("action", "signin")
	resp, err := noRedirect.PostForm(f.AuthorityURL+u.Path, form)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	loc, _ := url.Parse(resp.Header.Get("Location"))
	code := loc.Query().Get("code")
	if code == "" {
		t.Fatalf("no code in %v", loc)
	}
	tok, err := cfg.Exchange(t.Context(), code, oauth2.VerifierOption(verifier))
	if err != nil {
		t.Fatalf("Exchange() = %v", err)
	}
	if tok.Extra("scope") != ScopeGraphMailSend {
		t.Errorf("code token scope = %v, want Graph (the first scope)", tok.Extra("scope"))
	}
	st, o, _ := post(t, tokenURL(f), url.Values{"grant_type": {GrantRefreshToken}, "client_id": {pubApp}, "refresh_token": {tok.RefreshToken}, "scope": {scopeSMTP}})
	if st != 200 || o["scope"] != scopeSMTP {
		t.Errorf("refresh for Outlook = %d %v", st, o)
	}
	c := dialSMTP(t, f)
	if err := c.Auth(tokens.NewXOAUTH2Client(alice, o["access_token"].(string))); err != nil {
		t.Errorf("SMTP AUTH with the Outlook token = %v", err)
	}
}
