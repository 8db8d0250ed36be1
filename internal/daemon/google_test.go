package daemon

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"html"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/cookiejar"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"
	"golang.org/x/crypto/bcrypt"

	"github.com/oauthbridge/oauthbridge/config"
	"github.com/oauthbridge/oauthbridge/internal/fakems"
	"github.com/oauthbridge/oauthbridge/tokens"
)

// End to end with Google Workspace: legacy clients on 127.0.0.1, the
// bridge, and the fake in Google mode. Account "helpdesk" is a service
// account with domain-wide delegation acting for helpdesk@example.org;
// account "alice" is a person who signs in with the browser.

const (
	gHelpdesk = "helpdesk@example.org"
	gAlice    = "alice@example.org"
	gSA       = "bridge@fake-project.iam.gserviceaccount.com"
	gClientID = "123-abc.apps.googleusercontent.com"
	gSecret   = "GOCSPX-client-secret-VALUE"
)

type googleEnv struct {
	f    *fakems.Fake
	d    *Daemon
	logs *syncBuffer
}

func startGoogle(t *testing.T) *googleEnv {
	t.Helper()
	f, err := fakems.Start(fakems.Options{Google: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	dir := t.TempDir()
	caFile := filepath.Join(dir, "ca.pem")
	if err := f.WriteCAFile(caFile); err != nil {
		t.Fatal(err)
	}
	f.AddApp(gClientID, gSecret)
	f.AddUser(gHelpdesk)
	f.AddUser(gAlice)
	if err := f.Deliver(gHelpdesk, []byte("Subject: ticket 1\r\n\r\nprinter on fire\r\n")); err != nil {
		t.Fatal(err)
	}
	key, err := f.AddServiceAccount(gSA)
	if err != nil {
		t.Fatal(err)
	}
	f.AllowDomainWideDelegation(gSA, fakems.GoogleMailScope)
	keyFile := filepath.Join(dir, "sa.json")
	if err := os.WriteFile(keyFile, key, 0o600); err != nil {
		t.Fatal(err)
	}
	hash := func(pw string) string {
		h, err := bcrypt.GenerateFromPassword([]byte(pw), bcrypt.MinCost)
		if err != nil {
			t.Fatal(err)
		}
		return string(h)
	}
	os.MkdirAll(filepath.Join(dir, "state"), 0o700)
	src := fmt.Sprintf(`state_dir = %q
imap { listen = ["127.0.0.1:0"] }
pop3 { listen = ["127.0.0.1:0"] }
smtp { listen = ["127.0.0.1:0"] }
admin { listen = "127.0.0.1:0" }
provider "workspace" {
  type                = "google"
  client_id           = %q
  client_secret       = %q
  service_account_key = file(%q)
  authority           = %q
  imap_server         = %q
  pop3_server         = %q
  smtp_server         = %q
  ca_file             = %q
}
account "helpdesk" {
  provider = "workspace"
  mailbox  = %q
  flow     = "app"
}
account "alice" {
  provider = "workspace"
  mailbox  = %q
}
user "otrs" {
  password_hash = %q
  account       = "helpdesk"
}
user "scanner" {
  password_hash = %q
  account       = "alice"
}
`, filepath.Join(dir, "state"), gClientID, gSecret, keyFile, f.AuthorityURL, f.IMAPAddr, f.POP3Addr, f.SMTPAddr, caFile,
		gHelpdesk, gAlice, hash("otrs-pw"), hash("scanner-pw"))
	cfgPath := filepath.Join(dir, "config.hcl")
	if err := os.WriteFile(cfgPath, []byte(src), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, err := config.Load(cfgPath)
	if err != nil {
		t.Fatal(err)
	}
	ge := &googleEnv{f: f, logs: &syncBuffer{}}
	d, err := New(cfg, Options{Logger: slog.New(slog.NewJSONHandler(ge.logs, &slog.HandlerOptions{Level: slog.LevelDebug}))})
	if err != nil {
		t.Fatal(err)
	}
	if err := d.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Shutdown(context.Background()) })
	ge.d = d
	return ge
}

// pop3 is a minimal POP3 client for the tests.
type pop3 struct {
	c  net.Conn
	br *bufio.Reader
}

func dialPOP3(t *testing.T, addr string) *pop3 {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(30 * time.Second)) // a hang fails the test
	p := &pop3{c: c, br: bufio.NewReader(c)}
	if l := p.line(t); !strings.HasPrefix(l, "+OK") {
		t.Fatalf("POP3 greeting %q", l)
	}
	return p
}

