package smtpproxy

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"

	"github.com/oauthbridge/oauthbridge/tokens"
)

// trickyMessage exercises dot-stuffing, 8-bit bytes, a long line and CRLF.
func trickyMessage() []byte {
	var b bytes.Buffer
	b.WriteString("From: Helpdesk <helpdesk@contoso.com>\r\n")
	b.WriteString("To: alice@example.com\r\n")
	b.WriteString("Subject: =?utf-8?q?Gr=C3=BC=C3=9Fe?=\r\n")
	b.WriteString("Content-Type: text/plain; charset=utf-8\r\n")
	b.WriteString("Content-Transfer-Encoding: 8bit\r\n")
	b.WriteString("\r\n")
	b.WriteString(".leading dot\r\n")
	b.WriteString("..two leading dots\r\n")
	b.WriteString(".\r\n") // a lone dot must not end the message
	b.WriteString("8-bit: Grüße, café, \xe9\xff raw bytes\r\n")
	b.WriteString(strings.Repeat("x", 1900) + "\r\n") // long line, below go-smtp's 2000 default upstream
	b.WriteString("\r\n\r\n")
	b.WriteString("last line\r\n")
	return b.Bytes()
}

func TestRelayByteForByte(t *testing.T) {
	ms := startStubMS(t)
	br := startBridge(t, ms.addr, bridgeOpts{})
	br.tokens.set("helpdesk", ms.issue("helpdesk@contoso.com"))

	c := loginClient(t, br.addr, "otrs")
	msg := trickyMessage()
	status, err := send(c, "helpdesk@contoso.com", []string{"alice@example.com"}, msg)
	if err != nil {
		t.Fatalf("send() = %v", err)
	}
	if !strings.Contains(status, "QUEUE-1@FAKE.prod.outlook.com") {
		t.Errorf("DATA reply = %q, want the upstream's queue id relayed", status)
	}
	sent := ms.Sent()
	if len(sent) != 1 {
		t.Fatalf("upstream got %d messages, want 1", len(sent))
	}
	if !bytes.Equal(sent[0].Data, msg) {
		t.Errorf("upstream data differs:\n got %q\nwant %q", sent[0].Data, msg)
	}
	if sent[0].AuthUser != "helpdesk@contoso.com" || sent[0].From != "helpdesk@contoso.com" || len(sent[0].To) != 1 || sent[0].To[0] != "alice@example.com" {
		t.Errorf("upstream envelope = %+v", sent[0])
	}
	if err := c.Quit(); err != nil {
		t.Errorf("Quit() = %v", err)
	}
	for _, secret := range []string{testPassword, "tok-"} {
		if strings.Contains(br.logs.String(), secret) {
			t.Errorf("log contains a secret (%q)", secret)
		}
	}
}

func TestSeveralMessagesOneSession(t *testing.T) {
	ms := startStubMS(t)
	ms.allowSendAs("helpdesk@contoso.com", "noreply@contoso.com")
	br := startBridge(t, ms.addr, bridgeOpts{})
	br.tokens.set("helpdesk", ms.issue("helpdesk@contoso.com"))

	c := loginClient(t, br.addr, "otrs")
	froms := []string{"helpdesk@contoso.com", "NoReply@Contoso.com", "helpdesk@contoso.com"}
	for i, from := range froms {
		msg := []byte("Subject: " + strings.Repeat("m", i+1) + "\r\n\r\nbody\r\n")
		if _, err := send(c, from, []string{"bob@example.com"}, msg); err != nil {
			t.Fatalf("send(%d) = %v", i, err)
		}
	}
	// An aborted transaction in between: RSET must reach the upstream.
	if err := c.Mail("helpdesk@contoso.com", nil); err != nil {
		t.Fatalf("Mail() = %v", err)
	}
	if err := c.Reset(); err != nil {
		t.Fatalf("Reset() = %v", err)
	}
	if _, err := send(c, "helpdesk@contoso.com", []string{"carol@example.com"}, []byte("Subject: 4\r\n\r\nx\r\n")); err != nil {
		t.Fatalf("send(after RSET) = %v", err)
	}
	if got := len(ms.Sent()); got != 4 {
		t.Fatalf("upstream got %d messages, want 4", got)
	}
	if ok, _ := ms.counts(); ok != 1 {
		t.Errorf("upstream AUTHs = %d, want 1 (one upstream connection per session)", ok)
	}
}

