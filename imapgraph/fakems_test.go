package imapgraph

import (
	"context"
	"fmt"
	"net"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapclient"

	"github.com/oauthbridge/oauthbridge/graph"
	"github.com/oauthbridge/oauthbridge/graphmail"
	"github.com/oauthbridge/oauthbridge/internal/fakems"
)

const fakeMailbox = "helpdesk@contoso.com"

// fakeEnv is imapgraph over graphmail over the fake Microsoft 365's Graph
// endpoint: the production path below the IMAP proxy.
type fakeEnv struct {
	t      testing.TB
	fake   *fakems.Fake
	client *graph.Client
	dir    string
	key    []byte
	srv    *Server
	uids   *UIDStore

	mu     sync.Mutex
	sleeps []time.Duration
}

func newFakeEnv(t testing.TB) *fakeEnv {
	t.Helper()
	f, err := fakems.Start(fakems.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	f.AddUser(fakeMailbox)
	f.AddMailbox(fakeMailbox)
	e := &fakeEnv{t: t, fake: f, dir: t.TempDir(), key: testKey()}
	e.client = &graph.Client{
		BaseURL: f.GraphURL(),
		HTTP:    f.GraphHTTPClient(),
		Token:   func(context.Context) (string, error) { return f.IssueGraphToken(fakeMailbox), nil },
		Sleep:   e.sleep,
	}
	e.start()
	return e
}

func (e *fakeEnv) sleep(ctx context.Context, d time.Duration) error {
	e.mu.Lock()
	e.sleeps = append(e.sleeps, d)
	e.mu.Unlock()
	return ctx.Err()
}

func (e *fakeEnv) waits() []time.Duration {
	e.mu.Lock()
	defer e.mu.Unlock()
	return slices.Clone(e.sleeps)
}

// start is a bridge start: a new graphmail mailbox (empty lists) and
// the UID map read from disk.
func (e *fakeEnv) start() {
	e.t.Helper()
	uids, err := OpenUIDStore(e.dir, e.key)
	if err != nil {
		e.t.Fatal(err)
	}
	gm := graphmail.New(e.client, fakeMailbox, graphmail.Options{Sleep: e.sleep})
	srv, err := New(Options{
		Mailbox:      func(string) (Mailbox, error) { return NewGraphMailbox(gm), nil },
		UIDs:         uids,
		ThrottleWait: -1,
		SyncAge:      time.Nanosecond,
	})
	if err != nil {
		e.t.Fatal(err)
	}
	e.srv, e.uids = srv, uids
	e.t.Cleanup(e.stop)
}

func (e *fakeEnv) stop() {
	if e.srv != nil {
		e.srv.Close()
		e.uids.Close()
		e.srv = nil
	}
}

func (e *fakeEnv) dial() *imapclient.Client {
	e.t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		e.t.Fatal(err)
	}
	defer ln.Close()
	done := make(chan struct{})
	srv := e.srv
	go func() {
		defer close(done)
		if c, err := ln.Accept(); err == nil {
			srv.ServePreauth(context.Background(), c, "helpdesk")
		}
	}()
	conn, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		e.t.Fatal(err)
	}
	c := imapclient.New(conn, nil)
	e.t.Cleanup(func() {
		c.Close()
		<-done
	})
	if err := c.WaitGreeting(); err != nil {
		e.t.Fatal(err)
	}
	return c
}

func (e *fakeEnv) deliver(n int, subject string) []byte {
	e.t.Helper()
	raw := []byte(strings.ReplaceAll(testMIME(n, subject), "To: helpdesk@example.com", "To: "+fakeMailbox))
	if err := e.fake.Deliver(fakeMailbox, raw); err != nil {
		e.t.Fatal(err)
	}
	return raw
}

func (e *fakeEnv) isRead(folder string, n int) bool {
	e.t.Helper()
	id := e.fake.GraphMessageID(fakeMailbox, folder, n)
	m, err := e.client.GetMessage(context.Background(), fakeMailbox, id)
	if err != nil {
		e.t.Fatal(err)
	}
	return m.IsRead
}

