package frontdoor

import (
	"bufio"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net"
	"os"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// lineProto is a tiny protocol for the tests: a greeting, then one reply per
// line; "SPLICE" logs in (then echoes without deadlines), "HOLD" protects
// the next line, "PANIC" panics.
func lineProto(started chan<- *Session) func(*Session) {
	return func(s *Session) {
		if started != nil {
			started <- s
		}
		c := s.Conn()
		br := bufio.NewReader(c)
		fmt.Fprintf(c, "HELLO\r\n")
		for {
			_ = c.SetReadDeadline(time.Now().Add(time.Minute))
			line, err := br.ReadString('\n')
			if err != nil {
				if s.Draining() && errors.Is(err, os.ErrDeadlineExceeded) {
					fmt.Fprintf(c, "BYE shutting down\r\n")
				}
				return
			}
			switch line = strings.TrimSpace(line); line {
			case "PANIC":
				panic("test panic")
			case "SPLICE":
				if err := s.BeginSplice(); err != nil {
					fmt.Fprintf(c, "NO %v\r\n", err)
					continue
				}
				fmt.Fprintf(c, "OK spliced\r\n")
				_ = c.SetDeadline(time.Time{})
				for {
					l, err := br.ReadString('\n')
					if err != nil {
						return
					}
					fmt.Fprintf(c, "SPLICED %s", l)
				}
			case "HOLD":
				release := s.Hold()
				fmt.Fprintf(c, "OK held\r\n")
				_ = c.SetReadDeadline(time.Now().Add(time.Minute))
				l, err := br.ReadString('\n')
				if err != nil {
					release()
					return
				}
				fmt.Fprintf(c, "HELD %s", l)
				release()
			default:
				fmt.Fprintf(c, "ECHO %s\r\n", line)
			}
		}
	}
}

func refuse(w io.Writer, why Reason) { fmt.Fprintf(w, "REFUSED %s\r\n", why) }

func newTestServer(t *testing.T, lim Limits, started chan<- *Session) *Server {
	t.Helper()
	s := New(Options{Proto: "test", Limits: func() Limits { return lim }, Serve: lineProto(started), Refuse: refuse})
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		s.Shutdown(ctx)
	})
	return s
}

type lineClient struct {
	t  *testing.T
	c  net.Conn
	br *bufio.Reader
}

func newLineClient(t *testing.T, c net.Conn) *lineClient {
	t.Cleanup(func() { c.Close() })
	return &lineClient{t: t, c: c, br: bufio.NewReader(c)}
}

func (c *lineClient) send(s string) {
	c.t.Helper()
	if _, err := io.WriteString(c.c, s+"\r\n"); err != nil {
		c.t.Fatalf("write %q: %v", s, err)
	}
}

func (c *lineClient) expect(want string) {
	c.t.Helper()
	_ = c.c.SetReadDeadline(time.Now().Add(10 * time.Second))
	line, err := c.br.ReadString('\n')
	if err != nil {
		c.t.Fatalf("read: %v, want %q", err, want)
	}
	if got := strings.TrimRight(line, "\r\n"); got != want {
		c.t.Fatalf("got %q, want %q", got, want)
	}
}

func (c *lineClient) expectClosed() {
	c.t.Helper()
	_ = c.c.SetReadDeadline(time.Now().Add(10 * time.Second))
	if line, err := c.br.ReadString('\n'); err == nil {
		c.t.Fatalf("got %q, want the connection closed", line)
	} else if errors.Is(err, os.ErrDeadlineExceeded) {
		c.t.Fatalf("connection still open")
	}
}

func (c *lineClient) Close() { c.c.Close() }

// pipe serves one side of net.Pipe and returns the client side.
func pipe(t *testing.T, s *Server) *lineClient {
	cc, sc := net.Pipe()
	go s.ServeConn(sc, false)
	return newLineClient(t, cc)
}

func TestTransient(t *testing.T) {
	op := func(err error) error {
		return &net.OpError{Op: "accept", Net: "tcp", Err: os.NewSyscallError("accept4", err)}
	}
	for _, tc := range []struct {
		err  error
		want bool
	}{
		{op(syscall.EMFILE), true},
		{op(syscall.ENFILE), true},
		{op(syscall.ENOBUFS), true},
		{op(syscall.ENOMEM), true},
		{op(syscall.ECONNABORTED), true},
		{op(syscall.EPROTO), true},
		{&net.OpError{Op: "accept", Err: os.ErrDeadlineExceeded}, true},
		{op(syscall.EBADF), false},
		{op(syscall.EINVAL), false},
		{net.ErrClosed, false},
		{errors.New("something else"), false},
	} {
		if got := Transient(tc.err); got != tc.want {
			t.Errorf("Transient(%v) = %v, want %v", tc.err, got, tc.want)
		}
	}
}

