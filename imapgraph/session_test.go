package imapgraph

import (
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapclient"
)

func imapCode(err error) imap.ResponseCode {
	var ie *imap.Error
	if errors.As(err, &ie) {
		return ie.Code
	}
	return ""
}

func uidSearch(t *testing.T, c *imapclient.Client, crit *imap.SearchCriteria) []imap.UID {
	t.Helper()
	data, err := c.UIDSearch(crit, nil).Wait()
	if err != nil {
		t.Fatalf("UID SEARCH: %v", err)
	}
	return data.AllUIDs()
}

func TestHelpdeskFlow(t *testing.T) {
	h := newHarness(t, nil)
	id1 := h.mb.deliver("f-inbox", testMIME(1, "Printer on fire"), day)
	id2 := h.mb.deliver("f-inbox", testMIME(2, "VPN down"), day.Add(time.Hour))
	id3 := h.mb.deliver("f-inbox", testMIME(3, "Spam"), day.Add(2*time.Hour))
	c := h.dial(nil)

	if !c.Caps().Has(imap.CapIdle) || !c.Caps().Has(imap.CapMove) || !c.Caps().Has(imap.CapUIDPlus) {
		t.Errorf("caps = %v, want IDLE MOVE UIDPLUS", c.Caps())
	}
	sel, err := c.Select("INBOX", nil).Wait()
	if err != nil {
		t.Fatal(err)
	}
	if sel.NumMessages != 3 || sel.UIDNext != 4 || sel.UIDValidity == 0 {
		t.Fatalf("SELECT = %+v, want 3 messages, UIDNEXT 4", sel)
	}
	if got := uidSearch(t, c, &imap.SearchCriteria{NotFlag: []imap.Flag{imap.FlagSeen}}); !slices.Equal(got, []imap.UID{1, 2, 3}) {
		t.Fatalf("UNSEEN = %v", got)
	}
	// The helpdesk's metadata fetch.
	hdr := &imap.FetchItemBodySection{Specifier: imap.PartSpecifierHeader, Peek: true}
	msgs, err := c.Fetch(imap.UIDSetNum(1, 2, 3), &imap.FetchOptions{
		UID: true, Flags: true, RFC822Size: true, InternalDate: true, Envelope: true,
		BodySection: []*imap.FetchItemBodySection{hdr},
	}).Collect()
	if err != nil {
		t.Fatal(err)
	}
	if len(msgs) != 3 {
		t.Fatalf("fetched %d messages", len(msgs))
	}
	if msgs[0].Envelope == nil || msgs[0].Envelope.Subject != "Printer on fire" || msgs[0].Envelope.MessageID != "msg1@example.com" {
		t.Errorf("envelope = %+v", msgs[0].Envelope)
	}
	if msgs[1].RFC822Size != int64(len(testMIME(2, "VPN down"))) || !msgs[1].InternalDate.Equal(day.Add(time.Hour)) {
		t.Errorf("size/date = %d %v", msgs[1].RFC822Size, msgs[1].InternalDate)
	}
	if got := string(msgs[2].FindBodySection(hdr)); !strings.HasPrefix(got, "From: Alice") || !strings.HasSuffix(got, "\r\n\r\n") {
		t.Errorf("BODY.PEEK[HEADER] = %q", got)
	}
	if h.mb.get(id1).Read {
		t.Fatal("BODY.PEEK marked the message read")
	}
	// Three messages, one download each: the MIME is cached.
	if n := h.mb.count("content"); n != 3 {
		t.Errorf("content downloads = %d, want 3", n)
	}

	// BODY[] sets \Seen, which is isRead in Graph.
	body := &imap.FetchItemBodySection{}
	msgs, err = c.Fetch(imap.UIDSetNum(2), &imap.FetchOptions{UID: true, BodySection: []*imap.FetchItemBodySection{body}}).Collect()
	if err != nil {
		t.Fatal(err)
	}
	if got := string(msgs[0].FindBodySection(body)); got != testMIME(2, "VPN down") {
		t.Errorf("BODY[] = %q", got)
	}
	if !slices.Contains(msgs[0].Flags, imap.FlagSeen) || !h.mb.get(id2).Read {
		t.Errorf("BODY[] did not set \\Seen: flags %v, isRead %v", msgs[0].Flags, h.mb.get(id2).Read)
	}

	// STORE: \Seen and \Flagged go to Graph; \Deleted stays in the session.
	if _, err := c.Store(imap.UIDSetNum(1), &imap.StoreFlags{Op: imap.StoreFlagsAdd, Flags: []imap.Flag{imap.FlagSeen, imap.FlagFlagged}}, nil).Collect(); err != nil {
		t.Fatal(err)
	}
	if m := h.mb.get(id1); !m.Read || !m.Flagged {
		t.Errorf("after +FLAGS: isRead %v flagged %v", m.Read, m.Flagged)
	}
	if _, err := c.Store(imap.UIDSetNum(1), &imap.StoreFlags{Op: imap.StoreFlagsDel, Flags: []imap.Flag{imap.FlagFlagged}}, nil).Collect(); err != nil {
		t.Fatal(err)
	}
	if h.mb.get(id1).Flagged {
		t.Error("-FLAGS \\Flagged not applied")
	}
	if got := uidSearch(t, c, &imap.SearchCriteria{Flag: []imap.Flag{imap.FlagSeen}}); !slices.Equal(got, []imap.UID{1, 2}) {
		t.Errorf("SEEN = %v", got)
	}
	st, err := c.Store(imap.UIDSetNum(3), &imap.StoreFlags{Op: imap.StoreFlagsAdd, Flags: []imap.Flag{imap.FlagDeleted}}, nil).Collect()
	if err != nil || len(st) != 1 || !slices.Contains(st[0].Flags, imap.FlagDeleted) {
		t.Fatalf("STORE \\Deleted = %+v, %v", st, err)
	}
	// EXPUNGE moves to Deleted Items by default.
	if _, err := c.Expunge().Collect(); err != nil {
		t.Fatal(err)
	}
	if f := h.mb.get(id3).folder; f != "f-trash" {
		t.Errorf("expunged message is in %q, want Deleted Items", f)
	}
	if got := uidSearch(t, c, &imap.SearchCriteria{}); !slices.Equal(got, []imap.UID{1, 2}) {
		t.Errorf("ALL after EXPUNGE = %v", got)
	}
	if err := c.Logout().Wait(); err != nil {
		t.Fatal(err)
	}
}

