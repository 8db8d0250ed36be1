package imapgraph

import (
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"
	"unsafe"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapclient"
)

// view is what Server.viewHook saw of one session's selected folder.
type view struct {
	data   *smsg  // the list's backing array
	snap   *smsg  // the folder's shared snapshot at that moment
	list   []smsg // the list itself (read only: it may be shared)
	copied []smsg // a copy of its elements at that moment
	shared bool
}

func (v view) uids() []uint32 {
	var out []uint32
	for _, m := range v.copied {
		out = append(out, m.uid)
	}
	return out
}

// viewRecorder keeps, per session in the order of their first SELECT,
// the view after its last SELECT or update.
type viewRecorder struct {
	mu       sync.Mutex
	sessions []*session
	views    map[*session]view
}

func recordViews(h *harness) *viewRecorder {
	r := &viewRecorder{views: map[*session]view{}}
	h.srv.viewHook = func(s *session) {
		if s.sel == nil {
			return
		}
		snap, _, _ := s.sel.fc.snapshot()
		v := view{data: unsafe.SliceData(s.sel.msgs), snap: unsafe.SliceData(snap),
			list: s.sel.msgs, copied: slices.Clone(s.sel.msgs), shared: s.sel.shared}
		r.mu.Lock()
		defer r.mu.Unlock()
		if _, ok := r.views[s]; !ok {
			r.sessions = append(r.sessions, s)
		}
		r.views[s] = v
	}
	return r
}

func (r *viewRecorder) view(t *testing.T, i int) view {
	t.Helper()
	r.mu.Lock()
	defer r.mu.Unlock()
	if i >= len(r.sessions) {
		t.Fatalf("session %d never selected a folder", i)
	}
	return r.views[r.sessions[i]]
}

// events records one client's unsolicited responses.
type events struct {
	mu       sync.Mutex
	expunged []uint32
	exists   []uint32
	flags    map[uint32][]imap.Flag // by sequence number
	notify   chan struct{}
}

func newEvents() *events {
	return &events{flags: map[uint32][]imap.Flag{}, notify: make(chan struct{}, 100)}
}

func (e *events) options() *imapclient.Options {
	return &imapclient.Options{UnilateralDataHandler: &imapclient.UnilateralDataHandler{
		Expunge: func(seq uint32) {
			e.mu.Lock()
			e.expunged = append(e.expunged, seq)
			e.mu.Unlock()
			e.notify <- struct{}{}
		},
		Mailbox: func(d *imapclient.UnilateralDataMailbox) {
			if d.NumMessages != nil {
				e.mu.Lock()
				e.exists = append(e.exists, *d.NumMessages)
				e.mu.Unlock()
				e.notify <- struct{}{}
			}
		},
		Fetch: func(msg *imapclient.FetchMessageData) {
			buf, err := msg.Collect()
			if err != nil {
				return
			}
			e.mu.Lock()
			e.flags[buf.SeqNum] = buf.Flags
			e.mu.Unlock()
			e.notify <- struct{}{}
		},
	}}
}

// take returns and forgets what arrived so far.
func (e *events) take() (expunged, exists []uint32, flags map[uint32][]imap.Flag) {
	e.mu.Lock()
	defer e.mu.Unlock()
	expunged, exists, flags = e.expunged, e.exists, e.flags
	e.expunged, e.exists, e.flags = nil, nil, map[uint32][]imap.Flag{}
	return
}

// waitFlags waits for unsolicited FETCH FLAGS (imapclient hands them to
// the handler on a goroutine of their own) and returns them.
func (e *events) waitFlags(t *testing.T) map[uint32][]imap.Flag {
	t.Helper()
	for {
		e.mu.Lock()
		flags := e.flags
		got := len(flags) > 0
		if got {
			e.flags = map[uint32][]imap.Flag{}
		}
		e.mu.Unlock()
		if got {
			return flags
		}
		select {
		case <-e.notify:
		case <-time.After(time.Minute): // a hang made a failure, not a speed target
			t.Fatal("no FETCH FLAGS arrived")
		}
	}
}

type seen struct {
	seq   uint32
	uid   imap.UID
	flags []imap.Flag
}

