package fakems

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
	"time"

	"github.com/emersion/go-imap/v2"
)

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
	f.mu.Lock()
	d := f.graph.drafts[r.PathValue("id")]
	f.mu.Unlock()
	if d == nil || d.mailbox != g.mb {
		f.deleteStoredMessage(w, r, g) // graph_read.go
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
