package daemon

import (
	"context"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/oauthbridge/oauthbridge/config"
	"github.com/oauthbridge/oauthbridge/internal/alerts"
	"github.com/oauthbridge/oauthbridge/internal/fakems"
	"github.com/oauthbridge/oauthbridge/tokens"
)

// setAutoRecheck rewrites the alert configuration's auto_smtp_recheck.
func (e *env) setAutoRecheck(t *testing.T, v string) {
	t.Helper()
	src, err := os.ReadFile(e.cfgPath)
	if err != nil {
		t.Fatal(err)
	}
	i := strings.Index(string(src), "auto_smtp_recheck = ")
	if i < 0 {
		t.Fatal("no auto_smtp_recheck in the configuration")
	}
	j := i + strings.Index(string(src[i:]), "\n")
	out := string(src[:i]) + fmt.Sprintf("auto_smtp_recheck = %q", v) + string(src[j:])
	if err := os.WriteFile(e.cfgPath, []byte(out), 0o600); err != nil {
		t.Fatal(err)
	}
}

func statusOf(t *testing.T, d *Daemon, account string) tokens.AccountStatus {
	t.Helper()
	for _, st := range d.Tokens().Status() {
		if st.Account == account {
			return st
		}
	}
	t.Fatalf("no status of %s", account)
	return tokens.AccountStatus{}
}

