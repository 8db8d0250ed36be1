package doctor_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/oauthbridge/oauthbridge/config"
	"github.com/oauthbridge/oauthbridge/internal/doctor"
	"github.com/oauthbridge/oauthbridge/internal/fakems"
	"github.com/oauthbridge/oauthbridge/internal/logging"
	"github.com/oauthbridge/oauthbridge/tokens"
)

const (
	clientID = "11111111-2222-3333-4444-555555555555"
	secret   = "doctor-test-secret"
	alice    = "alice@contoso.example"
	helpdesk = "helpdesk@contoso.example"
	info     = "info@contoso.example"
)

// world is a fake Microsoft 365 with a shared mailbox helpdesk on which
// alice has FullAccess and Send As for info, and a configuration whose
// account "helpdesk" is signed in as alice.
type world struct {
	f   *fakems.Fake
	cfg *config.Config
	m   *tokens.Manager
}

// newWorld builds the world; extra is added to the account block, and
// before runs before the sign-in (consent knobs act at sign-in).
func newWorld(t *testing.T, extra string, before func(f *fakems.Fake)) *world {
	t.Helper()
	acct := fmt.Sprintf(`account "helpdesk" {
  provider = "contoso"
  mailbox  = %q
  delegate = %q
  send_as  = [%q]
%s
}
`, helpdesk, alice, info, extra)
	return newWorldWith(t, acct, before, true)
}

// newWorldWith builds the world with the given account block; signIn
// signs account "helpdesk" in as alice.
func newWorldWith(t *testing.T, acct string, before func(f *fakems.Fake), signIn bool) *world {
	t.Helper()
	f, err := fakems.Start(fakems.Options{Logger: logging.Discard})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	f.AddApp(clientID, secret)
	f.AddUser(alice)
	f.AddMailbox(helpdesk, alice)
	f.AllowSendAs(helpdesk, info)
	f.GrantSendAs(info, alice)
	dir := t.TempDir()
	ca := filepath.Join(dir, "ca.pem")
	if err := f.WriteCAFile(ca); err != nil {
		t.Fatal(err)
	}
	src := fmt.Sprintf(`state_dir = %q
provider "contoso" {
  tenant        = "contoso.example"
  client_id     = %q
  client_secret = %q
  authority     = %q
  imap_server   = %q
  pop3_server   = %q
  smtp_server   = %q
  graph_url     = %q
  ca_file       = %q
}
%s`, filepath.Join(dir, "state"), clientID, secret, f.AuthorityURL, f.IMAPAddr, f.POP3Addr, f.SMTPAddr, f.GraphURL(), ca, acct)
	cfg, err := config.Parse(filepath.Join(dir, "config.hcl"), []byte(src))
	if err != nil {
		t.Fatalf("config: %v\n%s", err, src)
	}
	if before != nil {
		before(f)
	}
	m, err := tokens.NewManager(cfg, tokens.Options{Logger: logging.Discard})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close() })
	if !signIn {
		return &world{f: f, cfg: cfg, m: m}
	}
	ctx := context.Background()
	dl, done, err := m.StartDeviceLogin(ctx, "helpdesk")
	if err != nil {
		t.Fatal(err)
	}
	if err := f.ApproveDevice(dl.UserCode, alice); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	return &world{f: f, cfg: cfg, m: m}
}

func (w *world) run(t *testing.T) *doctor.Report {
	t.Helper()
	return doctor.Run(context.Background(), w.cfg, []string{"helpdesk"}, doctor.Options{Tokens: w.m, Source: "local"})
}

// statuses maps check ID (send-as: "send-as") to status; a repeated ID
// keeps the worst.
func statuses(ar doctor.AccountReport) map[string]doctor.Status {
	m := map[string]doctor.Status{}
	for _, c := range ar.Checks {
		if m[c.ID] != doctor.Fail {
			m[c.ID] = c.Status
		}
	}
	return m
}

func check(ar doctor.AccountReport, id string) doctor.Check {
	for _, c := range ar.Checks {
		if c.ID == id {
			return c
		}
	}
	return doctor.Check{}
}