func fetchAll(t *testing.T, c *imapclient.Client) []seen {
	t.Helper()
	msgs, err := c.Fetch(imap.SeqSet{{Start: 1, Stop: 0}}, &imap.FetchOptions{UID: true, Flags: true}).Collect()
	if err != nil {
		t.Fatalf("FETCH 1:*: %v", err)
	}
	var out []seen
	for _, m := range msgs {
		f := slices.Clone(m.Flags)
		slices.Sort(f)
		out = append(out, seen{m.SeqNum, m.UID, f})
	}
	return out
}

func store(t *testing.T, c *imapclient.Client, uid imap.UID, op imap.StoreFlagsOp, flags ...imap.Flag) {
	t.Helper()
	if _, err := c.Store(imap.UIDSetNum(uid), &imap.StoreFlags{Op: op, Flags: flags, Silent: true}, nil).Collect(); err != nil {
		t.Fatalf("STORE %v: %v", flags, err)
	}
}

func noop(t *testing.T, c *imapclient.Client) {
	t.Helper()
	if err := c.Noop().Wait(); err != nil {
		t.Fatal(err)
	}
}

func wantShared(t *testing.T, what string, v view, n int) {
	t.Helper()
	if !v.shared || v.data != v.snap || len(v.copied) != n {
		t.Errorf("%s: view shared=%v same array as the folder's list=%v, %d messages; want the shared list of %d",
			what, v.shared, v.data == v.snap, len(v.copied), n)
	}
}

func TestSessionsShareTheFolderList(t *testing.T) {
	h := newHarness(t, nil)
	for i := range 3 {
		h.mb.deliver("f-inbox", testMIME(i, "ticket"), day.Add(time.Duration(i)*time.Minute))
	}
	rec := recordViews(h)
	c1, c2 := h.dial(nil), h.dial(nil)
	for _, c := range []*imapclient.Client{c1, c2} {
		if _, err := c.Select("INBOX", nil).Wait(); err != nil {
			t.Fatal(err)
		}
	}
	v1, v2 := rec.view(t, 0), rec.view(t, 1)
	if v1.data == nil || v1.data != v2.data {
		t.Fatalf("two sessions on INBOX hold different lists (%p, %p)", v1.data, v2.data)
	}
	wantShared(t, "session 1", v1, 3)
	wantShared(t, "session 2", v2, 3)
	// STATUS and a third session use the same list too.
	st, err := c1.Status("INBOX", &imap.StatusOptions{NumMessages: true, NumUnseen: true}).Wait()
	if err != nil || *st.NumMessages != 3 || *st.NumUnseen != 3 {
		t.Fatalf("STATUS = %+v, %v", st, err)
	}
	fc := h.srv.folder(testAccount, "f-inbox")
	snap, _, _ := fc.snapshot()
	h.srv.releaseFolder(fc)
	if unsafe.SliceData(snap) != v1.data || cap(snap) != len(snap) {
		t.Errorf("snapshot() gave another list, or one with room to append in place (len %d cap %d)", len(snap), cap(snap))
	}
	// \Deleted is the session's own and does not copy the list.
	store(t, c1, 2, imap.StoreFlagsAdd, imap.FlagDeleted)
	wantShared(t, "session 1 after STORE \\Deleted", rec.view(t, 0), 3)
}

