package tokens_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/oauthbridge/oauthbridge/config"
	. "github.com/oauthbridge/oauthbridge/tokens"
)

// rotatingEndpoint is a token endpoint whose refresh tokens are single
// use (stricter than Entra, which keeps old ones valid): a redemption of
// a spent refresh token fails, so a double spend shows.
type rotatingEndpoint struct {
	mu       sync.Mutex
	valid    map[string]bool
	n        int
	requests []url.Values
	spent    int    // redemptions of an already used refresh token
	deny     string // a scope that gets AADSTS65001
	inFlight int
	overlap  bool // two redemptions ran at once
	release  chan struct{}
	seen     chan string // gets "grant_type scope" of every request, if set
}

func (e *rotatingEndpoint) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	r.ParseForm()
	e.mu.Lock()
	e.inFlight++
	if e.inFlight > 1 {
		e.overlap = true
	}
	e.requests = append(e.requests, r.PostForm)
	if e.seen != nil {
		select {
		case e.seen <- r.PostForm.Get("grant_type") + " " + r.PostForm.Get("scope"):
		default:
		}
	}
	rel := e.release
	e.mu.Unlock()
	if rel != nil {
		<-rel
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	defer func() { e.inFlight-- }()
	scope := r.PostForm.Get("scope")
	w.Header().Set("Content-Type", "application/json")
	if strings.Contains(scope, "outlook.office.com") && strings.Contains(scope, "graph.microsoft.com") {
		w.WriteHeader(400)
		fmt.Fprint(w, `{"error":"invalid_scope","error_description":"AADSTS700022: The provided value for the input parameter scope is not valid because it contains more than one resource.","error_codes":[700022]}`)
		return
	}
	if e.deny != "" && strings.Contains(scope, e.deny) {
		w.WriteHeader(400)
		fmt.Fprint(w, `{"error":"invalid_grant","error_description":"AADSTS65001: The user or administrator has not consented to use the application.","error_codes":[65001]}`)
		return
	}
	e.n++
	resp := map[string]any{"access_token": fmt.Sprintf("at%d|%s", e.n, scope), "expires_in": 3600, "token_type": "Bearer"}
	if r.PostForm.Get("grant_type") == "refresh_token" {
		rt := r.PostForm.Get("refresh_token")
		if !e.valid[rt] {
			e.spent++
			w.WriteHeader(400)
			fmt.Fprint(w, `{"error":"invalid_grant","error_description":"AADSTS70000: spent","error_codes":[70000]}`)
			return
		}
		delete(e.valid, rt)
		nrt := fmt.Sprintf("rt%d", e.n)
		e.valid[nrt] = true
		resp["refresh_token"] = nrt
	}
	json.NewEncoder(w).Encode(resp)
}

func (e *rotatingEndpoint) scopes() []string {
	e.mu.Lock()
	defer e.mu.Unlock()
	var s []string
	for _, f := range e.requests {
		s = append(s, f.Get("grant_type")+" "+f.Get("scope"))
	}
	return s
}

func graphConfig(t *testing.T, authority, sendVia, delegate string) *config.Config {
	t.Helper()
	src := fmt.Sprintf(`state_dir = %q
provider "p" {
  tenant = "t"
  client_id = "app1"
  client_secret = "s"
  authority = %q
}
account "hd" {
  provider = "p"
  mailbox = "hd@contoso.com"
  send_via = %q
  delegate = %q
}
account "scan" {
  provider = "p"
  mailbox = "scan@contoso.com"
  flow = "app"
  send_via = "graph"
}
`, t.TempDir(), authority, sendVia, delegate)
	cfg, err := config.Parse("t.hcl", []byte(src))
	if err != nil {
		t.Fatal(err)
	}
	return cfg
}

func newGraphEnv(t *testing.T, ep *rotatingEndpoint, sendVia string, opts ...func(*Options)) (*Manager, *config.Config) {
	t.Helper()
	srv := httptest.NewServer(ep)
	t.Cleanup(srv.Close)
	cfg := graphConfig(t, srv.URL, sendVia, "alice@contoso.com")
	if err := SeedStoreForTest(cfg, "hd", "rt0", "alice@contoso.com"); err != nil {
		t.Fatal(err)
	}
	ep.valid = map[string]bool{"rt0": true}
	log, _ := testLogger()
	o := Options{Logger: log, RetryMin: 10 * time.Millisecond, RetryMax: 20 * time.Millisecond, RequestTimeout: 5 * time.Second}
	for _, f := range opts {
		f(&o)
	}
	m, err := NewManager(cfg, o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close() })
	return m, cfg
}

