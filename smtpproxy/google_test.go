package smtpproxy

import (
	"bytes"
	"net"
	"path/filepath"
	"strings"
	"testing"

	"github.com/emersion/go-smtp"

	"github.com/oauthbridge/oauthbridge/config"
	"github.com/oauthbridge/oauthbridge/internal/fakems"
	"github.com/oauthbridge/oauthbridge/tokens/tokenstest"
)

func startGoogleFake(t *testing.T) (*fakems.Fake, string) {
	t.Helper()
	f, err := fakems.Start(fakems.Options{Google: true})
	if err != nil {
		t.Fatalf("fakems.Start() = %v", err)
	}
	t.Cleanup(func() { f.Close() })
	f.AddUser("helpdesk@contoso.com")
	f.AddUser("bob@contoso.com")
	ca := filepath.Join(t.TempDir(), "fake-ca.pem")
	if err := f.WriteCAFile(ca); err != nil {
		t.Fatal(err)
	}
	return f, ca
}

// asGoogle turns the harness's provider into a google one (its tenant
// line, which a google block refuses, stays in the parsed source only).
func asGoogle(cur func() *config.Config) func() *config.Config {
	cur().ProviderByName["ms"].Type = config.ProviderGoogle
	return cur
}

// Port 465 (smtp.gmail.com:465): TLS from the first byte, no STARTTLS.
func TestGoogleImplicitTLSSubmission(t *testing.T) {
	f, ca := startGoogleFake(t)
	addr, err := f.ServeSMTPS()
	if err != nil {
		t.Fatal(err)
	}
	_, port, _ := net.SplitHostPort(addr)
	implicitTLSPort = port
	t.Cleanup(func() { implicitTLSPort = ImplicitTLSPort })
	br := startBridge(t, addr, bridgeOpts{caFile: ca, wrapConfig: asGoogle,
		tokens: tokenstest.StaticSource{"helpdesk": f.IssueGoogleToken("helpdesk@contoso.com")}})
	c := loginClient(t, br.addr, "otrs")
	msg := []byte("Subject: over 465\r\n\r\nbody\r\n")
	if _, err := send(c, "helpdesk@contoso.com", []string{"bob@contoso.com"}, msg); err != nil {
		t.Fatalf("send() = %v", err)
	}
	if got := f.Messages("bob@contoso.com"); len(got) != 1 || !bytes.Equal(got[0], msg) {
		t.Fatalf("bob's INBOX = %q", got)
	}
}

// A bad token: Gmail's "334 <base64 JSON>" challenge is answered with an
// empty line, the 535 read, and the client told 454 (the message stays
// with it), never left hanging.
func TestGoogleErrorChallengeAnswered(t *testing.T) {
	f, ca := startGoogleFake(t)
	br := startBridge(t, f.SMTPAddr, bridgeOpts{caFile: ca, wrapConfig: asGoogle,
		tokens: tokenstest.StaticSource{"helpdesk": "ya29.revoked"}})
	c := loginClient(t, br.addr, "otrs")
	err := c.Mail("helpdesk@contoso.com", nil)
	if err == nil {
		err = c.Rcpt("bob@contoso.com", nil)
	}
	se := wantCode(t, "after a bad token", err, 454, smtp.EnhancedCode{4, 7, 0})
	if !strings.Contains(se.Message, "Google refused") {
		t.Errorf("reply %q", se.Message)
	}
	logs := br.logs.String()
	if !strings.Contains(logs, "Gmail rejected the access token") || !strings.Contains(logs, "535 5.7.8") {
		t.Errorf("log does not explain the rejection:\n%s", logs)
	}
	if len(f.Sent()) != 0 {
		t.Error("the fake accepted a message")
	}
}
