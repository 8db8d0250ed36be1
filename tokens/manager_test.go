package tokens_test

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"html"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/oauthbridge/oauthbridge/config"
	"github.com/oauthbridge/oauthbridge/internal/fakems"
	. "github.com/oauthbridge/oauthbridge/tokens"
)

const (
	alice     = "alice@contoso.com"
	bob       = "bob@contoso.com"
	grantRT   = "refresh_token"
	grantCC   = "client_credentials"
	grantAC   = "authorization_code"
	grantDev  = "urn:ietf:params:oauth:grant-type:device_code"
	secret    = "s3cret-value"
	helpdesk  = "helpdesk"
	scanner   = "scanner"
	redirect  = "http://127.0.0.1:8025/oauth/callback"
	tokenLife = time.Hour
)

// env is one fake Microsoft 365 plus a Manager on a shared fake clock.
type env struct {
	t      *testing.T
	f      *fakems.Fake
	clock  *fakeClock
	dir    string
	cfg    *config.Config
	m      *Manager
	logs   *syncBuffer
	opts   Options
	sleeps chan time.Duration // device-code poll waits asked for
}

type envOpts struct {
	secret       string // app secret in the fake and config; "" = public client
	configSecret string // secret in the config if different
	manager      func(*Options)
}

func newEnv(t *testing.T, eo envOpts) *env {
	t.Helper()
	clock := newFakeClock()
	f, err := fakems.Start(fakems.Options{AccessTokenLifetime: tokenLife, DeviceInterval: 1, Now: clock.Now})
	if err != nil {
		t.Fatalf("fakems.Start() = %v", err)
	}
	t.Cleanup(func() { f.Close() })
	warmUp(t, f)
	f.AddApp("app1", eo.secret)
	f.AddUser(alice)
	f.AddUser(bob)
	f.AddMailbox("hd@contoso.com", alice)
	f.AddMailbox("scan@contoso.com")
	f.GrantApp("app1", "scan@contoso.com")
	e := &env{t: t, f: f, clock: clock, dir: filepath.Join(t.TempDir(), "state"), sleeps: make(chan time.Duration, 100)}
	cs := eo.secret
	if eo.configSecret != "" {
		cs = eo.configSecret
	}
	accts := []testAccount{{name: helpdesk, mailbox: "hd@contoso.com", delegate: alice}}
	if cs != "" {
		accts = append(accts, testAccount{name: scanner, mailbox: "scan@contoso.com", flow: "app"})
	}
	e.cfg = testConfig(t, e.dir, f.AuthorityURL, cs, accts...)
	log, buf := testLogger()
	e.logs = buf
	e.opts = Options{Registerer: testRegistry, Logger: log, Now: clock.Now, RetryMin: 20 * time.Millisecond, RetryMax: 80 * time.Millisecond, StorePoll: 50 * time.Millisecond, RequestTimeout: 2 * time.Second}
	if eo.manager != nil {
		eo.manager(&e.opts)
	}
	e.m = e.open()
	return e
}

// warmUp waits until the fake's SMTP and IMAP servers greet. fakems.Close
// right after Start can otherwise hang: go-smtp's and imapserver's Close
// miss a listener that Serve has not registered yet.
func warmUp(t *testing.T, f *fakems.Fake) {
	t.Helper()
	greet := func(c net.Conn, err error) {
		if err != nil {
			t.Fatalf("dial fake: %v", err)
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(5 * time.Second))
		if _, err := bufio.NewReader(c).ReadString('\n'); err != nil {
			t.Fatalf("fake greeting: %v", err)
		}
	}
	greet(net.Dial("tcp", f.SMTPAddr))
	greet(tls.Dial("tcp", f.IMAPAddr, f.ClientTLS()))
}

// open starts a Manager on e's state directory, like a (re)started process.
func (e *env) open() *Manager {
	e.t.Helper()
	m, err := NewManager(e.cfg, e.opts)
	if err != nil {
		e.t.Fatalf("NewManager() = %v", err)
	}
	m.SetSleepForTest(func(ctx context.Context, d time.Duration) error {
		select {
		case e.sleeps <- d:
		default:
		}
		return SleepCtx(ctx, 5*time.Millisecond)
	})
	e.t.Cleanup(func() { m.Close() })
	return m
}

func (e *env) grants(g string) int { return e.f.TokenRequestsByGrant()[g] }

// deviceLogin signs upn in for account with the device-code flow.
func (e *env) deviceLogin(m *Manager, account, upn string) error {
	e.t.Helper()
	dl, ch, err := m.StartDeviceLogin(context.Background(), account)
	if err != nil {
		e.t.Fatalf("StartDeviceLogin() = %v", err)
	}
	if dl.UserCode == "" || dl.VerificationURI == "" || dl.Interval != 1 {
		e.t.Fatalf("DeviceLogin = %+v", dl)
	}
	if err := e.f.ApproveDevice(dl.UserCode, upn); err != nil {
		e.t.Fatalf("ApproveDevice() = %v", err)
	}
	return wait(e.t, ch)
}

func wait(t *testing.T, ch <-chan error) error {
	t.Helper()
	select {
	case err := <-ch:
		return err
	case <-time.After(10 * time.Second):
		t.Fatal("device login did not finish")
		return nil
	}
}