func dump(rep *doctor.Report) string {
	var b bytes.Buffer
	doctor.WriteTable(&b, rep)
	return b.String()
}

// wantOrder is the checks of an account that sends through SMTP.
var wantOrder = []string{"config", "reach", "token-outlook", "imap", "pop3", "smtp", "send-as", "headroom"}

func TestAllPass(t *testing.T) {
	w := newWorld(t, "", nil)
	before := w.f.TokenRequests()
	rep := w.run(t)
	out := dump(rep)
	if !rep.OK || len(rep.Accounts) != 1 {
		t.Fatalf("report not ok:\n%s", out)
	}
	ar := rep.Accounts[0]
	var ids []string
	for _, c := range ar.Checks {
		ids = append(ids, c.ID)
		if c.Status != doctor.Pass {
			t.Errorf("check %s: %s (%s), want pass", c.ID, c.Status, c.Detail)
		}
	}
	if !slices.Equal(ids, wantOrder) {
		t.Errorf("checks %v, want %v", ids, wantOrder)
	}
	if n := w.f.TokenRequests() - before; n != 0 {
		t.Errorf("doctor made %d token requests with a valid cached token, want 0", n)
	}
	if len(w.f.Sent()) != 0 {
		t.Errorf("doctor sent %d message(s); it must send nothing", len(w.f.Sent()))
	}
	if sa := check(ar, "send-as"); !strings.Contains(sa.Detail, "554 5.2.252") {
		t.Errorf("send-as pass does not say that Exchange may refuse only at DATA: %q", sa.Detail)
	}
	for _, s := range []string{secret, "EwB", "1.AQ"} {
		if strings.Contains(out, s) {
			t.Errorf("output contains a secret or token (%q):\n%s", s, out)
		}
	}
	b, err := json.Marshal(rep)
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range []string{secret, "EwB", "1.AQ"} {
		if strings.Contains(string(b), s) {
			t.Errorf("JSON contains a secret or token (%q)", s)
		}
	}
	if !strings.Contains(out, "0 failed") || !strings.Contains(out, "pass") {
		t.Errorf("table:\n%s", out)
	}
}

