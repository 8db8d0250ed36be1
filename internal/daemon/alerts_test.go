package daemon

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"
	"golang.org/x/crypto/bcrypt"

	"github.com/oauthbridge/oauthbridge/config"
	"github.com/oauthbridge/oauthbridge/internal/alerts"
	"github.com/oauthbridge/oauthbridge/internal/fakems"
	"github.com/oauthbridge/oauthbridge/tokens"
)

// hookReceiver is a webhook endpoint on 127.0.0.1.
type hookReceiver struct {
	srv    *httptest.Server
	got    chan alerts.Payload
	hang   chan struct{} // non-nil: every request waits for it
	inHang chan struct{}
}

func newHookReceiver(t *testing.T, hang bool) *hookReceiver {
	r := &hookReceiver{got: make(chan alerts.Payload, 100), inHang: make(chan struct{}, 100)}
	if hang {
		r.hang = make(chan struct{})
	}
	r.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		body, _ := io.ReadAll(req.Body)
		if r.hang != nil {
			r.inHang <- struct{}{}
			select {
			case <-r.hang:
			case <-req.Context().Done():
			}
			return
		}
		var p alerts.Payload
		if err := json.Unmarshal(body, &p); err != nil {
			t.Errorf("webhook body: %v", err)
		}
		r.got <- p
	}))
	t.Cleanup(func() {
		if r.hang != nil {
			close(r.hang)
		}
		r.srv.Close()
	})
	return r
}

func (r *hookReceiver) next(t *testing.T, c alerts.Condition, s alerts.State) alerts.Payload {
	t.Helper()
	for {
		select {
		case p := <-r.got:
			if p.Condition == c && p.State == s {
				return p
			}
		case <-time.After(30 * time.Second):
			t.Fatalf("no webhook POST for %s %s", c, s)
		}
	}
}

type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *fakeClock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *fakeClock) Add(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

type alertEnv struct {
	*env
	d       *Daemon
	clk     *fakeClock
	events  chan alerts.Event
	pending []alerts.Event // taken from events but not yet waited for
	atStart []alerts.Alert // what the evaluation after the start announced
}

// newDaemon builds (does not start) a daemon on cfg whose token manager
// and alert engine run on ae's clock and report every alert event to a
// fresh ae.events; it becomes ae.d.
func (ae *alertEnv) newDaemon(t *testing.T, cfg *config.Config) *Daemon {
	t.Helper()
	ae.events, ae.pending = make(chan alerts.Event, 1000), nil
	d, err := New(cfg, Options{Logger: ae.log,
		TokenOptions: tokens.Options{Now: ae.clk.Now, RetryMin: time.Millisecond, RetryMax: 20 * time.Millisecond},
		Alerts: alerts.Options{Now: ae.clk.Now, RetryMin: time.Millisecond, Hostname: "bridge1",
			OnEvent: func(ev alerts.Event) { ae.events <- ev }},
	})
	if err != nil {
		t.Fatal(err)
	}
	ae.d = d
	return d
}

// alertConfig: helpdesk (alice, send_via = "auto") sends the alert mail;
// archive (bob) is the account that breaks. bob has no FullAccess on
// archive@contoso.com until a test grants it.
func (e *env) writeAlertConfig(t *testing.T, secretExpires, alertsBlock string) {
	t.Helper()
	h, _ := bcrypt.GenerateFromPassword([]byte("pw-otrs-1"), bcrypt.MinCost)
	src := fmt.Sprintf(`state_dir = %q
imap { listen = ["127.0.0.1:0"] }
pop3 { listen = ["127.0.0.1:0"] }
smtp {
  listen            = ["127.0.0.1:0"]
  auto_smtp_recheck = "1ms"
}
admin { listen = "127.0.0.1:0" }
provider "fake" {
  tenant                = "contoso.com"
  client_id             = "app-id"
  client_secret         = %q
  client_secret_expires = %q
  authority             = %q
  imap_server           = %q
  pop3_server           = %q
  smtp_server           = %q
  graph_url             = %q
  ca_file               = %q
}
account "helpdesk" {
  provider = "fake"
  mailbox  = "helpdesk@contoso.com"
  delegate = "alice@contoso.com"
  send_via = "auto"
}
account "archive" {
  provider = "fake"
  mailbox  = "archive@contoso.com"
  delegate = "bob@contoso.com"
}
user "otrs" {
  password_hash = %q
  account       = "helpdesk"
}
user "arch" {
  password_hash = %q
  account       = "archive"
}
alerts {
%s
}
`, filepath.Join(e.dir, "state"), e.secret, secretExpires, e.f.AuthorityURL, e.f.IMAPAddr, e.f.POP3Addr, e.f.SMTPAddr, e.f.GraphURL(), e.caFile, h, h, alertsBlock)
	if err := os.WriteFile(e.cfgPath, []byte(src), 0o600); err != nil {
		t.Fatal(err)
	}
}

func startAlertEnv(t *testing.T, secretExpires, alertsBlock string, signInArchive bool) *alertEnv {
	t.Helper()
	e := newEnv(t)
	e.f.AddUser("bob@contoso.com")
	e.f.AddUser("admin@contoso.com")
	e.f.AddMailbox("archive@contoso.com")
	e.f.GrantSendAs("helpdesk@contoso.com", "alice@contoso.com") // the Graph path needs Send As
	e.writeAlertConfig(t, secretExpires, alertsBlock)
	cfg, err := config.Load(e.cfgPath)
	if err != nil {
		t.Fatal(err)
	}
	ae := &alertEnv{env: e, clk: &fakeClock{t: time.Date(2026, 11, 26, 3, 0, 0, 0, time.UTC)}}
	d := ae.newDaemon(t, cfg)
	// Signed in before the start, as a restarted bridge is.
	ae.signIn(t, "helpdesk", "alice@contoso.com")
	if signInArchive {
		ae.signIn(t, "archive", "bob@contoso.com")
	}
	if err := d.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Shutdown(context.Background()) })
	ae.atStart = ae.startEvaluation(t)
	return ae
}

