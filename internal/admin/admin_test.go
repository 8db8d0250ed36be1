package admin

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/crypto/bcrypt"

	"github.com/oauthbridge/oauthbridge/config"
	"github.com/oauthbridge/oauthbridge/internal/localauth"
	"github.com/oauthbridge/oauthbridge/internal/metrics"
	"github.com/oauthbridge/oauthbridge/tokens"
)

var testNow = time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)

const (
	clientSecret = "SUPER-SECRET-client-value"
	adminPass    = "correct horse"
)

type fakeTokens struct {
	mu        sync.Mutex
	status    []tokens.AccountStatus
	redirects []string // redirectURI of each BrowserLoginURL call
	urlErr    error
	complete  func(state, code string) (string, error)
	deviceCh  chan error
	devices   []string
}

func (f *fakeTokens) Status() []tokens.AccountStatus {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]tokens.AccountStatus(nil), f.status...)
}

func (f *fakeTokens) BrowserLoginURL(account, redirectURI string) (string, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.redirects = append(f.redirects, redirectURI)
	if f.urlErr != nil {
		return "", f.urlErr
	}
	return "https://login.example.test/authorize?state=st-" + url.QueryEscape(account), nil
}

func (f *fakeTokens) CompleteBrowserLogin(_ context.Context, state, code string) (string, error) {
	return f.complete(state, code)
}

func (f *fakeTokens) StartDeviceLogin(_ context.Context, account string) (*tokens.DeviceLogin, <-chan error, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.devices = append(f.devices, account)
	if account == "broken" {
		return nil, nil, errors.New("tokens: account \"broken\": app flow has no device login")
	}
	return &tokens.DeviceLogin{Account: account, VerificationURI: "https://microsoft.com/devicelogin", UserCode: "ABCD-EFGH",
		Expires: testNow.Add(15 * time.Minute), Interval: 5}, f.deviceCh, nil
}

func newFake() *fakeTokens {
	return &fakeTokens{
		status: []tokens.AccountStatus{
			{Account: "helpdesk", Mailbox: "helpdesk@contoso.com", Flow: "delegated", State: tokens.StateOK,
				Expiry: testNow.Add(52 * time.Minute), LastRefresh: testNow.Add(-8 * time.Minute), SignedInAs: "alice@contoso.com",
				ClientSecretExpires: testNow.Add(20 * 24 * time.Hour)},
			{Account: "sales", Mailbox: "sales@contoso.com", Flow: "delegated", State: tokens.StateNeedsLogin,
				LastError: `refresh refused <script>alert("x")</script>`, Fix: "run 'oauthbridge login sales' & retry", AADSTS: 70008},
			{Account: "robot", Mailbox: "robot@contoso.com", Flow: "app", State: tokens.StateUnknown,
				SendVia: "auto", SendPath: "graph", SendPathReason: "SMTP AUTH is disabled: 535 5.7.139 <x>",
				GraphError: "no consent for Mail.Send", GraphFix: "add Mail.Send & consent"},
		},
		deviceCh: make(chan error, 1),
		complete: func(state, code string) (string, error) {
			if state == "st-helpdesk" && code == "good" {
				return "helpdesk", nil
			}
			if state == "st-sales" {
				return "sales", errors.New("tokens: account \"sales\": no authorization code")
			}
			return "", errors.New(`tokens: unknown or expired sign-in state <b>`)
		},
	}
}

type env struct {
	t     *testing.T
	met   *metrics.Metrics
	h     http.Handler
	fake  *fakeTokens
	cfg   *config.Config
	ready error
}