func TestExpungeDeletePermanently(t *testing.T) {
	h := newHarness(t, func(o *Options) { o.Expunge = func(string) string { return ExpungeDelete } })
	id := h.mb.deliver("f-inbox", testMIME(1, "a"), day)
	h.mb.deliver("f-inbox", testMIME(2, "b"), day)
	c := h.dial(nil)
	if _, err := c.Select("INBOX", nil).Wait(); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Store(imap.UIDSetNum(1, 2), &imap.StoreFlags{Op: imap.StoreFlagsAdd, Silent: true, Flags: []imap.Flag{imap.FlagDeleted}}, nil).Collect(); err != nil {
		t.Fatal(err)
	}
	// UID EXPUNGE only removes the UIDs named.
	seqs, err := c.UIDExpunge(imap.UIDSetNum(1)).Collect()
	if err != nil || !slices.Equal(seqs, []uint32{1}) {
		t.Fatalf("UID EXPUNGE = %v, %v", seqs, err)
	}
	if h.mb.count("delete") != 1 {
		t.Fatalf("deletes = %d", h.mb.count("delete"))
	}
	h.mb.mu.Lock()
	_, still := h.mb.msgs[id]
	h.mb.mu.Unlock()
	if still {
		t.Error("message still exists after EXPUNGE with expunge = delete")
	}
	// \Deleted is per session: a new session does not see it.
	c2 := h.dial(nil)
	if _, err := c2.Select("INBOX", nil).Wait(); err != nil {
		t.Fatal(err)
	}
	if got := uidSearch(t, c2, &imap.SearchCriteria{Flag: []imap.Flag{imap.FlagDeleted}}); len(got) != 0 {
		t.Errorf("other session sees \\Deleted on %v", got)
	}
}

