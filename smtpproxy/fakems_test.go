package smtpproxy

import (
	"bytes"
	"context"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/emersion/go-smtp"

	"github.com/oauthbridge/oauthbridge/internal/fakems"
	"github.com/oauthbridge/oauthbridge/tokens/tokenstest"
)

// End-to-end tests: go-smtp's client as the legacy system, the bridge, and
// the embedded fake Microsoft 365 as the upstream.

func startFake(t *testing.T) (*fakems.Fake, string) {
	t.Helper()
	f, err := fakems.Start(fakems.Options{})
	if err != nil {
		t.Fatalf("fakems.Start() = %v", err)
	}
	t.Cleanup(func() { f.Close() })
	for _, u := range []string{"helpdesk@contoso.com", "ceo@contoso.com", "bob@contoso.com"} {
		f.AddUser(u)
	}
	f.AllowSendAs("helpdesk@contoso.com", "noreply@contoso.com")
	ca := filepath.Join(t.TempDir(), "fake-ca.pem")
	if err := f.WriteCAFile(ca); err != nil {
		t.Fatalf("WriteCAFile() = %v", err)
	}
	return f, ca
}

func TestFakeMSEndToEnd(t *testing.T) {
	f, ca := startFake(t)
	br := startBridge(t, f.SMTPAddr, bridgeOpts{caFile: ca,
		tokens: tokenstest.StaticSource{"helpdesk": f.IssueAccessToken("helpdesk@contoso.com")}})
	c := loginClient(t, br.addr, "otrs")

	// Byte for byte, delivered into a mailbox of the fake.
	msg := trickyMessage()
	status, err := send(c, "helpdesk@contoso.com", []string{"bob@contoso.com"}, msg)
	if err != nil {
		t.Fatalf("send() = %v", err)
	}
	if !strings.Contains(status, "@FAKE.prod.outlook.com") {
		t.Errorf("DATA reply = %q, want the upstream's 250 text", status)
	}
	if got := f.Messages("bob@contoso.com"); len(got) != 1 || !bytes.Equal(got[0], msg) {
		t.Fatalf("bob's INBOX = %q, want the message byte for byte", got)
	}

	// More messages on the same session, one with a refused recipient.
	if _, err := send(c, "noreply@contoso.com", []string{"bob@contoso.com"}, []byte("Subject: 2\r\n\r\nx\r\n")); err != nil {
		t.Fatalf("send(2) = %v", err)
	}
	if err := c.Mail("helpdesk@contoso.com", nil); err != nil {
		t.Fatalf("Mail(3) = %v", err)
	}
	if err := c.Rcpt("bob@contoso.com", nil); err != nil {
		t.Fatalf("Rcpt(bob) = %v", err)
	}
	wantCode(t, "Rcpt(reject-)", c.Rcpt("reject-x@example.com", nil), 550, smtp.EnhancedCode{5, 1, 1})
	if err := c.Rcpt("carol@example.com", nil); err != nil {
		t.Fatalf("Rcpt(carol) = %v", err)
	}
	w, err := c.Data()
	if err != nil {
		t.Fatalf("Data() = %v", err)
	}
	w.Write([]byte("Subject: 3\r\n\r\nx\r\n"))
	if err := w.Close(); err != nil {
		t.Fatalf("Data.Close() = %v", err)
	}

	// Sender policy: refused locally, the fake sees nothing new.
	before := len(f.Sent())
	wantCode(t, "Mail(ceo)", c.Mail("ceo@contoso.com", nil), 550, smtp.EnhancedCode{5, 7, 1})
	// Allowed locally (send_as) but not by Exchange: its 550 arrives as 550.
	// MAIL goes up with the first RCPT (PIPELINING), so Exchange's refusal of
	// the sender is the reply to RCPT.
	if err := c.Mail("shared@contoso.com", nil); err != nil {
		t.Fatalf("Mail(shared) = %v", err)
	}
	se := wantCode(t, "Rcpt after Mail(shared)", c.Rcpt("x@example.com", nil), 550, smtp.EnhancedCode{5, 7, 60})
	if !strings.Contains(se.Message, "permissions to send as this sender") {
		t.Errorf("Rcpt text = %q", se.Message)
	}
	if err := c.Reset(); err != nil {
		t.Fatalf("RSET: %v", err)
	}
	if len(f.Sent()) != before {
		t.Errorf("refused senders reached the fake")
	}

	sent := f.Sent()
	if len(sent) != 3 {
		t.Fatalf("fake accepted %d messages, want 3", len(sent))
	}
	if got := strings.Join(sent[2].To, ","); got != "bob@contoso.com,carol@example.com" {
		t.Errorf("third message recipients = %s", got)
	}
	for _, m := range sent {
		if m.AuthUser != "helpdesk@contoso.com" {
			t.Errorf("submitted as %q, want helpdesk@contoso.com", m.AuthUser)
		}
	}
	if err := c.Quit(); err != nil {
		t.Errorf("Quit() = %v", err)
	}
}

func TestFakeMSDropInData(t *testing.T) {
	f, ca := startFake(t)
	br := startBridge(t, f.SMTPAddr, bridgeOpts{caFile: ca,
		tokens: tokenstest.StaticSource{"helpdesk": f.IssueAccessToken("helpdesk@contoso.com")}})
	c := loginClient(t, br.addr, "otrs")
	f.SetSMTPDropInData(true)
	_, err := send(c, "helpdesk@contoso.com", []string{"bob@contoso.com"}, bytes.Repeat([]byte("line of text\r\n"), 100000))
	var se *smtp.SMTPError
	if !asSMTPErr(err, &se) || se.Code/100 != 4 {
		t.Fatalf("send() with the upstream cut mid-DATA = %v, want 4xx", err)
	}
	if n := len(f.Sent()); n != 0 {
		t.Fatalf("fake delivered %d messages, want 0", n)
	}
	if n := len(f.Messages("bob@contoso.com")); n != 0 {
		t.Fatalf("bob got %d messages, want 0", n)
	}
	f.SetSMTPDropInData(false)
	if _, err := send(c, "helpdesk@contoso.com", []string{"bob@contoso.com"}, []byte("Subject: again\r\n\r\nx\r\n")); err != nil {
		t.Fatalf("retry = %v", err)
	}
}

