package imapgraph

import (
	"cmp"
	"container/list"
	"context"
	"slices"
	"sync"
	"time"
)

// folderCache is the bridge's view of one folder of one account, shared by
// every session that selects it and kept up to date with Graph's delta
// query. It holds only the per-message fields of Message (about 200 bytes
// per message), never content.
type folderCache struct {
	srv              *Server
	account, folder  string
	mu               sync.Mutex
	state            FolderState
	listed           bool // the first listing is done
	synced           time.Time
	byID             map[string]*cmsg
	refs             int           // sessions that have it selected
	elem             *list.Element // in Server.lru
	generation       uint64        // bumped on every change, so sessions can skip diffing
	lastFullListings int           // full listings made (tests, metrics)

	// snap is the sorted message list of generation snapGen, built once
	// and shared by every session viewing that generation (see snapshot).
	// snapMu guards the three fields; it is taken last (inside mu or
	// Server.mu) and never held across anything else.
	snapMu  sync.Mutex
	snap    []smsg
	snapGen uint64
	snapOK  bool
}

type cmsg struct {
	uid uint32
	Message
}

// sync brings the cache up to date when it is older than maxAge (0: always).
func (fc *folderCache) sync(ctx context.Context, mb Mailbox, maxAge time.Duration) error {
	fc.mu.Lock()
	defer fc.mu.Unlock()
	if fc.listed && maxAge > 0 && fc.srv.opts.Now().Sub(fc.synced) < maxAge {
		return nil
	}
	var list []Message
	err := fc.srv.retry(ctx, true, func() error {
		var err error
		list, err = mb.List(ctx, fc.folder)
		return err
	})
	if err != nil {
		return err
	}
	if fc.byID == nil {
		fc.byID = map[string]*cmsg{}
	}
	seen := make(map[string]bool, len(list))
	var added []Message
	changed := false
	for _, m := range list {
		seen[m.ID] = true
		if c, ok := fc.byID[m.ID]; ok {
			if c.SizeExact && !m.SizeExact {
				m.Size, m.SizeExact = c.Size, true // keep a measured size
			}
			if c.Message != m {
				c.Message, changed = m, true
			}
			continue
		}
		added = append(added, m)
	}
	var gone []string
	for id := range fc.byID {
		if !seen[id] {
			gone = append(gone, id)
		}
	}
	if !fc.listed {
		// Messages that left the folder while the bridge was down.
		for _, id := range fc.srv.uids.Load().Known(fc.account, fc.folder) {
			if !seen[id] && fc.byID[id] == nil {
				gone = append(gone, id)
			}
		}
	}
	// New messages get UIDs in arrival order.
	slices.SortFunc(added, func(a, b Message) int {
		return cmp.Or(a.Received.Compare(b.Received), cmp.Compare(a.ID, b.ID))
	})
	ids := make([]string, len(added))
	for i := range added {
		ids[i] = added[i].ID
	}
	uids, st, err := fc.srv.uids.Load().Assign(fc.account, fc.folder, ids, gone)
	if err != nil {
		return err
	}
	for _, id := range gone {
		delete(fc.byID, id)
	}
	for i := range added {
		fc.byID[added[i].ID] = &cmsg{uid: uids[i], Message: added[i]}
	}
	if changed || len(added)+len(gone) > 0 {
		fc.generation++
	}
	if !fc.listed {
		fc.lastFullListings++
	}
	fc.listed = true
	fc.state = st
	fc.synced = fc.srv.opts.Now()
	return nil
}

// measured records a message's exact size (its MIME was read).
func (fc *folderCache) measured(id string, n int64) {
	fc.mu.Lock()
	defer fc.mu.Unlock()
	if c := fc.byID[id]; c != nil && (c.Size != n || !c.SizeExact) {
		c.Size, c.SizeExact = n, true
		// Not a new generation (sessions need not diff for a size), but
		// views taken from now on carry the exact size.
		fc.dropSnapshot()
	}
}