func TestRecipientRefusedOthersDelivered(t *testing.T) {
	ms := startStubMS(t)
	br := startBridge(t, ms.addr, bridgeOpts{})
	br.tokens.set("helpdesk", ms.issue("helpdesk@contoso.com"))
	c := loginClient(t, br.addr, "otrs")

	if err := c.Mail("helpdesk@contoso.com", nil); err != nil {
		t.Fatalf("Mail() = %v", err)
	}
	if err := c.Rcpt("a@example.com", nil); err != nil {
		t.Fatalf("Rcpt(a) = %v", err)
	}
	se := wantCode(t, "Rcpt(reject-b)", c.Rcpt("reject-b@example.com", nil), 550, smtp.EnhancedCode{5, 1, 1})
	if se.Message != "User unknown" {
		t.Errorf("Rcpt(reject-b) text = %q, want the upstream's verbatim", se.Message)
	}
	if err := c.Rcpt("c@example.com", nil); err != nil {
		t.Fatalf("Rcpt(c) = %v", err)
	}
	w, err := c.Data()
	if err != nil {
		t.Fatalf("Data() = %v", err)
	}
	w.Write([]byte("Subject: x\r\n\r\nhi\r\n"))
	if err := w.Close(); err != nil {
		t.Fatalf("Data.Close() = %v", err)
	}
	sent := ms.Sent()
	if len(sent) != 1 || strings.Join(sent[0].To, ",") != "a@example.com,c@example.com" {
		t.Fatalf("upstream got %+v, want one message to a and c", sent)
	}
}

func TestSenderPolicy(t *testing.T) {
	ms := startStubMS(t)
	br := startBridge(t, ms.addr, bridgeOpts{})
	br.tokens.set("helpdesk", ms.issue("helpdesk@contoso.com"))
	c := loginClient(t, br.addr, "otrs")

	for _, from := range []string{"ceo@contoso.com", "", "helpdesk@contoso.com.evil.example"} {
		se := wantCode(t, "Mail("+from+")", c.Mail(from, nil), 550, smtp.EnhancedCode{5, 7, 1})
		want := "Sender address <" + from + "> not allowed for this login; allowed: helpdesk@contoso.com, noreply@contoso.com, shared@contoso.com"
		if se.Message != want {
			t.Errorf("Mail(%q) text = %q, want %q", from, se.Message, want)
		}
	}
	if ok, fail := ms.counts(); ok+fail != 0 {
		t.Errorf("upstream saw %d AUTHs; a refused sender must not reach it", ok+fail)
	}
	if len(ms.Sent()) != 0 {
		t.Errorf("upstream got messages")
	}
}

func TestUpstream550RelayedAs550(t *testing.T) {
	ms := startStubMS(t)
	br := startBridge(t, ms.addr, bridgeOpts{})
	br.tokens.set("helpdesk", ms.issue("helpdesk@contoso.com"))
	c := loginClient(t, br.addr, "otrs")

	// Allowed by the bridge's send_as but not by Exchange's Send As. The
	// stub offers PIPELINING, so MAIL goes up with the first RCPT and its
	// refusal is the reply to every RCPT of the transaction (as Postfix's
	// smtpd_delay_reject does), verbatim.
	if err := c.Mail("shared@contoso.com", nil); err != nil {
		t.Fatalf("Mail(shared) = %v, want it held until RCPT", err)
	}
	for _, to := range []string{"x@example.com", "y@example.com"} {
		se := wantCode(t, "Rcpt("+to+")", c.Rcpt(to, nil), 550, smtp.EnhancedCode{5, 7, 60})
		if se.Message != "SMTP; Client does not have permissions to send as this sender" {
			t.Errorf("Rcpt text = %q, want upstream's MAIL refusal verbatim", se.Message)
		}
	}
	if len(ms.Sent()) != 0 {
		t.Errorf("upstream got a message")
	}
	if err := c.Reset(); err != nil {
		t.Fatalf("RSET after the refusal: %v", err)
	}
	// The session is still usable.
	if _, err := send(c, "helpdesk@contoso.com", []string{"x@example.com"}, []byte("Subject: ok\r\n\r\n.\r\n")); err != nil {
		t.Fatalf("send() after 550 = %v", err)
	}
}

