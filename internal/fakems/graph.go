package fakems

// The fake's Microsoft Graph mail endpoint (https://graph.microsoft.com/v1.0).
//
// Modelled, after Microsoft's documentation (user-sendmail.md,
// user-post-messages.md, outlook-large-attachments.md,
// outlook-send-mail-from-other-user.md, throttling-limits.md):
//
//   - Bearer tokens: only Graph tokens (audience https://graph.microsoft.com)
//     are accepted; an Outlook token gets 401 InvalidAuthenticationToken
//     "Access token validation failure. Invalid audience.". Delegated
//     permissions Mail.Send, Mail.Send.Shared, Mail.ReadWrite,
//     Mail.ReadWrite.Shared; application roles Mail.Send, Mail.ReadWrite.
//   - POST /v1.0/{users/{id|UPN}|me}/sendMail, MIME mode (text/plain,
//     base64) and a minimal JSON mode (subject, body, from, to/cc/bcc
//     recipients, saveToSentItems; attachments in JSON are refused with 400).
//     202 with an empty body. Request bodies over GraphMaxRequestBytes get
//     413. Recipients come from the To, Cc and Bcc headers (Graph has no
//     envelope); mailboxes of the fake among them get a copy without the Bcc
//     header in their INBOX; the sender's copy (with Bcc) goes to Sent Items.
//   - Drafts from MIME (POST .../messages), small file attachments (POST
//     .../messages/{id}/attachments), upload sessions (createUploadSession
//     plus ranged PUTs on a pre-authenticated URL that refuses an
//     Authorization header) and POST .../messages/{id}/send, which sends the
//     draft with its attachments as one multipart/mixed message.
//   - Send As / Send on Behalf / Full Access for delegates, application
//     access policies, "not enabled for REST", the mailbox's MaxSendSize,
//     aliases and SendFromAliasEnabled, the 4-concurrent-requests limit per
//     app and mailbox, and injected 429/503/500/hang faults.
//
// Not modelled: reading mail through Graph, reply/forward, JSON attachments,
// item attachments, S/MIME specifics, the 10,000 requests per 10 minutes and
// 150 MB per 5 minutes limits, $batch, national-cloud hosts, and
// "always save a copy" for delegates. The upload URL lives on the fake's
// Graph host (Microsoft's is on outlook.office.com). Draft attachments are
// kept beside the draft, not in the IMAP copy in Drafts.

import (
	"bytes"
	"crypto/subtle"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"mime"
	"net/http"
	"net/mail"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/emersion/go-imap/v2"
)

// Graph limits.
const (
	// GraphMaxRequestBytes is Graph's request-body limit (4 MB): larger
	// bodies, and larger upload-session chunks, get 413.
	GraphMaxRequestBytes = 4 << 20
	// DefaultMaxSendSize is Exchange Online's default MaxSendSize.
	DefaultMaxSendSize = 35 << 20
	// GraphMailboxConcurrency is Graph's limit of concurrent requests per
	// app and mailbox; one more gets 429 ApplicationThrottled.
	GraphMailboxConcurrency = 4
	// Attachment sizes an upload session accepts ("3 MB to 150 MB").
	uploadSessionMinSize = 3 << 20
	uploadSessionMaxSize = 150 << 20
	// uploadSessionLifetime is how long an upload URL stays valid.
	uploadSessionLifetime = 6 * time.Hour
	// drainLimit bounds how much of a refused (413) body is read so that
	// the client sees the answer rather than a reset connection.
	drainLimit = 200 << 20
)

// Routes, as counted by GraphRequests and GraphLastAuthorization.
const (
	RouteSendMail            = "sendMail"
	RouteCreateMessage       = "createMessage"
	RouteAddAttachment       = "addAttachment"
	RouteCreateUploadSession = "createUploadSession"
	RouteUploadChunk         = "uploadChunk"
	RouteSendDraft           = "sendDraft"
	RouteDeleteMessage       = "deleteMessage"
	RouteUnknown             = "unknown"
)

// GraphFault makes the Graph endpoint misbehave. It applies to requests
// that passed authentication (on upload URLs: that carried no
// Authorization header), after the per-mailbox concurrency check.
type GraphFault struct {
	// Status is the HTTP status to answer (429, 503, 500, ...).
	Status int
	// RetryAfter is the Retry-After header in seconds; 0 means 1 for 429
	// and 503 and none otherwise; negative means none.
	RetryAfter int
	// RetryAfterHeader, if set, is sent verbatim as Retry-After instead
	// (Graph's throttling docs show fractional values such as "2.128").
	RetryAfterHeader string
	// Code and Message are the Graph error; defaults per status:
	// 429 TooManyRequests "Please retry again later." (the throttling
	// docs' example), 503 ServiceNotAvailable, 500 InternalServerError.
	Code, Message string
	// Hang: never answer; the handler waits for the request's context (the
	// client giving up) or Close, then drops the connection.
	Hang bool
	// Hanging, if set, receives the route of each request that starts to
	// hang (a blocking send), so tests can wait for it.
	Hanging chan<- string
	// Count is how many requests get the fault; 0 means every request
	// until SetGraphFault(GraphFault{}).
	Count int
	// Route, if set (RouteSendMail, RouteUploadChunk, ...), limits the
	// fault to requests of that route; others are served normally.
	Route string
}

// GraphSentMessage is one message Graph accepted for sending.
type GraphSentMessage struct {
	Route      string   // RouteSendMail or RouteSendDraft
	Mailbox    string   // the mailbox in the URL (/users/{Mailbox} or the /me user)
	Principal  string   // the token's user (UPN) or, for app tokens, its client ID
	From       string   // the From address as delivered
	Recipients []string // all To, Cc and Bcc addresses, lower case
	Delivered  []string // mailboxes of the fake that got a copy in INBOX
	SentItems  string   // mailbox whose Sent Items got the copy ("" if none)
	Data       []byte   // the message as stored in Sent Items (with Bcc)
}

type graphState struct {
	released  *sync.Cond // on Fake.mu; broadcast when a request frees its concurrency slot
	fault     GraphFault
	faultLeft int
	counts    map[string]int    // "route status" -> requests
	lastAuth  map[string]string // route -> Authorization header of the last request
	inflight  map[string]int    // client ID + mailbox -> requests in progress
	peak      map[string]int    // mailbox -> most requests in progress at once (any app)
	sent      []GraphSentMessage
	drafts    map[string]*draft
	sessions  map[string]*uploadSession
}

func newGraphState() graphState {
	return graphState{
		counts:   make(map[string]int),
		lastAuth: make(map[string]string),
		inflight: make(map[string]int),
		peak:     make(map[string]int),
		drafts:   make(map[string]*draft),
		sessions: make(map[string]*uploadSession),
	}
}

type draft struct {
	id          string
	mailbox     *mailbox
	uid         imap.UID // in Drafts
	raw         []byte
	attachments []attachment
}

func (d *draft) size() int64 {
	n := int64(len(d.raw))
	for _, a := range d.attachments {
		n += int64(len(a.data))
	}
	return n
}

type attachment struct {
	id, name, contentType string
	data                  []byte
}

type uploadSession struct {
	id, authToken string
	draftID       string
	mailbox       string
	name, ctype   string
	size          int64
	data          []byte
	expires       time.Time
}

