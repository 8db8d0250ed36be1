package smtpproxy

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/base64"
	"fmt"
	"io"
	"log/slog"
	"mime"
	"mime/multipart"
	"net"
	"net/mail"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapclient"
	"github.com/emersion/go-smtp"

	"github.com/oauthbridge/oauthbridge/audit"
	"github.com/oauthbridge/oauthbridge/config"
	"github.com/oauthbridge/oauthbridge/graph"
	"github.com/oauthbridge/oauthbridge/internal/fakems"
	"github.com/oauthbridge/oauthbridge/internal/limiter"
	"github.com/oauthbridge/oauthbridge/internal/localauth"
	"github.com/oauthbridge/oauthbridge/tokens"
	"github.com/oauthbridge/oauthbridge/tokens/tokenstest"
)

// End to end through the fake Microsoft 365: a real tokens.Manager signed
// in once by device code (one sign-in for Exchange and Graph), the bridge,
// the fake's Graph endpoint, and the fake's IMAP to read the result back.

const graphApp = "11111111-2222-3333-4444-555555555555"

type graphFake struct {
	f    *fakems.Fake
	m    *tokens.Manager
	cfg  *config.Config
	srv  *Server
	addr string
	logs *syncBuffer
	// logins: the server's LoginObservers
	logins *localauth.Observers
	// cur is the configuration the server and the token manager use;
	// reload replaces the account block (autokept_test.go).
	cur    atomic.Pointer[config.Config]
	reload func(t *testing.T, account string)
}

func startGraphFake(t *testing.T, account string) *graphFake {
	t.Helper()
	return startGraphFakeWith(t, account, nil)
}

// startGraphFakeWith is startGraphFake with a hook that configures the
// fake before anyone signs in.
func startGraphFakeWith(t *testing.T, account string, setup func(f *fakems.Fake)) *graphFake {
	t.Helper()
	f, err := fakems.Start(fakems.Options{})
	if err != nil {
		t.Fatalf("fakems.Start() = %v", err)
	}
	t.Cleanup(func() { f.Close() })
	f.AddApp(graphApp, "app-secret")
	for _, u := range []string{"helpdesk@contoso.com", "bob@contoso.com", "carol@contoso.com", "mallory@contoso.com", "alice@contoso.com", "noreply@contoso.com"} {
		f.AddUser(u)
	}
	f.AddMailbox("shared@contoso.com", "alice@contoso.com")
	f.GrantSendAs("shared@contoso.com", "alice@contoso.com")
	f.SetAppRoles(graphApp, fakems.RoleMailSend, fakems.RoleMailReadWrite)
	if setup != nil {
		setup(f)
	}
	ca := filepath.Join(t.TempDir(), "fake-ca.pem")
	if err := f.WriteCAFile(ca); err != nil {
		t.Fatal(err)
	}
	stateDir := t.TempDir()
	source := func(account string) string {
		return fmt.Sprintf(`
state_dir = %q
smtp {
  listen = ["127.0.0.1:0"]
  connection_wait = "2s"
  upstream_timeout = "10s"
}
provider "ms" {
  tenant        = "contoso.com"
  client_id     = %q
  client_secret = "app-secret"
  authority     = %q
  smtp_server   = %q
  graph_url     = %q
  ca_file       = %q
}
%s
user "otrs" {
  password_hash = %q
  account       = "helpdesk"
}
`, stateDir, graphApp, f.AuthorityURL, f.SMTPAddr, f.GraphURL(), ca, account, testHash())
	}
	src := source(account)
	cfg, err := config.Parse("e2e.hcl", []byte(src))
	if err != nil {
		t.Fatalf("config: %v", err)
	}
	logs := &syncBuffer{}
	var logw io.Writer = logs
	if testing.Verbose() {
		logw = io.MultiWriter(logs, os.Stderr)
	}
	log := slog.New(slog.NewTextHandler(logw, &slog.HandlerOptions{Level: slog.LevelDebug}))
	m, err := tokens.NewManager(cfg, tokens.Options{Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close() })
	if cfg.AccountByName["helpdesk"].Flow != config.FlowApp {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		dl, done, err := m.StartDeviceLogin(ctx, "helpdesk")
		if err != nil {
			t.Fatalf("StartDeviceLogin() = %v", err)
		}
		if err := f.ApproveDevice(dl.UserCode, cfg.AccountByName["helpdesk"].LoginHint()); err != nil {
			t.Fatal(err)
		}
		if err := <-done; err != nil {
			t.Fatalf("device login = %v", err)
		}
	}
	e := &graphFake{f: f, m: m, cfg: cfg, logs: logs, logins: &localauth.Observers{}}
	e.cur.Store(cfg)
	e.reload = func(t *testing.T, account string) {
		t.Helper()
		nc, err := config.Parse("e2e.hcl", []byte(source(account)))
		if err != nil {
			t.Fatalf("config: %v", err)
		}
		if err := m.Reload(nc); err != nil {
			t.Fatalf("Reload() = %v", err)
		}
		e.cur.Store(nc)
	}
	e.srv = New(Options{
		Config:         e.cur.Load,
		Auth:           localauth.New(cfg, localauth.Options{}),
		Tokens:         m,
		Limiter:        &limiter.Limiter{},
		Logger:         log,
		LoginObservers: []audit.LoginObserver{e.logins},
	})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	e.addr = ln.Addr().String()
	go e.srv.Serve(ln, false)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		e.srv.Shutdown(ctx)
		if t.Failed() {
			t.Logf("bridge log:\n%s", logs.String())
		}
	})
	return e
}

