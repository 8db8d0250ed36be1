package imapgraph

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapserver"
	"github.com/emersion/go-message/textproto"
)

// session is one Graph-served IMAP connection. imapserver calls its
// methods one at a time (IDLE excepted, which only waits).
type session struct {
	srv     *Server
	ctx     context.Context
	account string
	user    string
	mb      Mailbox
	log     *slog.Logger

	folders []Folder // from the last LIST/SELECT
	sel     *selected

	// idleMu is held while Idle runs: imapserver does not wait for Idle
	// to return when the connection fails during IDLE (a client gone,
	// the idle timeout) before it calls Close.
	idleMu sync.Mutex
}

// selected is the session's view of its selected folder. Sequence numbers
// are positions in msgs, which only changes at points where the session
// may tell the client (EXPUNGE responses, EXISTS).
//
// msgs starts as the folder's shared snapshot (shared is true): sessions
// viewing the same generation of a folder hold one list. Every change to
// msgs or to one of its elements goes through own, which copies the list
// the first time this session changes it; update goes back to the shared
// list when the session's view equals it again.
type selected struct {
	fc       *folderCache
	folder   Folder
	path     string
	readOnly bool
	msgs     []smsg
	shared   bool // msgs is a folderCache snapshot: read only
	state    FolderState
	gen      uint64
	deleted  map[uint32]bool // \Deleted: kept in this session until EXPUNGE or logout
}

// own returns msgs for this session to change: a shared snapshot is
// copied first. Callers assign what they build from it back to msgs, and
// take element pointers from it again (pointers taken before may point
// into the shared list).
func (sel *selected) own() []smsg {
	if sel.shared {
		sel.msgs = slices.Clone(sel.msgs)
		sel.shared = false
	}
	return sel.msgs
}

// edit returns the message at sequence number seq for this session to
// change.
func (sel *selected) edit(seq uint32) *smsg {
	return &sel.own()[seq-1]
}

type smsg struct {
	uid uint32
	Message
	gone bool // left the folder; reported as EXPUNGE at the next chance
}

var (
	_ imapserver.Session     = (*session)(nil)
	_ imapserver.SessionMove = (*session)(nil)
)

func (s *session) Close() error {
	s.idleMu.Lock()
	defer s.idleMu.Unlock()
	s.unselect()
	return nil
}

func (s *session) Login(string, string) error { return imapserver.ErrAuthFailed }

// ---- folders ----

func specialUse(wellKnown string) imap.MailboxAttr {
	switch wellKnown {
	case "sentitems":
		return imap.MailboxAttrSent
	case "drafts":
		return imap.MailboxAttrDrafts
	case "deleteditems":
		return imap.MailboxAttrTrash
	case "junkemail":
		return imap.MailboxAttrJunk
	case "archive":
		return imap.MailboxAttrArchive
	}
	return ""
}

// paths names every folder: INBOX for the Inbox, else the display names
// from the top joined by "/" (a "/" inside a name becomes "_").
func folderPaths(fs []Folder) map[string]Folder {
	byID := map[string]Folder{}
	for _, f := range fs {
		byID[f.ID] = f
	}
	out := map[string]Folder{}
	for _, f := range fs {
		var parts []string
		cur, ok := f, true
		for depth := 0; ok && depth < 64; depth++ {
			name := strings.ReplaceAll(cur.Name, string(hierarchyDelim), "_")
			if cur.WellKnown == "inbox" {
				name = "INBOX"
			}
			parts = append(parts, name)
			cur, ok = byID[cur.ParentID]
		}
		slices.Reverse(parts)
		out[strings.Join(parts, string(hierarchyDelim))] = f
	}
	return out
}

func (s *session) loadFolders(force bool) (map[string]Folder, error) {
	if s.folders == nil || force {
		var fs []Folder
		err := s.srv.retry(s.ctx, true, func() error {
			var err error
			fs, err = s.mb.Folders(s.ctx)
			return err
		})
		if err != nil {
			return nil, s.imapError("list folders", err)
		}
		s.folders = fs
	}
	return folderPaths(s.folders), nil
}

// findFolder resolves a mailbox name; INBOX is case-insensitive.
func (s *session) findFolder(name string) (Folder, string, error) {
	if strings.EqualFold(name, "INBOX") {
		name = "INBOX"
	} else if len(name) > 6 && strings.EqualFold(name[:6], "INBOX/") {
		name = "INBOX" + name[5:]
	}
	for _, force := range []bool{false, true} {
		paths, err := s.loadFolders(force)
		if err != nil {
			return Folder{}, "", err
		}
		if f, ok := paths[name]; ok {
			return f, name, nil
		}
	}
	return Folder{}, "", &imap.Error{Type: imap.StatusResponseTypeNo, Code: imap.ResponseCodeNonExistent,
		Text: fmt.Sprintf("no folder %q in the mailbox (create it in Outlook; folders are separated by %q)", name, string(hierarchyDelim))}
}

func (s *session) wellKnown(name string) (Folder, bool) {
	if _, err := s.loadFolders(false); err != nil {
		return Folder{}, false
	}
	for _, f := range s.folders {
		if f.WellKnown == name {
			return f, true
		}
	}
	return Folder{}, false
}