// snapshot returns the folder's messages ordered by UID. The list is built
// once per generation and the same slice is returned to every caller until
// the folder changes: it is shared by all the sessions viewing the folder
// and callers must never modify it or its elements (a session edits its
// view through selected.own, which copies it first). Its capacity equals
// its length, so that an append never writes into the shared array.
func (fc *folderCache) snapshot() ([]smsg, FolderState, uint64) {
	fc.mu.Lock()
	defer fc.mu.Unlock()
	fc.snapMu.Lock()
	defer fc.snapMu.Unlock()
	if !fc.snapOK || fc.snapGen != fc.generation {
		out := make([]smsg, 0, len(fc.byID))
		for _, m := range fc.byID {
			out = append(out, smsg{uid: m.uid, Message: m.Message})
		}
		slices.SortFunc(out, func(a, b smsg) int { return cmp.Compare(a.uid, b.uid) })
		fc.snap, fc.snapGen, fc.snapOK = out, fc.generation, true
	}
	return fc.snap, fc.state, fc.generation
}

// dropSnapshot forgets the shared list: the next snapshot builds it
// again. Sessions holding the old one keep it as it is.
func (fc *folderCache) dropSnapshot() {
	fc.snapMu.Lock()
	defer fc.snapMu.Unlock()
	fc.snap, fc.snapOK = nil, false
}

// put records a message this bridge added to the folder (APPEND, COPY,
// MOVE) with its UID, so that the next delta finds it known.
func (fc *folderCache) put(m Message, uid uint32, st FolderState) {
	fc.mu.Lock()
	defer fc.mu.Unlock()
	if !fc.listed {
		return // not listed yet: the first listing finds it with its UID
	}
	fc.byID[m.ID] = &cmsg{uid: uid, Message: m}
	if st.Next > fc.state.Next {
		fc.state = st
	}
	fc.generation++
}

// update changes a cached message's flags after Graph accepted them.
func (fc *folderCache) update(id string, u FlagUpdate) {
	fc.mu.Lock()
	defer fc.mu.Unlock()
	if m := fc.byID[id]; m != nil {
		if u.Read != nil {
			m.Read = *u.Read
		}
		if u.Flagged != nil {
			m.Flagged = *u.Flagged
		}
		fc.generation++
	}
}

// remove forgets messages that left the folder through this bridge.
func (fc *folderCache) remove(ids []string) error {
	fc.mu.Lock()
	defer fc.mu.Unlock()
	_, st, err := fc.srv.uids.Load().Assign(fc.account, fc.folder, nil, ids)
	for _, id := range ids {
		delete(fc.byID, id)
	}
	if err == nil {
		fc.state = st
	}
	fc.generation++
	return err
}

// folder returns the shared cache of a folder and takes a reference on it;
// release it with releaseFolder. Unreferenced caches are kept, least
// recently used first out, up to Options.MaxCachedFolders.
func (s *Server) folder(account, folderID string) *folderCache {
	s.mu.Lock()
	defer s.mu.Unlock()
	k := folderKey{account, folderID}
	fc := s.folders[k]
	if fc == nil {
		fc = &folderCache{srv: s, account: account, folder: folderID}
		s.folders[k] = fc
	} else if fc.elem != nil {
		s.lru.Remove(fc.elem)
		fc.elem = nil
	}
	fc.refs++
	return fc
}

func (s *Server) releaseFolder(fc *folderCache) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if fc.refs--; fc.refs > 0 {
		return
	}
	// No session views the folder: its shared list need not be kept
	// (only the listing is, for the next SELECT or STATUS).
	fc.dropSnapshot()
	fc.elem = s.lru.PushBack(fc)
	for s.lru.Len() > s.opts.MaxCachedFolders {
		old := s.lru.Remove(s.lru.Front()).(*folderCache)
		old.elem = nil
		delete(s.folders, folderKey{old.account, old.folder})
	}
}