// A session's STORE, a message it keeps as gone, and its EXPUNGE change
// neither the shared list nor what another session sees.
func TestSessionChangesStayInTheSession(t *testing.T) {
	h := newHarness(t, nil)
	ids := make([]string, 3)
	for i := range ids {
		ids[i] = h.mb.deliver("f-inbox", testMIME(i, "ticket"), day.Add(time.Duration(i)*time.Minute))
	}
	rec := recordViews(h)
	e1, e2 := newEvents(), newEvents()
	c1, c2 := h.dial(e1.options()), h.dial(e2.options())
	for _, c := range []*imapclient.Client{c1, c2} {
		if _, err := c.Select("INBOX", nil).Wait(); err != nil {
			t.Fatal(err)
		}
	}
	first := rec.view(t, 0)
	orig := slices.Clone(first.list)

	// STORE: \Deleted in session 1 only; \Seen goes to Graph and reaches
	// session 2 as FETCH FLAGS at its next NOOP.
	store(t, c1, 2, imap.StoreFlagsAdd, imap.FlagDeleted)
	store(t, c1, 1, imap.StoreFlagsAdd, imap.FlagSeen)
	want1 := []seen{{1, 1, []imap.Flag{imap.FlagSeen}}, {2, 2, []imap.Flag{imap.FlagDeleted}}, {3, 3, nil}}
	if got := fetchAll(t, c1); !slices.EqualFunc(got, want1, eqSeen) {
		t.Errorf("session 1 sees %v, want %v", got, want1)
	}
	noop(t, c2)
	if flags := e2.waitFlags(t); len(flags) != 1 || !slices.Equal(flags[1], []imap.Flag{imap.FlagSeen}) {
		t.Errorf("session 2 got FETCH FLAGS %v, want 1 (\\Seen)", flags)
	}
	want2 := []seen{{1, 1, []imap.Flag{imap.FlagSeen}}, {2, 2, nil}, {3, 3, nil}}
	if got := fetchAll(t, c2); !slices.EqualFunc(got, want2, eqSeen) {
		t.Errorf("session 2 sees %v, want %v (no \\Deleted from session 1)", got, want2)
	}

	// Message 3 leaves the folder elsewhere. Session 1 learns it during a
	// FETCH (no EXPUNGE allowed: it keeps sequence number 3 as gone);
	// session 2 at a NOOP (EXPUNGE 3 at once).
	if err := h.mb.Delete(t.Context(), ids[2]); err != nil {
		t.Fatal(err)
	}
	fetchAll(t, c1)
	if got := fetchAll(t, c1); len(got) != 3 || got[2].uid != 3 {
		t.Errorf("session 1 after the departure sees %v, want UID 3 kept as 3", got)
	}
	v1 := rec.view(t, 0)
	if v1.shared || len(v1.copied) != 3 || !v1.copied[2].gone {
		t.Errorf("session 1's view: shared %v, %v; want its own with UID 3 gone", v1.shared, v1.uids())
	}
	noop(t, c2)
	if exp, _, _ := e2.take(); !slices.Equal(exp, []uint32{3}) {
		t.Errorf("session 2 EXPUNGE %v, want [3]", exp)
	}
	wantShared(t, "session 2 after EXPUNGE 3", rec.view(t, 1), 2)
	if got := fetchAll(t, c2); !slices.EqualFunc(got, want2[:2], eqSeen) {
		t.Errorf("session 2 sees %v, want %v", got, want2[:2])
	}
	if got := fetchAll(t, c1); len(got) != 3 {
		t.Errorf("session 1 sees %d messages after session 2's EXPUNGE, want 3 until its own NOOP", len(got))
	}
	if exp, _, _ := e1.take(); len(exp) != 0 {
		t.Errorf("session 1 got EXPUNGE %v during FETCH", exp)
	}
	noop(t, c1)
	if exp, _, _ := e1.take(); !slices.Equal(exp, []uint32{3}) {
		t.Errorf("session 1 EXPUNGE %v, want [3]", exp)
	}
	wantShared(t, "session 1 after its NOOP", rec.view(t, 0), 2)
	if rec.view(t, 0).data != rec.view(t, 1).data {
		t.Error("the two sessions do not share again after both reported EXPUNGE 3")
	}

	// Session 1 expunges UID 2 (its \Deleted); session 2 keeps it until
	// its NOOP.
	if _, err := c1.Expunge().Collect(); err != nil {
		t.Fatal(err)
	}
	if got := fetchAll(t, c1); !slices.EqualFunc(got, want1[:1], eqSeen) {
		t.Errorf("session 1 after EXPUNGE sees %v, want %v", got, want1[:1])
	}
	if got := fetchAll(t, c2); !slices.EqualFunc(got, want2[:2], eqSeen) {
		t.Errorf("session 2 sees %v before its NOOP, want %v", got, want2[:2])
	}
	noop(t, c2)
	if exp, exists, _ := e2.take(); !slices.Equal(exp, []uint32{2}) || len(exists) != 0 {
		t.Errorf("session 2 EXPUNGE %v EXISTS %v, want EXPUNGE 2 only", exp, exists)
	}
	wantShared(t, "session 2 after EXPUNGE 2", rec.view(t, 1), 1)

	// The list both sessions started from was never written to.
	if !slices.Equal(first.list, orig) {
		t.Errorf("the shared list changed under the sessions:\n%v\nwas\n%v", first.list, orig)
	}
}

func eqSeen(a, b seen) bool {
	return a.seq == b.seq && a.uid == b.uid && slices.Equal(a.flags, b.flags)
}