const helpdeskGraph = `account "helpdesk" {
  provider = "ms"
  mailbox  = "helpdesk@contoso.com"
  send_as  = ["noreply@contoso.com"]
  send_via = "graph"
}`

// imapMessages reads a mailbox's INBOX over the fake's IMAP server.
func imapMessages(t *testing.T, f *fakems.Fake, user string) [][]byte {
	t.Helper()
	conn, err := tls.Dial("tcp", f.IMAPAddr, f.ClientTLS())
	if err != nil {
		t.Fatal(err)
	}
	c := imapclient.New(conn, nil)
	defer c.Close()
	if err := c.Authenticate(tokens.NewXOAUTH2Client(user, f.IssueAccessToken(user))); err != nil {
		t.Fatalf("IMAP AUTHENTICATE as %s: %v", user, err)
	}
	sel, err := c.Select("INBOX", nil).Wait()
	if err != nil {
		t.Fatal(err)
	}
	if sel.NumMessages == 0 {
		return nil
	}
	var ss imap.SeqSet
	ss.AddRange(1, sel.NumMessages)
	msgs, err := c.Fetch(ss, &imap.FetchOptions{BodySection: []*imap.FetchItemBodySection{{Peek: true}}}).Collect()
	if err != nil {
		t.Fatal(err)
	}
	var out [][]byte
	for _, m := range msgs {
		for _, b := range m.BodySection {
			out = append(out, b.Bytes)
		}
	}
	return out
}

func TestGraphFakeSmallMessageReadBackOverIMAP(t *testing.T) {
	e := startGraphFake(t, helpdeskGraph)
	c := loginClient(t, e.addr, "otrs")
	msg := []byte("From: helpdesk@contoso.com\r\nTo: bob@contoso.com\r\nCc: mallory@contoso.com\r\nSubject: Ticket #42\r\n\r\nYour printer is fixed.\r\n")
	// carol is an envelope-only recipient (Bcc); mallory is in Cc but not in the envelope.
	if _, err := send(c, "helpdesk@contoso.com", []string{"bob@contoso.com", "carol@contoso.com"}, msg); err != nil {
		t.Fatalf("send() = %v", err)
	}
	for _, u := range []string{"bob@contoso.com", "carol@contoso.com"} {
		got := imapMessages(t, e.f, u)
		if len(got) != 1 || !bytes.Contains(got[0], []byte("Subject: Ticket #42")) || !bytes.Contains(got[0], []byte("Your printer is fixed.")) {
			t.Fatalf("%s INBOX over IMAP = %q", u, got)
		}
		if bytes.Contains(got[0], []byte("Bcc:")) || bytes.Contains(got[0], []byte("mallory")) {
			t.Errorf("%s got a Bcc header or the stripped recipient:\n%s", u, got[0])
		}
	}
	if got := imapMessages(t, e.f, "mallory@contoso.com"); len(got) != 0 {
		t.Errorf("mallory (not in the envelope) received %d messages", len(got))
	}
	if sent := e.f.FolderMessages("helpdesk@contoso.com", "Sent Items"); len(sent) != 1 {
		t.Errorf("Sent Items has %d messages", len(sent))
	}
	if n := e.f.GraphRequestCount(fakems.RouteSendMail, 202); n != 1 {
		t.Errorf("sendMail 202 = %d", n)
	}
	st := e.m.Status()[0]
	if st.SendPath != "graph" || st.GraphExpiry.IsZero() {
		t.Errorf("status = %+v", st)
	}
}

