package fakems

// Reading mail through the fake's Microsoft Graph endpoint, over the same
// message store as the fake IMAP and POP3 (docs: mailfolder-list.md,
// user-list-messages.md, message-get.md, message-delta.md, message-update.md,
// message-move.md, message-copy.md, message-delete.md, outlook-immutable-id.md,
// query-parameters.md, paging.md, delta-query-messages.md).
//
// Ids: a message's default id names its folder and IMAP UID, so it changes
// when the message moves (as Exchange's entry ids do); with
// `Prefer: IdType="ImmutableId"` the answer carries an immutable id that
// survives moves through Graph. Both kinds are accepted in URLs. A copy
// gets new ids. A message moved by IMAP MOVE gets a new immutable id (the
// fake does not follow IMAP moves).

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"mime"
	"net/http"
	"net/mail"
	"net/url"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapserver"
	"github.com/emersion/go-imap/v2/imapserver/imapmemserver"
)

// Routes of the read endpoints, as counted by GraphRequests.
const (
	RouteListFolders    = "listFolders"
	RouteGetFolder      = "getFolder"
	RouteChildFolders   = "childFolders"
	RouteListMessages   = "listMessages"
	RouteDelta          = "delta"
	RouteGetMessage     = "getMessage"
	RouteGetMIME        = "getMIME"
	RoutePatchMessage   = "patchMessage"
	RouteMoveMessage    = "moveMessage"
	RouteCopyMessage    = "copyMessage"
	RouteCreateInFolder = "createInFolder"
)

// Graph read limits and defaults as the fake applies them.
const (
	// GraphDefaultPageSize is the page size of messages without $top (10).
	GraphDefaultPageSize = 10
	// GraphMaxPageSize is the largest $top / odata.maxpagesize for
	// messages the fake honours (1000).
	GraphMaxPageSize = 1000
	// maxDeltaStates bounds the delta and skip tokens kept; older ones
	// get 410 SyncStateNotFound, as expired sync states do at Microsoft.
	maxDeltaStates = 1024
)

// Delegated read permissions and the read application role (besides the
// Mail.ReadWrite ones in identity.go).
const (
	ScopeGraphMailRead       = "https://graph.microsoft.com/Mail.Read"
	ScopeGraphMailReadShared = "https://graph.microsoft.com/Mail.Read.Shared"
	RoleMailRead             = "Mail.Read"
)

// PR_MESSAGE_SIZE as an extended property id, as Graph writes it back.
const propMessageSize = "Long 0xe08"

// Well-known folder names and the fake's folders they map to.
var wellKnownFolders = map[string]string{
	"inbox":        "INBOX",
	"drafts":       "Drafts",
	"sentitems":    "Sent Items",
	"deleteditems": "Deleted Items",
	"junkemail":    "Junk Email",
	"archive":      "Archive",
}

// readMeta is what the fake's Graph keeps per stored message beside
// imapmemserver: its immutable id and received time.
type readMeta struct {
	imm      string
	received time.Time
	seq      uint64
}

type msgLoc struct {
	folder string
	uid    imap.UID
}

// mbRead is a mailbox's Graph read state, guarded by Fake.storeMu.
type mbRead struct {
	meta    map[string]map[imap.UID]*readMeta
	imm     map[string]msgLoc
	folders map[string]bool // created with CreateFolder
	uids    map[string]*uidCache
	seq     uint64
}

func (mb *mailbox) readLocked() *mbRead {
	if mb.read == nil {
		mb.read = &mbRead{meta: map[string]map[imap.UID]*readMeta{}, imm: map[string]msgLoc{}, folders: map[string]bool{}}
	}
	return mb.read
}

// noteAppendLocked records a new message's received time. Callers hold
// storeMu.
func (mb *mailbox) noteAppendLocked(folder string, uid imap.UID, at time.Time) {
	if at.IsZero() {
		at = time.Now()
	}
	mb.metaLocked(folder, uid, at)
}

func (mb *mailbox) metaLocked(folder string, uid imap.UID, at time.Time) *readMeta {
	rs := mb.readLocked()
	m := rs.meta[folder]
	if m == nil {
		m = map[imap.UID]*readMeta{}
		rs.meta[folder] = m
	}
	if md := m[uid]; md != nil {
		return md
	}
	if at.IsZero() {
		at = time.Now()
	}
	rs.seq++
	md := &readMeta{imm: "AAkALgAAAAAAHYQDEapmEc2byACqAC-EWg0A" + randomToken(24), received: at, seq: rs.seq}
	m[uid] = md
	rs.imm[md.imm] = msgLoc{folder, uid}
	return md
}

// graphReadState holds the delta sync states (guarded by Fake.mu).
type graphReadState struct {
	deltas    map[string]*deltaState
	order     []string
	sizeSkew  int64
	readCount map[string]int // mailbox -> $value requests
}