func (s *session) List(w *imapserver.ListWriter, ref string, patterns []string, options *imap.ListOptions) error {
	if len(patterns) == 1 && patterns[0] == "" {
		return w.WriteList(&imap.ListData{Attrs: []imap.MailboxAttr{imap.MailboxAttrNoSelect}, Delim: hierarchyDelim})
	}
	paths, err := s.loadFolders(true)
	if err != nil {
		return err
	}
	hasChildren := map[string]bool{}
	for _, f := range s.folders {
		hasChildren[f.ParentID] = true
	}
	names := make([]string, 0, len(paths))
	for p := range paths {
		names = append(names, p)
	}
	slices.Sort(names)
	for _, name := range names {
		match := false
		for _, p := range patterns {
			if imapserver.MatchList(name, hierarchyDelim, ref, p) {
				match = true
				break
			}
		}
		if !match {
			continue
		}
		f := paths[name]
		var attrs []imap.MailboxAttr
		if hasChildren[f.ID] {
			attrs = append(attrs, imap.MailboxAttrHasChildren)
		} else {
			attrs = append(attrs, imap.MailboxAttrHasNoChildren)
		}
		if a := specialUse(f.WellKnown); a != "" {
			attrs = append(attrs, a)
		}
		if options != nil && (options.SelectSubscribed || options.ReturnSubscribed) {
			attrs = append(attrs, imap.MailboxAttrSubscribed)
		}
		if err := w.WriteList(&imap.ListData{Attrs: attrs, Delim: hierarchyDelim, Mailbox: name}); err != nil {
			return err
		}
	}
	return nil
}

func (s *session) Create(string, *imap.CreateOptions) error { return unsupported("CREATE") }
func (s *session) Delete(string) error                      { return unsupported("DELETE") }
func (s *session) Rename(string, string, *imap.RenameOptions) error {
	return unsupported("RENAME")
}

// Subscriptions are not kept: every folder counts as subscribed.
func (s *session) Subscribe(string) error   { return nil }
func (s *session) Unsubscribe(string) error { return nil }

func (s *session) Status(name string, options *imap.StatusOptions) (*imap.StatusData, error) {
	f, path, err := s.findFolder(name)
	if err != nil {
		return nil, err
	}
	fc := s.srv.folder(s.account, f.ID)
	defer s.srv.releaseFolder(fc)
	if err := fc.sync(s.ctx, s.mb, s.srv.opts.SyncAge); err != nil {
		return nil, s.imapError("status", err)
	}
	msgs, st, _ := fc.snapshot()
	data := &imap.StatusData{Mailbox: path}
	if options.NumMessages {
		n := uint32(len(msgs))
		data.NumMessages = &n
	}
	if options.UIDNext {
		data.UIDNext = imap.UID(st.Next)
	}
	if options.UIDValidity {
		data.UIDValidity = st.Validity
	}
	if options.NumUnseen {
		var n uint32
		for _, m := range msgs {
			if !m.Read {
				n++
			}
		}
		data.NumUnseen = &n
	}
	if options.NumRecent {
		var n uint32
		data.NumRecent = &n
	}
	return data, nil
}

// ---- selection ----

func (s *session) Select(name string, options *imap.SelectOptions) (*imap.SelectData, error) {
	f, path, err := s.findFolder(name)
	if err != nil {
		return nil, err
	}
	s.unselect()
	fc := s.srv.folder(s.account, f.ID)
	if err := fc.sync(s.ctx, s.mb, s.srv.opts.SyncAge); err != nil {
		s.srv.releaseFolder(fc)
		return nil, s.imapError("select", err)
	}
	msgs, st, gen := fc.snapshot()
	s.sel = &selected{fc: fc, folder: f, path: path, readOnly: options != nil && options.ReadOnly,
		msgs: msgs, shared: true, state: st, gen: gen, deleted: map[uint32]bool{}}
	data := &imap.SelectData{
		Flags:          []imap.Flag{imap.FlagSeen, imap.FlagFlagged, imap.FlagDeleted, imap.FlagDraft, imap.FlagAnswered},
		PermanentFlags: []imap.Flag{imap.FlagSeen, imap.FlagFlagged, imap.FlagDeleted},
		NumMessages:    uint32(len(msgs)),
		UIDNext:        imap.UID(st.Next),
		UIDValidity:    st.Validity,
	}
	if s.sel.readOnly {
		data.PermanentFlags = nil
	}
	for i, m := range msgs {
		if !m.Read {
			data.FirstUnseenSeqNum = uint32(i + 1)
			break
		}
	}
	s.viewed()
	return data, nil
}

func (s *session) unselect() {
	if s.sel != nil {
		s.srv.releaseFolder(s.sel.fc)
		s.sel = nil
	}
}

func (s *session) Unselect() error {
	s.unselect()
	return nil
}

