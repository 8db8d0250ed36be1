package smtpproxy

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"
	"golang.org/x/crypto/bcrypt"

	"github.com/oauthbridge/oauthbridge/config"
	"github.com/oauthbridge/oauthbridge/internal/frontdoor"
	"github.com/oauthbridge/oauthbridge/internal/limiter"
	"github.com/oauthbridge/oauthbridge/internal/localauth"
	"github.com/oauthbridge/oauthbridge/tokens"
)

func TestMain(m *testing.M) {
	code := m.Run()
	if pkiVal != nil {
		os.RemoveAll(filepath.Dir(pkiVal.caFile))
	}
	os.Exit(code)
}

// ---- certificates ----

type testPKI struct {
	caFile, certFile, keyFile string
	pool                      *x509.CertPool
	leaf                      tls.Certificate
}

var (
	pkiOnce sync.Once
	pkiVal  *testPKI
	pkiErr  error
)

// getPKI makes one CA and one leaf for 127.0.0.1/localhost per test binary.
func getPKI(t testing.TB) *testPKI {
	pkiOnce.Do(func() { pkiVal, pkiErr = makePKI() })
	if pkiErr != nil {
		t.Fatalf("makePKI() = %v", pkiErr)
	}
	return pkiVal
}

func makePKI() (*testPKI, error) {
	dir, err := os.MkdirTemp("", "smtpproxy-pki")
	if err != nil {
		return nil, err
	}
	caKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	caTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "smtpproxy test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		return nil, err
	}
	ca, _ := x509.ParseCertificate(caDER)
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "localhost"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		DNSNames: []string{"localhost"}, IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)},
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
	if err != nil {
		return nil, err
	}
	keyDER, _ := x509.MarshalECPrivateKey(key)
	p := &testPKI{
		caFile:   filepath.Join(dir, "ca.pem"),
		certFile: filepath.Join(dir, "cert.pem"),
		keyFile:  filepath.Join(dir, "key.pem"),
		pool:     x509.NewCertPool(),
	}
	p.pool.AddCert(ca)
	for path, blk := range map[string]*pem.Block{
		p.caFile:   {Type: "CERTIFICATE", Bytes: caDER},
		p.certFile: {Type: "CERTIFICATE", Bytes: der},
		p.keyFile:  {Type: "EC PRIVATE KEY", Bytes: keyDER},
	} {
		if err := os.WriteFile(path, pem.EncodeToMemory(blk), 0o600); err != nil {
			return nil, err
		}
	}
	p.leaf, err = tls.LoadX509KeyPair(p.certFile, p.keyFile)
	return p, err
}

// ---- stub Microsoft 365 submission server ----

type sentMsg struct {
	AuthUser, From string
	To             []string
	Data           []byte
}

// stubMS behaves like smtp.office365.com:587 as far as the bridge can
// tell: STARTTLS, AUTH XOAUTH2 only after TLS, 530 5.7.57 / 550 5.7.60 /
// 432 4.3.2, "reject-" recipients get 550 5.1.1.
type stubMS struct {
	t    testing.TB
	addr string
	srv  *smtp.Server

	mu          sync.Mutex
	tokens      map[string]string // token -> mailbox
	sendAs      map[string][]string
	sent        []sentMsg
	authOK      int
	authFail    int
	authReply   *smtp.SMTPError // when set, every AUTH gets this
	dropInData  bool            // close the connection after reading part of DATA
	discardData bool            // hash nothing, keep nothing (benchmarks)
	received    int64
	perMailbox  map[string]int
	conns       map[*smtp.Conn]struct{}
}

func startStubMS(t testing.TB) *stubMS {
	p := getPKI(t)
	s := &stubMS{t: t, tokens: map[string]string{}, sendAs: map[string][]string{}, perMailbox: map[string]int{}, conns: map[*smtp.Conn]struct{}{}}
	s.srv = smtp.NewServer(smtp.BackendFunc(func(c *smtp.Conn) (smtp.Session, error) {
		s.mu.Lock()
		s.conns[c] = struct{}{}
		s.mu.Unlock()
		return &stubSession{ms: s, c: c}, nil
	}))
	s.srv.Domain = "FAKE.prod.outlook.com"
	s.srv.TLSConfig = &tls.Config{Certificates: []tls.Certificate{p.leaf}}
	s.srv.MaxMessageBytes = 157286400
	s.srv.MaxLineLength = 1 << 20
	s.srv.EnableSMTPUTF8 = true
	s.srv.EnableDSN = true
	s.srv.ErrorLog = nopLogger{}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("net.Listen() = %v", err)
	}
	s.addr = ln.Addr().String()
	go s.srv.Serve(ln)
	t.Cleanup(func() { s.srv.Close() })
	return s
}

type nopLogger struct{}