type deltaState struct {
	mailbox *mailbox
	folder  string
	snap    map[string]deltaEntry // immutable id -> state at the end of the round
	pending []map[string]any      // rendered changes still to page out (skip tokens)
	imm     bool
	size    bool
	sel     []string
}

type deltaEntry struct {
	loc           msgLoc
	seen, flagged bool
}

// SetGraphSizeSkew makes the PR_MESSAGE_SIZE the fake reports differ from
// the MIME size by n bytes, as Exchange's store size does (0 = exact).
func (f *Fake) SetGraphSizeSkew(n int64) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.gread.sizeSkew = n
}

func (f *Fake) graphSizeSkew() int64 {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.gread.sizeSkew
}

// GraphMIMEReads returns how many $value requests mailbox got.
func (f *Fake) GraphMIMEReads(mailbox string) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.gread.readCount[norm(mailbox)]
}

// GraphMessageID returns the immutable Graph id of the n-th message (in
// UID order, from 0) of mailbox's folder, for tests.
func (f *Fake) GraphMessageID(mailbox, folder string, n int) string {
	mb := f.lookupMailbox(mailbox)
	if mb == nil {
		return ""
	}
	f.storeMu.Lock()
	defer f.storeMu.Unlock()
	msgs, err := mb.folderMessagesLocked(canonFolder(folder))
	if err != nil || n >= len(msgs) {
		return ""
	}
	return mb.metaLocked(canonFolder(folder), msgs[n].uid, time.Time{}).imm
}

// ---- Routing ----

func (f *Fake) registerReadRoutes(mux *http.ServeMux) {
	for _, base := range []string{"/v1.0/users/{user}", "/v1.0/me"} {
		mux.Handle("GET "+base+"/mailFolders", f.graphAPI(RouteListFolders, f.handleListFolders))
		mux.Handle("GET "+base+"/mailFolders/{fid}", f.graphAPI(RouteGetFolder, f.handleGetFolder))
		mux.Handle("GET "+base+"/mailFolders/{fid}/childFolders", f.graphAPI(RouteChildFolders, f.handleListFolders))
		mux.Handle("GET "+base+"/mailFolders/{fid}/messages", f.graphAPI(RouteListMessages, f.handleListMessages))
		mux.Handle("POST "+base+"/mailFolders/{fid}/messages", f.graphAPI(RouteCreateInFolder, f.handleCreateInFolder))
		mux.Handle("GET "+base+"/mailFolders/{fid}/messages/delta", f.graphAPI(RouteDelta, f.handleDelta))
		mux.Handle("GET "+base+"/messages/{id}", f.graphAPI(RouteGetMessage, f.handleGetMessage))
		mux.Handle("GET "+base+"/messages/{id}/$value", f.graphAPI(RouteGetMIME, f.handleGetMIME))
		mux.Handle("PATCH "+base+"/messages/{id}", f.graphAPI(RoutePatchMessage, f.handlePatchMessage))
		mux.Handle("POST "+base+"/messages/{id}/move", f.graphAPI(RouteMoveMessage, f.handleMoveCopy))
		mux.Handle("POST "+base+"/messages/{id}/copy", f.graphAPI(RouteCopyMessage, f.handleMoveCopy))
	}
}

// checkRead checks the permission to read: Mail.Read or Mail.ReadWrite on
// one's own mailbox, the .Shared variants plus Full Access on another;
// app roles Mail.Read or Mail.ReadWrite.
func (f *Fake) checkRead(w http.ResponseWriter, g *graphReq) bool {
	ok := false
	switch {
	case g.at.app:
		ok = g.hasRole(RoleMailReadWrite) || g.hasRole(RoleMailRead)
	case g.mb.addr == g.at.upn:
		ok = g.hasScope(ScopeGraphMailReadWrite) || g.hasScope(ScopeGraphMailRead)
	default:
		f.mu.Lock()
		full := g.mb.delegates[g.at.upn]
		f.mu.Unlock()
		ok = full && (g.hasScope(ScopeGraphMailReadWriteShared) || g.hasScope(ScopeGraphMailReadShared))
	}
	if !ok {
		f.graphError(w, http.StatusForbidden, "ErrorAccessDenied", msgAccessDenied)
	}
	return ok
}

// prefers reports a Prefer preference ("IdType" value or maxpagesize).
func prefers(r *http.Request) (immutable bool, maxPage int) {
	for _, h := range r.Header.Values("Prefer") {
		for _, p := range strings.Split(h, ",") {
			k, v, _ := strings.Cut(strings.TrimSpace(p), "=")
			v = strings.Trim(strings.TrimSpace(v), `"`)
			switch strings.ToLower(strings.TrimSpace(k)) {
			case "idtype":
				immutable = strings.EqualFold(v, "ImmutableId")
			case "odata.maxpagesize":
				maxPage, _ = strconv.Atoi(v)
			}
		}
	}
	return immutable, maxPage
}