func (p *pop3) line(t *testing.T) string {
	t.Helper()
	l, err := p.br.ReadString('\n')
	if err != nil {
		t.Fatalf("POP3 read: %v", err)
	}
	return strings.TrimRight(l, "\r\n")
}

func (p *pop3) cmd(t *testing.T, s string) string {
	t.Helper()
	if _, err := io.WriteString(p.c, s+"\r\n"); err != nil {
		t.Fatal(err)
	}
	return p.line(t)
}

func smtpSend(t *testing.T, addr, user, pw, from, to string, msg []byte) error {
	t.Helper()
	c, err := smtp.Dial(addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.CommandTimeout = 30 * time.Second
	if err := c.Auth(sasl.NewPlainClient("", user, pw)); err != nil {
		return err
	}
	if err := c.Mail(from, nil); err != nil {
		return err
	}
	if err := c.Rcpt(to, nil); err != nil {
		return err
	}
	w, err := c.Data()
	if err != nil {
		return err
	}
	w.Write(msg)
	return w.Close()
}

func TestGoogleServiceAccountEndToEnd(t *testing.T) {
	ge := startGoogle(t)
	d, f := ge.d, ge.f

	// IMAP: the legacy client reads the mailbox.
	c, err := imapLogin(t, d.Addr("imap"), "otrs", "otrs-pw")
	if err != nil {
		t.Fatalf("IMAP login: %v\n%s", err, ge.logs)
	}
	if data, err := c.Select("INBOX", nil).Wait(); err != nil || data.NumMessages != 1 {
		t.Fatalf("SELECT INBOX = %+v, %v", data, err)
	}
	c.Logout().Wait()

	// POP3.
	p := dialPOP3(t, d.Addr("pop3"))
	if l := p.cmd(t, "USER otrs"); !strings.HasPrefix(l, "+OK") {
		t.Fatalf("USER: %q", l)
	}
	if l := p.cmd(t, "PASS otrs-pw"); !strings.HasPrefix(l, "+OK") {
		t.Fatalf("PASS: %q\n%s", l, ge.logs)
	}
	if l := p.cmd(t, "STAT"); !strings.HasPrefix(l, "+OK 1 ") {
		t.Fatalf("STAT: %q", l)
	}
	p.cmd(t, "QUIT")
	if forms := f.GooglePOP3AuthForms(); forms["one-line"] != 1 || forms["two-step"] != 0 {
		t.Errorf("POP3 AUTH forms at Gmail: %v, want the one-line form", forms)
	}

	// SMTP: a message reaches the fake.
	msg := []byte("Subject: from the helpdesk\r\n\r\nhello\r\n")
	if err := smtpSend(t, d.Addr("smtp"), "otrs", "otrs-pw", gHelpdesk, gAlice, msg); err != nil {
		t.Fatalf("SMTP send: %v\n%s", err, ge.logs)
	}
	if sent := f.Sent(); len(sent) != 1 || sent[0].AuthUser != gHelpdesk || string(sent[0].Data) != string(msg) {
		t.Fatalf("fake received %+v", sent)
	}
	if n := f.TokenRequestsByGrant()[tokens.GrantJWTBearer]; n != 1 {
		t.Errorf("JWT bearer grants %d, want 1 (one cached token for all three)", n)
	}

	// A token Gmail refuses: the challenge is answered, a fresh token is
	// tried once, and the client gets a clean failure, not a hang.
	tok, err := d.Tokens().AccessToken(context.Background(), "helpdesk")
	if err != nil {
		t.Fatal(err)
	}
	f.ExpireAccessToken(tok)
	c, err = imapLogin(t, d.Addr("imap"), "otrs", "otrs-pw")
	if err != nil {
		t.Fatalf("IMAP login after an expired token (the bridge should fetch a fresh one): %v", err)
	}
	c.Logout().Wait()
	if n := f.TokenRequestsByGrant()[tokens.GrantJWTBearer]; n != 2 {
		t.Errorf("JWT bearer grants %d after the rejected token, want 2", n)
	}

	f.SetGoogleRefuseTokens(gHelpdesk, true)
	if _, err := imapLogin(t, d.Addr("imap"), "otrs", "otrs-pw"); err == nil || !strings.Contains(err.Error(), "Google refused the bridge's login") {
		t.Fatalf("IMAP login with refused tokens = %v", err)
	}
	p = dialPOP3(t, d.Addr("pop3"))
	p.cmd(t, "USER otrs")
	if l := p.cmd(t, "PASS otrs-pw"); !strings.HasPrefix(l, "-ERR [AUTH] Google refused") {
		t.Fatalf("POP3 PASS with refused tokens = %q", l)
	}
	err = smtpSend(t, d.Addr("smtp"), "otrs", "otrs-pw", gHelpdesk, gAlice, msg)
	var se *smtp.SMTPError
	if !errors.As(err, &se) || se.Code != 454 {
		t.Fatalf("SMTP with refused tokens = %v, want 454", err)
	}
	if len(f.Sent()) != 1 {
		t.Error("a message went through with refused tokens")
	}
	logs := ge.logs.String()
	for _, want := range []string{"error challenge", "schemes", "https://mail.google.com/", "Gmail rejected the access token"} {
		if !strings.Contains(logs, want) {
			t.Errorf("log lacks %q", want)
		}
	}
}

var hiddenInput = regexp.MustCompile(`<input type="hidden" name="([^"]+)" value="([^"]*)">`)

// browserSignIn plays the person at Google's sign-in page.
func browserSignIn(t *testing.T, authURL string) (state, code string) {
	t.Helper()
	hc := &http.Client{Timeout: 10 * time.Second, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	resp, err := hc.Get(authURL)
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
	if len(login) < 2 {
		t.Fatalf("sign-in page has no form:\n%s", body)
	}
	form.Set("login", html.UnescapeString(login[1]))
	form.Set("action", "signin")
	u, _ := url.Parse(authURL)
	u.RawQuery = ""
	resp, err = hc.PostForm(u.String(), form)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	loc, err := url.Parse(resp.Header.Get("Location"))
	if resp.StatusCode != http.StatusFound || err != nil {
		t.Fatalf("sign-in POST = %s", resp.Status)
	}
	return loc.Query().Get("state"), loc.Query().Get("code")
}

func TestGoogleInvalidGrantNeedsLogin(t *testing.T) {
	ge := startGoogle(t)
	d, f := ge.d, ge.f
	m := d.Tokens()
	redirect := d.Config().Admin.PublicURL + "/oauth/callback"
	authURL, err := m.BrowserLoginURL("alice", redirect)
	if err != nil {
		t.Fatal(err)
	}
	state, code := browserSignIn(t, authURL)
	if _, err := m.CompleteBrowserLogin(context.Background(), state, code); err != nil {
		t.Fatal(err)
	}
	c, err := imapLogin(t, d.Addr("imap"), "scanner", "scanner-pw")
	if err != nil {
		t.Fatalf("IMAP login after the sign-in: %v", err)
	}
	c.Logout().Wait()

	// The refresh token dies (password change, 7-day Testing limit ...).
	tok, _ := m.AccessToken(context.Background(), "alice")
	f.RevokeRefreshTokens(gAlice)
	f.ExpireAccessToken(tok)
	_, err = imapLogin(t, d.Addr("imap"), "scanner", "scanner-pw")
	if err == nil || !strings.Contains(err.Error(), "needs re-authorisation: run 'oauthbridge login alice'") {
		t.Fatalf("IMAP login after invalid_grant = %v", err)
	}
	var st tokens.AccountStatus
	for _, s := range m.Status() {
		if s.Account == "alice" {
			st = s
		}
	}
	if st.State != tokens.StateNeedsLogin || !strings.Contains(st.LastError, "invalid_grant") || !strings.Contains(st.LastError, "Testing") ||
		!strings.Contains(st.Fix, "\"In production\"") || !strings.Contains(st.Fix, "oauthbridge login alice") {
		t.Fatalf("status after invalid_grant: %+v", st)
	}
	// POP3 and SMTP say the same, and nothing asks the token endpoint again.
	before := f.TokenRequests()
	p := dialPOP3(t, d.Addr("pop3"))
	p.cmd(t, "USER scanner")
	if l := p.cmd(t, "PASS scanner-pw"); !strings.Contains(l, "oauthbridge login alice") {
		t.Fatalf("POP3 after invalid_grant = %q", l)
	}
	err = smtpSend(t, d.Addr("smtp"), "scanner", "scanner-pw", gAlice, gHelpdesk, []byte("Subject: x\r\n\r\nx\r\n"))
	var se *smtp.SMTPError
	if !errors.As(err, &se) || se.Code/100 != 4 {
		t.Fatalf("SMTP after invalid_grant = %v, want 4xx", err)
	}
	if n := f.TokenRequests() - before; n != 0 {
		t.Errorf("%d token requests while needs_login", n)
	}
}

// The status page's Connect button signs a Google account in: the page
// sends the browser to Google with the loopback redirect, Google sends it
// back to /oauth/callback, and the account is ok.
func TestGoogleConnectButton(t *testing.T) {
	ge := startGoogle(t)
	d := ge.d
	admin := "http://" + d.Addr("admin")
	jar, _ := cookiejar.New(nil)
	hc := &http.Client{Jar: jar, Timeout: 10 * time.Second, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	resp, err := hc.Get(admin + "/")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	m := regexp.MustCompile(`name="csrf" value="([^"]+)"`).FindStringSubmatch(string(body))
	if m == nil || !strings.Contains(string(body), `id="connect-alice"`) {
		t.Fatalf("status page has no Connect button for alice:\n%s", body)
	}
	req, _ := http.NewRequest("POST", admin+"/connect/alice", strings.NewReader(url.Values{"csrf": {m[1]}}.Encode()))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.Header.Set("Origin", admin)
	resp, err = hc.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	loc := resp.Header.Get("Location")
	if resp.StatusCode != http.StatusSeeOther || !strings.HasPrefix(loc, ge.f.AuthorityURL+"/o/oauth2/v2/auth?") {
		t.Fatalf("Connect = %s, Location %q", resp.Status, loc)
	}
	state, code := browserSignIn(t, loc)
	resp, err = hc.Get(admin + "/oauth/callback?" + url.Values{"state": {state}, "code": {code}}.Encode())
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusSeeOther || strings.Contains(resp.Header.Get("Location"), "error") {
		t.Fatalf("callback = %s, Location %q\n%s", resp.Status, resp.Header.Get("Location"), ge.logs)
	}
	for _, s := range d.Tokens().Status() {
		if s.Account == "alice" && (s.State != tokens.StateOK || s.SignedInAs != gAlice) {
			t.Fatalf("alice after Connect: %+v", s)
		}
	}
	c, err := imapLogin(t, d.Addr("imap"), "scanner", "scanner-pw")
	if err != nil {
		t.Fatalf("IMAP after Connect: %v", err)
	}
	c.Logout().Wait()
}

// Gmail's "NO [ALERT] Too many simultaneous connections" is temporary:
// the client is told to retry and the token is not blamed.
func TestGoogleTooManyConnections(t *testing.T) {
	ge := startGoogle(t)
	d, f := ge.d, ge.f
	if got := d.Config().AccountByName["helpdesk"].MaxConnections; got != config.DefaultGoogleAccountConnections {
		t.Fatalf("max_connections default %d, want %d", got, config.DefaultGoogleAccountConnections)
	}
	f.SetGoogleIMAPLimit(1) // another client of the account holds Gmail's slots
	held, err := imapLogin(t, d.Addr("imap"), "otrs", "otrs-pw")
	if err != nil {
		t.Fatal(err)
	}
	defer held.Close()
	grants := f.TokenRequestsByGrant()[tokens.GrantJWTBearer]
	_, err = imapLogin(t, d.Addr("imap"), "otrs", "otrs-pw")
	if err == nil || !strings.Contains(err.Error(), "[UNAVAILABLE]") || !strings.Contains(err.Error(), "try again later") {
		t.Fatalf("second login = %v", err)
	}
	if n := f.TokenRequestsByGrant()[tokens.GrantJWTBearer]; n != grants {
		t.Errorf("%d token grants after Gmail's connection limit, want none", n-grants)
	}
	if !strings.Contains(ge.logs.String(), "Too many simultaneous connections") {
		t.Error("the log does not quote Gmail's reply")
	}
}