func (e *env) token(m *Manager, account string) string {
	e.t.Helper()
	tok, err := m.AccessToken(context.Background(), account)
	if err != nil {
		e.t.Fatalf("AccessToken(%s) = %v", account, err)
	}
	if tok == "" {
		e.t.Fatal("AccessToken() returned an empty token")
	}
	return tok
}

func statusOf(m *Manager, account string) AccountStatus {
	for _, s := range m.Status() {
		if s.Account == account {
			return s
		}
	}
	return AccountStatus{}
}

func storedEntry(t *testing.T, dir, account string) *StoredForTest {
	t.Helper()
	e, err := StoredEntryForTest(dir, account)
	if err != nil {
		t.Fatalf("StoredEntryForTest() = %v", err)
	}
	return e
}

func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func asError(t *testing.T, err error) *Error {
	t.Helper()
	var te *Error
	if !errors.As(err, &te) {
		t.Fatalf("error %T %v, want *tokens.Error", err, err)
	}
	return te
}

func TestDeviceLoginCacheRotationRestart(t *testing.T) {
	e := newEnv(t, envOpts{secret: secret})
	if _, err := e.m.AccessToken(context.Background(), helpdesk); KindOf(err) != NeedsLogin || !strings.Contains(err.Error(), "oauthbridge login helpdesk") {
		t.Fatalf("AccessToken() before login = %v, want needs_login naming the login command", err)
	}
	if s := statusOf(e.m, helpdesk); s.State != StateNeedsLogin || !strings.Contains(s.Fix, "oauthbridge login helpdesk") {
		t.Fatalf("status before login = %+v, want needs_login with the login command as fix", s)
	}
	if v := testutil.ToFloat64(testMetrics.AccountState.WithLabelValues(helpdesk, "needs_login")); v != 1 {
		t.Fatalf("needs_login gauge before login = %v, want 1", v)
	}
	if err := e.deviceLogin(e.m, helpdesk, alice); err != nil {
		t.Fatalf("device login = %v", err)
	}
	first := storedEntry(t, e.dir, helpdesk)
	if first == nil || first.RefreshToken == "" || first.SignedInAs != alice {
		t.Fatalf("stored entry after login = %+v", first)
	}

	// Cached: no token request on the login path.
	before := e.f.TokenRequests()
	tok := e.token(e.m, helpdesk)
	for range 5 {
		if got := e.token(e.m, helpdesk); got != tok {
			t.Fatal("cached token changed")
		}
	}
	if n := e.f.TokenRequests() - before; n != 0 {
		t.Fatalf("%d token requests while the cached token is valid, want 0", n)
	}

	// Rejected -> exactly one refresh; the rotated refresh token is persisted.
	e.m.Rejected(helpdesk, tok)
	tok2 := e.token(e.m, helpdesk)
	if tok2 == tok {
		t.Fatal("AccessToken() after Rejected returned the rejected token")
	}
	if n := e.grants(grantRT); n != 1 {
		t.Fatalf("refresh_token grants = %d, want 1", n)
	}
	second := storedEntry(t, e.dir, helpdesk)
	if second.RefreshToken == first.RefreshToken || second.AccessToken != tok2 {
		t.Fatal("rotated refresh token / new access token not persisted")
	}
	e.m.Rejected(helpdesk, "some-other-token") // stale rejections are ignored
	if got := e.token(e.m, helpdesk); got != tok2 {
		t.Fatal("a rejection of another token dropped the current one")
	}

	// Restart: the stored token serves with no token request.
	e.m.Close()
	before = e.f.TokenRequests()
	m2 := e.open()
	if got := e.token(m2, helpdesk); got != tok2 {
		t.Fatal("restarted manager did not serve the stored token")
	}
	if n := e.f.TokenRequests() - before; n != 0 {
		t.Fatalf("%d token requests after restart, want 0", n)
	}
	s := statusOf(m2, helpdesk)
	if s.State != StateOK || s.SignedInAs != alice || s.Mailbox != "hd@contoso.com" || s.Delegate != alice || s.Expiry.IsZero() || s.LastRefresh.IsZero() {
		t.Fatalf("Status = %+v", s)
	}

	if v := testutil.ToFloat64(testMetrics.TokenExpiry.WithLabelValues(helpdesk)); v <= 0 {
		t.Fatalf("token_expiry_seconds = %v, want > 0", v)
	}
	// Nothing secret in the logs or Status.
	js, _ := json.Marshal(m2.Status())
	logs := e.logs.String() + string(js)
	for _, sec := range []string{tok, tok2, first.RefreshToken, second.RefreshToken, secret} {
		if strings.Contains(logs, sec) {
			t.Fatal("a token or secret was logged")
		}
	}
}