func applyPrefer(w http.ResponseWriter, imm bool, maxPage int) {
	var applied []string
	if imm {
		applied = append(applied, `IdType="ImmutableId"`)
	}
	if maxPage > 0 {
		applied = append(applied, "odata.maxpagesize="+strconv.Itoa(maxPage))
	}
	if len(applied) > 0 {
		w.Header().Set("Preference-Applied", strings.Join(applied, ", "))
	}
}

// ---- Folders ----

func folderID(name string) string {
	return "AQMkADAw" + base64.RawURLEncoding.EncodeToString([]byte(name))
}

func displayName(name string) string {
	if name == "INBOX" {
		return "Inbox"
	}
	if i := strings.LastIndexByte(name, '/'); i >= 0 {
		return name[i+1:]
	}
	return name
}

// folderNames lists mailbox's folders: the default ones, those created with
// CreateFolder and any that holds or held a message (imapmemserver has no
// listing without an IMAP connection; an empty folder created over IMAP
// is not seen). Callers hold storeMu.
func (mb *mailbox) folderNames() []string {
	cand := map[string]bool{}
	for _, n := range defaultFolders {
		cand[n] = true
	}
	for n := range mb.raw {
		cand[n] = true
	}
	for n := range mb.readLocked().folders {
		cand[n] = true
	}
	var names []string
	for n := range cand {
		if _, err := mb.user.Status(n, &imap.StatusOptions{}); err == nil {
			names = append(names, n)
		}
	}
	sort.Strings(names)
	return names
}

// CreateFolder creates a folder (a path such as "Inbox/Tickets" is kept
// as the IMAP name "INBOX/Tickets"), for the IMAP and Graph views alike.
func (f *Fake) CreateFolder(mailbox, name string) error {
	mb := f.lookupMailbox(mailbox)
	if mb == nil {
		return fmt.Errorf("fakems: create folder: no mailbox %q", mailbox)
	}
	if p, rest, ok := strings.Cut(name, "/"); ok && strings.EqualFold(p, "inbox") {
		name = "INBOX/" + rest
	}
	f.storeMu.Lock()
	defer f.storeMu.Unlock()
	if err := mb.user.Create(canonFolder(name), nil); err != nil {
		return fmt.Errorf("fakems: create folder %q: %w", name, err)
	}
	mb.readLocked().folders[canonFolder(name)] = true
	return nil
}

// resolveFolder maps a folder id or well-known name to a folder name.
func (mb *mailbox) resolveFolder(id string) (string, bool) {
	names := mb.folderNames()
	if n, ok := wellKnownFolders[strings.ToLower(id)]; ok {
		return n, slices.Contains(names, n)
	}
	if raw, ok := strings.CutPrefix(id, "AQMkADAw"); ok {
		if b, err := base64.RawURLEncoding.DecodeString(raw); err == nil && slices.Contains(names, string(b)) {
			return string(b), true
		}
	}
	return "", false
}

func (f *Fake) folderJSON(mb *mailbox, name string, names []string) map[string]any {
	parent := "msgfolderroot"
	if i := strings.LastIndexByte(name, '/'); i >= 0 {
		parent = folderID(name[:i])
	}
	children := 0
	for _, n := range names {
		if strings.HasPrefix(n, name+"/") && !strings.Contains(n[len(name)+1:], "/") {
			children++
		}
	}
	total, unread := 0, 0
	if msgs, err := mb.folderMessagesLocked(name); err == nil {
		total = len(msgs)
		seen := mb.flaggedLocked(name, imap.FlagSeen)
		for _, m := range msgs {
			if !seen[m.uid] {
				unread++
			}
		}
	}
	return map[string]any{
		"id":               folderID(name),
		"displayName":      displayName(name),
		"parentFolderId":   parent,
		"childFolderCount": children,
		"totalItemCount":   total,
		"unreadItemCount":  unread,
		"isHidden":         false,
	}
}

func (f *Fake) handleListFolders(w http.ResponseWriter, r *http.Request, g *graphReq) {
	if !f.checkRead(w, g) {
		return
	}
	f.storeMu.Lock()
	defer f.storeMu.Unlock()
	names := g.mb.folderNames()
	parent := ""
	if fid := r.PathValue("fid"); fid != "" && !strings.EqualFold(fid, "msgfolderroot") {
		p, ok := g.mb.resolveFolder(fid)
		if !ok {
			f.graphError(w, http.StatusNotFound, "ErrorItemNotFound", "The specified object was not found in the store.")
			return
		}
		parent = p + "/"
	}
	var out []map[string]any
	for _, n := range names {
		rest, ok := strings.CutPrefix(n, parent)
		if !ok || rest == "" || strings.Contains(rest, "/") {
			continue
		}
		out = append(out, f.folderJSON(g.mb, n, names))
	}
	if out == nil {
		out = []map[string]any{}
	}
	f.graphJSON(w, http.StatusOK, map[string]any{"value": out})
}