// startEvaluation waits for the evaluation the engine runs by itself when
// the token manager's first refresh round ended, and returns what it
// announced.
func (ae *alertEnv) startEvaluation(t *testing.T) []alerts.Alert {
	t.Helper()
	return ae.nextEvaluation(t, "no evaluation after the start (check_interval is 1h)")
}

// announcement reports whether ev belongs to an evaluation (its firing and
// resolved events and the evaluated event that closes it) rather than to a
// delivery.
func announcement(ev alerts.Event) bool {
	switch ev.Kind {
	case string(alerts.Firing), string(alerts.Resolved), "evaluated":
		return true
	}
	return false
}

// nextEvaluation waits for the next evaluation the engine runs by itself
// (at the start, or kicked: by the login that reaches
// upstream_login_failures, by a working login that clears counted
// failures, by a reload) and returns what it announced. The evaluated
// event closes each evaluation, so the whole evaluation is over when it
// returns: an Evaluate of the test after it cannot race with it. Delivery
// events on the way are kept for waitEvent.
func (ae *alertEnv) nextEvaluation(t *testing.T, what string) []alerts.Alert {
	t.Helper()
	var out []alerts.Alert
	take := func(ev alerts.Event) bool {
		if ev.Kind == "evaluated" {
			return true
		}
		out = append(out, ev.Alert)
		return false
	}
	for i := 0; i < len(ae.pending); i++ {
		if ev := ae.pending[i]; announcement(ev) {
			ae.pending = slices.Delete(ae.pending, i, i+1)
			i--
			if take(ev) {
				return out
			}
		}
	}
	for {
		select {
		case ev := <-ae.events:
			if !announcement(ev) {
				ae.pending = append(ae.pending, ev)
			} else if take(ev) {
				return out
			}
		case <-time.After(30 * time.Second):
			t.Fatal(what)
		}
	}
}

// expectKicked waits for the evaluation an action of the test kicked and
// expects it to announce exactly one change: c in state s of account ("" for
// a provider's credential).
func (ae *alertEnv) expectKicked(t *testing.T, c alerts.Condition, s alerts.State, account string) alerts.Alert {
	t.Helper()
	got := ae.nextEvaluation(t, fmt.Sprintf("no kicked evaluation (waiting for %s %s of %q; check_interval is 1h)", c, s, account))
	if len(got) != 1 || got[0].Condition != c || got[0].State != s || got[0].Account != account {
		t.Fatalf("the kicked evaluation announced %+v, want one %s %s for %q", got, c, s, account)
	}
	return got[0]
}

func (ae *alertEnv) signIn(t *testing.T, account, upn string) {
	t.Helper()
	dl, done, err := ae.d.Tokens().StartDeviceLogin(context.Background(), account)
	if err != nil {
		t.Fatal(err)
	}
	if err := ae.f.ApproveDevice(dl.UserCode, upn); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatalf("device login %s: %v", account, err)
	}
}