func TestDeviceLoginSlowDownDenyExpiry(t *testing.T) {
	e := newEnv(t, envOpts{secret: secret})
	t.Run("slow_down", func(t *testing.T) {
		e.f.SetDeviceSlowDown(2)
		dl, ch, err := e.m.StartDeviceLogin(context.Background(), helpdesk)
		if err != nil {
			t.Fatal(err)
		}
		// Drain earlier sleeps, then watch the interval grow by 5 s per slow_down.
		var got []time.Duration
		eventually(t, "three polls", func() bool {
			for {
				select {
				case d := <-e.sleeps:
					got = append(got, d)
					continue
				default:
				}
				return len(got) >= 3
			}
		})
		if got[0] != time.Second || got[1] != 6*time.Second || got[2] != 11*time.Second {
			t.Fatalf("poll waits = %v, want 1s, 6s, 11s", got[:3])
		}
		if err := e.f.ApproveDevice(dl.UserCode, alice); err != nil {
			t.Fatal(err)
		}
		if err := wait(t, ch); err != nil {
			t.Fatalf("login after slow_down = %v", err)
		}
	})
	t.Run("denied", func(t *testing.T) {
		dl, ch, err := e.m.StartDeviceLogin(context.Background(), helpdesk)
		if err != nil {
			t.Fatal(err)
		}
		e.f.DenyDevice(dl.UserCode)
		err = wait(t, ch)
		if te := asError(t, err); te.Kind != NeedsLogin || !strings.Contains(te.Reason, "declined") {
			t.Fatalf("denied login = %v", err)
		}
	})
	t.Run("expired", func(t *testing.T) {
		_, ch, err := e.m.StartDeviceLogin(context.Background(), helpdesk)
		if err != nil {
			t.Fatal(err)
		}
		e.clock.Add(16 * time.Minute)
		err = wait(t, ch)
		if te := asError(t, err); te.Kind != NeedsLogin || !strings.Contains(te.Reason, "expired") {
			t.Fatalf("expired login = %v", err)
		}
	})
	if _, _, err := e.m.StartDeviceLogin(context.Background(), scanner); KindOf(err) != Failing {
		t.Fatalf("StartDeviceLogin(app account) = %v, want failing", err)
	}
}

func TestUserMismatchStoresNothing(t *testing.T) {
	e := newEnv(t, envOpts{secret: secret})
	err := e.deviceLogin(e.m, helpdesk, bob)
	want := "user mismatch: signed in as bob@contoso.com, but account helpdesk expects alice@contoso.com; sign in as alice@contoso.com"
	if err == nil || !strings.Contains(err.Error(), want) {
		t.Fatalf("login as bob = %v, want %q", err, want)
	}
	if ent := storedEntry(t, e.dir, helpdesk); ent != nil {
		t.Fatalf("mismatched login stored %+v", ent)
	}
	if _, err := e.m.AccessToken(context.Background(), helpdesk); KindOf(err) != NeedsLogin {
		t.Fatalf("AccessToken() after mismatch = %v, want needs_login", err)
	}
	// Case does not matter.
	if err := e.deviceLogin(e.m, helpdesk, "Alice@Contoso.com"); err != nil {
		t.Fatalf("login with other case = %v", err)
	}
}

var hiddenInput = regexp.MustCompile(`<input type="hidden" name="([^"]+)" value="([^"]*)">`)

// browserSignIn drives the fake's sign-in page like a browser and returns
// the redirect's state and code.
func browserSignIn(t *testing.T, authURL string) (state, code string) {
	t.Helper()
	c := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	resp, err := c.Get(authURL)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	form := url.Values{}
	for _, m := range hiddenInput.FindAllStringSubmatch(string(body), -1) {
		form.Set(html.UnescapeString(m[1]), html.UnescapeString(m[2]))
	}
	login := regexp.MustCompile(`name="login" type="email" value="([^"]*)"`).FindStringSubmatch(string(body))
	if len(login) < 2 || form.Get("state") == "" {
		t.Fatalf("sign-in page has no form:\n%s", body)
	}
	form.Set("login", html.UnescapeString(login[1]))
	form.Set("action", "signin")
	u, _ := url.Parse(authURL)
	u.RawQuery = ""
	resp, err = c.PostForm(u.String(), form)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	loc, err := url.Parse(resp.Header.Get("Location"))
	if resp.StatusCode != http.StatusFound || err != nil {
		t.Fatalf("sign-in POST = %s, Location %q", resp.Status, resp.Header.Get("Location"))
	}
	return loc.Query().Get("state"), loc.Query().Get("code")
}

