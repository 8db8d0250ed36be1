package smtpproxy

import (
	"bytes"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"mime"
	"mime/multipart"
	"net/http"
	"net/http/httptest"
	"net/mail"
	"net/textproto"
	"strings"
	"sync"
	"testing"

	"github.com/emersion/go-smtp"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/oauthbridge/oauthbridge/graph"
	"github.com/oauthbridge/oauthbridge/tokens"
)

// stubGraph is a Microsoft Graph stand-in for the sending calls: bearer
// tokens it knows, the 4 MB body limit (configurable), drafts, small
// attachments, upload sessions with range checks, /send, and queued
// faults.
type stubGraph struct {
	t   testing.TB
	srv *httptest.Server

	mu         sync.Mutex
	tokens     map[string]bool
	limit      int // request body limit (base64 bytes)
	faults     []fault
	faultOn    map[string]fault // by the last path element, e.g. "createUploadSession"
	sent       []graphSent
	drafts     map[string]*graphSent
	uploads    map[string]*upload
	deleted    []string
	requests   []string // "METHOD path"
	uploadAuth int      // upload PUTs that carried an Authorization header
	hold       chan struct{}
	arrived    chan struct{}
	inflight   int
	maxInfl    int
	n          int
	discard    bool // keep no content (benchmarks)
}

type fault struct {
	status             int
	code, msg, retryAt string
}

type graphSent struct {
	User        string
	MIME        []byte
	Attachments []graphAttachment
	Method      string // sendMail or draft
}

type graphAttachment struct {
	Name, ContentType string
	Content           []byte
	Inline            bool
}

type upload struct {
	draft string
	att   graphAttachment
	size  int64
	buf   bytes.Buffer
}

func startStubGraph(t testing.TB) *stubGraph {
	g := &stubGraph{t: t, tokens: map[string]bool{}, limit: graph.MaxRequestBytes, drafts: map[string]*graphSent{}, uploads: map[string]*upload{}}
	g.srv = httptest.NewServer(g)
	t.Cleanup(g.srv.Close)
	return g
}

func (g *stubGraph) issue(tok string) string {
	g.mu.Lock()
	g.tokens[tok] = true
	g.mu.Unlock()
	return tok
}

func (g *stubGraph) set(f func(g *stubGraph)) {
	g.mu.Lock()
	f(g)
	g.mu.Unlock()
}

func (g *stubGraph) Sent() []graphSent {
	g.mu.Lock()
	defer g.mu.Unlock()
	return append([]graphSent(nil), g.sent...)
}

func writeGraphError(w http.ResponseWriter, status int, code, msg string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(map[string]any{"error": map[string]string{"code": code, "message": msg}})
}