func TestUpstreamKilledMidDataNothingDelivered(t *testing.T) {
	ms := startStubMS(t)
	br := startBridge(t, ms.addr, bridgeOpts{})
	br.tokens.set("helpdesk", ms.issue("helpdesk@contoso.com"))
	c := loginClient(t, br.addr, "otrs")
	ms.set(func(s *stubMS) { s.dropInData = true })

	big := bytes.Repeat([]byte(strings.Repeat("y", 998)+"\r\n"), 2000) // ~2 MB
	_, err := send(c, "helpdesk@contoso.com", []string{"x@example.com"}, big)
	se := wantCode(t, "send()", err, 451, smtp.EnhancedCode{4, 4, 2})
	_ = se
	if n := len(ms.Sent()); n != 0 {
		t.Fatalf("upstream delivered %d messages, want 0", n)
	}
	// The next message goes through on a fresh upstream connection.
	ms.set(func(s *stubMS) { s.dropInData = false })
	if _, err := send(c, "helpdesk@contoso.com", []string{"x@example.com"}, []byte("Subject: retry\r\n\r\nx\r\n")); err != nil {
		t.Fatalf("send() after drop = %v", err)
	}
	if n := len(ms.Sent()); n != 1 {
		t.Fatalf("upstream delivered %d messages, want 1", n)
	}
}

func TestMessageTooLarge(t *testing.T) {
	ms := startStubMS(t)
	br := startBridge(t, ms.addr, bridgeOpts{smtpExtra: `max_message_bytes = 4096`})
	br.tokens.set("helpdesk", ms.issue("helpdesk@contoso.com"))
	c := loginClient(t, br.addr, "otrs")
	if ok, size := c.Extension("SIZE"); !ok || size != "4096" {
		t.Errorf("EHLO SIZE = %v %q, want 4096", ok, size)
	}
	_, err := send(c, "helpdesk@contoso.com", []string{"x@example.com"}, bytes.Repeat([]byte("0123456789abcde\r\n"), 1000))
	wantCode(t, "send(17 kB)", err, 552, smtp.EnhancedCode{5, 3, 4})
	if n := len(ms.Sent()); n != 0 {
		t.Fatalf("upstream delivered %d messages, want 0 (no truncated delivery)", n)
	}
}

// errorSource returns a fixed token error.
type errorSource struct{ err error }

func (e errorSource) AccessToken(context.Context, string) (string, error) { return "", e.err }
func (e errorSource) Rejected(string, string)                             {}

func TestTokenErrors(t *testing.T) {
	ms := startStubMS(t)
	cases := []struct {
		name string
		err  error
		code int
		ec   smtp.EnhancedCode
		text string
	}{
		{"needs_login", &tokens.Error{Account: "helpdesk", Kind: tokens.NeedsLogin, AADSTS: 70008, Reason: "refresh token expired"},
			454, smtp.EnhancedCode{4, 7, 0}, "mailbox needs re-authorisation: run 'oauthbridge login helpdesk'"},
		{"failing", &tokens.Error{Account: "helpdesk", Kind: tokens.Failing, AADSTS: 7000215, Reason: "invalid client secret"},
			454, smtp.EnhancedCode{4, 7, 0}, "bridge configuration problem, see the bridge log"},
		{"temporary", &tokens.Error{Account: "helpdesk", Kind: tokens.Temporary, Reason: "token endpoint returned 503"},
			451, smtp.EnhancedCode{4, 7, 0}, "try again later"},
		{"untyped", context.DeadlineExceeded, 451, smtp.EnhancedCode{4, 7, 0}, "try again later"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			br := startBridge(t, ms.addr, bridgeOpts{tokens: errorSource{tc.err}})
			c := loginClient(t, br.addr, "otrs")
			se := wantCode(t, "Mail()", c.Mail("helpdesk@contoso.com", nil), tc.code, tc.ec)
			if !strings.Contains(se.Message, tc.text) {
				t.Errorf("Mail() text = %q, want it to contain %q", se.Message, tc.text)
			}
			if tc.name == "needs_login" && !strings.Contains(br.logs.String(), "level=ERROR") {
				t.Errorf("needs_login not logged at error level:\n%s", br.logs.String())
			}
		})
	}
	if ok, fail := ms.counts(); ok+fail != 0 {
		t.Errorf("upstream saw %d AUTHs without a token", ok+fail)
	}
}