func TestBrowserLogin(t *testing.T) {
	e := newEnv(t, envOpts{secret: secret})
	authURL, err := e.m.BrowserLoginURL(helpdesk, redirect)
	if err != nil {
		t.Fatal(err)
	}
	q, _ := url.Parse(authURL)
	if v := q.Query(); v.Get("code_challenge_method") != "S256" || v.Get("code_challenge") == "" || v.Get("login_hint") != alice ||
		v.Get("redirect_uri") != redirect || len(v.Get("state")) < 40 || !strings.Contains(v.Get("scope"), "offline_access") ||
		!strings.HasPrefix(authURL, e.f.AuthorityURL+"/t/oauth2/v2.0/authorize?") {
		t.Fatalf("BrowserLoginURL() = %s", authURL)
	}
	state, code := browserSignIn(t, authURL)
	acct, err := e.m.CompleteBrowserLogin(context.Background(), state, code)
	if err != nil || acct != helpdesk {
		t.Fatalf("CompleteBrowserLogin() = %q, %v", acct, err)
	}
	if e.grants(grantAC) != 1 || statusOf(e.m, helpdesk).SignedInAs != alice {
		t.Fatalf("after browser login: grants %v, status %+v", e.f.TokenRequestsByGrant(), statusOf(e.m, helpdesk))
	}
	e.token(e.m, helpdesk)
	// The state is single-use.
	if _, err := e.m.CompleteBrowserLogin(context.Background(), state, code); err == nil || !strings.Contains(err.Error(), "already used") {
		t.Fatalf("reused state = %v", err)
	}
	if _, err := e.m.CompleteBrowserLogin(context.Background(), "made-up", code); err == nil {
		t.Fatal("unknown state accepted")
	}

	t.Run("pkce tampered", func(t *testing.T) {
		e := newEnv(t, envOpts{secret: secret})
		authURL, _ := e.m.BrowserLoginURL(helpdesk, redirect)
		state, code := browserSignIn(t, authURL)
		e.m.TamperVerifierForTest(state)
		_, err := e.m.CompleteBrowserLogin(context.Background(), state, code)
		if te := asError(t, err); te.Kind != NeedsLogin || !strings.Contains(te.Reason, "refused") {
			t.Fatalf("tampered verifier = %v", err)
		}
		if storedEntry(t, e.dir, helpdesk) != nil {
			t.Fatal("failed login stored tokens")
		}
	})
	t.Run("expired state", func(t *testing.T) {
		authURL, _ := e.m.BrowserLoginURL(helpdesk, redirect)
		state, code := browserSignIn(t, authURL)
		e.clock.Add(DefaultBrowserLoginTTL + time.Second)
		if _, err := e.m.CompleteBrowserLogin(context.Background(), state, code); KindOf(err) != NeedsLogin || !strings.Contains(err.Error(), "10 minutes") {
			t.Fatalf("expired state = %v", err)
		}
	})
	t.Run("mismatch", func(t *testing.T) {
		e := newEnv(t, envOpts{secret: secret})
		e.f.SetSignInUser(bob)
		authURL, _ := e.m.BrowserLoginURL(helpdesk, redirect)
		state, code := browserSignIn(t, authURL)
		_, err := e.m.CompleteBrowserLogin(context.Background(), state, code)
		if err == nil || !strings.Contains(err.Error(), "user mismatch: signed in as bob@contoso.com") {
			t.Fatalf("mismatch = %v", err)
		}
		if storedEntry(t, e.dir, helpdesk) != nil {
			t.Fatal("mismatched login stored tokens")
		}
	})
}

func TestPublicClientSendsNoSecret(t *testing.T) {
	// The fake refuses a secret from a public client (AADSTS700025).
	e := newEnv(t, envOpts{secret: ""})
	if err := e.deviceLogin(e.m, helpdesk, alice); err != nil {
		t.Fatalf("public client device login = %v", err)
	}
	e.m.Rejected(helpdesk, e.token(e.m, helpdesk))
	e.token(e.m, helpdesk)
	if e.grants(grantRT) != 1 {
		t.Fatalf("grants = %v", e.f.TokenRequestsByGrant())
	}
}

func TestRevokedRefreshTokenNeedsLogin(t *testing.T) {
	e := newEnv(t, envOpts{secret: secret})
	if err := e.deviceLogin(e.m, helpdesk, alice); err != nil {
		t.Fatal(err)
	}
	tok := e.token(e.m, helpdesk)
	e.f.RevokeRefreshTokens(alice)
	e.m.Rejected(helpdesk, tok)
	_, err := e.m.AccessToken(context.Background(), helpdesk)
	te := asError(t, err)
	if te.Kind != NeedsLogin || te.AADSTS != 50173 || te.Fix != "run 'oauthbridge login helpdesk'" || !strings.Contains(te.Reason, "revoked") {
		t.Fatalf("AccessToken() after revocation = %#v", te)
	}
	// No more token requests, however often logins ask.
	before := e.f.TokenRequests()
	for range 10 {
		if _, err := e.m.AccessToken(context.Background(), helpdesk); KindOf(err) != NeedsLogin {
			t.Fatalf("repeat = %v", err)
		}
	}
	if n := e.f.TokenRequests() - before; n != 0 {
		t.Fatalf("%d token requests in needs_login, want 0", n)
	}
	if n := strings.Count(e.logs.String(), "failed permanently"); n != 1 {
		t.Fatalf("permanent failure logged %d times, want once", n)
	}
	s := statusOf(e.m, helpdesk)
	if s.State != StateNeedsLogin || s.AADSTS != 50173 || !strings.Contains(s.Fix, "oauthbridge login helpdesk") || s.LastError == "" {
		t.Fatalf("Status = %+v", s)
	}
	if v := testutil.ToFloat64(testMetrics.AccountState.WithLabelValues(helpdesk, "needs_login")); v != 1 {
		t.Fatalf("account_state{needs_login} = %v, want 1", v)
	}
	if v := testutil.ToFloat64(testMetrics.AccountState.WithLabelValues(helpdesk, "ok")); v != 0 {
		t.Fatalf("account_state{ok} = %v, want 0", v)
	}
	if v := testutil.ToFloat64(testMetrics.TokenRefreshes.WithLabelValues(helpdesk, "needs_login")); v < 1 {
		t.Fatalf("token_refreshes{needs_login} = %v, want >= 1", v)
	}
	// The state survives a restart, still without token requests.
	e.m.Close()
	m2 := e.open()
	if _, err := m2.AccessToken(context.Background(), helpdesk); KindOf(err) != NeedsLogin {
		t.Fatalf("after restart = %v", err)
	}
	if s := statusOf(m2, helpdesk); s.State != StateNeedsLogin || s.AADSTS != 50173 {
		t.Fatalf("Status after restart = %+v", s)
	}
	if n := e.f.TokenRequests() - before; n != 0 {
		t.Fatalf("%d token requests after restart in needs_login", n)
	}
	// A new sign-in fixes it.
	e.clock.Add(time.Second) // tokens issued after the revocation
	if err := e.deviceLogin(m2, helpdesk, alice); err != nil {
		t.Fatal(err)
	}
	e.token(m2, helpdesk)
	if s := statusOf(m2, helpdesk); s.State != StateOK || s.LastError != "" {
		t.Fatalf("Status after new login = %+v", s)
	}
}