func TestGraphFakeBccOnly(t *testing.T) {
	e := startGraphFake(t, helpdeskGraph)
	c := loginClient(t, e.addr, "otrs")
	if _, err := send(c, "helpdesk@contoso.com", []string{"carol@contoso.com"}, []byte("From: helpdesk@contoso.com\r\nTo: undisclosed-recipients:;\r\nSubject: bcc\r\n\r\nx\r\n")); err != nil {
		t.Fatalf("send() = %v", err)
	}
	if got := e.f.Messages("carol@contoso.com"); len(got) != 1 || bytes.Contains(got[0], []byte("Bcc:")) {
		t.Fatalf("carol got %q", got)
	}
}

// paddedMessage is a single-part message of exactly n bytes.
func paddedMessage(n int) []byte {
	head := "From: helpdesk@contoso.com\r\nTo: bob@contoso.com\r\nSubject: boundary\r\n\r\n"
	line := strings.Repeat("x", 98) + "\r\n"
	var b strings.Builder
	b.WriteString(head)
	for b.Len()+len(line) <= n {
		b.WriteString(line)
	}
	for b.Len() < n-2 {
		b.WriteString("y")
	}
	b.WriteString("\r\n")
	return []byte(b.String())
}

func TestGraphFake3MBBoundary(t *testing.T) {
	e := startGraphFake(t, helpdeskGraph)
	c := loginClient(t, e.addr, "otrs")
	// At the limit: one sendMail of exactly 4 MB of base64.
	msg := paddedMessage(graph.MaxMIMEBytes)
	if _, err := send(c, "helpdesk@contoso.com", []string{"bob@contoso.com"}, msg); err != nil {
		t.Fatalf("send(%d bytes) = %v", len(msg), err)
	}
	if n := e.f.GraphRequestCount(fakems.RouteSendMail, 202); n != 1 {
		t.Errorf("sendMail 202 = %d, want 1 (%v)", n, e.f.GraphRequests())
	}
	if got := e.f.Messages("bob@contoso.com"); len(got) != 1 || !bytes.Contains(got[0], msg[len(msg)-200:]) {
		t.Fatalf("bob got %d messages", len(got))
	}
	// One byte more and single-part: cannot be split, 552 5.3.4.
	_, err := send(c, "helpdesk@contoso.com", []string{"bob@contoso.com"}, paddedMessage(graph.MaxMIMEBytes+1))
	wantCode(t, "send(limit+1, single part)", err, 552, smtp.EnhancedCode{5, 3, 4})
	// Just over the limit with an attachment: draft + upload.
	big, contents := bigMessage(t, "bob@contoso.com", 3_200_000)
	if _, err := send(c, "helpdesk@contoso.com", []string{"bob@contoso.com"}, big); err != nil {
		t.Fatalf("send(3.2 MB attachment) = %v", err)
	}
	if e.f.GraphRequestCount(fakems.RouteSendDraft, 202) != 1 || e.f.GraphRequestCount(fakems.RouteCreateUploadSession, 201) != 1 {
		t.Errorf("requests = %v", e.f.GraphRequests())
	}
	checkAttachments(t, e.f.Messages("bob@contoso.com")[1], contents)
}

