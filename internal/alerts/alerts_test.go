package alerts

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/oauthbridge/oauthbridge/audit"
	"github.com/oauthbridge/oauthbridge/config"
	"github.com/oauthbridge/oauthbridge/internal/localauth"
	"github.com/oauthbridge/oauthbridge/tokens"
)

// clock is a fake clock.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *clock) Add(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

// statuses is a settable token status.
type statuses struct {
	mu   sync.Mutex
	rows map[string]tokens.AccountStatus
}

func (s *statuses) set(st tokens.AccountStatus) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.rows == nil {
		s.rows = map[string]tokens.AccountStatus{}
	}
	s.rows[st.Account] = st
}

func (s *statuses) Status() []tokens.AccountStatus {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []tokens.AccountStatus
	for _, r := range s.rows {
		out = append(out, r)
	}
	return out
}

// receiver is a webhook endpoint on 127.0.0.1 that records payloads.
type receiver struct {
	srv  *httptest.Server
	got  chan Payload
	mu   sync.Mutex
	hdrs []http.Header
	// status, if set, answers each request (in order; then 200).
	status []int
	hang   chan struct{} // if non-nil, requests wait for it to close
	inHang chan struct{}
}

func newReceiver(t *testing.T) *receiver {
	r := &receiver{got: make(chan Payload, 100), inHang: make(chan struct{}, 100)}
	r.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		body, _ := io.ReadAll(req.Body)
		r.mu.Lock()
		r.hdrs = append(r.hdrs, req.Header.Clone())
		code := http.StatusOK
		if len(r.status) > 0 {
			code, r.status = r.status[0], r.status[1:]
		}
		hang := r.hang
		r.mu.Unlock()
		if hang != nil {
			r.inHang <- struct{}{}
			select {
			case <-hang:
			case <-req.Context().Done():
			}
			return
		}
		w.WriteHeader(code)
		if code/100 == 2 {
			var p Payload
			if err := json.Unmarshal(body, &p); err != nil {
				t.Errorf("webhook body is not JSON: %v: %s", err, body)
			}
			r.got <- p
		}
	}))
	t.Cleanup(r.srv.Close)
	return r
}

func (r *receiver) next(t *testing.T) Payload {
	t.Helper()
	select {
	case p := <-r.got:
		return p
	case <-time.After(20 * time.Second):
		t.Fatal("no webhook POST arrived")
	}
	return Payload{}
}

func (r *receiver) none(t *testing.T) {
	t.Helper()
	select {
	case p := <-r.got:
		t.Fatalf("unexpected webhook POST: %s %s %s", p.Condition, p.State, p.Message)
	default:
	}
}

const testConfig = `state_dir = "/tmp"
provider "contoso" {
  tenant        = "contoso.com"
  client_id     = "app-id"
  client_secret = "s3cret"
  %s
}
account "helpdesk" {
  provider = "contoso"
  mailbox  = "helpdesk@contoso.com"
  send_via = "auto"
}
account "scanner" {
  provider = "contoso"
  mailbox  = "scanner@contoso.com"
}
alerts {
%s
}
`

func loadConfig(t *testing.T, provider, alerts string) *config.Config {
	t.Helper()
	cfg, err := config.Parse("test.hcl", []byte(fmt.Sprintf(testConfig, provider, alerts)))
	if err != nil {
		var ce *config.Error
		if errors.As(err, &ce) {
			t.Fatal(ce.Diags.Error())
		}
		t.Fatal(err)
	}
	return cfg
}

// logBuf collects log output.
type logBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *logBuf) Write(p []byte) (int, error) { l.mu.Lock(); defer l.mu.Unlock(); return l.b.Write(p) }
func (l *logBuf) String() string              { l.mu.Lock(); defer l.mu.Unlock(); return l.b.String() }

type harness struct {
	e         *Engine
	clk       *clock
	st        *statuses
	cfg       func() *config.Config
	setConfig func(*config.Config)
	mu        sync.Mutex
	events    chan Event
	logs      *logBuf
}