// TestInjectedFailures: each failure injected alone fails exactly the
// checks it must, with the fix naming the configuration's real names, and
// leaves the others passing (or skipped when they depend on a failed one).
func TestInjectedFailures(t *testing.T) {
	cases := []struct {
		name    string
		extra   string
		before  func(f *fakems.Fake) // before the sign-in
		inject  func(f *fakems.Fake) // after it
		fails   []string
		skips   []string
		fixIn   string // check whose fix is inspected
		fix     []string
		notFix  []string
		meaning string
	}{
		{
			name:   "smtp auth disabled for the mailbox",
			inject: func(f *fakems.Fake) { f.SetMailboxSMTPAuth(helpdesk, fakems.SMTPAuthDisabled) },
			fails:  []string{"smtp"}, skips: []string{"send-as"},
			fixIn: "smtp", fix: []string{"Set-CASMailbox -Identity helpdesk@contoso.example -SmtpClientAuthenticationDisabled $false"},
			notFix: []string{"Set-TransportConfig"}, meaning: "switched off for mailbox",
		},
		{
			name:   "smtp auth disabled for the tenant",
			inject: func(f *fakems.Fake) { f.SetTenantSMTPAuthDisabled(true) },
			fails:  []string{"smtp"}, skips: []string{"send-as"},
			fixIn: "smtp", fix: []string{"Set-CASMailbox -Identity helpdesk@contoso.example -SmtpClientAuthenticationDisabled $false", "Set-TransportConfig -SmtpClientAuthenticationDisabled $false"},
			meaning: "whole tenant",
		},
		{
			name:   "no FullAccess for the delegate",
			inject: func(f *fakems.Fake) { f.RemoveFullAccess(helpdesk, alice) },
			fails:  []string{"imap", "pop3", "smtp"}, skips: []string{"send-as"},
			fixIn: "imap", fix: []string{"Add-MailboxPermission -Identity helpdesk@contoso.example -User alice@contoso.example -AccessRights FullAccess"},
			meaning: "no FullAccess",
		},
		{
			name:   "IMAP disabled for the mailbox",
			inject: func(f *fakems.Fake) { f.SetIMAPEnabled(helpdesk, false) },
			fails:  []string{"imap"},
			fixIn:  "imap", fix: []string{"Set-CASMailbox -Identity helpdesk@contoso.example -ImapEnabled $true"},
			notFix: []string{"Add-MailboxPermission"}, meaning: "IMAP is disabled",
		},
		{
			name:   "POP3 disabled for the mailbox",
			inject: func(f *fakems.Fake) { f.SetPOPEnabled(helpdesk, false) },
			fails:  []string{"pop3"},
			fixIn:  "pop3", fix: []string{"Set-CASMailbox -Identity helpdesk@contoso.example -PopEnabled $true"},
			notFix: []string{"Add-MailboxPermission"}, meaning: "POP3 is disabled",
		},
		{
			name:   "no Send As",
			inject: func(f *fakems.Fake) { f.RemoveSendAs(helpdesk, info) },
			fails:  []string{"send-as"},
			fixIn:  "send-as", fix: []string{"Add-RecipientPermission -Identity info@contoso.example -Trustee helpdesk@contoso.example -AccessRights SendAs"},
			meaning: "no Send As",
		},
		{
			name:   "clock skew",
			inject: func(f *fakems.Fake) { f.SetClockSkew(-10 * time.Minute) },
			fails:  []string{"reach"},
			fixIn:  "reach", fix: []string{"timedatectl", "chrony"},
			meaning: "validity times",
		},
		{
			name:  "missing consent for the Graph permissions",
			extra: `  send_via = "graph"`,
			before: func(f *fakems.Fake) {
				f.WithholdConsent(clientID, fakems.ScopeGraphMailSend)
			},
			fails: []string{"token-graph"}, skips: []string{"smtp", "graph", "send-as"},
			fixIn: "token-graph", fix: []string{"/contoso.example/v2.0/adminconsent?client_id=" + clientID, "oauthbridge login helpdesk"},
			meaning: "an administrator grants it",
		},
		{
			name:   "Graph cannot reach the mailbox",
			extra:  `  send_via = "graph"`,
			inject: func(f *fakems.Fake) { f.SetRESTDisabled(helpdesk, true) },
			fails:  []string{"graph"}, skips: []string{"smtp", "send-as"},
			fixIn: "graph", fix: []string{`set send_via = "smtp" in account helpdesk`},
			meaning: "on-premises",
		},
		{
			name:   "no FullAccess, sending through Graph",
			extra:  `  send_via = "graph"`,
			inject: func(f *fakems.Fake) { f.RemoveFullAccess(helpdesk, alice) },
			fails:  []string{"imap", "pop3", "graph"}, skips: []string{"smtp", "send-as"},
			fixIn: "graph", fix: []string{"Add-MailboxPermission -Identity helpdesk@contoso.example -User alice@contoso.example -AccessRights FullAccess"},
			meaning: "no FullAccess",
		},
		{
			name:  "connection caps above Exchange's",
			extra: "  max_connections = 25\n  smtp_max_connections = 5",
			fails: []string{"headroom"},
			fixIn: "headroom", fix: []string{"lower max_connections", "lower smtp_max_connections"},
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			w := newWorld(t, tc.extra, tc.before)
			if tc.inject != nil {
				tc.inject(w.f)
			}
			rep := w.run(t)
			out := dump(rep)
			if rep.OK {
				t.Fatalf("report ok with a failure injected:\n%s", out)
			}
			ar := rep.Accounts[0]
			for id, st := range statuses(ar) {
				want := doctor.Pass
				switch {
				case slices.Contains(tc.fails, id):
					want = doctor.Fail
				case slices.Contains(tc.skips, id):
					want = doctor.Skip
				}
				if st != want {
					t.Errorf("check %s: %s, want %s", id, st, want)
				}
			}
			c := check(ar, tc.fixIn)
			fix := strings.Join(c.Fix, "\n")
			for _, s := range tc.fix {
				if !strings.Contains(fix, s) {
					t.Errorf("fix of %s lacks %q", tc.fixIn, s)
				}
			}
			for _, s := range tc.notFix {
				if strings.Contains(fix, s) {
					t.Errorf("fix of %s should not name %q", tc.fixIn, s)
				}
			}
			if !strings.Contains(c.Meaning, tc.meaning) {
				t.Errorf("meaning of %s = %q, want it to contain %q", tc.fixIn, c.Meaning, tc.meaning)
			}
			if strings.Contains(out, "<mailbox>") || strings.Contains(out, "<delegate>") || strings.Contains(out, "<client_id>") {
				t.Errorf("placeholder where the value is known:\n%s", out)
			}
			if !strings.Contains(out, "FAIL") || !strings.Contains(out, "fix:") {
				t.Errorf("table does not show the failure and its fix:\n%s", out)
			}
			if t.Failed() {
				t.Logf("report:\n%s", out)
			}
		})
	}
}