func TestUpstreamAuthRejectedRetriesWithFreshToken(t *testing.T) {
	ms := startStubMS(t)
	br := startBridge(t, ms.addr, bridgeOpts{})
	br.tokens.set("helpdesk", "revoked-early", ms.issue("helpdesk@contoso.com"))
	c := loginClient(t, br.addr, "otrs")
	if _, err := send(c, "helpdesk@contoso.com", []string{"x@example.com"}, []byte("Subject: x\r\n\r\nx\r\n")); err != nil {
		t.Fatalf("send() = %v", err)
	}
	if n := br.tokens.rejections(); n != 1 {
		t.Errorf("Tokens.Rejected called %d times, want 1", n)
	}
	if ok, fail := ms.counts(); ok != 1 || fail != 1 {
		t.Errorf("upstream AUTH ok=%d fail=%d, want 1/1", ok, fail)
	}
}

func TestUpstreamAuthPolicyErrors(t *testing.T) {
	cases := []struct {
		name    string
		reply   *smtp.SMTPError
		retries int
		logHint string
	}{
		{"smtp_auth_disabled", &smtp.SMTPError{Code: 535, EnhancedCode: smtp.EnhancedCode{5, 7, 139},
			Message: "Authentication unsuccessful, SmtpClientAuthentication is disabled for the Tenant. Visit https://aka.ms/smtp_auth_disabled for more information."},
			0, "Set-CASMailbox -Identity helpdesk@contoso.com -SmtpClientAuthenticationDisabled $false"},
		{"token_rejected", &smtp.SMTPError{Code: 535, EnhancedCode: smtp.EnhancedCode{5, 7, 3}, Message: "Authentication unsuccessful [FAKE]"},
			1, "SMTP.Send"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			ms := startStubMS(t)
			ms.set(func(s *stubMS) { s.authReply = tc.reply })
			br := startBridge(t, ms.addr, bridgeOpts{})
			br.tokens.set("helpdesk", ms.issue("helpdesk@contoso.com"))
			c := loginClient(t, br.addr, "otrs")
			wantCode(t, "Mail()", c.Mail("helpdesk@contoso.com", nil), 454, smtp.EnhancedCode{4, 7, 0})
			if n := br.tokens.rejections(); n != tc.retries {
				t.Errorf("Tokens.Rejected called %d times, want %d", n, tc.retries)
			}
			if _, fail := ms.counts(); fail != tc.retries+1 {
				t.Errorf("upstream AUTH attempts = %d, want %d", fail, tc.retries+1)
			}
			if logs := br.logs.String(); !strings.Contains(logs, tc.logHint) || !strings.Contains(logs, "level=ERROR") {
				t.Errorf("log does not explain the fix (%q):\n%s", tc.logHint, logs)
			}
		})
	}
}

func TestUpstreamUnreachable(t *testing.T) {
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	dead := ln.Addr().String()
	ln.Close()
	br := startBridge(t, dead, bridgeOpts{})
	br.tokens.set("helpdesk", "tok")
	c := loginClient(t, br.addr, "otrs")
	wantCode(t, "Mail()", c.Mail("helpdesk@contoso.com", nil), 451, smtp.EnhancedCode{4, 4, 1})
}

func TestUpstreamUntrustedCertificate(t *testing.T) {
	ms := startStubMS(t)
	// A second, unrelated PKI: its CA did not sign the stub's certificate.
	other, err := makePKI()
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(filepath.Dir(other.caFile))
	br := startBridge(t, ms.addr, bridgeOpts{caFile: other.caFile})
	br.tokens.set("helpdesk", ms.issue("helpdesk@contoso.com"))
	c := loginClient(t, br.addr, "otrs")
	wantCode(t, "Mail()", c.Mail("helpdesk@contoso.com", nil), 451, smtp.EnhancedCode{4, 4, 1})
	if ok, fail := ms.counts(); ok+fail != 0 {
		t.Errorf("token sent to an unverified server (%d AUTHs)", ok+fail)
	}
}