func msgFlags(m *smsg, deleted bool) []imap.Flag {
	flags := []imap.Flag{}
	if m.Read {
		flags = append(flags, imap.FlagSeen)
	}
	if m.Flagged {
		flags = append(flags, imap.FlagFlagged)
	}
	if m.Draft {
		flags = append(flags, imap.FlagDraft)
	}
	if deleted {
		flags = append(flags, imap.FlagDeleted)
	}
	return flags
}

// ---- updates: NOOP, IDLE, and after every command ----

func (s *session) Poll(w *imapserver.UpdateWriter, allowExpunge bool) error {
	if s.sel == nil {
		return nil
	}
	if err := s.sel.fc.sync(s.ctx, s.mb, s.srv.opts.SyncAge); err != nil {
		// A poll that cannot reach Graph leaves the view as it is; the
		// command itself already has its answer.
		s.log.Info("Graph-served IMAP: folder refresh failed", "folder", s.sel.path, "error", err)
		return nil
	}
	defer s.viewed()
	return s.update(w, allowExpunge)
}

// viewed calls Server.viewHook (tests).
func (s *session) viewed() {
	if h := s.srv.viewHook; h != nil {
		h(s)
	}
}

func (s *session) Idle(w *imapserver.UpdateWriter, stop <-chan struct{}) error {
	s.idleMu.Lock()
	defer s.idleMu.Unlock()
	if s.sel == nil {
		<-stop
		return nil
	}
	poll := s.srv.idlePoll()
	t := time.NewTicker(poll)
	defer t.Stop()
	for {
		select {
		case <-stop:
			return nil
		case <-s.ctx.Done():
			return nil
		case <-t.C:
		}
		// Sessions idling on the same folder share one delta round.
		if err := s.sel.fc.sync(s.ctx, s.mb, poll/2); err != nil {
			s.log.Info("Graph-served IMAP: IDLE refresh failed; trying again at the next poll", "folder", s.sel.path, "error", err)
			continue
		}
		err := s.update(w, true)
		s.viewed()
		if err != nil {
			return err
		}
	}
}

// update compares the session's view with the shared cache and tells the
// client: EXPUNGE for messages gone (when allowed), FETCH FLAGS for
// changed flags, EXISTS for new messages.
//
// When the view it arrives at is exactly the folder's snapshot (nothing
// kept as gone, nothing left out), the session takes the shared list
// instead of editing a copy of its own: idle sessions share again after
// every change. Otherwise it edits its own copy (own). The responses are
// the same either way.
func (s *session) update(w *imapserver.UpdateWriter, allowExpunge bool) error {
	sel := s.sel
	msgs, st, gen := sel.fc.snapshot()
	if gen == sel.gen && !hasGone(sel.msgs) {
		// Nothing to tell. A view of its own that equals the snapshot
		// (after this session measured sizes, which other sessions' views
		// need not learn) is given up for the shared one.
		if !sel.shared && slices.Equal(sel.msgs, msgs) {
			sel.msgs, sel.shared = msgs, true
		}
		return nil
	}
	cur := make(map[uint32]*smsg, len(msgs))
	for i := range msgs {
		cur[msgs[i].uid] = &msgs[i]
	}
	adopt := converges(sel.msgs, cur, msgs, allowExpunge)
	// Flags and departures.
	for i := range sel.msgs {
		m := &sel.msgs[i]
		n := cur[m.uid]
		if n == nil {
			if !m.gone && !adopt {
				sel.edit(uint32(i + 1)).gone = true
			}
			continue
		}
		if n.Message == m.Message {
			continue
		}
		flagsChanged := n.Read != m.Read || n.Flagged != m.Flagged || n.Draft != m.Draft
		if !adopt {
			m = sel.edit(uint32(i + 1))
			m.Message = n.Message
		}
		if flagsChanged {
			if err := w.WriteMessageFlags(uint32(i+1), imap.UID(n.uid), msgFlags(n, sel.deleted[n.uid])); err != nil {
				return err
			}
		}
	}
	// Departures, highest sequence number first. A message is gone when
	// it was already or is no longer in the folder (then, unless
	// adopting, the loop above marked it).
	n0 := len(sel.msgs)
	if allowExpunge {
		for i := len(sel.msgs) - 1; i >= 0; i-- {
			if uid := sel.msgs[i].uid; sel.msgs[i].gone || cur[uid] == nil {
				delete(sel.deleted, uid)
				if !adopt {
					sel.msgs = slices.Delete(sel.own(), i, i+1)
				}
				n0--
				if err := w.WriteExpunge(uint32(i + 1)); err != nil {
					return err
				}
			}
		}
	}
	if adopt {
		sel.msgs, sel.shared = msgs, true
	} else {
		// Arrivals: UIDs above the highest one in view.
		var top uint32
		if len(sel.msgs) > 0 {
			top = sel.msgs[len(sel.msgs)-1].uid
		}
		for i := range msgs {
			if msgs[i].uid > top {
				sel.msgs = append(sel.own(), msgs[i])
			}
		}
	}
	if len(sel.msgs) != n0 {
		if err := w.WriteNumMessages(uint32(len(sel.msgs))); err != nil {
			return err
		}
	}
	sel.state, sel.gen = st, gen
	return nil
}

