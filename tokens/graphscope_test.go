package tokens_test

import (
	"context"
	"fmt"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/oauthbridge/oauthbridge/config"
	"github.com/oauthbridge/oauthbridge/internal/fakems"
	. "github.com/oauthbridge/oauthbridge/tokens"
)

// The sign-in asks only for the Graph permissions the account's settings
// can use: Mail.Send (.Shared) only when send_via can be graph.
func TestGraphScopesFollowSettings(t *testing.T) {
	const g = "https://graph.microsoft.com/"
	for _, tc := range []struct {
		sendVia, readVia, delegate, sendAs string
		want                               []string
	}{
		{"smtp", "imap", "", "", nil},
		{"graph", "imap", "", "", []string{"Mail.Send", "Mail.ReadWrite"}},
		{"auto", "imap", "", "", []string{"Mail.Send", "Mail.ReadWrite"}},
		{"smtp", "graph", "", "", []string{"Mail.ReadWrite"}},
		{"smtp", "graph", "alice@contoso.com", "", []string{"Mail.ReadWrite", "Mail.ReadWrite.Shared"}},
		{"smtp", "graph", "", "sales@contoso.com", []string{"Mail.ReadWrite"}},
		{"graph", "imap", "alice@contoso.com", "", []string{"Mail.Send", "Mail.ReadWrite", "Mail.Send.Shared", "Mail.ReadWrite.Shared"}},
		{"auto", "graph", "", "sales@contoso.com", []string{"Mail.Send", "Mail.ReadWrite", "Mail.Send.Shared", "Mail.ReadWrite.Shared"}},
	} {
		name := fmt.Sprintf("send_via=%s read_via=%s delegate=%q send_as=%q", tc.sendVia, tc.readVia, tc.delegate, tc.sendAs)
		src := fmt.Sprintf("state_dir = %q\nprovider \"p\" {\n  tenant = \"t\"\n  client_id = \"app1\"\n}\naccount \"hd\" {\n  provider = \"p\"\n  mailbox = \"hd@contoso.com\"\n  send_via = %q\n  read_via = %q\n  delegate = %q\n",
			t.TempDir(), tc.sendVia, tc.readVia, tc.delegate)
		if tc.sendAs != "" {
			src += fmt.Sprintf("  send_as = [%q]\n", tc.sendAs)
		}
		cfg, err := config.Parse("t.hcl", []byte(src+"}\n"))
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		var want []string
		for _, w := range tc.want {
			want = append(want, g+w)
		}
		ac := cfg.AccountByName["hd"]
		if got := GraphScopes(ac); strings.Join(got, " ") != strings.Join(want, " ") {
			t.Errorf("%s: GraphScopes() = %q, want %q", name, got, want)
		}
		login := strings.Join(LoginScopes(ac), " ")
		if strings.Contains(login, "Mail.Send") != slicesContains(tc.want, "Mail.Send") {
			t.Errorf("%s: LoginScopes() = %s", name, login)
		}
	}
}

func slicesContains(s []string, v string) bool {
	for _, x := range s {
		if x == v {
			return true
		}
	}
	return false
}

// A consent error names the permissions and the setting that needs them:
// a read-only account is not told about Mail.Send or send_via.
func TestGraphConsentErrorNamesTheSetting(t *testing.T) {
	e := newEnv(t, envOpts{secret: secret})
	e.cfg = testConfig(t, e.dir, e.f.AuthorityURL, secret,
		testAccount{name: helpdesk, mailbox: "hd@contoso.com", delegate: alice, readVia: "graph"})
	if err := e.m.Reload(e.cfg); err != nil {
		t.Fatal(err)
	}
	e.f.WithholdConsent("app1", fakems.ScopeGraphMailReadWrite)
	if err := e.deviceLogin(e.m, helpdesk, alice); err != nil {
		t.Fatal(err)
	}
	_, err := e.m.GraphToken(context.Background(), helpdesk)
	if KindOf(err) != NeedsLogin {
		t.Fatalf("GraphToken() = %v, want NeedsLogin", err)
	}
	msg := err.Error()
	for _, w := range []string{"Mail.ReadWrite", `read_via = "graph"`, "oauthbridge login " + helpdesk} {
		if !strings.Contains(msg, w) {
			t.Errorf("consent error lacks %q: %s", w, msg)
		}
	}
	for _, w := range []string{"Mail.Send", "send_via"} {
		if strings.Contains(msg, w) {
			t.Errorf("consent error of a read-only account mentions %q: %s", w, msg)
		}
	}
}