func TestGraphTokenFromTheSameRefreshToken(t *testing.T) {
	ep := &rotatingEndpoint{}
	m, cfg := newGraphEnv(t, ep, "graph")
	ctx := context.Background()
	gt, err := m.For(Graph).AccessToken(ctx, "hd")
	if err != nil {
		t.Fatalf("Graph AccessToken() = %v", err)
	}
	if !strings.Contains(gt, "https://graph.microsoft.com/Mail.Send") || strings.Contains(gt, "outlook") {
		t.Errorf("Graph token minted for scopes %q", gt)
	}
	// The rotated refresh token is stored before anything else uses it.
	if rt := StoredRefreshTokenForTest(cfg.StateDir, "hd"); rt != "rt1" {
		t.Errorf("stored refresh token after the Graph redemption = %q, want rt1", rt)
	}
	ot, err := m.For(Outlook).AccessToken(ctx, "hd")
	if err != nil {
		t.Fatalf("Outlook AccessToken() = %v", err)
	}
	if !strings.Contains(ot, "https://outlook.office.com/IMAP.AccessAsUser.All") || strings.Contains(ot, "graph") {
		t.Errorf("Outlook token minted for scopes %q", ot)
	}
	// Cached: no more requests for either resource.
	gt2, _ := m.GraphToken(ctx, "hd")
	ot2, _ := m.AccessToken(ctx, "hd")
	if gt2 != gt || ot2 != ot || len(ep.scopes()) != 2 {
		t.Errorf("tokens not cached separately: %d requests", len(ep.scopes()))
	}
	want := "refresh_token https://graph.microsoft.com/Mail.Send https://graph.microsoft.com/Mail.ReadWrite https://graph.microsoft.com/Mail.Send.Shared https://graph.microsoft.com/Mail.ReadWrite.Shared offline_access"
	if s := ep.scopes(); s[0] != want {
		t.Errorf("Graph redemption scope = %q, want %q", s[0], want)
	}
	if ep.spent != 0 {
		t.Errorf("%d redemptions of a spent refresh token", ep.spent)
	}
	if rt := StoredRefreshTokenForTest(cfg.StateDir, "hd"); rt != "rt2" {
		t.Errorf("stored refresh token = %q, want rt2", rt)
	}
	st := m.Status()[0]
	if st.SendVia != "graph" || st.SendPath != "graph" || st.GraphExpiry.IsZero() || st.GraphError != "" {
		t.Errorf("status = %+v", st)
	}
}

func TestRefreshesSerialisedPerGrant(t *testing.T) {
	ep := &rotatingEndpoint{release: make(chan struct{})}
	m, cfg := newGraphEnv(t, ep, "auto")
	ctx := context.Background()
	var wg sync.WaitGroup
	errs := make(chan error, 2)
	wg.Add(2)
	go func() { defer wg.Done(); _, err := m.GraphToken(ctx, "hd"); errs <- err }()
	go func() { defer wg.Done(); _, err := m.AccessToken(ctx, "hd"); errs <- err }()
	// Let both requests through one at a time; a second one arriving while
	// the first is held would be a concurrent redemption.
	for range 2 {
		ep.release <- struct{}{}
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatalf("token = %v", err)
		}
	}
	if ep.overlap || ep.spent != 0 {
		t.Fatalf("overlapping redemptions %v, spent refresh tokens used %d", ep.overlap, ep.spent)
	}
	if rt := StoredRefreshTokenForTest(cfg.StateDir, "hd"); rt != "rt2" {
		t.Errorf("stored refresh token = %q, want rt2 (both rotations kept)", rt)
	}
}

func TestGraphConsentMissing(t *testing.T) {
	ep := &rotatingEndpoint{deny: "graph.microsoft.com/Mail.ReadWrite"}
	m, _ := newGraphEnv(t, ep, "auto")
	_, err := m.GraphToken(context.Background(), "hd")
	if KindOf(err) != NeedsLogin {
		t.Fatalf("GraphToken() = %v, want NeedsLogin", err)
	}
	for _, w := range []string{"Mail.Send", "Mail.ReadWrite", "Microsoft Graph > Delegated permissions", "consent-url p", "oauthbridge login hd", "AADSTS65001"} {
		if !strings.Contains(err.Error(), w) {
			t.Errorf("error lacks %q: %v", w, err)
		}
	}
	// Exchange keeps working and the account is not in needs_login.
	if _, err := m.AccessToken(context.Background(), "hd"); err != nil {
		t.Fatalf("Outlook AccessToken() after a Graph consent error = %v", err)
	}
	st := m.Status()[0]
	if st.State != StateOK || !strings.Contains(st.GraphError, "Mail.ReadWrite") || !strings.Contains(st.GraphFix, "Delegated permissions") {
		t.Errorf("status = %+v", st)
	}
	// The failure is remembered: no request storm.
	n := len(ep.scopes())
	m.GraphToken(context.Background(), "hd")
	if len(ep.scopes()) != n {
		t.Error("a failing Graph consent was retried at once")
	}
}

func TestGraphAppFlow(t *testing.T) {
	ep := &rotatingEndpoint{}
	m, _ := newGraphEnv(t, ep, "smtp")
	tok, err := m.GraphToken(context.Background(), "scan")
	if err != nil {
		t.Fatal(err)
	}
	if s := ep.scopes(); len(s) != 1 || s[0] != "client_credentials https://graph.microsoft.com/.default" || !strings.Contains(tok, ".default") {
		t.Errorf("app-flow Graph requests = %q", s)
	}
}