func TestIdleUpstreamRedial(t *testing.T) {
	// With PIPELINING the dead connection shows at the first RCPT (MAIL
	// goes up with it), without it at MAIL; either way it is re-dialled.
	for _, noPipe := range []bool{false, true} {
		t.Run(fmt.Sprintf("noPipelining=%v", noPipe), func(t *testing.T) {
			ms := startStubMS(t)
			br := startBridge(t, ms.addr, bridgeOpts{noPipelining: noPipe})
			br.tokens.set("helpdesk", ms.issue("helpdesk@contoso.com"))
			c := loginClient(t, br.addr, "otrs")
			if _, err := send(c, "helpdesk@contoso.com", []string{"x@example.com"}, []byte("Subject: 1\r\n\r\nx\r\n")); err != nil {
				t.Fatalf("send(1) = %v", err)
			}
			ms.dropConnections()
			if _, err := send(c, "helpdesk@contoso.com", []string{"x@example.com", "y@example.com"}, []byte("Subject: 2\r\n\r\nx\r\n")); err != nil {
				t.Fatalf("send(2) after the upstream dropped the idle connection = %v", err)
			}
			sent := ms.Sent()
			if len(sent) != 2 {
				t.Fatalf("upstream got %d messages, want 2", len(sent))
			}
			if got := strings.Join(sent[1].To, ","); got != "x@example.com,y@example.com" {
				t.Errorf("second message's recipients upstream = %q", got)
			}
			if !strings.Contains(br.logs.String(), "re-dialling") {
				t.Error("the re-dial was not logged")
			}
		})
	}
}

// Without PIPELINING upstream, MAIL goes up on its own and Exchange's
// refusal of the sender is the reply to MAIL.
func TestUpstream550AtMailWithoutPipelining(t *testing.T) {
	ms := startStubMS(t)
	br := startBridge(t, ms.addr, bridgeOpts{noPipelining: true})
	br.tokens.set("helpdesk", ms.issue("helpdesk@contoso.com"))
	c := loginClient(t, br.addr, "otrs")
	se := wantCode(t, "Mail(shared)", c.Mail("shared@contoso.com", nil), 550, smtp.EnhancedCode{5, 7, 60})
	if se.Message != "SMTP; Client does not have permissions to send as this sender" {
		t.Errorf("Mail text = %q, want upstream's verbatim", se.Message)
	}
	if _, err := send(c, "helpdesk@contoso.com", []string{"x@example.com"}, []byte("Subject: ok\r\n\r\nx\r\n")); err != nil {
		t.Fatalf("send() after 550 = %v", err)
	}
}

func TestConnectionLimit(t *testing.T) {
	ms := startStubMS(t)
	br := startBridge(t, ms.addr, bridgeOpts{accountExtra: `smtp_max_connections = 1`})
	br.tokens.set("helpdesk", ms.issue("helpdesk@contoso.com"))
	a := loginClient(t, br.addr, "otrs")
	if err := a.Mail("helpdesk@contoso.com", nil); err != nil {
		t.Fatalf("a.Mail() = %v", err)
	}
	b := loginClient(t, br.addr, "otrs")
	start := time.Now()
	wantCode(t, "b.Mail()", b.Mail("helpdesk@contoso.com", nil), 451, smtp.EnhancedCode{4, 3, 2})
	if d := time.Since(start); d < 150*time.Millisecond {
		t.Errorf("b.Mail() answered after %v, want it to wait connection_wait (200ms)", d)
	}
	// Once a is gone, its slot is free again.
	if err := a.Quit(); err != nil {
		t.Fatalf("a.Quit() = %v", err)
	}
	if _, err := send(b, "helpdesk@contoso.com", []string{"x@example.com"}, []byte("Subject: b\r\n\r\nx\r\n")); err != nil {
		t.Fatalf("b send() after a quit = %v", err)
	}
}

func TestMailBeforeAuth(t *testing.T) {
	ms := startStubMS(t)
	br := startBridge(t, ms.addr, bridgeOpts{})
	c := dialClient(t, br.addr)
	wantCode(t, "Mail()", c.Mail("helpdesk@contoso.com", nil), 530, smtp.EnhancedCode{5, 7, 0})
}

// loginNoIR is an AUTH LOGIN client that waits for the "Username:" prompt.
type loginNoIR struct{ user, pass string }