// ---- Knobs ----

// GraphURL returns the Graph endpoint's base URL, https://127.0.0.1:PORT
// (the equivalent of https://graph.microsoft.com; API paths start with
// /v1.0). Its certificate is signed by CAPEM.
func (f *Fake) GraphURL() string { return f.graphURL }

// GraphHTTPClient returns an HTTP client that trusts the fake's CA.
func (f *Fake) GraphHTTPClient() *http.Client {
	return &http.Client{Transport: &http.Transport{TLSClientConfig: f.ClientTLS()}}
}

// SetGraphFault sets (or, with GraphFault{}, clears) Graph fault injection.
func (f *Fake) SetGraphFault(fault GraphFault) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.graph.fault = fault
	f.graph.faultLeft = fault.Count
}

// SetRESTDisabled makes Graph answer requests for mailbox with 404
// MailboxNotEnabledForRESTAPI (an inactive, soft-deleted or on-premises
// mailbox).
func (f *Fake) SetRESTDisabled(mailbox string, disabled bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.mailboxLocked(mailbox).restDisabled = disabled
}

// SetAppAccessDenied makes an application access policy (or RBAC for
// Applications scope) deny clientID's app-only Graph requests for mailbox:
// 403 ErrorAccessDenied "Access to OData is disabled.".
func (f *Fake) SetAppAccessDenied(clientID, mailbox string, denied bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.mailboxLocked(mailbox).appDenied[clientID] = denied
}

// SetMaxSendSize sets mailbox's MaxSendSize in bytes (0 = DefaultMaxSendSize).
// Larger messages get 400 ErrorMessageSizeExceeded.
func (f *Fake) SetMaxSendSize(mailbox string, n int64) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.mailboxLocked(mailbox).maxSendSize = n
}

// AddAlias adds proxy addresses to mailbox: mail to them is delivered
// there; as a Graph From address see SetSendFromAliasEnabled.
func (f *Fake) AddAlias(mailbox string, aliases ...string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	mb := f.mailboxLocked(mailbox)
	for _, a := range aliases {
		mb.aliases[norm(a)] = true
	}
}

// SetSendFromAliasEnabled models Set-OrganizationConfig
// -SendFromAliasEnabled. Off (the default): a message sent through Graph
// whose From is an alias of the sending mailbox goes out from the primary
// address (the fake rewrites the From address, keeping the display name).
// On: the alias is kept.
func (f *Fake) SetSendFromAliasEnabled(on bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.sendFromAlias = on
}

// GrantSendAs gives trustee Send As on mailbox (Add-RecipientPermission).
// It is the same right AllowSendAs(trustee, mailbox) gives for SMTP.
func (f *Fake) GrantSendAs(mailbox, trustee string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.mailboxLocked(mailbox) // make sure it exists
	f.mailboxLocked(trustee).sendAs[norm(mailbox)] = true
}

// GrantSendOnBehalf gives trustee Send on Behalf on mailbox
// (GrantSendOnBehalfTo). Messages carry "Sender: trustee".
func (f *Fake) GrantSendOnBehalf(mailbox, trustee string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.mailboxLocked(mailbox).onBehalf[norm(trustee)] = true
}

// GrantFullAccess gives trustee Full Access on mailbox, like
// AddMailbox(mailbox, trustee).
func (f *Fake) GrantFullAccess(mailbox, trustee string) { f.AddMailbox(mailbox, trustee) }

// ---- Observability ----

// GraphRequests returns the Graph requests seen, keyed "route status"
// (for example "sendMail 202").
func (f *Fake) GraphRequests() map[string]int {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := make(map[string]int, len(f.graph.counts))
	for k, v := range f.graph.counts {
		out[k] = v
	}
	return out
}

// GraphRequestCount returns how many requests of route got status.
func (f *Fake) GraphRequestCount(route string, status int) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.graph.counts[route+" "+strconv.Itoa(status)]
}

// GraphLastAuthorization returns the Authorization header of the last
// request of route ("" if it had none) and whether route was seen at all.
func (f *Fake) GraphLastAuthorization(route string) (string, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	v, ok := f.graph.lastAuth[route]
	return v, ok
}

// GraphPeakConcurrency returns the most Graph API requests of one app that
// were in progress at once for mailbox (requests refused with
// MailboxConcurrency not counted), for tests of a client's own limit.
func (f *Fake) GraphPeakConcurrency(mailbox string) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.graph.peak[norm(mailbox)]
}

// GraphSent returns every message Graph accepted, in order.
func (f *Fake) GraphSent() []GraphSentMessage {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := make([]GraphSentMessage, len(f.graph.sent))
	for i, m := range f.graph.sent {
		m.Recipients = slices.Clone(m.Recipients)
		m.Delivered = slices.Clone(m.Delivered)
		m.Data = bytes.Clone(m.Data)
		out[i] = m
	}
	return out
}

// FolderMessages returns the raw messages currently in mailbox's folder
// ("INBOX", "Sent Items", "Drafts", ...), in UID order.
func (f *Fake) FolderMessages(mailbox, folder string) [][]byte {
	mb := f.lookupMailbox(mailbox)
	if mb == nil {
		return nil
	}
	f.storeMu.Lock()
	defer f.storeMu.Unlock()
	msgs, err := mb.folderMessagesLocked(canonFolder(folder))
	if err != nil {
		return nil
	}
	out := make([][]byte, len(msgs))
	for i, m := range msgs {
		out[i] = bytes.Clone(m.raw)
	}
	return out
}

// ---- HTTP plumbing ----

type statusWriter struct {
	http.ResponseWriter
	status int
}

func (w *statusWriter) WriteHeader(code int) {
	if w.status == 0 {
		w.status = code
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *statusWriter) Write(b []byte) (int, error) {
	if w.status == 0 {
		w.status = http.StatusOK
	}
	return w.ResponseWriter.Write(b)
}

// graphError writes Graph's error body:
// {"error":{"code","message","innerError":{"date","request-id","client-request-id"}}}.
func (f *Fake) graphError(w http.ResponseWriter, status int, code, msg string) {
	reqID := newGUID()
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("request-id", reqID)
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(map[string]any{"error": map[string]any{
		"code":    code,
		"message": msg,
		"innerError": map[string]any{
			"date":              f.now().UTC().Format("2006-01-02T15:04:05"),
			"request-id":        reqID,
			"client-request-id": reqID,
		},
	}})
}

func (f *Fake) graphJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json; odata.metadata=minimal; odata.streaming=true; IEEE754Compatible=false; charset=utf-8")
	w.Header().Set("request-id", newGUID())
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

// graphReq is an authenticated Graph API request.
type graphReq struct {
	at    accessToken // a copy
	mb    *mailbox    // the mailbox in the URL
	route string
}

func (g *graphReq) principal() string {
	if g.at.app {
		return g.at.clientID
	}
	return g.at.upn
}

func (g *graphReq) hasScope(s string) bool { return !g.at.app && slices.Contains(g.at.scopes, s) }
func (g *graphReq) hasRole(r string) bool  { return g.at.app && slices.Contains(g.at.roles, r) }

func (f *Fake) graphHandler() http.Handler {
	mux := http.NewServeMux()
	for _, base := range []string{"/v1.0/users/{user}", "/v1.0/me"} {
		mux.Handle("POST "+base+"/sendMail", f.graphAPI(RouteSendMail, f.handleSendMail))
		mux.Handle("POST "+base+"/messages", f.graphAPI(RouteCreateMessage, f.handleCreateMessage))
		mux.Handle("POST "+base+"/messages/{id}/attachments", f.graphAPI(RouteAddAttachment, f.handleAddAttachment))
		mux.Handle("POST "+base+"/messages/{id}/attachments/createUploadSession", f.graphAPI(RouteCreateUploadSession, f.handleCreateUploadSession))
		mux.Handle("POST "+base+"/messages/{id}/send", f.graphAPI(RouteSendDraft, f.handleSendDraft))
		mux.Handle("DELETE "+base+"/messages/{id}", f.graphAPI(RouteDeleteMessage, f.handleDeleteMessage))
	}
	mux.HandleFunc("PUT /api/v2.0/AttachmentSessions/{sid}", f.handleUploadChunk)
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		sw := &statusWriter{ResponseWriter: w}
		defer f.countGraph(RouteUnknown, r, sw)
		seg := r.URL.Path
		if i := strings.LastIndexByte(seg, '/'); i >= 0 {
			seg = seg[i+1:]
		}
		f.graphError(sw, http.StatusBadRequest, "BadRequest", fmt.Sprintf("Resource not found for the segment '%s'.", seg))
	})
	return mux
}

