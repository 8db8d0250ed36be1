package imapgraph

import (
	"bufio"
	"context"
	"net"
	"strings"
	"testing"
)

// loggedIn runs ServeLoggedIn the way the IMAP proxy does after a local
// LOGIN tagged a1, with "pipelined" already sent behind the LOGIN.
func (h *harness) loggedIn(pipelined string) (*bufio.Reader, net.Conn, chan error) {
	h.t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		h.t.Fatal(err)
	}
	defer ln.Close()
	cc, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		h.t.Fatal(err)
	}
	sc, err := ln.Accept()
	if err != nil {
		h.t.Fatal(err)
	}
	cc.Write([]byte(pipelined))
	started := make(chan error, 1)
	done := make(chan struct{})
	go func() {
		defer close(done)
		h.srv.ServeLoggedIn(context.Background(), sc, bufio.NewReader(sc), "a1", testAccount, "user", nil, func(err error) { started <- err })
	}()
	h.t.Cleanup(func() {
		cc.Close()
		<-done
	})
	return bufio.NewReader(cc), cc, started
}

func readLine(t *testing.T, r *bufio.Reader) string {
	t.Helper()
	l, err := r.ReadString('\n')
	if err != nil {
		t.Fatalf("read: %v (so far %q)", err, l)
	}
	return strings.TrimRight(l, "\r\n")
}

func TestServeLoggedInAnswersTheLoginTag(t *testing.T) {
	h := newHarness(t, nil)
	h.mb.deliver("f-inbox", testMIME(1, "a"), day)
	r, c, started := h.loggedIn("a2 SELECT INBOX\r\n")
	if err := <-started; err != nil {
		t.Fatal(err)
	}
	first := readLine(t, r)
	if !strings.HasPrefix(first, "a1 OK [CAPABILITY IMAP4rev1 ") || !strings.Contains(first, "IDLE") || strings.Contains(first, "AUTH=") || !strings.HasSuffix(first, "] Logged in") {
		t.Fatalf("login answer %q", first)
	}
	// The SELECT pipelined behind the LOGIN is served.
	var lines []string
	for {
		l := readLine(t, r)
		lines = append(lines, l)
		if strings.HasPrefix(l, "a2 ") {
			break
		}
	}
	if !strings.HasPrefix(lines[len(lines)-1], "a2 OK [READ-WRITE]") || !strings.Contains(strings.Join(lines, "\n"), "* 1 EXISTS") {
		t.Fatalf("SELECT answer %q", lines)
	}
	// Unknown and pre-auth commands get BAD/NO, and the session goes on.
	c.Write([]byte("a3 FROBNICATE\r\na4 LOGIN x y\r\na5 UID SEARCH SENTSINCE 1-Jan-2026\r\na6 NOOP\r\n"))
	for _, want := range []string{"a3 BAD", "a4 BAD", "a5 NO [CANNOT]", "a6 OK"} {
		l := readLine(t, r)
		for strings.HasPrefix(l, "* ") {
			l = readLine(t, r)
		}
		if !strings.HasPrefix(l, want) {
			t.Errorf("got %q, want %s...", l, want)
		}
	}
	c.Write([]byte("a7 LOGOUT\r\n"))
	if l := readLine(t, r); !strings.HasPrefix(l, "* BYE") {
		t.Errorf("LOGOUT: %q", l)
	}
}

func TestServeLoggedInRefusesUnusableMailbox(t *testing.T) {
	h := newHarness(t, nil)
	h.mb.fail["folders"] = graphErr(403, "ErrorAccessDenied")
	r, _, started := h.loggedIn("")
	if err := <-started; err == nil {
		t.Fatal("started without error")
	}
	l := readLine(t, r)
	if !strings.HasPrefix(l, "a1 NO [NOPERM] ") || !strings.Contains(l, "Mail.ReadWrite") {
		t.Fatalf("login answer %q", l)
	}
}
