package pop3proxy

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/textproto"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/oauthbridge/oauthbridge/internal/localauth"
	"github.com/oauthbridge/oauthbridge/tokens"
	"github.com/oauthbridge/oauthbridge/tokens/tokenstest"
)

func login(t testing.TB, c *client) {
	t.Helper()
	c.expect("+OK oauthbridge POP3 ready")
	c.send("USER " + testUser)
	c.expect("+OK send PASS")
	c.send("PASS " + testPassword)
	c.expect("+OK logged in")
}

func TestRetryTellsSourceAndUsesTwoStepAuth(t *testing.T) {
	stub := startStub(t)
	src := &staleSource{}
	e := newEnv(t, testConfig{Upstream: stub.Addr}, envOptions{tokens: src})
	c := e.pipe()
	login(t, c)
	c.send("QUIT")
	c.expect("+OK*")
	c.expectEOF()

	src.mu.Lock()
	rejected := slices.Clone(src.rejected)
	src.mu.Unlock()
	if !slices.Equal(rejected, []string{"stale-token"}) {
		t.Errorf("Rejected() calls = %q, want [stale-token]", rejected)
	}
	stub.mu.Lock()
	auth := slices.Clone(stub.authLines)
	stub.mu.Unlock()
	// Exchange accepts only "AUTH XOAUTH2" alone on its line, then the token.
	if !slices.Equal(auth, []string{"AUTH XOAUTH2", "AUTH XOAUTH2"}) {
		t.Errorf("upstream AUTH lines = %q, want two bare AUTH XOAUTH2", auth)
	}
}

func TestRejectedTokenIsLoggedWithUpstreamTextAndHint(t *testing.T) {
	stub := startStub(t)
	e := newEnv(t, testConfig{Upstream: stub.Addr}, envOptions{tokens: tokenstest.StaticSource{"acct": "bad-token"}})
	c := e.pipe()
	c.expect("+OK*")
	c.send("USER " + testUser)
	c.expect("+OK*")
	c.send("PASS " + testPassword)
	c.expect("-ERR [AUTH] *")
	c.expectEOF()
	e.srv.Shutdown(context.Background())

	logins := e.logs.find("login")
	if len(logins) != 1 {
		t.Fatalf("audit lines = %d, want 1", len(logins))
	}
	a := logins[0]
	if a["result"] != localauth.ResultUpstreamRejected || a["level"] != "ERROR" {
		t.Errorf("audit result/level = %s/%s, want upstream_rejected/ERROR", a["result"], a["level"])
	}
	for _, want := range []string{"Authentication failure: unknown user name or bad password.", "hint:", "PopEnabled", testMailbox} {
		if !strings.Contains(a["error"], want) {
			t.Errorf("audit error %q does not contain %q", a["error"], want)
		}
	}
	if a["account"] != "acct" || a["mailbox"] != testMailbox || a["user"] != testUser {
		t.Errorf("audit line = %v, want account, mailbox and user", a)
	}
	stub.mu.Lock()
	n := len(stub.authLines)
	stub.mu.Unlock()
	if n != 2 {
		t.Errorf("upstream AUTH attempts = %d, want 2 (one retry)", n)
	}
}

func TestLogsCarryNoSecrets(t *testing.T) {
	stub := startStub(t)
	e := newEnv(t, testConfig{Upstream: stub.Addr}, envOptions{})
	c := e.pipe()
	login(t, c)
	c.send("QUIT")
	c.expect("+OK*")
	c.expectEOF()
	c2 := e.pipe()
	c2.expect("+OK*")
	c2.send("AUTH PLAIN " + plainIR("", testUser, "wrong-"+testPassword))
	c2.expect("-ERR [AUTH] Invalid credentials")
	c2.conn.Close()
	e.srv.Shutdown(context.Background())

	dump := e.logs.dump()
	for _, secret := range []string{testPassword, goodToken, tokens.XOAUTH2Base64(testMailbox, goodToken)} {
		if strings.Contains(dump, secret) {
			t.Errorf("log contains secret %q:\n%s", secret, dump)
		}
	}
	closed := e.logs.find("session closed")
	if len(closed) != 1 || closed[0]["bytes_in"] == "" || closed[0]["bytes_out"] == "0" || closed[0]["account"] != "acct" {
		t.Errorf("session closed lines = %v, want one with bytes and account", closed)
	}
}