// evaluate runs one evaluation and returns the announcements it made.
// Every evaluation the engine ran by itself must have been waited for
// (nextEvaluation, expectKicked): one whose events are still queued here
// would be taken for this one, so it fails the test instead. Delivery
// events are kept for waitEvent.
func (ae *alertEnv) evaluate(t *testing.T) []alerts.Alert {
	t.Helper()
	stray := func(ev alerts.Event) {
		t.Helper()
		t.Fatalf("an evaluation the test did not wait for is reporting (its %s event, %s %q): an action kicked it; wait for it with expectKicked or nextEvaluation", ev.Kind, ev.Alert.Condition, ev.Alert.Account)
	}
	for _, ev := range ae.pending {
		if announcement(ev) {
			stray(ev)
		}
	}
	for drained := false; !drained; {
		select {
		case ev := <-ae.events:
			if announcement(ev) {
				stray(ev)
			}
			ae.pending = append(ae.pending, ev)
		default:
			drained = true
		}
	}
	ae.d.Alerts().Evaluate()
	// Evaluate reports its firing, resolved and evaluated events before it
	// returns; the evaluated event is its last.
	var out []alerts.Alert
	for {
		select {
		case ev := <-ae.events:
			switch {
			case ev.Kind == "evaluated":
				return out
			case announcement(ev):
				out = append(out, ev.Alert)
			default:
				ae.pending = append(ae.pending, ev)
			}
		default:
			t.Fatal("Evaluate returned before its evaluated event (no alerts block?)")
			return nil
		}
	}
}

func (ae *alertEnv) evalExpect(t *testing.T, c alerts.Condition, s alerts.State, account string) {
	t.Helper()
	got := ae.evaluate(t)
	if len(got) != 1 || got[0].Condition != c || got[0].State != s || got[0].Account != account {
		t.Fatalf("evaluation announced %+v, want one %s %s for %q", got, c, s, account)
	}
}

func (ae *alertEnv) evalNothing(t *testing.T) {
	t.Helper()
	if got := ae.evaluate(t); len(got) != 0 {
		t.Fatalf("evaluation announced %+v, want nothing", got)
	}
}

// waitEvent waits for a delivery event (also one an evaluation of the test
// came across). Other events stay queued.
func (ae *alertEnv) waitEvent(t *testing.T, kind, channel string, c alerts.Condition, s alerts.State) alerts.Event {
	t.Helper()
	match := func(ev alerts.Event) bool {
		return ev.Kind == kind && ev.Channel == channel && ev.Alert.Condition == c && ev.Alert.State == s
	}
	if i := slices.IndexFunc(ae.pending, match); i >= 0 {
		ev := ae.pending[i]
		ae.pending = slices.Delete(ae.pending, i, i+1)
		return ev
	}
	for {
		select {
		case ev := <-ae.events:
			if match(ev) {
				return ev
			}
			ae.pending = append(ae.pending, ev)
		case <-time.After(30 * time.Second):
			t.Fatalf("no %s %s event for %s %s", channel, kind, c, s)
		}
	}
}

// inbox finds an alert mail in admin@contoso.com's INBOX.
func (ae *alertEnv) inbox(t *testing.T, subject string) string {
	t.Helper()
	for _, m := range ae.f.Messages("admin@contoso.com") {
		if strings.Contains(string(m), "Subject: "+subject) {
			return string(m)
		}
	}
	t.Fatalf("no mail %q in admin@contoso.com's INBOX", subject)
	return ""
}

func (ae *alertEnv) refresh(t *testing.T, account string) error {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	tok, _ := ae.d.Tokens().AccessToken(ctx, account)
	ae.d.Tokens().Rejected(account, tok)
	_, err := ae.d.Tokens().AccessToken(ctx, account)
	return err
}

