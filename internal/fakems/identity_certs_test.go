package fakems

import (
	"crypto/sha1"
	"crypto/sha256"
	"encoding/base64"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/oauthbridge/oauthbridge/internal/certgen"
	"github.com/oauthbridge/oauthbridge/tokens"
)

const certApp = "cert-app"

// TestClientAssertion checks the fake's verification of certificate client
// assertions, each failure with its AADSTS code.
func TestClientAssertion(t *testing.T) {
	clock := &testClock{t: time.Now()}
	f := newFake(t, Options{Now: clock.Now})
	f.AddApp(certApp, "")
	reg, regKey, err := certgen.New(certgen.Options{CommonName: "registered", Bits: 2048, Lifetime: 24 * time.Hour, Now: clock.Now()})
	if err != nil {
		t.Fatal(err)
	}
	other, otherKey, err := certgen.New(certgen.Options{CommonName: "other", Bits: 2048, Lifetime: 24 * time.Hour, Now: clock.Now()})
	if err != nil {
		t.Fatal(err)
	}
	f.RegisterCertificate(certApp, reg)
	aud := tokenURL(f)
	claims := func() tokens.AssertionClaims {
		now := clock.Now()
		return tokens.AssertionClaims{Audience: aud, ClientID: certApp, ID: randomToken(8), IssuedAt: now, NotBefore: now, Expires: now.Add(5 * time.Minute)}
	}
	send := func(assertion string, extra url.Values) (int, map[string]any) {
		form := url.Values{"grant_type": {GrantClientCredentials}, "client_id": {certApp}, "scope": {scopeApp},
			"client_assertion_type": {clientAssertionType}, "client_assertion": {assertion}}
		for k, v := range extra {
			form[k] = v
		}
		code, body, _ := post(t, aud, form)
		return code, body
	}
	must := func(s string, err error) string {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
		return s
	}

	good := must(tokens.SignClientAssertion(reg, regKey, "PS256", claims()))
	if code, body := send(good, nil); code != 200 || body["access_token"] == nil {
		t.Fatalf("good assertion: %d %v", code, body)
	}
	if n := f.ReusedAssertions(); n != 0 {
		t.Fatalf("ReusedAssertions() = %d after one assertion", n)
	}
	// Sent again before its exp: accepted, as Entra does, and counted.
	if code, body := send(good, nil); code != 200 || body["access_token"] == nil {
		t.Fatalf("the same assertion again: %d %v", code, body)
	}
	if n := f.ReusedAssertions(); n != 1 {
		t.Fatalf("ReusedAssertions() = %d, want 1", n)
	}

	code, body := send(must(tokens.SignClientAssertion(reg, regKey, "PS256", tokens.AssertionClaims{Audience: aud, ClientID: certApp,
		IssuedAt: clock.Now(), NotBefore: clock.Now(), Expires: clock.Now().Add(5 * time.Minute)})), nil)
	wantAADError(t, code, body, 401, "invalid_client", aadstsInvalidJWT) // no jti

	code, body = send(must(tokens.SignClientAssertion(other, otherKey, "RS256", claims())), nil)
	wantAADError(t, code, body, 401, "invalid_client", aadstsCertKey) // not registered

	// x5t (SHA-1) only, as ADFS-era clients send: found; signed by another key: refused.
	hdrOnly := func(key any, c tokens.AssertionClaims) string {
		tok := jwt.NewWithClaims(jwt.SigningMethodRS256, jwt.MapClaims{"aud": c.Audience, "iss": c.ClientID, "sub": c.ClientID, "jti": c.ID, "nbf": c.NotBefore.Unix(), "exp": c.Expires.Unix()})
		s1 := sha1.Sum(reg.Raw)
		tok.Header["x5t"] = base64.RawURLEncoding.EncodeToString(s1[:])
		return must(tok.SignedString(key))
	}
	if code, body := send(hdrOnly(regKey, claims()), nil); code != 200 {
		t.Fatalf("x5t only: %d %v", code, body)
	}
	code, body = send(hdrOnly(otherKey, claims()), nil)
	wantAADError(t, code, body, 401, "invalid_client", aadstsCertKey) // signature does not verify

	c := claims()
	c.Audience = f.AuthorityURL + "/other-tenant/oauth2/v2.0/token"
	code, body = send(must(tokens.SignClientAssertion(reg, regKey, "RS256", c)), nil)
	wantAADError(t, code, body, 401, "invalid_client", aadstsInvalidJWT) // wrong audience

	c = claims()
	c.ClientID = "someone-else"
	code, body = send(must(tokens.SignClientAssertion(reg, regKey, "RS256", c)), nil)
	wantAADError(t, code, body, 401, "invalid_client", aadstsInvalidJWT) // iss/sub not the client

	c = claims()
	c.NotBefore, c.Expires = c.NotBefore.Add(-time.Hour), c.Expires.Add(-time.Hour)
	code, body = send(must(tokens.SignClientAssertion(reg, regKey, "RS256", c)), nil)
	wantAADError(t, code, body, 401, "invalid_client", aadstsAssertTime) // expired assertion

	c = claims()
	c.NotBefore, c.Expires = c.NotBefore.Add(time.Hour), c.Expires.Add(time.Hour)
	code, body = send(must(tokens.SignClientAssertion(reg, regKey, "RS256", c)), nil)
	wantAADError(t, code, body, 401, "invalid_client", aadstsAssertTime) // not yet valid

	// A secret for a certificate-only app is a wrong secret.
	code, body, _ = post(t, aud, url.Values{"grant_type": {GrantClientCredentials}, "client_id": {certApp}, "scope": {scopeApp}, "client_secret": {"x"}})
	wantAADError(t, code, body, 401, "invalid_client", 7000215)
	code, body, _ = post(t, aud, url.Values{"grant_type": {GrantClientCredentials}, "client_id": {certApp}, "scope": {scopeApp}})
	wantAADError(t, code, body, 401, "invalid_client", 7000218)

	// HS256 (a MAC, keyed with anything) naming the certificate: refused.
	hs := jwt.NewWithClaims(jwt.SigningMethodHS256, jwt.MapClaims{"aud": aud, "iss": certApp, "sub": certApp, "jti": "hs", "exp": clock.Now().Add(time.Minute).Unix()})
	s256 := sha256.Sum256(reg.Raw)
	hs.Header["x5t#S256"] = base64.RawURLEncoding.EncodeToString(s256[:])
	code, body = send(must(hs.SignedString(reg.Raw)), nil)
	wantAADError(t, code, body, 401, "invalid_client", aadstsUnsupportAlg)

	// The registered certificate expires: its key is expired.
	clock.Advance(25 * time.Hour)
	code, body = send(must(tokens.SignClientAssertion(reg, regKey, "RS256", claims())), nil)
	wantAADError(t, code, body, 401, "invalid_client", aadstsCertKey)
	if d, _ := body["error_description"].(string); !strings.Contains(d, "The key used is expired") {
		t.Errorf("description %q", d)
	}
}