func TestTotalConnectionLimit(t *testing.T) {
	stub := startStub(t)
	e := newEnv(t, testConfig{Upstream: stub.Addr, MaxConnections: 1}, envOptions{})
	c1 := e.pipe()
	c1.expect("+OK oauthbridge POP3 ready")
	c2 := e.pipe()
	c2.expect("-ERR [SYS/TEMP] too many connections, try again later")
	c2.expectEOF()
	waitFor(t, func() bool { return e.srv.ActiveSessions() == 1 })
	c1.send("QUIT")
	c1.expect("+OK*")
	c1.expectEOF()
	waitFor(t, func() bool { return e.srv.ActiveSessions() == 0 })
	c3 := e.pipe()
	c3.expect("+OK oauthbridge POP3 ready")
}

func TestAccountLimitIsSharedAndReleased(t *testing.T) {
	stub := startStub(t)
	e := newEnv(t, testConfig{Upstream: stub.Addr, AccountMax: 1, ConnectionWait: "30ms"}, envOptions{})
	c1 := e.pipe()
	login(t, c1)
	if n := e.lim.InUse("mail:acct"); n != 1 {
		t.Fatalf("limiter InUse(mail:acct) = %d while logged in, want 1", n)
	}
	c2 := e.pipe()
	c2.expect("+OK*")
	c2.send("USER " + testUser)
	c2.expect("+OK*")
	c2.send("PASS " + testPassword)
	c2.expect("-ERR [IN-USE] *")
	c2.expectEOF()

	c1.send("QUIT")
	c1.expect("+OK*")
	c1.expectEOF()
	waitFor(t, func() bool { return e.lim.InUse("mail:acct") == 0 })
	c3 := e.pipe()
	login(t, c3)
	c3.send("QUIT")
	c3.expect("+OK*")
}

func TestAccountLimitWaitsForFreeSlot(t *testing.T) {
	stub := startStub(t)
	e := newEnv(t, testConfig{Upstream: stub.Addr, AccountMax: 1, ConnectionWait: "5s"}, envOptions{})
	release, err := e.lim.Acquire(context.Background(), "mail:acct", 1, 0)
	if err != nil {
		t.Fatal(err)
	}
	c := e.pipe()
	c.expect("+OK*")
	c.send("USER " + testUser)
	c.expect("+OK*")
	c.send("PASS " + testPassword)
	time.AfterFunc(50*time.Millisecond, release) // an IMAP session ends
	c.expect("+OK logged in")
}

func TestShutdownGraceful(t *testing.T) {
	stub := startStub(t)
	e := newEnv(t, testConfig{Upstream: stub.Addr}, envOptions{})
	pre := e.pipe()
	pre.expect("+OK oauthbridge POP3 ready")
	spliced := e.pipe()
	login(t, spliced)

	done := make(chan error, 1)
	go func() { done <- e.srv.Shutdown(context.Background()) }()
	pre.expect("-ERR [SYS/TEMP] bridge shutting down, try again later")
	pre.expectEOF()

	// The logged-in session is not disturbed: no bytes are injected and it
	// keeps working until the client quits.
	spliced.send("STAT")
	spliced.expect("+OK 0 0")
	select {
	case err := <-done:
		t.Fatalf("Shutdown() returned %v while a session was still logged in", err)
	case <-time.After(50 * time.Millisecond):
	}
	spliced.send("QUIT")
	spliced.expect("+OK Microsoft Exchange*")
	spliced.expectEOF()
	if err := <-done; err != nil {
		t.Fatalf("Shutdown() = %v", err)
	}
	late := e.pipe()
	late.expect("-ERR [SYS/TEMP] bridge shutting down*")
	late.expectEOF()
}

func TestShutdownForced(t *testing.T) {
	stub := startStub(t)
	e := newEnv(t, testConfig{Upstream: stub.Addr}, envOptions{})
	c := e.pipe()
	login(t, c)
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if err := e.srv.Shutdown(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Shutdown() = %v, want deadline exceeded", err)
	}
	c.expectEOF()
	if n := e.srv.ActiveSessions(); n != 0 {
		t.Errorf("ActiveSessions() after Shutdown = %d, want 0", n)
	}
}