// converges reports whether update turns view into exactly msgs, the
// folder's snapshot (cur indexes it by UID): every message of the view
// that left the folder is expunged now, and the ones kept plus the
// arrivals (UIDs above the highest one kept) are all of msgs. Both lists
// are ordered by UID and the kept ones are a subset of the messages of
// msgs up to that UID, so counting them is enough.
func converges(view []smsg, cur map[uint32]*smsg, msgs []smsg, allowExpunge bool) bool {
	kept := 0
	var top uint32
	for i := range view {
		if view[i].gone || cur[view[i].uid] == nil {
			if !allowExpunge {
				return false
			}
			continue
		}
		kept++
		top = view[i].uid
	}
	// The number of messages of msgs with a UID up to top.
	upTo, _ := slices.BinarySearchFunc(msgs, top, func(m smsg, top uint32) int {
		if m.uid <= top {
			return -1
		}
		return 1
	})
	return kept == upTo
}

func hasGone(msgs []smsg) bool {
	for i := range msgs {
		if msgs[i].gone {
			return true
		}
	}
	return false
}

// ---- message sets ----

// forEach calls f with the sequence number and message of every message
// in numSet, in order.
func (s *session) forEach(numSet imap.NumSet, f func(seq uint32, m *smsg) error) error {
	sel := s.sel
	n := uint32(len(sel.msgs))
	var maxUID uint32
	if n > 0 {
		maxUID = sel.msgs[n-1].uid
	}
	switch set := numSet.(type) {
	case imap.SeqSet:
		set = slices.Clone(set)
		for i := range set {
			staticRange(&set[i].Start, &set[i].Stop, n)
		}
		for i := range sel.msgs {
			if set.Contains(uint32(i + 1)) {
				if err := f(uint32(i+1), &sel.msgs[i]); err != nil {
					return err
				}
			}
		}
	case imap.UIDSet:
		if imap.IsSearchRes(set) {
			return unsupported("SEARCHRES ($)")
		}
		set = slices.Clone(set)
		for i := range set {
			staticRange((*uint32)(&set[i].Start), (*uint32)(&set[i].Stop), maxUID)
		}
		for i := range sel.msgs {
			if set.Contains(imap.UID(sel.msgs[i].uid)) {
				if err := f(uint32(i+1), &sel.msgs[i]); err != nil {
					return err
				}
			}
		}
	}
	return nil
}

// staticRange replaces "*" (0) by max, as RFC 3501 defines it.
func staticRange(start, stop *uint32, max uint32) {
	if *start == 0 {
		*start = max
	}
	if *stop == 0 {
		*stop = max
	}
	if *start > *stop {
		*start, *stop = *stop, *start
	}
}

// ---- FETCH ----

func (s *session) Fetch(w *imapserver.FetchWriter, numSet imap.NumSet, options *imap.FetchOptions) error {
	if len(options.BinarySection) > 0 || len(options.BinarySectionSize) > 0 {
		return unsupported("FETCH BINARY")
	}
	if options.ModSeq || options.ChangedSince != 0 {
		return unsupported("CONDSTORE")
	}
	needContent := options.Envelope || options.BodyStructure != nil || len(options.BodySection) > 0
	// RFC822.SIZE must be the size of the octets BODY[] returns (clients
	// such as Mail::IMAPClient check it), and Graph only has an estimate:
	// a message whose size was never measured is read once (and cached).
	markSeen := false
	for _, bs := range options.BodySection {
		if !bs.Peek {
			markSeen = true
		}
	}
	return s.forEach(numSet, func(seq uint32, m *smsg) error {
		var data []byte
		// A message that left the folder keeps its last known size.
		if needContent || (options.RFC822Size && !m.SizeExact && !m.gone) {
			if m.gone {
				return &imap.Error{Type: imap.StatusResponseTypeNo, Code: imap.ResponseCodeNonExistent,
					Text: fmt.Sprintf("message UID %d left the folder", m.uid)}
			}
			var err error
			if data, err = s.content(m.ID); err != nil {
				return s.imapError("fetch", err)
			}
			if !m.SizeExact {
				m = s.sel.edit(seq)
				m.Size, m.SizeExact = int64(len(data)), true
				s.sel.fc.measured(m.ID, m.Size)
				if sm, ok := s.mb.(sizeNoter); ok {
					sm.NoteSize(s.sel.folder.ID, m.ID, m.Size)
				}
			}
		}
		wroteFlags := options.Flags
		if markSeen && !m.Read && !s.sel.readOnly {
			var err error
			if m, err = s.setFlags(seq, FlagUpdate{Read: ptr(true)}); err != nil {
				return err
			}
			wroteFlags = true
		}
		rw := w.CreateMessage(seq)
		rw.WriteUID(imap.UID(m.uid))
		if wroteFlags {
			rw.WriteFlags(msgFlags(m, s.sel.deleted[m.uid]))
		}
		if options.InternalDate {
			rw.WriteInternalDate(m.Received)
		}
		if options.RFC822Size {
			rw.WriteRFC822Size(m.Size)
		}
		if options.Envelope {
			rw.WriteEnvelope(envelope(data))
		}
		if options.BodyStructure != nil {
			rw.WriteBodyStructure(imapserver.ExtractBodyStructure(bytes.NewReader(data)))
		}
		for _, bs := range options.BodySection {
			buf := imapserver.ExtractBodySection(bytes.NewReader(data), bs)
			wc := rw.WriteBodySection(bs, int64(len(buf)))
			_, werr := wc.Write(buf)
			if cerr := wc.Close(); werr == nil {
				werr = cerr
			}
			if werr != nil {
				return werr
			}
		}
		return rw.Close()
	})
}