// newEnv builds the handler; withAuth sets an admin password hash.
func newEnv(t *testing.T, withAuth bool) *env {
	t.Helper()
	e := &env{t: t, fake: newFake()}
	e.cfg = &config.Config{
		Admin: &config.AdminBlock{Listen: "127.0.0.1:8025", PublicURL: "http://127.0.0.1:8025"},
		Providers: []*config.Provider{{Name: "m365", Authority: "https://login.example.test",
			ClientSecret: config.Secret(clientSecret)}},
	}
	if withAuth {
		hash, err := bcrypt.GenerateFromPassword([]byte(adminPass), bcrypt.MinCost)
		if err != nil {
			t.Fatal(err)
		}
		e.cfg.Admin.Username = "admin"
		e.cfg.Admin.PasswordHash = config.Secret(hash)
	}
	reg := metrics.NewRegistry()
	e.met = metrics.New(reg)
	e.h = New(Options{
		Metrics: reg,
		Config:  func() *config.Config { return e.cfg },
		Tokens:  e.fake,
		Ready:   func() error { return e.ready },
		Version: "1.2.3-test",
		Logger:  testLogger(t),
		Now:     func() time.Time { return testNow },
		Auth:    localauth.Options{CheckInterval: time.Minute, ThrottledHold: time.Millisecond, MaxQueueWait: time.Millisecond},
	})
	return e
}

type reqOpt func(*http.Request)

func basic(u, p string) reqOpt  { return func(r *http.Request) { r.SetBasicAuth(u, p) } }
func header(k, v string) reqOpt { return func(r *http.Request) { r.Header.Set(k, v) } }
func cookie(c *http.Cookie) reqOpt {
	return func(r *http.Request) { r.AddCookie(c) }
}
func fromIP(ip string) reqOpt { return func(r *http.Request) { r.RemoteAddr = ip + ":40000" } }

func (e *env) do(method, target string, body url.Values, opts ...reqOpt) *http.Response {
	e.t.Helper()
	var rd io.Reader
	if body != nil {
		rd = strings.NewReader(body.Encode())
	}
	r := httptest.NewRequest(method, target, rd)
	r.Host = "127.0.0.1:8025"
	if body != nil {
		r.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	}
	for _, o := range opts {
		o(r)
	}
	w := httptest.NewRecorder()
	e.h.ServeHTTP(w, r)
	resp := w.Result()
	resp.Request = r // for failure messages
	return resp
}