func TestIdleTimeoutAfterLogin(t *testing.T) {
	stub := startStub(t)
	e := newEnv(t, testConfig{Upstream: stub.Addr, IdleTimeout: "100ms"}, envOptions{})
	c := e.pipe()
	login(t, c)
	start := time.Now()
	c.expectEOF()
	if d := time.Since(start); d < 80*time.Millisecond {
		t.Errorf("idle session closed after %v, want about 100ms", d)
	}
}

func TestFailureDelay(t *testing.T) {
	stub := startStub(t)
	e := newEnv(t, testConfig{Upstream: stub.Addr}, envOptions{})
	e.srv.failures.FailureDelay = 150 * time.Millisecond
	c := e.pipe()
	c.expect("+OK*")
	c.send("USER " + testUser)
	c.expect("+OK*")
	start := time.Now()
	c.send("PASS nope")
	c.expect("-ERR [AUTH] Invalid credentials")
	if d := time.Since(start); d < 150*time.Millisecond {
		t.Errorf("wrong password answered after %v, want at least the failure delay", d)
	}
}

// TestServeTCP runs the real listener paths: plaintext with STLS and
// implicit TLS, on loopback.
func TestServeTCP(t *testing.T) {
	stub := startStub(t)
	e := newEnv(t, testConfig{Upstream: stub.Addr, LocalTLS: true}, envOptions{})
	plain, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	implicit, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	errs := make(chan error, 2)
	go func() { errs <- e.srv.Serve(plain, false) }()
	go func() { errs <- e.srv.Serve(implicit, true) }()

	conn, err := net.Dial("tcp", plain.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	c := newClient(t, conn)
	c.expect("+OK oauthbridge POP3 ready")
	c.send("STLS")
	c.expect("+OK begin TLS negotiation")
	c.startTLS()
	c.send("USER " + testUser)
	c.expect("+OK send PASS")
	c.send("PASS " + testPassword)
	c.expect("+OK logged in")
	c.send("QUIT")
	c.expect("+OK*")
	c.expectEOF()

	tconn, err := tls.Dial("tcp", implicit.Addr().String(), &tls.Config{ServerName: "localhost", RootCAs: testPool})
	if err != nil {
		t.Fatal(err)
	}
	tc := newClient(t, tconn)
	tc.expect("+OK oauthbridge POP3 ready")
	tc.send("CAPA")
	capa := []string{tc.expect("+OK*")}
	for capa[len(capa)-1] != "." {
		capa = append(capa, tc.expect("*"))
	}
	if slices.Contains(capa, "STLS") || !slices.Contains(capa, "USER") {
		t.Errorf("CAPA over implicit TLS = %q, want USER and no STLS", capa)
	}
	login := func() {
		tc.send("AUTH PLAIN " + plainIR("", testUser, testPassword))
		tc.expect("+OK logged in")
	}
	login()
	tc.send("QUIT")
	tc.expect("+OK*")

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := e.srv.Shutdown(ctx); err != nil {
		t.Fatalf("Shutdown() = %v", err)
	}
	for range 2 {
		if err := <-errs; err != nil {
			t.Errorf("Serve() = %v, want nil after Shutdown", err)
		}
	}
}

func TestNoGoroutineLeak(t *testing.T) {
	before := runtime.NumGoroutine()
	func() {
		stub := startStub(t)
		e := newEnv(t, testConfig{Upstream: stub.Addr, PreauthTimeout: "100ms"}, envOptions{})
		// A finished login, a failed login, an abandoned pre-auth, a timeout
		// and a session cut by the client.
		c := e.pipe()
		login(t, c)
		c.send("QUIT")
		c.expect("+OK*")
		c.expectEOF()
		c = e.pipe()
		c.expect("+OK*")
		c.send("AUTH PLAIN " + plainIR("", testUser, "bad"))
		c.expect("-ERR*")
		c.conn.Close()
		c = e.pipe()
		c.expect("+OK*")
		c.expect("-ERR [SYS/TEMP] autologout")
		c.expectEOF()
		c = e.pipe()
		login(t, c)
		c.conn.Close()
		waitFor(t, func() bool { return e.srv.ActiveSessions() == 0 })
		if err := e.srv.Shutdown(context.Background()); err != nil {
			t.Fatal(err)
		}
		stub.Close()
	}()
	deadline := time.Now().Add(3 * time.Second)
	for runtime.NumGoroutine() > before {
		if time.Now().After(deadline) {
			buf := make([]byte, 1<<20)
			t.Fatalf("goroutines: %d before, %d after:\n%s", before, runtime.NumGoroutine(), buf[:runtime.Stack(buf, true)])
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func waitFor(t testing.TB, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not met within 5s")
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestParseCommand(t *testing.T) {
	for _, tc := range []struct{ line, cmd, arg string }{
		{"USER otrs", "USER", "otrs"},
		{"pass a b  c", "PASS", "a b  c"},
		{"CAPA", "CAPA", ""},
		{"auth PLAIN xyz=", "AUTH", "PLAIN xyz="},
		{"", "", ""},
	} {
		cmd, arg := parseCommand(tc.line)
		if cmd != tc.cmd || arg != tc.arg {
			t.Errorf("parseCommand(%q) = %q, %q; want %q, %q", tc.line, cmd, arg, tc.cmd, tc.arg)
		}
	}
}

func TestReadLimitedLine(t *testing.T) {
	long := strings.Repeat("a", 5000) // longer than bufio's 4 KiB buffer
	for _, tc := range []struct {
		in   string
		max  int
		want string
		err  error
	}{
		{"USER x\r\n", 10, "USER x", nil},
		{"USER x\n", 10, "USER x", nil},
		{"0123456789\r\n", 10, "0123456789", nil},
		{"0123456789A\r\n", 10, "", errLineTooLong},
		{long + "\r\n", 6000, long, nil},
		{long + "\r\n", 4500, "", errLineTooLong},
		{"no newline", 100, "", io.EOF},
	} {
		got, err := readLimitedLine(bufio.NewReader(strings.NewReader(tc.in)), tc.max)
		if got != tc.want || !errors.Is(err, tc.err) {
			t.Errorf("readLimitedLine(%.20q, %d) = %.20q, %v; want %.20q, %v", tc.in, tc.max, got, err, tc.want, tc.err)
		}
	}
}

// ---------------------------------------------------------------------------
// A small POP3 client over net/textproto for end-to-end tests.

type popClient struct {
	t  testing.TB
	tp *textproto.Conn
}

func newPopClient(t testing.TB, conn net.Conn) *popClient {
	p := &popClient{t: t, tp: textproto.NewConn(conn)}
	t.Cleanup(func() { p.tp.Close() })
	return p
}

// cmd sends a command (empty: none, just read) and returns the +OK line's
// text; -ERR fails the test.
func (p *popClient) cmd(format string, args ...any) string {
	p.t.Helper()
	if format != "" {
		if err := p.tp.PrintfLine(format, args...); err != nil {
			p.t.Fatalf("send %q: %v", format, err)
		}
	}
	line, err := p.tp.ReadLine()
	if err != nil {
		p.t.Fatalf("%q: %v", format, err)
	}
	if !strings.HasPrefix(line, "+OK") {
		p.t.Fatalf("%q: %s", fmt.Sprintf(format, args...), line)
	}
	return strings.TrimSpace(strings.TrimPrefix(line, "+OK"))
}

// multi runs a command with a multi-line answer and returns the body
// exactly as sent (CRLF kept), with dot-stuffing undone.
func (p *popClient) multi(format string, args ...any) []byte {
	p.t.Helper()
	p.cmd(format, args...)
	var out bytes.Buffer
	atStart := true
	for {
		line, err := p.tp.R.ReadSlice('\n')
		if err != nil && !errors.Is(err, bufio.ErrBufferFull) {
			p.t.Fatalf("reading %q body: %v", format, err)
		}
		if atStart && string(line) == ".\r\n" {
			return out.Bytes()
		}
		if atStart && len(line) > 0 && line[0] == '.' {
			line = line[1:]
		}
		out.Write(line)
		atStart = err == nil
	}
}

func TestPreauthCommandLimit(t *testing.T) {
	stub := startStub(t)
	e := newEnv(t, testConfig{Upstream: stub.Addr}, envOptions{})
	c := e.pipe()
	c.expect("+OK*")
	for range MaxPreauthCommands {
		c.send("AUTH")
		for c.expect("*") != "." {
		}
	}
	c.send("AUTH")
	c.expect("-ERR too many commands before login, closing connection")
	c.expectEOF()
}