func TestFakeMS365EndToEnd(t *testing.T) {
	e := newFakeEnv(t)
	if err := e.fake.CreateFolder(fakeMailbox, "Processed"); err != nil {
		t.Fatal(err)
	}
	raw1 := e.deliver(1, "Printer on fire")
	e.deliver(2, "VPN down")
	e.deliver(3, "Spam")

	c := e.dial()
	list, err := c.List("", "*", nil).Collect()
	if err != nil {
		t.Fatal(err)
	}
	names := map[string][]imap.MailboxAttr{}
	for _, l := range list {
		names[l.Mailbox] = l.Attrs
	}
	if _, ok := names["INBOX"]; !ok || !slices.Contains(names["Deleted Items"], imap.MailboxAttrTrash) || names["Processed"] == nil {
		t.Fatalf("LIST = %v", names)
	}
	sel, err := c.Select("INBOX", nil).Wait()
	if err != nil {
		t.Fatal(err)
	}
	if sel.NumMessages != 3 || sel.UIDNext != 4 {
		t.Fatalf("SELECT = %+v", sel)
	}
	if got := uidSearch(t, c, &imap.SearchCriteria{NotFlag: []imap.Flag{imap.FlagSeen}}); !slices.Equal(got, []imap.UID{1, 2, 3}) {
		t.Fatalf("UNSEEN = %v", got)
	}
	// Messages received in the same second are numbered in id order:
	// find them by Message-ID, as a helpdesk deduplicating would.
	uidOf := func(n int) imap.UID {
		t.Helper()
		got := uidSearch(t, c, &imap.SearchCriteria{Header: []imap.SearchCriteriaHeaderField{{Key: "Message-ID", Value: fmt.Sprintf("<msg%d@example.com>", n)}}})
		if len(got) != 1 {
			t.Fatalf("HEADER Message-ID <msg%d@example.com> = %v", n, got)
		}
		return got[0]
	}
	u1, u2, u3 := uidOf(1), uidOf(2), uidOf(3)
	// BODY[] is the delivered message, byte for byte, with a matching
	// RFC822.SIZE; reading it sets isRead in Microsoft 365.
	body := &imap.FetchItemBodySection{}
	msgs, err := c.Fetch(imap.UIDSetNum(u1), &imap.FetchOptions{UID: true, RFC822Size: true, Envelope: true, BodySection: []*imap.FetchItemBodySection{body}}).Collect()
	if err != nil || len(msgs) != 1 {
		t.Fatalf("FETCH: %v", err)
	}
	if got := msgs[0].FindBodySection(body); string(got) != string(raw1) || msgs[0].RFC822Size != int64(len(raw1)) {
		t.Errorf("BODY[] = %q (RFC822.SIZE %d), want %q", got, msgs[0].RFC822Size, raw1)
	}
	if msgs[0].Envelope.Subject != "Printer on fire" {
		t.Errorf("ENVELOPE %+v", msgs[0].Envelope)
	}
	if !e.isRead("INBOX", 0) {
		t.Error("BODY[] did not set isRead in Microsoft 365")
	}
	// MOVE to Processed, \Deleted + EXPUNGE to Deleted Items.
	if _, err := c.Move(imap.UIDSetNum(u1), "Processed").Wait(); err != nil {
		t.Fatal(err)
	}
	if got := e.fake.FolderMessages(fakeMailbox, "Processed"); len(got) != 1 || string(got[0]) != string(raw1) {
		t.Fatalf("Processed holds %d messages", len(got))
	}
	if _, err := c.Store(imap.UIDSetNum(u3), &imap.StoreFlags{Op: imap.StoreFlagsAdd, Flags: []imap.Flag{imap.FlagDeleted}}, nil).Collect(); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Expunge().Collect(); err != nil {
		t.Fatal(err)
	}
	if got := e.fake.FolderMessages(fakeMailbox, "Deleted Items"); len(got) != 1 || !strings.Contains(string(got[0]), "Subject: Spam") {
		t.Fatalf("Deleted Items holds %d messages", len(got))
	}
	if got := uidSearch(t, c, &imap.SearchCriteria{}); !slices.Equal(got, []imap.UID{u2}) {
		t.Fatalf("INBOX after MOVE and EXPUNGE: %v", got)
	}
	// \Flagged is the follow-up flag.
	if _, err := c.Store(imap.UIDSetNum(u2), &imap.StoreFlags{Op: imap.StoreFlagsAdd, Flags: []imap.Flag{imap.FlagFlagged}}, nil).Collect(); err != nil {
		t.Fatal(err)
	}
	m, err := e.client.GetMessage(context.Background(), fakeMailbox, e.fake.GraphMessageID(fakeMailbox, "INBOX", 0))
	if err != nil || !m.Flagged {
		t.Fatalf("flag.flagStatus not set: %+v %v", m, err)
	}
	c.Logout().Wait()

	// A restart keeps UIDVALIDITY and the UIDs; new mail gets UID 4.
	e.stop()
	e.start()
	e.deliver(4, "After restart")
	c = e.dial()
	sel2, err := c.Select("INBOX", nil).Wait()
	if err != nil {
		t.Fatal(err)
	}
	if sel2.UIDValidity != sel.UIDValidity {
		t.Fatalf("UIDVALIDITY %d -> %d across restart", sel.UIDValidity, sel2.UIDValidity)
	}
	if got := uidSearch(t, c, &imap.SearchCriteria{}); !slices.Equal(got, []imap.UID{u2, 4}) {
		t.Fatalf("UIDs after restart %v, want [%d 4]", got, u2)
	}
}

