package imapproxy

import (
	"bufio"
	"context"
	"crypto/tls"
	"net"
	"os"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/oauthbridge/oauthbridge/tokens"
)

// enfileListener fails Accept with ENFILE n times, then hands out conn, then
// blocks until closed.
type enfileListener struct {
	n      int
	conn   net.Conn
	once   sync.Once
	closed chan struct{}
}

func (l *enfileListener) Accept() (net.Conn, error) {
	if l.n > 0 {
		l.n--
		return nil, &net.OpError{Op: "accept", Net: "tcp", Err: os.NewSyscallError("accept4", syscall.ENFILE)}
	}
	if c := l.conn; c != nil {
		l.conn = nil
		return c, nil
	}
	<-l.closed
	return nil, &net.OpError{Op: "accept", Net: "tcp", Err: net.ErrClosed}
}

func (l *enfileListener) Close() error {
	l.once.Do(func() { close(l.closed) })
	return nil
}

func (l *enfileListener) Addr() net.Addr { return &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 143} }

// ENFILE (the system is out of file descriptors) is transient: the IMAP
// accept loop backs off and keeps serving instead of ending for good.
func TestAcceptSurvivesENFILE(t *testing.T) {
	e := newEnv(t)
	srv := e.start()
	cc, sc := net.Pipe()
	ln := &enfileListener{n: 3, conn: sc, closed: make(chan struct{})}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln, false) }()
	c := &tlsLineClient{t: t, conn: cc, br: bufio.NewReader(cc)}
	c.expect("* OK [CAPABILITY *] oauthbridge ready")
	cc.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := srv.Shutdown(ctx); err != nil {
		t.Errorf("Shutdown() = %v", err)
	}
	if err := <-served; err != nil {
		t.Errorf("Serve() = %v, want nil after Shutdown", err)
	}
}

// On the implicit-TLS port, max_connections is checked after the handshake:
// the BYE is readable by a TLS client, never plaintext inside TLS.
func TestTooManyConnectionsImplicitTLS(t *testing.T) {
	e := newEnv(t)
	e.cfg.LocalTLS = &tls.Config{Certificates: []tls.Certificate{getCert(t).cert}}
	e.cfg.IMAP.Limits.MaxConnections = 1
	srv := e.start()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(ln, true)
	dial := func() *tlsLineClient {
		conn, err := tls.Dial("tcp", ln.Addr().String(), &tls.Config{RootCAs: getCert(t).pool, ServerName: "127.0.0.1"})
		if err != nil {
			t.Fatalf("tls.Dial() = %v", err)
		}
		t.Cleanup(func() { conn.Close() })
		return &tlsLineClient{t: t, conn: conn, br: bufio.NewReader(conn)}
	}
	first := dial()
	first.expect("* OK *")
	second := dial()
	second.expect("* BYE Too many connections")
}

// gatedTokens blocks AccessToken until gate is closed.
type gatedTokens struct {
	tokens.Source
	entered chan struct{}
	gate    chan struct{}
}

func (g *gatedTokens) AccessToken(ctx context.Context, account string) (string, error) {
	g.entered <- struct{}{}
	select {
	case <-g.gate:
	case <-ctx.Done():
		return "", ctx.Err()
	}
	return g.Source.AccessToken(ctx, account)
}

// A login that completes while the bridge drains is refused with a
// temporary NO and BYE, never spliced.
func TestLoginDuringDrainRefused(t *testing.T) {
	e := newEnv(t)
	g := &gatedTokens{Source: e.toks, entered: make(chan struct{}, 1), gate: make(chan struct{})}
	e.opts.Tokens = g
	srv := e.start()
	pc := e.dialPipe()
	pc.expect("* OK *")
	pc.send("a1 LOGIN otrs secret\r\n")
	<-g.entered
	res := make(chan error, 1)
	go func() { res <- srv.Shutdown(context.Background()) }()
	waitFor(t, srv.fd.Draining)
	close(g.gate)
	pc.expect("a1 NO [UNAVAILABLE] Server shutting down*")
	pc.expect("* BYE Server shutting down")
	pc.expectClosed()
	if err := <-res; err != nil {
		t.Errorf("Shutdown() = %v", err)
	}
	if got := e.logs.audits(); len(got) != 1 || got[0] != "temporary" {
		t.Errorf("audits = %q, want [temporary]", got)
	}
	if n := e.lim.InUse("mail:acct"); n != 0 {
		t.Errorf("limiter InUse = %d after the refused login, want 0", n)
	}
}