// sizeNoter is a Mailbox that remembers measured sizes for other users
// of the mailbox (POP3's LIST).
type sizeNoter interface {
	NoteSize(folderID, id string, n int64)
}

func envelope(data []byte) *imap.Envelope {
	h, err := textproto.ReadHeader(bufio.NewReader(bytes.NewReader(data)))
	if err != nil {
		return &imap.Envelope{}
	}
	return imapserver.ExtractEnvelope(h)
}

func ptr[T any](v T) *T { return &v }

// setFlags writes isRead / flag.flagStatus of the message at sequence
// number seq to Graph, then to the views. It returns the message as it
// is now in the session's view.
func (s *session) setFlags(seq uint32, u FlagUpdate) (*smsg, error) {
	m := &s.sel.msgs[seq-1]
	if u.Read != nil && *u.Read == m.Read {
		u.Read = nil
	}
	if u.Flagged != nil && *u.Flagged == m.Flagged {
		u.Flagged = nil
	}
	if u.Read == nil && u.Flagged == nil {
		return m, nil
	}
	if m.gone {
		return m, &imap.Error{Type: imap.StatusResponseTypeNo, Code: imap.ResponseCodeNonExistent,
			Text: fmt.Sprintf("message UID %d left the folder", m.uid)}
	}
	err := s.srv.retry(s.ctx, true, func() error { return s.mb.Update(s.ctx, m.ID, u) })
	if err != nil {
		return m, s.imapError("store", err)
	}
	m = s.sel.edit(seq)
	if u.Read != nil {
		m.Read = *u.Read
	}
	if u.Flagged != nil {
		m.Flagged = *u.Flagged
	}
	s.sel.fc.update(m.ID, u)
	return m, nil
}

// ---- STORE ----

func (s *session) Store(w *imapserver.FetchWriter, numSet imap.NumSet, flags *imap.StoreFlags, options *imap.StoreOptions) error {
	if s.sel.readOnly {
		return &imap.Error{Type: imap.StatusResponseTypeNo, Text: "folder is read-only (EXAMINE)"}
	}
	if options != nil && options.UnchangedSince != 0 {
		return unsupported("CONDSTORE")
	}
	var want struct{ seen, flagged, deleted bool }
	for _, f := range flags.Flags {
		switch imap.Flag(strings.ToLower(string(f))) {
		case "\\seen":
			want.seen = true
		case "\\flagged":
			want.flagged = true
		case "\\deleted":
			want.deleted = true
		case "\\draft", "\\answered", "\\recent":
			// Graph has no such writable property; silently kept as is
			// (RFC 3501 lets a server ignore flags it cannot store).
		default:
			// Keywords are not stored either (no PERMANENTFLAGS \*).
		}
	}
	return s.forEach(numSet, func(seq uint32, m *smsg) error {
		var u FlagUpdate
		del := s.sel.deleted[m.uid]
		switch flags.Op {
		case imap.StoreFlagsSet:
			u.Read, u.Flagged, del = ptr(want.seen), ptr(want.flagged), want.deleted
		case imap.StoreFlagsAdd:
			if want.seen {
				u.Read = ptr(true)
			}
			if want.flagged {
				u.Flagged = ptr(true)
			}
			del = del || want.deleted
		case imap.StoreFlagsDel:
			if want.seen {
				u.Read = ptr(false)
			}
			if want.flagged {
				u.Flagged = ptr(false)
			}
			del = del && !want.deleted
		}
		m, err := s.setFlags(seq, u)
		if err != nil {
			return err
		}
		if del {
			s.sel.deleted[m.uid] = true
		} else {
			delete(s.sel.deleted, m.uid)
		}
		if flags.Silent {
			return nil
		}
		rw := w.CreateMessage(seq)
		rw.WriteUID(imap.UID(m.uid))
		rw.WriteFlags(msgFlags(m, del))
		return rw.Close()
	})
}

// ---- SEARCH ----