func TestMoveCopyAndNewUIDOnReturn(t *testing.T) {
	h := newHarness(t, nil)
	id := h.mb.deliver("f-inbox", testMIME(1, "a"), day)
	h.mb.deliver("f-inbox", testMIME(2, "b"), day)
	c := h.dial(nil)
	if _, err := c.Select("INBOX", nil).Wait(); err != nil {
		t.Fatal(err)
	}
	mv, err := c.Move(imap.UIDSetNum(1), "Processed").Wait()
	if err != nil {
		t.Fatal(err)
	}
	if h.mb.get(id).folder != "f-proc" {
		t.Fatalf("MOVE did not move the message in Graph: %+v %v", h.mb.get(id), h.mb.calls)
	}
	if mv.DestUIDs.String() != "1" || mv.SourceUIDs.String() != "1" {
		t.Errorf("COPYUID = %v -> %v", mv.SourceUIDs, mv.DestUIDs)
	}
	if c.Mailbox().NumMessages != 1 {
		t.Errorf("after MOVE the client counts %d messages", c.Mailbox().NumMessages)
	}
	// COPY into a nested folder.
	cp, err := c.Copy(imap.UIDSetNum(2), "Processed/2026").Wait()
	if err != nil {
		t.Fatal(err)
	}
	if cp.DestUIDs.String() != "1" {
		t.Errorf("COPY dest UIDs %v", cp.DestUIDs)
	}
	// Unknown folder: TRYCREATE.
	if _, err := c.Move(imap.UIDSetNum(2), "Nope").Wait(); imapCode(err) != imap.ResponseCodeTryCreate {
		t.Errorf("MOVE to a missing folder: %v", err)
	}
	// Move back from Processed: a new UID in INBOX.
	if _, err := c.Select("Processed", nil).Wait(); err != nil {
		t.Fatal(err)
	}
	back, err := c.Move(imap.UIDSetNum(1), "INBOX").Wait()
	if err != nil {
		t.Fatal(err)
	}
	if back.DestUIDs.String() != "3" {
		t.Errorf("message moved back got UID %v, want a new one (3)", back.DestUIDs)
	}
	sel, err := c.Select("INBOX", nil).Wait()
	if err != nil {
		t.Fatal(err)
	}
	if got := uidSearch(t, c, &imap.SearchCriteria{}); !slices.Equal(got, []imap.UID{2, 3}) || sel.UIDNext != 4 {
		t.Errorf("INBOX UIDs %v UIDNEXT %d", got, sel.UIDNext)
	}
}

func TestRestartKeepsUIDs(t *testing.T) {
	h := newHarness(t, nil)
	for i := range 5 {
		h.mb.deliver("f-inbox", testMIME(i, "x"), day.Add(time.Duration(i)*time.Minute))
	}
	c := h.dial(nil)
	sel1, err := c.Select("INBOX", nil).Wait()
	if err != nil {
		t.Fatal(err)
	}
	before := uidSearch(t, c, &imap.SearchCriteria{})
	c.Logout().Wait()

	h.restart()
	// One new message and one gone while the bridge was down.
	h.mb.deliver("f-inbox", testMIME(9, "new"), day.Add(time.Hour))
	h.mb.mu.Lock()
	delete(h.mb.msgs, "AAMk-000001")
	h.mb.mu.Unlock()

	c = h.dial(nil)
	sel2, err := c.Select("INBOX", nil).Wait()
	if err != nil {
		t.Fatal(err)
	}
	if sel2.UIDValidity != sel1.UIDValidity {
		t.Fatalf("UIDVALIDITY changed across restart: %d -> %d", sel1.UIDValidity, sel2.UIDValidity)
	}
	after := uidSearch(t, c, &imap.SearchCriteria{})
	want := append(slices.Clone(before[1:]), 6)
	if !slices.Equal(after, want) || sel2.UIDNext != 7 {
		t.Fatalf("UIDs before %v, after restart %v (UIDNEXT %d), want %v", before, after, sel2.UIDNext, want)
	}
	// The map file is not readable without the key.
	data, _ := readFile(h.dir + "/" + UIDFileName)
	if strings.Contains(string(data), "AAMk") {
		t.Error("UID map file holds message ids in clear")
	}
}