func (nopLogger) Printf(string, ...any) {}
func (nopLogger) Println(...any)        {}

func (s *stubMS) issue(mailbox string) string {
	tok := fmt.Sprintf("tok-%s-%d", mailbox, time.Now().UnixNano())
	s.mu.Lock()
	s.tokens[tok] = mailbox
	s.mu.Unlock()
	return tok
}

func (s *stubMS) allowSendAs(mailbox string, from ...string) {
	s.mu.Lock()
	s.sendAs[mailbox] = append(s.sendAs[mailbox], from...)
	s.mu.Unlock()
}

func (s *stubMS) Sent() []sentMsg {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]sentMsg(nil), s.sent...)
}

func (s *stubMS) counts() (authOK, authFail int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.authOK, s.authFail
}

func (s *stubMS) set(f func(s *stubMS)) {
	s.mu.Lock()
	f(s)
	s.mu.Unlock()
}

// dropConnections closes every open connection (Exchange closing idle ones).
func (s *stubMS) dropConnections() {
	s.mu.Lock()
	conns := make([]*smtp.Conn, 0, len(s.conns))
	for c := range s.conns {
		conns = append(conns, c)
	}
	s.mu.Unlock()
	for _, c := range conns {
		c.Conn().Close()
	}
}

type stubSession struct {
	ms      *stubMS
	c       *smtp.Conn
	mailbox string
	from    string
	to      []string
}

func (ss *stubSession) AuthMechanisms() []string { return []string{"XOAUTH2"} }

func (ss *stubSession) Auth(mech string) (sasl.Server, error) {
	if mech != "XOAUTH2" {
		return nil, smtp.ErrAuthUnknownMechanism
	}
	return xoauth2Server(func(user, tok string) error {
		ms := ss.ms
		ms.mu.Lock()
		defer ms.mu.Unlock()
		if ms.authReply != nil {
			ms.authFail++
			return ms.authReply
		}
		mb, ok := ms.tokens[tok]
		if !ok || !strings.EqualFold(mb, user) {
			ms.authFail++
			return &smtp.SMTPError{Code: 535, EnhancedCode: smtp.EnhancedCode{5, 7, 3}, Message: "Authentication unsuccessful [FAKE.prod.outlook.com]"}
		}
		if ms.perMailbox[mb] >= 3 {
			return &smtp.SMTPError{Code: 432, EnhancedCode: smtp.EnhancedCode{4, 3, 2}, Message: "Concurrent connections limit exceeded."}
		}
		ms.perMailbox[mb]++
		ms.authOK++
		ss.mailbox = mb
		return nil
	}), nil
}

type xoauth2Server func(user, tok string) error

func (f xoauth2Server) Next(resp []byte) ([]byte, bool, error) {
	if resp == nil {
		return []byte{}, false, nil
	}
	parts := strings.Split(string(resp), "\x01")
	if len(parts) != 4 || !strings.HasPrefix(parts[0], "user=") || !strings.HasPrefix(parts[1], "auth=Bearer ") {
		return nil, true, errors.New("bad XOAUTH2")
	}
	return nil, true, f(strings.TrimPrefix(parts[0], "user="), strings.TrimPrefix(parts[1], "auth=Bearer "))
}

func (ss *stubSession) Mail(from string, _ *smtp.MailOptions) error {
	if ss.mailbox == "" {
		return &smtp.SMTPError{Code: 530, EnhancedCode: smtp.EnhancedCode{5, 7, 57}, Message: "Client not authenticated to send mail."}
	}
	ss.ms.mu.Lock()
	allowed := strings.EqualFold(from, ss.mailbox)
	for _, a := range ss.ms.sendAs[ss.mailbox] {
		allowed = allowed || strings.EqualFold(a, from)
	}
	ss.ms.mu.Unlock()
	if !allowed {
		return &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 7, 60}, Message: "SMTP; Client does not have permissions to send as this sender"}
	}
	ss.from = from
	return nil
}

func (ss *stubSession) Rcpt(to string, _ *smtp.RcptOptions) error {
	if strings.HasPrefix(to, "reject-") {
		return &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 1, 1}, Message: "User unknown"}
	}
	ss.to = append(ss.to, to)
	return nil
}

func (ss *stubSession) Data(r io.Reader) error {
	ss.ms.mu.Lock()
	drop, discard := ss.ms.dropInData, ss.ms.discardData
	ss.ms.mu.Unlock()
	if drop {
		_, _ = io.CopyN(io.Discard, r, 100)
		ss.c.Conn().Close()
		return errors.New("dropped")
	}
	var buf bytes.Buffer
	var w io.Writer = &buf
	if discard {
		w = io.Discard
	}
	n, err := io.Copy(w, r)
	if err != nil {
		return err
	}
	ss.ms.mu.Lock()
	ss.ms.received += n
	if !discard {
		ss.ms.sent = append(ss.ms.sent, sentMsg{AuthUser: ss.mailbox, From: ss.from, To: ss.to, Data: buf.Bytes()})
	}
	id := len(ss.ms.sent)
	ss.ms.mu.Unlock()
	return &smtp.SMTPError{Code: 250, EnhancedCode: smtp.EnhancedCode{2, 0, 0}, Message: fmt.Sprintf("OK <QUEUE-%d@FAKE.prod.outlook.com>", id)}
}