// countGraph records a request; status 0 means it was never answered
// (a hang fault).
func (f *Fake) countGraph(route string, r *http.Request, sw *statusWriter) {
	f.mu.Lock()
	f.graph.counts[route+" "+strconv.Itoa(sw.status)]++
	f.graph.lastAuth[route] = r.Header.Get("Authorization")
	f.mu.Unlock()
}

// graphAPI wraps a Graph API handler: bookkeeping, token and mailbox
// checks, the per-mailbox concurrency limit and fault injection.
func (f *Fake) graphAPI(route string, h func(http.ResponseWriter, *http.Request, *graphReq)) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		sw := &statusWriter{ResponseWriter: w}
		defer f.countGraph(route, r, sw)
		defer drainBody(r)
		log := f.log.With("proto", "graph", "route", route, "remote", r.RemoteAddr)

		at, status, code, msg := f.graphToken(r)
		if status != 0 {
			log.Info("fakems: graph request refused", "status", status, "error", msg)
			if status == http.StatusUnauthorized {
				sw.Header().Set("WWW-Authenticate", `Bearer realm="", authorization_uri="https://login.microsoftonline.com/common/oauth2/authorize", client_id="00000003-0000-0000-c000-000000000000"`)
			}
			f.graphError(sw, status, code, msg)
			return
		}
		g := &graphReq{at: at, route: route}

		f.mu.Lock()
		var mb *mailbox
		user := r.PathValue("user")
		switch {
		case user == "" && at.app:
			f.mu.Unlock()
			f.graphError(sw, http.StatusBadRequest, "BadRequest", "/me request is only valid with delegated authentication flow.")
			return
		case user == "":
			mb = f.mailboxes[at.upn]
		default:
			mb = f.mailboxByIDLocked(user)
		}
		if mb == nil {
			f.mu.Unlock()
			if user == "" {
				user = at.upn
			}
			f.graphError(sw, http.StatusNotFound, "ErrorInvalidUser", fmt.Sprintf("The requested user '%s' is invalid.", user))
			return
		}
		g.mb = mb
		if mb.restDisabled {
			f.mu.Unlock()
			f.graphError(sw, http.StatusNotFound, "MailboxNotEnabledForRESTAPI", "The mailbox is either inactive, soft-deleted, or is hosted on-premise.")
			return
		}
		if at.app && mb.appDenied[at.clientID] {
			f.mu.Unlock()
			f.graphError(sw, http.StatusForbidden, "ErrorAccessDenied", "Access to OData is disabled.")
			return
		}
		slot := at.clientID + "\x00" + mb.addr
		if f.graph.inflight[slot] >= GraphMailboxConcurrency {
			f.mu.Unlock()
			log.Info("fakems: graph mailbox concurrency limit", "mailbox", mb.addr)
			sw.Header().Set("Retry-After", "1")
			f.graphError(sw, http.StatusTooManyRequests, "ApplicationThrottled", "Application is over its MailboxConcurrency limit.")
			return
		}
		f.graph.inflight[slot]++
		f.graph.peak[mb.addr] = max(f.graph.peak[mb.addr], f.graph.inflight[slot])
		fault, faulty := f.takeFaultLocked(route)
		f.mu.Unlock()
		defer func() {
			f.mu.Lock()
			f.graph.inflight[slot]--
			f.graph.released.Broadcast()
			f.mu.Unlock()
		}()
		if faulty {
			f.applyFault(sw, r, route, fault)
			return
		}
		h(sw, r, g)
	})
}

// takeFaultLocked returns the fault for this request of route, if any.
func (f *Fake) takeFaultLocked(route string) (GraphFault, bool) {
	fl := f.graph.fault
	if (fl.Status == 0 && !fl.Hang) || (fl.Route != "" && fl.Route != route) {
		return fl, false
	}
	if fl.Count > 0 {
		f.graph.faultLeft--
		if f.graph.faultLeft <= 0 {
			f.graph.fault = GraphFault{}
		}
	}
	return fl, true
}

func (f *Fake) applyFault(w http.ResponseWriter, r *http.Request, route string, fl GraphFault) {
	if fl.Hang {
		f.log.Debug("fakems: graph request hanging (fault)", "route", route)
		// Read the whole body first: net/http notices a client that gave
		// up (and cancels r.Context) only once the body was consumed.
		drainBody(r)
		if fl.Hanging != nil {
			select {
			case fl.Hanging <- route:
			case <-r.Context().Done():
			case <-f.done:
			}
		}
		select {
		case <-r.Context().Done():
		case <-f.done:
		}
		panic(http.ErrAbortHandler)
	}
	code, msg := fl.Code, fl.Message
	retry := fl.RetryAfter
	switch fl.Status {
	case http.StatusTooManyRequests:
		code, msg = orDefault(code, "TooManyRequests"), orDefault(msg, "Please retry again later.")
	case http.StatusServiceUnavailable:
		code, msg = orDefault(code, "ServiceNotAvailable"), orDefault(msg, "The service is temporarily unavailable.")
	case http.StatusInternalServerError:
		code, msg = orDefault(code, "InternalServerError"), orDefault(msg, "An internal server error occurred.")
	default:
		code, msg = orDefault(code, "UnknownError"), orDefault(msg, http.StatusText(fl.Status))
	}
	if retry == 0 && (fl.Status == http.StatusTooManyRequests || fl.Status == http.StatusServiceUnavailable) {
		retry = 1
	}
	switch {
	case fl.RetryAfterHeader != "":
		w.Header().Set("Retry-After", fl.RetryAfterHeader)
	case retry > 0:
		w.Header().Set("Retry-After", strconv.Itoa(retry))
	}
	f.graphError(w, fl.Status, code, msg)
}

func orDefault(s, d string) string {
	if s == "" {
		return d
	}
	return s
}