func (l *loginNoIR) Start() (string, []byte, error) { return "LOGIN", nil, nil }
func (l *loginNoIR) Next(ch []byte) ([]byte, error) {
	switch string(ch) {
	case "Username:":
		return []byte(l.user), nil
	case "Password:":
		return []byte(l.pass), nil
	}
	return nil, errors.New("unexpected challenge " + string(ch))
}

func TestAuthMechanisms(t *testing.T) {
	ms := startStubMS(t)
	br := startBridge(t, ms.addr, bridgeOpts{})
	br.tokens.set("helpdesk", ms.issue("helpdesk@contoso.com"))
	ok := []struct {
		name   string
		client sasl.Client
	}{
		{"PLAIN", sasl.NewPlainClient("", "otrs", testPassword)},
		{"PLAIN authzid=user", sasl.NewPlainClient("otrs", "otrs", testPassword)},
		{"LOGIN with IR", sasl.NewLoginClient("otrs", testPassword)},
		{"LOGIN without IR", &loginNoIR{"otrs", testPassword}},
	}
	for _, tc := range ok {
		t.Run(tc.name, func(t *testing.T) {
			c := dialClient(t, br.addr)
			if ok, mechs := c.Extension("AUTH"); !ok || mechs != "PLAIN LOGIN" {
				t.Errorf("EHLO AUTH = %v %q, want PLAIN LOGIN", ok, mechs)
			}
			if err := c.Auth(tc.client); err != nil {
				t.Fatalf("Auth() = %v", err)
			}
			if _, err := send(c, "helpdesk@contoso.com", []string{"x@example.com"}, []byte("Subject: "+tc.name+"\r\n\r\nx\r\n")); err != nil {
				t.Fatalf("send() = %v", err)
			}
		})
	}
	bad := []struct {
		name   string
		client sasl.Client
	}{
		{"PLAIN wrong password", sasl.NewPlainClient("", "otrs", "wrong")},
		{"PLAIN unknown user", sasl.NewPlainClient("", "nobody", testPassword)},
		{"PLAIN other authzid", sasl.NewPlainClient("boss", "otrs", testPassword)},
		{"LOGIN wrong password", &loginNoIR{"otrs", "wrong"}},
	}
	for _, tc := range bad {
		t.Run(tc.name, func(t *testing.T) {
			c := dialClient(t, br.addr)
			wantCode(t, "Auth()", c.Auth(tc.client), 535, smtp.EnhancedCode{5, 7, 8})
			wantCode(t, "Mail()", c.Mail("helpdesk@contoso.com", nil), 530, smtp.EnhancedCode{5, 7, 0})
		})
	}
	if logs := br.logs.String(); !strings.Contains(logs, "result=bad_credentials") || !strings.Contains(logs, "result=ok") {
		t.Errorf("audit lines missing:\n%s", logs)
	}
}

func TestPlaintextAuthRefusedOffLoopback(t *testing.T) {
	ms := startStubMS(t)
	remote := &net.TCPAddr{IP: net.IPv4(192, 0, 2, 7), Port: 40000}
	br := startBridge(t, ms.addr, bridgeOpts{remote: remote})
	br.tokens.set("helpdesk", ms.issue("helpdesk@contoso.com"))

	c := dialClient(t, br.addr)
	if ok, _ := c.Extension("AUTH"); ok {
		t.Errorf("EHLO advertises AUTH on a plaintext non-loopback connection")
	}
	wantCode(t, "Auth()", c.Auth(sasl.NewPlainClient("", "otrs", testPassword)), 538, smtp.EnhancedCode{5, 7, 11})

	// After STARTTLS the same login works.
	tc, err := smtp.DialStartTLS(br.addr, &tls.Config{RootCAs: getPKI(t).pool, ServerName: "127.0.0.1"})
	if err != nil {
		t.Fatalf("DialStartTLS() = %v", err)
	}
	defer tc.Close()
	if err := tc.Auth(sasl.NewPlainClient("", "otrs", testPassword)); err != nil {
		t.Fatalf("Auth() after STARTTLS = %v", err)
	}
	if _, err := send(tc, "helpdesk@contoso.com", []string{"x@example.com"}, []byte("Subject: tls\r\n\r\nx\r\n")); err != nil {
		t.Fatalf("send() = %v", err)
	}
}