func (g *stubGraph) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	path := r.URL.EscapedPath()
	g.mu.Lock()
	g.requests = append(g.requests, r.Method+" "+path)
	g.mu.Unlock()
	if strings.HasPrefix(path, "/upload/") {
		g.serveUpload(w, r, strings.TrimPrefix(path, "/upload/"))
		return
	}
	g.mu.Lock()
	ok := g.tokens[strings.TrimPrefix(r.Header.Get("Authorization"), "Bearer ")]
	var f *fault
	if ok && len(g.faults) > 0 && r.Method == "POST" {
		f = &g.faults[0]
		g.faults = g.faults[1:]
	}
	if fo, hit := g.faultOn[path[strings.LastIndex(path, "/")+1:]]; ok && hit && r.Method == "POST" {
		f = &fo
	}
	hold, arrived := g.hold, g.arrived
	g.inflight++
	g.maxInfl = max(g.maxInfl, g.inflight)
	g.mu.Unlock()
	defer func() { g.mu.Lock(); g.inflight--; g.mu.Unlock() }()
	if arrived != nil {
		arrived <- struct{}{}
	}
	if hold != nil {
		<-hold
	}
	if !ok {
		writeGraphError(w, 401, "InvalidAuthenticationToken", "Access token validation failure. Invalid audience.")
		return
	}
	if f != nil {
		if f.retryAt != "" {
			w.Header().Set("Retry-After", f.retryAt)
		}
		writeGraphError(w, f.status, f.code, f.msg)
		return
	}
	body, _ := io.ReadAll(r.Body)
	g.mu.Lock()
	limit := g.limit
	g.mu.Unlock()
	if len(body) > limit {
		writeGraphError(w, 413, "RequestEntityTooLarge", "The maximum request length supported is 4MB.")
		return
	}
	parts := strings.Split(strings.TrimPrefix(path, "/v1.0/users/"), "/")
	user := parts[0]
	decode := func() ([]byte, bool) {
		if r.Header.Get("Content-Type") != "text/plain" {
			writeGraphError(w, 415, "ErrorInvalidContentType", "want text/plain")
			return nil, false
		}
		m, err := base64.StdEncoding.DecodeString(string(body))
		if err != nil {
			writeGraphError(w, 400, "ErrorMimeContentInvalidBase64String", "Invalid base64 string for MIME content.")
			return nil, false
		}
		return m, true
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	switch {
	case r.Method == "POST" && len(parts) == 2 && parts[1] == "sendMail":
		m, ok := decode()
		if !ok {
			return
		}
		if g.discard {
			m = nil
		}
		g.sent = append(g.sent, graphSent{User: user, MIME: m, Method: "sendMail"})
		w.WriteHeader(202)
	case r.Method == "POST" && len(parts) == 2 && parts[1] == "messages":
		m, ok := decode()
		if !ok {
			return
		}
		g.n++
		id := fmt.Sprintf("draft%d", g.n)
		g.drafts[id] = &graphSent{User: user, MIME: m, Method: "draft"}
		w.WriteHeader(201)
		fmt.Fprintf(w, `{"id":%q}`, id)
	case r.Method == "POST" && len(parts) == 4 && parts[3] == "attachments":
		d := g.drafts[parts[2]]
		var a struct {
			Name, ContentType, ContentBytes string
			IsInline                        bool
		}
		if d == nil || json.Unmarshal(body, &a) != nil {
			writeGraphError(w, 400, "ErrorInvalidRequest", "bad attachment")
			return
		}
		c, _ := base64.StdEncoding.DecodeString(a.ContentBytes)
		d.Attachments = append(d.Attachments, graphAttachment{Name: a.Name, ContentType: a.ContentType, Content: c, Inline: a.IsInline})
		w.WriteHeader(201)
	case r.Method == "POST" && len(parts) == 5 && parts[4] == "createUploadSession":
		var req struct {
			AttachmentItem struct {
				Name, ContentType string
				Size              int64
				IsInline          bool
			}
		}
		if g.drafts[parts[2]] == nil || json.Unmarshal(body, &req) != nil || req.AttachmentItem.Size <= 0 {
			writeGraphError(w, 400, "ErrorInvalidRequest", "bad upload session")
			return
		}
		g.n++
		id := fmt.Sprintf("up%d", g.n)
		it := req.AttachmentItem
		g.uploads[id] = &upload{draft: parts[2], size: it.Size, att: graphAttachment{Name: it.Name, ContentType: it.ContentType, Inline: it.IsInline}}
		w.WriteHeader(201)
		fmt.Fprintf(w, `{"uploadUrl":"%s/upload/%s","nextExpectedRanges":["0-"]}`, g.srv.URL, id)
	case r.Method == "POST" && len(parts) == 4 && parts[3] == "send":
		d := g.drafts[parts[2]]
		if d == nil {
			writeGraphError(w, 404, "ErrorItemNotFound", "no such draft")
			return
		}
		delete(g.drafts, parts[2])
		g.sent = append(g.sent, *d)
		w.WriteHeader(202)
	case r.Method == "DELETE" && len(parts) == 3:
		delete(g.drafts, parts[2])
		g.deleted = append(g.deleted, parts[2])
		w.WriteHeader(204)
	default:
		writeGraphError(w, 404, "ResourceNotFound", r.Method+" "+path)
	}
}

func (g *stubGraph) serveUpload(w http.ResponseWriter, r *http.Request, id string) {
	g.mu.Lock()
	discard := g.discard
	g.mu.Unlock()
	var body []byte
	if discard { // benchmarks: count, keep nothing
		n, _ := io.Copy(io.Discard, r.Body)
		body = make([]byte, 0)
		g.mu.Lock()
		defer g.mu.Unlock()
		u := g.uploads[id]
		if u == nil {
			writeGraphError(w, 404, "ErrorItemNotFound", "no session")
			return
		}
		var a, b, total int64
		fmt.Sscanf(r.Header.Get("Content-Range"), "bytes %d-%d/%d", &a, &b, &total)
		if b-a+1 != n || total != u.size {
			writeGraphError(w, 400, "InvalidContentRange", "bad range")
			return
		}
		if b+1 == u.size {
			d := g.drafts[u.draft]
			d.Attachments = append(d.Attachments, u.att)
			delete(g.uploads, id)
			w.WriteHeader(201)
			return
		}
		w.WriteHeader(200)
		fmt.Fprintf(w, `{"nextExpectedRanges":["%d-"]}`, b+1)
		_ = body
		return
	}
	body, _ = io.ReadAll(r.Body)
	g.mu.Lock()
	defer g.mu.Unlock()
	if r.Header.Get("Authorization") != "" {
		g.uploadAuth++
	}
	u := g.uploads[id]
	if u == nil {
		writeGraphError(w, 404, "ErrorItemNotFound", "no session")
		return
	}
	var a, b, total int64
	if _, err := fmt.Sscanf(r.Header.Get("Content-Range"), "bytes %d-%d/%d", &a, &b, &total); err != nil ||
		a != int64(u.buf.Len()) || b-a+1 != int64(len(body)) || total != u.size || len(body) >= graph.MaxRequestBytes {
		writeGraphError(w, 416, "ErrorInvalidRange", "bad range "+r.Header.Get("Content-Range"))
		return
	}
	u.buf.Write(body)
	if int64(u.buf.Len()) == u.size {
		att := u.att
		att.Content = u.buf.Bytes()
		d := g.drafts[u.draft]
		d.Attachments = append(d.Attachments, att)
		delete(g.uploads, id)
		w.WriteHeader(201)
		return
	}
	w.WriteHeader(200)
	fmt.Fprintf(w, `{"nextExpectedRanges":["%d-"]}`, u.buf.Len())
}