func sendMail(t *testing.T, addr string) error {
	t.Helper()
	c, err := smtp.Dial(addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.Auth(sasl.NewPlainClient("", "otrs", "pw-otrs-1")); err != nil {
		return err
	}
	return c.SendMail("helpdesk@contoso.com", []string{"alice@contoso.com"}, strings.NewReader("Subject: hi\r\n\r\nbody\r\n"))
}

const alertBlock = `  webhook_url               = %q
  email_to                  = "admin@contoso.com"
  email_account             = "helpdesk"
  refresh_failing_for       = "30m"
  credential_expiry_warning = "30d"
  upstream_login_failures   = 2
  check_interval            = "1h"`

func TestAlertsNeedsLoginAndRefreshFailing(t *testing.T) {
	r := newHookReceiver(t, false)
	ae := startAlertEnv(t, "2099-01-01", fmt.Sprintf(alertBlock, r.srv.URL), true)
	ae.evalNothing(t)

	// Revoked sessions: archive needs a login. Webhook and mail through
	// helpdesk's mailbox, both with the fix from tokens.
	ae.f.RevokeRefreshTokens("bob@contoso.com")
	if err := ae.refresh(t, "archive"); tokens.KindOf(err) != tokens.NeedsLogin {
		t.Fatalf("refresh after revocation: %v", err)
	}
	ae.evalExpect(t, alerts.NeedsLogin, alerts.Firing, "archive")
	ae.evalNothing(t)
	p := r.next(t, alerts.NeedsLogin, alerts.Firing)
	if p.Account != "archive" || !strings.Contains(p.Fix, "oauthbridge login archive") || !strings.Contains(p.Text, "AADSTS50173") {
		t.Errorf("webhook: %+v", p)
	}
	ae.waitEvent(t, "delivered", "email", alerts.NeedsLogin, alerts.Firing)
	m := ae.inbox(t, "[oauthbridge FIRING] archive: needs login")
	if !strings.Contains(m, "From: oauthbridge <helpdesk@contoso.com>") || !strings.Contains(m, "oauthbridge login archive") {
		t.Errorf("alert mail:\n%s", m)
	}
	ae.signIn(t, "archive", "bob@contoso.com")
	ae.evalExpect(t, alerts.NeedsLogin, alerts.Resolved, "archive")
	r.next(t, alerts.NeedsLogin, alerts.Resolved)
	ae.waitEvent(t, "delivered", "email", alerts.NeedsLogin, alerts.Resolved)
	ae.inbox(t, "[oauthbridge RESOLVED] archive: needs login")

	// The token endpoint fails: nothing before refresh_failing_for, one
	// alert after it, one when it works again.
	ae.f.SetTokenFault(fakems.TokenFault{Status: 503})
	if err := ae.refresh(t, "archive"); err == nil {
		t.Fatal("refresh worked despite the token fault")
	}
	ae.evalNothing(t)
	ae.clk.Add(29 * time.Minute)
	ae.evalNothing(t)
	ae.clk.Add(2 * time.Minute)
	ae.evalExpect(t, alerts.RefreshFailing, alerts.Firing, "archive")
	ae.evalNothing(t)
	r.next(t, alerts.RefreshFailing, alerts.Firing)
	ae.f.SetTokenFault(fakems.TokenFault{})
	// A background retry that got its 503 before the fault was cleared may
	// still answer the first call: each try moves past the backoff.
	err := errors.New("not tried")
	for i := 0; i < 5 && err != nil; i++ {
		ae.clk.Add(time.Minute)
		err = ae.refresh(t, "archive")
	}
	if err != nil {
		t.Fatal(err)
	}
	ae.evalExpect(t, alerts.RefreshFailing, alerts.Resolved, "archive")
	r.next(t, alerts.RefreshFailing, alerts.Resolved)
}

func TestAlertsUpstreamLoginsGraphFallbackAndReload(t *testing.T) {
	r := newHookReceiver(t, false)
	ae := startAlertEnv(t, "2099-01-01", fmt.Sprintf(alertBlock, r.srv.URL), true)

	// bob has no FullAccess on archive@contoso.com: Exchange refuses the
	// IMAP login twice; the second failure triggers the evaluation itself.
	for range 2 {
		if c, err := imapLogin(t, ae.d.Addr("imap"), "arch", "pw-otrs-1"); err == nil {
			c.Close()
			t.Fatal("IMAP login worked without FullAccess")
		}
	}
	ae.expectKicked(t, alerts.UpstreamLoginFailures, alerts.Firing, "archive")
	p := r.next(t, alerts.UpstreamLoginFailures, alerts.Firing)
	if p.Account != "archive" || !strings.Contains(p.Message, "imap") {
		t.Errorf("webhook: %+v", p)
	}
	ae.f.AddMailbox("archive@contoso.com", "bob@contoso.com") // Add-MailboxPermission
	c, err := imapLogin(t, ae.d.Addr("imap"), "arch", "pw-otrs-1")
	if err != nil {
		t.Fatalf("IMAP login with FullAccess: %v", err)
	}
	c.Close()
	// The working login clears the counted failures: it kicks the
	// evaluation.
	ae.expectKicked(t, alerts.UpstreamLoginFailures, alerts.Resolved, "archive")
	r.next(t, alerts.UpstreamLoginFailures, alerts.Resolved)

	// SMTP AUTH disabled for helpdesk (send_via = "auto"): the message goes
	// through Graph; so does the alert mail, helpdesk being email_account.
	ae.f.SetMailboxSMTPAuth("helpdesk@contoso.com", fakems.SMTPAuthDisabled)
	if err := sendMail(t, ae.d.Addr("smtp")); err != nil {
		t.Fatalf("send with SMTP AUTH disabled: %v", err)
	}
	// No kick: helpdesk's logins never failed (with send_via = "auto" a
	// refused SMTP AUTH is the switch to Graph, not a failed login), and a
	// working login kicks only when it clears counted failures.
	ae.evalExpect(t, alerts.GraphFallback, alerts.Firing, "helpdesk")
	p = r.next(t, alerts.GraphFallback, alerts.Firing)
	if !strings.Contains(p.Fix, "Set-CASMailbox -Identity helpdesk@contoso.com -SmtpClientAuthenticationDisabled $false") {
		t.Errorf("fix: %q", p.Fix)
	}
	ae.waitEvent(t, "delivered", "email", alerts.GraphFallback, alerts.Firing)
	ae.inbox(t, "[oauthbridge FIRING] helpdesk: graph fallback")
	ae.f.SetMailboxSMTPAuth("helpdesk@contoso.com", fakems.SMTPAuthEnabled)
	if err := sendMail(t, ae.d.Addr("smtp")); err != nil {
		t.Fatal(err)
	}
	ae.evalExpect(t, alerts.GraphFallback, alerts.Resolved, "helpdesk") // no kick, as above
	r.next(t, alerts.GraphFallback, alerts.Resolved)

	// Reload: a secret expiring in 10 days and a new webhook. The alert
	// goes to the new webhook; nothing active is announced again.
	r2 := newHookReceiver(t, false)
	ae.writeAlertConfig(t, "2026-12-06", fmt.Sprintf(alertBlock, r2.srv.URL))
	cfg, err := config.Load(ae.cfgPath)
	if err != nil {
		t.Fatal(err)
	}
	if err := ae.d.Reload(cfg); err != nil {
		t.Fatal(err)
	}
	for _, st := range ae.d.Tokens().Status() {
		if want := time.Date(2026, 12, 6, 0, 0, 0, 0, time.UTC); !st.ClientSecretExpires.Equal(want) {
			t.Errorf("status of %s: client_secret_expires %v, want %v", st.Account, st.ClientSecretExpires, want)
		}
	}
	// The reload itself kicks an evaluation; it announces the expiring
	// secret and nothing else.
	if a := ae.expectKicked(t, alerts.CredentialExpiring, alerts.Firing, ""); a.Provider != "fake" {
		t.Errorf("credential alert of provider %q, want fake", a.Provider)
	}
	p = r2.next(t, alerts.CredentialExpiring, alerts.Firing)
	if p.Provider != "fake" || !strings.Contains(p.Message, "expires on 2026-12-06") || !strings.Contains(p.Fix, "client_secret_expires") {
		t.Errorf("credential alert: %+v", p)
	}
	ae.evalNothing(t) // the kicked evaluation is over: nothing left to announce
}

// A webhook that never answers delays neither a login, nor a message, nor
// a token refresh.
func TestHangingWebhookDelaysNothing(t *testing.T) {
	r := newHookReceiver(t, true)
	ae := startAlertEnv(t, "2099-01-01", fmt.Sprintf(`  webhook_url = %q
  check_interval = "1h"`, r.srv.URL), false)
	// Nobody signed in for archive: announced by the evaluation at the start.
	if a := ae.atStart; len(a) != 1 || a[0].Condition != alerts.NeedsLogin || a[0].Account != "archive" {
		t.Fatalf("the evaluation at the start announced %+v, want needs_login of archive", a)
	}
	<-r.inHang // the webhook worker is stuck in its POST now

	c, err := imapLogin(t, ae.d.Addr("imap"), "otrs", "pw-otrs-1")
	if err != nil {
		t.Fatalf("IMAP login while the webhook hangs: %v", err)
	}
	c.Close()
	if err := sendMail(t, ae.d.Addr("smtp")); err != nil {
		t.Fatalf("SMTP send while the webhook hangs: %v", err)
	}
	if err := ae.refresh(t, "helpdesk"); err != nil {
		t.Fatalf("token refresh while the webhook hangs: %v", err)
	}
	ae.signIn(t, "archive", "bob@contoso.com")
	// Neither the working logins of helpdesk (none of its logins failed)
	// nor a sign-in kicks an evaluation: this one announces.
	ae.evalExpect(t, alerts.NeedsLogin, alerts.Resolved, "archive") // evaluation never waits for delivery
	select {
	case <-r.hang:
		t.Fatal("the webhook was released early: the test proves nothing")
	default:
	}
}
