package tokens_test

import (
	"context"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-imap/v2/imapclient"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/oauthbridge/oauthbridge/config"
	"github.com/oauthbridge/oauthbridge/internal/fakems"
	. "github.com/oauthbridge/oauthbridge/tokens"
)

const (
	gAlice   = "g-alice@example.org"
	gScan    = "g-scan@example.org"
	gSA      = "bridge@fake-project.iam.gserviceaccount.com"
	gClient  = "123-abc.apps.googleusercontent.com"
	gSecret  = "GOCSPX-fake"
	gPerson  = "gperson"
	gService = "gservice"
)

// newGoogleEnv is a fake Google Workspace with a person (gAlice) and a
// service account allowed to act for gScan, and a Manager for both.
func newGoogleEnv(t *testing.T, delegation bool) *env {
	t.Helper()
	clock := newFakeClock()
	f, err := fakems.Start(fakems.Options{Google: true, AccessTokenLifetime: tokenLife, Now: clock.Now})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	warmUp(t, f)
	f.AddApp(gClient, gSecret)
	f.AddUser(gAlice)
	f.AddMailbox(gScan)
	key, err := f.AddServiceAccount(gSA)
	if err != nil {
		t.Fatal(err)
	}
	if delegation {
		f.AllowDomainWideDelegation(gSA, fakems.GoogleMailScope)
	}
	e := &env{t: t, f: f, clock: clock, dir: filepath.Join(t.TempDir(), "state"), sleeps: make(chan time.Duration, 100)}
	keyPath := filepath.Join(t.TempDir(), "sa.json")
	if err := os.WriteFile(keyPath, key, 0o600); err != nil {
		t.Fatal(err)
	}
	src := fmt.Sprintf(`state_dir = %q
provider "g" {
  type                = "google"
  authority           = %q
  client_id           = %q
  client_secret       = %q
  service_account_key = file(%q)
}
account %q {
  provider = "g"
  mailbox  = %q
}
account %q {
  provider = "g"
  mailbox  = %q
  flow     = "app"
}
`, e.dir, f.AuthorityURL, gClient, gSecret, keyPath, gPerson, gAlice, gService, gScan)
	e.cfg, err = config.Parse("google.hcl", []byte(src))
	if err != nil {
		t.Fatal(err)
	}
	log, buf := testLogger()
	e.logs = buf
	e.opts = Options{Registerer: testRegistry, Logger: log, Now: clock.Now, RetryMin: 20 * time.Millisecond, RetryMax: 80 * time.Millisecond, StorePoll: 50 * time.Millisecond, RequestTimeout: 5 * time.Second}
	e.m = e.open()
	return e
}