func readBody(t *testing.T, resp *http.Response) string {
	t.Helper()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func wantStatus(t *testing.T, resp *http.Response, code int) string {
	t.Helper()
	body := readBody(t, resp)
	if resp.StatusCode != code {
		t.Fatalf("%s %s = %d, want %d; body: %s", resp.Request.Method, resp.Request.URL, resp.StatusCode, code, body)
	}
	return body
}

func TestHealthz(t *testing.T) {
	e := newEnv(t, true)
	body := wantStatus(t, e.do("GET", "/healthz", nil), 200)
	if strings.TrimSpace(body) != "ok" {
		t.Errorf("/healthz body = %q, want ok", body)
	}
}

func TestReadyz(t *testing.T) {
	e := newEnv(t, true)
	auth := basic("admin", adminPass)
	// The fake's "sales" account needs a sign-in: not ready, with the fix.
	body := wantStatus(t, e.do("GET", "/readyz", nil, auth), 503)
	if want := "account sales needs login: run 'oauthbridge login sales'"; !strings.Contains(body, want) {
		t.Errorf("/readyz body = %q, want %q", body, want)
	}
	if strings.Contains(body, "helpdesk") || strings.Contains(body, "robot") {
		t.Errorf("/readyz names accounts that need no login: %q", body)
	}
	// Signed in (and the app-flow account, which never needs a login): ready.
	e.fake.mu.Lock()
	e.fake.status[1].State = tokens.StateOK
	e.fake.mu.Unlock()
	if body := wantStatus(t, e.do("GET", "/readyz", nil, auth), 200); strings.TrimSpace(body) != "ready" {
		t.Errorf("/readyz body = %q, want ready", body)
	}
	e.ready = errors.New("imap listener 127.0.0.1:1143 not bound")
	body = wantStatus(t, e.do("GET", "/readyz", nil, auth), 503)
	if !strings.Contains(body, "imap listener 127.0.0.1:1143 not bound") {
		t.Errorf("/readyz body = %q, want the reason", body)
	}
}

func TestMetrics(t *testing.T) {
	e := newEnv(t, true)
	e.met.SetAccountState("helpdesk", "ok")
	body := wantStatus(t, e.do("GET", "/metrics", nil, basic("admin", adminPass)), 200)
	if !strings.Contains(body, `oauthbridge_account_state{account="helpdesk",state="ok"} 1`) {
		t.Errorf("/metrics lacks oauthbridge_account_state:\n%s", clip(body, 2000))
	}
	if !strings.Contains(body, "go_goroutines") {
		t.Errorf("/metrics lacks the Go collector")
	}
}

// With a password_hash, /metrics and /readyz need it, unless
// metrics_public is set; without one they stay open (loopback only).
func TestMonitoringEndpointsProtected(t *testing.T) {
	ready := func(e *env) *env { // every account signed in: /readyz is 200
		e.fake.mu.Lock()
		for i := range e.fake.status {
			e.fake.status[i].State = tokens.StateOK
		}
		e.fake.mu.Unlock()
		return e
	}
	for _, path := range []string{"/metrics", "/readyz"} {
		e := ready(newEnv(t, true))
		wantStatus(t, e.do("GET", path, nil), 401)
		wantStatus(t, e.do("GET", path, nil, basic("admin", "wrong")), 401)
		wantStatus(t, e.do("GET", path, nil, basic("admin", adminPass)), 200)
		e.cfg.Admin.MetricsPublic = true
		wantStatus(t, e.do("GET", path, nil), 200)
		wantStatus(t, ready(newEnv(t, false)).do("GET", path, nil), 200)
	}
}

func TestStatusPage(t *testing.T) {
	e := newEnv(t, false)
	resp := e.do("GET", "/", nil)
	body := wantStatus(t, resp, 200)
	h := resp.Header
	for k, want := range map[string]string{
		"X-Frame-Options": "DENY",
		"Cache-Control":   "no-store",
		"Content-Type":    "text/html; charset=utf-8",
	} {
		if got := h.Get(k); got != want {
			t.Errorf("%s = %q, want %q", k, got, want)
		}
	}
	csp := h.Get("Content-Security-Policy")
	for _, want := range []string{"default-src 'none'", "style-src 'unsafe-inline'", "frame-ancestors 'none'", "form-action 'self' https://login.example.test"} {
		if !strings.Contains(csp, want) {
			t.Errorf("CSP %q lacks %q", csp, want)
		}
	}
	if strings.Contains(csp, "script-src") {
		t.Errorf("CSP %q allows scripts", csp)
	}

	for _, want := range []string{
		`id="acct-helpdesk"`, `id="acct-sales"`, `id="acct-robot"`,
		`<td class="state s-ok">ok</td>`, `<td class="state s-needs_login">needs_login</td>`,
		`id="connect-helpdesk">Re-authenticate</button>`,
		`id="connect-sales">Connect</button>`,
		`action="/connect/helpdesk"`,
		"in 52m", "2026-03-01T12:52:00Z", "8m ago", "2026-03-01T11:52:00Z",
		"signed in as: alice@contoso.com",
		"AADSTS70008",
		"http://127.0.0.1:8025/oauth/callback",
		"1.2.3-test",
		// Escaped, never raw.
		`refresh refused &lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;`,
		`Fix: run &#39;oauthbridge login sales&#39; &amp; retry`,
		// The send path of each account, and a Graph token problem.
		`sends via graph (send_via = auto): SMTP AUTH is disabled: 535 5.7.139 &lt;x&gt;`,
		`Microsoft Graph: no consent for Mail.Send`, `Fix: add Mail.Send &amp; consent`,
		// The provider's client_secret_expires.
		`client secret expires <time datetime="2026-03-21T12:00:00Z">2026-03-21T12:00:00Z</time> (in 20d)`,
	} {
		if !strings.Contains(body, want) {
			t.Errorf("status page lacks %q", want)
		}
	}
	if strings.Contains(body, "<script>") {
		t.Errorf("status page contains an unescaped <script>")
	}
	if strings.Contains(body, `id="connect-robot"`) {
		t.Errorf("app-flow account robot has a Connect button")
	}
	if strings.Contains(body, clientSecret) {
		t.Errorf("status page leaks the client secret")
	}
	if !strings.Contains(body, `name="csrf" value="`) {
		t.Errorf("forms carry no CSRF token")
	}
	var c *http.Cookie
	for _, ck := range resp.Cookies() {
		if ck.Name == csrfCookie {
			c = ck
		}
	}
	if c == nil || !c.HttpOnly || c.SameSite != http.SameSiteLaxMode {
		t.Errorf("CSRF cookie = %+v, want HttpOnly SameSite=Lax", c)
	}
}

// The CSRF cookie is Secure when the page is served over TLS (the admin
// listener off loopback, or tls = true), and not over plain loopback HTTP,
// where a Secure cookie would never come back.
func TestCSRFCookieSecureOverTLS(t *testing.T) {
	for _, overTLS := range []bool{false, true} {
		e := newEnv(t, false)
		resp := e.do("GET", "/", nil, func(r *http.Request) {
			if overTLS {
				r.TLS = &tls.ConnectionState{HandshakeComplete: true}
			}
		})
		wantStatus(t, resp, 200)
		var c *http.Cookie
		for _, ck := range resp.Cookies() {
			if ck.Name == csrfCookie {
				c = ck
			}
		}
		if c == nil || c.Secure != overTLS {
			t.Errorf("over TLS %v: CSRF cookie = %+v, want Secure = %v", overTLS, c, overTLS)
		}
	}
}

func TestStatusPageEmpty(t *testing.T) {
	e := newEnv(t, false)
	e.fake.status = nil
	body := wantStatus(t, e.do("GET", "/", nil), 200)
	if !strings.Contains(body, `id="no-accounts"`) {
		t.Errorf("empty status page lacks the no-accounts note")
	}
}

func TestFlashEscaped(t *testing.T) {
	e := newEnv(t, false)
	body := wantStatus(t, e.do("GET", "/?account=sales&error="+url.QueryEscape(`<script>alert(1)</script>`), nil), 200)
	if !strings.Contains(body, `class="flash flash-error">Sign-in failed for sales: &lt;script&gt;alert(1)&lt;/script&gt;</p>`) {
		t.Errorf("flash not rendered escaped:\n%s", body)
	}
	if strings.Contains(body, "<script>") {
		t.Errorf("flash rendered raw")
	}
	body = wantStatus(t, e.do("GET", "/?result=ok&account="+url.QueryEscape(`"><b>x`), nil), 200)
	if !strings.Contains(body, `flash-ok">Account &#34;&gt;&lt;b&gt;x is connected.</p>`) {
		t.Errorf("ok flash not rendered escaped:\n%s", body)
	}
	long := strings.Repeat("A", 3*DefaultMaxFlashBytes)
	body = wantStatus(t, e.do("GET", "/?error="+long, nil), 200)
	if strings.Contains(body, long[:DefaultMaxFlashBytes+1]) {
		t.Errorf("flash not clipped to %d bytes", DefaultMaxFlashBytes)
	}
}

// page loads the status page and returns its CSRF cookie and form token.
func (e *env) page(opts ...reqOpt) (*http.Cookie, string) {
	e.t.Helper()
	resp := e.do("GET", "/", nil, opts...)
	body := wantStatus(e.t, resp, 200)
	m := regexp.MustCompile(`name="csrf" value="([^"]+)"`).FindStringSubmatch(body)
	if m == nil {
		e.t.Fatalf("no CSRF token on the page")
	}
	for _, c := range resp.Cookies() {
		if c.Name == csrfCookie {
			return c, m[1]
		}
	}
	e.t.Fatalf("no CSRF cookie set")
	return nil, ""
}

func TestConnect(t *testing.T) {
	e := newEnv(t, false)
	c, tok := e.page()

	resp := e.do("POST", "/connect/helpdesk", url.Values{"csrf": {tok}}, cookie(c), header("Origin", "http://127.0.0.1:8025"))
	wantStatus(t, resp, http.StatusSeeOther)
	if loc := resp.Header.Get("Location"); loc != "https://login.example.test/authorize?state=st-helpdesk" {
		t.Errorf("Location = %q, want the BrowserLoginURL", loc)
	}
	if got := e.fake.redirects; len(got) != 1 || got[0] != "http://127.0.0.1:8025/oauth/callback" {
		t.Errorf("redirect URIs = %q, want [public_url/oauth/callback]", got)
	}
	// The token stays valid for the cookie: a second click works too.
	wantStatus(t, e.do("POST", "/connect/sales", url.Values{"csrf": {tok}}, cookie(c), header("Sec-Fetch-Site", "same-origin")), http.StatusSeeOther)

	wantStatus(t, e.do("POST", "/connect/nobody", url.Values{"csrf": {tok}}, cookie(c)), http.StatusNotFound)
	wantStatus(t, e.do("POST", "/connect/robot", url.Values{"csrf": {tok}}, cookie(c)), http.StatusBadRequest)
	wantStatus(t, e.do("GET", "/connect/helpdesk", nil), http.StatusMethodNotAllowed)

	e.fake.urlErr = errors.New("tokens: account \"sales\": provider has no client id")
	resp = e.do("POST", "/connect/sales", url.Values{"csrf": {tok}}, cookie(c))
	wantStatus(t, resp, http.StatusSeeOther)
	if loc := resp.Header.Get("Location"); !strings.HasPrefix(loc, "/?") || !strings.Contains(loc, "provider+has+no+client+id") {
		t.Errorf("Location after a URL error = %q, want back to / with the error", loc)
	}
}

func TestConnectCSRFRefused(t *testing.T) {
	e := newEnv(t, false)
	c, tok := e.page()
	other, _ := e.page() // a second browser's cookie
	for _, tc := range []struct {
		name string
		form url.Values
		opts []reqOpt
	}{
		{"no token", url.Values{}, []reqOpt{cookie(c)}},
		{"no cookie", url.Values{"csrf": {tok}}, nil},
		{"wrong token", url.Values{"csrf": {tok[:len(tok)-2] + "xx"}}, []reqOpt{cookie(c)}},
		{"token of another cookie", url.Values{"csrf": {tok}}, []reqOpt{cookie(other)}},
		{"cross-site fetch", url.Values{"csrf": {tok}}, []reqOpt{cookie(c), header("Sec-Fetch-Site", "cross-site")}},
		{"foreign origin", url.Values{"csrf": {tok}}, []reqOpt{cookie(c), header("Origin", "https://evil.example")}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			wantStatus(t, e.do("POST", "/connect/helpdesk", tc.form, tc.opts...), http.StatusForbidden)
		})
	}
	if len(e.fake.redirects) != 0 {
		t.Errorf("BrowserLoginURL called %d times by refused requests", len(e.fake.redirects))
	}
}