func (f *Fake) handleGetFolder(w http.ResponseWriter, r *http.Request, g *graphReq) {
	if !f.checkRead(w, g) {
		return
	}
	f.storeMu.Lock()
	defer f.storeMu.Unlock()
	name, ok := g.mb.resolveFolder(r.PathValue("fid"))
	if !ok {
		f.graphError(w, http.StatusNotFound, "ErrorItemNotFound", "The specified object was not found in the store.")
		return
	}
	f.graphJSON(w, http.StatusOK, f.folderJSON(g.mb, name, g.mb.folderNames()))
}

// ---- Messages ----

// flaggedLocked returns the UIDs of folder that carry flag.
func (mb *mailbox) flaggedLocked(folder string, flag imap.Flag) map[imap.UID]bool {
	sess := imapmemserver.NewUserSession(mb.user)
	defer sess.Close()
	out := map[imap.UID]bool{}
	if _, err := sess.Select(folder, nil); err != nil {
		return out
	}
	data, err := sess.Search(imapserver.NumKindUID, &imap.SearchCriteria{Flag: []imap.Flag{flag}}, &imap.SearchOptions{})
	if err != nil {
		return out
	}
	for _, u := range data.AllUIDs() {
		out[u] = true
	}
	return out
}

// view is one message as the read endpoints see it.
type view struct {
	loc                    msgLoc
	meta                   *readMeta
	raw                    []byte
	seen, flagged, isDraft bool
}

func (mb *mailbox) viewsLocked(folder string) ([]view, error) {
	msgs, err := mb.folderMessagesLocked(folder)
	if err != nil {
		return nil, err
	}
	seen := mb.flaggedLocked(folder, imap.FlagSeen)
	flagged := mb.flaggedLocked(folder, imap.FlagFlagged)
	drafts := mb.flaggedLocked(folder, imap.FlagDraft)
	out := make([]view, len(msgs))
	for i, m := range msgs {
		out[i] = view{loc: msgLoc{folder, m.uid}, meta: mb.metaLocked(folder, m.uid, time.Time{}), raw: m.raw,
			seen: seen[m.uid], flagged: flagged[m.uid], isDraft: drafts[m.uid]}
	}
	return out, nil
}

func messageID(l msgLoc) string {
	return "AAMkADAwATM" + base64.RawURLEncoding.EncodeToString([]byte(l.folder+"\x00"+strconv.FormatUint(uint64(l.uid), 10)))
}

// lookupLocked finds a message by default or immutable id.
func (mb *mailbox) lookupLocked(id string) (view, bool) {
	return mb.lookupFlagsLocked(id, true)
}

// lookupFlagsLocked is lookupLocked; without flags the view's flags are
// not read (cheaper, for $value).
func (mb *mailbox) lookupFlagsLocked(id string, flags bool) (view, bool) {
	var loc msgLoc
	if l, ok := mb.readLocked().imm[id]; ok {
		loc = l
	} else if raw, ok := strings.CutPrefix(id, "AAMkADAwATM"); ok {
		b, err := base64.RawURLEncoding.DecodeString(raw)
		if err != nil {
			return view{}, false
		}
		folder, n, ok := strings.Cut(string(b), "\x00")
		u, err := strconv.ParseUint(n, 10, 32)
		if !ok || err != nil {
			return view{}, false
		}
		loc = msgLoc{folder, imap.UID(u)}
	} else {
		return view{}, false
	}
	raw, ok := mb.raw[loc.folder][loc.uid]
	if !ok || !mb.existsLocked(loc) {
		return view{}, false
	}
	if !flags {
		return view{loc: loc, meta: mb.metaLocked(loc.folder, loc.uid, time.Time{}), raw: raw}, true
	}
	return view{loc: loc, meta: mb.metaLocked(loc.folder, loc.uid, time.Time{}), raw: raw,
		seen: mb.hasLocked(loc, imap.FlagSeen), flagged: mb.hasLocked(loc, imap.FlagFlagged), isDraft: mb.hasLocked(loc, imap.FlagDraft)}, true
}

// existsLocked reports whether the message at l is in its folder. The
// folder's UIDs are cached while its message count and UIDNEXT stay the
// same (an append raises UIDNEXT, an expunge lowers the count).
func (mb *mailbox) existsLocked(l msgLoc) bool {
	st, err := mb.user.Status(l.folder, &imap.StatusOptions{NumMessages: true, UIDNext: true})
	if err != nil || st.NumMessages == nil {
		return false
	}
	rs := mb.readLocked()
	c := rs.uids[l.folder]
	if c == nil || c.n != *st.NumMessages || c.next != st.UIDNext {
		uids, err := folderUIDs(mb.user, l.folder)
		if err != nil {
			return false
		}
		c = &uidCache{n: *st.NumMessages, next: st.UIDNext, set: make(map[imap.UID]bool, len(uids))}
		for _, u := range uids {
			c.set[u] = true
		}
		if rs.uids == nil {
			rs.uids = map[string]*uidCache{}
		}
		rs.uids[l.folder] = c
	}
	return c.set[l.uid]
}

type uidCache struct {
	n    uint32
	next imap.UID
	set  map[imap.UID]bool
}