// Sessions that hold their own copy (a message kept as gone) share the
// folder's list again once an IDLE poll has reported the changes.
func TestIdleSessionsShareAgain(t *testing.T) {
	h := newHarness(t, func(o *Options) { o.IdlePoll = time.Millisecond })
	ids := make([]string, 3)
	for i := range ids {
		ids[i] = h.mb.deliver("f-inbox", testMIME(i, "ticket"), day.Add(time.Duration(i)*time.Minute))
	}
	rec := recordViews(h)
	ev := []*events{newEvents(), newEvents()}
	cs := []*imapclient.Client{h.dial(ev[0].options()), h.dial(ev[1].options())}
	for _, c := range cs {
		if _, err := c.Select("INBOX", nil).Wait(); err != nil {
			t.Fatal(err)
		}
	}
	if err := h.mb.Delete(t.Context(), ids[0]); err != nil {
		t.Fatal(err)
	}
	for i, c := range cs {
		fetchAll(t, c) // learns of the departure, may not report it
		if v := rec.view(t, i); v.shared || !v.copied[0].gone {
			t.Fatalf("session %d: shared %v, first message gone %v; want its own copy", i+1, v.shared, v.copied[0].gone)
		}
	}
	h.mb.deliver("f-inbox", testMIME(9, "new"), day.Add(time.Hour))
	for i, c := range cs {
		idle, err := c.Idle()
		if err != nil {
			t.Fatal(err)
		}
		var exp, exists []uint32
		for len(exp) == 0 || len(exists) == 0 {
			select {
			case <-ev[i].notify:
			case <-time.After(time.Minute): // a hang made a failure, not a speed target
				t.Fatal("no EXPUNGE and EXISTS during IDLE")
			}
			e, x, _ := ev[i].take()
			exp, exists = append(exp, e...), append(exists, x...)
		}
		if err := idle.Close(); err != nil {
			t.Fatal(err)
		}
		if err := idle.Wait(); err != nil {
			t.Fatal(err)
		}
		if !slices.Equal(exp, []uint32{1}) || !slices.Equal(exists, []uint32{3}) {
			t.Errorf("session %d during IDLE: EXPUNGE %v EXISTS %v, want 1 and 3", i+1, exp, exists)
		}
	}
	v1, v2 := rec.view(t, 0), rec.view(t, 1)
	wantShared(t, "session 1 after IDLE", v1, 3)
	wantShared(t, "session 2 after IDLE", v2, 3)
	if v1.data != v2.data || !slices.Equal(v1.uids(), []uint32{2, 3, 4}) {
		t.Errorf("after IDLE: same list %v, UIDs %v; want one list of UIDs 2 3 4", v1.data == v2.data, v1.uids())
	}
}

// A session that measured sizes (FETCH RFC822.SIZE reads messages whose
// size Graph only estimated) shares the folder's list again: the list
// taken after that carries the exact sizes.
func TestMeasuredSizesShareAgain(t *testing.T) {
	h := newHarness(t, nil)
	for i := range 3 {
		h.mb.deliver("f-inbox", testMIME(i, "ticket"), day.Add(time.Duration(i)*time.Minute))
	}
	rec := recordViews(h)
	cs := []*imapclient.Client{h.dial(nil), h.dial(nil)}
	for _, c := range cs {
		if _, err := c.Select("INBOX", nil).Wait(); err != nil {
			t.Fatal(err)
		}
	}
	for i, c := range cs {
		msgs, err := c.Fetch(imap.SeqSet{{Start: 1, Stop: 0}}, &imap.FetchOptions{RFC822Size: true}).Collect()
		if err != nil || len(msgs) != 3 || msgs[2].RFC822Size != int64(len(testMIME(2, "ticket"))) {
			t.Fatalf("FETCH RFC822.SIZE = %v, %v", msgs, err)
		}
		v := rec.view(t, i)
		wantShared(t, fmt.Sprintf("session %d after FETCH RFC822.SIZE", i+1), v, 3)
		for _, m := range v.copied {
			if !m.SizeExact {
				t.Errorf("session %d: UID %d size not exact in the shared list", i+1, m.uid)
			}
		}
	}
	if rec.view(t, 0).data != rec.view(t, 1).data {
		t.Error("the two sessions do not share after both measured the sizes")
	}
}

