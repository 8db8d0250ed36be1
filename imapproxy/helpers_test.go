package imapproxy

import (
	"bufio"
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"log/slog"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/crypto/bcrypt"

	"github.com/oauthbridge/oauthbridge/config"
	"github.com/oauthbridge/oauthbridge/internal/limiter"
	"github.com/oauthbridge/oauthbridge/internal/localauth"
	"github.com/oauthbridge/oauthbridge/internal/transcript"
	"github.com/oauthbridge/oauthbridge/tokens"
)

// Test users and their passwords.
var testUsers = map[string]string{
	"otrs": "secret",
	"glpi": `we"ird\pass word`,
}

const testMailbox = "shared@contoso.com"

// testCert is a self-signed CA+leaf certificate for 127.0.0.1, used by the
// stub upstream and as the bridge's local certificate.
type testCert struct {
	cert tls.Certificate
	pool *x509.CertPool
	pem  []byte
}

var (
	certOnce sync.Once
	theCert  testCert
	hashOnce sync.Once
	hashes   map[string]string
)

func getCert(t testing.TB) testCert {
	certOnce.Do(func() {
		key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			panic(err)
		}
		tmpl := &x509.Certificate{
			SerialNumber:          big.NewInt(1),
			Subject:               pkix.Name{CommonName: "imapproxy test"},
			NotBefore:             time.Now().Add(-time.Hour),
			NotAfter:              time.Now().Add(24 * time.Hour),
			IsCA:                  true,
			BasicConstraintsValid: true,
			KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
			ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
			IPAddresses:           []net.IP{net.ParseIP("127.0.0.1")},
			DNSNames:              []string{"localhost"},
		}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
		if err != nil {
			panic(err)
		}
		leaf, _ := x509.ParseCertificate(der)
		theCert.cert = tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key, Leaf: leaf}
		theCert.pool = x509.NewCertPool()
		theCert.pool.AddCert(leaf)
		theCert.pem = pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
	})
	return theCert
}

func userHashes() map[string]string {
	hashOnce.Do(func() {
		hashes = map[string]string{}
		for u, p := range testUsers {
			h, err := bcrypt.GenerateFromPassword([]byte(p), bcrypt.MinCost)
			if err != nil {
				panic(err)
			}
			hashes[u] = string(h)
		}
	})
	return hashes
}

// testConfig builds a configuration whose account "acct" points at
// upstreamAddr with caFile trusted.
func testConfig(t testing.TB, upstreamAddr, caFile string, extraAccount string) *config.Config {
	t.Helper()
	h := userHashes()
	src := fmt.Sprintf(`
state_dir = %q
imap {
  listen          = ["127.0.0.1:0"]
  preauth_timeout = "5s"
  connection_wait = "100ms"
  upstream_timeout = "5s"
}
provider "ms" {
  tenant      = "contoso.com"
  client_id   = "00000000-0000-0000-0000-000000000001"
  authority   = "http://127.0.0.1:1"
  imap_server = %q
  ca_file     = %q
}
account "acct" {
  provider        = "ms"
  mailbox         = %q
  delegate        = "alice@contoso.com"
  max_connections = 2
}
%s
user "otrs" {
  password_hash = %q
  account       = "acct"
}
user "glpi" {
  password_hash = %q
  account       = "acct"
}
`, t.TempDir(), upstreamAddr, caFile, testMailbox, extraAccount, h["otrs"], h["glpi"])
	cfg, err := config.Parse("t.hcl", []byte(src))
	if err != nil {
		var ce *config.Error
		if ok := asConfigErr(err, &ce); ok {
			var b bytes.Buffer
			ce.WriteTo(&b)
			t.Fatalf("config.Parse() = %v\n%s", err, b.String())
		}
		t.Fatalf("config.Parse() = %v", err)
	}
	return cfg
}

func asConfigErr(err error, target **config.Error) bool {
	ce, ok := err.(*config.Error)
	if ok {
		*target = ce
	}
	return ok
}