func TestCallback(t *testing.T) {
	e := newEnv(t, true) // the callback is open even with auth on
	for _, tc := range []struct {
		name, query string
		want        url.Values
	}{
		{"success", "code=good&state=st-helpdesk", url.Values{"result": {"ok"}, "account": {"helpdesk"}}},
		{"bad state", "code=good&state=forged", url.Values{"error": {"tokens: unknown or expired sign-in state <b>"}}},
		{"entra error", "error=access_denied&error_description=" + url.QueryEscape("AADSTS65004: User declined to consent."),
			url.Values{"error": {"access_denied: AADSTS65004: User declined to consent."}}},
		{"entra error with state", "error=access_denied&state=st-sales",
			url.Values{"error": {"access_denied"}, "account": {"sales"}}},
		{"failure names the account", "code=bad&state=st-sales",
			url.Values{"error": {"tokens: account \"sales\": no authorization code"}, "account": {"sales"}}},
		{"no code", "state=st-helpdesk", url.Values{"error": {"the sign-in callback had no code or state; start again with Connect"}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			resp := e.do("GET", "/oauth/callback?"+tc.query, nil)
			wantStatus(t, resp, http.StatusSeeOther)
			loc, err := url.Parse(resp.Header.Get("Location"))
			if err != nil || loc.Path != "/" {
				t.Fatalf("Location = %q, want /?...", resp.Header.Get("Location"))
			}
			if got := loc.Query(); fmt.Sprint(got) != fmt.Sprint(tc.want) {
				t.Errorf("redirect query = %v, want %v", got, tc.want)
			}
		})
	}
}

