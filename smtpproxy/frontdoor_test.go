package smtpproxy

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/base64"
	"errors"
	"net"
	"net/textproto"
	"os"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/emersion/go-smtp"
)

// An AUTH that succeeds while the bridge drains is refused with 421 4.3.2,
// as IMAP and POP3 refuse such a login.
func TestLoginDuringDrainRefused(t *testing.T) {
	entered := make(chan struct{}, 1)
	gate := make(chan struct{})
	ms := startStubMS(t)
	br := startBridge(t, ms.addr, bridgeOpts{})
	// Hold the login between the password check and the drain check.
	br.srv.afterCheck = func() {
		entered <- struct{}{}
		<-gate
	}
	conn, err := net.Dial("tcp", br.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(10 * time.Second))
	tp := textproto.NewConn(conn)
	expect := func(code int, want string) {
		t.Helper()
		_, msg, err := tp.ReadResponse(code)
		if err != nil || !strings.HasPrefix(msg, want) {
			t.Fatalf("ReadResponse() = %q, %v; want %d %s", msg, err, code, want)
		}
	}
	expect(220, "")
	tp.PrintfLine("EHLO client.test")
	expect(250, "")
	tp.PrintfLine("AUTH LOGIN")
	expect(334, "VXNlcm5hbWU6")
	tp.PrintfLine("%s", base64.StdEncoding.EncodeToString([]byte("otrs")))
	expect(334, "UGFzc3dvcmQ6")
	tp.PrintfLine("%s", base64.StdEncoding.EncodeToString([]byte(testPassword)))
	<-entered
	res := make(chan error, 1)
	go func() { res <- br.srv.Shutdown(context.Background()) }()
	waitFor(t, "drain started", br.srv.fd.Draining)
	close(gate)
	expect(421, "4.3.2 Server shutting down")
	if err := <-res; err != nil {
		t.Errorf("Shutdown() = %v", err)
	}
	if logs := br.logs.String(); !strings.Contains(logs, "result=temporary") || strings.Contains(logs, "result=ok") {
		t.Errorf("audit line is not result=temporary:\n%s", logs)
	}
}

// On the implicit-TLS port the max_connections refusal goes through TLS.
func TestMaxConnectionsImplicitTLS(t *testing.T) {
	ms := startStubMS(t)
	br := startBridge(t, ms.addr, bridgeOpts{smtpExtra: `max_connections = 1`})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go br.srv.Serve(ln, true)
	dial := func() *bufio.Reader {
		c, err := tls.Dial("tcp", ln.Addr().String(), &tls.Config{RootCAs: getPKI(t).pool, ServerName: "localhost"})
		if err != nil {
			t.Fatalf("tls.Dial() = %v", err)
		}
		t.Cleanup(func() { c.Close() })
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		return bufio.NewReader(c)
	}
	first := dial()
	if line, err := first.ReadString('\n'); err != nil || !strings.HasPrefix(line, "220 ") {
		t.Fatalf("first greeting = %q, %v", line, err)
	}
	line, err := dial().ReadString('\n')
	if err != nil || !strings.HasPrefix(line, "421 4.3.2 Too many connections") {
		t.Errorf("second greeting over TLS = %q, %v; want 421 4.3.2", line, err)
	}
}

// enobufsListener fails Accept with ENOBUFS (not a Temporary() error, so
// go-smtp's own loop would have stopped), then passes connections through.
type enobufsListener struct {
	net.Listener
	mu sync.Mutex
	n  int
}

func (l *enobufsListener) Accept() (net.Conn, error) {
	l.mu.Lock()
	if l.n > 0 {
		l.n--
		l.mu.Unlock()
		return nil, &net.OpError{Op: "accept", Net: "tcp", Err: os.NewSyscallError("accept4", syscall.ENOBUFS)}
	}
	l.mu.Unlock()
	return l.Listener.Accept()
}

func TestAcceptSurvivesENOBUFS(t *testing.T) {
	ms := startStubMS(t)
	br := startBridge(t, ms.addr, bridgeOpts{})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- br.srv.Serve(&enobufsListener{Listener: ln, n: 3}, false) }()
	c := dialClient(t, ln.Addr().String())
	if err := c.Noop(); err != nil {
		t.Errorf("Noop() = %v", err)
	}
	c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	br.srv.Shutdown(ctx)
	if err := <-served; err != ErrServerClosed {
		t.Errorf("Serve() = %v, want ErrServerClosed", err)
	}
}

// An idle session when the drain starts ends with the bridge's own 421
// "shutting down" (what the refusal of a new connection says), not
// go-smtp's "Idle timeout" text, which would send the admin looking for a
// timeout.
func TestIdleSessionDrainText(t *testing.T) {
	ms := startStubMS(t)
	br := startBridge(t, ms.addr, bridgeOpts{})
	tp, _ := smtpDial(t, br.addr)
	ehlo(t, tp)
	res := make(chan error, 1)
	go func() { res <- br.srv.Shutdown(context.Background()) }()
	code, msg, err := tp.ReadResponse(421)
	if err != nil || !strings.Contains(msg, "Server shutting down") || strings.Contains(msg, "Idle timeout") {
		t.Fatalf("idle session at drain got %d %q, %v; want 421 4.3.2 Server shutting down", code, msg, err)
	}
	if err := <-res; err != nil {
		t.Errorf("Shutdown() = %v", err)
	}
}

// The same through STARTTLS: the 421 goes through the session's TLS.
func TestIdleSessionDrainTextSTARTTLS(t *testing.T) {
	ms := startStubMS(t)
	br := startBridge(t, ms.addr, bridgeOpts{})
	c, err := smtp.DialStartTLS(br.addr, &tls.Config{RootCAs: getPKI(t).pool, ServerName: "127.0.0.1"})
	if err != nil {
		t.Fatalf("DialStartTLS() = %v", err)
	}
	defer c.Close()
	if err := c.Noop(); err != nil {
		t.Fatal(err)
	}
	res := make(chan error, 1)
	go func() { res <- br.srv.Shutdown(context.Background()) }()
	waitFor(t, "idle session closed", func() bool { return br.srv.ActiveSessions() == 0 })
	err = c.Noop()
	var se *smtp.SMTPError
	if !errors.As(err, &se) || se.Code != 421 || se.EnhancedCode != (smtp.EnhancedCode{4, 3, 2}) {
		t.Fatalf("Noop() after the drain over STARTTLS = %v, want 421 4.3.2", err)
	}
	if err := <-res; err != nil {
		t.Errorf("Shutdown() = %v", err)
	}
}