func (s *session) Search(kind imapserver.NumKind, criteria *imap.SearchCriteria, options *imap.SearchOptions) (*imap.SearchData, error) {
	if err := checkCriteria(criteria); err != nil {
		return nil, err
	}
	var seqs imap.SeqSet
	var uids imap.UIDSet
	data := &imap.SearchData{}
	n := uint32(len(s.sel.msgs))
	var maxUID uint32
	if n > 0 {
		maxUID = s.sel.msgs[n-1].uid
	}
	sr := &searcher{s: s, n: n, maxUID: maxUID, budget: s.srv.opts.MaxSearchDownloads}
	for i := range s.sel.msgs {
		m := &s.sel.msgs[i]
		sr.data, sr.loaded = nil, false
		ok, err := sr.match(uint32(i+1), m, criteria)
		if err != nil {
			return nil, err
		}
		if !ok {
			continue
		}
		num := uint32(i + 1)
		if kind == imapserver.NumKindUID {
			num = m.uid
			uids.AddNum(imap.UID(num))
		} else {
			seqs.AddNum(num)
		}
		if data.Min == 0 {
			data.Min = num
		}
		data.Max = num
		data.Count++
	}
	if kind == imapserver.NumKindUID {
		data.All = uids
	} else {
		data.All = seqs
	}
	return data, nil
}

// checkCriteria refuses what cannot be answered at all.
func checkCriteria(c *imap.SearchCriteria) error {
	if c.ModSeq != nil {
		return unsupported("SEARCH MODSEQ")
	}
	if !c.SentSince.IsZero() || !c.SentBefore.IsZero() {
		return unsupported("SEARCH SENTSINCE/SENTBEFORE/SENTON (use SINCE/BEFORE/ON)")
	}
	for _, sub := range c.Not {
		if err := checkCriteria(&sub); err != nil {
			return err
		}
	}
	for _, or := range c.Or {
		for i := range or {
			if err := checkCriteria(&or[i]); err != nil {
				return err
			}
		}
	}
	return nil
}

// searcher evaluates SEARCH keys on one message at a time: flags, dates,
// sizes, Message-ID and number sets from the cached fields; other headers,
// BODY and TEXT from the message's MIME, read (and cached) only when the
// cheap keys have not decided, and at most budget downloads per SEARCH.
type searcher struct {
	s         *session
	n, maxUID uint32
	budget    int
	data      []byte // the current message's MIME, once loaded
	loaded    bool
}

func (sr *searcher) content(m *smsg) ([]byte, error) {
	if sr.loaded {
		return sr.data, nil
	}
	if m.gone {
		sr.loaded = true
		return nil, nil
	}
	if _, cached := sr.s.srv.mime.get(sr.s.account + "\x00" + m.ID); !cached {
		if sr.budget <= 0 {
			return nil, &imap.Error{Type: imap.StatusResponseTypeNo, Code: imap.ResponseCodeLimit,
				Text: fmt.Sprintf("this SEARCH would read more than %d messages from Microsoft Graph (imapgraph.DefaultMaxSearchDownloads); search by UID, flags or date, or HEADER Message-ID", sr.s.srv.opts.MaxSearchDownloads)}
		}
		sr.budget--
	}
	data, err := sr.s.content(m.ID)
	if err != nil {
		return nil, sr.s.imapError("search", err)
	}
	sr.data, sr.loaded = data, true
	return data, nil
}

func containsFold(s, sub string) bool {
	return strings.Contains(strings.ToLower(s), strings.ToLower(sub))
}

func dateOf(t time.Time) time.Time {
	y, mo, d := t.Date()
	return time.Date(y, mo, d, 0, 0, 0, 0, time.UTC)
}

func (sr *searcher) match(seq uint32, m *smsg, c *imap.SearchCriteria) (bool, error) {
	s, n, maxUID := sr.s, sr.n, sr.maxUID
	for _, set := range c.SeqNum {
		set = slices.Clone(set)
		for i := range set {
			staticRange(&set[i].Start, &set[i].Stop, n)
		}
		if !set.Contains(seq) {
			return false, nil
		}
	}
	for _, set := range c.UID {
		set = slices.Clone(set)
		for i := range set {
			staticRange((*uint32)(&set[i].Start), (*uint32)(&set[i].Stop), maxUID)
		}
		if !set.Contains(imap.UID(m.uid)) {
			return false, nil
		}
	}
	// SINCE/BEFORE compare the INTERNALDATE's date (in UTC: Graph's
	// receivedDateTime is UTC).
	if !c.Since.IsZero() && dateOf(m.Received).Before(dateOf(c.Since)) {
		return false, nil
	}
	if !c.Before.IsZero() && !dateOf(m.Received).Before(dateOf(c.Before)) {
		return false, nil
	}
	has := func(f imap.Flag) bool {
		switch imap.Flag(strings.ToLower(string(f))) {
		case "\\seen":
			return m.Read
		case "\\flagged":
			return m.Flagged
		case "\\deleted":
			return s.sel.deleted[m.uid]
		case "\\draft":
			return m.Draft
		}
		return false // \Answered, \Recent, keywords: never set here
	}
	for _, f := range c.Flag {
		if !has(f) {
			return false, nil
		}
	}
	for _, f := range c.NotFlag {
		if has(f) {
			return false, nil
		}
	}
	if c.Larger > 0 && m.Size <= c.Larger {
		return false, nil
	}
	if c.Smaller > 0 && m.Size >= c.Smaller {
		return false, nil
	}
	// Message-ID from the cached field when Graph gave it.
	var other []imap.SearchCriteriaHeaderField
	for _, h := range c.Header {
		if strings.EqualFold(h.Key, "Message-ID") && m.MessageID != "" {
			if !containsFold(m.MessageID, h.Value) {
				return false, nil
			}
			continue
		}
		other = append(other, h)
	}
	for i := range c.Not {
		if ok, err := sr.match(seq, m, &c.Not[i]); err != nil || ok {
			return false, err
		}
	}
	for _, or := range c.Or {
		ok, err := sr.match(seq, m, &or[0])
		if err == nil && !ok {
			ok, err = sr.match(seq, m, &or[1])
		}
		if err != nil || !ok {
			return false, err
		}
	}
	if len(other) == 0 && len(c.Body) == 0 && len(c.Text) == 0 {
		return true, nil
	}
	// The keys that need the message itself.
	data, err := sr.content(m)
	if err != nil || data == nil {
		return false, err
	}
	br := bufio.NewReader(bytes.NewReader(data))
	h, err := textproto.ReadHeader(br)
	if err != nil {
		return false, nil
	}
	for _, f := range other {
		vals := h.Values(f.Key)
		found := len(vals) > 0 && f.Value == ""
		for _, v := range vals {
			if containsFold(v, f.Value) {
				found = true
			}
		}
		if !found {
			return false, nil
		}
	}
	body := data[len(data)-br.Buffered():]
	if rest, err := io.ReadAll(br); err == nil {
		body = rest
	}
	for _, b := range c.Body {
		if !containsFold(string(body), b) {
			return false, nil
		}
	}
	for _, t := range c.Text {
		if !containsFold(string(data), t) {
			return false, nil
		}
	}
	return true, nil
}