func (ss *stubSession) Reset() { ss.from, ss.to = "", nil }

func (ss *stubSession) Logout() error {
	ss.ms.mu.Lock()
	defer ss.ms.mu.Unlock()
	delete(ss.ms.conns, ss.c)
	if ss.mailbox != "" {
		ss.ms.perMailbox[ss.mailbox]--
	}
	return nil
}

// ---- token sources ----

// stubTokens is a tokens.Source whose answers tests can change.
type stubTokens struct {
	mu       sync.Mutex
	next     map[string][]string // queued tokens per account (the last one repeats)
	errs     map[string]error
	rejected []string
}

func (s *stubTokens) AccessToken(_ context.Context, account string) (string, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.errs[account]; err != nil {
		return "", err
	}
	q := s.next[account]
	if len(q) == 0 {
		return "", &tokens.Error{Account: account, Kind: tokens.NeedsLogin, Reason: "no token"}
	}
	tok := q[0]
	if len(q) > 1 {
		s.next[account] = q[1:]
	}
	return tok, nil
}

func (s *stubTokens) Rejected(account, tok string) {
	s.mu.Lock()
	s.rejected = append(s.rejected, account)
	s.mu.Unlock()
}

func (s *stubTokens) set(account string, toks ...string) {
	s.mu.Lock()
	if s.next == nil {
		s.next = map[string][]string{}
	}
	s.next[account] = toks
	s.mu.Unlock()
}

func (s *stubTokens) fail(account string, err error) {
	s.mu.Lock()
	if s.errs == nil {
		s.errs = map[string]error{}
	}
	s.errs[account] = err
	s.mu.Unlock()
}

func (s *stubTokens) rejections() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.rejected)
}

// ---- the bridge under test ----

const testPassword = "s3cret pa$$"

var (
	hashOnce sync.Once
	hashVal  string
)

func testHash() string {
	hashOnce.Do(func() {
		h, _ := bcrypt.GenerateFromPassword([]byte(testPassword), bcrypt.MinCost)
		hashVal = string(h)
	})
	return hashVal
}

type bridgeOpts struct {
	smtpExtra    string // inside smtp { }
	accountExtra string // inside account "helpdesk" { }
	caFile       string // default: the test CA
	noTLS        bool   // no tls block (no STARTTLS)
	remote       net.Addr
	tokens       tokens.Source
	auth         localauth.Options // zero: localauth's defaults
	failures     *frontdoor.Policy // nil: 10 ms failure delay, default limit
	noBDAT       bool              // send DATA upstream even where CHUNKING is offered
	noPipelining bool              // one command per upstream round trip, as without PIPELINING
	// The Graph path (graph_test.go).
	providerExtra string // inside provider "ms" { }
	graphTokens   tokens.Source
	// wrapConfig, if set, wraps the Options.Config function (to block in
	// it at a chosen moment).
	wrapConfig func(func() *config.Config) func() *config.Config
}