// TestNoSignIn: a delegated account nobody signed in for fails its token
// check with the login command, and every check needing the token is
// skipped, not failed.
func TestNoSignIn(t *testing.T) {
	w := newWorld(t, "", nil)
	other, err := tokens.NewManager(withStateDir(w.cfg, t.TempDir()), tokens.Options{Logger: logging.Discard})
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	rep := doctor.Run(context.Background(), w.cfg, nil, doctor.Options{Tokens: other, Source: "local"})
	ar := rep.Accounts[0]
	st := statuses(ar)
	if st["token-outlook"] != doctor.Fail || st["imap"] != doctor.Skip || st["pop3"] != doctor.Skip || st["smtp"] != doctor.Skip || st["config"] != doctor.Pass {
		t.Errorf("statuses %v\n%s", st, dump(rep))
	}
	if fix := strings.Join(check(ar, "token-outlook").Fix, " "); !strings.Contains(fix, "oauthbridge login helpdesk") {
		t.Errorf("token fix %q lacks the login command", fix)
	}
}

func withStateDir(cfg *config.Config, dir string) *config.Config {
	c := *cfg
	c.StateDir = dir
	return &c
}

// TestAppFlow: an app-flow account whose service principal has no
// FullAccess fails IMAP, POP3 and SMTP with the New-ServicePrincipal and
// Add-MailboxPermission lines for its client_id; granted, all pass.
func TestAppFlow(t *testing.T) {
	acct := fmt.Sprintf(`account "scanner" {
  provider = "contoso"
  mailbox  = %q
  flow     = "app"
  send_as  = [%q]
}
`, helpdesk, info)
	w := newWorldWith(t, acct, nil, false)
	rep := doctor.Run(context.Background(), w.cfg, nil, doctor.Options{Tokens: w.m, Source: "local"})
	ar := rep.Accounts[0]
	st := statuses(ar)
	for id, want := range map[string]doctor.Status{"config": doctor.Pass, "token-outlook": doctor.Pass, "imap": doctor.Fail, "pop3": doctor.Fail, "smtp": doctor.Fail, "send-as": doctor.Skip, "headroom": doctor.Pass} {
		if st[id] != want {
			t.Errorf("check %s: %s, want %s", id, st[id], want)
		}
	}
	fix := strings.Join(check(ar, "imap").Fix, "\n")
	for _, s := range []string{"New-ServicePrincipal -AppId " + clientID, "Add-MailboxPermission -Identity " + helpdesk + " -User (Get-ServicePrincipal -Identity " + clientID + ").Identity -AccessRights FullAccess"} {
		if !strings.Contains(fix, s) {
			t.Errorf("imap fix lacks %q:\n%s", s, fix)
		}
	}
	if t.Failed() {
		t.Logf("report:\n%s", dump(rep))
	}

	w.f.GrantApp(clientID, helpdesk)
	rep = doctor.Run(context.Background(), w.cfg, []string{"scanner"}, doctor.Options{Tokens: w.m, Source: "local"})
	if !rep.OK {
		t.Errorf("with FullAccess for the app:\n%s", dump(rep))
	}
	w.f.RemoveSendAs(helpdesk, info)
	rep = doctor.Run(context.Background(), w.cfg, []string{"scanner"}, doctor.Options{Tokens: w.m, Source: "local"})
	if fix := strings.Join(check(rep.Accounts[0], "send-as").Fix, "\n"); !strings.Contains(fix, "Add-RecipientPermission -Identity "+info+" -Trustee (Get-ServicePrincipal -Identity "+clientID+").Identity -AccessRights SendAs") {
		t.Errorf("app send-as fix:\n%s", dump(rep))
	}
}