// hasLocked reports whether the message at l exists and, if flag is set,
// carries it (one search limited to its UID).
func (mb *mailbox) hasLocked(l msgLoc, flag imap.Flag) bool {
	sess := imapmemserver.NewUserSession(mb.user)
	defer sess.Close()
	if _, err := sess.Select(l.folder, nil); err != nil {
		return false
	}
	c := &imap.SearchCriteria{UID: []imap.UIDSet{imap.UIDSetNum(l.uid)}}
	if flag != "" {
		c.Flag = []imap.Flag{flag}
	}
	data, err := sess.Search(imapserver.NumKindUID, c, &imap.SearchOptions{})
	return err == nil && len(data.AllUIDs()) == 1
}

// render is a message's JSON; sel limits the properties ($select), size
// adds PR_MESSAGE_SIZE.
func (f *Fake) render(v view, imm bool, sel []string, size bool, skew int64) map[string]any {
	id := messageID(v.loc)
	if imm {
		id = v.meta.imm
	}
	m := map[string]any{"id": id, "@odata.etag": `W/"CQAAABYAAAA` + strconv.FormatUint(v.meta.seq, 10) + `"`}
	want := func(p string) bool {
		return len(sel) == 0 || slices.ContainsFunc(sel, func(s string) bool { return strings.EqualFold(s, p) })
	}
	var hdr mail.Header
	header := func() mail.Header {
		if hdr == nil {
			if msg, err := mail.ReadMessage(bytes.NewReader(v.raw)); err == nil {
				hdr = msg.Header
			} else {
				hdr = mail.Header{}
			}
		}
		return hdr
	}
	if want("receivedDateTime") {
		m["receivedDateTime"] = v.meta.received.UTC().Format(time.RFC3339)
	}
	if want("isRead") {
		m["isRead"] = v.seen
	}
	if want("isDraft") {
		m["isDraft"] = v.isDraft
	}
	if want("flag") {
		st := "notFlagged"
		if v.flagged {
			st = "flagged"
		}
		m["flag"] = map[string]any{"flagStatus": st}
	}
	if want("parentFolderId") {
		m["parentFolderId"] = folderID(v.loc.folder)
	}
	if want("subject") {
		s, _ := new(mime.WordDecoder).DecodeHeader(header().Get("Subject"))
		m["subject"] = s
	}
	if want("internetMessageId") {
		m["internetMessageId"] = header().Get("Message-ID")
	}
	if size {
		m["singleValueExtendedProperties"] = []map[string]any{{"id": propMessageSize, "value": strconv.FormatInt(int64(len(v.raw))+skew, 10)}}
	}
	return m
}

// parseSelect splits a $select value into property names. Microsoft
// Graph accepts spaces around the commas ("id, subject"); nil: no $select.
func parseSelect(s string) []string {
	if s == "" {
		return nil
	}
	var sel []string
	for _, p := range strings.Split(s, ",") {
		sel = append(sel, strings.TrimSpace(p))
	}
	return sel
}

type listQuery struct {
	sel       []string
	top, skip int
	desc      bool
	size      bool
}

func (f *Fake) parseListQuery(w http.ResponseWriter, r *http.Request) (listQuery, bool) {
	q := r.URL.Query()
	lq := listQuery{top: GraphDefaultPageSize, desc: true}
	lq.sel = parseSelect(q.Get("$select"))
	if s := q.Get("$top"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 {
			f.graphError(w, http.StatusBadRequest, "BadRequest", "Invalid $top value.")
			return lq, false
		}
		lq.top = min(n, GraphMaxPageSize)
	}
	if s := q.Get("$skip"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 0 {
			f.graphError(w, http.StatusBadRequest, "BadRequest", "Invalid $skip value.")
			return lq, false
		}
		lq.skip = n
	}
	if s := strings.TrimSpace(q.Get("$orderby")); s != "" {
		field, dir, _ := strings.Cut(s, " ")
		if !strings.EqualFold(field, "receivedDateTime") {
			f.graphError(w, http.StatusBadRequest, "ErrorInvalidProperty", "The fake orders only by receivedDateTime.")
			return lq, false
		}
		lq.desc = strings.EqualFold(strings.TrimSpace(dir), "desc")
	}
	lq.size = expandsSize(q.Get("$expand"))
	return lq, true
}

func expandsSize(expand string) bool {
	e := strings.ToLower(expand)
	return strings.Contains(e, "singlevalueextendedproperties") && strings.Contains(e, "0x0e08")
}