func TestAuthRequired(t *testing.T) {
	e := newEnv(t, true)
	for i, p := range []string{"/", "/api/accounts", "/api/accounts/helpdesk", "/api/accounts/helpdesk/device-login"} {
		ip := fromIP(fmt.Sprintf("192.0.2.%d", 10+i)) // "root" does not exist: its check budget is per address
		resp := e.do("GET", p, nil, ip)
		wantStatus(t, resp, http.StatusUnauthorized)
		if !strings.HasPrefix(resp.Header.Get("WWW-Authenticate"), "Basic ") {
			t.Errorf("GET %s: WWW-Authenticate = %q", p, resp.Header.Get("WWW-Authenticate"))
		}
		wantStatus(t, e.do("GET", p, nil, ip, basic("admin", "wrong")), http.StatusUnauthorized)
		wantStatus(t, e.do("GET", p, nil, ip, basic("root", adminPass)), http.StatusUnauthorized)
	}
	for _, p := range []string{"/connect/helpdesk", "/api/accounts/helpdesk/device-login"} {
		wantStatus(t, e.do("POST", p, url.Values{}, fromIP("192.0.2.9")), http.StatusUnauthorized)
	}
	if len(e.fake.devices) != 0 || len(e.fake.redirects) != 0 {
		t.Errorf("unauthenticated POSTs reached Tokens")
	}

	body := wantStatus(t, e.do("GET", "/", nil, basic("admin", adminPass)), 200)
	if !strings.Contains(body, `id="acct-helpdesk"`) {
		t.Errorf("authenticated status page lacks rows")
	}
	if strings.Contains(body, e.cfg.Admin.PasswordHash.Reveal()) {
		t.Errorf("status page leaks the admin password hash")
	}
	wantStatus(t, e.do("GET", "/api/accounts", nil, basic("admin", adminPass)), 200)

	// Connect works end to end with credentials.
	c, tok := e.page(basic("admin", adminPass))
	wantStatus(t, e.do("POST", "/connect/helpdesk", url.Values{"csrf": {tok}}, cookie(c), basic("admin", adminPass)), http.StatusSeeOther)
}