func writeCA(t testing.TB, pemBytes []byte) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "ca.pem")
	if err := os.WriteFile(p, pemBytes, 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// fakeTokens is a tokens.Source with a scripted sequence of tokens or an
// error, recording Rejected calls.
type fakeTokens struct {
	mu       sync.Mutex
	seq      []string
	err      error
	rejected []string
	calls    int
}

func (f *fakeTokens) AccessToken(ctx context.Context, account string) (string, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls++
	if f.err != nil {
		return "", f.err
	}
	if len(f.seq) == 0 {
		return "", &tokens.Error{Account: account, Kind: tokens.NeedsLogin, Reason: "no token"}
	}
	tok := f.seq[0]
	if len(f.seq) > 1 {
		f.seq = f.seq[1:]
	}
	return tok, nil
}

func (f *fakeTokens) Rejected(account, tok string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.rejected = append(f.rejected, tok)
}

// logBuffer collects JSON log lines.
type logBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *logBuffer) entries() []map[string]any {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []map[string]any
	for _, line := range strings.Split(l.b.String(), "\n") {
		if line == "" {
			continue
		}
		var m map[string]any
		if json.Unmarshal([]byte(line), &m) == nil {
			out = append(out, m)
		}
	}
	return out
}

// audits returns the result of every audit ("login") line.
func (l *logBuffer) audits() []string {
	var out []string
	for _, e := range l.entries() {
		if e["msg"] == "login" {
			out = append(out, fmt.Sprint(e["result"]))
		}
	}
	return out
}

func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// env is a bridge wired to a stub upstream.
type env struct {
	t       testing.TB
	up      *stubUpstream
	cfg     *config.Config
	toks    *fakeTokens
	lim     *limiter.Limiter
	logs    *logBuffer
	srv     *Server
	opts    Options
	authOpt localauth.Options
}

func newEnv(t testing.TB) *env {
	t.Helper()
	c := getCert(t)
	up := startStub(t, c)
	e := &env{t: t, up: up, toks: &fakeTokens{seq: []string{"good"}}, lim: &limiter.Limiter{}, logs: &logBuffer{}}
	e.cfg = testConfig(t, up.addr, writeCA(t, c.pem), "")
	e.opts = Options{
		Config:       func() *config.Config { return e.cfg },
		Tokens:       e.toks,
		Limiter:      e.lim,
		Logger:       slog.New(slog.NewJSONHandler(e.logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
		FailureDelay: -1,
	}
	return e
}

// start builds the server; call after adjusting e.cfg/e.opts.
func (e *env) start() *Server {
	e.opts.Auth = localauth.New(e.cfg, e.authOpt)
	e.srv = New(e.opts)
	e.t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		e.srv.Shutdown(ctx)
		if e.t.Failed() {
			e.t.Logf("bridge log:\n%s", e.logs.String())
		}
	})
	return e.srv
}

// pipeClient is a raw line client over net.Pipe with a reader goroutine, so
// writes never deadlock against the server's (unbuffered) writes.
type pipeClient struct {
	t     testing.TB
	conn  net.Conn
	lines chan string
	done  chan struct{} // ServeConn returned
}

func (e *env) dialPipe() *pipeClient {
	cc, sc := net.Pipe()
	pc := &pipeClient{t: e.t, conn: cc, lines: make(chan string, 1024), done: make(chan struct{})}
	go func() {
		defer close(pc.done)
		e.srv.ServeConn(sc, false)
	}()
	go pc.readLoop(bufio.NewReader(cc))
	return pc
}

func (p *pipeClient) readLoop(br *bufio.Reader) {
	defer close(p.lines)
	for {
		line, err := br.ReadString('\n')
		if line != "" {
			p.lines <- strings.TrimRight(line, "\r\n")
		}
		if err != nil {
			return
		}
	}
}

