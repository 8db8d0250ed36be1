package fakems

import (
	"context"
	"crypto/sha256"
	"crypto/tls"
	"encoding/base64"
	"encoding/json"
	"errors"
	"net"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"golang.org/x/oauth2"
	"golang.org/x/oauth2/jwt"

	"github.com/oauthbridge/oauthbridge/tokens"
)

func newGoogleFake(t *testing.T) *Fake {
	t.Helper()
	f := newFake(t, Options{Google: true})
	if err := f.Deliver(alice, []byte("Subject: g\r\n\r\nbody\r\n")); err != nil {
		t.Fatal(err)
	}
	return f
}

func TestGoogleTranscripts(t *testing.T) {
	t.Parallel()
	f := newGoogleFake(t)
	vars := map[string]string{
		"BAD":          tokens.XOAUTH2Base64(alice, "ya29.not-a-token"),
		"ALICE":        tokens.XOAUTH2Base64(alice, f.IssueGoogleToken(alice)),
		"ALICE_AS_BOB": tokens.XOAUTH2Base64(bob, f.IssueGoogleToken(alice)),
		"CHALLENGE":    base64.StdEncoding.EncodeToString(googleChallenge()),
	}
	if got := string(googleChallenge()); got != `{"schemes":"Bearer","scope":"https://mail.google.com/","status":"400"}` {
		t.Errorf("challenge %s", got)
	}
	conn, err := tls.Dial("tcp", f.IMAPAddr, f.ClientTLS())
	if err != nil {
		t.Fatal(err)
	}
	runTranscript(t, f, conn, "google_imap_xoauth2.txt", vars)
	conn, err = tls.Dial("tcp", f.POP3Addr, f.ClientTLS())
	if err != nil {
		t.Fatal(err)
	}
	runTranscript(t, f, conn, "google_pop3.txt", vars)
	raw, err := net.Dial("tcp", f.SMTPAddr)
	if err != nil {
		t.Fatal(err)
	}
	runTranscript(t, f, raw, "google_smtp.txt", vars)

	// A Microsoft token means nothing to Gmail.
	c := dialIMAP(t, f)
	if err := c.Authenticate(tokens.NewXOAUTH2Client(alice, f.IssueAccessToken(alice))); err == nil {
		t.Error("a Microsoft token opened a Gmail mailbox")
	}
}

func TestGoogleServiceAccount(t *testing.T) {
	t.Parallel()
	f := newGoogleFake(t)
	const sa = "bridge@fake-project.iam.gserviceaccount.com"
	key, err := f.AddServiceAccount(sa)
	if err != nil {
		t.Fatal(err)
	}
	other, err := f.AddServiceAccount("other@fake-project.iam.gserviceaccount.com")
	if err != nil {
		t.Fatal(err)
	}
	fetch := func(key []byte, sub string, mutate func(*jwt.Config)) (*oauth2.Token, error) {
		jc := saConfig(t, key)
		jc.Subject = sub
		if mutate != nil {
			mutate(jc)
		}
		return jc.TokenSource(context.Background()).Token()
	}
	wantErr := func(err error, status int, code, desc string) {
		t.Helper()
		var re *oauth2.RetrieveError
		if !errors.As(err, &re) || re.Response.StatusCode != status || !strings.Contains(string(re.Body), `"error":"`+code+`"`) || !strings.Contains(string(re.Body), desc) {
			t.Errorf("got %v, want %d %s %q", err, status, code, desc)
		}
	}

	// No domain-wide delegation yet.
	_, err = fetch(key, alice, nil)
	wantErr(err, 401, "unauthorized_client", "Client is unauthorized")
	f.AllowDomainWideDelegation(sa, GoogleMailScope)

	// Not a user of the domain.
	_, err = fetch(key, "nobody@contoso.com", nil)
	wantErr(err, 400, "invalid_grant", "Invalid email or User ID")
	// Signed with another service account's key.
	otherCfg := saConfig(t, other)
	_, err = fetch(key, alice, func(c *jwt.Config) { c.PrivateKey = otherCfg.PrivateKey })
	wantErr(err, 400, "invalid_grant", "Invalid JWT Signature.")
	// The wrong audience.
	_, err = fetch(key, alice, func(c *jwt.Config) { c.Audience = "https://example.org/token" })
	wantErr(err, 400, "invalid_grant", "audience")

	tok, err := fetch(key, alice, nil)
	if err != nil {
		t.Fatal(err)
	}
	c := dialIMAP(t, f)
	if err := c.Authenticate(tokens.NewXOAUTH2Client(alice, tok.AccessToken)); err != nil {
		t.Fatalf("service account token for alice: %v", err)
	}
	// The token is for alice only.
	c2 := dialIMAP(t, f)
	if err := c2.Authenticate(tokens.NewXOAUTH2Client(bob, tok.AccessToken)); err == nil {
		t.Error("alice's token opened bob's mailbox")
	}
}

// saConfig reads a service account JSON key into x/oauth2/jwt's Config.
func saConfig(t *testing.T, key []byte) *jwt.Config {
	t.Helper()
	var k struct {
		Email    string `json:"client_email"`
		Key      string `json:"private_key"`
		KeyID    string `json:"private_key_id"`
		TokenURI string `json:"token_uri"`
	}
	if err := json.Unmarshal(key, &k); err != nil {
		t.Fatal(err)
	}
	return &jwt.Config{Email: k.Email, PrivateKey: []byte(k.Key), PrivateKeyID: k.KeyID, TokenURL: k.TokenURI, Scopes: []string{GoogleMailScope}}
}