func TestSearchCriteria(t *testing.T) {
	h := newHarness(t, nil)
	h.mb.deliver("f-inbox", testMIME(1, "a"), day)
	h.mb.deliver("f-inbox", testMIME(2, "b"), day.Add(48*time.Hour))
	h.mb.deliver("f-inbox", testMIME(3, "c"), day.Add(96*time.Hour))
	c := h.dial(nil)
	if _, err := c.Select("INBOX", nil).Wait(); err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name string
		crit imap.SearchCriteria
		want []imap.UID
	}{
		{"ALL", imap.SearchCriteria{}, []imap.UID{1, 2, 3}},
		{"SINCE", imap.SearchCriteria{Since: day.Add(24 * time.Hour)}, []imap.UID{2, 3}},
		{"BEFORE", imap.SearchCriteria{Before: day.Add(48 * time.Hour)}, []imap.UID{1}},
		{"HEADER Message-ID", imap.SearchCriteria{Header: []imap.SearchCriteriaHeaderField{{Key: "Message-ID", Value: "<msg2@example.com>"}}}, []imap.UID{2}},
		{"UID 2:*", imap.SearchCriteria{UID: []imap.UIDSet{{{Start: 2, Stop: 0}}}}, []imap.UID{2, 3}},
		{"NOT UID 1", imap.SearchCriteria{Not: []imap.SearchCriteria{{UID: []imap.UIDSet{imap.UIDSetNum(1)}}}}, []imap.UID{2, 3}},
		{"OR", imap.SearchCriteria{Or: [][2]imap.SearchCriteria{{{UID: []imap.UIDSet{imap.UIDSetNum(1)}}, {UID: []imap.UIDSet{imap.UIDSetNum(3)}}}}}, []imap.UID{1, 3}},
		{"seq 2:3 UNSEEN", imap.SearchCriteria{SeqNum: []imap.SeqSet{{{Start: 2, Stop: 3}}}, NotFlag: []imap.Flag{imap.FlagSeen}}, []imap.UID{2, 3}},
		{"LARGER", imap.SearchCriteria{Larger: 10000}, nil},
		// Keys read from the MIME.
		{"SUBJECT", imap.SearchCriteria{Header: []imap.SearchCriteriaHeaderField{{Key: "Subject", Value: "B"}}}, []imap.UID{2}},
		{"FROM", imap.SearchCriteria{Header: []imap.SearchCriteriaHeaderField{{Key: "From", Value: "alice@"}}}, []imap.UID{1, 2, 3}},
		{"BODY", imap.SearchCriteria{Body: []string{"message 3"}}, []imap.UID{3}},
		{"BODY not in headers", imap.SearchCriteria{Body: []string{"Subject"}}, nil},
		{"NOT TEXT", imap.SearchCriteria{Not: []imap.SearchCriteria{{Text: []string{"SUBJECT: A"}}}}, []imap.UID{2, 3}},
	}
	for _, tc := range cases {
		if got := uidSearch(t, c, &tc.crit); !slices.Equal(got, tc.want) {
			t.Errorf("%s: got %v, want %v", tc.name, got, tc.want)
		}
	}
	for _, crit := range []imap.SearchCriteria{
		{SentSince: day},
		{Not: []imap.SearchCriteria{{SentBefore: day}}},
	} {
		if _, err := c.UIDSearch(&crit, nil).Wait(); imapCode(err) != imap.ResponseCodeCannot {
			t.Errorf("unsupported search %+v: %v, want NO [CANNOT]", crit, err)
		}
	}
	// The session still works after refused commands.
	if err := c.Noop().Wait(); err != nil {
		t.Fatal(err)
	}
}

func TestSearchDownloadBudget(t *testing.T) {
	h := newHarness(t, func(o *Options) { o.MaxSearchDownloads = 2 })
	for i := range 3 {
		h.mb.deliver("f-inbox", testMIME(i, "x"), day.Add(time.Duration(i)*time.Hour))
	}
	c := h.dial(nil)
	if _, err := c.Select("INBOX", nil).Wait(); err != nil {
		t.Fatal(err)
	}
	subject := &imap.SearchCriteria{Header: []imap.SearchCriteriaHeaderField{{Key: "Subject", Value: "x"}}}
	if _, err := c.UIDSearch(subject, nil).Wait(); imapCode(err) != imap.ResponseCodeLimit {
		t.Fatalf("SEARCH over budget: %v, want NO [LIMIT]", err)
	}
	// Narrowed by UID first, it stays within the budget.
	narrow := *subject
	narrow.UID = []imap.UIDSet{imap.UIDSetNum(3)}
	if got := uidSearch(t, c, &narrow); !slices.Equal(got, []imap.UID{3}) {
		t.Fatalf("narrowed SEARCH = %v", got)
	}
}