func (p *pipeClient) send(s string) {
	p.t.Helper()
	_ = p.conn.SetWriteDeadline(time.Now().Add(5 * time.Second))
	if _, err := p.conn.Write([]byte(s)); err != nil {
		p.t.Fatalf("write %q: %v", s, err)
	}
}

func (p *pipeClient) next() (string, bool) {
	select {
	case l, ok := <-p.lines:
		return l, ok
	case <-time.After(5 * time.Second):
		p.t.Fatalf("timed out waiting for a server line")
		return "", false
	}
}

func (p *pipeClient) expect(pattern string) string {
	p.t.Helper()
	l, ok := p.next()
	if !ok {
		p.t.Fatalf("connection closed, want %q", pattern)
	}
	if !transcript.Match(pattern, l) {
		p.t.Fatalf("got %q, want %q", l, pattern)
	}
	return l
}

func (p *pipeClient) expectClosed() {
	p.t.Helper()
	if l, ok := p.next(); ok {
		p.t.Fatalf("got %q, want the connection closed", l)
	}
	select {
	case <-p.done:
	case <-time.After(5 * time.Second):
		p.t.Fatalf("ServeConn did not return")
	}
}

func (p *pipeClient) close() {
	p.conn.Close()
	<-p.done
}

// stubUpstream is a tiny Exchange-like IMAP server over TLS: XOAUTH2 with
// SASL-IR only, the error challenge, the "not connected" quirk, and a few
// post-auth commands (NOOP, CAPABILITY, IDLE, FETCH of a bulk literal,
// LOGOUT); anything else gets "tag OK NAME completed.".
type stubUpstream struct {
	ln   net.Listener
	addr string

	mu           sync.Mutex
	valid        map[string]bool // accepted tokens
	mode         string          // "", notconnected, challenge, throttled, unavailable, codecaps, byegreeting, throttledprobe
	auths        int
	conns        map[net.Conn]struct{}
	bulk         []byte
	commandsSeen []string
	wg           sync.WaitGroup
}

func startStub(t testing.TB, c testCert) *stubUpstream {
	t.Helper()
	ln, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{Certificates: []tls.Certificate{c.cert}})
	if err != nil {
		t.Fatalf("tls.Listen() = %v", err)
	}
	s := &stubUpstream{ln: ln, addr: ln.Addr().String(), valid: map[string]bool{"good": true, "fresh": true}, conns: map[net.Conn]struct{}{}}
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			s.mu.Lock()
			s.conns[c] = struct{}{}
			s.mu.Unlock()
			s.wg.Add(1)
			go func() {
				defer s.wg.Done()
				s.serve(c)
				s.mu.Lock()
				delete(s.conns, c)
				s.mu.Unlock()
				c.Close()
			}()
		}
	}()
	t.Cleanup(s.close)
	return s
}

func (s *stubUpstream) close() {
	s.ln.Close()
	s.mu.Lock()
	for c := range s.conns {
		c.Close()
	}
	s.mu.Unlock()
	s.wg.Wait()
}

func (s *stubUpstream) setMode(m string) {
	s.mu.Lock()
	s.mode = m
	s.mu.Unlock()
}

func (s *stubUpstream) seen() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.commandsSeen...)
}

