package imapproxy

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/oauthbridge/oauthbridge/internal/transcript"
)

// tlsLineClient is a raw client over a real connection.
type tlsLineClient struct {
	t    testing.TB
	conn net.Conn
	br   *bufio.Reader
}

func (c *tlsLineClient) send(s string) {
	c.t.Helper()
	if _, err := io.WriteString(c.conn, s); err != nil {
		c.t.Fatalf("write: %v", err)
	}
}

func (c *tlsLineClient) expect(pattern string) {
	c.t.Helper()
	_ = c.conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	line, err := c.br.ReadString('\n')
	if err != nil {
		c.t.Fatalf("read: %v, want %q", err, pattern)
	}
	line = strings.TrimRight(line, "\r\n")
	if !transcript.Match(pattern, line) {
		c.t.Fatalf("got %q, want %q", line, pattern)
	}
}

func TestSTARTTLS(t *testing.T) {
	e := newEnv(t)
	e.opts.IsLoopback = func(net.Addr) bool { return false }
	e.cfg.LocalTLS = &tls.Config{Certificates: []tls.Certificate{getCert(t).cert}}
	e.start()
	cc, sc := net.Pipe()
	done := make(chan struct{})
	go func() { defer close(done); e.srv.ServeConn(sc, false) }()
	defer func() { cc.Close(); <-done }()

	c := &tlsLineClient{t: t, conn: cc, br: bufio.NewReader(cc)}
	c.expect("* OK [CAPABILITY IMAP4rev1 ID SASL-IR STARTTLS LOGINDISABLED] oauthbridge ready")
	c.send("a1 STARTTLS\r\n")
	c.expect("a1 OK Begin TLS negotiation now")
	tc := tls.Client(cc, &tls.Config{RootCAs: getCert(t).pool, ServerName: "127.0.0.1"})
	if err := tc.Handshake(); err != nil {
		t.Fatalf("Handshake() = %v", err)
	}
	c = &tlsLineClient{t: t, conn: tc, br: bufio.NewReader(tc)}
	c.send("a2 CAPABILITY\r\n")
	c.expect("* CAPABILITY IMAP4rev1 ID SASL-IR AUTH=PLAIN AUTH=LOGIN")
	c.expect("a2 OK CAPABILITY completed")
	c.send("a3 STARTTLS\r\n")
	c.expect("a3 BAD STARTTLS not available*")
	c.send("a4 LOGIN otrs secret\r\n")
	c.expect("a4 OK [CAPABILITY *] Logged in")
	c.send("a5 LOGOUT\r\n")
	c.expect("* BYE *")
	c.expect("a5 OK LOGOUT completed.")
	if got := e.logs.audits(); len(got) != 1 || got[0] != "ok" {
		t.Errorf("audits = %q, want [ok]", got)
	}
}

// Commands pipelined in plaintext after STARTTLS must never be executed
// (CVE-2011-0411 style injection); they go into the TLS handshake instead.
func TestSTARTTLSInjection(t *testing.T) {
	e := newEnv(t)
	e.cfg.LocalTLS = &tls.Config{Certificates: []tls.Certificate{getCert(t).cert}}
	e.start()
	pc := e.dialPipe()
	pc.expect("* OK *")
	pc.send("a1 STARTTLS\r\na2 LOGIN otrs secret\r\n")
	pc.expect("a1 OK Begin TLS negotiation now")
	pc.expectClosed() // the "handshake" was plaintext IMAP
	if got := e.logs.audits(); len(got) != 0 {
		t.Errorf("audits = %q; the injected LOGIN was executed", got)
	}
}

