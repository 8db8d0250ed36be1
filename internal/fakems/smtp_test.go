package fakems

import (
	"errors"
	"net"
	"slices"
	"strings"
	"testing"

	"github.com/emersion/go-smtp"

	"github.com/oauthbridge/oauthbridge/tokens"
)

func dialSMTP(t *testing.T, f *Fake) *smtp.Client {
	t.Helper()
	c, err := smtp.DialStartTLS(f.SMTPAddr, f.ClientTLS())
	if err != nil {
		t.Fatalf("DialStartTLS() = %v", err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func wantSMTPError(t *testing.T, err error, code int, enh smtp.EnhancedCode, text string) {
	t.Helper()
	var se *smtp.SMTPError
	if !errors.As(err, &se) || se.Code != code || se.EnhancedCode != enh || (text != "" && se.Message != text) {
		t.Fatalf("error = %#v, want %d %v %q", err, code, enh, text)
	}
}

func TestSMTPSubmitAndDeliver(t *testing.T) {
	t.Parallel()
	f := newFake(t, Options{})
	c := dialSMTP(t, f)
	if !c.SupportsAuth("XOAUTH2") || c.SupportsAuth("PLAIN") {
		t.Errorf("AUTH mechanisms after STARTTLS wrong")
	}
	if size, ok := c.MaxMessageSize(); !ok || size != 157286400 {
		t.Errorf("SIZE = %d, %v; want 157286400", size, ok)
	}
	// MAIL before AUTH.
	wantSMTPError(t, c.Mail(alice, nil), 530, smtp.EnhancedCode{5, 7, 57}, "Client not authenticated to send mail.")
	if err := c.Auth(tokens.NewXOAUTH2Client(alice, f.IssueAccessToken(alice))); err != nil {
		t.Fatalf("Auth() = %v", err)
	}
	// Sender policy.
	wantSMTPError(t, c.Mail("ceo@contoso.com", nil), 550, smtp.EnhancedCode{5, 7, 60}, "SMTP; Client does not have permissions to send as this sender")
	if err := c.Mail(strings.ToUpper(alice), nil); err != nil {
		t.Fatalf("Mail(self) = %v", err)
	}
	if err := c.Rcpt(bob, nil); err != nil {
		t.Fatalf("Rcpt(bob) = %v", err)
	}
	wantSMTPError(t, c.Rcpt("reject-me@example.net", nil), 550, smtp.EnhancedCode{5, 1, 1}, "User unknown")
	if err := c.Rcpt("carol@example.net", nil); err != nil {
		t.Fatalf("Rcpt(external) = %v", err)
	}
	w, err := c.Data()
	if err != nil {
		t.Fatalf("Data() = %v", err)
	}
	body := "Subject: test\r\n\r\nline one\r\n.leading dot\r\n"
	if _, err := w.Write([]byte(body)); err != nil {
		t.Fatal(err)
	}
	resp, err := w.CloseWithResponse()
	if err != nil {
		t.Fatalf("DATA = %v", err)
	}
	if !strings.Contains(resp.StatusText, "OK <") || !strings.HasSuffix(resp.StatusText, "[Hostname=FAKE.prod.outlook.com]") {
		t.Errorf("DATA reply %q, want OK <id>", resp.StatusText)
	}
	sent := f.Sent()
	if len(sent) != 1 {
		t.Fatalf("Sent() = %d messages", len(sent))
	}
	if got := sent[0]; got.AuthUser != alice || got.From != strings.ToUpper(alice) || !slices.Equal(got.To, []string{bob, "carol@example.net"}) || string(got.Data) != body {
		t.Errorf("Sent()[0] = %+v", got)
	}
	if got := f.Messages(bob); len(got) != 1 || string(got[0]) != body {
		t.Errorf("bob's INBOX = %q", got)
	}
	if err := c.Quit(); err != nil {
		t.Errorf("QUIT = %v", err)
	}
}

func TestSMTPAuthRules(t *testing.T) {
	t.Parallel()
	f := newFake(t, Options{})
	f.AllowSendAs(shared, "noreply@contoso.com")
	imapOnly := deviceLogin(t, f, alice, scopeIMAP)["access_token"].(string)
	tests := []struct {
		name, user, token string
		ok                bool
	}{
		{"own", alice, f.IssueAccessToken(alice), true},
		{"delegate", shared, f.IssueAccessToken(bob), true},
		{"bad token", alice, "EwBbogus", false},
		{"no SMTP.Send scope", alice, imapOnly, false},
		{"other mailbox", bob, f.IssueAccessToken(alice), false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			c := dialSMTP(t, f)
			err := c.Auth(tokens.NewXOAUTH2Client(tc.user, tc.token))
			if !tc.ok {
				wantSMTPError(t, err, 535, smtp.EnhancedCode{5, 7, 3}, "Authentication unsuccessful [FAKE.prod.outlook.com]")
				return
			}
			if err != nil {
				t.Fatalf("Auth() = %v", err)
			}
		})
	}
	t.Run("send as", func(t *testing.T) {
		c := dialSMTP(t, f)
		if err := c.Auth(tokens.NewXOAUTH2Client(shared, f.IssueAccessToken(bob))); err != nil {
			t.Fatal(err)
		}
		if err := c.Mail("noreply@contoso.com", nil); err != nil {
			t.Errorf("Mail(AllowSendAs) = %v", err)
		}
		c.Reset()
		wantSMTPError(t, c.Mail(bob, nil), 550, smtp.EnhancedCode{5, 7, 60}, "")
	})
}

func TestSMTPConcurrentLimit(t *testing.T) {
	t.Parallel()
	f := newFake(t, Options{})
	var clients []*smtp.Client
	for i := range 3 {
		c := dialSMTP(t, f)
		if err := c.Auth(tokens.NewXOAUTH2Client(alice, f.IssueAccessToken(alice))); err != nil {
			t.Fatalf("Auth() #%d = %v", i+1, err)
		}
		clients = append(clients, c)
	}
	fourth := dialSMTP(t, f)
	wantSMTPError(t, fourth.Auth(tokens.NewXOAUTH2Client(alice, f.IssueAccessToken(alice))), 432, smtp.EnhancedCode{4, 3, 2}, "Concurrent connections limit exceeded.")
	// Another mailbox is not affected.
	other := dialSMTP(t, f)
	if err := other.Auth(tokens.NewXOAUTH2Client(bob, f.IssueAccessToken(bob))); err != nil {
		t.Errorf("Auth(bob) = %v", err)
	}
	// A slot frees when a connection ends.
	if err := clients[0].Quit(); err != nil {
		t.Fatal(err)
	}
	fifth := dialSMTP(t, f)
	if err := fifth.Auth(tokens.NewXOAUTH2Client(alice, f.IssueAccessToken(alice))); err != nil {
		t.Errorf("Auth() after a QUIT = %v", err)
	}
}

func TestSMTPDropInData(t *testing.T) {
	t.Parallel()
	f := newFake(t, Options{})
	f.SetSMTPDropInData(true)
	c := dialSMTP(t, f)
	if err := c.Auth(tokens.NewXOAUTH2Client(alice, f.IssueAccessToken(alice))); err != nil {
		t.Fatal(err)
	}
	if err := c.Mail(alice, nil); err != nil {
		t.Fatal(err)
	}
	if err := c.Rcpt(bob, nil); err != nil {
		t.Fatal(err)
	}
	w, err := c.Data()
	if err != nil {
		t.Fatal(err)
	}
	_, _ = w.Write([]byte("Subject: x\r\n\r\n" + strings.Repeat("data line\r\n", 1000)))
	err = w.Close()
	var se *smtp.SMTPError
	if err == nil || errors.As(err, &se) {
		t.Fatalf("DATA with drop fault = %v, want a connection error", err)
	}
	if n := len(f.Sent()); n != 0 {
		t.Errorf("Sent() = %d messages, want 0", n)
	}
	if n := len(f.Messages(bob)); n != 0 {
		t.Errorf("bob's INBOX = %d messages, want 0", n)
	}
	f.SetSMTPDropInData(false)
	c2 := dialSMTP(t, f)
	if err := c2.Auth(tokens.NewXOAUTH2Client(alice, f.IssueAccessToken(alice))); err != nil {
		t.Fatal(err)
	}
	if err := c2.SendMail(alice, []string{bob}, strings.NewReader("Subject: y\r\n\r\nok\r\n")); err != nil {
		t.Fatalf("SendMail() after reset = %v", err)
	}
	if n := len(f.Sent()); n != 1 {
		t.Errorf("Sent() = %d messages, want 1", n)
	}
}

// EHLO before STARTTLS offers no AUTH; after it, only XOAUTH2, in one or
// two steps (testdata transcript).
func TestSMTPTranscript(t *testing.T) {
	t.Parallel()
	f := newFake(t, Options{})
	conn, err := net.Dial("tcp", f.SMTPAddr)
	if err != nil {
		t.Fatal(err)
	}
	runTranscript(t, f, conn, "smtp_starttls.txt", map[string]string{
		"ALICE": tokens.XOAUTH2Base64(alice, f.IssueAccessToken(alice)),
		"BAD":   tokens.XOAUTH2Base64(alice, "EwBbogus"),
	})
}

func TestSMTPAuthDisabled(t *testing.T) {
	t.Parallel()
	f := newFake(t, Options{})
	auth := func(mb string) error {
		c := dialSMTP(t, f)
		return c.Auth(tokens.NewXOAUTH2Client(mb, f.IssueAccessToken(mb)))
	}
	tenantText := "Authentication unsuccessful, SmtpClientAuthentication is disabled for the Tenant. Visit https://aka.ms/smtp_auth_disabled for more information."
	mailboxText := "Authentication unsuccessful, SmtpClientAuthentication is disabled for the Mailbox. Visit https://aka.ms/smtp_auth_disabled for more information."

	f.SetTenantSMTPAuthDisabled(true)
	wantSMTPError(t, auth(alice), 535, smtp.EnhancedCode{5, 7, 139}, tenantText)
	// The mailbox setting wins over the tenant's.
	f.SetMailboxSMTPAuth(bob, SMTPAuthEnabled)
	if err := auth(bob); err != nil {
		t.Errorf("AUTH for an enabled mailbox in a disabled tenant = %v", err)
	}
	f.SetTenantSMTPAuthDisabled(false)
	f.SetMailboxSMTPAuth(alice, SMTPAuthDisabled)
	wantSMTPError(t, auth(alice), 535, smtp.EnhancedCode{5, 7, 139}, mailboxText)
	f.SetMailboxSMTPAuth(alice, SMTPAuthFollowTenant)
	if err := auth(alice); err != nil {
		t.Errorf("AUTH after re-enabling = %v", err)
	}
}

func TestSMTPDiscardSubmitted(t *testing.T) {
	t.Parallel()
	f := newFake(t, Options{DiscardSubmitted: true})
	c := dialSMTP(t, f)
	if err := c.Auth(tokens.NewXOAUTH2Client(alice, f.IssueAccessToken(alice))); err != nil {
		t.Fatalf("Auth() = %v", err)
	}
	body := "Subject: test\r\n\r\nline one\r\n.a line that starts with a dot\r\n"
	if err := c.SendMail(alice, []string{bob}, strings.NewReader(body)); err != nil {
		t.Fatalf("SendMail() = %v", err)
	}
	// Refusals still happen before anything is read.
	wantSMTPError(t, c.Mail("ceo@contoso.com", nil), 550, smtp.EnhancedCode{5, 7, 60}, "SMTP; Client does not have permissions to send as this sender")
	if n, b := f.Submitted(); n != 1 || b != int64(len(body)) {
		t.Errorf("Submitted() = %d, %d; want 1, %d", n, b, len(body))
	}
	if len(f.Sent()) != 0 || len(f.Messages(bob)) != 0 || len(f.Messages(alice)) != 0 {
		t.Errorf("a discarded message was kept: sent %d, bob %d", len(f.Sent()), len(f.Messages(bob)))
	}
}
