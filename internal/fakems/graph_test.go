package fakems

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"testing"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"

	"github.com/oauthbridge/oauthbridge/tokens"
)

// graphDo sends one request to the fake's Graph endpoint and returns the
// status, the decoded JSON body (nil if none) and the headers.
func graphDo(t *testing.T, f *Fake, method, u, token, ctype string, body []byte) (int, map[string]any, http.Header) {
	t.Helper()
	if strings.HasPrefix(u, "/") {
		u = f.GraphURL() + u
	}
	req, err := http.NewRequest(method, u, bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	if ctype != "" {
		req.Header.Set("Content-Type", ctype)
	}
	resp, err := f.GraphHTTPClient().Do(req)
	if err != nil {
		t.Fatalf("%s %s = %v", method, u, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	var m map[string]any
	if len(b) > 0 {
		if err := json.Unmarshal(b, &m); err != nil {
			t.Fatalf("%s %s: %d, body not JSON: %q", method, u, resp.StatusCode, b)
		}
	}
	return resp.StatusCode, m, resp.Header
}

func b64(s string) []byte { return []byte(base64.StdEncoding.EncodeToString([]byte(s))) }

// sendMIME posts msg to /v1.0/{path}/sendMail in MIME mode.
func sendMIME(t *testing.T, f *Fake, path, token, msg string) (int, map[string]any) {
	t.Helper()
	st, body, _ := graphDo(t, f, "POST", "/v1.0/"+path+"/sendMail", token, "text/plain", b64(msg))
	return st, body
}

func wantGraphError(t *testing.T, st int, body map[string]any, wantStatus int, wantCode, wantMsg string) {
	t.Helper()
	e, _ := body["error"].(map[string]any)
	if st != wantStatus || e == nil || e["code"] != wantCode {
		t.Fatalf("answer = %d %v, want %d %s", st, body, wantStatus, wantCode)
	}
	if wantMsg != "" && e["message"] != wantMsg {
		t.Errorf("message = %q, want %q", e["message"], wantMsg)
	}
	if inner, _ := e["innerError"].(map[string]any); inner == nil || inner["request-id"] == "" {
		t.Errorf("innerError missing in %v", body)
	}
}

// imapFolder reads every message in mailbox/folder over the fake's IMAP.
func imapFolder(t *testing.T, f *Fake, mailbox, folder string) []string {
	t.Helper()
	c := dialIMAP(t, f)
	if err := c.Authenticate(tokens.NewXOAUTH2Client(mailbox, f.IssueAccessToken(mailbox))); err != nil {
		t.Fatalf("AUTHENTICATE = %v", err)
	}
	if _, err := c.Select(folder, nil).Wait(); err != nil {
		t.Fatalf("SELECT %q = %v", folder, err)
	}
	section := &imap.FetchItemBodySection{}
	msgs, err := c.Fetch(imap.SeqSet{imap.SeqRange{Start: 1, Stop: 0}}, &imap.FetchOptions{BodySection: []*imap.FetchItemBodySection{section}}).Collect()
	if err != nil {
		// An empty folder has no message 1.
		return nil
	}
	var out []string
	for _, m := range msgs {
		out = append(out, string(m.FindBodySection(section)))
	}
	return out
}

var _ sasl.Client = tokens.NewXOAUTH2Client("", "")

const graphMsg = "From: Alice <alice@contoso.com>\r\nTo: bob@contoso.com, ext@example.net\r\nBcc: helpdesk@contoso.com\r\nSubject: via graph\r\n\r\nHello over Graph.\r\n"

func TestGraphSendMailDelivers(t *testing.T) {
	t.Parallel()
	f := newFake(t, Options{})
	tok := f.IssueGraphToken(alice, ScopeGraphMailSend)
	st, body := sendMIME(t, f, "users/"+alice, tok, graphMsg)
	if st != http.StatusAccepted || body != nil {
		t.Fatalf("sendMail = %d %v, want 202 and no body", st, body)
	}
	// Header recipients that are mailboxes of the fake get a copy without
	// Bcc; the sender's Sent Items keeps it.
	for _, mb := range []string{bob, shared} {
		got := imapFolder(t, f, mb, "INBOX")
		if len(got) != 1 || !strings.Contains(got[0], "Hello over Graph.") || strings.Contains(got[0], "Bcc:") {
			t.Errorf("%s INBOX = %q", mb, got)
		}
	}
	sent := imapFolder(t, f, alice, "Sent Items")
	if len(sent) != 1 || !strings.Contains(sent[0], "Bcc: helpdesk@contoso.com") || !strings.Contains(sent[0], "Message-ID: <") {
		t.Errorf("alice Sent Items = %q", sent)
	}
	if got := f.FolderMessages(alice, "INBOX"); len(got) != 0 {
		t.Errorf("alice INBOX = %q, want empty", got)
	}
	gs := f.GraphSent()
	if len(gs) != 1 || gs[0].SentItems != alice || strings.Join(gs[0].Recipients, ",") != "bob@contoso.com,ext@example.net,helpdesk@contoso.com" ||
		strings.Join(gs[0].Delivered, ",") != "bob@contoso.com,helpdesk@contoso.com" || gs[0].Principal != alice {
		t.Errorf("GraphSent() = %+v", gs)
	}
	if n := f.GraphRequestCount(RouteSendMail, 202); n != 1 {
		t.Errorf("GraphRequestCount(sendMail, 202) = %d", n)
	}
	if a, ok := f.GraphLastAuthorization(RouteSendMail); !ok || a != "Bearer "+tok {
		t.Errorf("GraphLastAuthorization = %q %v", a, ok)
	}

	// /me/sendMail is the same mailbox.
	if st, body := sendMIME(t, f, "me", tok, graphMsg); st != http.StatusAccepted {
		t.Fatalf("/me/sendMail = %d %v", st, body)
	}
	if got := f.FolderMessages(alice, "Sent Items"); len(got) != 2 {
		t.Errorf("Sent Items after /me = %d messages", len(got))
	}
}

func TestGraphTokenChecks(t *testing.T) {
	t.Parallel()
	f := newFake(t, Options{})
	outlook := f.IssueAccessToken(alice)
	st, body := sendMIME(t, f, "users/"+alice, outlook, graphMsg)
	wantGraphError(t, st, body, 401, "InvalidAuthenticationToken", "Access token validation failure. Invalid audience.")

	st, body = sendMIME(t, f, "users/"+alice, "", graphMsg)
	wantGraphError(t, st, body, 401, "InvalidAuthenticationToken", "Access token is empty.")
	// The answer arrives even while a large body is still being sent.
	st, body, _ = graphDo(t, f, "POST", "/v1.0/users/"+alice+"/sendMail", outlook, "text/plain", bytes.Repeat([]byte("QUFB"), 3<<20))
	wantGraphError(t, st, body, 401, "InvalidAuthenticationToken", "Access token validation failure. Invalid audience.")
	st, body = sendMIME(t, f, "users/"+alice, "garbage", graphMsg)
	wantGraphError(t, st, body, 401, "InvalidAuthenticationToken", "")

	g := f.IssueGraphToken(alice, ScopeGraphMailSend)
	f.ExpireAccessToken(g)
	st, body = sendMIME(t, f, "users/"+alice, g, graphMsg)
	wantGraphError(t, st, body, 401, "InvalidAuthenticationToken", "Lifetime validation failed, the token is expired.")

	// A Graph token is refused by IMAP and SMTP.
	c := dialIMAP(t, f)
	err := c.Authenticate(tokens.NewXOAUTH2Client(alice, f.IssueGraphToken(alice)))
	wantIMAPError(t, err, imap.StatusResponseTypeNo, imapAuthFailed)
	sc := dialSMTP(t, f)
	wantSMTPError(t, sc.Auth(tokens.NewXOAUTH2Client(alice, f.IssueGraphToken(alice))), 535, smtp.EnhancedCode{5, 7, 3}, "")
	if res := f.checkBearer(scopePOP, alice, f.IssueGraphToken(alice)); res.tokenOK { // what the POP3 server asks
		t.Error("POP3 accepts a Graph token")
	}

	// A token without Mail.Send.
	rw := f.IssueGraphToken(alice, ScopeGraphMailReadWrite)
	st, body = sendMIME(t, f, "users/"+alice, rw, graphMsg)
	wantGraphError(t, st, body, 403, "ErrorAccessDenied", "Access is denied. Check credentials and try again.")

	// Unknown user.
	st, body = sendMIME(t, f, "users/nobody@contoso.com", f.IssueGraphToken(alice), graphMsg)
	wantGraphError(t, st, body, 404, "ErrorInvalidUser", "")
}

func TestGraphSendMailBadBodies(t *testing.T) {
	t.Parallel()
	f := newFake(t, Options{})
	tok := f.IssueGraphToken(alice, ScopeGraphMailSend)
	u := "/v1.0/users/" + alice + "/sendMail"

	st, body, _ := graphDo(t, f, "POST", u, tok, "text/plain", []byte("not base64 at all!"))
	wantGraphError(t, st, body, 400, "ErrorMimeContentInvalidBase64String", "Invalid base64 string for MIME content.")

	// Base64 with line breaks is fine (.NET ignores whitespace).
	enc := string(b64(graphMsg))
	wrapped := enc[:20] + "\r\n" + enc[20:]
	if st, body, _ := graphDo(t, f, "POST", u, tok, "text/plain", []byte(wrapped)); st != 202 {
		t.Errorf("wrapped base64 = %d %v", st, body)
	}

	st, body = sendMIME(t, f, "users/"+alice, tok, "Subject: nobody\r\n\r\nx\r\n")
	wantGraphError(t, st, body, 400, "ErrorInvalidRecipients", "")
	st, body = sendMIME(t, f, "users/"+alice, tok, "To: undisclosed-recipients:;\r\n\r\nx\r\n")
	wantGraphError(t, st, body, 400, "ErrorInvalidRecipients", "")

	// Bcc only, an empty group in To and a display name in a charset
	// net/mail does not know.
	bccOnly := "From: alice@contoso.com\r\nTo: undisclosed-recipients:;\r\nCc: =?windows-1252?q?J=F6rg?= <ext@example.net>\r\nBcc: bob@contoso.com\r\nSubject: bcc only\r\n\r\nx\r\n"
	if st, body := sendMIME(t, f, "me", tok, bccOnly); st != 202 {
		t.Fatalf("Bcc-only = %d %v", st, body)
	}
	if got := f.Messages(bob); len(got) != 2 || strings.Contains(string(got[1]), "Bcc") || !strings.Contains(string(got[1]), "Subject: bcc only") {
		t.Errorf("bob INBOX = %q", got)
	}

	// 4 MB of request body is the limit: one byte more is 413.
	big := bytes.Repeat([]byte("A"), GraphMaxRequestBytes+1)
	st, body, _ = graphDo(t, f, "POST", u, tok, "text/plain", big)
	wantGraphError(t, st, body, 413, "RequestEntityTooLarge", "")
	// Exactly 4 MB passes the size check (and then fails as MIME, which
	// shows it got that far).
	msg := "To: bob@contoso.com\r\nSubject: big\r\n\r\n"
	raw := msg + strings.Repeat("x", GraphMaxRequestBytes/4*3-len(msg))
	exact := b64(raw)
	if len(exact) != GraphMaxRequestBytes {
		t.Fatalf("test body is %d bytes, want %d", len(exact), GraphMaxRequestBytes)
	}
	if st, body, _ := graphDo(t, f, "POST", u, tok, "text/plain", exact); st != 202 {
		t.Errorf("4 MB body = %d %v, want 202", st, body)
	}

	st, body, _ = graphDo(t, f, "POST", u, tok, "application/xml", b64(graphMsg))
	wantGraphError(t, st, body, 400, "ErrorInvalidRequest", "")

	// Unknown segments answer 400 as Graph does.
	st, body, _ = graphDo(t, f, "POST", "/v1.0/users/"+alice+"/sendMial", tok, "text/plain", b64(graphMsg))
	wantGraphError(t, st, body, 400, "BadRequest", "Resource not found for the segment 'sendMial'.")
}

func TestGraphSendMailJSON(t *testing.T) {
	t.Parallel()
	f := newFake(t, Options{})
	tok := f.IssueGraphToken(alice, ScopeGraphMailSend)
	req := `{"message":{"subject":"json mode","body":{"contentType":"Text","content":"Hi Bob."},
	  "toRecipients":[{"emailAddress":{"address":"bob@contoso.com"}}]},"saveToSentItems":false}`
	st, body, _ := graphDo(t, f, "POST", "/v1.0/users/"+alice+"/sendMail", tok, "application/json", []byte(req))
	if st != 202 {
		t.Fatalf("JSON sendMail = %d %v", st, body)
	}
	got := f.Messages(bob)
	if len(got) != 1 || !strings.Contains(string(got[0]), "Subject: json mode") || !strings.Contains(string(got[0]), "From: <alice@contoso.com>") {
		t.Errorf("bob INBOX = %q", got)
	}
	if n := len(f.FolderMessages(alice, "Sent Items")); n != 0 {
		t.Errorf("saveToSentItems=false stored %d messages", n)
	}
	st, body, _ = graphDo(t, f, "POST", "/v1.0/users/"+alice+"/sendMail", tok, "application/json", []byte(`{"message":{"subject":"x","attachments":[{}],"toRecipients":[{"emailAddress":{"address":"bob@contoso.com"}}]}}`))
	wantGraphError(t, st, body, 400, "ErrorInvalidRequest", "")
}

func TestGraphSharedMailbox(t *testing.T) {
	t.Parallel()
	f := newFake(t, Options{}) // bob has FullAccess on helpdesk
	msg := "From: helpdesk@contoso.com\r\nTo: alice@contoso.com\r\nSubject: from the desk\r\n\r\nticket\r\n"
	sendShared := f.IssueGraphToken(bob, ScopeGraphMailSend, ScopeGraphMailSendShared)

	// No Send As yet.
	st, body := sendMIME(t, f, "users/"+shared, sendShared, msg)
	wantGraphError(t, st, body, 403, "ErrorSendAsDenied", "")
	// Mail.Send alone is not enough for another mailbox.
	f.GrantSendAs(shared, bob)
	st, body = sendMIME(t, f, "users/"+shared, f.IssueGraphToken(bob, ScopeGraphMailSend), msg)
	wantGraphError(t, st, body, 403, "ErrorAccessDenied", "")

	if st, body := sendMIME(t, f, "users/"+shared, sendShared, msg); st != 202 {
		t.Fatalf("send as shared = %d %v", st, body)
	}
	// Full Access: the copy is in the shared mailbox's Sent Items.
	if n := len(f.FolderMessages(shared, "Sent Items")); n != 1 {
		t.Errorf("helpdesk Sent Items = %d", n)
	}
	if n := len(f.FolderMessages(bob, "Sent Items")); n != 0 {
		t.Errorf("bob Sent Items = %d", n)
	}
	got := f.Messages(alice)
	if len(got) != 1 || strings.Contains(string(got[0]), "Sender:") {
		t.Errorf("alice INBOX = %q (Send As leaves no Sender)", got)
	}

	// Without Full Access the copy goes to the sender's own Sent Items;
	// Send on Behalf adds a Sender header.
	other := "sales@contoso.com"
	f.AddMailbox(other)
	f.GrantSendOnBehalf(other, alice)
	msg2 := "From: sales@contoso.com\r\nTo: bob@contoso.com\r\nSubject: on behalf\r\n\r\nx\r\n"
	if st, body := sendMIME(t, f, "users/"+other, f.IssueGraphToken(alice, ScopeGraphMailSendShared), msg2); st != 202 {
		t.Fatalf("send on behalf = %d %v", st, body)
	}
	if n := len(f.FolderMessages(other, "Sent Items")); n != 0 {
		t.Errorf("sales Sent Items = %d, want 0 (no Full Access)", n)
	}
	if got := f.FolderMessages(alice, "Sent Items"); len(got) != 1 || !strings.Contains(string(got[0]), "Sender: alice@contoso.com") {
		t.Errorf("alice Sent Items = %q", got)
	}

	// /me with a From of a mailbox the user has no right on.
	st, body = sendMIME(t, f, "me", f.IssueGraphToken(alice, ScopeGraphMailSend), "From: bob@contoso.com\r\nTo: bob@contoso.com\r\n\r\nx\r\n")
	wantGraphError(t, st, body, 403, "ErrorSendAsDenied", "")
}

func TestGraphAliases(t *testing.T) {
	t.Parallel()
	f := newFake(t, Options{})
	f.AddAlias(alice, "a.smith@contoso.com")
	tok := f.IssueGraphToken(alice, ScopeGraphMailSend)
	msg := "From: \"Alice S\" <a.smith@contoso.com>\r\nTo: bob@contoso.com\r\nSubject: alias\r\n\r\nx\r\n"
	if st, body := sendMIME(t, f, "me", tok, msg); st != 202 {
		t.Fatalf("send from alias = %d %v", st, body)
	}
	got := f.Messages(bob)
	if len(got) != 1 || !strings.Contains(string(got[0]), "From: \"Alice S\" <alice@contoso.com>") {
		t.Errorf("without SendFromAliasEnabled: %q, want the primary address", got)
	}
	f.SetSendFromAliasEnabled(true)
	if st, body := sendMIME(t, f, "me", tok, msg); st != 202 {
		t.Fatalf("send from alias = %d %v", st, body)
	}
	got = f.Messages(bob)
	if len(got) != 2 || !strings.Contains(string(got[1]), "From: \"Alice S\" <a.smith@contoso.com>") {
		t.Errorf("with SendFromAliasEnabled: %q, want the alias", got)
	}
	// Mail to an alias is delivered to the mailbox.
	if st, _ := sendMIME(t, f, "users/"+bob, f.IssueGraphToken(bob), "To: a.smith@contoso.com\r\n\r\nx\r\n"); st != 202 {
		t.Fatal("send to alias failed")
	}
	if n := len(f.Messages(alice)); n != 1 {
		t.Errorf("alice INBOX = %d messages", n)
	}
}

func TestGraphAppTokens(t *testing.T) {
	t.Parallel()
	f := newFake(t, Options{})
	f.SetAppRoles(confApp, RoleMailSend)
	st, tok, _ := post(t, tokenURL(f), url.Values{"grant_type": {GrantClientCredentials}, "client_id": {confApp}, "client_secret": {confSecret}, "scope": {ScopeGraphDefault}})
	if st != 200 || tok["scope"] != ScopeGraphDefault {
		t.Fatalf("client credentials for Graph = %d %v", st, tok)
	}
	app := tok["access_token"].(string)
	if st, body := sendMIME(t, f, "users/"+alice, app, graphMsg); st != 202 {
		t.Fatalf("app sendMail = %d %v", st, body)
	}
	if n := len(f.FolderMessages(alice, "Sent Items")); n != 1 {
		t.Errorf("alice Sent Items = %d", n)
	}
	st, body := sendMIME(t, f, "me", app, graphMsg)
	wantGraphError(t, st, body, 400, "BadRequest", "")

	f.SetAppAccessDenied(confApp, bob, true)
	st, body = sendMIME(t, f, "users/"+bob, app, "To: alice@contoso.com\r\n\r\nx\r\n")
	wantGraphError(t, st, body, 403, "ErrorAccessDenied", "Access to OData is disabled.")

	f.SetRESTDisabled(alice, true)
	st, body = sendMIME(t, f, "users/"+alice, app, graphMsg)
	wantGraphError(t, st, body, 404, "MailboxNotEnabledForRESTAPI", "The mailbox is either inactive, soft-deleted, or is hosted on-premise.")

	// An app without the role.
	noRole := f.IssueGraphAppToken("33333333-norole")
	st, body = sendMIME(t, f, "users/"+bob, noRole, "To: alice@contoso.com\r\n\r\nx\r\n")
	wantGraphError(t, st, body, 403, "ErrorAccessDenied", "Access is denied. Check credentials and try again.")

	// Two resources in one client-credentials request.
	st, e, _ := post(t, tokenURL(f), url.Values{"grant_type": {GrantClientCredentials}, "client_id": {confApp}, "client_secret": {confSecret}, "scope": {ScopeGraphDefault + " " + scopeApp}})
	wantAADError(t, st, e, 400, "invalid_scope", 700022)

	// The Graph app token does not open IMAP.
	c := dialIMAP(t, f)
	f.GrantApp(confApp, alice)
	err := c.Authenticate(tokens.NewXOAUTH2Client(alice, app))
	wantIMAPError(t, err, imap.StatusResponseTypeNo, imapAuthFailed)
}

func TestGraphFaults(t *testing.T) {
	t.Parallel()
	f := newFake(t, Options{})
	tok := f.IssueGraphToken(alice, ScopeGraphMailSend)

	f.SetGraphFault(GraphFault{Status: 429, RetryAfter: 7, Count: 2})
	for i := range 2 {
		st, body, h := graphDo(t, f, "POST", "/v1.0/me/sendMail", tok, "text/plain", b64(graphMsg))
		wantGraphError(t, st, body, 429, "TooManyRequests", "")
		if h.Get("Retry-After") != "7" {
			t.Errorf("request %d: Retry-After = %q", i, h.Get("Retry-After"))
		}
	}
	if st, _ := sendMIME(t, f, "me", tok, graphMsg); st != 202 {
		t.Errorf("after the fault: %d", st)
	}
	f.SetGraphFault(GraphFault{Status: 429, RetryAfterHeader: "2.128", Count: 1})
	st, body, h := graphDo(t, f, "POST", "/v1.0/me/sendMail", tok, "text/plain", b64(graphMsg))
	wantGraphError(t, st, body, 429, "TooManyRequests", "Please retry again later.")
	if h.Get("Retry-After") != "2.128" {
		t.Errorf("Retry-After = %q, want 2.128", h.Get("Retry-After"))
	}

	f.SetGraphFault(GraphFault{Status: 503, Count: 1})
	st, body, h = graphDo(t, f, "POST", "/v1.0/me/sendMail", tok, "text/plain", b64(graphMsg))
	wantGraphError(t, st, body, 503, "ServiceNotAvailable", "")
	if h.Get("Retry-After") != "1" {
		t.Errorf("503 Retry-After = %q", h.Get("Retry-After"))
	}
	f.SetGraphFault(GraphFault{Status: 500, Count: 1})
	st, body = sendMIME(t, f, "me", tok, graphMsg)
	wantGraphError(t, st, body, 500, "InternalServerError", "")
	if n := len(f.GraphSent()); n != 1 {
		t.Errorf("GraphSent = %d messages, want 1 (faults send nothing)", n)
	}
	counts := f.GraphRequests()
	if counts["sendMail 429"] != 3 || counts["sendMail 503"] != 1 || counts["sendMail 500"] != 1 || counts["sendMail 202"] != 1 {
		t.Errorf("GraphRequests() = %v", counts)
	}
}

// TestGraphMailboxConcurrency holds four requests of one app and mailbox
// in flight (hanging) and checks that a fifth is throttled while another
// mailbox is not.
func TestGraphMailboxConcurrency(t *testing.T) {
	t.Parallel()
	f := newFake(t, Options{})
	tok := f.IssueGraphToken(alice, ScopeGraphMailSend, ScopeGraphMailSendShared)
	f.GrantSendAs(shared, alice)
	hanging := make(chan string)
	f.SetGraphFault(GraphFault{Hang: true, Hanging: hanging, Count: GraphMailboxConcurrency})

	var wg sync.WaitGroup
	ctx, cancel := context.WithCancel(t.Context())
	for range GraphMailboxConcurrency {
		wg.Add(1)
		go func() {
			defer wg.Done()
			req, _ := http.NewRequestWithContext(ctx, "POST", f.GraphURL()+"/v1.0/me/sendMail", bytes.NewReader(b64(graphMsg)))
			req.Header.Set("Authorization", "Bearer "+tok)
			req.Header.Set("Content-Type", "text/plain")
			if resp, err := f.GraphHTTPClient().Do(req); err == nil {
				resp.Body.Close()
				t.Errorf("hanging request answered %d", resp.StatusCode)
			}
		}()
	}
	for range GraphMailboxConcurrency {
		<-hanging
	}
	st, body, h := graphDo(t, f, "POST", "/v1.0/me/sendMail", tok, "text/plain", b64(graphMsg))
	wantGraphError(t, st, body, 429, "ApplicationThrottled", "Application is over its MailboxConcurrency limit.")
	if n := f.GraphPeakConcurrency(alice); n != GraphMailboxConcurrency {
		t.Errorf("GraphPeakConcurrency = %d", n)
	}
	if h.Get("Retry-After") == "" {
		t.Error("no Retry-After on MailboxConcurrency")
	}
	// Another mailbox is not affected.
	if st, body := sendMIME(t, f, "users/"+shared, tok, "From: helpdesk@contoso.com\r\nTo: bob@contoso.com\r\n\r\nx\r\n"); st != 202 {
		t.Errorf("other mailbox = %d %v", st, body)
	}
	cancel()
	wg.Wait()
	// The slots are free again once the hanging requests ended.
	waitGraphIdle(t, f)
	if st, body := sendMIME(t, f, "me", tok, graphMsg); st != 202 {
		t.Errorf("after the hanging requests ended: %d %v", st, body)
	}
}

// waitGraphIdle waits until no Graph request holds a concurrency slot: the
// server notices a client's cancellation asynchronously.
func waitGraphIdle(t *testing.T, f *Fake) {
	t.Helper()
	f.mu.Lock()
	defer f.mu.Unlock()
	for {
		busy := 0
		for _, n := range f.graph.inflight {
			busy += n
		}
		if busy == 0 {
			return
		}
		f.graph.released.Wait()
	}
}

// draftMsg is a draft without its large attachment.
const draftMsg = "From: alice@contoso.com\r\nTo: bob@contoso.com\r\nBcc: helpdesk@contoso.com\r\nSubject: large\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nSee attached.\r\n"

func createDraft(t *testing.T, f *Fake, path, tok, msg string) string {
	t.Helper()
	st, body, _ := graphDo(t, f, "POST", "/v1.0/"+path+"/messages", tok, "text/plain", b64(msg))
	if st != 201 {
		t.Fatalf("create draft = %d %v", st, body)
	}
	id, _ := body["id"].(string)
	if id == "" || body["isDraft"] != true {
		t.Fatalf("draft = %v", body)
	}
	return id
}

func TestGraphLargeMessage(t *testing.T) {
	t.Parallel()
	f := newFake(t, Options{})
	tok := f.IssueGraphToken(alice, ScopeGraphMailSend, ScopeGraphMailReadWrite)
	id := createDraft(t, f, "users/"+alice, tok, draftMsg)
	if n := len(imapFolder(t, f, alice, "Drafts")); n != 1 {
		t.Errorf("Drafts = %d messages", n)
	}

	// A small attachment in one POST.
	small := []byte("small file contents")
	att := fmt.Sprintf(`{"@odata.type":"#microsoft.graph.fileAttachment","name":"small.txt","contentType":"text/plain","contentBytes":%q}`, base64.StdEncoding.EncodeToString(small))
	st, body, _ := graphDo(t, f, "POST", "/v1.0/users/"+alice+"/messages/"+id+"/attachments", tok, "application/json", []byte(att))
	if st != 201 || body["name"] != "small.txt" {
		t.Fatalf("add attachment = %d %v", st, body)
	}

	// A 9 MB attachment through an upload session, in 3 MiB chunks.
	size := 9<<20 + 123
	bigData := bytes.Repeat([]byte("0123456789abcdef"), size/16+1)[:size]
	st, body, _ = graphDo(t, f, "POST", "/v1.0/users/"+alice+"/messages/"+id+"/attachments/createUploadSession", tok, "application/json",
		[]byte(fmt.Sprintf(`{"AttachmentItem":{"attachmentType":"file","name":"big.bin","size":%d,"contentType":"application/octet-stream"}}`, size)))
	if st != 201 {
		t.Fatalf("createUploadSession = %d %v", st, body)
	}
	uploadURL, _ := body["uploadUrl"].(string)
	if !strings.HasPrefix(uploadURL, f.GraphURL()+"/") || fmt.Sprint(body["nextExpectedRanges"]) != "[0-]" || body["expirationDateTime"] == nil {
		t.Fatalf("upload session = %v", body)
	}
	put := func(a, b int, bearer string) (int, map[string]any, http.Header) {
		req, _ := http.NewRequest("PUT", uploadURL, bytes.NewReader(bigData[a:b+1]))
		req.Header.Set("Content-Type", "application/octet-stream")
		req.Header.Set("Content-Range", fmt.Sprintf("bytes %d-%d/%d", a, b, size))
		if bearer != "" {
			req.Header.Set("Authorization", "Bearer "+bearer)
		}
		resp, err := f.GraphHTTPClient().Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		raw, _ := io.ReadAll(resp.Body)
		var m map[string]any
		_ = json.Unmarshal(raw, &m)
		return resp.StatusCode, m, resp.Header
	}
	const chunk = 3 << 20
	// A 503 on the upload URL only; the chunk can be sent again.
	f.SetGraphFault(GraphFault{Status: 503, Route: RouteUploadChunk, Count: 1})
	st, body, h := put(0, chunk-1, "")
	wantGraphError(t, st, body, 503, "ServiceNotAvailable", "")
	if h.Get("Retry-After") == "" {
		t.Error("upload 503 without Retry-After")
	}
	// With a bearer token: refused.
	st, body, _ = put(0, chunk-1, tok)
	wantGraphError(t, st, body, 401, "InvalidAuthenticationToken", "")
	// Not starting at the next expected range: 416.
	st, body, _ = put(chunk, 2*chunk-1, "")
	wantGraphError(t, st, body, 416, "InvalidRange", "")
	for a := 0; a < size; a += chunk {
		b := min(a+chunk, size) - 1
		st, body, h := put(a, b, "")
		if b < size-1 {
			if st != 200 || fmt.Sprint(body["nextExpectedRanges"]) != fmt.Sprintf("[%d-]", b+1) {
				t.Fatalf("PUT %d-%d = %d %v", a, b, st, body)
			}
		} else if st != 201 || h.Get("Location") == "" {
			t.Fatalf("last PUT = %d %v %v", st, body, h)
		}
	}
	if a, ok := f.GraphLastAuthorization(RouteUploadChunk); !ok || a != "" {
		t.Errorf("last upload Authorization = %q", a)
	}

	// Send the draft.
	st, body, _ = graphDo(t, f, "POST", "/v1.0/users/"+alice+"/messages/"+id+"/send", tok, "", nil)
	if st != 202 {
		t.Fatalf("send draft = %d %v", st, body)
	}
	got := imapFolder(t, f, bob, "INBOX")
	if len(got) != 1 || len(got[0]) < size || strings.Contains(got[0], "Bcc:") || !strings.Contains(got[0], "multipart/mixed") ||
		!strings.Contains(got[0], `filename=big.bin`) || !strings.Contains(got[0], "See attached.") {
		t.Fatalf("bob INBOX: %d messages, first %d bytes", len(got), len(got[0]))
	}
	// The attachment survives the round trip.
	enc := base64.StdEncoding.EncodeToString(bigData[:57*100])
	if !strings.Contains(strings.ReplaceAll(got[0], "\r\n", ""), enc) {
		t.Error("big.bin content not found in the delivered message")
	}
	if n := len(f.FolderMessages(shared, "INBOX")); n != 1 {
		t.Errorf("Bcc recipient got %d messages", n)
	}
	if n := len(f.FolderMessages(alice, "Drafts")); n != 0 {
		t.Errorf("Drafts after send = %d", n)
	}
	if n := len(f.FolderMessages(alice, "Sent Items")); n != 1 {
		t.Errorf("Sent Items after send = %d", n)
	}
	// The draft is gone.
	st, body, _ = graphDo(t, f, "POST", "/v1.0/users/"+alice+"/messages/"+id+"/send", tok, "", nil)
	wantGraphError(t, st, body, 404, "ErrorItemNotFound", "")
}

func TestGraphUploadSessionChecks(t *testing.T) {
	t.Parallel()
	f := newFake(t, Options{})
	tok := f.IssueGraphToken(alice, ScopeGraphMailSend, ScopeGraphMailReadWrite)

	// Drafts need Mail.ReadWrite.
	st, body, _ := graphDo(t, f, "POST", "/v1.0/me/messages", f.IssueGraphToken(alice, ScopeGraphMailSend), "text/plain", b64(draftMsg))
	wantGraphError(t, st, body, 403, "ErrorAccessDenied", "")

	id := createDraft(t, f, "me", tok, draftMsg)
	session := func(size int) (int, map[string]any) {
		st, body, _ := graphDo(t, f, "POST", "/v1.0/me/messages/"+id+"/attachments/createUploadSession", tok, "application/json",
			[]byte(fmt.Sprintf(`{"AttachmentItem":{"attachmentType":"file","name":"f.bin","size":%d}}`, size)))
		return st, body
	}
	st, body = session(1 << 20)
	wantGraphError(t, st, body, 400, "ErrorAttachmentSizeShouldNotBeLessThanMinimumSize", "")
	f.SetMaxSendSize(alice, 10<<20)
	st, body = session(11 << 20)
	wantGraphError(t, st, body, 400, "ErrorMessageSizeExceeded", "The message exceeds the maximum supported size.")

	size := 5 << 20
	st, body = session(size)
	if st != 201 {
		t.Fatalf("session = %d %v", st, body)
	}
	uploadURL := body["uploadUrl"].(string)
	put := func(cr string, data []byte) (int, map[string]any) {
		req, _ := http.NewRequest("PUT", uploadURL, bytes.NewReader(data))
		req.Header.Set("Content-Range", cr)
		resp, err := f.GraphHTTPClient().Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		raw, _ := io.ReadAll(resp.Body)
		var m map[string]any
		_ = json.Unmarshal(raw, &m)
		return resp.StatusCode, m
	}
	// A chunk of 4 MB: 413 ("keep each byte range less than 4 MB").
	st, body = put(fmt.Sprintf("bytes 0-%d/%d", GraphMaxRequestBytes-1, size), make([]byte, GraphMaxRequestBytes))
	wantGraphError(t, st, body, 413, "RequestEntityTooLarge", "")
	// One byte less is fine.
	if st, body := put(fmt.Sprintf("bytes 0-%d/%d", GraphMaxRequestBytes-2, size), make([]byte, GraphMaxRequestBytes-1)); st != 200 || fmt.Sprint(body["nextExpectedRanges"]) != fmt.Sprintf("[%d-]", GraphMaxRequestBytes-1) {
		t.Errorf("chunk of 4 MB - 1 = %d %v", st, body)
	}
	// Wrong total, malformed range, length mismatch: 400.
	st, body = put("bytes 0-9/99", make([]byte, 10))
	wantGraphError(t, st, body, 400, "InvalidContentRange", "")
	st, body = put("items 0-9", make([]byte, 10))
	wantGraphError(t, st, body, 400, "InvalidContentRange", "")
	st, body = put(fmt.Sprintf("bytes 0-19/%d", size), make([]byte, 10))
	wantGraphError(t, st, body, 400, "InvalidContentRange", "")
	// A bad authtoken: not found.
	req, _ := http.NewRequest("PUT", strings.Split(uploadURL, "?")[0]+"?authtoken=wrong", bytes.NewReader(make([]byte, 10)))
	req.Header.Set("Content-Range", fmt.Sprintf("bytes 0-9/%d", size))
	resp, err := f.GraphHTTPClient().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 404 {
		t.Errorf("bad authtoken = %d", resp.StatusCode)
	}
	// Deleting the draft ends its upload session and empties Drafts.
	st, body, _ = graphDo(t, f, "DELETE", "/v1.0/me/messages/"+id, f.IssueGraphToken(alice, ScopeGraphMailSend), "", nil)
	wantGraphError(t, st, body, 403, "ErrorAccessDenied", "")
	if st, body, _ := graphDo(t, f, "DELETE", "/v1.0/me/messages/"+id, tok, "", nil); st != 204 {
		t.Fatalf("DELETE draft = %d %v", st, body)
	}
	if n := len(f.FolderMessages(alice, "Drafts")); n != 0 {
		t.Errorf("Drafts after DELETE = %d", n)
	}
	st, body = put(fmt.Sprintf("bytes %d-%d/%d", GraphMaxRequestBytes-1, GraphMaxRequestBytes, size), make([]byte, 2))
	wantGraphError(t, st, body, 404, "ErrorItemNotFound", "")
	st, body, _ = graphDo(t, f, "DELETE", "/v1.0/me/messages/"+id, tok, "", nil)
	wantGraphError(t, st, body, 404, "ErrorItemNotFound", "")

	// A whole message over MaxSendSize cannot be sent via sendMail either.
	f.SetMaxSendSize(alice, 100)
	st, body = sendMIME(t, f, "me", tok, graphMsg+strings.Repeat("x", 100))
	wantGraphError(t, st, body, 400, "ErrorMessageSizeExceeded", "")
}