type bridge struct {
	t      testing.TB
	srv    *Server
	cfg    *config.Config
	addr   string
	logs   *syncBuffer
	done   chan error
	tokens *stubTokens
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func testConfig(t testing.TB, upstreamAddr string, o bridgeOpts) *config.Config {
	p := getPKI(t)
	ca := o.caFile
	if ca == "" {
		ca = p.caFile
	}
	tlsBlock := fmt.Sprintf("tls {\n cert_file = %q\n key_file = %q\n}\n", p.certFile, p.keyFile)
	if o.noTLS {
		tlsBlock = ""
	}
	hcl := fmt.Sprintf(`
state_dir = %q
smtp {
  listen = ["127.0.0.1:0"]
  domain = "bridge.test"
  connection_wait = "200ms"
  upstream_timeout = "5s"
  %s
}
%s
provider "ms" {
  tenant      = "contoso.com"
  client_id   = "00000000-0000-0000-0000-000000000001"
  smtp_server = %q
  ca_file     = %q
  %s
}
account "helpdesk" {
  provider = "ms"
  mailbox  = "helpdesk@contoso.com"
  send_as  = ["noreply@contoso.com", "shared@contoso.com"]
  %s
}
account "ceo" {
  provider = "ms"
  mailbox  = "ceo@contoso.com"
}
user "otrs" {
  password_hash = %q
  account       = "helpdesk"
}
user "boss" {
  password_hash = %q
  account       = "ceo"
}
`, t.TempDir(), o.smtpExtra, tlsBlock, upstreamAddr, ca, o.providerExtra, o.accountExtra, testHash(), testHash())
	cfg, err := config.Parse("t.hcl", []byte(hcl))
	if err != nil {
		var ce *config.Error
		if errors.As(err, &ce) {
			var b bytes.Buffer
			ce.WriteTo(&b)
			t.Fatalf("config.Parse() = %v\n%s", err, b.String())
		}
		t.Fatalf("config.Parse() = %v", err)
	}
	return cfg
}

func startBridge(t testing.TB, upstreamAddr string, o bridgeOpts) *bridge {
	cfg := testConfig(t, upstreamAddr, o)
	b := &bridge{t: t, cfg: cfg, logs: &syncBuffer{}, done: make(chan error, 1)}
	src := o.tokens
	if src == nil {
		b.tokens = &stubTokens{}
		src = b.tokens
	}
	var logw io.Writer = b.logs
	if testing.Verbose() {
		logw = io.MultiWriter(b.logs, os.Stderr)
	}
	current := func() *config.Config { return cfg }
	if o.wrapConfig != nil {
		current = o.wrapConfig(current)
	}
	failures := frontdoor.Policy{FailureDelay: 10 * time.Millisecond}
	if o.failures != nil {
		failures = *o.failures
	}
	b.srv = New(Options{
		Config:       current,
		Auth:         localauth.New(cfg, o.auth),
		Tokens:       src,
		Limiter:      &limiter.Limiter{},
		GraphTokens:  o.graphTokens,
		Logger:       slog.New(slog.NewTextHandler(logw, &slog.HandlerOptions{Level: slog.LevelDebug})),
		FailureDelay: failures.FailureDelay,
		MaxFailures:  failures.MaxFailures,
	})
	b.srv.noBDAT = o.noBDAT
	b.srv.noPipelining = o.noPipelining
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("net.Listen() = %v", err)
	}
	b.addr = ln.Addr().String()
	var l net.Listener = ln
	if o.remote != nil {
		l = &fakeRemoteListener{Listener: ln, remote: o.remote}
	}
	go func() { b.done <- b.srv.Serve(l, false) }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = b.srv.Shutdown(ctx)
	})
	return b
}

// fakeRemoteListener makes loopback connections look like they come from
// another host, to exercise the plaintext-password rule.
type fakeRemoteListener struct {
	net.Listener
	remote net.Addr
}

func (l *fakeRemoteListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return &fakeRemoteConn{Conn: c, remote: l.remote}, nil
}

type fakeRemoteConn struct {
	net.Conn
	remote net.Addr
}

func (c *fakeRemoteConn) RemoteAddr() net.Addr { return c.remote }

// ---- the legacy client ----

func dialClient(t testing.TB, addr string) *smtp.Client {
	t.Helper()
	c, err := smtp.Dial(addr)
	if err != nil {
		t.Fatalf("smtp.Dial() = %v", err)
	}
	t.Cleanup(func() { c.Close() })
	if err := c.Hello("legacy.test"); err != nil {
		t.Fatalf("Hello() = %v", err)
	}
	return c
}

func loginClient(t testing.TB, addr, user string) *smtp.Client {
	t.Helper()
	c := dialClient(t, addr)
	if err := c.Auth(sasl.NewPlainClient("", user, testPassword)); err != nil {
		t.Fatalf("Auth(PLAIN) = %v", err)
	}
	return c
}

// send runs one transaction and returns the DATA reply text or the first error.
func send(c *smtp.Client, from string, to []string, msg []byte) (string, error) {
	if err := c.Mail(from, nil); err != nil {
		return "", err
	}
	for _, r := range to {
		if err := c.Rcpt(r, nil); err != nil {
			return "", err
		}
	}
	w, err := c.Data()
	if err != nil {
		return "", err
	}
	if _, err := w.Write(msg); err != nil {
		return "", err
	}
	resp, err := w.CloseWithResponse()
	if err != nil {
		return "", err
	}
	return resp.StatusText, nil
}

// wantCode fails unless err is an *smtp.SMTPError with the given code and
// enhanced code.
func wantCode(t testing.TB, what string, err error, code int, ec smtp.EnhancedCode) *smtp.SMTPError {
	t.Helper()
	var se *smtp.SMTPError
	if !errors.As(err, &se) {
		t.Fatalf("%s = %v, want SMTP %d %v", what, err, code, ec)
	}
	if se.Code != code || se.EnhancedCode != ec {
		t.Fatalf("%s = %d %v %q, want %d %v", what, se.Code, se.EnhancedCode, se.Message, code, ec)
	}
	return se
}

func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}