// graphBridge starts a bridge whose helpdesk account sends through the
// stub Graph (send_via given), with an SMTP stub beside it.
func graphBridge(t *testing.T, sendVia string, extra ...string) (*bridge, *stubGraph, *stubMS, *stubTokens) {
	t.Helper()
	ms := startStubMS(t)
	g := startStubGraph(t)
	gt := &stubTokens{}
	gt.set("helpdesk", g.issue("graph-token-1"))
	acct := fmt.Sprintf("send_via = %q\n", sendVia)
	smtpExtra := ""
	for _, e := range extra {
		if strings.HasPrefix(e, "smtp:") {
			smtpExtra += strings.TrimPrefix(e, "smtp:") + "\n"
		} else {
			acct += e + "\n"
		}
	}
	br := startBridge(t, ms.addr, bridgeOpts{accountExtra: acct, smtpExtra: smtpExtra,
		providerExtra: fmt.Sprintf("graph_url = %q", g.srv.URL), graphTokens: gt})
	br.tokens.set("helpdesk", ms.issue("helpdesk@contoso.com"))
	return br, g, ms, gt
}

func headerOf(t *testing.T, m []byte) mail.Header {
	t.Helper()
	msg, err := mail.ReadMessage(bytes.NewReader(m))
	if err != nil {
		t.Fatalf("ReadMessage: %v\n%s", err, m)
	}
	return msg.Header
}

func TestGraphSendsSmallMessage(t *testing.T) {
	br, g, ms, _ := graphBridge(t, "graph")
	c := loginClient(t, br.addr, "otrs")
	msg := []byte("From: Helpdesk <helpdesk@contoso.com>\r\nTo: Bob <bob@contoso.com>\r\nCc: mallory@example.com, \"Carol C\" <carol@example.com>\r\nBcc: eve@example.com\r\nSubject: Ticket #1\r\nX-Keep:  folded\r\n\tline\r\n\r\nHello.\r\n")
	status, err := send(c, "helpdesk@contoso.com", []string{"bob@contoso.com", "carol@example.com", "dave@example.com"}, msg)
	if err != nil {
		t.Fatalf("send() = %v", err)
	}
	if !strings.Contains(status, "Microsoft Graph") {
		t.Errorf("DATA reply = %q", status)
	}
	sent := g.Sent()
	if len(sent) != 1 || sent[0].User != "helpdesk@contoso.com" || sent[0].Method != "sendMail" {
		t.Fatalf("Graph got %+v", sent)
	}
	h := headerOf(t, sent[0].MIME)
	if h.Get("To") != "Bob <bob@contoso.com>" {
		t.Errorf("To = %q, want it byte for byte", h.Get("To"))
	}
	if cc := h.Get("Cc"); strings.Contains(cc, "mallory") || !strings.Contains(cc, "carol@example.com") {
		t.Errorf("Cc = %q: mallory (not in the envelope) must be gone, carol kept", cc)
	}
	if bcc := h.Get("Bcc"); bcc != "<dave@example.com>" {
		t.Errorf("Bcc = %q, want only the envelope-only recipient dave", bcc)
	}
	if !bytes.Contains(sent[0].MIME, []byte("X-Keep:  folded\r\n\tline\r\nSubject: Ticket #1\r\n")) && !bytes.Contains(sent[0].MIME, []byte("Subject: Ticket #1\r\nX-Keep:  folded\r\n\tline\r\n")) {
		t.Errorf("other fields not kept byte for byte:\n%s", sent[0].MIME)
	}
	if !bytes.HasSuffix(sent[0].MIME, []byte("\r\n\r\nHello.\r\n")) {
		t.Errorf("body changed:\n%q", sent[0].MIME)
	}
	if ok, fail := ms.counts(); ok+fail != 0 {
		t.Errorf("the SMTP upstream was used (%d logins)", ok+fail)
	}
	// The session goes on: a second message on the same connection.
	if _, err := send(c, "noreply@contoso.com", []string{"bob@contoso.com"}, []byte("To: bob@contoso.com\r\nSubject: 2\r\n\r\nx\r\n")); err != nil {
		t.Fatalf("send(2) = %v", err)
	}
	if len(g.Sent()) != 2 {
		t.Errorf("Graph got %d messages", len(g.Sent()))
	}
}