func TestListAndStatus(t *testing.T) {
	h := newHarness(t, nil)
	h.mb.deliver("f-inbox", testMIME(1, "a"), day)
	c := h.dial(nil)
	list, err := c.List("", "*", nil).Collect()
	if err != nil {
		t.Fatal(err)
	}
	got := map[string][]imap.MailboxAttr{}
	for _, l := range list {
		got[l.Mailbox] = l.Attrs
		if l.Delim != '/' {
			t.Errorf("delimiter %q", l.Delim)
		}
	}
	for name, attr := range map[string]imap.MailboxAttr{
		"INBOX": imap.MailboxAttrHasNoChildren, "Sent Items": imap.MailboxAttrSent, "Deleted Items": imap.MailboxAttrTrash,
		"Drafts": imap.MailboxAttrDrafts, "Processed": imap.MailboxAttrHasChildren, "Processed/2026": imap.MailboxAttrHasNoChildren,
	} {
		if !slices.Contains(got[name], attr) {
			t.Errorf("LIST %s attrs %v, want %s", name, got[name], attr)
		}
	}
	st, err := c.Status("INBOX", &imap.StatusOptions{NumMessages: true, UIDNext: true, NumUnseen: true, UIDValidity: true}).Wait()
	if err != nil {
		t.Fatal(err)
	}
	if st.NumMessages == nil || st.NumUnseen == nil {
		t.Fatalf("STATUS = %+v", st)
	}
	if *st.NumMessages != 1 || *st.NumUnseen != 1 || st.UIDNext != 2 || st.UIDValidity == 0 {
		t.Errorf("STATUS = %+v", st)
	}
	if _, err := c.Select("No such folder", nil).Wait(); imapCode(err) != imap.ResponseCodeNonExistent {
		t.Errorf("SELECT missing folder: %v", err)
	}
	if err := c.Create("New", nil).Wait(); imapCode(err) != imap.ResponseCodeCannot {
		t.Errorf("CREATE: %v", err)
	}
}

func TestExamineIsReadOnly(t *testing.T) {
	h := newHarness(t, nil)
	id := h.mb.deliver("f-inbox", testMIME(1, "a"), day)
	c := h.dial(nil)
	if _, err := c.Select("INBOX", &imap.SelectOptions{ReadOnly: true}).Wait(); err != nil {
		t.Fatal(err)
	}
	body := &imap.FetchItemBodySection{}
	if _, err := c.Fetch(imap.UIDSetNum(1), &imap.FetchOptions{BodySection: []*imap.FetchItemBodySection{body}}).Collect(); err != nil {
		t.Fatal(err)
	}
	if h.mb.get(id).Read {
		t.Error("BODY[] under EXAMINE marked the message read")
	}
	if _, err := c.Store(imap.UIDSetNum(1), &imap.StoreFlags{Op: imap.StoreFlagsAdd, Flags: []imap.Flag{imap.FlagSeen}}, nil).Collect(); err == nil {
		t.Error("STORE under EXAMINE succeeded")
	}
}

func TestThrottledFetchRetries(t *testing.T) {
	h := newHarness(t, nil)
	h.mb.deliver("f-inbox", testMIME(1, "a"), day)
	h.mb.deliver("f-inbox", testMIME(2, "b"), day)
	c := h.dial(nil)
	if _, err := c.Select("INBOX", nil).Wait(); err != nil {
		t.Fatal(err)
	}
	// Graph answers 429 twice in the middle of the fetch: the client
	// does not notice beyond the delay.
	h.mb.mu.Lock()
	h.mb.throttle["content"] = 2
	h.mb.mu.Unlock()
	body := &imap.FetchItemBodySection{Peek: true}
	msgs, err := c.Fetch(imap.UIDSetNum(1, 2), &imap.FetchOptions{BodySection: []*imap.FetchItemBodySection{body}}).Collect()
	if err != nil || len(msgs) != 2 {
		t.Fatalf("throttled fetch: %d messages, %v", len(msgs), err)
	}
	if got := string(msgs[1].FindBodySection(body)); got != testMIME(2, "b") {
		t.Errorf("body after retries = %q", got)
	}
	if h.sleepCount() != 2 || h.sleeps[0] != 2*time.Second {
		t.Errorf("waits = %v, want two of Retry-After 2s", h.sleeps)
	}
	// Throttled for longer than throttle_wait: NO [UNAVAILABLE], and the
	// session goes on.
	h.mb.mu.Lock()
	h.mb.throttle["update"] = 1000
	h.mb.mu.Unlock()
	_, err = c.Store(imap.UIDSetNum(1), &imap.StoreFlags{Op: imap.StoreFlagsAdd, Flags: []imap.Flag{imap.FlagSeen}}, nil).Collect()
	if imapCode(err) != imap.ResponseCodeUnavailable {
		t.Fatalf("long throttling: %v, want NO [UNAVAILABLE]", err)
	}
	if err := c.Noop().Wait(); err != nil {
		t.Fatal(err)
	}
}