// The app flow's consent error names the application permissions the
// settings need.
func TestGraphAppConsentErrorNamesTheSetting(t *testing.T) {
	for _, tc := range []struct{ sendVia, readVia, want, not string }{
		{"smtp", "graph", `permission Mail.ReadWrite (read_via = "graph")`, "Mail.Send"},
		{"graph", "imap", `permission Mail.Send (send_via = "graph")`, "read_via"},
		{"auto", "graph", `permissions Mail.Send and Mail.ReadWrite (send_via = "auto" and read_via = "graph")`, "\x00"},
	} {
		ep := &rotatingEndpoint{deny: ".default"}
		srv := httptest.NewServer(ep)
		t.Cleanup(srv.Close)
		src := fmt.Sprintf("state_dir = %q\nprovider \"p\" {\n  tenant = \"t\"\n  client_id = \"app1\"\n  client_secret = \"s\"\n  authority = %q\n}\naccount \"scan\" {\n  provider = \"p\"\n  mailbox = \"scan@contoso.com\"\n  flow = \"app\"\n  send_via = %q\n  read_via = %q\n}\n",
			t.TempDir(), srv.URL, tc.sendVia, tc.readVia)
		cfg, err := config.Parse("t.hcl", []byte(src))
		if err != nil {
			t.Fatal(err)
		}
		log, _ := testLogger()
		m, err := NewManager(cfg, Options{Logger: log, RequestTimeout: 5 * time.Second})
		if err != nil {
			t.Fatal(err)
		}
		_, err = m.GraphToken(context.Background(), "scan")
		m.Close()
		if err == nil || !strings.Contains(err.Error(), tc.want) || strings.Contains(err.Error(), tc.not) {
			t.Errorf("send_via %s read_via %s: GraphToken() = %v, want %q", tc.sendVia, tc.readVia, err, tc.want)
		}
	}
}

// send_via changed by a reload: a sign-in made for reading only did not
// consent to Mail.Send, so the Graph token for the old permissions is not
// used; the new ones are asked for at once, and status names the sign-in
// to run. After it, sending works; back to send_via = "smtp", the token is
// redeemed again for the narrower permissions.
func TestReloadSendViaNeedsNewConsent(t *testing.T) {
	e := newEnv(t, envOpts{secret: secret})
	readOnly := testConfig(t, e.dir, e.f.AuthorityURL, secret,
		testAccount{name: helpdesk, mailbox: "hd@contoso.com", delegate: alice, readVia: "graph"})
	if err := e.m.Reload(readOnly); err != nil {
		t.Fatal(err)
	}
	if err := e.deviceLogin(e.m, helpdesk, alice); err != nil {
		t.Fatal(err)
	}
	readTok, err := e.m.GraphToken(context.Background(), helpdesk)
	if err != nil {
		t.Fatalf("GraphToken() for reading = %v", err)
	}

	sending := testConfig(t, e.dir, e.f.AuthorityURL, secret,
		testAccount{name: helpdesk, mailbox: "hd@contoso.com", delegate: alice, readVia: "graph", sendVia: "graph"})
	if err := e.m.Reload(sending); err != nil {
		t.Fatal(err)
	}
	tok, err := e.m.GraphToken(context.Background(), helpdesk)
	if err == nil {
		t.Fatalf("GraphToken() after send_via = graph returned a token (the old one: %v) without consent to Mail.Send", tok == readTok)
	}
	if KindOf(err) != NeedsLogin || !strings.Contains(err.Error(), "Mail.Send") || !strings.Contains(err.Error(), `send_via = "graph"`) || !strings.Contains(err.Error(), "oauthbridge login "+helpdesk) {
		t.Errorf("GraphToken() = %v, want a consent error naming Mail.Send, send_via and the sign-in", err)
	}
	st := statusOf(e.m, helpdesk)
	if st.State != StateOK || !strings.Contains(st.GraphError, "Mail.Send") || !strings.Contains(st.GraphFix, "oauthbridge login "+helpdesk) {
		t.Errorf("status = %+v, want ok with a Graph error naming the sign-in", st)
	}

	if err := e.deviceLogin(e.m, helpdesk, alice); err != nil {
		t.Fatal(err)
	}
	sendTok, err := e.m.GraphToken(context.Background(), helpdesk)
	if err != nil {
		t.Fatalf("GraphToken() after the new sign-in = %v", err)
	}
	if st := statusOf(e.m, helpdesk); st.GraphError != "" {
		t.Errorf("Graph error after the new sign-in: %s", st.GraphError)
	}

	if err := e.m.Reload(readOnly); err != nil {
		t.Fatal(err)
	}
	n := e.grants("refresh_token")
	tok, err = e.m.GraphToken(context.Background(), helpdesk)
	if err != nil || tok == sendTok || e.grants("refresh_token") != n+1 {
		t.Errorf("after send_via back to smtp: GraphToken() = %v, same token %v, %d redemptions (want 1)", err, tok == sendTok, e.grants("refresh_token")-n)
	}
}

// The same after a restart with the changed setting: the stored Graph
// token (for reading only) is not used for sending.
func TestRestartSendViaNeedsNewConsent(t *testing.T) {
	e := newEnv(t, envOpts{secret: secret})
	e.cfg = testConfig(t, e.dir, e.f.AuthorityURL, secret,
		testAccount{name: helpdesk, mailbox: "hd@contoso.com", delegate: alice, readVia: "graph"})
	if err := e.m.Reload(e.cfg); err != nil {
		t.Fatal(err)
	}
	if err := e.deviceLogin(e.m, helpdesk, alice); err != nil {
		t.Fatal(err)
	}
	if _, err := e.m.GraphToken(context.Background(), helpdesk); err != nil {
		t.Fatal(err)
	}
	e.m.Close()
	e.cfg = testConfig(t, e.dir, e.f.AuthorityURL, secret,
		testAccount{name: helpdesk, mailbox: "hd@contoso.com", delegate: alice, readVia: "graph", sendVia: "auto"})
	m := e.open()
	if _, err := m.GraphToken(context.Background(), helpdesk); KindOf(err) != NeedsLogin || !strings.Contains(err.Error(), `send_via = "auto"`) {
		t.Fatalf("GraphToken() after a restart with send_via = auto = %v, want the consent error", err)
	}
}