// checkAttachments parses a delivered message and compares its file parts.
func checkAttachments(t *testing.T, raw []byte, contents [][]byte) {
	t.Helper()
	msg, err := mail.ReadMessage(bytes.NewReader(raw))
	if err != nil {
		t.Fatal(err)
	}
	_, params, _ := mime.ParseMediaType(msg.Header.Get("Content-Type"))
	got := map[string][]byte{}
	var walk func(r io.Reader, boundary string)
	walk = func(r io.Reader, boundary string) {
		mr := multipart.NewReader(r, boundary)
		for {
			p, err := mr.NextPart()
			if err == io.EOF {
				return
			}
			if err != nil {
				t.Fatalf("delivered MIME: %v", err)
			}
			mt, pp, _ := mime.ParseMediaType(p.Header.Get("Content-Type"))
			if strings.HasPrefix(mt, "multipart/") {
				walk(p, pp["boundary"])
				continue
			}
			if p.FileName() == "" {
				continue
			}
			var data []byte
			if strings.EqualFold(p.Header.Get("Content-Transfer-Encoding"), "base64") {
				data, err = io.ReadAll(base64.NewDecoder(base64.StdEncoding, p))
			} else {
				data, err = io.ReadAll(p)
			}
			if err != nil {
				t.Fatal(err)
			}
			got[p.FileName()] = data
		}
	}
	walk(msg.Body, params["boundary"])
	for i, want := range contents {
		name := fmt.Sprintf("file%d.bin", i+1)
		if !bytes.Equal(got[name], want) {
			t.Errorf("%s: %d bytes delivered, want %d identical (have %d files)", name, len(got[name]), len(want), len(got))
		}
	}
}

func TestGraphFake30MBWithAttachments(t *testing.T) {
	if testing.Short() {
		t.Skip("30 MB message")
	}
	e := startGraphFake(t, helpdeskGraph)
	c := loginClient(t, e.addr, "otrs")
	msg, contents := bigMessage(t, "bob@contoso.com", 10_000_000, 8_000_000, 1_000_000, 3_000_000)
	if len(msg) < 29_000_000 {
		t.Fatalf("test message is %d bytes", len(msg))
	}
	if _, err := send(c, "helpdesk@contoso.com", []string{"bob@contoso.com"}, msg); err != nil {
		t.Fatalf("send(%d bytes) = %v", len(msg), err)
	}
	got := e.f.Messages("bob@contoso.com")
	if len(got) != 1 {
		t.Fatalf("bob got %d messages", len(got))
	}
	checkAttachments(t, got[0], contents)
	if auth, ok := e.f.GraphLastAuthorization(fakems.RouteUploadChunk); !ok || auth != "" {
		t.Errorf("an upload PUT carried Authorization %q", auth)
	}
	if n := len(e.f.FolderMessages("helpdesk@contoso.com", "Drafts")); n != 0 {
		t.Errorf("%d drafts left", n)
	}
}

func TestGraphFakeSharedMailbox(t *testing.T) {
	e := startGraphFake(t, `account "helpdesk" {
  provider = "ms"
  mailbox  = "shared@contoso.com"
  delegate = "alice@contoso.com"
  send_via = "graph"
}`)
	c := loginClient(t, e.addr, "otrs")
	if _, err := send(c, "shared@contoso.com", []string{"bob@contoso.com"}, []byte("From: Support <shared@contoso.com>\r\nTo: bob@contoso.com\r\nSubject: from shared\r\n\r\nx\r\n")); err != nil {
		t.Fatalf("send() = %v", err)
	}
	gs := e.f.GraphSent()
	if len(gs) != 1 || gs[0].Mailbox != "shared@contoso.com" || !strings.EqualFold(gs[0].Principal, "alice@contoso.com") || gs[0].SentItems != "shared@contoso.com" {
		t.Fatalf("GraphSent = %+v", gs)
	}
	if len(e.f.Messages("bob@contoso.com")) != 1 {
		t.Error("bob got nothing")
	}
}