func TestConcurrentDemandsOneRequest(t *testing.T) {
	e := newEnv(t, envOpts{secret: secret})
	if err := e.deviceLogin(e.m, helpdesk, alice); err != nil {
		t.Fatal(err)
	}
	old := e.token(e.m, helpdesk)
	e.clock.Add(2 * tokenLife) // the cached token has expired
	before := e.f.TokenRequests()
	var wg sync.WaitGroup
	toks := make([]string, 100)
	errs := make([]error, 100)
	for i := range 100 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			toks[i], errs[i] = e.m.AccessToken(context.Background(), helpdesk)
		}()
	}
	wg.Wait()
	for i := range 100 {
		if errs[i] != nil || toks[i] != toks[0] || toks[i] == old {
			t.Fatalf("demand %d = %q, %v", i, toks[i], errs[i])
		}
	}
	if n := e.f.TokenRequests() - before; n != 1 {
		t.Fatalf("100 concurrent demands made %d token requests, want 1", n)
	}
}

func TestTemporaryFailuresKeepServing(t *testing.T) {
	e := newEnv(t, envOpts{secret: secret})
	if err := e.deviceLogin(e.m, helpdesk, alice); err != nil {
		t.Fatal(err)
	}
	old := e.token(e.m, helpdesk)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	e.m.Start(ctx)

	for _, fault := range []fakems.TokenFault{{Status: 500}, {Status: 429}, {Status: 503, Code: "temporarily_unavailable"}} {
		e.f.SetTokenFault(fault)
		before := e.grants(grantRT)
		// Inside the refresh margin: the background loop retries with backoff.
		e.clock.Add(tokenLife - 9*time.Minute)
		e.m.WakeForTest()
		eventually(t, "three refresh attempts", func() bool {
			e.clock.Add(100 * time.Millisecond) // backoff runs on the manager's clock
			e.m.WakeForTest()
			return e.grants(grantRT)-before >= 3
		})
		if got := e.token(e.m, helpdesk); got != old {
			t.Fatalf("fault %+v: the still valid token was not served", fault)
		}
		if s := statusOf(e.m, helpdesk); s.State != StateOK || !strings.Contains(s.LastError, "HTTP") {
			t.Fatalf("fault %+v: Status = %+v", fault, s)
		}
		// Expired and still failing: Temporary, fast.
		e.clock.Add(10 * time.Minute)
		start := time.Now()
		_, err := e.m.AccessToken(context.Background(), helpdesk)
		if KindOf(err) != Temporary || time.Since(start) > time.Second {
			t.Fatalf("fault %+v: AccessToken() after expiry = %v after %v, want temporary, fast", fault, err, time.Since(start))
		}
		if s := statusOf(e.m, helpdesk); s.State != StateFailing {
			t.Fatalf("fault %+v: Status = %+v, want failing while no token is valid", fault, s)
		}
		// Recovery.
		e.f.SetTokenFault(fakems.TokenFault{})
		eventually(t, "recovery", func() bool {
			e.clock.Add(100 * time.Millisecond)
			tok, err := e.m.AccessToken(context.Background(), helpdesk)
			if err == nil && tok != old {
				old = tok
				return true
			}
			return false
		})
		if s := statusOf(e.m, helpdesk); s.State != StateOK || s.LastError != "" {
			t.Fatalf("Status after recovery = %+v", s)
		}
	}
	if strings.Contains(e.logs.String(), "level=ERROR") {
		t.Fatalf("temporary failures were logged at error level:\n%s", e.logs.String())
	}
}