// A send_via = "auto" account switched to Microsoft Graph stays switched
// across restarts: status shows it with the original since, the first
// message after the restart goes through Graph without an SMTP AUTH
// attempt, the graph_fallback alert is not announced resolved at the
// start (nor fired again), and after the recheck time SMTP is tried again;
// the way back to SMTP is kept too.
func TestAutoSendPathSurvivesRestart(t *testing.T) {
	const mailbox = "helpdesk@contoso.com"
	r := newHookReceiver(t, false)
	e := newEnv(t)
	e.f.AddUser("bob@contoso.com")
	e.f.AddUser("admin@contoso.com")
	e.f.AddMailbox("archive@contoso.com")
	e.f.GrantSendAs(mailbox, "alice@contoso.com") // the Graph path needs Send As
	e.writeAlertConfig(t, "2099-01-01", fmt.Sprintf(alertBlock, r.srv.URL))
	e.setAutoRecheck(t, "1h")
	ae := &alertEnv{env: e, clk: &fakeClock{t: time.Date(2026, 11, 26, 3, 0, 0, 0, time.UTC)}}
	start := func(signIn bool) {
		t.Helper()
		cfg, err := config.Load(e.cfgPath)
		if err != nil {
			t.Fatal(err)
		}
		d := ae.newDaemon(t, cfg)
		if signIn {
			ae.signIn(t, "helpdesk", "alice@contoso.com")
			ae.signIn(t, "archive", "bob@contoso.com")
		}
		if err := d.Start(context.Background()); err != nil {
			t.Fatal(err)
		}
		if got := ae.startEvaluation(t); len(got) != 0 {
			t.Fatalf("the evaluation at the start announced %+v, want nothing", got)
		}
	}
	stop := func() {
		t.Helper()
		if err := ae.d.Shutdown(context.Background()); err != nil {
			t.Fatal(err)
		}
	}
	t.Cleanup(func() { ae.d.Shutdown(context.Background()) })

	// The first run: SMTP AUTH is disabled; the first message switches.
	start(true)
	e.f.SetMailboxSMTPAuth(mailbox, fakems.SMTPAuthDisabled)
	if err := sendMail(t, ae.d.Addr("smtp")); err != nil {
		t.Fatalf("send with SMTP AUTH disabled: %v", err)
	}
	if n := e.f.SMTPAuthAttempts(mailbox); n == 0 {
		t.Fatal("the switch made no SMTP AUTH attempt")
	}
	ae.evalExpect(t, alerts.GraphFallback, alerts.Firing, "helpdesk")
	r.next(t, alerts.GraphFallback, alerts.Firing)
	ae.waitEvent(t, "delivered", "email", alerts.GraphFallback, alerts.Firing)
	before := statusOf(t, ae.d, "helpdesk")
	if before.SendPath != "graph" || before.SendPathSince.IsZero() || !strings.Contains(before.SendPathReason, "5.7.139") {
		t.Fatalf("status before the restart: %+v", before)
	}
	stop()

	// The restart: status shows the kept switch at once, the alert stays
	// firing (start() checked that nothing was announced), and the first
	// message goes through Graph with no SMTP AUTH attempt.
	ae.clk.Add(10 * time.Minute)
	start(false)
	st := statusOf(t, ae.d, "helpdesk")
	if st.SendPath != "graph" || !st.SendPathSince.Equal(before.SendPathSince) || st.SendPathReason != before.SendPathReason {
		t.Fatalf("status after the restart: path %q since %v reason %q, want graph since %v reason %q",
			st.SendPath, st.SendPathSince, st.SendPathReason, before.SendPathSince, before.SendPathReason)
	}
	auths, sent := e.f.SMTPAuthAttempts(mailbox), e.f.GraphRequestCount(fakems.RouteSendMail, 202)
	if err := sendMail(t, ae.d.Addr("smtp")); err != nil {
		t.Fatalf("send after the restart: %v", err)
	}
	if n := e.f.SMTPAuthAttempts(mailbox); n != auths {
		t.Errorf("the first message after the restart made %d SMTP AUTH attempts, want none (straight to Graph)", n-auths)
	}
	if n := e.f.GraphRequestCount(fakems.RouteSendMail, 202); n != sent+1 {
		t.Errorf("Graph sendMail requests went from %d to %d, want one more", sent, n)
	}
	ae.evalNothing(t)
	if st := statusOf(t, ae.d, "helpdesk"); !st.SendPathSince.Equal(before.SendPathSince) {
		t.Errorf("since changed to %v by a message on the kept path", st.SendPathSince)
	}
	stop()

	// SMTP AUTH enabled again, and a recheck due (auto_smtp_recheck
	// shortened to 1ms): after the next restart the first message tries
	// SMTP, which works; the switch back is kept.
	e.f.SetMailboxSMTPAuth(mailbox, fakems.SMTPAuthEnabled)
	e.setAutoRecheck(t, "1ms")
	start(false)
	if st := statusOf(t, ae.d, "helpdesk"); st.SendPath != "graph" {
		t.Fatalf("status after the second restart: %+v, want still graph", st)
	}
	auths = e.f.SMTPAuthAttempts(mailbox)
	if err := sendMail(t, ae.d.Addr("smtp")); err != nil {
		t.Fatalf("send after the recheck time: %v", err)
	}
	if n := e.f.SMTPAuthAttempts(mailbox); n != auths+1 {
		t.Errorf("after the recheck time: %d SMTP AUTH attempts, want 1", n-auths)
	}
	if st := statusOf(t, ae.d, "helpdesk"); st.SendPath != "smtp" {
		t.Fatalf("status after SMTP worked again: %+v", st)
	}
	ae.evalExpect(t, alerts.GraphFallback, alerts.Resolved, "helpdesk")
	r.next(t, alerts.GraphFallback, alerts.Resolved)
	stop()

	start(false)
	if st := statusOf(t, ae.d, "helpdesk"); st.SendPath != "smtp" || st.SendPathReason != "SMTP AUTH works again" {
		t.Fatalf("status after the third restart: %+v, want the kept way back to smtp", st)
	}
	auths = e.f.SMTPAuthAttempts(mailbox)
	if err := sendMail(t, ae.d.Addr("smtp")); err != nil {
		t.Fatal(err)
	}
	if n := e.f.SMTPAuthAttempts(mailbox); n != auths+1 {
		t.Errorf("on SMTP: %d SMTP AUTH attempts, want 1", n-auths)
	}
}