// googleSignIn runs the authorize leg as a browser would and returns the
// code (or the error redirect's query).
func googleSignIn(t *testing.T, f *Fake, q url.Values) url.Values {
	t.Helper()
	resp, err := noRedirect.PostForm(f.AuthorityURL+"/o/oauth2/v2/auth", q)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusFound {
		t.Fatalf("sign-in: HTTP %d", resp.StatusCode)
	}
	u, err := url.Parse(resp.Header.Get("Location"))
	if err != nil {
		t.Fatal(err)
	}
	return u.Query()
}

func TestGoogleAuthCodeRefreshAndLimits(t *testing.T) {
	t.Parallel()
	f := newGoogleFake(t)
	const redirect = "http://127.0.0.1:8025/oauth/callback"
	verifier := oauth2.GenerateVerifier()
	sum := sha256.Sum256([]byte(verifier))
	signIn := func(prompt string) map[string]any {
		t.Helper()
		q := url.Values{"client_id": {confApp}, "redirect_uri": {redirect}, "response_type": {"code"},
			"scope": {GoogleMailScope + " openid email"}, "state": {"s"}, "access_type": {"offline"},
			"code_challenge": {base64.RawURLEncoding.EncodeToString(sum[:])}, "code_challenge_method": {"S256"},
			"login": {alice}, "action": {"signin"}}
		if prompt != "" {
			q.Set("prompt", prompt)
		}
		code := googleSignIn(t, f, q).Get("code")
		if code == "" {
			t.Fatal("no code")
		}
		st, body, _ := post(t, f.GoogleTokenURL(), url.Values{"grant_type": {"authorization_code"}, "code": {code},
			"redirect_uri": {redirect}, "code_verifier": {verifier}, "client_id": {confApp}, "client_secret": {confSecret}})
		if st != 200 {
			t.Fatalf("code redemption: %d %v", st, body)
		}
		return body
	}
	first := signIn("")
	rt, _ := first["refresh_token"].(string)
	if rt == "" || first["id_token"] == nil {
		t.Fatalf("first sign-in: %v", first)
	}
	if claims := jwtClaims(t, first["id_token"].(string)); claims["email"] != alice {
		t.Errorf("id_token email %v", claims["email"])
	}
	// Consent was given: without prompt=consent, no new refresh token.
	if again := signIn(""); again["refresh_token"] != nil {
		t.Error("a second sign-in without prompt=consent returned a refresh token")
	}
	if again := signIn("consent"); again["refresh_token"] == nil {
		t.Error("prompt=consent returned no refresh token")
	}
	refresh := func(rt string) (int, map[string]any) {
		st, body, _ := post(t, f.GoogleTokenURL(), url.Values{"grant_type": {"refresh_token"}, "refresh_token": {rt},
			"client_id": {confApp}, "client_secret": {confSecret}})
		return st, body
	}
	if st, body := refresh(rt); st != 200 || body["refresh_token"] != nil || body["access_token"] == nil {
		t.Errorf("refresh: %d %v", st, body)
	}
	// The 100-token limit: 100 more sign-ins silently kill the first.
	f.mu.Lock()
	for range googleMaxRefreshTokens {
		f.googleNewRefreshLocked(alice, confApp)
	}
	f.mu.Unlock()
	if st, body := refresh(rt); st != 400 || body["error"] != "invalid_grant" || body["error_description"] != "Token has been expired or revoked." {
		t.Errorf("refresh after 100 newer tokens: %d %v", st, body)
	}
	// A password change (revocation) kills the rest.
	last := signIn("consent")["refresh_token"].(string)
	f.RevokeRefreshTokens(alice)
	if st, body := refresh(last); st != 400 || body["error"] != "invalid_grant" {
		t.Errorf("refresh after revocation: %d %v", st, body)
	}
	// Wrong client secret.
	st, body, _ := post(t, f.GoogleTokenURL(), url.Values{"grant_type": {"refresh_token"}, "refresh_token": {last},
		"client_id": {confApp}, "client_secret": {"wrong"}})
	if st != 401 || body["error"] != "invalid_client" {
		t.Errorf("wrong secret: %d %v", st, body)
	}
	// A non-loopback redirect is refused (Desktop app client).
	resp, err := noRedirect.Get(f.AuthorityURL + "/o/oauth2/v2/auth?" + url.Values{"client_id": {confApp}, "redirect_uri": {"https://evil.example/cb"},
		"response_type": {"code"}, "scope": {GoogleMailScope}}.Encode())
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusBadRequest {
		t.Errorf("non-loopback redirect: HTTP %d", resp.StatusCode)
	}
}

func TestGoogleIMAPConnectionLimit(t *testing.T) {
	t.Parallel()
	f := newGoogleFake(t)
	f.SetGoogleIMAPLimit(1)
	tok := f.IssueGoogleToken(alice)
	c1 := dialIMAP(t, f)
	if err := c1.Authenticate(tokens.NewXOAUTH2Client(alice, tok)); err != nil {
		t.Fatal(err)
	}
	conn, err := tls.Dial("tcp", f.IMAPAddr, f.ClientTLS())
	if err != nil {
		t.Fatal(err)
	}
	runTranscript(t, f, conn, "google_imap_limit.txt", map[string]string{"ALICE": tokens.XOAUTH2Base64(alice, tok)})
	// The slot is free again once the first session ends.
	if err := c1.Logout().Wait(); err != nil {
		t.Fatal(err)
	}
	c1.Close()
	for deadline := time.Now().Add(5 * time.Second); ; {
		c3 := dialIMAP(t, f)
		err := c3.Authenticate(tokens.NewXOAUTH2Client(alice, tok))
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the slot was not released: %v", err)
		}
		time.Sleep(10 * time.Millisecond) // the server notices the closed connection asynchronously
	}
}