func TestGraphBccOnlyRecipient(t *testing.T) {
	br, g, _, _ := graphBridge(t, "graph")
	c := loginClient(t, br.addr, "otrs")
	msg := []byte("From: helpdesk@contoso.com\r\nTo: undisclosed-recipients:;\r\nSubject: bcc only\r\n\r\nx\r\n")
	if _, err := send(c, "helpdesk@contoso.com", []string{"hidden@example.com"}, msg); err != nil {
		t.Fatalf("send() = %v", err)
	}
	h := headerOf(t, g.Sent()[0].MIME)
	if h.Get("Bcc") != "<hidden@example.com>" || h.Get("To") != "undisclosed-recipients:;" {
		t.Errorf("To %q Bcc %q", h.Get("To"), h.Get("Bcc"))
	}
}

func TestGraphUnparseableRecipientHeaderRefused(t *testing.T) {
	br, g, _, _ := graphBridge(t, "graph")
	c := loginClient(t, br.addr, "otrs")
	_, err := send(c, "helpdesk@contoso.com", []string{"bob@contoso.com"}, []byte("To: bob@contoso.com <<<\r\n\r\nx\r\n"))
	wantCode(t, "send(bad To)", err, 554, smtp.EnhancedCode{5, 6, 0})
	if len(g.Sent()) != 0 {
		t.Error("an unparseable To reached Graph")
	}
}

func TestGraphErrorReplies(t *testing.T) {
	cases := []struct {
		name   string
		faults []fault
		code   int
		ec     smtp.EnhancedCode
		reply  string // substring of the reply
		log    string // substring of the log
	}{
		{"throttled beyond the budget", []fault{{429, "ApplicationThrottled", "Application is over its MailboxConcurrency limit.", "120"}}, 451, smtp.EnhancedCode{4, 7, 0}, "try again in 120 seconds", "throttling"},
		{"unavailable", []fault{{500, "ErrorInternalServerError", "boom", ""}}, 451, smtp.EnhancedCode{4, 3, 0}, "HTTP 500", "unavailable"},
		{"send as denied", []fault{{403, "ErrorSendAsDenied", "The user account which was used to submit this request does not have the right to send mail on behalf of the specified sending account.", ""}}, 550, smtp.EnhancedCode{5, 7, 60}, "SendAsDenied", "Add-RecipientPermission"},
		{"odata disabled", []fault{{403, "ErrorAccessDenied", "Access to OData is disabled.", ""}}, 550, smtp.EnhancedCode{5, 7, 1}, "access policy", "New-ApplicationAccessPolicy"},
		{"mailbox not enabled", []fault{{404, "MailboxNotEnabledForRESTAPI", "The mailbox is either inactive, soft-deleted, or is hosted on-premise.", ""}}, 550, smtp.EnhancedCode{5, 1, 1}, "not enabled for Microsoft Graph", "on-premises"},
		{"missing permission", []fault{{403, "ErrorAccessDenied", "Access is denied. Check credentials and try again.", ""}}, 454, smtp.EnhancedCode{4, 7, 0}, "administrator must act", "Mail.Send"},
		{"bad mime", []fault{{400, "ErrorMimeContentInvalidBase64String", "Invalid base64 string for MIME content.", ""}}, 554, smtp.EnhancedCode{5, 6, 0}, "ErrorMimeContentInvalidBase64String", "refused"},
		{"over the mailbox's send limit", []fault{{400, "ErrorMessageSizeExceeded", "The message exceeds the maximum supported size.", ""}}, 552, smtp.EnhancedCode{5, 3, 4}, "too large", "refused"},
		{"unexpected 2xx", []fault{{200, "", "", ""}}, 451, smtp.EnhancedCode{4, 4, 2}, "instead of 202", ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			br, g, _, _ := graphBridge(t, "graph")
			g.set(func(g *stubGraph) { g.faults = tc.faults })
			c := loginClient(t, br.addr, "otrs")
			_, err := send(c, "helpdesk@contoso.com", []string{"bob@contoso.com"}, []byte("To: bob@contoso.com\r\nSubject: x\r\n\r\nx\r\n"))
			wantCode(t, "send()", err, tc.code, tc.ec)
			if se, ok := err.(*smtp.SMTPError); ok && !strings.Contains(se.Message, tc.reply) {
				t.Errorf("reply %q lacks %q", se.Message, tc.reply)
			}
			if !strings.Contains(br.logs.String(), tc.log) {
				t.Errorf("log lacks %q:\n%s", tc.log, br.logs.String())
			}
			if len(g.Sent()) != 0 {
				t.Error("Graph recorded a send")
			}
		})
	}
}