func TestImplicitTLSListener(t *testing.T) {
	ms := startStubMS(t)
	br := startBridge(t, ms.addr, bridgeOpts{})
	br.tokens.set("helpdesk", ms.issue("helpdesk@contoso.com"))
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go br.srv.Serve(ln, true)
	c, err := smtp.DialTLS(ln.Addr().String(), &tls.Config{RootCAs: getPKI(t).pool})
	if err != nil {
		t.Fatalf("DialTLS() = %v", err)
	}
	defer c.Close()
	if ok, _ := c.Extension("STARTTLS"); ok {
		t.Errorf("STARTTLS advertised on an implicit-TLS connection")
	}
	if err := c.Auth(sasl.NewLoginClient("otrs", testPassword)); err != nil {
		t.Fatalf("Auth() = %v", err)
	}
	if _, err := send(c, "helpdesk@contoso.com", []string{"x@example.com"}, []byte("Subject: 465\r\n\r\nx\r\n")); err != nil {
		t.Fatalf("send() = %v", err)
	}
}

func TestMaxConnections(t *testing.T) {
	ms := startStubMS(t)
	br := startBridge(t, ms.addr, bridgeOpts{smtpExtra: `max_connections = 1`})
	a := dialClient(t, br.addr)
	_ = a
	waitFor(t, "one active session", func() bool { return br.srv.ActiveSessions() == 1 })
	c, err := net.Dial("tcp", br.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	buf := make([]byte, 128)
	n, _ := c.Read(buf)
	if !strings.HasPrefix(string(buf[:n]), "421 4.3.2") {
		t.Errorf("greeting over the limit = %q, want 421 4.3.2", buf[:n])
	}
}

func TestShutdownLetsDataFinish(t *testing.T) {
	ms := startStubMS(t)
	br := startBridge(t, ms.addr, bridgeOpts{})
	br.tokens.set("helpdesk", ms.issue("helpdesk@contoso.com"))

	idle := loginClient(t, br.addr, "otrs")
	busy := loginClient(t, br.addr, "otrs")
	if err := busy.Mail("helpdesk@contoso.com", nil); err != nil {
		t.Fatal(err)
	}
	if err := busy.Rcpt("x@example.com", nil); err != nil {
		t.Fatal(err)
	}
	w, err := busy.Data()
	if err != nil {
		t.Fatal(err)
	}
	w.Write([]byte("Subject: during shutdown\r\n\r\nfirst half\r\n"))

	shut := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		shut <- br.srv.Shutdown(ctx)
	}()
	// The idle session is told the bridge's 421 4.3.2 "shutting down" and closed.
	waitFor(t, "idle session closed", func() bool { return br.srv.ActiveSessions() == 1 })
	wantCode(t, "idle.Noop()", idle.Noop(), 421, smtp.EnhancedCode{4, 3, 2})

	w.Write([]byte("second half\r\n"))
	if err := w.Close(); err != nil {
		t.Fatalf("DATA during shutdown = %v, want 250", err)
	}
	if err := <-shut; err != nil {
		t.Errorf("Shutdown() = %v", err)
	}
	sent := ms.Sent()
	if len(sent) != 1 || !bytes.HasSuffix(sent[0].Data, []byte("first half\r\nsecond half\r\n")) {
		t.Fatalf("upstream got %+v", sent)
	}
	if err := <-br.done; !errors.Is(err, ErrServerClosed) || !errors.Is(err, net.ErrClosed) {
		t.Errorf("Serve() = %v, want ErrServerClosed (net.ErrClosed)", err)
	}
}

func TestShutdownTimeoutAbortsUnfinishedData(t *testing.T) {
	ms := startStubMS(t)
	br := startBridge(t, ms.addr, bridgeOpts{})
	br.tokens.set("helpdesk", ms.issue("helpdesk@contoso.com"))
	c := loginClient(t, br.addr, "otrs")
	c.Mail("helpdesk@contoso.com", nil)
	c.Rcpt("x@example.com", nil)
	w, err := c.Data()
	if err != nil {
		t.Fatal(err)
	}
	w.Write([]byte("Subject: never finished\r\n\r\npartial\r\n"))
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	if err := br.srv.Shutdown(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Shutdown() = %v, want DeadlineExceeded", err)
	}
	waitFor(t, "sessions closed", func() bool { return br.srv.ActiveSessions() == 0 })
	if n := len(ms.Sent()); n != 0 {
		t.Errorf("upstream delivered %d truncated messages", n)
	}
}