func TestAuthThrottled(t *testing.T) {
	e := newEnv(t, true)
	ip := fromIP("127.0.0.1")
	wantStatus(t, e.do("GET", "/api/accounts", nil, ip, basic("admin", adminPass)), 200)
	for i := 0; i < localauth.DefaultBurst-1; i++ {
		wantStatus(t, e.do("GET", "/api/accounts", nil, ip, basic("admin", fmt.Sprint("guess", i))), http.StatusUnauthorized)
	}
	// The admin's password checks are used up: a new password is not
	// checked, and the answer says so.
	resp := e.do("GET", "/api/accounts", nil, ip, basic("admin", "one more guess"))
	wantStatus(t, resp, http.StatusTooManyRequests)
	if resp.Header.Get("Retry-After") == "" {
		t.Errorf("429 without Retry-After")
	}
	// The right password, verified before, still gets in from the same address.
	wantStatus(t, e.do("GET", "/api/accounts", nil, ip, basic("admin", adminPass)), 200)
}

func TestAuthReload(t *testing.T) {
	e := newEnv(t, true)
	wantStatus(t, e.do("GET", "/api/accounts", nil, basic("admin", adminPass)), 200)
	hash, _ := bcrypt.GenerateFromPassword([]byte("new password"), bcrypt.MinCost)
	cfg := *e.cfg
	adm := *cfg.Admin
	adm.PasswordHash = config.Secret(hash)
	adm.Username = "ops"
	cfg.Admin = &adm
	e.cfg = &cfg
	wantStatus(t, e.do("GET", "/api/accounts", nil, basic("admin", adminPass)), http.StatusUnauthorized)
	wantStatus(t, e.do("GET", "/api/accounts", nil, basic("ops", "new password")), 200)
}

func TestOpenWithoutHash(t *testing.T) {
	e := newEnv(t, false)
	wantStatus(t, e.do("GET", "/api/accounts", nil), 200)
	for _, host := range []string{"localhost:8025", "[::1]:8025", "127.0.0.1:9999"} {
		wantStatus(t, e.do("GET", "/", nil, func(r *http.Request) { r.Host = host }), 200)
	}
	// DNS rebinding: a foreign name pointing at 127.0.0.1.
	wantStatus(t, e.do("GET", "/api/accounts", nil, func(r *http.Request) { r.Host = "attacker.example:8025" }), http.StatusMisdirectedRequest)
	// ...but the public_url host is accepted.
	e.cfg.Admin.PublicURL = "https://bridge.contoso.com"
	wantStatus(t, e.do("GET", "/", nil, func(r *http.Request) { r.Host = "bridge.contoso.com" }), 200)
}