func TestGraphThrottledThenRetried(t *testing.T) {
	br, g, _, _ := graphBridge(t, "graph")
	g.set(func(g *stubGraph) {
		g.faults = []fault{{429, "ApplicationThrottled", "throttled", "1"}, {503, "ServiceUnavailable", "busy", "1"}}
	})
	c := loginClient(t, br.addr, "otrs")
	if _, err := send(c, "helpdesk@contoso.com", []string{"bob@contoso.com"}, []byte("To: bob@contoso.com\r\n\r\nx\r\n")); err != nil {
		t.Fatalf("send() = %v (a short Retry-After is waited out inside the bridge)", err)
	}
	if n := len(g.Sent()); n != 1 {
		t.Fatalf("Graph got %d messages", n)
	}
	// A client that was told 451 and retries gets its message through.
	g.set(func(g *stubGraph) { g.faults = []fault{{429, "ApplicationThrottled", "throttled", "300"}} })
	_, err := send(c, "helpdesk@contoso.com", []string{"bob@contoso.com"}, []byte("To: bob@contoso.com\r\n\r\ny\r\n"))
	wantCode(t, "send(throttled)", err, 451, smtp.EnhancedCode{4, 7, 0})
	if _, err := send(c, "helpdesk@contoso.com", []string{"bob@contoso.com"}, []byte("To: bob@contoso.com\r\n\r\ny\r\n")); err != nil {
		t.Fatalf("retry after 451 = %v", err)
	}
	if n := len(g.Sent()); n != 2 {
		t.Fatalf("Graph got %d messages, want 2", n)
	}
}

func TestGraphTokenProblems(t *testing.T) {
	br, g, _, gt := graphBridge(t, "graph")
	// A token Graph does not accept (wrong audience): refreshed once, then 454.
	gt.set("helpdesk", "outlook-token-wrong-audience")
	c := loginClient(t, br.addr, "otrs")
	_, err := send(c, "helpdesk@contoso.com", []string{"bob@contoso.com"}, []byte("To: bob@contoso.com\r\n\r\nx\r\n"))
	wantCode(t, "send(wrong audience)", err, 454, smtp.EnhancedCode{4, 7, 0})
	if gt.rejections() != 1 || !strings.Contains(br.logs.String(), "Mail.Send") {
		t.Errorf("rejections %d; log:\n%s", gt.rejections(), br.logs.String())
	}
	// A token the bridge cannot get: 454 at MAIL, nothing sent.
	gt.fail("helpdesk", &tokens.Error{Account: "helpdesk", Kind: tokens.NeedsLogin, AADSTS: 65001, Reason: "no consent for the Microsoft Graph permissions Mail.Send"})
	err = c.Mail("helpdesk@contoso.com", nil)
	wantCode(t, "Mail(no consent)", err, 454, smtp.EnhancedCode{4, 7, 0})
	if len(g.Sent()) != 0 {
		t.Error("sent without a token")
	}
}

func TestGraphSenderPolicyUnchanged(t *testing.T) {
	br, g, _, _ := graphBridge(t, "graph")
	c := loginClient(t, br.addr, "otrs")
	err := c.Mail("ceo@contoso.com", nil)
	wantCode(t, "Mail(ceo)", err, 550, smtp.EnhancedCode{5, 7, 1})
	if len(g.Sent()) != 0 {
		t.Error("sent")
	}
}

func TestGraphSharedMailbox(t *testing.T) {
	ms := startStubMS(t)
	g := startStubGraph(t)
	gt := &stubTokens{}
	gt.set("helpdesk", g.issue("alice-graph-token"))
	br := startBridge(t, ms.addr, bridgeOpts{accountExtra: "send_via = \"graph\"\ndelegate = \"alice@contoso.com\"",
		providerExtra: fmt.Sprintf("graph_url = %q", g.srv.URL), graphTokens: gt})
	c := loginClient(t, br.addr, "otrs")
	if _, err := send(c, "helpdesk@contoso.com", []string{"bob@contoso.com"}, []byte("From: helpdesk@contoso.com\r\nTo: bob@contoso.com\r\n\r\nx\r\n")); err != nil {
		t.Fatal(err)
	}
	// The shared mailbox's own sendMail, with the delegate's token.
	if s := g.Sent(); len(s) != 1 || s[0].User != "helpdesk@contoso.com" {
		t.Errorf("sent %+v", s)
	}
}