func TestGraphFakeSendAsRefused(t *testing.T) {
	e := startGraphFake(t, helpdeskGraph)
	c := loginClient(t, e.addr, "otrs")
	// noreply is allowed by the bridge's send_as, but the tenant gives
	// helpdesk no Send As right on it.
	_, err := send(c, "noreply@contoso.com", []string{"bob@contoso.com"}, []byte("From: noreply@contoso.com\r\nTo: bob@contoso.com\r\nSubject: x\r\n\r\nx\r\n"))
	wantCode(t, "send(From: noreply)", err, 550, smtp.EnhancedCode{5, 7, 60})
	if len(e.f.Messages("bob@contoso.com")) != 0 {
		t.Error("delivered")
	}
	if !strings.Contains(e.logs.String(), "Add-RecipientPermission") {
		t.Error("the log does not say how to grant Send As")
	}
}

func TestGraphFakeThrottling(t *testing.T) {
	e := startGraphFake(t, helpdeskGraph)
	c := loginClient(t, e.addr, "otrs")
	msg := []byte("From: helpdesk@contoso.com\r\nTo: bob@contoso.com\r\nSubject: t\r\n\r\nx\r\n")
	// A long Retry-After: the client is told 451 with the wait, and its retry works.
	e.f.SetGraphFault(fakems.GraphFault{Status: 429, RetryAfter: 600, Count: 1})
	_, err := send(c, "helpdesk@contoso.com", []string{"bob@contoso.com"}, msg)
	se := wantCode(t, "send(throttled)", err, 451, smtp.EnhancedCode{4, 7, 0})
	if !strings.Contains(se.Message, "600 seconds") {
		t.Errorf("reply %q lacks the Retry-After", se.Message)
	}
	if _, err := send(c, "helpdesk@contoso.com", []string{"bob@contoso.com"}, msg); err != nil {
		t.Fatalf("client retry = %v", err)
	}
	// A short one is waited out inside the bridge.
	e.f.SetGraphFault(fakems.GraphFault{Status: 503, Count: 1})
	if _, err := send(c, "helpdesk@contoso.com", []string{"bob@contoso.com"}, msg); err != nil {
		t.Fatalf("send(503 then ok) = %v", err)
	}
	if got := len(e.f.Messages("bob@contoso.com")); got != 2 {
		t.Errorf("bob got %d messages, want 2", got)
	}
}

func TestGraphFakeWrongResourceToken(t *testing.T) {
	e := startGraphFake(t, helpdeskGraph)
	// A Graph source that hands out an Exchange (Outlook) token.
	e.srv.opts.GraphTokens = tokenstest.StaticSource{"helpdesk": e.f.IssueAccessToken("helpdesk@contoso.com")}
	c := loginClient(t, e.addr, "otrs")
	_, err := send(c, "helpdesk@contoso.com", []string{"bob@contoso.com"}, []byte("To: bob@contoso.com\r\n\r\nx\r\n"))
	wantCode(t, "send(outlook token on Graph)", err, 454, smtp.EnhancedCode{4, 7, 0})
	if !strings.Contains(e.logs.String(), "Invalid audience") || len(e.f.Messages("bob@contoso.com")) != 0 {
		t.Errorf("log lacks Graph's answer, or delivered:\n%s", e.logs.String())
	}
}

func TestGraphFakeAutoFallback(t *testing.T) {
	e := startGraphFake(t, `account "helpdesk" {
  provider = "ms"
  mailbox  = "helpdesk@contoso.com"
  send_via = "auto"
}`)
	e.f.SetMailboxSMTPAuth("helpdesk@contoso.com", fakems.SMTPAuthDisabled)
	c := loginClient(t, e.addr, "otrs")
	if _, err := send(c, "helpdesk@contoso.com", []string{"bob@contoso.com"}, []byte("From: helpdesk@contoso.com\r\nTo: bob@contoso.com\r\nSubject: fallback\r\n\r\nx\r\n")); err != nil {
		t.Fatalf("send() = %v", err)
	}
	if got := e.f.Messages("bob@contoso.com"); len(got) != 1 || e.f.GraphRequestCount(fakems.RouteSendMail, 202) != 1 {
		t.Fatalf("bob got %d, requests %v", len(got), e.f.GraphRequests())
	}
	st := e.m.Status()[0]
	if st.SendVia != "auto" || st.SendPath != "graph" || !strings.Contains(st.SendPathReason, "5.7.139") {
		t.Errorf("status = %+v", st)
	}
}