func (f *Fake) handleListMessages(w http.ResponseWriter, r *http.Request, g *graphReq) {
	if !f.checkRead(w, g) {
		return
	}
	lq, ok := f.parseListQuery(w, r)
	if !ok {
		return
	}
	imm, _ := prefers(r)
	skew := f.graphSizeSkew()
	f.storeMu.Lock()
	name, ok := g.mb.resolveFolder(r.PathValue("fid"))
	if !ok {
		f.storeMu.Unlock()
		f.graphError(w, http.StatusNotFound, "ErrorItemNotFound", "The specified object was not found in the store.")
		return
	}
	views, _ := g.mb.viewsLocked(name)
	f.storeMu.Unlock()
	sort.SliceStable(views, func(i, j int) bool {
		a, b := views[i].meta, views[j].meta
		if !a.received.Equal(b.received) {
			return a.received.Before(b.received) != lq.desc
		}
		return (a.seq < b.seq) != lq.desc
	})
	out := []map[string]any{}
	end := min(lq.skip+lq.top, len(views))
	for i := lq.skip; i < end; i++ {
		out = append(out, f.render(views[i], imm, lq.sel, lq.size, skew))
	}
	resp := map[string]any{"value": out}
	if end < len(views) {
		u := *r.URL
		q := u.Query()
		q.Set("$skip", strconv.Itoa(end))
		q.Set("$top", strconv.Itoa(lq.top))
		u.RawQuery = q.Encode()
		resp["@odata.nextLink"] = f.graphURL + u.String()
	}
	applyPrefer(w, imm, 0)
	f.graphJSON(w, http.StatusOK, resp)
}

func (f *Fake) handleGetMessage(w http.ResponseWriter, r *http.Request, g *graphReq) {
	if !f.checkRead(w, g) {
		return
	}
	q := r.URL.Query()
	sel := parseSelect(q.Get("$select"))
	imm, _ := prefers(r)
	skew := f.graphSizeSkew()
	f.storeMu.Lock()
	v, ok := g.mb.lookupLocked(r.PathValue("id"))
	f.storeMu.Unlock()
	if !ok {
		f.notFound(w)
		return
	}
	applyPrefer(w, imm, 0)
	f.graphJSON(w, http.StatusOK, f.render(v, imm, sel, expandsSize(q.Get("$expand")), skew))
}

func (f *Fake) notFound(w http.ResponseWriter) {
	f.graphError(w, http.StatusNotFound, "ErrorItemNotFound", "The specified object was not found in the store.")
}

// handleGetMIME serves the message as stored, byte for byte.
func (f *Fake) handleGetMIME(w http.ResponseWriter, r *http.Request, g *graphReq) {
	if !f.checkRead(w, g) {
		return
	}
	f.storeMu.Lock()
	v, ok := g.mb.lookupFlagsLocked(r.PathValue("id"), false)
	f.storeMu.Unlock()
	if !ok {
		f.notFound(w)
		return
	}
	f.mu.Lock()
	if f.gread.readCount == nil {
		f.gread.readCount = map[string]int{}
	}
	f.gread.readCount[g.mb.addr]++
	f.mu.Unlock()
	w.Header().Set("Content-Type", "text/plain")
	w.Header().Set("Content-Length", strconv.Itoa(len(v.raw)))
	w.WriteHeader(http.StatusOK)
	_, _ = w.Write(v.raw)
}

// storeFlagLocked sets or clears flag on one message.
func (mb *mailbox) storeFlagLocked(l msgLoc, flag imap.Flag, on bool) error {
	sess := imapmemserver.NewUserSession(mb.user)
	defer sess.Close()
	if _, err := sess.Select(l.folder, nil); err != nil {
		return err
	}
	op := imap.StoreFlagsAdd
	if !on {
		op = imap.StoreFlagsDel
	}
	return sess.Store(nil, imap.UIDSetNum(l.uid), &imap.StoreFlags{Op: op, Silent: true, Flags: []imap.Flag{flag}}, nil)
}

// lockMessageForWrite is the start of the requests that change message
// {id} (PATCH, move, copy), in Graph's order of refusals: 403 without
// Mail.ReadWrite, 413 for a body too large, 400 with badBody when the
// body is not the JSON of req or valid (nil: any) refuses it, 404 for an
// unknown id. On success storeMu is held (the caller unlocks it) and imm
// is the Prefer IdType; otherwise the answer is written and nothing is
// held.
func (f *Fake) lockMessageForWrite(w http.ResponseWriter, r *http.Request, g *graphReq, req any, badBody string, valid func() bool) (v view, imm, ok bool) {
	if !f.checkReadWrite(w, g) {
		return view{}, false, false
	}
	body, ok := f.readGraphBody(w, r)
	if !ok {
		return view{}, false, false
	}
	if err := json.Unmarshal(body, req); err != nil || (valid != nil && !valid()) {
		f.graphError(w, http.StatusBadRequest, "ErrorInvalidRequest", badBody)
		return view{}, false, false
	}
	imm, _ = prefers(r)
	f.storeMu.Lock()
	v, ok = g.mb.lookupLocked(r.PathValue("id"))
	if !ok {
		f.storeMu.Unlock()
		f.notFound(w)
		return view{}, false, false
	}
	return v, imm, true
}