func TestGraphConcurrencyPerMailbox(t *testing.T) {
	br, g, _, _ := graphBridge(t, "graph")
	hold, arrived := make(chan struct{}), make(chan struct{}, 10)
	g.set(func(g *stubGraph) { g.hold, g.arrived = hold, arrived })
	errs := make(chan error, 5)
	for i := range 4 {
		c := loginClient(t, br.addr, "otrs")
		go func() {
			_, err := send(c, "helpdesk@contoso.com", []string{"bob@contoso.com"}, []byte(fmt.Sprintf("To: bob@contoso.com\r\n\r\n%d\r\n", i)))
			errs <- err
		}()
	}
	for range 4 {
		<-arrived
	}
	// A fifth submission for the same mailbox waits connection_wait, then 451.
	c := loginClient(t, br.addr, "otrs")
	_, err := send(c, "helpdesk@contoso.com", []string{"bob@contoso.com"}, []byte("To: bob@contoso.com\r\n\r\n5\r\n"))
	wantCode(t, "send(5th)", err, 451, smtp.EnhancedCode{4, 3, 2})
	close(hold)
	for range 4 {
		if err := <-errs; err != nil {
			t.Errorf("send = %v", err)
		}
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.maxInfl != 4 {
		t.Errorf("max concurrent Graph requests = %d, want 4", g.maxInfl)
	}
}

// bigMessage builds a multipart/mixed message with a text part and
// binary attachments of the given sizes (base64 in the MIME).
func bigMessage(t testing.TB, to string, sizes ...int) ([]byte, [][]byte) {
	var b bytes.Buffer
	mw := multipart.NewWriter(&b)
	fmt.Fprintf(&b, "From: helpdesk@contoso.com\r\nTo: %s\r\nSubject: big\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=%q\r\n\r\nThis is a MIME message.\r\n", to, mw.Boundary())
	// multipart.Writer writes the first boundary without a leading CRLF
	// when nothing was written through it, so the preamble above needs its
	// own line break (added).
	tw, _ := mw.CreatePart(textproto.MIMEHeader{"Content-Type": {"text/plain; charset=utf-8"}})
	io.WriteString(tw, "Please see the attachments.\r\n")
	var contents [][]byte
	for i, n := range sizes {
		c := make([]byte, n)
		rand.Read(c)
		contents = append(contents, c)
		h := textproto.MIMEHeader{
			"Content-Type":              {"application/octet-stream"},
			"Content-Disposition":       {mime.FormatMediaType("attachment", map[string]string{"filename": fmt.Sprintf("file%d.bin", i+1)})},
			"Content-Transfer-Encoding": {"base64"},
		}
		pw, _ := mw.CreatePart(h)
		enc := base64.StdEncoding.EncodeToString(c)
		for len(enc) > 76 {
			io.WriteString(pw, enc[:76]+"\r\n")
			enc = enc[76:]
		}
		io.WriteString(pw, enc+"\r\n")
	}
	mw.Close()
	return b.Bytes(), contents
}

func TestGraphLargeMessageUploads(t *testing.T) {
	br, g, _, _ := graphBridge(t, "graph")
	c := loginClient(t, br.addr, "otrs")
	msg, contents := bigMessage(t, "bob@contoso.com", 5_000_000, 200_000, 3_500_000)
	if _, err := send(c, "helpdesk@contoso.com", []string{"bob@contoso.com", "carol@example.com"}, msg); err != nil {
		t.Fatalf("send() = %v", err)
	}
	sent := g.Sent()
	if len(sent) != 1 || sent[0].Method != "draft" {
		t.Fatalf("Graph sent %+v", sent)
	}
	s := sent[0]
	if len(s.MIME) > graph.MaxMIMEBytes {
		t.Errorf("draft MIME is %d bytes", len(s.MIME))
	}
	if h := headerOf(t, s.MIME); h.Get("Bcc") != "<carol@example.com>" {
		t.Errorf("draft Bcc = %q", h.Get("Bcc"))
	}
	// Every attachment arrives exactly once, byte for byte: in the draft's
	// MIME or as a Graph attachment.
	got := map[string][]byte{}
	for _, a := range s.Attachments {
		got[a.Name] = a.Content
	}
	mr, err := mail.ReadMessage(bytes.NewReader(s.MIME))
	if err != nil {
		t.Fatal(err)
	}
	_, params, _ := mime.ParseMediaType(mr.Header.Get("Content-Type"))
	r := multipart.NewReader(mr.Body, params["boundary"])
	for {
		p, err := r.NextPart()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatalf("draft MIME: %v", err)
		}
		if p.FileName() != "" {
			data, _ := io.ReadAll(base64.NewDecoder(base64.StdEncoding, p))
			if _, dup := got[p.FileName()]; dup {
				t.Errorf("%s both in the draft and attached", p.FileName())
			}
			got[p.FileName()] = data
		}
	}
	for i, want := range contents {
		name := fmt.Sprintf("file%d.bin", i+1)
		if !bytes.Equal(got[name], want) {
			t.Errorf("%s: %d bytes arrived, want %d identical", name, len(got[name]), len(want))
		}
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.uploadAuth != 0 {
		t.Errorf("%d upload PUTs carried an Authorization header", g.uploadAuth)
	}
	if len(g.drafts) != 0 {
		t.Errorf("drafts left: %d", len(g.drafts))
	}
}

func TestGraph413FallsBackToUpload(t *testing.T) {
	br, g, _, _ := graphBridge(t, "graph")
	g.set(func(g *stubGraph) { g.limit = 1_000_000 }) // refuses ~750 KB of MIME
	c := loginClient(t, br.addr, "otrs")
	msg, _ := bigMessage(t, "bob@contoso.com", 900_000)
	if _, err := send(c, "helpdesk@contoso.com", []string{"bob@contoso.com"}, msg); err != nil {
		t.Fatalf("send() = %v", err)
	}
	if s := g.Sent(); len(s) != 1 || s[0].Method != "draft" || len(s[0].Attachments) != 1 {
		t.Fatalf("sent %+v", s)
	}
	if !strings.Contains(br.logs.String(), "413") {
		t.Error("the 413 fallback is not logged")
	}
}

func TestGraphTooLargeToSplit(t *testing.T) {
	br, g, _, _ := graphBridge(t, "graph")
	c := loginClient(t, br.addr, "otrs")
	body := strings.Repeat("0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef\r\n", 60_000) // ~4 MB single part
	_, err := send(c, "helpdesk@contoso.com", []string{"bob@contoso.com"}, []byte("To: bob@contoso.com\r\nSubject: huge\r\n\r\n"+body))
	wantCode(t, "send(single part 4 MB)", err, 552, smtp.EnhancedCode{5, 3, 4})
	if len(g.Sent()) != 0 {
		t.Error("sent")
	}
}

func TestGraphSignedOrAlternativeNotSplit(t *testing.T) {
	br, g, _, _ := graphBridge(t, "graph")
	c := loginClient(t, br.addr, "otrs")
	for _, ct := range []string{"multipart/signed; protocol=\"application/pkcs7-signature\"", "multipart/alternative"} {
		msg, _ := bigMessage(t, "bob@contoso.com", 4_000_000)
		msg = bytes.Replace(msg, []byte("Content-Type: multipart/mixed"), []byte("Content-Type: "+ct), 1)
		_, err := send(c, "helpdesk@contoso.com", []string{"bob@contoso.com"}, msg)
		wantCode(t, "send("+ct+")", err, 552, smtp.EnhancedCode{5, 3, 4})
	}
	if len(g.Sent()) != 0 {
		t.Error("sent")
	}
}

func TestGraphLargeFailureDeletesDraft(t *testing.T) {
	br, g, _, _ := graphBridge(t, "graph")
	c := loginClient(t, br.addr, "otrs")
	msg, _ := bigMessage(t, "bob@contoso.com", 4_000_000)
	for _, tc := range []struct {
		on   string
		f    fault
		code int
		ec   smtp.EnhancedCode
	}{
		// The draft is created, then the upload session is refused
		// (Mail.ReadWrite missing) or /send is throttled.
		{"createUploadSession", fault{403, "ErrorAccessDenied", "Access is denied. Check credentials and try again.", ""}, 454, smtp.EnhancedCode{4, 7, 0}},
		{"send", fault{429, "ApplicationThrottled", "throttled", "600"}, 451, smtp.EnhancedCode{4, 7, 0}},
	} {
		g.set(func(g *stubGraph) { g.faultOn = map[string]fault{tc.on: tc.f}; g.deleted = nil })
		_, err := send(c, "helpdesk@contoso.com", []string{"bob@contoso.com"}, msg)
		wantCode(t, "send() with "+tc.on+" failing", err, tc.code, tc.ec)
		g.mu.Lock()
		left, deleted := len(g.drafts), len(g.deleted)
		g.mu.Unlock()
		if left != 0 || deleted != 1 || len(g.Sent()) != 0 {
			t.Errorf("%s: drafts left %d, deleted %d, sent %d", tc.on, left, deleted, len(g.Sent()))
		}
	}
	// A draft answered 202 instead of 201 is not taken for success.
	g.set(func(g *stubGraph) { g.faultOn = map[string]fault{"messages": {202, "", "", ""}} })
	if _, err := send(c, "helpdesk@contoso.com", []string{"bob@contoso.com"}, msg); err == nil {
		t.Fatal("a draft answered 202 instead of 201 was accepted")
	}
}

func TestAutoFallsBackToGraphOn5_7_139(t *testing.T) {
	br, g, ms, _ := graphBridge(t, "auto", "smtp:auto_smtp_recheck = \"1h\"")
	ms.set(func(s *stubMS) {
		s.authReply = &smtp.SMTPError{Code: 535, EnhancedCode: smtp.EnhancedCode{5, 7, 139}, Message: "Authentication unsuccessful, SmtpClientAuthentication is disabled for the Tenant. Visit https://aka.ms/smtp_auth_disabled for more information."}
	})
	before := testutil.ToFloat64(br.srv.m.SendPathSwitches.WithLabelValues("helpdesk", "graph"))
	c := loginClient(t, br.addr, "otrs")
	// The message that hit 5.7.139 is sent through Graph in the same transaction.
	if _, err := send(c, "helpdesk@contoso.com", []string{"bob@contoso.com"}, []byte("To: bob@contoso.com\r\nSubject: first\r\n\r\nx\r\n")); err != nil {
		t.Fatalf("send(first) = %v", err)
	}
	if s := g.Sent(); len(s) != 1 || !bytes.Contains(s[0].MIME, []byte("Subject: first")) {
		t.Fatalf("Graph got %+v", s)
	}
	// The next ones go straight to Graph: no more SMTP logins until the recheck.
	_, fail := ms.counts()
	c2 := loginClient(t, br.addr, "otrs")
	if _, err := send(c2, "helpdesk@contoso.com", []string{"bob@contoso.com"}, []byte("To: bob@contoso.com\r\nSubject: second\r\n\r\nx\r\n")); err != nil {
		t.Fatalf("send(second) = %v", err)
	}
	if _, fail2 := ms.counts(); fail2 != fail || len(g.Sent()) != 2 {
		t.Errorf("SMTP tried again (%d -> %d failures) or Graph got %d", fail, fail2, len(g.Sent()))
	}
	logs := br.logs.String()
	if strings.Count(logs, "switching this account to Microsoft Graph") != 1 || !strings.Contains(logs, "5.7.139") {
		t.Errorf("switch not logged exactly once with the reason:\n%s", logs)
	}
	if got := testutil.ToFloat64(br.srv.m.SendPathSwitches.WithLabelValues("helpdesk", "graph")) - before; got != 1 {
		t.Errorf("switch metric +%v", got)
	}
	if testutil.ToFloat64(br.srv.m.SendPath.WithLabelValues("helpdesk", "graph")) != 1 {
		t.Error("send path gauge not graph")
	}
}

func TestAutoRechecksSMTP(t *testing.T) {
	br, g, ms, _ := graphBridge(t, "auto", "smtp:auto_smtp_recheck = \"1ns\"")
	ms.set(func(s *stubMS) {
		s.authReply = &smtp.SMTPError{Code: 535, EnhancedCode: smtp.EnhancedCode{5, 7, 139}, Message: "Authentication unsuccessful, user is locked by your organization's security defaults policy."}
	})
	c := loginClient(t, br.addr, "otrs")
	if _, err := send(c, "helpdesk@contoso.com", []string{"bob@contoso.com"}, []byte("To: bob@contoso.com\r\n\r\n1\r\n")); err != nil {
		t.Fatalf("send(1) = %v", err)
	}
	// SMTP AUTH is enabled again; the recheck (due at once) finds it.
	ms.set(func(s *stubMS) { s.authReply = nil })
	c2 := loginClient(t, br.addr, "otrs")
	if _, err := send(c2, "helpdesk@contoso.com", []string{"bob@contoso.com"}, []byte("To: bob@contoso.com\r\n\r\n2\r\n")); err != nil {
		t.Fatalf("send(2) = %v", err)
	}
	if len(ms.Sent()) != 1 || len(g.Sent()) != 1 {
		t.Errorf("SMTP got %d, Graph %d; want 1 and 1", len(ms.Sent()), len(g.Sent()))
	}
	if !strings.Contains(br.logs.String(), "back on SMTP") {
		t.Error("switch back not logged")
	}
}

func TestAutoStaysOnSMTPForOtherAuthErrors(t *testing.T) {
	br, g, ms, _ := graphBridge(t, "auto")
	ms.set(func(s *stubMS) {
		s.authReply = &smtp.SMTPError{Code: 535, EnhancedCode: smtp.EnhancedCode{5, 7, 3}, Message: "Authentication unsuccessful"}
	})
	c := loginClient(t, br.addr, "otrs")
	err := c.Mail("helpdesk@contoso.com", nil)
	wantCode(t, "Mail()", err, 454, smtp.EnhancedCode{4, 7, 0})
	if len(g.Sent()) != 0 {
		t.Error("Graph used for a 5.7.3")
	}
}

// The cached SMTP connection dies while idle, and the re-dial at the first
// RCPT (MAIL goes up with it) finds SMTP AUTH disabled: with send_via =
// "auto" the transaction moves to Graph right there.
func TestAutoFallsBackToGraphAtPipelinedRedial(t *testing.T) {
	br, g, ms, _ := graphBridge(t, "auto", "smtp:auto_smtp_recheck = \"1h\"")
	c := loginClient(t, br.addr, "otrs")
	if _, err := send(c, "helpdesk@contoso.com", []string{"bob@contoso.com"}, []byte("To: bob@contoso.com\r\nSubject: first\r\n\r\nx\r\n")); err != nil {
		t.Fatalf("send(first) = %v", err)
	}
	ms.set(func(s *stubMS) {
		s.authReply = &smtp.SMTPError{Code: 535, EnhancedCode: smtp.EnhancedCode{5, 7, 139}, Message: "Authentication unsuccessful, SmtpClientAuthentication is disabled for the Tenant. Visit https://aka.ms/smtp_auth_disabled for more information."}
	})
	ms.dropConnections()
	if _, err := send(c, "helpdesk@contoso.com", []string{"bob@contoso.com", "carol@contoso.com"}, []byte("To: bob@contoso.com\r\nCc: carol@contoso.com\r\nSubject: second\r\n\r\nx\r\n")); err != nil {
		t.Fatalf("send(second) = %v", err)
	}
	if n := len(ms.Sent()); n != 1 {
		t.Errorf("SMTP got %d messages, want only the first", n)
	}
	s := g.Sent()
	if len(s) != 1 || !bytes.Contains(s[0].MIME, []byte("Subject: second")) {
		t.Fatalf("Graph got %+v", s)
	}
	if !strings.Contains(br.logs.String(), "switching this account to Microsoft Graph") {
		t.Errorf("switch not logged:\n%s", br.logs.String())
	}
}