func newHarness(t *testing.T, cfg *config.Config, o Options) *harness {
	h := &harness{clk: &clock{t: time.Date(2026, 11, 26, 3, 0, 0, 0, time.UTC)}, st: &statuses{}, events: make(chan Event, 1000), logs: &logBuf{}}
	cur := cfg
	h.cfg = func() *config.Config { h.mu.Lock(); defer h.mu.Unlock(); return cur }
	h.setConfig = func(c *config.Config) { h.mu.Lock(); defer h.mu.Unlock(); cur = c }
	o.Config = h.cfg
	if o.Status == nil {
		o.Status = h.st.Status
	}
	o.Now = h.clk.Now
	o.Logger = slog.New(slog.NewTextHandler(h.logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	if o.RetryMin == 0 {
		o.RetryMin = time.Millisecond
	}
	o.Hostname = "bridge1"
	o.OnEvent = func(ev Event) { h.events <- ev }
	h.e = New(o)
	h.e.Start(context.Background())
	t.Cleanup(h.e.Close)
	return h
}

// waitEvent waits for an event of kind on channel.
func (h *harness) waitEvent(t *testing.T, kind, channel string) Event {
	t.Helper()
	for {
		select {
		case ev := <-h.events:
			if ev.Kind == kind && ev.Channel == channel {
				return ev
			}
		case <-time.After(20 * time.Second):
			t.Fatalf("no %s event on %q", kind, channel)
		}
	}
}

// changes evaluates and returns what it announced: firing and resolved
// events are reported before Evaluate returns, the evaluated event last.
// Delivery events of earlier evaluations are skipped. Every evaluation the
// engine ran by itself (kicked by a login that reaches
// upstream_login_failures or one that clears counted failures, or after
// TokensSettled) must have been waited for with nextEvaluation: one whose
// announcements are still queued would be taken for this one (or this one
// for it), so it fails the test instead.
func (h *harness) changes(t *testing.T) []Alert {
	t.Helper()
	for drained := false; !drained; {
		select {
		case ev := <-h.events:
			switch ev.Kind {
			case string(Firing), string(Resolved), "evaluated":
				t.Fatalf("an evaluation the test did not wait for is reporting (its %s event, %s %q): an action kicked it; wait for it with nextEvaluation", ev.Kind, ev.Alert.Condition, ev.Alert.Account)
			}
		default:
			drained = true
		}
	}
	h.e.Evaluate()
	var out []Alert
	for {
		select {
		case ev := <-h.events:
			switch ev.Kind {
			case "evaluated":
				return out
			case string(Firing), string(Resolved):
				out = append(out, ev.Alert)
			}
		default:
			t.Fatal("Evaluate returned before its evaluated event (no alerts block?)")
			return nil
		}
	}
}

// evalOne evaluates and expects exactly one announcement.
func (h *harness) evalOne(t *testing.T) Alert {
	t.Helper()
	c := h.changes(t)
	if len(c) != 1 {
		t.Fatalf("evaluation announced %d changes, want 1: %+v", len(c), c)
	}
	return c[0]
}

// evalNone evaluates and expects no announcement.
func (h *harness) evalNone(t *testing.T) {
	t.Helper()
	if c := h.changes(t); len(c) != 0 {
		t.Fatalf("evaluation announced %+v, want nothing", c)
	}
}

func ok(name, mailbox string) tokens.AccountStatus {
	return tokens.AccountStatus{Account: name, Mailbox: mailbox, Flow: "delegated", State: tokens.StateOK, SendVia: "smtp", SendPath: "smtp"}
}

func TestEachConditionFiresOnceAndClearsOnce(t *testing.T) {
	r := newReceiver(t)
	cfg := loadConfig(t, `client_secret_expires = "2026-12-10"`, fmt.Sprintf(`
  webhook_url = %q
  refresh_failing_for = "30m"
  credential_expiry_warning = "30d"
  upstream_login_failures = 3
  upstream_login_window = "10m"
  check_interval = "1h"`, r.srv.URL+"/hook"))
	certs := &struct {
		mu   sync.Mutex
		list []CredentialExpiry
	}{}
	h := newHarness(t, cfg, Options{Credentials: func() []CredentialExpiry {
		certs.mu.Lock()
		defer certs.mu.Unlock()
		return slices.Clone(certs.list) // the test changes certs.list[0] in place
	}})
	helpdesk, scanner := ok("helpdesk", "helpdesk@contoso.com"), ok("scanner", "scanner@contoso.com")
	h.st.set(helpdesk)
	h.st.set(scanner)

	// The client secret expires in 14 days: warned once.
	h.evalOne(t)
	p := r.next(t)
	if p.Condition != CredentialExpiring || p.State != Firing || p.Provider != "contoso" || !strings.Contains(p.Message, "expires on 2026-12-10") || !strings.Contains(p.Fix, "New client secret") {
		t.Fatalf("secret expiry alert: %+v", p)
	}
	h.evalNone(t)
	r.none(t)

	// needs_login: the fix comes from tokens.
	nl := helpdesk
	nl.State, nl.LastError, nl.Fix, nl.AADSTS = tokens.StateNeedsLogin, "the refresh token was revoked", "run 'oauthbridge login helpdesk' and sign in as alice@contoso.com", 50173
	h.st.set(nl)
	h.evalOne(t)
	p = r.next(t)
	if p.Condition != NeedsLogin || p.State != Firing || p.Account != "helpdesk" || p.Fix != nl.Fix || !strings.Contains(p.Text, "AADSTS50173") || !strings.Contains(p.Text, "Fix: run 'oauthbridge login helpdesk'") {
		t.Fatalf("needs_login alert: %+v", p)
	}
	h.evalNone(t)
	r.none(t)
	h.st.set(helpdesk)
	h.evalOne(t)
	p = r.next(t)
	if p.Condition != NeedsLogin || p.State != Resolved || p.EndsAt.IsZero() || p.Alerts[0].Status != Resolved {
		t.Fatalf("needs_login resolved: %+v", p)
	}
	h.evalNone(t)
	r.none(t)

	// Refresh failing: nothing before the threshold, once after it.
	rf := scanner
	rf.LastError, rf.Fix = "the token endpoint answered 503", "none if it recovers"
	h.st.set(rf)
	h.evalNone(t)
	h.clk.Add(29 * time.Minute)
	h.evalNone(t)
	r.none(t)
	h.clk.Add(2 * time.Minute)
	h.evalOne(t)
	p = r.next(t)
	if p.Condition != RefreshFailing || p.State != Firing || p.Account != "scanner" || !strings.Contains(p.Message, "failing for 31m0s") {
		t.Fatalf("refresh failing: %+v", p)
	}
	h.evalNone(t)
	r.none(t)
	h.st.set(scanner)
	h.evalOne(t)
	if p = r.next(t); p.Condition != RefreshFailing || p.State != Resolved {
		t.Fatalf("refresh failing resolved: %+v", p)
	}

	// Graph fallback of the send_via = "auto" account.
	gf := helpdesk
	gf.SendVia, gf.SendPath, gf.SendPathReason = "auto", "graph", "SMTP AUTH is disabled for this mailbox or tenant: 535 5.7.139"
	h.st.set(gf)
	h.evalOne(t)
	if p = r.next(t); p.Condition != GraphFallback || p.State != Firing || !strings.Contains(p.Fix, "Set-CASMailbox -Identity helpdesk@contoso.com -SmtpClientAuthenticationDisabled $false") {
		t.Fatalf("graph fallback: %+v", p)
	}
	h.evalNone(t)
	r.none(t)
	h.st.set(helpdesk)
	h.evalOne(t)
	if p = r.next(t); p.Condition != GraphFallback || p.State != Resolved {
		t.Fatalf("graph fallback resolved: %+v", p)
	}

	// Upstream logins: two failures do nothing, the third fires; a
	// successful login clears.
	fail := audit.LoginAttempt{Proto: "imap", Account: "scanner", Result: audit.ResultUpstreamRejected, Err: errors.New("AUTHENTICATE failed")}
	h.e.LoginAttempt(fail)
	h.e.LoginAttempt(fail)
	h.e.LoginAttempt(audit.LoginAttempt{Proto: "imap", Account: "scanner", Result: audit.ResultBadCredentials}) // a local wrong password does not count
	h.e.LoginAttempt(audit.LoginAttempt{Proto: "imap", Account: "scanner", Result: audit.ResultTemporary,       // nor a missing token (refresh_failing)
		Err: &tokens.Error{Account: "scanner", Kind: tokens.Temporary, Reason: "the token endpoint answered 503"}})
	h.evalNone(t) // two counted failures, below the threshold: nothing kicked

	r.none(t)
	h.e.LoginAttempt(fail)
	if c := h.nextEvaluation(t); len(c) != 1 { // the third failure kicks it
		t.Fatalf("third failure: %+v, want upstream_login_failures", c)
	}
	if p = r.next(t); p.Condition != UpstreamLoginFailures || p.State != Firing || !strings.Contains(p.Message, "AUTHENTICATE failed") {
		t.Fatalf("upstream failures: %+v", p)
	}
	h.e.LoginAttempt(fail)
	h.evalNone(t) // only the failure that reaches the threshold kicks, not the fourth
	r.none(t)
	h.e.LoginAttempt(audit.LoginAttempt{Proto: "imap", Account: "scanner", Result: audit.ResultOK})
	if c := h.nextEvaluation(t); len(c) != 1 { // the working login kicks it
		t.Fatalf("working login: %+v, want upstream_login_failures resolved", c)
	}
	if p = r.next(t); p.Condition != UpstreamLoginFailures || p.State != Resolved {
		t.Fatalf("upstream failures resolved: %+v", p)
	}
	// Failures spread wider than the window never fire (nor kick: at most
	// two fall within any 10 minutes).
	for range 5 {
		h.e.LoginAttempt(fail)
		h.clk.Add(6 * time.Minute)
	}
	h.evalNone(t)
	r.none(t)

	// A certificate (from the credential list) expiring within the
	// warning fires; the replaced one clears.
	certs.mu.Lock()
	certs.list = []CredentialExpiry{{Provider: "contoso", Kind: "certificate", Name: "AB12CD", NotAfter: h.clk.Now().Add(5 * 24 * time.Hour), InUse: true}}
	certs.mu.Unlock()
	h.evalOne(t)
	if p = r.next(t); p.Condition != CredentialExpiring || p.State != Firing || !strings.Contains(p.Message, "certificate AB12CD") || !strings.Contains(p.Message, "in 5 days") {
		t.Fatalf("certificate expiry: %+v", p)
	}
	certs.mu.Lock()
	certs.list[0].NotAfter = h.clk.Now().Add(365 * 24 * time.Hour)
	certs.mu.Unlock()
	h.evalOne(t)
	if p = r.next(t); p.Condition != CredentialExpiring || p.State != Resolved || !strings.Contains(p.Message, "certificate AB12CD") {
		t.Fatalf("certificate expiry resolved: %+v", p)
	}
	h.evalNone(t)
	r.none(t)
}

func TestStateSurvivesReload(t *testing.T) {
	r := newReceiver(t)
	block := fmt.Sprintf("webhook_url = %q\ncheck_interval = \"1h\"", r.srv.URL)
	cfg := loadConfig(t, "", block)
	h := newHarness(t, cfg, Options{})
	nl := ok("helpdesk", "helpdesk@contoso.com")
	nl.State = tokens.StateNeedsLogin
	h.st.set(nl)
	h.evalOne(t)
	if p := r.next(t); p.State != Firing {
		t.Fatal(p)
	}
	// The same engine reads a new configuration (a SIGHUP): no second firing.
	cfg2 := loadConfig(t, "", block+"\nrefresh_failing_for = \"1h\"")
	h.setConfig(cfg2)
	h.evalNone(t)
	r.none(t)
}

func TestWebhookRetriedAfter500(t *testing.T) {
	r := newReceiver(t)
	r.status = []int{500, 503}
	cfg := loadConfig(t, "", fmt.Sprintf("webhook_url = %q\ncheck_interval = \"1h\"", r.srv.URL))
	h := newHarness(t, cfg, Options{})
	nl := ok("helpdesk", "helpdesk@contoso.com")
	nl.State = tokens.StateNeedsLogin
	h.st.set(nl)
	h.e.Evaluate()
	if ev := h.waitEvent(t, "retry", "webhook"); ev.Attempt != 1 || !strings.Contains(ev.Err.Error(), "500") {
		t.Errorf("first retry event: %+v", ev)
	}
	ev := h.waitEvent(t, "delivered", "webhook")
	if ev.Attempt != 3 {
		t.Errorf("delivered at attempt %d, want 3 (500, 503, 200)", ev.Attempt)
	}
	if p := r.next(t); p.Condition != NeedsLogin {
		t.Error(p)
	}
}

func TestWebhook4xxNotRetriedAndNoSecretLogged(t *testing.T) {
	r := newReceiver(t)
	r.status = []int{403}
	url := r.srv.URL + "/services/T0/B0/PATHSECRET?token=QUERYSECRET"
	cfg := loadConfig(t, "", fmt.Sprintf("webhook_url = %q\nheaders = { Authorization = \"Bearer HEADERSECRET\" }\ncheck_interval = \"1h\"", url))
	h := newHarness(t, cfg, Options{})
	nl := ok("helpdesk", "helpdesk@contoso.com")
	nl.State = tokens.StateNeedsLogin
	h.st.set(nl)
	h.e.Evaluate()
	if ev := h.waitEvent(t, "failed", "webhook"); ev.Attempt != 1 {
		t.Errorf("a 403 was retried: attempt %d", ev.Attempt)
	}
	r.mu.Lock()
	if got := r.hdrs[0].Get("Authorization"); got != "Bearer HEADERSECRET" {
		t.Errorf("configured header not sent: %q", got)
	}
	r.mu.Unlock()

	// A receiver that is down: the transport error names no URL either.
	r.srv.Close()
	h.st.set(ok("helpdesk", "helpdesk@contoso.com"))
	h.e.Evaluate()
	h.waitEvent(t, "retry", "webhook")
	logs := h.logs.String()
	for _, s := range []string{"PATHSECRET", "QUERYSECRET", "HEADERSECRET", "s3cret"} {
		if strings.Contains(logs, s) {
			t.Errorf("log contains secret %q:\n%s", s, logs)
		}
	}
	if !strings.Contains(logs, "webhook http://127.0.0.1") {
		t.Errorf("log does not name the webhook's host:\n%s", logs)
	}
}

func TestHangingWebhookNeverBlocksEvaluation(t *testing.T) {
	r := newReceiver(t)
	r.hang = make(chan struct{})
	defer close(r.hang)
	cfg := loadConfig(t, "", fmt.Sprintf("webhook_url = %q\ncheck_interval = \"1h\"", r.srv.URL))
	h := newHarness(t, cfg, Options{QueueSize: 2, WebhookTimeout: time.Hour})
	nl := ok("helpdesk", "helpdesk@contoso.com")
	flip := func(s tokens.State) {
		nl.State = s
		h.st.set(nl)
		h.e.Evaluate() // returns although the receiver hangs
	}
	flip(tokens.StateNeedsLogin)
	<-r.inHang // the worker is stuck in the first POST
	flip(tokens.StateOK)
	flip(tokens.StateNeedsLogin)
	flip(tokens.StateOK) // the queue (2) is full now: dropped, logged
	h.waitEvent(t, "dropped", "webhook")
	if !strings.Contains(h.logs.String(), "queue is full") {
		t.Error("dropped alert not logged")
	}
}

func TestPayloadShape(t *testing.T) {
	r := newReceiver(t)
	cfg := loadConfig(t, "", fmt.Sprintf("webhook_url = %q\ncheck_interval = \"1h\"", r.srv.URL))
	h := newHarness(t, cfg, Options{})
	nl := ok("helpdesk", "helpdesk@contoso.com")
	nl.State, nl.Fix = tokens.StateNeedsLogin, "run 'oauthbridge login helpdesk'"
	h.st.set(nl)
	h.e.Evaluate()
	h.waitEvent(t, "delivered", "webhook")
	p := <-r.got
	if !strings.HasPrefix(p.Text, "[FIRING] oauthbridge on bridge1: account helpdesk (helpdesk@contoso.com) needs a person to sign in") {
		t.Errorf("text = %q", p.Text)
	}
	if p.Version != "4" || p.Status != Firing || p.Receiver == "" || len(p.Alerts) != 1 {
		t.Fatalf("alertmanager fields: %+v", p)
	}
	am := p.Alerts[0]
	if am.Labels["alertname"] != "OauthbridgeAccountNeedsLogin" || am.Labels["account"] != "helpdesk" || am.Labels["severity"] != "critical" ||
		am.Annotations["fix"] != nl.Fix || am.Annotations["description"] != p.Message || am.StartsAt.IsZero() || am.Fingerprint != "needs_login/helpdesk" {
		t.Errorf("alertmanager alert: %+v", am)
	}
}

// fakeSender records messages; err, if set, fails them.
type fakeSender struct {
	mu   sync.Mutex
	sent []string
	from []string
}

func (f *fakeSender) Send(_ context.Context, acct *config.Account, from string, rcpts []string, msg []byte) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.sent = append(f.sent, string(msg))
	f.from = append(f.from, acct.Name+" "+from+" "+strings.Join(rcpts, ","))
	return nil
}

func TestEmailAndTheBrokenEmailAccount(t *testing.T) {
	r := newReceiver(t)
	cfg := loadConfig(t, "", fmt.Sprintf("webhook_url = %q\nemail_to = \"admin@contoso.com\"\nemail_account = \"scanner\"\ncheck_interval = \"1h\"", r.srv.URL))
	fs := &fakeSender{}
	h := newHarness(t, cfg, Options{Sender: fs})
	nl := ok("helpdesk", "helpdesk@contoso.com")
	nl.State = tokens.StateNeedsLogin
	h.st.set(nl)
	h.e.Evaluate()
	h.waitEvent(t, "delivered", "email")
	fs.mu.Lock()
	if len(fs.sent) != 1 || fs.from[0] != "scanner scanner@contoso.com admin@contoso.com" ||
		!strings.Contains(fs.sent[0], "Subject: [oauthbridge FIRING] helpdesk: needs login") || !strings.Contains(fs.sent[0], "oauthbridge login helpdesk") {
		t.Errorf("alert mail: %v %q", fs.from, fs.sent)
	}
	fs.mu.Unlock()

	// The sending account itself needs a login: webhook only, and said so.
	sc := ok("scanner", "scanner@contoso.com")
	sc.State = tokens.StateNeedsLogin
	h.st.set(sc)
	h.e.Evaluate()
	h.waitEvent(t, "skipped", "email")
	if !strings.Contains(h.logs.String(), "about email_account itself") {
		t.Error("not logged that the alert is about email_account itself")
	}
	for {
		p := r.next(t)
		if p.Account == "scanner" {
			break
		}
	}
}

// The observer hook sees the proxies' audited logins.
func TestLoginObserver(t *testing.T) {
	r := newReceiver(t)
	cfg := loadConfig(t, "", fmt.Sprintf("webhook_url = %q\nupstream_login_failures = 2\ncheck_interval = \"1h\"", r.srv.URL))
	h := newHarness(t, cfg, Options{})
	obs := &localauth.Observers{}
	stop := obs.Observe(h.e.LoginAttempt)
	defer stop()
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	for range 2 {
		localauth.Audit(log, nil, []audit.LoginObserver{obs}, localauth.Attempt{Proto: "pop3", Account: "helpdesk", Result: localauth.ResultUpstreamRejected, Err: errors.New("-ERR Authentication failure")})
	}
	// The second failure kicks an evaluation: no Evaluate call here.
	if p := r.next(t); p.Condition != UpstreamLoginFailures || p.Account != "helpdesk" {
		t.Fatal(p)
	}
}

// A restart neither announces a condition that is still present again nor
// forgets to announce one that cleared meanwhile.
func TestStateSurvivesRestart(t *testing.T) {
	r := newReceiver(t)
	cfg := loadConfig(t, "", fmt.Sprintf("webhook_url = %q\nupstream_login_failures = 1\nupstream_login_window = \"2h\"\ncheck_interval = \"1h\"", r.srv.URL))
	file := t.TempDir() + "/alerts.json"
	h := newHarness(t, cfg, Options{StateFile: file})
	nl := ok("helpdesk", "helpdesk@contoso.com")
	nl.State = tokens.StateNeedsLogin
	h.st.set(nl)
	sc := ok("scanner", "scanner@contoso.com")
	sc.LastError = "the token endpoint answered 503"
	h.st.set(sc)
	h.e.LoginAttempt(audit.LoginAttempt{Proto: "imap", Account: "helpdesk", Result: audit.ResultUpstreamRejected})
	// The failure reaches the threshold: it kicks the evaluation.
	if c := h.nextEvaluation(t); len(c) != 2 {
		t.Fatalf("before the restart: %+v, want needs_login and upstream_login_failures", c)
	}
	h.clk.Add(31 * time.Minute)
	if a := h.evalOne(t); a.Condition != RefreshFailing {
		t.Fatalf("before the restart: %+v, want refresh_failing", a)
	}
	h.e.Close()

	h2 := newHarness(t, cfg, Options{StateFile: file})
	h2.clk.Add(31 * time.Minute)
	h2.st.set(nl)
	h2.st.set(sc)
	h2.evalNone(t) // all three still present: nothing again
	h2.st.set(ok("helpdesk", "helpdesk@contoso.com"))
	a := h2.evalOne(t)
	if a.Condition != NeedsLogin || a.State != Resolved {
		t.Errorf("after the restart: %+v, want needs_login resolved", a)
	}
	h2.e.LoginAttempt(audit.LoginAttempt{Proto: "imap", Account: "helpdesk", Result: audit.ResultOK})
	// The working login kicks the evaluation.
	if c := h2.nextEvaluation(t); len(c) != 1 || c[0].Condition != UpstreamLoginFailures || c[0].State != Resolved {
		t.Errorf("after the restart: %+v, want upstream_login_failures resolved", c)
	}
}