// ---- EXPUNGE, COPY, MOVE, APPEND ----

// expungeTarget returns the Deleted Items folder when EXPUNGE moves there,
// or ok=false when it deletes.
func (s *session) expungeTarget() (Folder, bool) {
	if s.srv.opts.Expunge(s.account) == ExpungeDelete || s.sel.folder.WellKnown == "deleteditems" {
		return Folder{}, false
	}
	return s.wellKnown("deleteditems")
}

func (s *session) Expunge(w *imapserver.ExpungeWriter, uids *imap.UIDSet) error {
	if s.sel.readOnly {
		return &imap.Error{Type: imap.StatusResponseTypeNo, Text: "folder is read-only (EXAMINE)"}
	}
	trash, toTrash := s.expungeTarget()
	if !toTrash && s.srv.opts.Expunge(s.account) != ExpungeDelete && s.sel.folder.WellKnown != "deleteditems" {
		return &imap.Error{Type: imap.StatusResponseTypeNo, Code: imap.ResponseCodeUnavailable,
			Text: "cannot find the Deleted Items folder to expunge to; nothing was expunged"}
	}
	var firstErr error
	for i := len(s.sel.msgs) - 1; i >= 0; i-- {
		m := &s.sel.msgs[i]
		if !s.sel.deleted[m.uid] || (uids != nil && !uids.Contains(imap.UID(m.uid))) {
			continue
		}
		if !m.gone {
			var err error
			if toTrash {
				err = s.srv.retry(s.ctx, false, func() error {
					_, err := s.mb.Move(s.ctx, m.ID, trash.ID)
					return err
				})
			} else {
				err = s.srv.retry(s.ctx, false, func() error { return s.mb.Delete(s.ctx, m.ID) })
			}
			if err != nil && !errors.Is(err, ErrNotFound) {
				if firstErr == nil {
					firstErr = s.imapError("expunge", err)
				}
				continue
			}
			s.srv.mime.drop(s.account + "\x00" + m.ID)
			if err := s.sel.fc.remove([]string{m.ID}); err != nil && firstErr == nil {
				firstErr = s.imapError("expunge", err)
			}
		}
		delete(s.sel.deleted, m.uid)
		s.sel.msgs = slices.Delete(s.sel.own(), i, i+1)
		if err := w.WriteExpunge(uint32(i + 1)); err != nil {
			return err
		}
	}
	return firstErr
}

func (s *session) Copy(numSet imap.NumSet, dest string) (*imap.CopyData, error) {
	return s.transfer(nil, numSet, dest)
}

func (s *session) Move(w *imapserver.MoveWriter, numSet imap.NumSet, dest string) error {
	_, err := s.transfer(w, numSet, dest)
	return err
}