func TestHangingEndpoint(t *testing.T) {
	e := newEnv(t, envOpts{secret: secret, manager: func(o *Options) { o.RequestTimeout = 400 * time.Millisecond }})
	if err := e.deviceLogin(e.m, helpdesk, alice); err != nil {
		t.Fatal(err)
	}
	old := e.token(e.m, helpdesk)
	e.f.SetTokenFault(fakems.TokenFault{Hang: true})
	// In the refresh margin: the old token serves at once while a refresh hangs.
	e.clock.Add(tokenLife - 5*time.Minute)
	start := time.Now()
	if got := e.token(e.m, helpdesk); got != old || time.Since(start) > 200*time.Millisecond {
		t.Fatalf("valid token not served promptly during a hanging refresh")
	}
	// Expired: a login waits no longer than its ctx.
	e.clock.Add(10 * time.Minute)
	ctx, cancel := context.WithTimeout(context.Background(), 150*time.Millisecond)
	defer cancel()
	start = time.Now()
	_, err := e.m.AccessToken(ctx, helpdesk)
	if KindOf(err) != Temporary || time.Since(start) > time.Second {
		t.Fatalf("AccessToken() against a hanging endpoint = %v after %v", err, time.Since(start))
	}
	e.f.SetTokenFault(fakems.TokenFault{})
	eventually(t, "recovery after the hang", func() bool {
		e.clock.Add(100 * time.Millisecond)
		tok, err := e.m.AccessToken(context.Background(), helpdesk)
		return err == nil && tok != old
	})
}

func TestBackgroundRefreshAndIdle(t *testing.T) {
	e := newEnv(t, envOpts{secret: secret})
	if err := e.deviceLogin(e.m, helpdesk, alice); err != nil {
		t.Fatal(err)
	}
	old := e.token(e.m, helpdesk)
	oldApp := e.token(e.m, scanner)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	e.m.Start(ctx)
	// Not due yet: nothing happens.
	time.Sleep(50 * time.Millisecond)
	if e.grants(grantRT) != 0 || e.grants(grantCC) != 1 {
		t.Fatalf("early refresh: %v", e.f.TokenRequestsByGrant())
	}
	// Due: margin = min(10m, lifetime/4) = 10m, plus jitter below 2.5m.
	e.clock.Add(tokenLife - 9*time.Minute)
	e.m.WakeForTest()
	eventually(t, "background refresh", func() bool {
		return e.token(e.m, helpdesk) != old && e.token(e.m, scanner) != oldApp
	})
	time.Sleep(50 * time.Millisecond)
	if e.grants(grantRT) != 1 || e.grants(grantCC) != 2 {
		t.Fatalf("refreshes after the background one: %v", e.f.TokenRequestsByGrant())
	}
}

func TestIdleRefresh(t *testing.T) {
	e := newEnv(t, envOpts{secret: secret, manager: func(o *Options) { o.IdleRefresh = 20 * time.Minute }})
	if err := e.deviceLogin(e.m, helpdesk, alice); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	e.m.Start(ctx)
	e.clock.Add(21 * time.Minute) // long before expiry, but idle too long
	e.m.WakeForTest()
	eventually(t, "idle refresh", func() bool { return e.grants(grantRT) == 1 })
}

func TestAppFlow(t *testing.T) {
	e := newEnv(t, envOpts{secret: secret})
	tok := e.token(e.m, scanner)
	if e.token(e.m, scanner) != tok || e.grants(grantCC) != 1 {
		t.Fatalf("app token not cached: %v", e.f.TokenRequestsByGrant())
	}
	if s := statusOf(e.m, scanner); s.State != StateOK || s.Flow != "app" {
		t.Fatalf("Status = %+v", s)
	}
	if _, err := e.m.BrowserLoginURL(scanner, redirect); KindOf(err) != Failing {
		t.Fatalf("BrowserLoginURL(app) = %v", err)
	}

	t.Run("wrong secret", func(t *testing.T) {
		e := newEnv(t, envOpts{secret: secret, configSecret: "secret-id-not-value"})
		_, err := e.m.AccessToken(context.Background(), scanner)
		te := asError(t, err)
		if te.Kind != Failing || te.AADSTS != 7000215 || !strings.Contains(te.Fix, "client_secret of provider p") {
			t.Fatalf("AccessToken() = %#v", te)
		}
		if strings.Contains(err.Error(), "secret-id-not-value") || strings.Contains(e.logs.String(), "secret-id-not-value") {
			t.Fatal("the secret leaked into an error or log")
		}
		before := e.f.TokenRequests()
		for range 5 {
			e.m.AccessToken(context.Background(), scanner)
		}
		if e.f.TokenRequests() != before {
			t.Fatal("failing account hammered the token endpoint")
		}
		if s := statusOf(e.m, scanner); s.State != StateFailing || s.AADSTS != 7000215 {
			t.Fatalf("Status = %+v", s)
		}
		// The administrator fixes the secret and reloads.
		e.cfg = testConfig(t, e.dir, e.f.AuthorityURL, secret,
			testAccount{name: helpdesk, mailbox: "hd@contoso.com", delegate: alice},
			testAccount{name: scanner, mailbox: "scan@contoso.com", flow: "app"})
		if err := e.m.Reload(e.cfg); err != nil {
			t.Fatal(err)
		}
		e.token(e.m, scanner)
		if s := statusOf(e.m, scanner); s.State != StateOK || s.LastError != "" {
			t.Fatalf("Status after fix = %+v", s)
		}
	})
	t.Run("expired secret fault", func(t *testing.T) {
		e := newEnv(t, envOpts{secret: secret})
		e.f.SetTokenFault(fakems.TokenFault{Status: 401, Code: "invalid_client", AADSTS: 7000222})
		_, err := e.m.AccessToken(context.Background(), scanner)
		if te := asError(t, err); te.Kind != Failing || !strings.Contains(te.Fix, "rotate the client secret in Entra and update client_secret") {
			t.Fatalf("AccessToken() = %v", err)
		}
	})
}