func TestAPIAccounts(t *testing.T) {
	e := newEnv(t, false)
	resp := e.do("GET", "/api/accounts", nil)
	body := wantStatus(t, resp, 200)
	if ct := resp.Header.Get("Content-Type"); ct != "application/json" {
		t.Errorf("Content-Type = %q", ct)
	}
	var list []tokens.AccountStatus
	if err := json.Unmarshal([]byte(body), &list); err != nil {
		t.Fatalf("decode: %v\n%s", err, body)
	}
	if len(list) != 3 || list[0].Account != "helpdesk" || list[1].Account != "robot" || list[2].Account != "sales" {
		t.Fatalf("accounts = %+v, want helpdesk, robot, sales", list)
	}
	if !list[0].Expiry.Equal(testNow.Add(52*time.Minute)) || list[2].AADSTS != 70008 {
		t.Errorf("fields lost in JSON: %+v", list)
	}

	body = wantStatus(t, e.do("GET", "/api/accounts/sales", nil), 200)
	var one tokens.AccountStatus
	if err := json.Unmarshal([]byte(body), &one); err != nil || one.State != tokens.StateNeedsLogin {
		t.Errorf("GET /api/accounts/sales = %s (%v)", body, err)
	}
	body = wantStatus(t, e.do("GET", "/api/accounts/nobody", nil), 404)
	if !strings.Contains(body, `"error"`) {
		t.Errorf("404 body = %s, want a JSON error", body)
	}

	e.fake.status = nil
	body = wantStatus(t, e.do("GET", "/api/accounts", nil), 200)
	if strings.TrimSpace(body) != "[]" {
		t.Errorf("no accounts: body = %q, want []", body)
	}
}

func TestAPIDeviceLogin(t *testing.T) {
	e := newEnv(t, true)
	auth := basic("admin", adminPass)
	api := header(APIRequestHeader, "oauthbridge-cli")

	wantStatus(t, e.do("GET", "/api/accounts/sales/device-login", nil, auth), 404) // nothing started
	wantStatus(t, e.do("POST", "/api/accounts/sales/device-login", nil, auth), http.StatusForbidden)
	wantStatus(t, e.do("POST", "/api/accounts/sales/device-login", nil, auth, api, header("Sec-Fetch-Site", "cross-site")), http.StatusForbidden)
	wantStatus(t, e.do("POST", "/api/accounts/nobody/device-login", nil, auth, api), 404)
	if len(e.fake.devices) != 0 {
		t.Fatalf("refused requests started device logins: %q", e.fake.devices)
	}

	body := wantStatus(t, e.do("POST", "/api/accounts/sales/device-login", nil, auth, api), 200)
	var dl tokens.DeviceLogin
	if err := json.Unmarshal([]byte(body), &dl); err != nil || dl.UserCode != "ABCD-EFGH" || dl.Account != "sales" {
		t.Fatalf("device login = %s (%v)", body, err)
	}

	result := func() DeviceResult {
		t.Helper()
		var r DeviceResult
		body := wantStatus(t, e.do("GET", "/api/accounts/sales/device-login", nil, auth), 200)
		if err := json.Unmarshal([]byte(body), &r); err != nil {
			t.Fatalf("decode %s: %v", body, err)
		}
		return r
	}
	if r := result(); r.Done || r.Error != "" {
		t.Errorf("before the login finished: %+v, want not done", r)
	}
	e.fake.deviceCh <- errors.New("tokens: account \"sales\": the code expired before anybody signed in")
	deadline := time.Now().Add(5 * time.Second)
	r := result()
	for !r.Done && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
		r = result()
	}
	if !r.Done || !strings.Contains(r.Error, "code expired") {
		t.Errorf("after the login failed: %+v, want done with the error", r)
	}

	// A second login replaces the first; success has no error.
	e.fake.deviceCh = make(chan error, 1)
	wantStatus(t, e.do("POST", "/api/accounts/sales/device-login", nil, auth, api), 200)
	if r := result(); r.Done {
		t.Errorf("new login reported done at once: %+v", r)
	}
	close(e.fake.deviceCh)
	deadline = time.Now().Add(5 * time.Second)
	for r = result(); !r.Done && time.Now().Before(deadline); r = result() {
		time.Sleep(5 * time.Millisecond)
	}
	if !r.Done || r.Error != "" {
		t.Errorf("after success: %+v, want done without error", r)
	}
}