// transfer copies (w == nil) or moves messages to dest.
func (s *session) transfer(w *imapserver.MoveWriter, numSet imap.NumSet, dest string) (*imap.CopyData, error) {
	move := w != nil
	if move && s.sel.readOnly {
		return nil, &imap.Error{Type: imap.StatusResponseTypeNo, Text: "folder is read-only (EXAMINE)"}
	}
	df, _, err := s.findFolder(dest)
	if err != nil {
		if ie, ok := err.(*imap.Error); ok && ie.Code == imap.ResponseCodeNonExistent {
			ie.Code = imap.ResponseCodeTryCreate
		}
		return nil, err
	}
	if df.ID == s.sel.folder.ID && move {
		return nil, &imap.Error{Type: imap.StatusResponseTypeNo, Code: imap.ResponseCodeCannot, Text: "source and destination folder are the same"}
	}
	var src []*smsg
	var seqs []uint32
	if err := s.forEach(numSet, func(seq uint32, m *smsg) error {
		if !m.gone {
			src = append(src, m)
			seqs = append(seqs, seq)
		}
		return nil
	}); err != nil {
		return nil, err
	}
	var done []*smsg
	var doneSeqs []uint32
	var newIDs []string
	var firstErr error
	for i, m := range src {
		var id string
		err := s.srv.retry(s.ctx, false, func() error {
			var err error
			if move {
				id, err = s.mb.Move(s.ctx, m.ID, df.ID)
			} else {
				id, err = s.mb.Copy(s.ctx, m.ID, df.ID)
			}
			return err
		})
		if err != nil {
			firstErr = s.imapError(map[bool]string{true: "move", false: "copy"}[move], err)
			break
		}
		done = append(done, m)
		doneSeqs = append(doneSeqs, seqs[i])
		newIDs = append(newIDs, id)
	}
	if len(done) == 0 {
		if firstErr == nil {
			return &imap.CopyData{}, nil
		}
		return nil, firstErr
	}
	destUIDs, st, err := s.srv.uids.Load().Assign(s.account, df.ID, newIDs, nil)
	if err != nil {
		return nil, s.imapError("copy", err)
	}
	dc := s.srv.folder(s.account, df.ID)
	data := &imap.CopyData{UIDValidity: st.Validity}
	for i, m := range done {
		nm := m.Message
		nm.ID = newIDs[i]
		dc.put(nm, destUIDs[i], st)
		data.SourceUIDs.AddNum(imap.UID(m.uid))
		data.DestUIDs.AddNum(imap.UID(destUIDs[i]))
	}
	s.srv.releaseFolder(dc)
	if !move {
		return data, firstErr
	}
	if err := w.WriteCopyData(data); err != nil {
		return nil, err
	}
	ids := make([]string, len(done))
	for i, m := range done {
		ids[i] = m.ID
	}
	if err := s.sel.fc.remove(ids); err != nil && firstErr == nil {
		firstErr = s.imapError("move", err)
	}
	// Expunge responses, highest sequence number first.
	for i := len(doneSeqs) - 1; i >= 0; i-- {
		seq := doneSeqs[i]
		delete(s.sel.deleted, s.sel.msgs[seq-1].uid)
		s.sel.msgs = slices.Delete(s.sel.own(), int(seq-1), int(seq))
		if err := w.WriteExpunge(seq); err != nil {
			return nil, err
		}
	}
	return data, firstErr
}

// Append creates the message from its MIME. Graph can only do that as a
// draft (isDraft stays true: Outlook shows it as a draft, and FETCH FLAGS
// says \Draft); \Seen and \Flagged from the APPEND are applied.
func (s *session) Append(mailbox string, r imap.LiteralReader, options *imap.AppendOptions) (*imap.AppendData, error) {
	f, _, err := s.findFolder(mailbox)
	if err != nil {
		if ie, ok := err.(*imap.Error); ok && ie.Code == imap.ResponseCodeNonExistent {
			ie.Code = imap.ResponseCodeTryCreate
		}
		io.Copy(io.Discard, r)
		return nil, err
	}
	if r.Size() > s.srv.opts.MaxMessageBytes {
		io.Copy(io.Discard, r)
		return nil, &imap.Error{Type: imap.StatusResponseTypeNo, Code: imap.ResponseCodeTooBig,
			Text: fmt.Sprintf("message larger than %d bytes", s.srv.opts.MaxMessageBytes)}
	}
	data, err := io.ReadAll(r)
	if err != nil {
		return nil, err
	}
	var read, flagged bool
	for _, fl := range options.Flags {
		switch imap.Flag(strings.ToLower(string(fl))) {
		case "\\seen":
			read = true
		case "\\flagged":
			flagged = true
		}
	}
	var id string
	err = s.srv.retry(s.ctx, false, func() error {
		var err error
		id, err = s.mb.Append(s.ctx, f.ID, data, read, flagged)
		return err
	})
	if err != nil && id != "" {
		s.log.Warn("Graph-served IMAP: APPEND created the message but not its flags", "folder", f.Name, "error", err)
		read, flagged = false, false
	} else if err != nil {
		return nil, s.imapError("append", err)
	}
	uids, st, err := s.srv.uids.Load().Assign(s.account, f.ID, []string{id}, nil)
	if err != nil {
		return nil, s.imapError("append", err)
	}
	received := options.Time
	if received.IsZero() {
		received = s.srv.opts.Now()
	}
	fc := s.srv.folder(s.account, f.ID)
	fc.put(Message{ID: id, Size: int64(len(data)), Received: received, Read: read, Flagged: flagged, Draft: true}, uids[0], st)
	s.srv.releaseFolder(fc)
	return &imap.AppendData{UID: imap.UID(uids[0]), UIDValidity: st.Validity}, nil
}