func (f *Fake) handlePatchMessage(w http.ResponseWriter, r *http.Request, g *graphReq) {
	var req struct {
		IsRead *bool `json:"isRead"`
		Flag   *struct {
			FlagStatus string `json:"flagStatus"`
		} `json:"flag"`
	}
	v, imm, ok := f.lockMessageForWrite(w, r, g, &req, "Cannot read the request body.", nil)
	if !ok {
		return
	}
	defer f.storeMu.Unlock()
	if req.IsRead != nil {
		_ = g.mb.storeFlagLocked(v.loc, imap.FlagSeen, *req.IsRead)
		v.seen = *req.IsRead
	}
	if req.Flag != nil {
		switch req.Flag.FlagStatus {
		case "flagged", "notFlagged", "complete":
		default:
			f.graphError(w, http.StatusBadRequest, "ErrorInvalidRequest", "flagStatus must be notFlagged, flagged or complete.")
			return
		}
		on := req.Flag.FlagStatus == "flagged"
		_ = g.mb.storeFlagLocked(v.loc, imap.FlagFlagged, on)
		v.flagged = on
	}
	applyPrefer(w, imm, 0)
	f.graphJSON(w, http.StatusOK, f.render(v, imm, nil, false, 0))
}

// flagsOf returns the IMAP flags that carry a view's state.
func (v view) flags() []imap.Flag {
	var fl []imap.Flag
	if v.seen {
		fl = append(fl, imap.FlagSeen)
	}
	if v.flagged {
		fl = append(fl, imap.FlagFlagged)
	}
	if v.isDraft {
		fl = append(fl, imap.FlagDraft)
	}
	return fl
}

func (f *Fake) handleMoveCopy(w http.ResponseWriter, r *http.Request, g *graphReq) {
	var req struct {
		DestinationID string `json:"destinationId"`
	}
	v, imm, ok := f.lockMessageForWrite(w, r, g, &req, "destinationId is required.", func() bool { return req.DestinationID != "" })
	if !ok {
		return
	}
	defer f.storeMu.Unlock()
	move := strings.HasSuffix(r.URL.Path, "/move")
	dest, ok := g.mb.resolveFolder(req.DestinationID)
	if !ok {
		f.graphError(w, http.StatusNotFound, "ErrorInvalidIdMalformed", "The destination folder does not exist.")
		return
	}
	data, err := g.mb.appendLocked(dest, v.raw, &imap.AppendOptions{Flags: v.flags(), Time: v.meta.received})
	if err != nil {
		f.graphError(w, http.StatusInternalServerError, "ErrorInternalServerError", "The message could not be stored.")
		return
	}
	nl := msgLoc{dest, data.UID}
	rs := g.mb.readLocked()
	nm := rs.meta[dest][data.UID]
	if move {
		_ = g.mb.expungeLocked(v.loc.folder, []imap.UID{v.loc.uid})
		// The immutable id follows the message; the default id does not.
		delete(rs.imm, nm.imm)
		delete(rs.meta[v.loc.folder], v.loc.uid)
		nm.imm = v.meta.imm
		rs.imm[nm.imm] = nl
	}
	nv := view{loc: nl, meta: nm, raw: v.raw, seen: v.seen, flagged: v.flagged, isDraft: v.isDraft}
	applyPrefer(w, imm, 0)
	f.graphJSON(w, http.StatusCreated, f.render(nv, imm, nil, false, 0))
}

// deleteStoredMessage is DELETE .../messages/{id} for a message that is
// not a draft of the send path: it leaves its folder (at Microsoft it goes
// to Recoverable Items, which no endpoint here lists).
func (f *Fake) deleteStoredMessage(w http.ResponseWriter, r *http.Request, g *graphReq) {
	f.storeMu.Lock()
	defer f.storeMu.Unlock()
	v, ok := g.mb.lookupLocked(r.PathValue("id"))
	if !ok {
		f.notFound(w)
		return
	}
	_ = g.mb.expungeLocked(v.loc.folder, []imap.UID{v.loc.uid})
	rs := g.mb.readLocked()
	delete(rs.imm, v.meta.imm)
	delete(rs.meta[v.loc.folder], v.loc.uid)
	w.WriteHeader(http.StatusNoContent)
}

// handleCreateInFolder is POST .../mailFolders/{fid}/messages with base64
// MIME: like POST .../messages it creates a draft (isDraft true; Graph
// has no way to create a non-draft item from MIME), but in the folder.
func (f *Fake) handleCreateInFolder(w http.ResponseWriter, r *http.Request, g *graphReq) {
	if !f.checkReadWrite(w, g) {
		return
	}
	body, ok := f.readGraphBody(w, r)
	if !ok {
		return
	}
	if mediaType(r) != "text/plain" {
		f.graphError(w, http.StatusBadRequest, "ErrorInvalidRequest", "The fake takes only text/plain (base64 MIME) here.")
		return
	}
	raw, ok := f.decodeMIMEBody(w, body)
	if !ok {
		return
	}
	imm, _ := prefers(r)
	f.storeMu.Lock()
	defer f.storeMu.Unlock()
	dest, ok := g.mb.resolveFolder(r.PathValue("fid"))
	if !ok {
		f.notFound(w)
		return
	}
	data, err := g.mb.appendLocked(dest, raw, &imap.AppendOptions{Flags: []imap.Flag{imap.FlagDraft, imap.FlagSeen}})
	if err != nil {
		f.graphError(w, http.StatusInternalServerError, "ErrorInternalServerError", "The message could not be stored.")
		return
	}
	l := msgLoc{dest, data.UID}
	v := view{loc: l, meta: g.mb.metaLocked(dest, data.UID, time.Time{}), raw: raw, seen: true, isDraft: true}
	applyPrefer(w, imm, 0)
	f.graphJSON(w, http.StatusCreated, f.render(v, imm, nil, false, 0))
}