func TestConverges(t *testing.T) {
	list := func(uids ...uint32) []smsg {
		var out []smsg
		for _, u := range uids {
			out = append(out, smsg{uid: u})
		}
		return out
	}
	gone := func(l []smsg, i int) []smsg { l[i].gone = true; return l }
	for _, tc := range []struct {
		name        string
		view, snap  []smsg
		expunge     bool
		wantConverg bool
	}{
		{"same", list(1, 2, 3), list(1, 2, 3), false, true},
		{"arrivals", list(1, 2), list(1, 2, 3, 4), false, true},
		{"departure, EXPUNGE allowed", list(1, 2, 3), list(1, 3), true, true},
		{"departure during FETCH", list(1, 2, 3), list(1, 3), false, false},
		{"kept as gone, EXPUNGE now", gone(list(1, 2, 3), 1), list(1, 3, 4), true, true},
		{"kept as gone during FETCH", gone(list(1, 2, 3), 1), list(1, 3), false, false},
		{"last ones left, then arrivals", list(1, 2, 3), list(1, 4), true, true},
		{"everything left", list(1, 2), nil, true, true},
		{"empty view", nil, list(5, 6), false, true},
		// A message below the highest UID in view that the view never
		// had (an APPEND racing a delta): update does not show it, so
		// the view is not the snapshot.
		{"one below top never shown", list(1, 3), list(1, 2, 3), true, false},
		{"one below top never shown, top left", list(1, 3, 5), list(1, 2, 3), true, false},
	} {
		cur := map[uint32]*smsg{}
		for i := range tc.snap {
			cur[tc.snap[i].uid] = &tc.snap[i]
		}
		if got := converges(tc.view, cur, tc.snap, tc.expunge); got != tc.wantConverg {
			t.Errorf("%s: converges = %v, want %v", tc.name, got, tc.wantConverg)
		}
	}
}

// Sessions working on one folder at the same time, while mail arrives and
// leaves: under -race, any write into a list another session shares is
// reported. At the end every session, having reported everything, shares
// the folder's list.
func TestConcurrentSessionsOnOneFolder(t *testing.T) {
	h := newHarness(t, nil)
	var ids []string
	for i := range 8 {
		ids = append(ids, h.mb.deliver("f-inbox", testMIME(i, "ticket"), day.Add(time.Duration(i)*time.Minute)))
	}
	rec := recordViews(h)
	cs := make([]*imapclient.Client, 4)
	for i := range cs {
		cs[i] = h.dial(nil)
		if _, err := cs[i].Select("INBOX", nil).Wait(); err != nil {
			t.Fatal(err)
		}
	}
	// A NO (a message that left meanwhile) is an answer; anything else is not.
	ok := func(err error) error {
		var ie *imap.Error
		if err == nil || (errors.As(err, &ie) && ie.Type == imap.StatusResponseTypeNo) {
			return nil
		}
		return err
	}
	errs := make(chan error, len(cs))
	var wg sync.WaitGroup
	for i, c := range cs {
		wg.Go(func() {
			for j := range 20 {
				op := imap.StoreFlagsAdd
				if (i+j)%2 == 0 {
					op = imap.StoreFlagsDel
				}
				_, err := c.Store(imap.SeqSetNum(uint32(j%3+1)), &imap.StoreFlags{Op: op, Flags: []imap.Flag{imap.FlagSeen, imap.FlagDeleted}}, nil).Collect()
				if err = ok(err); err == nil {
					_, err = c.Fetch(imap.SeqSet{{Start: 1, Stop: 0}}, &imap.FetchOptions{UID: true, Flags: true, RFC822Size: true}).Collect()
					err = ok(err)
				}
				if err == nil {
					err = c.Noop().Wait()
				}
				if err != nil {
					errs <- fmt.Errorf("session %d: %w", i+1, err)
					return
				}
			}
		})
	}
	for i := range 6 {
		h.mb.deliver("f-inbox", testMIME(100+i, "new"), day.Add(time.Hour))
		if err := h.mb.Delete(t.Context(), ids[i]); err != nil {
			t.Fatal(err)
		}
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	for _, c := range cs {
		noop(t, c)
	}
	fc := h.srv.folder(testAccount, "f-inbox")
	snap, _, _ := fc.snapshot()
	h.srv.releaseFolder(fc)
	var want []uint32
	for _, m := range snap {
		want = append(want, m.uid)
	}
	for i := range cs {
		v := rec.view(t, i)
		if !v.shared || !slices.Equal(v.uids(), want) {
			t.Errorf("session %d after NOOP: shared %v, UIDs %v; want the shared list, UIDs %v", i+1, v.shared, v.uids(), want)
		}
	}
}