func TestFakeMS365ThrottledMidFetch(t *testing.T) {
	e := newFakeEnv(t)
	for i := range 3 {
		e.deliver(i, fmt.Sprint("ticket ", i))
	}
	c := e.dial()
	if _, err := c.Select("INBOX", nil).Wait(); err != nil {
		t.Fatal(err)
	}
	// The second and third $value requests get 429 Retry-After: 3.
	e.fake.SetGraphFault(fakems.GraphFault{Status: 429, RetryAfter: 3, Count: 2, Route: fakems.RouteGetMIME})
	body := &imap.FetchItemBodySection{Peek: true}
	msgs, err := c.Fetch(imap.UIDSetNum(1, 2, 3), &imap.FetchOptions{BodySection: []*imap.FetchItemBodySection{body}}).Collect()
	if err != nil || len(msgs) != 3 {
		t.Fatalf("throttled FETCH: %d messages, %v", len(msgs), err)
	}
	var subjects []string
	for _, m := range msgs {
		b := string(m.FindBodySection(body))
		if i := strings.Index(b, "Subject: "); i >= 0 {
			subjects = append(subjects, b[i:i+17])
		}
	}
	slices.Sort(subjects)
	if !slices.Equal(subjects, []string{"Subject: ticket 0", "Subject: ticket 1", "Subject: ticket 2"}) {
		t.Errorf("bodies after throttling: %q", subjects)
	}
	var waited time.Duration
	for _, d := range e.waits() {
		waited += d
	}
	if waited < 6*time.Second {
		t.Errorf("waits %v: Retry-After not honoured", e.waits())
	}
	// Throttled for good: NO [UNAVAILABLE], and the session goes on.
	e.fake.SetGraphFault(fakems.GraphFault{Status: 429, RetryAfter: 20, Route: fakems.RoutePatchMessage})
	_, err = c.Store(imap.UIDSetNum(1), &imap.StoreFlags{Op: imap.StoreFlagsAdd, Flags: []imap.Flag{imap.FlagSeen}}, nil).Collect()
	if imapCode(err) != imap.ResponseCodeUnavailable {
		t.Fatalf("persistent throttling: %v", err)
	}
	e.fake.SetGraphFault(fakems.GraphFault{})
	if err := c.Noop().Wait(); err != nil {
		t.Fatal(err)
	}
}

func TestFakeMS365TenThousand(t *testing.T) {
	if testing.Short() {
		t.Skip("10,000 messages: not in -short")
	}
	e := newFakeEnv(t)
	const n = 10000
	for i := range n {
		e.deliver(i, "bulk")
	}
	c := e.dial()
	sel, err := c.Select("INBOX", nil).Wait()
	if err != nil {
		t.Fatal(err)
	}
	if sel.NumMessages != n || sel.UIDNext != n+1 {
		t.Fatalf("SELECT = %+v", sel)
	}
	if got := uidSearch(t, c, &imap.SearchCriteria{UID: []imap.UIDSet{{{Start: n - 1, Stop: 0}}}}); !slices.Equal(got, []imap.UID{n - 1, n}) {
		t.Fatalf("UID %d:* = %v", n-1, got)
	}
	if peak := e.fake.GraphPeakConcurrency(fakeMailbox); peak > 4 {
		t.Errorf("peak concurrency %d > 4", peak)
	}
}