func TestServeImplicitTLS(t *testing.T) {
	e := newEnv(t)
	e.cfg.LocalTLS = &tls.Config{Certificates: []tls.Certificate{getCert(t).cert}}
	e.opts.IsLoopback = func(net.Addr) bool { return false } // TLS alone must allow passwords
	srv := e.start()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	serveErr := make(chan error, 1)
	go func() { serveErr <- srv.Serve(ln, true) }()

	conn, err := tls.Dial("tcp", ln.Addr().String(), &tls.Config{RootCAs: getCert(t).pool, ServerName: "127.0.0.1"})
	if err != nil {
		t.Fatalf("tls.Dial() = %v", err)
	}
	c := &tlsLineClient{t: t, conn: conn, br: bufio.NewReader(conn)}
	c.expect("* OK [CAPABILITY IMAP4rev1 ID SASL-IR AUTH=PLAIN AUTH=LOGIN] oauthbridge ready")
	c.send("a1 LOGIN otrs secret\r\n")
	c.expect("a1 OK [CAPABILITY *] Logged in")
	conn.Close()

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := srv.Shutdown(ctx); err != nil {
		t.Errorf("Shutdown() = %v", err)
	}
	if err := <-serveErr; err != nil {
		t.Errorf("Serve() = %v, want nil after Shutdown", err)
	}
}

func TestTotalConnectionCap(t *testing.T) {
	e := newEnv(t)
	e.cfg.IMAP.Limits.MaxConnections = 1
	e.start()
	first := e.dialPipe()
	first.expect("* OK *")
	if n := e.srv.ActiveSessions(); n != 1 {
		t.Errorf("ActiveSessions() = %d, want 1", n)
	}
	second := e.dialPipe()
	second.expect("* BYE Too many connections")
	second.expectClosed()
	first.close()
	waitFor(t, func() bool { return e.srv.ActiveSessions() == 0 })
	third := e.dialPipe()
	third.expect("* OK *")
	third.close()
}

// The per-account limit waits up to connection_wait for a slot.
func TestAccountLimitWaitsForSlot(t *testing.T) {
	e := newEnv(t)
	e.cfg.IMAP.Limits.ConnectionWait = 5 * time.Second
	e.start()
	a := e.dialPipe()
	a.expect("* OK *")
	a.send("a1 LOGIN otrs secret\r\n")
	a.expect("a1 OK *")
	b := e.dialPipe()
	b.expect("* OK *")
	b.send("b1 LOGIN otrs secret\r\n")
	b.expect("b1 OK *")
	if n := e.lim.InUse("mail:acct"); n != 2 {
		t.Fatalf("InUse() = %d, want 2", n)
	}
	c := e.dialPipe()
	c.expect("* OK *")
	c.send("c1 LOGIN otrs secret\r\n")
	time.Sleep(50 * time.Millisecond) // c is now waiting for a slot
	a.send("a2 LOGOUT\r\n")
	a.expect("* BYE *")
	a.expect("a2 OK *")
	c.expect("c1 OK [CAPABILITY *] Logged in")
	b.close()
	c.close()
	waitFor(t, func() bool { return e.lim.InUse("mail:acct") == 0 })
}

func TestFailureDelay(t *testing.T) {
	e := newEnv(t)
	e.opts.FailureDelay = 150 * time.Millisecond
	e.start()
	pc := e.dialPipe()
	pc.expect("* OK *")
	start := time.Now()
	pc.send("a1 LOGIN otrs wrong\r\n")
	pc.expect("a1 NO [AUTHENTICATIONFAILED] Invalid credentials")
	if d := time.Since(start); d < 150*time.Millisecond {
		t.Errorf("wrong password answered after %s, want at least the 150ms failure delay", d)
	}
	pc.close()
}

// Shutdown says BYE to pre-auth sessions, leaves spliced ones alone until
// its context ends, then closes them without writing anything into them.
func TestShutdown(t *testing.T) {
	e := newEnv(t)
	e.start()
	idle := e.dialPipe()
	idle.expect("* OK *")
	spliced := e.dialPipe()
	spliced.expect("* OK *")
	spliced.send("a1 LOGIN otrs secret\r\n")
	spliced.expect("a1 OK *")

	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	res := make(chan error, 1)
	go func() { res <- e.srv.Shutdown(ctx) }()

	idle.expect("* BYE Server shutting down")
	idle.expectClosed()
	// The spliced session still works during the drain.
	spliced.send("a2 NOOP\r\n")
	spliced.expect("a2 OK NOOP completed.")
	if err := <-res; !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Shutdown() = %v, want context.DeadlineExceeded", err)
	}
	spliced.expectClosed() // closed, and no BYE or other line injected
	if n := e.srv.ActiveSessions(); n != 0 {
		t.Errorf("ActiveSessions() = %d after Shutdown, want 0", n)
	}
	// New connections are refused.
	late := e.dialPipe()
	late.expect("* BYE Server shutting down")
	late.expectClosed()
}

