package fakems

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
	"strings"
	"time"

	"github.com/emersion/go-imap/v2"
)

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