func (s *stubUpstream) serve(c net.Conn) {
	s.mu.Lock()
	mode, bulk := s.mode, s.bulk
	s.mu.Unlock()
	br := bufio.NewReader(c)
	bw := bufio.NewWriter(c)
	w := func(lines ...string) {
		for _, l := range lines {
			bw.WriteString(l + "\r\n")
		}
		bw.Flush()
	}
	if mode == "byegreeting" {
		w("* BYE Connection closed. 14")
		return
	}
	w("* OK The Microsoft Exchange IMAP4 service is ready. [c3R1Yg==]")
	authed := false
	for {
		line, err := br.ReadString('\n')
		if err != nil {
			return
		}
		line = strings.TrimRight(line, "\r\n")
		tag, rest, _ := strings.Cut(line, " ")
		name, arg, _ := strings.Cut(rest, " ")
		name = strings.ToUpper(name)
		if authed {
			s.mu.Lock()
			s.commandsSeen = append(s.commandsSeen, line)
			s.mu.Unlock()
		}
		if authed && mode == "notconnected" {
			w(tag + " BAD User is authenticated but not connected.")
			continue
		}
		if authed && mode == "throttledprobe" {
			w(tag + " BAD Request is throttled. Suggested Backoff Time: 500 milliseconds")
			continue
		}
		switch name {
		case "CAPABILITY":
			if authed {
				w("* CAPABILITY IMAP4 IMAP4rev1 AUTH=PLAIN AUTH=XOAUTH2 SASL-IR UIDPLUS MOVE ID UNSELECT CHILDREN IDLE NAMESPACE LITERAL+", tag+" OK CAPABILITY completed.")
			} else {
				w("* CAPABILITY IMAP4 IMAP4rev1 AUTH=PLAIN AUTH=XOAUTH2 SASL-IR UIDPLUS ID UNSELECT CHILDREN IDLE NAMESPACE LITERAL+", tag+" OK CAPABILITY completed.")
			}
		case "AUTHENTICATE":
			mech, ir, _ := strings.Cut(arg, " ")
			s.mu.Lock()
			s.auths++
			s.mu.Unlock()
			tok := ""
			if b, err := base64.StdEncoding.DecodeString(ir); err == nil {
				parts := strings.Split(string(b), "\x01")
				if len(parts) == 4 && parts[0] == "user="+testMailbox {
					tok = strings.TrimPrefix(parts[1], "auth=Bearer ")
				}
			}
			s.mu.Lock()
			ok := s.valid[tok]
			s.mu.Unlock()
			switch {
			case !strings.EqualFold(mech, "XOAUTH2"):
				w(tag + " NO AUTHENTICATE failed.")
			case mode == "throttled":
				w(tag + " BAD Request is throttled. Suggested Backoff Time: 500 milliseconds")
			case mode == "unavailable": // Dovecot when its auth backend is down
				w(tag + " NO [UNAVAILABLE] Temporary authentication failure.")
			case ok && mode == "codecaps":
				w(tag + " OK [CAPABILITY IMAP4rev1 IDLE MOVE] AUTHENTICATE completed.")
				authed = true
			case ok:
				w(tag + " OK AUTHENTICATE completed.")
				authed = true
			case mode == "challenge":
				w("+ eyJzdGF0dXMiOiI0MDEiLCJzY2hlbWVzIjoiYmVhcmVyIn0=")
				if l, err := br.ReadString('\n'); err != nil || strings.TrimRight(l, "\r\n") != "" {
					w(tag + " BAD expected an empty line")
					continue
				}
				w(tag + " NO AUTHENTICATE failed.")
			default:
				w(tag + " NO AUTHENTICATE failed.")
			}
		case "NOOP":
			w(tag + " OK NOOP completed.")
		case "LOGOUT":
			w("* BYE Microsoft Exchange Server IMAP4 server signing off.", tag+" OK LOGOUT completed.")
			return
		case "IDLE":
			w("+ IDLE accepted, awaiting DONE command.")
			l, err := br.ReadString('\n')
			if err != nil {
				return
			}
			if strings.TrimRight(l, "\r\n") == "DONE" {
				w(tag + " OK IDLE completed.")
			} else {
				w(tag + " BAD expected DONE")
			}
		case "FETCH":
			bw.WriteString("* 1 FETCH (BODY[] {" + strconv.Itoa(len(bulk)) + "}\r\n")
			bw.Write(bulk)
			bw.WriteString(")\r\n" + tag + " OK FETCH completed.\r\n")
			bw.Flush()
		default:
			if !authed {
				w(tag + " BAD Command Error. 12")
				continue
			}
			w(tag + " OK " + name + " completed.")
		}
	}
}