func TestShutdownIdle(t *testing.T) {
	e := newEnv(t)
	e.start()
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	if err := e.srv.Shutdown(ctx); err != nil {
		t.Errorf("Shutdown() = %v, want nil", err)
	}
}

// No goroutine outlives its connection: run every kind of session and
// check that the goroutine count returns to where it was.
func TestNoGoroutineLeak(t *testing.T) {
	e := newEnv(t)
	e.start()
	waitFor(t, func() bool { return true })
	before := runtime.NumGoroutine()

	for _, script := range []func(pc *pipeClient){
		func(pc *pipeClient) { // spliced, then client disappears
			pc.send("a1 LOGIN otrs secret\r\n")
			pc.expect("a1 OK *")
			pc.send("a2 NOOP\r\n")
			pc.expect("a2 OK *")
		},
		func(pc *pipeClient) { // logout through the splice (upstream closes)
			pc.send("a1 LOGIN otrs secret\r\na2 LOGOUT\r\n")
			pc.expect("a1 OK *")
			pc.expect("* BYE *")
			pc.expect("a2 OK *")
		},
		func(pc *pipeClient) { // failed login, then hang up
			pc.send("a1 LOGIN otrs wrong\r\n")
			pc.expect("a1 NO *")
		},
		func(pc *pipeClient) { // hang up in the middle of a literal
			pc.send("a1 LOGIN {4}\r\n")
			pc.expect("+ Ready*")
		},
	} {
		pc := e.dialPipe()
		pc.expect("* OK *")
		script(pc)
		pc.close()
	}
	waitFor(t, func() bool { return e.srv.ActiveSessions() == 0 && e.lim.InUse("mail:acct") == 0 })
	deadline := time.Now().Add(3 * time.Second)
	for runtime.NumGoroutine() > before && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if n := runtime.NumGoroutine(); n > before {
		buf := make([]byte, 1<<16)
		t.Fatalf("goroutines: %d before, %d after\n%s", before, n, buf[:runtime.Stack(buf, true)])
	}
}

func waitFor(t testing.TB, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("condition not reached within 5s")
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestMetrics(t *testing.T) {
	e := newEnv(t)
	e.start()
	met := e.srv.m
	limitErrs := testutil.ToFloat64(met.UpstreamErrors.WithLabelValues("imap", "limit"))
	total := testutil.ToFloat64(met.SessionsTotal.WithLabelValues("imap"))
	down := testutil.ToFloat64(met.BytesRelayed.WithLabelValues("imap", "down"))

	pc := e.dialPipe()
	pc.expect("* OK *")
	if got := testutil.ToFloat64(met.SessionsActive.WithLabelValues("imap")); got < 1 {
		t.Errorf("sessions_active = %v during a session, want >= 1", got)
	}
	pc.send("a1 LOGIN otrs secret\r\na2 NOOP\r\n")
	pc.expect("a1 OK *")
	pc.expect("a2 OK NOOP completed.")
	pc.close()

	release, _ := e.lim.Acquire(context.Background(), "mail:acct", 2, 0)
	release2, _ := e.lim.Acquire(context.Background(), "mail:acct", 2, 0)
	defer release()
	defer release2()
	pc = e.dialPipe()
	pc.expect("* OK *")
	pc.send("a1 LOGIN otrs secret\r\n")
	pc.expect("a1 NO [UNAVAILABLE] *")
	pc.close()

	if got := testutil.ToFloat64(met.SessionsTotal.WithLabelValues("imap")) - total; got != 2 {
		t.Errorf("sessions_total grew by %v, want 2", got)
	}
	if got := testutil.ToFloat64(met.UpstreamErrors.WithLabelValues("imap", "limit")) - limitErrs; got != 1 {
		t.Errorf("upstream_errors{limit} grew by %v, want 1", got)
	}
	if got := testutil.ToFloat64(met.BytesRelayed.WithLabelValues("imap", "down")) - down; got < float64(len("a2 OK NOOP completed.\r\n")) {
		t.Errorf("bytes_relayed{down} grew by %v, want at least the NOOP answer", got)
	}
}
