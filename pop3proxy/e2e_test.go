package pop3proxy

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/oauthbridge/oauthbridge/internal/fakems"
	"github.com/oauthbridge/oauthbridge/tokens"
	"github.com/oauthbridge/oauthbridge/tokens/tokenstest"
)

// bigMessage returns a well-formed message of about size bytes with CRLF
// line endings, including lines that need dot-stuffing.
func bigMessage(size int) []byte {
	var b bytes.Buffer
	b.WriteString("From: sender@example.com\r\nTo: " + testMailbox + "\r\nSubject: big attachment\r\nMessage-ID: <big@example.com>\r\n\r\n")
	for i := 0; b.Len() < size; i++ {
		if i%100 == 0 {
			b.WriteString(".a line that starts with a dot\r\n")
			continue
		}
		fmt.Fprintf(&b, "%08d %s\r\n", i, strings.Repeat("x", 66))
	}
	return b.Bytes()
}

// fakeEnv starts the fake Microsoft 365 with the test mailbox and a bridge
// configured against it.
func fakeEnv(t *testing.T, src func(f *fakems.Fake) tokens.Source) (*fakems.Fake, *env) {
	t.Helper()
	f, err := fakems.Start(fakems.Options{})
	if err != nil {
		t.Fatalf("fakems.Start() = %v", err)
	}
	t.Cleanup(func() { f.Close() })
	f.AddUser(testMailbox)
	ca := filepath.Join(t.TempDir(), "ca.pem")
	if err := f.WriteCAFile(ca); err != nil {
		t.Fatal(err)
	}
	tc := testConfig{Upstream: f.POP3Addr, CAFile: ca, Authority: f.AuthorityURL, UpstreamTimeout: "10s"}
	return f, newEnv(t, tc, envOptions{tokens: src(f)})
}

func serveTCP(t *testing.T, e *env) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go e.srv.Serve(ln, false)
	return ln.Addr().String()
}

func TestEndToEndFakeMicrosoft365(t *testing.T) {
	f, e := fakeEnv(t, func(f *fakems.Fake) tokens.Source {
		return tokenstest.StaticSource{"acct": f.IssueAccessToken(testMailbox)}
	})
	small := []byte("From: a@example.com\r\nSubject: one\r\n\r\nfirst\r\n")
	big := bigMessage(5 << 20)
	last := []byte("From: c@example.com\r\nSubject: three\r\n\r\n..dots\r\nthird\r\n")
	for _, m := range [][]byte{small, big, last} {
		if err := f.Deliver(testMailbox, m); err != nil {
			t.Fatal(err)
		}
	}
	addr := serveTCP(t, e)

	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	p := newPopClient(t, conn)
	p.cmd("")
	p.cmd("USER %s", testUser)
	p.cmd("PASS %s", testPassword)

	wantSize := len(small) + len(big) + len(last)
	if got := p.cmd("STAT"); got != fmt.Sprintf("3 %d", wantSize) {
		t.Errorf("STAT = %q, want 3 %d", got, wantSize)
	}
	list := strings.Fields(string(p.multi("LIST")))
	if len(list) != 6 || list[3] != strconv.Itoa(len(big)) {
		t.Errorf("LIST = %q, want 3 entries, #2 of %d octets", list, len(big))
	}
	uidl := strings.Fields(string(p.multi("UIDL")))
	if len(uidl) != 6 || uidl[1] == uidl[3] || uidl[3] == uidl[5] {
		t.Errorf("UIDL = %q, want 3 distinct ids", uidl)
	}

	start := time.Now()
	got := p.multi("RETR 2")
	t.Logf("RETR of %d bytes through the bridge took %v", len(big), time.Since(start))
	if !bytes.Equal(got, big) {
		t.Fatalf("RETR 2: got %d bytes, want the %d delivered bytes exactly", len(got), len(big))
	}
	if got := p.multi("RETR 3"); !bytes.Equal(got, last) {
		t.Errorf("RETR 3 = %q, want %q", got, last)
	}
	p.cmd("DELE 1")
	p.cmd("DELE 2")
	if n := len(f.Messages(testMailbox)); n != 3 {
		t.Errorf("before QUIT the mailbox has %d messages, want 3 (POP3 deletes at QUIT)", n)
	}
	p.cmd("QUIT")
	msgs := f.Messages(testMailbox)
	if len(msgs) != 1 || !bytes.Equal(msgs[0], last) {
		t.Errorf("after DELE 1, DELE 2, QUIT the mailbox holds %d messages, want only the third", len(msgs))
	}

	waitFor(t, func() bool { return e.srv.ActiveSessions() == 0 })
	closed := e.logs.find("session closed")
	if len(closed) != 1 {
		t.Fatalf("session closed lines = %d, want 1", len(closed))
	}
	if out, _ := strconv.Atoi(closed[0]["bytes_out"]); out < len(big) {
		t.Errorf("bytes_out = %d, want at least %d", out, len(big))
	}
}

func TestEndToEndUpstreamDrop(t *testing.T) {
	f, e := fakeEnv(t, func(f *fakems.Fake) tokens.Source {
		return tokenstest.StaticSource{"acct": f.IssueAccessToken(testMailbox)}
	})
	addr := serveTCP(t, e)
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	c := newClient(t, conn)
	login(t, c)
	c.send("STAT")
	c.expect("+OK 0 0")
	f.DropConnections()
	c.expectEOF()
	waitFor(t, func() bool { return e.srv.ActiveSessions() == 0 && e.lim.InUse("mail:acct") == 0 })
}

func TestEndToEndTokenRefused(t *testing.T) {
	_, e := fakeEnv(t, func(f *fakems.Fake) tokens.Source {
		return tokenstest.StaticSource{"acct": "not-a-token-the-fake-issued"}
	})
	c := e.pipe()
	c.expect("+OK*")
	c.send("AUTH PLAIN " + plainIR(testUser, testUser, testPassword))
	c.expect("-ERR [AUTH] *")
	c.expectEOF()
	e.srv.Shutdown(context.Background())
	logins := e.logs.find("login")
	if len(logins) != 1 || !strings.Contains(logins[0]["error"], "Authentication failure") {
		t.Errorf("audit lines = %v, want one quoting Exchange's refusal", logins)
	}
}