func TestStoreWriteFailureKeepsServing(t *testing.T) {
	e := newEnv(t, envOpts{secret: secret})
	if err := e.deviceLogin(e.m, helpdesk, alice); err != nil {
		t.Fatal(err)
	}
	tok := e.token(e.m, helpdesk)
	e.m.SetStoreWriteErrorForTest(errors.New("no space left on device"))
	e.m.Rejected(helpdesk, tok)
	tok2 := e.token(e.m, helpdesk)
	if tok2 == tok {
		t.Fatal("no new token")
	}
	s := statusOf(e.m, helpdesk)
	if s.State != StateOK || !strings.Contains(s.LastError, "no space left on device") || !strings.Contains(s.Fix, e.dir) {
		t.Fatalf("Status = %+v", s)
	}
	e.m.Rejected(helpdesk, tok2)
	tok3 := e.token(e.m, helpdesk)
	if n := strings.Count(e.logs.String(), "cannot save the token store"); n != 1 {
		t.Fatalf("store failure logged %d times, want once", n)
	}
	if !strings.Contains(e.logs.String(), "level=ERROR") {
		t.Fatal("store failure not logged at error level")
	}
	// The disk is fine again: the next write clears the error and persists.
	e.m.SetStoreWriteErrorForTest(nil)
	e.m.Rejected(helpdesk, tok3)
	tok4 := e.token(e.m, helpdesk)
	if s := statusOf(e.m, helpdesk); s.LastError != "" {
		t.Fatalf("Status after recovery = %+v", s)
	}
	if ent := storedEntry(t, e.dir, helpdesk); ent.AccessToken != tok4 {
		t.Fatal("recovered store not written")
	}
}

func TestNewManagerRefusesBadStore(t *testing.T) {
	e := newEnv(t, envOpts{secret: secret})
	if err := e.deviceLogin(e.m, helpdesk, alice); err != nil {
		t.Fatal(err)
	}
	e.m.Close()
	path := filepath.Join(e.dir, StoreFileName)
	good, _ := os.ReadFile(path)

	other := filepath.Join(t.TempDir(), "key")
	os.WriteFile(other, []byte(strings.Repeat("z", KeySize)), 0o600)
	o := e.opts
	o.KeyFile = other
	if _, err := NewManager(e.cfg, o); err == nil || !strings.Contains(err.Error(), "different key") {
		t.Fatalf("NewManager(wrong key) = %v", err)
	}
	bad := append([]byte(nil), good...)
	bad[len(bad)/2] ^= 1
	os.WriteFile(path, bad, 0o600)
	if _, err := NewManager(e.cfg, e.opts); err == nil || !strings.Contains(err.Error(), "damaged") || !strings.Contains(err.Error(), "log every account in again") {
		t.Fatalf("NewManager(corrupt) = %v", err)
	}
	if got, _ := os.ReadFile(path); string(got) != string(bad) {
		t.Fatal("NewManager modified a damaged store")
	}
}

func TestCrossProcessLoginAdopted(t *testing.T) {
	e := newEnv(t, envOpts{secret: secret})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	e.m.Start(ctx) // the daemon
	cli := e.open()
	if err := e.deviceLogin(cli, helpdesk, alice); err != nil {
		t.Fatal(err)
	}
	cli.Close()
	eventually(t, "the daemon adopting the CLI's sign-in", func() bool {
		_, err := e.m.AccessToken(context.Background(), helpdesk)
		return err == nil
	})
	if s := statusOf(e.m, helpdesk); s.SignedInAs != alice || s.State != StateOK {
		t.Fatalf("Status = %+v", s)
	}
}

func TestReload(t *testing.T) {
	e := newEnv(t, envOpts{secret: secret})
	if err := e.deviceLogin(e.m, helpdesk, alice); err != nil {
		t.Fatal(err)
	}
	e.token(e.m, helpdesk)
	// Remove helpdesk, add "shared" with bob as delegate.
	cfg := testConfig(t, e.dir, e.f.AuthorityURL, secret,
		testAccount{name: "shared", mailbox: "hd@contoso.com", delegate: bob},
		testAccount{name: scanner, mailbox: "scan@contoso.com", flow: "app"})
	if err := e.m.Reload(cfg); err != nil {
		t.Fatal(err)
	}
	st := e.m.Status()
	if len(st) != 2 || st[0].Account != scanner || st[1].Account != "shared" || st[1].State != StateNeedsLogin {
		t.Fatalf("Status after reload = %+v", st)
	}
	if _, err := e.m.AccessToken(context.Background(), helpdesk); KindOf(err) != Failing {
		t.Fatalf("removed account = %v", err)
	}
	// Re-add helpdesk: its stored tokens come back. Then change its delegate:
	// the old tokens belong to someone else and are not used.
	cfg = testConfig(t, e.dir, e.f.AuthorityURL, secret, testAccount{name: helpdesk, mailbox: "hd@contoso.com", delegate: alice})
	e.m.Reload(cfg)
	e.token(e.m, helpdesk)
	cfg = testConfig(t, e.dir, e.f.AuthorityURL, secret, testAccount{name: helpdesk, mailbox: "hd@contoso.com", delegate: bob})
	e.m.Reload(cfg)
	if _, err := e.m.AccessToken(context.Background(), helpdesk); KindOf(err) != NeedsLogin || !strings.Contains(err.Error(), bob) {
		t.Fatalf("after delegate change = %v", err)
	}
	bad := testConfig(t, t.TempDir(), e.f.AuthorityURL, secret)
	if err := e.m.Reload(bad); err == nil {
		t.Fatal("Reload accepted a state_dir change")
	}
}