func TestGraphFakeAppFlow(t *testing.T) {
	e := startGraphFake(t, `account "helpdesk" {
  provider = "ms"
  mailbox  = "helpdesk@contoso.com"
  flow     = "app"
  send_via = "graph"
}`)
	c := loginClient(t, e.addr, "otrs")
	if _, err := send(c, "helpdesk@contoso.com", []string{"bob@contoso.com"}, []byte("From: helpdesk@contoso.com\r\nTo: bob@contoso.com\r\nSubject: app\r\n\r\nx\r\n")); err != nil {
		t.Fatalf("send() = %v", err)
	}
	if gs := e.f.GraphSent(); len(gs) != 1 || gs[0].Principal != graphApp {
		t.Fatalf("GraphSent = %+v", gs)
	}
	// An application access policy that excludes the mailbox.
	e.f.SetAppAccessDenied(graphApp, "helpdesk@contoso.com", true)
	_, err := send(c, "helpdesk@contoso.com", []string{"bob@contoso.com"}, []byte("To: bob@contoso.com\r\n\r\nx\r\n"))
	wantCode(t, "send(access policy)", err, 550, smtp.EnhancedCode{5, 7, 1})
	if !strings.Contains(e.logs.String(), "New-ManagementRoleAssignment") {
		t.Error("the log does not give the fix")
	}
}

func TestGraphFakeMissingConsent(t *testing.T) {
	// The tenant's consent does not cover Mail.ReadWrite: the sign-in
	// works, Exchange works, the Graph token cannot be had.
	e := startGraphFakeWith(t, helpdeskGraph, func(f *fakems.Fake) {
		f.WithholdConsent(graphApp, fakems.ScopeGraphMailReadWrite)
	})
	c := loginClient(t, e.addr, "otrs")
	err := c.Mail("helpdesk@contoso.com", nil)
	wantCode(t, "Mail(no Graph consent)", err, 454, smtp.EnhancedCode{4, 7, 0})
	logs := e.logs.String()
	for _, want := range []string{"Mail.ReadWrite", "Microsoft Graph > Delegated permissions", "AADSTS65001"} {
		if !strings.Contains(logs, want) {
			t.Errorf("log lacks %q", want)
		}
	}
	if _, err := e.m.AccessToken(context.Background(), "helpdesk"); err != nil {
		t.Errorf("the Exchange token broke too: %v", err)
	}
	st := e.m.Status()[0]
	if st.State != tokens.StateOK || !strings.Contains(st.GraphError, "Mail.ReadWrite") || st.GraphFix == "" {
		t.Errorf("status = %+v", st)
	}
}

func TestGraphFakeConcurrencyStaysUnderGraphsLimit(t *testing.T) {
	e := startGraphFake(t, helpdeskGraph)
	const n = 8
	errs := make(chan error, n)
	for i := range n {
		c := loginClient(t, e.addr, "otrs")
		go func() {
			_, err := send(c, "helpdesk@contoso.com", []string{"bob@contoso.com"}, []byte(fmt.Sprintf("To: bob@contoso.com\r\nSubject: %d\r\n\r\nx\r\n", i)))
			errs <- err
		}()
	}
	for range n {
		if err := <-errs; err != nil {
			t.Errorf("send = %v", err)
		}
	}
	if got := len(e.f.Messages("bob@contoso.com")); got != n {
		t.Errorf("bob got %d messages, want %d", got, n)
	}
	if p := e.f.GraphPeakConcurrency("helpdesk@contoso.com"); p > 4 {
		t.Errorf("peak concurrent Graph requests for the mailbox = %d, Graph allows 4", p)
	}
	if n := e.f.GraphRequestCount(fakems.RouteSendMail, 429); n != 0 {
		t.Errorf("%d requests throttled for concurrency", n)
	}
}