func TestPermissionErrorNamesTheFix(t *testing.T) {
	h := newHarness(t, nil)
	h.mb.fail["list"] = graphErr(403, "ErrorAccessDenied")
	c := h.dial(nil)
	_, err := c.Select("INBOX", nil).Wait()
	var ie *imap.Error
	if !errors.As(err, &ie) || ie.Code != imap.ResponseCodeNoPerm || !strings.Contains(ie.Text, "Mail.ReadWrite") || !strings.Contains(ie.Text, "oauthbridge login helpdesk") {
		t.Fatalf("403: %v", err)
	}
	h.mb.mu.Lock()
	h.mb.fail["list"] = graphErr(503, "")
	h.mb.mu.Unlock()
	if _, err := c.Select("INBOX", nil).Wait(); imapCode(err) != imap.ResponseCodeUnavailable {
		t.Fatalf("503: %v", err)
	}
}

func TestIdleReportsNewMail(t *testing.T) {
	h := newHarness(t, func(o *Options) { o.IdlePoll = time.Millisecond })
	h.mb.deliver("f-inbox", testMIME(1, "a"), day)
	exists := make(chan uint32, 10)
	c := h.dial(&imapclient.Options{UnilateralDataHandler: &imapclient.UnilateralDataHandler{
		Mailbox: func(d *imapclient.UnilateralDataMailbox) {
			if d.NumMessages != nil {
				exists <- *d.NumMessages
			}
		},
	}})
	if _, err := c.Select("INBOX", nil).Wait(); err != nil {
		t.Fatal(err)
	}
	idle, err := c.Idle()
	if err != nil {
		t.Fatal(err)
	}
	h.mb.deliver("f-inbox", testMIME(2, "b"), day)
	if n := <-exists; n != 2 {
		t.Errorf("EXISTS %d, want 2", n)
	}
	if err := idle.Close(); err != nil {
		t.Fatal(err)
	}
	if err := idle.Wait(); err != nil {
		t.Fatal(err)
	}
}

func TestOtherSessionsChangesArrive(t *testing.T) {
	h := newHarness(t, nil)
	h.mb.deliver("f-inbox", testMIME(1, "a"), day)
	h.mb.deliver("f-inbox", testMIME(2, "b"), day)
	expunged := make(chan uint32, 10)
	c1 := h.dial(&imapclient.Options{UnilateralDataHandler: &imapclient.UnilateralDataHandler{
		Expunge: func(seq uint32) { expunged <- seq },
	}})
	c2 := h.dial(nil)
	for _, c := range []*imapclient.Client{c1, c2} {
		if _, err := c.Select("INBOX", nil).Wait(); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := c2.Move(imap.UIDSetNum(1), "Processed").Wait(); err != nil {
		t.Fatal(err)
	}
	if err := c1.Noop().Wait(); err != nil {
		t.Fatal(err)
	}
	select {
	case seq := <-expunged:
		if seq != 1 {
			t.Errorf("EXPUNGE %d", seq)
		}
	default:
		t.Fatal("NOOP did not report the message moved by another session")
	}
}

func TestAppendCreatesDraft(t *testing.T) {
	h := newHarness(t, nil)
	c := h.dial(nil)
	msg := testMIME(7, "reply")
	cmd := c.Append("Sent Items", int64(len(msg)), &imap.AppendOptions{Flags: []imap.Flag{imap.FlagSeen}})
	cmd.Write([]byte(msg))
	cmd.Close()
	ad, err := cmd.Wait()
	if err != nil {
		t.Fatal(err)
	}
	if ad.UID != 1 || ad.UIDValidity == 0 {
		t.Errorf("APPENDUID = %+v", ad)
	}
	if _, err := c.Select("Sent Items", nil).Wait(); err != nil {
		t.Fatal(err)
	}
	msgs, err := c.Fetch(imap.UIDSetNum(1), &imap.FetchOptions{Flags: true}).Collect()
	if err != nil || len(msgs) != 1 {
		t.Fatal(err)
	}
	if !slices.Contains(msgs[0].Flags, imap.FlagDraft) || !slices.Contains(msgs[0].Flags, imap.FlagSeen) {
		t.Errorf("appended message flags %v, want \\Seen \\Draft", msgs[0].Flags)
	}
}
