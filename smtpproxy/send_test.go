package smtpproxy

import (
	"context"
	"strings"
	"sync"
	"testing"

	"github.com/oauthbridge/oauthbridge/audit"
	"github.com/oauthbridge/oauthbridge/internal/fakems"
)

// Send: the bridge's own mail (alerts) takes the account's upstream path,
// reports the upstream login to the observers, and returns nil only when
// Microsoft 365 accepted the message.
func TestSendForTheBridge(t *testing.T) {
	e := startGraphFake(t, `account "helpdesk" {
  provider = "ms"
  mailbox  = "helpdesk@contoso.com"
  send_via = "auto"
}`)
	var mu sync.Mutex
	var seen []audit.LoginAttempt
	stop := e.logins.Observe(func(a audit.LoginAttempt) {
		mu.Lock()
		defer mu.Unlock()
		if a.Account == "helpdesk" {
			seen = append(seen, a)
		}
	})
	defer stop()
	acct := e.cfg.AccountByName["helpdesk"]
	msg := []byte("From: helpdesk@contoso.com\r\nTo: bob@contoso.com\r\nSubject: alert one\r\n\r\nbody\r\n")
	ctx := context.Background()
	if err := e.srv.Send(ctx, acct, "helpdesk@contoso.com", []string{"bob@contoso.com"}, msg); err != nil {
		t.Fatalf("Send over SMTP: %v", err)
	}
	mu.Lock()
	if len(seen) != 1 || seen[0].Result != audit.ResultOK || seen[0].Proto != "smtp" || !seen[0].Upstream {
		t.Errorf("observed upstream logins: %+v", seen)
	}
	mu.Unlock()
	// SMTP AUTH disabled: the same call goes through Graph.
	e.f.SetMailboxSMTPAuth("helpdesk@contoso.com", fakems.SMTPAuthDisabled)
	msg2 := []byte(strings.Replace(string(msg), "alert one", "alert two", 1))
	if err := e.srv.Send(ctx, acct, "helpdesk@contoso.com", []string{"bob@contoso.com"}, msg2); err != nil {
		t.Fatalf("Send through Graph: %v", err)
	}
	got := e.f.Messages("bob@contoso.com")
	if len(got) != 2 || !strings.Contains(string(got[0]), "alert one") || !strings.Contains(string(got[1]), "alert two") || e.f.GraphRequestCount(fakems.RouteSendMail, 202) != 1 {
		t.Fatalf("bob got %d messages, Graph requests %v", len(got), e.f.GraphRequests())
	}
	// A sender the account may not use: an error, nothing sent.
	if err := e.srv.Send(ctx, acct, "ceo@contoso.com", []string{"bob@contoso.com"}, msg); err == nil || !strings.Contains(err.Error(), "MAIL FROM") {
		t.Errorf("Send with a foreign sender = %v, want a MAIL FROM error", err)
	}
	if n := len(e.f.Messages("bob@contoso.com")); n != 2 {
		t.Errorf("bob has %d messages after a refused send", n)
	}
}