func TestGoogleBrowserLoginRefreshAndInvalidGrant(t *testing.T) {
	e := newGoogleEnv(t, true)
	authURL, err := e.m.BrowserLoginURL(gPerson, redirect)
	if err != nil {
		t.Fatal(err)
	}
	u, _ := url.Parse(authURL)
	q := u.Query()
	if !strings.HasPrefix(authURL, e.f.AuthorityURL+"/o/oauth2/v2/auth?") || q.Get("access_type") != "offline" || q.Get("prompt") != "consent" ||
		q.Get("code_challenge_method") != "S256" || q.Get("login_hint") != gAlice || q.Get("scope") != "https://mail.google.com/ openid email" {
		t.Fatalf("BrowserLoginURL() = %s", authURL)
	}
	state, code := browserSignIn(t, authURL)
	if acct, err := e.m.CompleteBrowserLogin(context.Background(), state, code); err != nil || acct != gPerson {
		t.Fatalf("CompleteBrowserLogin() = %q, %v", acct, err)
	}
	tok := e.token(e.m, gPerson)
	if s := statusOf(e.m, gPerson); s.State != StateOK || s.SignedInAs != gAlice {
		t.Fatalf("status after sign-in: %+v", s)
	}
	// A refresh: Google sends no new refresh token; the old one is kept.
	e.m.Rejected(gPerson, tok)
	if tok2 := e.token(e.m, gPerson); tok2 == tok {
		t.Fatal("no new access token after Rejected")
	}
	if n := e.grants(grantRT); n != 1 {
		t.Fatalf("refresh grants %d, want 1", n)
	}
	e.m.Rejected(gPerson, e.token(e.m, gPerson))
	e.token(e.m, gPerson) // the kept refresh token still works

	// Seven days later the refresh token is dead (a "Testing" project).
	e.clock.Add(7*24*time.Hour + time.Hour)
	e.f.RevokeRefreshTokens(gAlice)
	_, err = e.m.AccessToken(context.Background(), gPerson)
	te := asError(t, err)
	if te.Kind != NeedsLogin || !strings.Contains(te.Reason, "Token has been expired or revoked.") || !strings.Contains(te.Reason, "\"Testing\"") ||
		!strings.Contains(te.Reason, "100 refresh tokens") || !strings.Contains(te.Reason, "6 months") || !strings.Contains(te.Reason, "changes the password") {
		t.Fatalf("reason after invalid_grant: %q", te.Reason)
	}
	if !strings.Contains(te.Fix, "\"In production\"") || !strings.Contains(te.Fix, "oauthbridge login "+gPerson) {
		t.Fatalf("fix after invalid_grant: %q", te.Fix)
	}
	s := statusOf(e.m, gPerson)
	if s.State != StateNeedsLogin || !strings.Contains(s.Fix, "In production") || !strings.Contains(s.LastError, "invalid_grant") {
		t.Fatalf("status after invalid_grant: %+v", s)
	}
	if v := testutil.ToFloat64(testMetrics.AccountState.WithLabelValues(gPerson, "needs_login")); v != 1 {
		t.Fatalf("account_state{needs_login} = %v", v)
	}
	// Signing in again fixes it.
	authURL, _ = e.m.BrowserLoginURL(gPerson, redirect)
	state, code = browserSignIn(t, authURL)
	if _, err := e.m.CompleteBrowserLogin(context.Background(), state, code); err != nil {
		t.Fatal(err)
	}
	e.token(e.m, gPerson)
}

func TestGoogleDeviceLoginRefused(t *testing.T) {
	e := newGoogleEnv(t, true)
	_, _, err := e.m.StartDeviceLogin(context.Background(), gPerson)
	if err == nil || !strings.Contains(err.Error(), "device flow does not cover Gmail's scope") || !strings.Contains(err.Error(), "oauthbridge login -browser "+gPerson) {
		t.Fatalf("StartDeviceLogin() = %v", err)
	}
	if n := e.f.TokenRequests(); n != 0 {
		t.Fatalf("%d token requests", n)
	}
}

func TestGoogleServiceAccount(t *testing.T) {
	e := newGoogleEnv(t, true)
	tok := e.token(e.m, gService)
	if n := e.grants(GrantJWTBearer); n != 1 {
		t.Fatalf("JWT bearer grants %d, want 1 (%v)", n, e.f.TokenRequestsByGrant())
	}
	if s := statusOf(e.m, gService); s.State != StateOK {
		t.Fatalf("status: %+v", s)
	}
	// The token opens the mailbox over IMAP.
	c := dialFakeIMAP(t, e.f)
	if err := c.Authenticate(NewXOAUTH2Client(gScan, tok)); err != nil {
		t.Fatalf("IMAP with the service account's token: %v", err)
	}

	t.Run("no domain-wide delegation", func(t *testing.T) {
		e := newGoogleEnv(t, false)
		_, err := e.m.AccessToken(context.Background(), gService)
		te := asError(t, err)
		if te.Kind != Failing || !strings.Contains(te.Reason, "domain-wide delegation") || !strings.Contains(te.Fix, "Domain-wide delegation") ||
			!strings.Contains(te.Fix, "https://mail.google.com/") || !strings.Contains(te.Fix, "client ID 1") {
			t.Fatalf("without delegation: %#v", te)
		}
	})
}

func dialFakeIMAP(t *testing.T, f *fakems.Fake) *imapclient.Client {
	t.Helper()
	c, err := imapclient.DialTLS(f.IMAPAddr, &imapclient.Options{TLSConfig: f.ClientTLS()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}
