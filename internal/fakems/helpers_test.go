package fakems

import (
	"encoding/base64"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"
)

const (
	tenant     = "contoso.onmicrosoft.com"
	pubApp     = "11111111-public"
	confApp    = "22222222-confidential"
	confSecret = "s3cret~value"
	alice      = "alice@contoso.com"
	bob        = "bob@contoso.com"
	shared     = "helpdesk@contoso.com"
	allScopes  = scopeIMAP + " " + scopePOP + " " + scopeSMTP + " offline_access openid profile email"
)

// testClock is an injectable clock.
type testClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *testClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *testClock) Advance(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

type tLogWriter struct{ t *testing.T }

func (w tLogWriter) Write(p []byte) (int, error) {
	w.t.Helper()
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// newFake starts a fake with two apps, alice and bob, and a shared mailbox
// bob has FullAccess on.
func newFake(t *testing.T, opts Options) *Fake {
	t.Helper()
	if opts.Logger == nil && testing.Verbose() {
		opts.Logger = slog.New(slog.NewTextHandler(tLogWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	f, err := Start(opts)
	if err != nil {
		t.Fatalf("Start() = %v", err)
	}
	t.Cleanup(func() {
		if err := f.Close(); err != nil {
			t.Errorf("Close() = %v", err)
		}
	})
	f.AddApp(pubApp, "")
	f.AddApp(confApp, confSecret)
	f.AddUser(alice)
	f.AddUser(bob)
	f.AddMailbox(shared, bob)
	return f
}

var noRedirect = &http.Client{
	Timeout:       10 * time.Second,
	CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
}

// post sends a form and decodes a JSON answer (nil body for non-JSON).
func post(t *testing.T, u string, form url.Values) (int, map[string]any, http.Header) {
	t.Helper()
	resp, err := noRedirect.PostForm(u, form)
	if err != nil {
		t.Fatalf("POST %s = %v", u, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	var m map[string]any
	if strings.HasPrefix(resp.Header.Get("Content-Type"), "application/json") {
		if err := json.Unmarshal(b, &m); err != nil {
			t.Fatalf("POST %s: bad JSON %q: %v", u, b, err)
		}
	}
	return resp.StatusCode, m, resp.Header
}

func tokenURL(f *Fake) string { return f.AuthorityURL + "/" + tenant + "/oauth2/v2.0/token" }

// wantAADError checks Entra's error shape.
func wantAADError(t *testing.T, status int, body map[string]any, wantStatus int, wantCode string, wantAADSTS int) {
	t.Helper()
	if status != wantStatus {
		t.Errorf("status = %d, want %d (body %v)", status, wantStatus, body)
	}
	if body["error"] != wantCode {
		t.Errorf("error = %v, want %q", body["error"], wantCode)
	}
	desc, _ := body["error_description"].(string)
	for _, k := range []string{"timestamp", "trace_id", "correlation_id"} {
		if s, _ := body[k].(string); s == "" {
			t.Errorf("%s missing in %v", k, body)
		}
	}
	if wantAADSTS == 0 {
		return
	}
	codes, _ := body["error_codes"].([]any)
	if len(codes) != 1 || codes[0] != float64(wantAADSTS) {
		t.Errorf("error_codes = %v, want [%d]", body["error_codes"], wantAADSTS)
	}
	if want := "AADSTS" + itoa(wantAADSTS) + ": "; !strings.HasPrefix(desc, want) {
		t.Errorf("error_description = %q, want prefix %q", desc, want)
	}
}

func itoa(n int) string { b, _ := json.Marshal(n); return string(b) }

// jwtClaims decodes a JWT's payload without verifying it.
func jwtClaims(t *testing.T, tok string) map[string]any {
	t.Helper()
	parts := strings.Split(tok, ".")
	if len(parts) != 3 {
		t.Fatalf("id_token has %d parts", len(parts))
	}
	b, err := base64.RawURLEncoding.DecodeString(parts[1])
	if err != nil {
		t.Fatalf("id_token payload: %v", err)
	}
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatalf("id_token payload: %v", err)
	}
	return m
}

// deviceLogin runs a device-code login for upn with scope and returns the
// token response.
func deviceLogin(t *testing.T, f *Fake, upn, scope string) map[string]any {
	t.Helper()
	st, dc, _ := post(t, f.AuthorityURL+"/"+tenant+"/oauth2/v2.0/devicecode", url.Values{"client_id": {pubApp}, "scope": {scope}})
	if st != 200 {
		t.Fatalf("devicecode = %d %v", st, dc)
	}
	if err := f.ApproveDevice(dc["user_code"].(string), upn); err != nil {
		t.Fatalf("ApproveDevice() = %v", err)
	}
	st, tok, _ := post(t, tokenURL(f), url.Values{"grant_type": {GrantDeviceCode}, "client_id": {pubApp}, "device_code": {dc["device_code"].(string)}})
	if st != 200 {
		t.Fatalf("device token = %d %v", st, tok)
	}
	return tok
}