func TestFakeMSIdleUpstreamDropped(t *testing.T) {
	f, ca := startFake(t)
	br := startBridge(t, f.SMTPAddr, bridgeOpts{caFile: ca,
		tokens: tokenstest.StaticSource{"helpdesk": f.IssueAccessToken("helpdesk@contoso.com")}})
	c := loginClient(t, br.addr, "otrs")
	if _, err := send(c, "helpdesk@contoso.com", []string{"bob@contoso.com"}, []byte("Subject: 1\r\n\r\nx\r\n")); err != nil {
		t.Fatalf("send(1) = %v", err)
	}
	f.DropConnections() // Exchange closing the idle upstream connection
	if _, err := send(c, "helpdesk@contoso.com", []string{"bob@contoso.com"}, []byte("Subject: 2\r\n\r\nx\r\n")); err != nil {
		t.Fatalf("send(2) after the fake dropped the idle upstream = %v", err)
	}
	if n := len(f.Sent()); n != 2 {
		t.Errorf("fake accepted %d, want 2", n)
	}
}

func TestFakeMSNeedsLogin(t *testing.T) {
	f, ca := startFake(t)
	// No token for the account: StaticSource answers NeedsLogin.
	br := startBridge(t, f.SMTPAddr, bridgeOpts{caFile: ca, tokens: tokenstest.StaticSource{}})
	c := loginClient(t, br.addr, "otrs")
	se := wantCode(t, "Mail()", c.Mail("helpdesk@contoso.com", nil), 454, smtp.EnhancedCode{4, 7, 0})
	if !strings.Contains(se.Message, "run 'oauthbridge login helpdesk'") {
		t.Errorf("Mail() text = %q, want it to name the command", se.Message)
	}
}

// swapSource serves an expired token first, then a fresh one after
// Rejected, like the real token manager.
type swapSource struct {
	mu       sync.Mutex
	cur, nxt string
	rejected int
}

func (s *swapSource) AccessToken(context.Context, string) (string, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.cur, nil
}

func (s *swapSource) Rejected(_, tok string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if tok == s.cur {
		s.cur = s.nxt
	}
	s.rejected++
}

func TestFakeMSExpiredTokenRefreshed(t *testing.T) {
	f, ca := startFake(t)
	old := f.IssueAccessToken("helpdesk@contoso.com")
	f.ExpireAccessToken(old)
	src := &swapSource{cur: old, nxt: f.IssueAccessToken("helpdesk@contoso.com")}
	br := startBridge(t, f.SMTPAddr, bridgeOpts{caFile: ca, tokens: src})
	c := loginClient(t, br.addr, "otrs")
	if _, err := send(c, "helpdesk@contoso.com", []string{"bob@contoso.com"}, []byte("Subject: x\r\n\r\nx\r\n")); err != nil {
		t.Fatalf("send() = %v", err)
	}
	src.mu.Lock()
	defer src.mu.Unlock()
	if src.rejected != 1 {
		t.Errorf("Rejected called %d times, want 1", src.rejected)
	}
}

func TestFakeMSConnectionLimits(t *testing.T) {
	t.Run("bridge limit", func(t *testing.T) {
		f, ca := startFake(t)
		tok := f.IssueAccessToken("helpdesk@contoso.com")
		// Default smtp_max_connections = 3, like Exchange: the 4th waits
		// connection_wait and gets a 4xx from the bridge.
		br := startBridge(t, f.SMTPAddr, bridgeOpts{caFile: ca, tokens: tokenstest.StaticSource{"helpdesk": tok}})
		for i := 0; i < 3; i++ {
			c := loginClient(t, br.addr, "otrs")
			if err := c.Mail("helpdesk@contoso.com", nil); err != nil {
				t.Fatalf("Mail(%d) = %v", i, err)
			}
			defer c.Quit()
		}
		c := loginClient(t, br.addr, "otrs")
		wantCode(t, "Mail(4th)", c.Mail("helpdesk@contoso.com", nil), 451, smtp.EnhancedCode{4, 3, 2})
	})
	t.Run("exchange limit", func(t *testing.T) {
		f, ca := startFake(t)
		tok := f.IssueAccessToken("helpdesk@contoso.com")
		// A bridge allowing more than Exchange does relays Exchange's 432.
		br := startBridge(t, f.SMTPAddr, bridgeOpts{caFile: ca, accountExtra: `smtp_max_connections = 5`, tokens: tokenstest.StaticSource{"helpdesk": tok}})
		for i := 0; i < 3; i++ {
			c := loginClient(t, br.addr, "otrs")
			if err := c.Mail("helpdesk@contoso.com", nil); err != nil {
				t.Fatalf("Mail(%d) = %v", i, err)
			}
			defer c.Quit()
		}
		c := loginClient(t, br.addr, "otrs")
		wantCode(t, "Mail(4th)", c.Mail("helpdesk@contoso.com", nil), 432, smtp.EnhancedCode{4, 3, 2})
	})
}

func asSMTPErr(err error, se **smtp.SMTPError) bool {
	e, ok := asSMTP(err)
	*se = e
	return ok
}