func TestLoginScopesAndConsentURL(t *testing.T) {
	cfg := graphConfig(t, "https://login.microsoftonline.com", "auto", "")
	ac := cfg.AccountByName["hd"]
	got := strings.Join(LoginScopes(ac), " ")
	want := "https://outlook.office.com/IMAP.AccessAsUser.All https://outlook.office.com/POP.AccessAsUser.All https://outlook.office.com/SMTP.Send offline_access openid profile email https://graph.microsoft.com/Mail.Send https://graph.microsoft.com/Mail.ReadWrite"
	if got != want {
		t.Errorf("LoginScopes() =\n%s\nwant\n%s", got, want)
	}
	cfg2 := graphConfig(t, "https://login.microsoftonline.com", "smtp", "")
	if got := strings.Join(LoginScopes(cfg2.AccountByName["hd"]), " "); strings.Contains(got, "graph") {
		t.Errorf("send_via = smtp asks for Graph: %s", got)
	}
	u := ConsentURL(ac.Provider, "")
	if !strings.Contains(u, "scope=https%3A%2F%2Foutlook.office365.com%2F.default+https%3A%2F%2Fgraph.microsoft.com%2F.default") {
		t.Errorf("ConsentURL() = %s", u)
	}
}

func TestBrowserLoginAsksGraphConsent(t *testing.T) {
	ep := &rotatingEndpoint{}
	m, _ := newGraphEnv(t, ep, "graph")
	u, err := m.BrowserLoginURL("hd", "http://127.0.0.1:8025/oauth/callback")
	if err != nil {
		t.Fatal(err)
	}
	pu, _ := url.Parse(u)
	if s := pu.Query().Get("scope"); !strings.Contains(s, "IMAP.AccessAsUser.All") || !strings.Contains(s, "https://graph.microsoft.com/Mail.Send.Shared") {
		t.Errorf("authorize scope = %q", s)
	}
}

func TestGraphTokenRefreshedAhead(t *testing.T) {
	ep := &rotatingEndpoint{seen: make(chan string, 100)}
	clock := newFakeClock()
	m, cfg := newGraphEnv(t, ep, "graph", func(o *Options) { o.Now = clock.Now })
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	m.Start(ctx)
	// send_via = "graph": both tokens are fetched in the background at once.
	want := map[string]bool{}
	for len(want) < 2 {
		select {
		case r := <-ep.seen:
			want[strings.Fields(r)[1][:20]] = true
		case <-time.After(10 * time.Second):
			t.Fatalf("background fetch did not happen: %v", ep.scopes())
		}
	}
	gt, err := m.GraphToken(ctx, "hd")
	if err != nil {
		t.Fatal(err)
	}
	// 55 minutes later (5 minutes before expiry) the Graph token is
	// refreshed without anyone asking.
	clock.Add(55 * time.Minute)
	m.WakeForTest()
	deadline := time.After(10 * time.Second)
	for {
		select {
		case r := <-ep.seen:
			if strings.Contains(r, "graph.microsoft.com/Mail.Send") {
				gt2, err := m.GraphToken(ctx, "hd")
				for err == nil && gt2 == gt {
					select {
					case <-ep.seen:
					case <-time.After(50 * time.Millisecond):
					}
					gt2, err = m.GraphToken(ctx, "hd")
				}
				if err != nil {
					t.Fatal(err)
				}
				if ep.spent != 0 {
					t.Errorf("%d spent refresh tokens used", ep.spent)
				}
				if rt := StoredRefreshTokenForTest(cfg.StateDir, "hd"); rt == "rt0" || rt == "" {
					t.Errorf("stored refresh token %q: rotation lost", rt)
				}
				return
			}
		case <-deadline:
			t.Fatalf("Graph token not refreshed ahead of expiry: %v", ep.scopes())
		}
	}
}

// read_via = "graph" alone makes the sign-in ask for the Graph permissions
// (Mail.ReadWrite, and the .Shared ones for a delegate).
func TestLoginScopesReadViaGraph(t *testing.T) {
	src := fmt.Sprintf(`state_dir = %q
provider "p" {
  tenant = "t"
  client_id = "app1"
}
account "hd" {
  provider = "p"
  mailbox = "hd@contoso.com"
  delegate = "alice@contoso.com"
  read_via = "graph"
}
`, t.TempDir())
	cfg, err := config.Parse("t.hcl", []byte(src))
	if err != nil {
		t.Fatal(err)
	}
	got := strings.Join(LoginScopes(cfg.AccountByName["hd"]), " ")
	for _, s := range []string{"https://graph.microsoft.com/Mail.ReadWrite", "https://graph.microsoft.com/Mail.ReadWrite.Shared"} {
		if !strings.Contains(got, s) {
			t.Errorf("LoginScopes() = %s, want %s", got, s)
		}
	}
	if !cfg.AccountByName["hd"].Provider.UsesGraph {
		t.Error("provider does not consent to Graph")
	}
}
