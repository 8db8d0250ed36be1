package smtpproxy

import (
	"fmt"

	"testing"

	"github.com/oauthbridge/oauthbridge/internal/fakems"
)

const autoAccount = `account "helpdesk" {
  provider = "ms"
  mailbox  = "helpdesk@contoso.com"
  send_via = "%s"
}`

// A reload that takes an account's send_via away from "auto" discards
// its switch to Graph, in the proxy as in the token manager: back on
// "auto", it starts on SMTP again, as status says.
func TestGraphFakeAutoSwitchDroppedByReload(t *testing.T) {
	const mailbox = "helpdesk@contoso.com"
	e := startGraphFake(t, fmt.Sprintf(autoAccount, "auto"))
	msg := []byte("From: helpdesk@contoso.com\r\nTo: bob@contoso.com\r\nSubject: x\r\n\r\nx\r\n")
	e.f.SetMailboxSMTPAuth(mailbox, fakems.SMTPAuthDisabled)
	if _, err := send(loginClient(t, e.addr, "otrs"), mailbox, []string{"bob@contoso.com"}, msg); err != nil {
		t.Fatalf("send() = %v", err)
	}
	if p, _, _, _, ok := e.m.SendPath("helpdesk"); !ok || p != "graph" {
		t.Fatalf("after the switch: SendPath = %q %v", p, ok)
	}

	e.reload(t, fmt.Sprintf(autoAccount, "smtp"))
	e.f.SetMailboxSMTPAuth(mailbox, fakems.SMTPAuthEnabled)
	if _, err := send(loginClient(t, e.addr, "otrs"), mailbox, []string{"bob@contoso.com"}, msg); err != nil {
		t.Fatalf("send(send_via = smtp) = %v", err)
	}
	if _, _, _, _, ok := e.m.SendPath("helpdesk"); ok {
		t.Error("send_via = smtp: the kept switch is still reported")
	}

	e.reload(t, fmt.Sprintf(autoAccount, "auto"))
	auths, sent := e.f.SMTPAuthAttempts(mailbox), e.f.GraphRequestCount(fakems.RouteSendMail, 202)
	if _, err := send(loginClient(t, e.addr, "otrs"), mailbox, []string{"bob@contoso.com"}, msg); err != nil {
		t.Fatalf("send(back to auto) = %v", err)
	}
	if n := e.f.SMTPAuthAttempts(mailbox); n != auths+1 {
		t.Errorf("back on auto: %d SMTP AUTH attempts, want 1 (the old switch is gone)", n-auths)
	}
	if n := e.f.GraphRequestCount(fakems.RouteSendMail, 202); n != sent {
		t.Errorf("back on auto: %d messages through Graph, want none", n-sent)
	}
	if st := e.m.Status()[0]; st.SendPath != "smtp" {
		t.Errorf("back on auto: status = %+v", st)
	}
}