func TestDeviceLoginStartError(t *testing.T) {
	e := newEnv(t, false)
	e.fake.status = append(e.fake.status, tokens.AccountStatus{Account: "broken", Flow: "app"})
	body := wantStatus(t, e.do("POST", "/api/accounts/broken/device-login", nil, header(APIRequestHeader, "1")), http.StatusBadRequest)
	if !strings.Contains(body, "app flow has no device login") {
		t.Errorf("start error body = %s", body)
	}
}

func TestUnknownPath(t *testing.T) {
	e := newEnv(t, false)
	resp := e.do("GET", "/nope", nil)
	wantStatus(t, resp, 404)
	if resp.Header.Get("X-Frame-Options") != "DENY" {
		t.Errorf("security headers missing on 404")
	}
}

func TestRelative(t *testing.T) {
	for _, tc := range []struct {
		d    time.Duration
		want string
	}{
		{30 * time.Second, "in 30s"},
		{-90 * time.Second, "ago 1m"},
		{3*time.Hour + 5*time.Minute, "in 3h05m"},
		{-72 * time.Hour, "ago 3d"},
	} {
		if got := relative(testNow, testNow.Add(tc.d), "in %s", "ago %s"); got != tc.want {
			t.Errorf("relative(%v) = %q, want %q", tc.d, got, tc.want)
		}
	}
}

// testLogger sends the handler's log to t.Log.
func testLogger(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(tWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

type tWriter struct{ t *testing.T }

func (w tWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// The footer's sign-in help fits the accounts' providers: a device code
// only for Microsoft 365 accounts; a Google account signs in with the
// browser only (Google's device flow does not cover Gmail).
func TestStatusPageSignInHelp(t *testing.T) {
	google := &config.Provider{Name: "gmail", Type: config.ProviderGoogle}
	m365 := &config.Provider{Name: "m365"}
	for _, tc := range []struct {
		name            string
		accounts        map[string]*config.Provider // delegated accounts
		device, browser bool
	}{
		{"microsoft only", map[string]*config.Provider{"helpdesk": m365}, true, false},
		{"google only", map[string]*config.Provider{"mail": google}, false, true},
		{"both", map[string]*config.Provider{"helpdesk": m365, "mail": google}, true, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t, false)
			e.cfg.AccountByName = map[string]*config.Account{}
			e.fake.status = nil
			for name, p := range tc.accounts {
				e.cfg.AccountByName[name] = &config.Account{Name: name, Provider: p, Flow: config.FlowDelegated}
				e.fake.status = append(e.fake.status, tokens.AccountStatus{Account: name, Mailbox: name + "@example.com", Flow: config.FlowDelegated, State: tokens.StateNeedsLogin})
			}
			// An app-flow account never signs in: it adds no help.
			e.fake.status = append(e.fake.status, tokens.AccountStatus{Account: "robot", Flow: config.FlowApp, State: tokens.StateOK})
			body := wantStatus(t, e.do("GET", "/", nil), 200)
			i := strings.Index(body, `id="signin-help"`)
			if i < 0 {
				t.Fatalf("no sign-in help on the page:\n%s", body)
			}
			help := body[i:]
			help = help[:strings.Index(help, "</p>")]
			if got := strings.Contains(help, "device code"); got != tc.device {
				t.Errorf("help mentions the device code = %v, want %v: %s", got, tc.device, help)
			}
			if got := strings.Contains(help, "Google account signs in with the browser only"); got != tc.browser {
				t.Errorf("help says Google signs in with the browser only = %v, want %v: %s", got, tc.browser, help)
			}
		})
	}
}
