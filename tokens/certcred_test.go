package tokens_test

import (
	"bufio"
	"context"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/oauthbridge/oauthbridge/config"
	"github.com/oauthbridge/oauthbridge/internal/certgen"
	"github.com/oauthbridge/oauthbridge/internal/fakems"
	. "github.com/oauthbridge/oauthbridge/tokens"
)

// testCert is a certificate and key written to files.
type testCert struct {
	cert               *x509.Certificate
	key                *rsa.PrivateKey
	certFile, keyFile  string
	thumbprint, sha256 string
}

func newTestCert(t *testing.T, dir, name string, now time.Time, life time.Duration) *testCert {
	t.Helper()
	cert, key, err := certgen.New(certgen.Options{CommonName: "oauthbridge-test-" + name, Bits: 2048, Lifetime: life, Now: now})
	if err != nil {
		t.Fatal(err)
	}
	tc := &testCert{cert: cert, key: key, certFile: filepath.Join(dir, name+".crt"), keyFile: filepath.Join(dir, name+".key"),
		thumbprint: config.CertThumbprint(cert), sha256: config.CertThumbprintSHA256(cert)}
	if err := os.WriteFile(tc.certFile, certgen.CertPEM(cert), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(tc.keyFile, certgen.KeyPEM(key), 0o600); err != nil {
		t.Fatal(err)
	}
	return tc
}

// certConfig is a configuration whose provider "p" authenticates with
// the given certificates and serves the app-flow account scanner.
func certConfig(t *testing.T, dir, authority string, certs ...*testCert) *config.Config {
	t.Helper()
	var b strings.Builder
	fmt.Fprintf(&b, "state_dir = %q\nprovider \"p\" {\n  tenant = \"t\"\n  client_id = \"app1\"\n  authority = %q\n", dir, authority)
	for _, c := range certs {
		fmt.Fprintf(&b, "  client_certificate {\n    cert_file = %q\n    key_file = %q\n  }\n", c.certFile, c.keyFile)
	}
	b.WriteString("}\naccount \"scanner\" {\n  provider = \"p\"\n  mailbox = \"scan@contoso.com\"\n  flow = \"app\"\n}\n")
	b.WriteString("account \"helpdesk\" {\n  provider = \"p\"\n  mailbox = \"hd@contoso.com\"\n  delegate = \"alice@contoso.com\"\n}\n")
	cfg, err := config.Parse("test.hcl", []byte(b.String()))
	if err != nil {
		t.Fatalf("config.Parse() = %v\n%s", err, b.String())
	}
	return cfg
}

// newCertEnv is newEnv for an app registration with certificates and no
// secret; register says which of the certificates Entra knows.
func newCertEnv(t *testing.T, certs []*testCert, register []*testCert, manager func(*Options)) *env {
	t.Helper()
	clock := newFakeClock()
	f, err := fakems.Start(fakems.Options{AccessTokenLifetime: tokenLife, Now: clock.Now})
	if err != nil {
		t.Fatalf("fakems.Start() = %v", err)
	}
	t.Cleanup(func() { f.Close() })
	warmUp(t, f)
	f.AddApp("app1", "")
	for _, c := range register {
		f.RegisterCertificate("app1", c.cert)
	}
	f.AddMailbox("scan@contoso.com")
	f.GrantApp("app1", "scan@contoso.com")
	f.AddUser(alice)
	f.AddMailbox("hd@contoso.com", alice)
	e := &env{t: t, f: f, clock: clock, dir: filepath.Join(t.TempDir(), "state"), sleeps: make(chan time.Duration, 100)}
	e.cfg = certConfig(t, e.dir, f.AuthorityURL, certs...)
	log, buf := testLogger()
	e.logs = buf
	e.opts = Options{Registerer: testRegistry, Logger: log, Now: clock.Now, RetryMin: 20 * time.Millisecond, RetryMax: 80 * time.Millisecond, StorePoll: 50 * time.Millisecond, RequestTimeout: 2 * time.Second}
	if manager != nil {
		manager(&e.opts)
	}
	e.m = e.open()
	return e
}

func credentialsOf(m *Manager) map[string]CredentialInfo {
	out := map[string]CredentialInfo{}
	for _, c := range m.Credentials() {
		out[c.Name] = c
	}
	return out
}

func TestSignClientAssertion(t *testing.T) {
	now := time.Now()
	tc := newTestCert(t, t.TempDir(), "a", now, time.Hour)
	for _, alg := range []string{"RS256", "PS256"} {
		t.Run(alg, func(t *testing.T) {
			s, err := SignClientAssertion(tc.cert, tc.key, alg, AssertionClaims{
				Audience: "https://login.example/t/oauth2/v2.0/token", ClientID: "app1", ID: "jti-1",
				IssuedAt: now.Add(-time.Minute), NotBefore: now.Add(-time.Minute), Expires: now.Add(5 * time.Minute),
			})
			if err != nil {
				t.Fatal(err)
			}
			claims := jwt.MapClaims{}
			tok, err := jwt.NewParser(jwt.WithValidMethods([]string{alg}), jwt.WithAudience("https://login.example/t/oauth2/v2.0/token"),
				jwt.WithIssuer("app1"), jwt.WithSubject("app1"), jwt.WithExpirationRequired(), jwt.WithIssuedAt()).
				ParseWithClaims(s, claims, func(*jwt.Token) (any, error) { return tc.cert.PublicKey, nil })
			if err != nil {
				t.Fatalf("the assertion does not verify with the certificate's public key: %v", err)
			}
			sum := sha256.Sum256(tc.cert.Raw)
			if got := tok.Header["x5t#S256"]; got != base64.RawURLEncoding.EncodeToString(sum[:]) {
				t.Fatalf("x5t#S256 = %v", got)
			}
			if tok.Header["alg"] != alg || tok.Header["typ"] != "JWT" {
				t.Fatalf("header = %v", tok.Header)
			}
			if claims["aud"] != "https://login.example/t/oauth2/v2.0/token" || claims["jti"] != "jti-1" {
				t.Fatalf("claims = %v", claims)
			}
			for c, want := range map[string]time.Time{"exp": now.Add(5 * time.Minute), "nbf": now.Add(-time.Minute), "iat": now.Add(-time.Minute)} {
				if v, _ := claims[c].(float64); int64(v) != want.Unix() {
					t.Fatalf("%s = %v, want %d", c, claims[c], want.Unix())
				}
			}
			// Another key's certificate must not verify it.
			other := newTestCert(t, t.TempDir(), "b", now, time.Hour)
			if _, err := jwt.Parse(s, func(*jwt.Token) (any, error) { return other.cert.PublicKey, nil }); err == nil {
				t.Fatal("the assertion verifies with another certificate's key")
			}
		})
	}
	if _, err := SignClientAssertion(tc.cert, tc.key, "HS256", AssertionClaims{}); err == nil {
		t.Fatal("HS256 accepted")
	}
}

func TestCertificateAppFlow(t *testing.T) {
	dir := t.TempDir()
	now := time.Now()
	tc := newTestCert(t, dir, "a", now, 365*24*time.Hour)
	e := newCertEnv(t, []*testCert{tc}, []*testCert{tc}, nil)
	tok := e.token(e.m, scanner)
	if tok == "" || e.grants(grantCC) != 1 {
		t.Fatalf("grants = %v", e.f.TokenRequestsByGrant())
	}
	if s := statusOf(e.m, scanner); s.State != StateOK {
		t.Fatalf("Status = %+v", s)
	}
	// The token is good for IMAP: the fake's IMAP server accepts it.
	if line := imapLogin(t, e.f, "scan@contoso.com", tok); !strings.HasPrefix(line, "a1 OK") {
		t.Fatalf("IMAP AUTHENTICATE XOAUTH2 with the certificate's token: %s", line)
	}
	ci := credentialsOf(e.m)[tc.thumbprint]
	if ci.Kind != CredentialCertificate || !ci.InUse || !ci.NotAfter.Equal(tc.cert.NotAfter) || ci.Provider != "p" {
		t.Fatalf("Credentials() = %+v", e.m.Credentials())
	}
	if got := testutil.ToFloat64(testMetrics.CredentialExpiry.WithLabelValues("p", "certificate", tc.thumbprint)); got != float64(tc.cert.NotAfter.Unix()) {
		t.Fatalf("expiry metric = %v, want %d", got, tc.cert.NotAfter.Unix())
	}
	if strings.Contains(e.logs.String(), "BEGIN") {
		t.Fatal("key material in the log")
	}
}

// TestCertificateDelegated: a delegated account of a provider with a
// certificate signs in (device code) and refreshes with client assertions.
func TestCertificateDelegated(t *testing.T) {
	tc := newTestCert(t, t.TempDir(), "a", time.Now(), 365*24*time.Hour)
	e := newCertEnv(t, []*testCert{tc}, []*testCert{tc}, nil)
	if err := e.deviceLogin(e.m, helpdesk, alice); err != nil {
		t.Fatalf("device login with a certificate: %v", err)
	}
	tok := e.token(e.m, helpdesk)
	e.m.Rejected(helpdesk, tok)
	if e.token(e.m, helpdesk) == tok || e.grants(grantRT) != 1 {
		t.Fatalf("no refresh with the certificate: %v", e.f.TokenRequestsByGrant())
	}
	if line := imapLogin(t, e.f, "hd@contoso.com", e.token(e.m, helpdesk)); !strings.HasPrefix(line, "a1 OK") {
		t.Fatalf("IMAP: %s", line)
	}
	if n := e.f.ReusedAssertions(); n != 0 {
		t.Fatalf("%d token requests re-sent an earlier client assertion; each must be signed afresh", n)
	}
}

// Entra accepts a client assertion sent again before its exp (see
// fakems.ReusedAssertions), so nothing fails when one is reused; the fake
// counts it. The bridge signs a fresh one per request (TestCertificateDelegated
// expects no reuse); a credential that does reuse is seen.
func TestReusedAssertionCounted(t *testing.T) {
	tc := newTestCert(t, t.TempDir(), "a", time.Now(), 365*24*time.Hour)
	rc := &replayingCredential{}
	e := newCertEnv(t, []*testCert{tc}, []*testCert{tc}, func(o *Options) {
		o.Credential = func(p *config.Provider) ClientCredential { rc.p = p; return rc }
	})
	rc.sign = func(tokenURL string) (url.Values, error) {
		a, err := SignClientAssertion(tc.cert, tc.key, "RS256", AssertionClaims{Audience: tokenURL, ClientID: "app1", ID: "same-jti",
			IssuedAt: e.clock.Now(), NotBefore: e.clock.Now(), Expires: e.clock.Now().Add(5 * time.Minute)})
		return url.Values{"client_assertion_type": {ClientAssertionType}, "client_assertion": {a}}, err
	}
	tok := e.token(e.m, scanner)
	e.m.Rejected(scanner, tok) // the next login needs a new token: the same assertion goes again
	if e.token(e.m, scanner) == tok {
		t.Fatal("no new token")
	}
	if n := e.f.ReusedAssertions(); n != 1 {
		t.Fatalf("ReusedAssertions() = %d, want 1", n)
	}
}

func TestCertificateRefusals(t *testing.T) {
	now := time.Now()
	t.Run("unregistered", func(t *testing.T) {
		tc := newTestCert(t, t.TempDir(), "a", now, 365*24*time.Hour)
		e := newCertEnv(t, []*testCert{tc}, nil, nil)
		_, err := e.m.AccessToken(context.Background(), scanner)
		te := asError(t, err)
		t.Logf("%v", te)
		if te.Kind != Failing || te.AADSTS != 700027 || !strings.Contains(te.Fix, "upload the certificate "+tc.thumbprint) ||
			!strings.Contains(te.Fix, "Certificates & secrets → Certificates → Upload certificate") {
			t.Fatalf("AccessToken() = %#v", te)
		}
	})
	t.Run("wrong key", func(t *testing.T) {
		dir := t.TempDir()
		tc := newTestCert(t, dir, "a", now, 365*24*time.Hour)
		other := newTestCert(t, dir, "b", now, 365*24*time.Hour)
		e := newCertEnv(t, []*testCert{tc}, []*testCert{tc}, nil)
		// The configuration refuses a key that does not match (see the
		// config tests); here the key changed behind its back.
		e.cfg.Providers[0].ClientCertificates[0].Key = other.key
		_, err := e.m.AccessToken(context.Background(), scanner)
		te := asError(t, err)
		t.Logf("%v", te)
		if te.AADSTS != 700027 || !strings.Contains(te.Fix, "key_file does not belong to it") {
			t.Fatalf("AccessToken() = %#v", te)
		}
	})
	t.Run("expired", func(t *testing.T) {
		tc := newTestCert(t, t.TempDir(), "a", now, 2*time.Hour)
		e := newCertEnv(t, []*testCert{tc}, []*testCert{tc}, nil)
		e.token(e.m, scanner)
		e.clock.Add(3 * time.Hour) // the access token and the certificate expire
		_, err := e.m.AccessToken(context.Background(), scanner)
		te := asError(t, err)
		t.Logf("%v", te)
		if te.AADSTS != 700027 || !strings.Contains(te.Reason, "expired on "+tc.cert.NotAfter.UTC().Format("2006-01-02")) ||
			!strings.Contains(te.Fix, "oauthbridge cert new") {
			t.Fatalf("AccessToken() = %#v", te)
		}
	})
	t.Run("clock skew", func(t *testing.T) {
		tc := newTestCert(t, t.TempDir(), "a", now, 365*24*time.Hour)
		e := newCertEnv(t, []*testCert{tc}, []*testCert{tc}, func(o *Options) {
			fakeNow := o.Now
			o.Now = func() time.Time { return fakeNow().Add(-20 * time.Minute) } // the bridge's clock is 20 minutes slow
		})
		_, err := e.m.AccessToken(context.Background(), scanner)
		te := asError(t, err)
		t.Logf("%v", te)
		if te.AADSTS != 700024 || !strings.Contains(te.Fix, "timedatectl") {
			t.Fatalf("AccessToken() = %#v", te)
		}
	})
}

// imapLogin authenticates to the fake's IMAP server with XOAUTH2 and
// returns the tagged answer.
func imapLogin(t *testing.T, f *fakems.Fake, user, tok string) string {
	t.Helper()
	c, err := tls.Dial("tcp", f.IMAPAddr, f.ClientTLS())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	r := bufio.NewReader(c)
	if _, err := r.ReadString('\n'); err != nil {
		t.Fatal(err)
	}
	fmt.Fprintf(c, "a1 AUTHENTICATE XOAUTH2 %s\r\n", XOAUTH2Base64(user, tok))
	for {
		line, err := r.ReadString('\n')
		if err != nil {
			t.Fatalf("IMAP: %v", err)
		}
		if strings.HasPrefix(line, "a1 ") {
			return strings.TrimSpace(line)
		}
	}
}

// replayingCredential sends the first assertion it signed again and again.
type replayingCredential struct {
	p    *config.Provider
	sign func(tokenURL string) (url.Values, error)
	mu   sync.Mutex
	v    url.Values
}

func (r *replayingCredential) TokenParams(_ context.Context, tokenURL string) (url.Values, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.v == nil {
		v, err := r.sign(tokenURL)
		if err != nil {
			return nil, err
		}
		r.v = v
	}
	return r.v, nil
}

func TestCertificateRotation(t *testing.T) {
	dir := t.TempDir()
	now := time.Now()
	old := newTestCert(t, dir, "old", now, 365*24*time.Hour)
	next := newTestCert(t, dir, "next", now, 2*365*24*time.Hour)
	e := newCertEnv(t, []*testCert{old, next}, []*testCert{next}, nil)
	tok := e.token(e.m, scanner)
	if n := e.grants(grantCC); n != 2 {
		t.Fatalf("client_credentials requests = %d, want 2 (refused first certificate, then the second)", n)
	}
	creds := credentialsOf(e.m)
	if creds[old.thumbprint].InUse || !creds[next.thumbprint].InUse || !creds[next.thumbprint].NotAfter.Equal(next.cert.NotAfter) {
		t.Fatalf("Credentials() = %+v", e.m.Credentials())
	}
	if !strings.Contains(e.logs.String(), "trying the next client_certificate") {
		t.Fatalf("no log of the rotation:\n%s", e.logs.String())
	}
	// It remembers: the next token request signs with the second at once.
	e.m.Rejected(scanner, tok)
	e.token(e.m, scanner)
	if n := e.grants(grantCC); n != 3 {
		t.Fatalf("client_credentials requests = %d, want 3", n)
	}
	for _, c := range []*testCert{old, next} {
		if got := testutil.ToFloat64(testMetrics.CredentialExpiry.WithLabelValues("p", "certificate", c.thumbprint)); got != float64(c.cert.NotAfter.Unix()) {
			t.Fatalf("expiry metric of %s = %v", c.thumbprint, got)
		}
	}

	// A reload keeps the certificate that works.
	e.cfg = certConfig(t, e.dir, e.f.AuthorityURL, old, next)
	if err := e.m.Reload(e.cfg); err != nil {
		t.Fatal(err)
	}
	if !credentialsOf(e.m)[next.thumbprint].InUse {
		t.Fatalf("after reload: %+v", e.m.Credentials())
	}

	// A reload re-reads the files: the retired certificate is replaced in
	// place by a third one, and its metric goes away.
	third := newTestCert(t, dir, "old", now, 365*24*time.Hour) // same file names as old
	e.cfg = certConfig(t, e.dir, e.f.AuthorityURL, third, next)
	if err := e.m.Reload(e.cfg); err != nil {
		t.Fatal(err)
	}
	creds = credentialsOf(e.m)
	if _, ok := creds[third.thumbprint]; !ok || len(creds) != 2 {
		t.Fatalf("after replacing the file: %+v", e.m.Credentials())
	}
	if testMetrics.CredentialExpiry.DeleteLabelValues("p", "certificate", old.thumbprint) {
		t.Fatal("the replaced certificate's expiry metric is still exported")
	}
}

// TestCertificateExpiredSkipped: once the certificate in use expires by the
// bridge's clock, its successor is used without a refused request first.
func TestCertificateExpiredSkipped(t *testing.T) {
	dir := t.TempDir()
	now := time.Now()
	old := newTestCert(t, dir, "old", now, 2*time.Hour)
	next := newTestCert(t, dir, "next", now, 365*24*time.Hour)
	e := newCertEnv(t, []*testCert{old, next}, []*testCert{old, next}, nil)
	e.token(e.m, scanner)
	if !credentialsOf(e.m)[old.thumbprint].InUse {
		t.Fatalf("Credentials() = %+v", e.m.Credentials())
	}
	e.clock.Add(3 * time.Hour)
	e.token(e.m, scanner)
	if n := e.grants(grantCC); n != 2 {
		t.Fatalf("client_credentials requests = %d, want 2: the expired certificate was tried", n)
	}
	if !credentialsOf(e.m)[next.thumbprint].InUse {
		t.Fatalf("Credentials() = %+v", e.m.Credentials())
	}
}

func TestCertificateNoRotationOnTemporaryErrors(t *testing.T) {
	dir := t.TempDir()
	now := time.Now()
	a := newTestCert(t, dir, "a", now, 365*24*time.Hour)
	b := newTestCert(t, dir, "b", now, 365*24*time.Hour)
	e := newCertEnv(t, []*testCert{a, b}, []*testCert{a, b}, nil)
	e.f.SetTokenFault(fakems.TokenFault{Status: 503, Code: "temporarily_unavailable"})
	_, err := e.m.AccessToken(context.Background(), scanner)
	if KindOf(err) != Temporary {
		t.Fatalf("AccessToken() = %v", err)
	}
	if n := e.f.TokenRequests(); n != 1 {
		t.Fatalf("%d token requests, want 1: a 503 is no reason to try the other certificate", n)
	}
	if !credentialsOf(e.m)[a.thumbprint].InUse {
		t.Fatalf("Credentials() = %+v", e.m.Credentials())
	}
}