// graphToken checks the bearer token of a Graph API request.
func (f *Fake) graphToken(r *http.Request) (at accessToken, status int, code, msg string) {
	const bad = "InvalidAuthenticationToken"
	h := r.Header.Get("Authorization")
	if len(h) < 7 || !strings.EqualFold(h[:7], "Bearer ") || strings.TrimSpace(h[7:]) == "" {
		return at, http.StatusUnauthorized, bad, "Access token is empty."
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	t := f.access[strings.TrimSpace(h[7:])]
	switch {
	case t == nil:
		return at, http.StatusUnauthorized, bad, "CompactToken parsing failed with error code: 80049217"
	case t.expired || !f.now().Before(t.expires):
		return at, http.StatusUnauthorized, bad, "Lifetime validation failed, the token is expired."
	case t.aud != audGraph:
		return at, http.StatusUnauthorized, bad, "Access token validation failure. Invalid audience."
	}
	return *t, 0, "", ""
}

// mailboxByIDLocked finds a mailbox by its primary address (UPN) or by its
// user's object ID, as /users/{id | userPrincipalName} does.
func (f *Fake) mailboxByIDLocked(id string) *mailbox {
	if mb := f.mailboxes[norm(id)]; mb != nil {
		return mb
	}
	for addr, mb := range f.mailboxes {
		if strings.EqualFold(oidFor(addr), id) {
			return mb
		}
	}
	return nil
}

// mailboxByAddressLocked finds the mailbox an address delivers to: its
// primary address or one of its aliases.
func (f *Fake) mailboxByAddressLocked(addr string) *mailbox {
	addr = norm(addr)
	if mb := f.mailboxes[addr]; mb != nil {
		return mb
	}
	for _, mb := range f.mailboxes {
		if mb.aliases[addr] {
			return mb
		}
	}
	return nil
}

// drainBody reads what is left of a request body (bounded), so that a
// client still writing a large body reads the answer instead of a reset
// connection when the fake answered early (401, 404, 413, ...).
func drainBody(r *http.Request) {
	_, _ = io.Copy(io.Discard, io.LimitReader(r.Body, drainLimit))
}

// readGraphBody reads a request body of at most GraphMaxRequestBytes. It
// answers 413 itself (after draining the body, so that the client reads
// the answer) and returns false.
func (f *Fake) readGraphBody(w http.ResponseWriter, r *http.Request) ([]byte, bool) {
	tooLarge := func() ([]byte, bool) {
		drainBody(r)
		f.graphError(w, http.StatusRequestEntityTooLarge, "RequestEntityTooLarge", "Maximum request length exceeded.")
		return nil, false
	}
	if r.ContentLength > GraphMaxRequestBytes {
		return tooLarge()
	}
	b, err := io.ReadAll(io.LimitReader(r.Body, GraphMaxRequestBytes+1))
	if err != nil {
		f.graphError(w, http.StatusBadRequest, "BadRequest", "The request body could not be read.")
		return nil, false
	}
	if len(b) > GraphMaxRequestBytes {
		return tooLarge()
	}
	return b, true
}

// mediaType returns the request's media type, lower case.
func mediaType(r *http.Request) string {
	mt, _, _ := mime.ParseMediaType(r.Header.Get("Content-Type"))
	return strings.ToLower(mt)
}

// decodeMIMEBody decodes a MIME-mode body: base64 of an RFC 5322 message.
// Whitespace and line breaks inside the base64 are ignored, as .NET's
// decoder does.
func (f *Fake) decodeMIMEBody(w http.ResponseWriter, body []byte) ([]byte, bool) {
	clean := bytes.Map(func(r rune) rune {
		if r == ' ' || r == '\t' || r == '\r' || r == '\n' {
			return -1
		}
		return r
	}, body)
	raw := make([]byte, base64.StdEncoding.DecodedLen(len(clean)))
	n, err := base64.StdEncoding.Decode(raw, clean)
	if err != nil || len(clean) == 0 {
		f.graphError(w, http.StatusBadRequest, "ErrorMimeContentInvalidBase64String", "Invalid base64 string for MIME content.")
		return nil, false
	}
	raw = raw[:n]
	if _, err := mail.ReadMessage(bytes.NewReader(raw)); err != nil {
		f.graphError(w, http.StatusBadRequest, "ErrorMimeContentInvalid", "Invalid MIME content.")
		return nil, false
	}
	return raw, true
}

// ---- sendMail ----

type jsonAddress struct {
	EmailAddress struct {
		Address string `json:"address"`
		Name    string `json:"name,omitempty"`
	} `json:"emailAddress"`
}

type jsonMessage struct {
	Subject string `json:"subject"`
	Body    struct {
		ContentType string `json:"contentType"`
		Content     string `json:"content"`
	} `json:"body"`
	From          *jsonAddress      `json:"from"`
	ToRecipients  []jsonAddress     `json:"toRecipients"`
	CcRecipients  []jsonAddress     `json:"ccRecipients"`
	BccRecipients []jsonAddress     `json:"bccRecipients"`
	Attachments   []json.RawMessage `json:"attachments"`
}

// mimeFromJSON builds an RFC 5322 message from a JSON message resource.
func mimeFromJSON(m *jsonMessage) ([]byte, error) {
	if len(m.Attachments) > 0 {
		return nil, fmt.Errorf("attachments in JSON mode are not supported by this fake")
	}
	var b bytes.Buffer
	addrs := func(name string, list []jsonAddress) {
		if len(list) == 0 {
			return
		}
		parts := make([]string, len(list))
		for i, a := range list {
			parts[i] = (&mail.Address{Name: a.EmailAddress.Name, Address: a.EmailAddress.Address}).String()
		}
		fmt.Fprintf(&b, "%s: %s\r\n", name, strings.Join(parts, ", "))
	}
	if m.From != nil {
		addrs("From", []jsonAddress{*m.From})
	}
	addrs("To", m.ToRecipients)
	addrs("Cc", m.CcRecipients)
	addrs("Bcc", m.BccRecipients)
	fmt.Fprintf(&b, "Subject: %s\r\n", mime.QEncoding.Encode("utf-8", m.Subject))
	ct := "text/plain"
	if strings.EqualFold(m.Body.ContentType, "html") {
		ct = "text/html"
	}
	fmt.Fprintf(&b, "MIME-Version: 1.0\r\nContent-Type: %s; charset=utf-8\r\nContent-Transfer-Encoding: base64\r\n\r\n", ct)
	writeBase64Lines(&b, []byte(m.Body.Content))
	return b.Bytes(), nil
}

func writeBase64Lines(b *bytes.Buffer, data []byte) {
	enc := base64.StdEncoding.EncodeToString(data)
	for len(enc) > 76 {
		b.WriteString(enc[:76])
		b.WriteString("\r\n")
		enc = enc[76:]
	}
	if enc != "" {
		b.WriteString(enc)
		b.WriteString("\r\n")
	}
}

func (f *Fake) handleSendMail(w http.ResponseWriter, r *http.Request, g *graphReq) {
	body, ok := f.readGraphBody(w, r)
	if !ok {
		return
	}
	var raw []byte
	save := true
	switch mediaType(r) {
	case "text/plain":
		if raw, ok = f.decodeMIMEBody(w, body); !ok {
			return
		}
	case "application/json":
		var req struct {
			Message         *jsonMessage `json:"message"`
			SaveToSentItems *bool        `json:"saveToSentItems"`
		}
		if err := json.Unmarshal(body, &req); err != nil || req.Message == nil {
			f.graphError(w, http.StatusBadRequest, "ErrorInvalidRequest", "Cannot read the request body.")
			return
		}
		var err error
		if raw, err = mimeFromJSON(req.Message); err != nil {
			f.graphError(w, http.StatusBadRequest, "ErrorInvalidRequest", err.Error())
			return
		}
		if req.SaveToSentItems != nil {
			save = *req.SaveToSentItems
		}
	default:
		f.graphError(w, http.StatusBadRequest, "ErrorInvalidRequest", "Unsupported Content-Type; use text/plain (base64 MIME) or application/json.")
		return
	}
	if f.submit(w, g, raw, save) {
		w.WriteHeader(http.StatusAccepted)
	}
}

const msgAccessDenied = "Access is denied. Check credentials and try again."

// sendRightLocked reports whether who (the delegated user, or for app
// tokens the URL mailbox) has Send As or Send on Behalf on mb.
func (f *Fake) sendRightLocked(who string, mb *mailbox) (sendAs, onBehalf bool) {
	if mb.addr == who {
		return true, false
	}
	if m := f.mailboxes[who]; m != nil && m.sendAs[mb.addr] {
		return true, false
	}
	return false, mb.onBehalf[who]
}

// submit checks the sending rights and delivers raw as Graph would. It
// writes the error answer itself and returns false on failure; on success
// the caller writes 202.
//
// Rules modelled (outlook-send-mail-from-other-user.md):
//   - Delegated, /users/{self} or /me: Mail.Send. /users/{other}:
//     Mail.Send.Shared, and the user needs Send As or Send on Behalf on the
//     other mailbox, else 403 ErrorSendAsDenied.
//   - A From header naming another mailbox needs Send As / Send on Behalf
//     of the user (delegated) or of the URL mailbox (app) on it; a From
//     outside the tenant is ErrorSendAsDenied too.
//   - A From that is an alias of the URL mailbox: the primary address is
//     used unless SendFromAliasEnabled.
//   - App: role Mail.Send sends as any user the application access policy
//     allows.
//   - Sent Items: the signed-in user's for /me and /users/{self}; for
//     /users/{other}, the other mailbox's if the user has Full Access on it,
//     else the user's own. App tokens: the URL mailbox's.
func (f *Fake) submit(w http.ResponseWriter, g *graphReq, raw []byte, save bool) bool {
	p, ok := f.planSend(w, g, raw, save)
	if !ok {
		return false
	}
	// The store is changed outside f.mu: appendRaw takes storeMu only.
	for _, m := range p.local {
		if err := f.appendRaw(m, "INBOX", p.delivered, nil); err != nil {
			f.log.Warn("fakems: graph local delivery failed", "error", err)
		}
	}
	if p.sentIn != nil {
		_ = f.appendRaw(p.sentIn, "Sent Items", p.out, &imap.AppendOptions{Flags: []imap.Flag{imap.FlagSeen}})
	}
	f.log.Info("fakems: graph message sent", "route", g.route, "mailbox", g.mb.addr, "principal", g.principal(), "bytes", len(p.out), "local_rcpts", len(p.local))
	return true
}

type sendPlan struct {
	local          []*mailbox
	out, delivered []byte
	sentIn         *mailbox
}

func (f *Fake) planSend(w http.ResponseWriter, g *graphReq, raw []byte, save bool) (*sendPlan, bool) {
	msg, err := mail.ReadMessage(bytes.NewReader(raw))
	if err != nil {
		f.graphError(w, http.StatusBadRequest, "ErrorMimeContentInvalid", "Invalid MIME content.")
		return nil, false
	}
	mb := g.mb

	f.mu.Lock()
	defer f.mu.Unlock()
	maxSize := mb.maxSendSize
	if maxSize <= 0 {
		maxSize = DefaultMaxSendSize
	}
	if int64(len(raw)) > maxSize {
		f.graphError(w, http.StatusBadRequest, "ErrorMessageSizeExceeded", "The message exceeds the maximum supported size.")
		return nil, false
	}

	// Permission to send from the URL mailbox at all.
	self := !g.at.app && mb.addr == g.at.upn
	switch {
	case g.at.app:
		if !g.hasRole(RoleMailSend) {
			f.graphError(w, http.StatusForbidden, "ErrorAccessDenied", msgAccessDenied)
			return nil, false
		}
	case self:
		if !g.hasScope(ScopeGraphMailSend) {
			f.graphError(w, http.StatusForbidden, "ErrorAccessDenied", msgAccessDenied)
			return nil, false
		}
	default:
		if !g.hasScope(ScopeGraphMailSendShared) {
			f.graphError(w, http.StatusForbidden, "ErrorAccessDenied", msgAccessDenied)
			return nil, false
		}
	}
	sendAsDenied := func() (*sendPlan, bool) {
		f.graphError(w, http.StatusForbidden, "ErrorSendAsDenied", "The user account which was used to submit this request does not have the right to send mail on behalf of the specified sending account., Cannot submit message.")
		return nil, false
	}
	actor := g.at.upn // whose rights count
	if g.at.app {
		actor = mb.addr
	}
	var onBehalfOf []string
	if !g.at.app && !self {
		sa, ob := f.sendRightLocked(actor, mb)
		if !sa && !ob {
			return sendAsDenied()
		}
		if !sa {
			onBehalfOf = append(onBehalfOf, mb.addr)
		}
	}

	// The From header.
	hdr := msg.Header
	fromAddr := mb.addr
	var fromName string
	rewriteFrom := hdr.Get("From") == ""
	if hdr.Get("From") != "" {
		list, err := addressParser.ParseList(hdr.Get("From"))
		if err != nil || len(list) != 1 {
			f.graphError(w, http.StatusBadRequest, "ErrorInvalidRecipients", "The From address isn't valid.")
			return nil, false
		}
		fromAddr, fromName = norm(list[0].Address), list[0].Name
		switch {
		case fromAddr == mb.addr:
		case mb.aliases[fromAddr]:
			if !f.sendFromAlias {
				fromAddr, rewriteFrom = mb.addr, true
			}
		default:
			fm := f.mailboxByAddressLocked(fromAddr)
			if fm == nil {
				return sendAsDenied()
			}
			sa, ob := f.sendRightLocked(actor, fm)
			if !sa && !ob {
				return sendAsDenied()
			}
			if !sa {
				onBehalfOf = append(onBehalfOf, fm.addr)
			}
		}
	}

	// Recipients from the headers.
	var rcpts []string
	for _, h := range []string{"To", "Cc", "Bcc"} {
		if hdr.Get(h) == "" {
			continue
		}
		list, err := addressParser.ParseList(hdr.Get(h))
		if err != nil {
			f.graphError(w, http.StatusBadRequest, "ErrorInvalidRecipients", "At least one recipient isn't valid.")
			return nil, false
		}
		for _, a := range list {
			if n := norm(a.Address); !slices.Contains(rcpts, n) {
				rcpts = append(rcpts, n)
			}
		}
	}
	if len(rcpts) == 0 {
		f.graphError(w, http.StatusBadRequest, "ErrorInvalidRecipients", "At least one recipient isn't valid., A message can't be sent because it contains no recipients.")
		return nil, false
	}

	// The message as sent.
	out := raw
	if rewriteFrom {
		out = setHeader(out, "From", (&mail.Address{Name: fromName, Address: fromAddr}).String())
	}
	if len(onBehalfOf) > 0 && !g.at.app {
		out = setHeader(out, "Sender", g.at.upn)
	}
	if hdr.Get("Message-ID") == "" {
		out = setHeader(out, "Message-ID", "<"+randomToken(18)+"@"+strings.ToUpper(smtpDomain)+">")
	}
	if hdr.Get("Date") == "" {
		out = setHeader(out, "Date", f.now().Format(time.RFC1123Z))
	}
	delivered := removeHeader(out, "Bcc")

	var local []*mailbox
	var names []string
	for _, a := range rcpts {
		if m := f.mailboxByAddressLocked(a); m != nil && !slices.Contains(local, m) {
			local = append(local, m)
			names = append(names, m.addr)
		}
	}
	var sentIn *mailbox
	if save {
		switch {
		case g.at.app, self:
			sentIn = mb
		case mb.delegates[g.at.upn]:
			sentIn = mb
		default:
			sentIn = f.mailboxes[g.at.upn]
		}
	}
	rec := GraphSentMessage{
		Route: g.route, Mailbox: mb.addr, Principal: g.principal(), From: fromAddr,
		Recipients: rcpts, Delivered: names, Data: bytes.Clone(out),
	}
	if sentIn != nil {
		rec.SentItems = sentIn.addr
	}
	f.graph.sent = append(f.graph.sent, rec)
	return &sendPlan{local: local, out: out, delivered: delivered, sentIn: sentIn}, true
}

// addressParser parses address lists whatever charset their display names
// are encoded in (net/mail alone knows only UTF-8, ISO-8859-1 and ASCII).
var addressParser = &mail.AddressParser{WordDecoder: &mime.WordDecoder{
	CharsetReader: func(_ string, r io.Reader) (io.Reader, error) { return r, nil },
}}

// ---- Header helpers (raw bytes, folding preserved) ----

// splitHeader splits raw into header fields (each with its folded lines and
// line endings) and the body after the blank line. eol is the line ending
// the header uses.
func splitHeader(raw []byte) (fields [][]byte, body []byte, eol string) {
	eol = "\r\n"
	rest := raw
	for len(rest) > 0 {
		i := bytes.IndexByte(rest, '\n')
		var line []byte
		if i < 0 {
			line, rest = rest, nil
		} else {
			line, rest = rest[:i+1], rest[i+1:]
		}
		if len(fields) == 0 && !bytes.HasSuffix(line, []byte("\r\n")) && bytes.HasSuffix(line, []byte("\n")) {
			eol = "\n"
		}
		if len(bytes.TrimRight(line, "\r\n")) == 0 {
			return fields, rest, eol
		}
		if (line[0] == ' ' || line[0] == '\t') && len(fields) > 0 {
			fields[len(fields)-1] = append(fields[len(fields)-1], line...)
			continue
		}
		fields = append(fields, bytes.Clone(line))
	}
	return fields, nil, eol
}

func fieldName(field []byte) string {
	name, _, _ := bytes.Cut(field, []byte(":"))
	return strings.TrimSpace(string(name))
}

func joinHeader(fields [][]byte, body []byte, eol string) []byte {
	var b bytes.Buffer
	for _, f := range fields {
		b.Write(f)
	}
	b.WriteString(eol)
	b.Write(body)
	return b.Bytes()
}

// removeHeader returns raw without any field called name.
func removeHeader(raw []byte, name string) []byte {
	fields, body, eol := splitHeader(raw)
	kept := fields[:0]
	for _, f := range fields {
		if !strings.EqualFold(fieldName(f), name) {
			kept = append(kept, f)
		}
	}
	return joinHeader(kept, body, eol)
}

// setHeader replaces the fields called name by one "name: value", at the
// place of the first one, or adds it at the top.
func setHeader(raw []byte, name, value string) []byte {
	fields, body, eol := splitHeader(raw)
	line := []byte(name + ": " + value + eol)
	out := make([][]byte, 0, len(fields)+1)
	done := false
	for _, f := range fields {
		if strings.EqualFold(fieldName(f), name) {
			if !done {
				out = append(out, line)
				done = true
			}
			continue
		}
		out = append(out, f)
	}
	if !done {
		out = append([][]byte{line}, out...)
	}
	return joinHeader(out, body, eol)
}

// ---- Drafts and attachments ----

// checkReadWrite checks the permission to create and change drafts.
// Delegated: Mail.ReadWrite on one's own mailbox; Mail.ReadWrite.Shared and
// Full Access on another. App: role Mail.ReadWrite.
func (f *Fake) checkReadWrite(w http.ResponseWriter, g *graphReq) bool {
	ok := false
	switch {
	case g.at.app:
		ok = g.hasRole(RoleMailReadWrite)
	case g.mb.addr == g.at.upn:
		ok = g.hasScope(ScopeGraphMailReadWrite)
	default:
		f.mu.Lock()
		full := g.mb.delegates[g.at.upn]
		f.mu.Unlock()
		ok = full && g.hasScope(ScopeGraphMailReadWriteShared)
	}
	if !ok {
		f.graphError(w, http.StatusForbidden, "ErrorAccessDenied", msgAccessDenied)
	}
	return ok
}

func (f *Fake) lookupDraft(w http.ResponseWriter, r *http.Request, g *graphReq) *draft {
	f.mu.Lock()
	d := f.graph.drafts[r.PathValue("id")]
	f.mu.Unlock()
	if d == nil || d.mailbox != g.mb {
		f.graphError(w, http.StatusNotFound, "ErrorItemNotFound", "The specified object was not found in the store.")
		return nil
	}
	return d
}

func (f *Fake) maxSendSizeLocked(mb *mailbox) int64 {
	if mb.maxSendSize > 0 {
		return mb.maxSendSize
	}
	return DefaultMaxSendSize
}

func (f *Fake) handleCreateMessage(w http.ResponseWriter, r *http.Request, g *graphReq) {
	if !f.checkReadWrite(w, g) {
		return
	}
	body, ok := f.readGraphBody(w, r)
	if !ok {
		return
	}
	var raw []byte
	switch mediaType(r) {
	case "text/plain":
		if raw, ok = f.decodeMIMEBody(w, body); !ok {
			return
		}
	case "application/json":
		var m jsonMessage
		if err := json.Unmarshal(body, &m); err != nil {
			f.graphError(w, http.StatusBadRequest, "ErrorInvalidRequest", "Cannot read the request body.")
			return
		}
		var err error
		if raw, err = mimeFromJSON(&m); err != nil {
			f.graphError(w, http.StatusBadRequest, "ErrorInvalidRequest", err.Error())
			return
		}
	default:
		f.graphError(w, http.StatusBadRequest, "ErrorInvalidRequest", "Unsupported Content-Type; use text/plain (base64 MIME) or application/json.")
		return
	}
	f.storeMu.Lock()
	data, err := g.mb.appendLocked("Drafts", raw, &imap.AppendOptions{Flags: []imap.Flag{imap.FlagDraft}})
	f.storeMu.Unlock()
	if err != nil {
		f.graphError(w, http.StatusInternalServerError, "ErrorInternalServerError", "The draft could not be saved.")
		return
	}
	d := &draft{id: "AAMkAG" + randomToken(30), mailbox: g.mb, uid: data.UID, raw: raw}
	f.mu.Lock()
	f.graph.drafts[d.id] = d
	f.mu.Unlock()
	msg, _ := mail.ReadMessage(bytes.NewReader(raw))
	subject := ""
	if msg != nil {
		subject, _ = new(mime.WordDecoder).DecodeHeader(msg.Header.Get("Subject"))
	}
	f.graphJSON(w, http.StatusCreated, map[string]any{
		"@odata.context":  f.graphURL + "/v1.0/$metadata#users('" + g.mb.addr + "')/messages/$entity",
		"id":              d.id,
		"createdDateTime": f.now().UTC().Format(time.RFC3339),
		"subject":         subject,
		"isDraft":         true,
		"hasAttachments":  false,
	})
}

func (f *Fake) handleAddAttachment(w http.ResponseWriter, r *http.Request, g *graphReq) {
	if !f.checkReadWrite(w, g) {
		return
	}
	d := f.lookupDraft(w, r, g)
	if d == nil {
		return
	}
	body, ok := f.readGraphBody(w, r)
	if !ok {
		return
	}
	var req struct {
		Type         string `json:"@odata.type"`
		Name         string `json:"name"`
		ContentType  string `json:"contentType"`
		ContentBytes string `json:"contentBytes"`
	}
	if err := json.Unmarshal(body, &req); err != nil || !strings.HasPrefix(mediaType(r), "application/json") {
		f.graphError(w, http.StatusBadRequest, "ErrorInvalidRequest", "Cannot read the request body.")
		return
	}
	if req.Type != "#microsoft.graph.fileAttachment" {
		f.graphError(w, http.StatusBadRequest, "ErrorInvalidRequest", "Only #microsoft.graph.fileAttachment is supported by this fake.")
		return
	}
	data, err := base64.StdEncoding.DecodeString(req.ContentBytes)
	if err != nil {
		f.graphError(w, http.StatusBadRequest, "ErrorInvalidRequest", "Invalid base64 string for contentBytes.")
		return
	}
	if req.ContentType == "" {
		req.ContentType = "application/octet-stream"
	}
	a := attachment{id: "AAMkAGatt" + randomToken(18), name: req.Name, contentType: req.ContentType, data: data}
	f.mu.Lock()
	if d.size()+int64(len(data)) > f.maxSendSizeLocked(g.mb) {
		f.mu.Unlock()
		f.graphError(w, http.StatusBadRequest, "ErrorMessageSizeExceeded", "The message exceeds the maximum supported size.")
		return
	}
	d.attachments = append(d.attachments, a)
	f.mu.Unlock()
	f.graphJSON(w, http.StatusCreated, map[string]any{
		"@odata.type": "#microsoft.graph.fileAttachment",
		"id":          a.id,
		"name":        a.name,
		"contentType": a.contentType,
		"size":        len(data),
		"isInline":    false,
	})
}

func (f *Fake) handleCreateUploadSession(w http.ResponseWriter, r *http.Request, g *graphReq) {
	if !f.checkReadWrite(w, g) {
		return
	}
	d := f.lookupDraft(w, r, g)
	if d == nil {
		return
	}
	body, ok := f.readGraphBody(w, r)
	if !ok {
		return
	}
	var req struct {
		AttachmentItem *struct {
			AttachmentType string `json:"attachmentType"`
			Name           string `json:"name"`
			Size           int64  `json:"size"`
			ContentType    string `json:"contentType"`
		} `json:"AttachmentItem"`
	}
	if err := json.Unmarshal(body, &req); err != nil || req.AttachmentItem == nil {
		f.graphError(w, http.StatusBadRequest, "ErrorInvalidRequest", "Cannot read the request body.")
		return
	}
	it := req.AttachmentItem
	if !strings.EqualFold(it.AttachmentType, "file") || it.Name == "" {
		f.graphError(w, http.StatusBadRequest, "ErrorInvalidRequest", "AttachmentItem must have attachmentType \"file\" and a name.")
		return
	}
	if it.Size < uploadSessionMinSize {
		f.graphError(w, http.StatusBadRequest, "ErrorAttachmentSizeShouldNotBeLessThanMinimumSize", "Attachment size must be greater than the minimum size.")
		return
	}
	f.mu.Lock()
	if it.Size > uploadSessionMaxSize || d.size()+it.Size > f.maxSendSizeLocked(g.mb) {
		f.mu.Unlock()
		f.graphError(w, http.StatusBadRequest, "ErrorMessageSizeExceeded", "The message exceeds the maximum supported size.")
		return
	}
	s := &uploadSession{
		id: "AAMkAGses" + randomToken(18), authToken: randomToken(48), draftID: d.id, mailbox: g.mb.addr,
		name: it.Name, ctype: orDefault(it.ContentType, "application/octet-stream"), size: it.Size,
		expires: f.now().Add(uploadSessionLifetime),
	}
	f.graph.sessions[s.id] = s
	f.mu.Unlock()
	f.graphJSON(w, http.StatusCreated, map[string]any{
		"@odata.context":     f.graphURL + "/v1.0/$metadata#microsoft.graph.uploadSession",
		"uploadUrl":          f.graphURL + "/api/v2.0/AttachmentSessions/" + s.id + "?authtoken=" + s.authToken,
		"expirationDateTime": s.expires.UTC().Format(time.RFC3339Nano),
		"nextExpectedRanges": []string{"0-"},
	})
}

// handleUploadChunk takes one ranged PUT on an upload URL. The URL is
// pre-authenticated: a request with an Authorization header is refused.
// Ranges must start where nextExpectedRanges says (else 416), lie inside
// the declared size and match Content-Length (else 400); a chunk of
// GraphMaxRequestBytes or more gets 413 ("keep each byte range less than
// 4 MB").
func (f *Fake) handleUploadChunk(w http.ResponseWriter, r *http.Request) {
	sw := &statusWriter{ResponseWriter: w}
	defer f.countGraph(RouteUploadChunk, r, sw)
	defer drainBody(r)
	if r.Header.Get("Authorization") != "" {
		f.graphError(sw, http.StatusUnauthorized, "InvalidAuthenticationToken", "The upload URL is pre-authenticated; the request must not carry an Authorization header.")
		return
	}
	f.mu.Lock()
	s := f.graph.sessions[r.PathValue("sid")]
	fault, faulty := f.takeFaultLocked(RouteUploadChunk)
	f.mu.Unlock()
	if s == nil || subtle.ConstantTimeCompare([]byte(r.URL.Query().Get("authtoken")), []byte(s.authToken)) != 1 || !f.now().Before(s.expires) {
		f.graphError(sw, http.StatusNotFound, "ErrorItemNotFound", "The upload session was not found or has expired.")
		return
	}
	if faulty {
		f.applyFault(sw, r, RouteUploadChunk, fault)
		return
	}
	if r.ContentLength >= GraphMaxRequestBytes {
		// "keep each byte range less than 4 MB"
		drainBody(r)
		f.graphError(sw, http.StatusRequestEntityTooLarge, "RequestEntityTooLarge", "Maximum request length exceeded.")
		return
	}
	var a, b, total int64
	cr := r.Header.Get("Content-Range")
	if _, err := fmt.Sscanf(cr, "bytes %d-%d/%d", &a, &b, &total); err != nil || a < 0 || b < a {
		f.graphError(sw, http.StatusBadRequest, "InvalidContentRange", fmt.Sprintf("The Content-Range header %q is not valid.", cr))
		return
	}
	if r.ContentLength < 0 {
		f.graphError(sw, http.StatusLengthRequired, "LengthRequired", "The Content-Length header is required.")
		return
	}
	if total != s.size || b >= total || b-a+1 != r.ContentLength {
		f.graphError(sw, http.StatusBadRequest, "InvalidContentRange", fmt.Sprintf("The Content-Range %q does not match the session size %d or the Content-Length %d.", cr, s.size, r.ContentLength))
		return
	}
	f.mu.Lock()
	next := int64(len(s.data))
	f.mu.Unlock()
	if a != next {
		f.graphError(sw, http.StatusRequestedRangeNotSatisfiable, "InvalidRange", fmt.Sprintf("The uploaded range %d-%d does not match the next expected range %d-.", a, b, next))
		return
	}
	chunk, err := io.ReadAll(io.LimitReader(r.Body, r.ContentLength+1))
	if err != nil || int64(len(chunk)) != r.ContentLength {
		f.graphError(sw, http.StatusBadRequest, "InvalidContentRange", "The body does not match Content-Length.")
		return
	}
	f.mu.Lock()
	if int64(len(s.data)) != a || f.graph.sessions[s.id] != s {
		f.mu.Unlock()
		f.graphError(sw, http.StatusRequestedRangeNotSatisfiable, "InvalidRange", "A concurrent upload changed the next expected range.")
		return
	}
	s.data = append(s.data, chunk...)
	if int64(len(s.data)) < s.size {
		next := len(s.data)
		f.mu.Unlock()
		f.graphJSON(sw, http.StatusOK, map[string]any{
			"@odata.context":     f.graphURL + "/v1.0/$metadata#microsoft.graph.uploadSession",
			"expirationDateTime": s.expires.UTC().Format(time.RFC3339Nano),
			"nextExpectedRanges": []string{strconv.Itoa(next) + "-"},
		})
		return
	}
	delete(f.graph.sessions, s.id)
	d := f.graph.drafts[s.draftID]
	att := attachment{id: "AAMkAGatt" + randomToken(18), name: s.name, contentType: s.ctype, data: s.data}
	if d != nil {
		d.attachments = append(d.attachments, att)
	}
	f.mu.Unlock()
	if d == nil {
		f.graphError(sw, http.StatusNotFound, "ErrorItemNotFound", "The message of this upload session no longer exists.")
		return
	}
	sw.Header().Set("Location", f.graphURL+"/v1.0/users/"+s.mailbox+"/messages/"+s.draftID+"/attachments/"+att.id)
	sw.WriteHeader(http.StatusCreated)
}

func (f *Fake) handleSendDraft(w http.ResponseWriter, r *http.Request, g *graphReq) {
	d := f.lookupDraft(w, r, g)
	if d == nil {
		return
	}
	_, _ = io.Copy(io.Discard, io.LimitReader(r.Body, GraphMaxRequestBytes))
	f.mu.Lock()
	raw := d.raw
	atts := slices.Clone(d.attachments)
	f.mu.Unlock()
	if len(atts) > 0 {
		raw = withAttachments(raw, atts)
	}
	if !f.submit(w, g, raw, true) {
		return
	}
	f.mu.Lock()
	delete(f.graph.drafts, d.id)
	f.mu.Unlock()
	f.storeMu.Lock()
	_ = d.mailbox.expungeLocked("Drafts", []imap.UID{d.uid})
	f.storeMu.Unlock()
	w.WriteHeader(http.StatusAccepted)
}

// handleDeleteMessage deletes a draft (the only messages the fake's Graph
// knows by ID): 204, and it leaves Drafts. Open upload sessions of the
// draft end with it.
func (f *Fake) handleDeleteMessage(w http.ResponseWriter, r *http.Request, g *graphReq) {
	if !f.checkReadWrite(w, g) {
		return
	}
	d := f.lookupDraft(w, r, g)
	if d == nil {
		return
	}
	f.mu.Lock()
	delete(f.graph.drafts, d.id)
	for id, s := range f.graph.sessions {
		if s.draftID == d.id {
			delete(f.graph.sessions, id)
		}
	}
	f.mu.Unlock()
	f.storeMu.Lock()
	_ = d.mailbox.expungeLocked("Drafts", []imap.UID{d.uid})
	f.storeMu.Unlock()
	w.WriteHeader(http.StatusNoContent)
}

// withAttachments re-assembles a draft and its attachments as one
// multipart/mixed message: the draft's body becomes the first part.
func withAttachments(raw []byte, atts []attachment) []byte {
	fields, body, eol := splitHeader(raw)
	var top, content [][]byte
	for _, f := range fields {
		switch strings.ToLower(fieldName(f)) {
		case "content-type", "content-transfer-encoding", "content-disposition":
			content = append(content, f)
		case "mime-version":
		default:
			top = append(top, f)
		}
	}
	boundary := "_fakems_" + randomToken(18)
	var b bytes.Buffer
	for _, f := range top {
		b.Write(bytes.TrimRight(f, "\r\n"))
		b.WriteString("\r\n")
	}
	b.WriteString("MIME-Version: 1.0\r\n")
	b.WriteString("Content-Type: " + mime.FormatMediaType("multipart/mixed", map[string]string{"boundary": boundary}) + "\r\n\r\n")
	b.WriteString("--" + boundary + "\r\n")
	if len(content) == 0 {
		b.WriteString("Content-Type: text/plain; charset=us-ascii\r\n")
	}
	for _, f := range content {
		b.Write(bytes.TrimRight(f, "\r\n"))
		b.WriteString("\r\n")
	}
	b.WriteString("\r\n")
	if eol == "\n" {
		body = bytes.ReplaceAll(body, []byte("\n"), []byte("\r\n"))
	}
	b.Write(body)
	if !bytes.HasSuffix(body, []byte("\r\n")) {
		b.WriteString("\r\n")
	}
	for _, a := range atts {
		b.WriteString("--" + boundary + "\r\n")
		ct := mime.FormatMediaType(a.contentType, map[string]string{"name": a.name})
		if ct == "" {
			ct = "application/octet-stream"
		}
		b.WriteString("Content-Type: " + ct + "\r\n")
		b.WriteString("Content-Disposition: " + mime.FormatMediaType("attachment", map[string]string{"filename": a.name}) + "\r\n")
		b.WriteString("Content-Transfer-Encoding: base64\r\n\r\n")
		writeBase64Lines(&b, a.data)
	}
	b.WriteString("--" + boundary + "--\r\n")
	return b.Bytes()
}