// ---- Delta ----

func (f *Fake) handleDelta(w http.ResponseWriter, r *http.Request, g *graphReq) {
	if !f.checkRead(w, g) {
		return
	}
	q := r.URL.Query()
	imm, maxPage := prefers(r)
	if maxPage <= 0 {
		maxPage = GraphDefaultPageSize
	}
	maxPage = min(maxPage, GraphMaxPageSize)
	gone := func() {
		f.graphError(w, http.StatusGone, "SyncStateNotFound", "The sync state generation is not found; restart the sync without a token.")
	}

	// A skip token pages out a round already computed.
	if tok := q.Get("$skiptoken"); tok != "" {
		f.mu.Lock()
		st := f.gread.deltas[tok]
		f.mu.Unlock()
		if st == nil || st.mailbox != g.mb {
			gone()
			return
		}
		f.deltaPage(w, r, st, maxPage)
		return
	}
	f.storeMu.Lock()
	name, ok := g.mb.resolveFolder(r.PathValue("fid"))
	if !ok {
		f.storeMu.Unlock()
		f.notFound(w)
		return
	}
	var prev map[string]deltaEntry
	if tok := q.Get("$deltatoken"); tok != "" {
		f.mu.Lock()
		st := f.gread.deltas[tok]
		f.mu.Unlock()
		if st == nil || st.mailbox != g.mb || st.folder != name {
			f.storeMu.Unlock()
			gone()
			return
		}
		prev, imm, q = st.snap, st.imm, url.Values{"$select": {strings.Join(st.sel, ",")}}
		if st.size {
			q.Set("$expand", "singleValueExtendedProperties($filter=id eq 'Long 0x0E08')")
		}
	}
	sel := parseSelect(q.Get("$select"))
	size := expandsSize(q.Get("$expand"))
	skew := f.graphSizeSkew()
	views, _ := g.mb.viewsLocked(name)
	f.storeMu.Unlock()
	sort.Slice(views, func(i, j int) bool { return views[i].meta.seq < views[j].meta.seq })
	st := &deltaState{mailbox: g.mb, folder: name, snap: map[string]deltaEntry{}, imm: imm, size: size, sel: sel}
	for _, v := range views {
		e := deltaEntry{loc: v.loc, seen: v.seen, flagged: v.flagged}
		st.snap[v.meta.imm] = e
		if old, ok := prev[v.meta.imm]; !ok || old != e {
			st.pending = append(st.pending, f.render(v, imm, sel, size, skew))
		}
	}
	for k, old := range prev {
		if _, ok := st.snap[k]; ok {
			continue
		}
		id := messageID(old.loc)
		if imm {
			id = k
		}
		st.pending = append(st.pending, map[string]any{"id": id, "@removed": map[string]any{"reason": "deleted"}})
	}
	f.deltaPage(w, r, st, maxPage)
}

// deltaPage writes the next page of st and a next or delta link.
func (f *Fake) deltaPage(w http.ResponseWriter, r *http.Request, st *deltaState, maxPage int) {
	n := min(maxPage, len(st.pending))
	page := append([]map[string]any{}, st.pending[:n]...)
	rest := &deltaState{mailbox: st.mailbox, folder: st.folder, snap: st.snap, pending: st.pending[n:], imm: st.imm, size: st.size, sel: st.sel}
	tok := randomToken(32)
	f.mu.Lock()
	if f.gread.deltas == nil {
		f.gread.deltas = map[string]*deltaState{}
	}
	f.gread.deltas[tok] = rest
	f.gread.order = append(f.gread.order, tok)
	for len(f.gread.order) > maxDeltaStates {
		delete(f.gread.deltas, f.gread.order[0])
		f.gread.order = f.gread.order[1:]
	}
	f.mu.Unlock()
	base := f.graphURL + strings.TrimSuffix(r.URL.Path, "/")
	resp := map[string]any{"value": page}
	if len(rest.pending) > 0 {
		resp["@odata.nextLink"] = base + "?$skiptoken=" + tok
	} else {
		resp["@odata.deltaLink"] = base + "?$deltatoken=" + tok
	}
	applyPrefer(w, st.imm, maxPage)
	f.graphJSON(w, http.StatusOK, resp)
}