func TestConsentURL(t *testing.T) {
	p := &config.Provider{Authority: "https://login.microsoftonline.com", Tenant: "contoso.onmicrosoft.com", ClientID: "abc", AppScope: "https://outlook.office365.com/.default"}
	got := ConsentURL(p, "https://bridge.example/oauth/consent")
	want := "https://login.microsoftonline.com/contoso.onmicrosoft.com/v2.0/adminconsent?client_id=abc&redirect_uri=https%3A%2F%2Fbridge.example%2Foauth%2Fconsent&scope=https%3A%2F%2Foutlook.office365.com%2F.default"
	if got != want {
		t.Fatalf("ConsentURL() =\n%s\nwant\n%s", got, want)
	}
	p.Tenant = "common"
	if got := ConsentURL(p, ""); !strings.HasPrefix(got, "https://login.microsoftonline.com/organizations/v2.0/adminconsent?") {
		t.Fatalf("ConsentURL(common) = %s", got)
	}
}

func TestUnknownAccount(t *testing.T) {
	e := newEnv(t, envOpts{secret: secret})
	if _, err := e.m.AccessToken(context.Background(), "nope"); KindOf(err) != Failing {
		t.Fatalf("AccessToken(unknown) = %v", err)
	}
	e.m.Rejected("nope", "x") // must not panic
}

// TestReloadDuringLoginStoreWrite: the delegate changes while a finished
// sign-in writes its tokens to the store (after the binding was checked);
// the old delegate's tokens are not installed, and the account waits for
// the new delegate.
func TestReloadDuringLoginStoreWrite(t *testing.T) {
	e := newEnv(t, envOpts{secret: secret})
	cfg := testConfig(t, e.dir, e.f.AuthorityURL, secret, testAccount{name: helpdesk, mailbox: "hd@contoso.com", delegate: bob})
	e.m.SetLoginStoredHookForTest(func(string) {
		if err := e.m.Reload(cfg); err != nil {
			t.Errorf("Reload() = %v", err)
		}
	})
	dl, done, err := e.m.StartDeviceLogin(context.Background(), helpdesk)
	if err != nil {
		t.Fatal(err)
	}
	if err := e.f.ApproveDevice(dl.UserCode, alice); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		if err == nil || !strings.Contains(err.Error(), "changed while the sign-in was running") {
			t.Errorf("device login with a delegate change during its store write = %v", err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("device login did not finish")
	}
	if _, err := e.m.AccessToken(context.Background(), helpdesk); KindOf(err) != NeedsLogin || !strings.Contains(err.Error(), bob) {
		t.Fatalf("AccessToken after a delegate change during the sign-in's store write = %v, want needs_login naming %s", err, bob)
	}
	for _, st := range e.m.Status() {
		if st.Account == helpdesk && strings.EqualFold(st.SignedInAs, alice) {
			t.Fatalf("status shows delegate %s signed in as %s: %+v", bob, alice, st)
		}
	}
}

// TestReloadDuringDeviceLogin: the delegate changes while a device-code
// sign-in is running; when the old delegate completes it, nothing is
// installed and the account still waits for the new delegate.
func TestReloadDuringDeviceLogin(t *testing.T) {
	e := newEnv(t, envOpts{secret: secret})
	dl, done, err := e.m.StartDeviceLogin(context.Background(), helpdesk)
	if err != nil {
		t.Fatal(err)
	}
	cfg := testConfig(t, e.dir, e.f.AuthorityURL, secret, testAccount{name: helpdesk, mailbox: "hd@contoso.com", delegate: bob})
	if err := e.m.Reload(cfg); err != nil {
		t.Fatal(err)
	}
	if err := e.f.ApproveDevice(dl.UserCode, alice); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		if err == nil || !strings.Contains(err.Error(), "changed while the sign-in was running") {
			t.Fatalf("device login after a delegate change = %v", err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("device login did not finish")
	}
	if _, err := e.m.AccessToken(context.Background(), helpdesk); KindOf(err) != NeedsLogin || !strings.Contains(err.Error(), bob) {
		t.Fatalf("AccessToken after the refused sign-in = %v, want needs_login naming %s", err, bob)
	}
}
