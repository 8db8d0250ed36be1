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
// Reading mail (folders, messages, $value, delta, PATCH, move, copy,
// delete, immutable ids) is in graph_read.go.
//
// Not modelled: reply/forward, JSON attachments,
// item attachments, S/MIME specifics, the 10,000 requests per 10 minutes and
// 150 MB per 5 minutes limits, $batch, national-cloud hosts, and
// "always save a copy" for delegates. The upload URL lives on the fake's
// Graph host (Microsoft's is on outlook.office.com). Draft attachments are
// kept beside the draft, not in the IMAP copy in Drafts.

import (
	"bytes"
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
	f.registerReadRoutes(mux)
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