// fakeListener returns the queued results from Accept, then blocks until
// closed.
type fakeListener struct {
	results chan acceptResult
	once    sync.Once
	closed  chan struct{}
}

type acceptResult struct {
	c   net.Conn
	err error
}

func newFakeListener(rs ...acceptResult) *fakeListener {
	l := &fakeListener{results: make(chan acceptResult, len(rs)), closed: make(chan struct{})}
	for _, r := range rs {
		l.results <- r
	}
	return l
}

func (l *fakeListener) Accept() (net.Conn, error) {
	select {
	case r := <-l.results:
		return r.c, r.err
	case <-l.closed:
		return nil, &net.OpError{Op: "accept", Net: "tcp", Err: net.ErrClosed}
	}
}

func (l *fakeListener) Close() error {
	l.once.Do(func() { close(l.closed) })
	return nil
}

func (l *fakeListener) Addr() net.Addr { return &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 9993} }

func acceptErr(errno syscall.Errno) acceptResult {
	return acceptResult{err: &net.OpError{Op: "accept", Net: "tcp", Err: os.NewSyscallError("accept4", errno)}}
}

// The accept loop retries every transient error with a doubling backoff,
// resets it after a success, and keeps serving.
func TestAcceptBackoffNeverGivesUp(t *testing.T) {
	started := make(chan *Session, 2)
	s := newTestServer(t, Limits{}, started)
	var mu sync.Mutex
	var waits []time.Duration
	s.sleep = func(stop <-chan struct{}, d time.Duration) bool {
		mu.Lock()
		waits = append(waits, d)
		mu.Unlock()
		return true
	}
	cc1, sc1 := net.Pipe()
	cc2, sc2 := net.Pipe()
	var rs []acceptResult
	for range 9 {
		rs = append(rs, acceptErr(syscall.ENFILE))
	}
	rs = append(rs, acceptErr(syscall.ENOBUFS), acceptErr(syscall.EMFILE), acceptResult{c: sc1},
		acceptErr(syscall.ENOMEM), acceptErr(syscall.ECONNABORTED), acceptResult{c: sc2})
	ln := newFakeListener(rs...)
	served := make(chan error, 1)
	go func() { served <- s.Serve(ln, false) }()

	for _, cc := range []net.Conn{cc1, cc2} {
		c := newLineClient(t, cc)
		c.expect("HELLO")
		c.send("ping")
		c.expect("ECHO ping")
		<-started
	}
	mu.Lock()
	got := fmt.Sprint(waits)
	mu.Unlock()
	if want := "[5ms 10ms 20ms 40ms 80ms 160ms 320ms 640ms 1s 1s 1s 5ms 10ms]"; got != want {
		t.Errorf("backoffs = %s, want %s", got, want)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	s.Shutdown(ctx)
	if err := <-served; err != nil {
		t.Errorf("Serve() = %v, want nil after Shutdown", err)
	}
}

// A listener that fails for good ends Serve with a *ListenerError naming it.
func TestListenerDies(t *testing.T) {
	for _, err := range []error{
		acceptErr(syscall.EBADF).err,
		&net.OpError{Op: "accept", Net: "tcp", Err: net.ErrClosed}, // closed behind our back
	} {
		s := newTestServer(t, Limits{}, nil)
		s.sleep = func(<-chan struct{}, time.Duration) bool { t.Errorf("backoff on %v", err); return true }
		got := s.Serve(newFakeListener(acceptResult{err: err}), false)
		var le *ListenerError
		if !errors.As(got, &le) || le.Proto != "test" || le.Addr != "127.0.0.1:9993" || !errors.Is(got, err) {
			t.Errorf("Serve() = %v, want a *ListenerError for test 127.0.0.1:9993 wrapping %v", got, err)
		}
	}
}

// A backoff in progress ends with Shutdown.
func TestBackoffEndsWithShutdown(t *testing.T) {
	s := newTestServer(t, Limits{}, nil)
	sleeping := make(chan struct{})
	s.sleep = func(stop <-chan struct{}, d time.Duration) bool {
		close(sleeping)
		<-stop
		return false
	}
	served := make(chan error, 1)
	go func() { served <- s.Serve(newFakeListener(acceptErr(syscall.EMFILE)), false) }()
	<-sleeping
	if err := s.Shutdown(context.Background()); err != nil {
		t.Errorf("Shutdown() = %v", err)
	}
	if err := <-served; err != nil {
		t.Errorf("Serve() = %v, want nil", err)
	}
}

func TestMaxConnections(t *testing.T) {
	started := make(chan *Session, 4)
	s := newTestServer(t, Limits{MaxConnections: 1}, started)
	a := pipe(t, s)
	a.expect("HELLO")
	<-started
	b := pipe(t, s)
	b.expect("REFUSED too many connections")
	b.expectClosed()
	a.Close()
	waitFor(t, func() bool { return s.ActiveSessions() == 0 })
	c := pipe(t, s)
	c.expect("HELLO")
}

// On an implicit-TLS listener the limit is checked after the handshake: the
// refusal is readable by a TLS client, never plaintext inside TLS.
func TestMaxConnectionsImplicitTLS(t *testing.T) {
	cert, pool := testCert(t)
	started := make(chan *Session, 4)
	s := newTestServer(t, Limits{MaxConnections: 1, TLS: &tls.Config{Certificates: []tls.Certificate{cert}}}, started)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go s.Serve(ln, true)
	dial := func() *lineClient {
		c, err := tls.Dial("tcp", ln.Addr().String(), &tls.Config{RootCAs: pool, ServerName: "127.0.0.1"})
		if err != nil {
			t.Fatalf("tls.Dial() = %v", err)
		}
		return newLineClient(t, c)
	}
	a := dial()
	a.expect("HELLO")
	sess := <-started
	if !sess.TLS() {
		t.Errorf("Session.TLS() = false on an implicit-TLS listener")
	}
	b := dial()
	b.expect("REFUSED too many connections")
	b.expectClosed()
}

// A connection still in its TLS handshake counts toward max_connections:
// silent half-open handshakes cannot push the sessions past the cap; the
// refusals are readable (through TLS), and refusal handshakes themselves
// are bounded.
func TestMaxConnectionsCountsHandshakes(t *testing.T) {
	cert, pool := testCert(t)
	started := make(chan *Session, 4)
	s := newTestServer(t, Limits{MaxConnections: 1, HandshakeTimeout: time.Minute, TLS: &tls.Config{Certificates: []tls.Certificate{cert}}}, started)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go s.Serve(ln, true)
	// A client that connects and never says hello.
	silent, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer silent.Close()
	waitFor(t, func() bool { return s.ActiveSessions() == 1 })

	c, err := tls.Dial("tcp", ln.Addr().String(), &tls.Config{RootCAs: pool, ServerName: "127.0.0.1"})
	if err != nil {
		t.Fatalf("tls.Dial() = %v", err)
	}
	b := newLineClient(t, c)
	b.expect("REFUSED too many connections")
	b.expectClosed()

	// The slot frees when the silent handshake ends.
	silent.Close()
	waitFor(t, func() bool { return s.ActiveSessions() == 0 })
	c, err = tls.Dial("tcp", ln.Addr().String(), &tls.Config{RootCAs: pool, ServerName: "127.0.0.1"})
	if err != nil {
		t.Fatalf("tls.Dial() = %v", err)
	}
	newLineClient(t, c).expect("HELLO")
}

// Drain: a pre-auth session ends with its text, a spliced one runs until
// the context ends and is then closed without a byte written into it, a
// login completing during the drain is refused, new connections are refused.
func TestDrain(t *testing.T) {
	started := make(chan *Session, 4)
	s := newTestServer(t, Limits{}, started)
	idle := pipe(t, s)
	idle.expect("HELLO")
	spliced := pipe(t, s)
	spliced.expect("HELLO")
	spliced.send("SPLICE")
	spliced.expect("OK spliced")
	<-started
	<-started

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	res := make(chan error, 1)
	go func() { res <- s.Shutdown(ctx) }()
	idle.expect("BYE shutting down")
	idle.expectClosed()
	spliced.send("still here")
	spliced.expect("SPLICED still here")
	waitFor(t, func() bool { return s.ActiveSessions() == 1 })

	late := pipe(t, s)
	late.expect("REFUSED shutting down")
	late.expectClosed()
	select {
	case err := <-res:
		t.Fatalf("Shutdown() = %v while a spliced session runs", err)
	default:
	}
	cancel()
	if err := <-res; !errors.Is(err, context.Canceled) {
		t.Errorf("Shutdown() = %v, want context.Canceled", err)
	}
	spliced.expectClosed()
	if n := s.ActiveSessions(); n != 0 {
		t.Errorf("ActiveSessions() = %d after Shutdown, want 0", n)
	}
}

// A login that completes while the server drains is refused.
func TestSpliceRefusedDuringDrain(t *testing.T) {
	started := make(chan *Session, 1)
	s := newTestServer(t, Limits{}, started)
	c := pipe(t, s)
	c.expect("HELLO")
	sess := <-started
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go s.Shutdown(ctx)
	waitFor(t, sess.Draining)
	if err := sess.BeginSplice(); !errors.Is(err, ErrShuttingDown) {
		t.Errorf("BeginSplice() during drain = %v, want ErrShuttingDown", err)
	}
	c.expect("BYE shutting down")
}

// Shutdown returns nil once every session ended by itself.
func TestDrainGraceful(t *testing.T) {
	s := newTestServer(t, Limits{}, nil)
	c := pipe(t, s)
	c.expect("HELLO")
	c.send("SPLICE")
	c.expect("OK spliced")
	res := make(chan error, 1)
	go func() { res <- s.Shutdown(context.Background()) }()
	waitFor(t, s.Draining)
	c.send("x")
	c.expect("SPLICED x")
	c.Close()
	if err := <-res; err != nil {
		t.Errorf("Shutdown() = %v, want nil", err)
	}
}

// Held work survives the drain; the session's next read after it ends.
func TestHold(t *testing.T) {
	started := make(chan *Session, 1)
	s := newTestServer(t, Limits{}, started)
	c := pipe(t, s)
	c.expect("HELLO")
	c.send("HOLD")
	c.expect("OK held")
	sess := <-started
	res := make(chan error, 1)
	go func() { res <- s.Shutdown(context.Background()) }()
	waitFor(t, sess.Draining)
	c.send("body")
	c.expect("HELD body")
	c.expect("BYE shutting down")
	c.expectClosed()
	if err := <-res; err != nil {
		t.Errorf("Shutdown() = %v", err)
	}
}

func TestPanicIsRecovered(t *testing.T) {
	s := newTestServer(t, Limits{}, nil)
	c := pipe(t, s)
	c.expect("HELLO")
	c.send("PANIC")
	c.expectClosed()
	waitFor(t, func() bool { return s.ActiveSessions() == 0 })
	d := pipe(t, s)
	d.expect("HELLO")
}

// An implicit-TLS listener without certificates closes connections.
func TestImplicitTLSWithoutConfig(t *testing.T) {
	s := newTestServer(t, Limits{}, nil)
	cc, sc := net.Pipe()
	done := make(chan struct{})
	go func() { s.ServeConn(sc, true); close(done) }()
	c := newLineClient(t, cc)
	c.expectClosed()
	<-done
}

// Handoff gives admitted connections to a library's own loop and keeps
// the session until the library closes the connection.
func TestHandoff(t *testing.T) {
	h := NewHandoff(nil)
	s := New(Options{Proto: "test", Limits: func() Limits { return Limits{} }, Serve: h.Serve, Refuse: refuse})
	cc, sc := net.Pipe()
	served := make(chan struct{})
	go func() { s.ServeConn(sc, false); close(served) }()
	got, err := h.Accept()
	if err != nil {
		t.Fatalf("Accept() = %v", err)
	}
	if SessionOf(got) == nil {
		t.Errorf("SessionOf(handed-off conn) = nil")
	}
	go io.WriteString(got, "hi\r\n")
	c := newLineClient(t, cc)
	c.expect("hi")
	if n := s.ActiveSessions(); n != 1 {
		t.Errorf("ActiveSessions() = %d while the library holds the connection, want 1", n)
	}
	got.Close()
	<-served
	h.Close()
	if _, err := h.Accept(); !errors.Is(err, net.ErrClosed) {
		t.Errorf("Accept() after Close = %v, want net.ErrClosed", err)
	}
}

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not reached within 10s")
		}
		time.Sleep(2 * time.Millisecond)
	}
}

func testCert(t *testing.T) (tls.Certificate, *x509.CertPool) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: "127.0.0.1"},
		IPAddresses:  []net.IP{net.IPv4(127, 0, 0, 1)},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
		IsCA:         true,
		KeyUsage:     x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},

		BasicConstraintsValid: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(leaf)
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key, Leaf: leaf}, pool
}
