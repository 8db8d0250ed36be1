package pop3proxy

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"net/http"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/oauthbridge/oauthbridge/graphmail"
	"github.com/oauthbridge/oauthbridge/internal/fakems"
	"github.com/oauthbridge/oauthbridge/tokens"
	"github.com/oauthbridge/oauthbridge/tokens/tokenstest"
)

// graphFake is the fake Microsoft 365 of the read_via = "graph" tests.
type graphFake struct {
	f      *fakems.Fake
	ca     string
	tok    string
	mu     sync.Mutex
	sleeps []time.Duration
}

func newGraphFake(t testing.TB) *graphFake {
	t.Helper()
	f, err := fakems.Start(fakems.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	f.AddUser(testMailbox)
	ca := filepath.Join(t.TempDir(), "ca.pem")
	if err := f.WriteCAFile(ca); err != nil {
		t.Fatal(err)
	}
	return &graphFake{f: f, ca: ca, tok: f.IssueGraphToken(testMailbox, fakems.ScopeGraphMailReadWrite)}
}

func (g *graphFake) slept() []time.Duration {
	g.mu.Lock()
	defer g.mu.Unlock()
	return append([]time.Duration(nil), g.sleeps...)
}

// bridge starts a bridge (a new Server: a restart) serving the account
// from the fake's Graph.
func (g *graphFake) bridge(t testing.TB, tc testConfig) (*env, string) {
	t.Helper()
	tc.Upstream, tc.CAFile, tc.Authority, tc.ReadVia, tc.GraphURL = "127.0.0.1:9", g.ca, g.f.AuthorityURL, "graph", g.f.GraphURL()
	e := newEnv(t, tc, envOptions{
		// The Exchange token is never used: no POP3 upstream for this account.
		tokens: tokenstest.StaticSource{"acct": "unused"},
		graph: &Options{
			GraphTokens: tokenstest.StaticSource{"acct": g.tok},
			GraphHTTP:   &http.Client{Transport: &http.Transport{TLSClientConfig: g.f.ClientTLS(), MaxIdleConnsPerHost: 16}},
			GraphMail: graphmail.Options{Sleep: func(_ context.Context, d time.Duration) error {
				g.mu.Lock()
				g.sleeps = append(g.sleeps, d)
				g.mu.Unlock()
				return nil
			}},
		},
	})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go e.srv.Serve(ln, false)
	return e, ln.Addr().String()
}

func dialPop(t testing.TB, addr string) *popClient {
	t.Helper()
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	p := newPopClient(t, conn)
	p.cmd("")
	p.cmd("USER %s", testUser)
	p.cmd("PASS %s", testPassword)
	return p
}

// sendSMTP delivers raw to the test mailbox through the fake's SMTP.
func sendSMTP(t *testing.T, f *fakems.Fake, raw []byte) {
	t.Helper()
	c, err := smtp.DialStartTLS(f.SMTPAddr, f.ClientTLS())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.Auth(tokens.NewXOAUTH2Client(testMailbox, f.IssueAccessToken(testMailbox))); err != nil {
		t.Fatal(err)
	}
	if err := c.SendMail(testMailbox, []string{testMailbox}, bytes.NewReader(raw)); err != nil {
		t.Fatal(err)
	}
}

func (p *popClient) line(format string, args ...any) string {
	p.t.Helper()
	if err := p.tp.PrintfLine(format, args...); err != nil {
		p.t.Fatal(err)
	}
	l, err := p.tp.ReadLine()
	if err != nil {
		p.t.Fatal(err)
	}
	return l
}

func TestGraphPOP3EndToEnd(t *testing.T) {
	g := newGraphFake(t)
	// Exchange's size property is not the MIME size: LIST must not use it.
	g.f.SetGraphSizeSkew(123)
	m1 := []byte("From: a@example.com\r\nTo: " + testMailbox + "\r\nSubject: one\r\n\r\nfirst\r\n.hidden dot\r\n")
	m2 := bigMessage(300 << 10)
	sendSMTP(t, g.f, m1)
	if err := g.f.Deliver(testMailbox, m2); err != nil {
		t.Fatal(err)
	}
	// Bare LF content is sent with CRLF, and counted so.
	m3 := []byte("Subject: lf\n\nbody\n")
	if err := g.f.Deliver(testMailbox, m3); err != nil {
		t.Fatal(err)
	}
	e, addr := g.bridge(t, testConfig{})
	p := dialPop(t, addr)

	stored := g.f.Messages(testMailbox)
	if len(stored) != 3 {
		t.Fatalf("stored %d", len(stored))
	}
	// Messages received in the same second are numbered in id order (Graph
	// gives receivedDateTime in seconds): match them by content.
	want := [][]byte{stored[0], m2, []byte("Subject: lf\r\n\r\nbody\r\n")}
	total := 0
	for _, w := range want {
		total += len(w)
	}
	if got := p.cmd("STAT"); got != fmt.Sprintf("3 %d", total) {
		t.Errorf("STAT = %q, want 3 %d", got, total)
	}
	list := strings.Fields(string(p.multi("LIST")))
	if len(list) != 6 {
		t.Fatalf("LIST = %q", list)
	}
	got := map[string]int{}
	var retr [][]byte
	for i := range 3 {
		r := p.multi("RETR %d", i+1)
		retr = append(retr, r)
		if list[2*i+1] != strconv.Itoa(len(r)) {
			t.Errorf("LIST %d = %s, RETR %d sent %d octets", i+1, list[2*i+1], i+1, len(r))
		}
		for j, w := range want {
			if bytes.Equal(r, w) {
				got[string(rune('a'+j))]++
			}
		}
	}
	if len(got) != 3 {
		t.Errorf("RETR did not return the three messages byte for byte: %d matched", len(got))
	}
	first := 0
	for i, r := range retr {
		if bytes.Contains(r, []byte("Subject: one")) {
			first = i + 1
		}
	}
	if got := string(p.multi("TOP %d 1", first)); !strings.HasSuffix(got, "\r\n\r\nfirst\r\n") || !strings.Contains(got, "Subject: one\r\n") {
		t.Errorf("TOP %d 1 = %q", first, got)
	}
	capa := string(p.multi("CAPA"))
	for _, c := range []string{"TOP", "UIDL", "RESP-CODES", "PIPELINING"} {
		if !strings.Contains(capa, c+"\r\n") {
			t.Errorf("CAPA lacks %s: %q", c, capa)
		}
	}
	uidl := strings.Fields(string(p.multi("UIDL")))
	ids := map[string]bool{}
	for i := range 3 {
		ids[POP3UIDL(g.f.GraphMessageID(testMailbox, "INBOX", i))] = true
	}
	if len(uidl) != 6 || !ids[uidl[1]] || !ids[uidl[3]] || !ids[uidl[5]] {
		t.Errorf("UIDL = %v, want the hashes of %v", uidl, ids)
	}
	for _, u := range []string{uidl[1], uidl[3], uidl[5]} {
		if len(u) > 70 || strings.ContainsFunc(u, func(r rune) bool { return r < 0x21 || r > 0x7e }) {
			t.Errorf("UIDL %q breaks RFC 1939", u)
		}
	}
	// DELE, RSET undoes; DELE again and QUIT moves to Deleted Items.
	p.cmd("DELE 1")
	if l := p.line("RETR 1"); !strings.HasPrefix(l, "-ERR") {
		t.Errorf("RETR of a deleted message = %q", l)
	}
	p.cmd("RSET")
	if got := p.cmd("STAT"); !strings.HasPrefix(got, "3 ") {
		t.Errorf("STAT after RSET = %q", got)
	}
	p.cmd("DELE 2")
	if n := len(g.f.Messages(testMailbox)); n != 3 {
		t.Errorf("before QUIT %d messages", n)
	}
	p.cmd("NOOP")
	p.cmd("QUIT")
	if got := g.f.Messages(testMailbox); len(got) != 2 {
		t.Errorf("INBOX after QUIT: %d", len(got))
	}
	// The store keeps what was delivered (one message has bare LFs); RETR
	// sends it with CRLF line ends, so compare in that form.
	crlf := func(b []byte) []byte {
		return bytes.ReplaceAll(bytes.ReplaceAll(b, []byte("\r\n"), []byte("\n")), []byte("\n"), []byte("\r\n"))
	}
	if del := g.f.FolderMessages(testMailbox, "Deleted Items"); len(del) != 1 || !bytes.Equal(crlf(del[0]), retr[1]) {
		t.Errorf("Deleted Items = %d messages: %q, want RETR 2's %q", len(del), del, retr[1])
	}
	waitFor(t, func() bool { return e.srv.ActiveSessions() == 0 })

	// A second session and a restarted bridge see the same UIDLs.
	p2 := dialPop(t, addr)
	uidl2 := strings.Fields(string(p2.multi("UIDL")))
	p2.cmd("QUIT")
	_, addr3 := g.bridge(t, testConfig{})
	p3 := dialPop(t, addr3)
	uidl3 := strings.Fields(string(p3.multi("UIDL")))
	p3.cmd("QUIT")
	wantUIDL := []string{"1", uidl[1], "2", uidl[5]}
	if strings.Join(uidl2, " ") != strings.Join(wantUIDL, " ") || strings.Join(uidl3, " ") != strings.Join(wantUIDL, " ") {
		t.Errorf("UIDL later = %v, after restart %v, want %v", uidl2, uidl3, wantUIDL)
	}
	if a := e.logs.audits(); len(a) == 0 || !strings.Contains(a[0], "ok") {
		t.Errorf("audit = %v", a)
	}
}

func TestGraphPOP3DeleteMode(t *testing.T) {
	g := newGraphFake(t)
	for i := range 2 {
		_ = g.f.Deliver(testMailbox, []byte(fmt.Sprintf("Subject: %d\r\n\r\nx\r\n", i)))
	}
	_, addr := g.bridge(t, testConfig{POP3Delete: "delete"})
	p := dialPop(t, addr)
	p.cmd("DELE 1")
	p.cmd("QUIT")
	if n := len(g.f.Messages(testMailbox)); n != 1 {
		t.Errorf("INBOX %d", n)
	}
	if n := len(g.f.FolderMessages(testMailbox, "Deleted Items")); n != 0 {
		t.Errorf("Deleted Items %d, want 0 with pop3_delete = delete", n)
	}
	// A dropped connection deletes nothing.
	p = dialPop(t, addr)
	p.cmd("DELE 1")
	p.tp.Close()
	p = dialPop(t, addr)
	if got := p.cmd("STAT"); !strings.HasPrefix(got, "1 ") {
		t.Errorf("STAT after a dropped session = %q", got)
	}
	p.cmd("QUIT")
}

// Throttling in the middle of a RETR sequence: a 429 within the bound is
// waited out; a longer one is -ERR [SYS/TEMP] and the session goes on.
func TestGraphPOP3Throttled(t *testing.T) {
	g := newGraphFake(t)
	for i := range 3 {
		_ = g.f.Deliver(testMailbox, []byte(fmt.Sprintf("Subject: %d\r\n\r\nx\r\n", i)))
	}
	_, addr := g.bridge(t, testConfig{})
	p := dialPop(t, addr)
	p.multi("RETR 1")
	g.f.SetGraphFault(fakems.GraphFault{Status: 429, RetryAfter: 2, Count: 1, Route: fakems.RouteGetMIME})
	if got := p.multi("RETR 2"); !strings.HasPrefix(string(got), "Subject: ") {
		t.Errorf("RETR 2 = %q", got)
	}
	if s := g.slept(); len(s) != 1 || s[0] != 2*time.Second {
		t.Errorf("waits = %v, want one of 2s", s)
	}
	g.f.SetGraphFault(fakems.GraphFault{Status: 429, RetryAfter: 3600, Route: fakems.RouteGetMIME})
	if l := p.line("RETR 3"); !strings.HasPrefix(l, "-ERR [SYS/TEMP]") {
		t.Errorf("RETR 3 while throttled = %q", l)
	}
	g.f.SetGraphFault(fakems.GraphFault{})
	if got := p.multi("RETR 3"); !strings.HasPrefix(string(got), "Subject: ") {
		t.Errorf("RETR 3 later = %q", got)
	}
	p.cmd("QUIT")
}

func TestGraphPOP3Permissions(t *testing.T) {
	g := newGraphFake(t)
	g.tok = g.f.IssueGraphToken(testMailbox, fakems.ScopeGraphMailSend)
	e, addr := g.bridge(t, testConfig{})
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	c := newClient(t, conn)
	c.expect("+OK*")
	c.send("AUTH PLAIN " + plainIR("", testUser, testPassword))
	c.expect("-ERR [SYS/PERM] *Mail.ReadWrite*")
	c.expectEOF()
	waitFor(t, func() bool { return e.srv.ActiveSessions() == 0 })
	if a := e.logs.audits(); len(a) != 1 || !strings.Contains(a[0], "failing") {
		t.Errorf("audit = %v", a)
	}

	// Throttled at login: SYS/TEMP.
	g2 := newGraphFake(t)
	g2.f.SetGraphFault(fakems.GraphFault{Status: 503, RetryAfter: 3600})
	_, addr2 := g2.bridge(t, testConfig{})
	conn2, err := net.Dial("tcp", addr2)
	if err != nil {
		t.Fatal(err)
	}
	c2 := newClient(t, conn2)
	c2.expect("+OK*")
	c2.send("USER " + testUser)
	c2.expect("+OK*")
	c2.send("PASS " + testPassword)
	c2.expect("-ERR [SYS/TEMP] *")

	// Missing folder: SYS/PERM naming pop3_folder.
	g3 := newGraphFake(t)
	_, addr3 := g3.bridge(t, testConfig{POP3Folder: "Inbox/Tickets"})
	conn3, _ := net.Dial("tcp", addr3)
	c3 := newClient(t, conn3)
	c3.expect("+OK*")
	c3.send("AUTH PLAIN " + plainIR("", testUser, testPassword))
	c3.expect("-ERR [SYS/PERM] *pop3_folder*")
	// With the folder it serves that folder.
	if err := g3.f.CreateFolder(testMailbox, "Inbox/Tickets"); err != nil {
		t.Fatal(err)
	}
	_ = g3.f.Deliver(testMailbox, []byte("Subject: inbox\r\n\r\nx\r\n"))
	p := dialPop(t, addr3)
	if got := p.cmd("STAT"); got != "0 0" {
		t.Errorf("STAT of the empty Tickets folder = %q", got)
	}
	p.cmd("QUIT")
}

// A 10,000-message folder: STAT and UIDL answer, with every size right.
func TestGraphPOP3LargeFolder(t *testing.T) {
	if testing.Short() {
		t.Skip("10,000 messages: run without -short")
	}
	g := newGraphFake(t)
	const n = 10000
	for i := range n {
		if err := g.f.Deliver(testMailbox, []byte(fmt.Sprintf("Subject: %d\r\n\r\nbody\r\n", i))); err != nil {
			t.Fatal(err)
		}
	}
	_, addr := g.bridge(t, testConfig{})
	p := dialPop(t, addr)
	uidl := strings.Fields(string(p.multi("UIDL")))
	if len(uidl) != 2*n {
		t.Fatalf("UIDL lines = %d", len(uidl)/2)
	}
	want := 0
	for i := range n {
		want += len(fmt.Sprintf("Subject: %d\r\n\r\nbody\r\n", i))
	}
	if got := p.cmd("STAT"); got != fmt.Sprintf("%d %d", n, want) {
		t.Errorf("STAT = %q, want %d %d", got, n, want)
	}
	p.cmd("QUIT")
}