// TestSecretsMissing: without the configuration's secrets the config check
// fails with the way out, and the checks needing a token are skipped.
func TestSecretsMissing(t *testing.T) {
	w := newWorld(t, "", nil)
	rep := doctor.Run(context.Background(), w.cfg, nil, doctor.Options{SecretsError: errors.New(`credential "client-secret": /etc/oauthbridge/credentials/client-secret does not exist`), Source: "local"})
	ar := rep.Accounts[0]
	st := statuses(ar)
	for id, want := range map[string]doctor.Status{"config": doctor.Fail, "reach": doctor.Pass, "token-outlook": doctor.Skip, "imap": doctor.Skip, "pop3": doctor.Skip, "smtp": doctor.Skip, "send-as": doctor.Skip, "headroom": doctor.Pass} {
		if st[id] != want {
			t.Errorf("check %s: %s, want %s", id, st[id], want)
		}
	}
	if fix := strings.Join(check(ar, "config").Fix, " "); rep.OK || !strings.Contains(fix, "-credentials DIR") || !strings.Contains(fix, "systemctl start oauthbridge") {
		t.Errorf("config fix %q (ok %v)", fix, rep.OK)
	}
}

// TestGraphAllPass: an account sending through Graph passes the Graph
// checks (token, mailbox access) and skips SMTP and send-as.
func TestGraphAllPass(t *testing.T) {
	w := newWorld(t, `  send_via = "graph"`, nil)
	rep := w.run(t)
	st := statuses(rep.Accounts[0])
	if !rep.OK || st["token-graph"] != doctor.Pass || st["graph"] != doctor.Pass || st["smtp"] != doctor.Skip || st["send-as"] != doctor.Skip {
		t.Errorf("statuses %v\n%s", st, dump(rep))
	}
	if n := w.f.GraphRequestCount(fakems.RouteSendMail, 202); n != 0 || len(w.f.GraphSent()) != 0 {
		t.Errorf("doctor sent through Graph")
	}
	if w.f.GraphRequestCount(fakems.RouteGetFolder, 200) != 1 {
		t.Errorf("graph check did not read the mailbox: %v", w.f.GraphRequests())
	}
}

// TestAppFlowGraph: an app-flow account sending through Graph; an
// application access policy that excludes the mailbox fails the graph
// check with Test-ApplicationAccessPolicy for the app and mailbox, and
// only that check.
func TestAppFlowGraph(t *testing.T) {
	acct := fmt.Sprintf(`account "scanner" {
  provider = "contoso"
  mailbox  = %q
  flow     = "app"
  send_via = "graph"
}
`, helpdesk)
	w := newWorldWith(t, acct, func(f *fakems.Fake) {
		f.GrantApp(clientID, helpdesk)
		f.SetAppRoles(clientID, fakems.RoleMailSend, fakems.RoleMailReadWrite)
	}, false)
	run := func() (*doctor.Report, map[string]doctor.Status) {
		rep := doctor.Run(context.Background(), w.cfg, nil, doctor.Options{Tokens: w.m, Source: "local"})
		return rep, statuses(rep.Accounts[0])
	}
	if rep, st := run(); !rep.OK || st["graph"] != doctor.Pass {
		t.Fatalf("all granted: %v\n%s", st, dump(rep))
	}
	w.f.SetAppAccessDenied(clientID, helpdesk, true)
	rep, st := run()
	fix := strings.Join(check(rep.Accounts[0], "graph").Fix, "\n")
	if st["graph"] != doctor.Fail || st["imap"] != doctor.Pass || !strings.Contains(fix, "Test-ApplicationAccessPolicy -Identity "+helpdesk+" -AppId "+clientID) {
		t.Errorf("access policy: %v\n%s", st, dump(rep))
	}
}
