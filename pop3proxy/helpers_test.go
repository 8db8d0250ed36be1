package pop3proxy

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
	"encoding/pem"
	"fmt"
	"io"
	"log/slog"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/crypto/bcrypt"

	"github.com/oauthbridge/oauthbridge/config"
	"github.com/oauthbridge/oauthbridge/internal/limiter"
	"github.com/oauthbridge/oauthbridge/internal/localauth"
	"github.com/oauthbridge/oauthbridge/tokens"
	"github.com/oauthbridge/oauthbridge/tokens/tokenstest"

	"github.com/oauthbridge/oauthbridge/internal/transcript"
)

// Test fixtures shared by all tests, made once in TestMain.
var (
	testDir      string // cert.pem, key.pem
	testCertFile string
	testKeyFile  string
	testCert     tls.Certificate
	testPool     *x509.CertPool
	testHash     string // bcrypt of testPassword at MinCost
)

const (
	testUser     = "otrs"
	testPassword = "s3cret pass" // a space: PASS takes the rest of the line
	testMailbox  = "helpdesk@contoso.com"
	goodToken    = "good-token"
)

func TestMain(m *testing.M) {
	var err error
	testDir, err = os.MkdirTemp("", "pop3proxy-test")
	if err != nil {
		panic(err)
	}
	if err := makeCert(testDir); err != nil {
		panic(err)
	}
	h, err := bcrypt.GenerateFromPassword([]byte(testPassword), bcrypt.MinCost)
	if err != nil {
		panic(err)
	}
	testHash = string(h)
	code := m.Run()
	if code == 0 {
		if leaked := waitNoSessions(5 * time.Second); leaked != "" {
			fmt.Fprintf(os.Stderr, "goroutines outlived their connections:\n%s\n", leaked)
			code = 1
		}
	}
	os.RemoveAll(testDir)
	os.Exit(code)
}

// waitNoSessions waits until no goroutine runs server or splice code and
// returns the offending stacks if some still do.
func waitNoSessions(d time.Duration) string {
	deadline := time.Now().Add(d)
	for {
		buf := make([]byte, 1<<20)
		buf = buf[:runtime.Stack(buf, true)]
		var bad []string
		for _, g := range strings.Split(string(buf), "\n\n") {
			if strings.Contains(g, "pop3proxy.(*Server)") || strings.Contains(g, "pop3proxy.(*session)") ||
				strings.Contains(g, "internal/splice.") {
				bad = append(bad, g)
			}
		}
		if len(bad) == 0 {
			return ""
		}
		if time.Now().After(deadline) {
			return strings.Join(bad, "\n\n")
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// makeCert writes a self-signed certificate for 127.0.0.1 and localhost; it
// serves as the local TLS certificate, the stub upstream's certificate and
// the ca_file that trusts it.
func makeCert(dir string) error {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "pop3proxy test"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		DNSNames:              []string{"localhost"},
		IPAddresses:           []net.IP{net.IPv4(127, 0, 0, 1)},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return err
	}
	kder, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return err
	}
	certPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
	keyPEM := pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder})
	testCertFile = filepath.Join(dir, "cert.pem")
	testKeyFile = filepath.Join(dir, "key.pem")
	if err := os.WriteFile(testCertFile, certPEM, 0o600); err != nil {
		return err
	}
	if err := os.WriteFile(testKeyFile, keyPEM, 0o600); err != nil {
		return err
	}
	testCert, err = tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return err
	}
	testPool = x509.NewCertPool()
	testPool.AppendCertsFromPEM(certPEM)
	return nil
}

// testConfig is what a test varies in the configuration.
type testConfig struct {
	Upstream          string // pop3_server host:port
	CAFile            string // default testCertFile
	Authority         string // default: Microsoft's (never contacted)
	LocalTLS          bool
	AllowInsecureAuth bool
	PreauthTimeout    string
	IdleTimeout       string
	ConnectionWait    string
	UpstreamTimeout   string
	MaxLineBytes      int
	MaxConnections    int // pop3 block, all users
	AccountMax        int // account max_connections
	ReadVia           string
	GraphURL          string
	POP3Delete        string
	POP3Folder        string
}

func (tc testConfig) hcl() string {
	var b strings.Builder
	fmt.Fprintf(&b, "state_dir = %q\n", testDir)
	b.WriteString("pop3 {\n  listen = [\"127.0.0.1:1110\"]\n")
	if tc.AllowInsecureAuth {
		b.WriteString("  allow_insecure_auth = true\n")
	}
	for _, kv := range [][2]string{{"preauth_timeout", tc.PreauthTimeout}, {"idle_timeout", tc.IdleTimeout},
		{"connection_wait", tc.ConnectionWait}, {"upstream_timeout", tc.UpstreamTimeout}} {
		if kv[1] != "" {
			fmt.Fprintf(&b, "  %s = %q\n", kv[0], kv[1])
		}
	}
	if tc.MaxLineBytes > 0 {
		fmt.Fprintf(&b, "  max_line_bytes = %d\n", tc.MaxLineBytes)
	}
	if tc.MaxConnections > 0 {
		fmt.Fprintf(&b, "  max_connections = %d\n", tc.MaxConnections)
	}
	b.WriteString("}\n")
	if tc.LocalTLS {
		fmt.Fprintf(&b, "tls {\n  cert_file = %q\n  key_file = %q\n}\n", testCertFile, testKeyFile)
	}
	ca := tc.CAFile
	if ca == "" {
		ca = testCertFile
	}
	fmt.Fprintf(&b, "provider \"m365\" {\n  tenant = \"contoso.com\"\n  client_id = \"11111111-2222-3333-4444-555555555555\"\n  pop3_server = %q\n  ca_file = %q\n", tc.Upstream, ca)
	if tc.Authority != "" {
		fmt.Fprintf(&b, "  authority = %q\n", tc.Authority)
	}
	if tc.GraphURL != "" {
		fmt.Fprintf(&b, "  graph_url = %q\n", tc.GraphURL)
	}
	b.WriteString("}\n")
	max := tc.AccountMax
	if max == 0 {
		max = 4
	}
	fmt.Fprintf(&b, "account \"acct\" {\n  provider = \"m365\"\n  mailbox = %q\n  max_connections = %d\n", testMailbox, max)
	for _, kv := range [][2]string{{"read_via", tc.ReadVia}, {"pop3_delete", tc.POP3Delete}, {"pop3_folder", tc.POP3Folder}} {
		if kv[1] != "" {
			fmt.Fprintf(&b, "  %s = %q\n", kv[0], kv[1])
		}
	}
	b.WriteString("}\n")
	fmt.Fprintf(&b, "user %q {\n  password_hash = %q\n  account = \"acct\"\n}\n", testUser, testHash)
	return b.String()
}

func parseConfig(t testing.TB, tc testConfig) *config.Config {
	t.Helper()
	cfg, err := config.Parse("t.hcl", []byte(tc.hcl()))
	if err != nil {
		if ce, ok := err.(*config.Error); ok {
			var buf bytes.Buffer
			ce.WriteTo(&buf)
			t.Fatalf("config.Parse() = %v\n%s", err, buf.String())
		}
		t.Fatalf("config.Parse() = %v", err)
	}
	return cfg
}

// logRecorder collects log records; audit lines are the "login" messages.
type logRecorder struct {
	mu   sync.Mutex
	recs []map[string]string
}

type recHandler struct {
	r     *logRecorder
	attrs []slog.Attr
}

func (h *recHandler) Enabled(context.Context, slog.Level) bool { return true }
func (h *recHandler) Handle(_ context.Context, r slog.Record) error {
	m := map[string]string{"msg": r.Message, "level": r.Level.String()}
	for _, a := range h.attrs {
		m[a.Key] = a.Value.String()
	}
	r.Attrs(func(a slog.Attr) bool { m[a.Key] = a.Value.String(); return true })
	h.r.mu.Lock()
	h.r.recs = append(h.r.recs, m)
	h.r.mu.Unlock()
	return nil
}
func (h *recHandler) WithAttrs(as []slog.Attr) slog.Handler {
	return &recHandler{r: h.r, attrs: append(append([]slog.Attr(nil), h.attrs...), as...)}
}
func (h *recHandler) WithGroup(string) slog.Handler { return h }

func (r *logRecorder) logger() *slog.Logger { return slog.New(&recHandler{r: r}) }

// audits returns the result of every audit line, in order.
func (r *logRecorder) audits() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []string
	for _, m := range r.recs {
		if m["msg"] == "login" {
			out = append(out, m["result"])
		}
	}
	return out
}

func (r *logRecorder) find(msg string) []map[string]string {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []map[string]string
	for _, m := range r.recs {
		if m["msg"] == msg {
			out = append(out, m)
		}
	}
	return out
}

func (r *logRecorder) dump() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	var b strings.Builder
	for _, m := range r.recs {
		fmt.Fprintf(&b, "%v\n", m)
	}
	return b.String()
}

// env is a Server with its collaborators.
type env struct {
	t    testing.TB
	cfg  *config.Config
	srv  *Server
	lim  *limiter.Limiter
	logs *logRecorder
	auth *localauth.Authenticator
}

type envOptions struct {
	tokens   tokens.Source
	loopback *bool             // nil: localauth.IsLoopback
	auth     localauth.Options // zero: localauth's defaults
	graph    *Options          // GraphTokens, GraphHTTP, GraphMail for read_via = "graph"
}

func newEnv(t testing.TB, tc testConfig, eo envOptions) *env {
	t.Helper()
	cfg := parseConfig(t, tc)
	e := &env{t: t, cfg: cfg, lim: &limiter.Limiter{}, logs: &logRecorder{}}
	e.auth = localauth.New(cfg, eo.auth)
	src := eo.tokens
	if src == nil {
		src = tokenstest.StaticSource{"acct": goodToken}
	}
	opts := Options{
		Config:       func() *config.Config { return cfg },
		Auth:         e.auth,
		Tokens:       src,
		Limiter:      e.lim,
		Logger:       e.logs.logger(),
		FailureDelay: 5 * time.Millisecond,
	}
	if eo.graph != nil {
		opts.GraphTokens, opts.GraphHTTP, opts.GraphMail = eo.graph.GraphTokens, eo.graph.GraphHTTP, eo.graph.GraphMail
	}
	if eo.loopback != nil {
		lb := *eo.loopback
		opts.IsLoopback = func(net.Addr) bool { return lb }
	}
	e.srv = New(opts)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := e.srv.Shutdown(ctx); err != nil {
			t.Errorf("Shutdown() = %v", err)
		}
		if t.Failed() {
			t.Logf("server log:\n%s", e.logs.dump())
		}
	})
	return e
}

// pipe starts a session over net.Pipe and returns the client end.
func (e *env) pipe() *client {
	cc, sc := net.Pipe()
	go e.srv.ServeConn(sc, false)
	return newClient(e.t, cc)
}

// client is a line-oriented test client with a deadline per read.
type client struct {
	t    testing.TB
	conn net.Conn
	br   *bufio.Reader
}

func newClient(t testing.TB, c net.Conn) *client {
	cl := &client{t: t, conn: c, br: bufio.NewReader(c)}
	t.Cleanup(func() { c.Close() })
	return cl
}

func (c *client) send(line string) {
	c.t.Helper()
	c.write(line + "\r\n")
}

func (c *client) write(s string) {
	c.t.Helper()
	_ = c.conn.SetWriteDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.WriteString(c.conn, s); err != nil {
		c.t.Fatalf("write %q: %v", s, err)
	}
}

// readLine returns the next line without CRLF, or an error (io.EOF when the
// server closed).
func (c *client) readLine() (string, error) {
	_ = c.conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	line, err := c.br.ReadString('\n')
	if err != nil {
		return line, err
	}
	return strings.TrimSuffix(strings.TrimSuffix(line, "\n"), "\r"), nil
}

func (c *client) expect(pattern string) string {
	c.t.Helper()
	line, err := c.readLine()
	if err != nil {
		c.t.Fatalf("reading, want %q: %v (partial %q)", pattern, err, line)
	}
	if !transcript.Match(pattern, line) {
		c.t.Fatalf("got %q, want %q", line, pattern)
	}
	return line
}

func (c *client) expectEOF() {
	c.t.Helper()
	line, err := c.readLine()
	if err == nil {
		c.t.Fatalf("got %q, want the connection closed", line)
	}
	if err != io.EOF {
		c.t.Fatalf("got error %v, want EOF", err)
	}
}

// startTLS upgrades the client side after STLS.
func (c *client) startTLS() {
	c.t.Helper()
	if c.br.Buffered() > 0 {
		c.t.Fatalf("bytes after STLS reply before TLS: %d", c.br.Buffered())
	}
	tc := tls.Client(c.conn, &tls.Config{ServerName: "localhost", RootCAs: testPool})
	_ = tc.SetDeadline(time.Now().Add(5 * time.Second))
	if err := tc.Handshake(); err != nil {
		c.t.Fatalf("TLS handshake: %v", err)
	}
	c.conn = tc
	c.br = bufio.NewReader(tc)
}

func plainIR(authz, user, pass string) string {
	return base64.StdEncoding.EncodeToString([]byte(authz + "\x00" + user + "\x00" + pass))
}

func b64(s string) string { return base64.StdEncoding.EncodeToString([]byte(s)) }

// ---------------------------------------------------------------------------
// Stub upstream: an Exchange-like POP3 server on implicit TLS that accepts
// only the two-step AUTH XOAUTH2 with known tokens, then serves a maildrop.

type stubUpstream struct {
	t    testing.TB
	ln   net.Listener
	Addr string

	mu        sync.Mutex
	tokens    map[string]bool
	mailbox   string
	msgs      []stubMsg
	conns     map[net.Conn]struct{}
	authLines []string // AUTH command lines seen, in order
	logins    int
	greeting  string
	challenge bool // answer a bad token with a "+ <json>" challenge first
	authTemp  bool // answer every AUTH with -ERR [SYS/TEMP] (auth backend down)
	wg        sync.WaitGroup
}

type stubMsg struct {
	uid  string
	data []byte
}

func startStub(t testing.TB) *stubUpstream {
	t.Helper()
	ln, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{Certificates: []tls.Certificate{testCert}})
	if err != nil {
		t.Fatalf("tls.Listen() = %v", err)
	}
	s := &stubUpstream{t: t, ln: ln, Addr: ln.Addr().String(), tokens: map[string]bool{goodToken: true},
		mailbox: testMailbox, conns: map[net.Conn]struct{}{},
		greeting: "+OK The Microsoft Exchange POP3 service is ready. [c3R1Yg==]"}
	s.wg.Add(1)
	go s.accept()
	t.Cleanup(s.Close)
	return s
}

func (s *stubUpstream) Close() {
	s.ln.Close()
	s.mu.Lock()
	for c := range s.conns {
		c.Close()
	}
	s.mu.Unlock()
	s.wg.Wait()
}

func (s *stubUpstream) Deliver(uid string, data []byte) {
	s.mu.Lock()
	s.msgs = append(s.msgs, stubMsg{uid: uid, data: data})
	s.mu.Unlock()
}

func (s *stubUpstream) accept() {
	defer s.wg.Done()
	for {
		c, err := s.ln.Accept()
		if err != nil {
			return
		}
		s.mu.Lock()
		s.conns[c] = struct{}{}
		s.mu.Unlock()
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			defer func() {
				s.mu.Lock()
				delete(s.conns, c)
				s.mu.Unlock()
				c.Close()
			}()
			s.serve(c)
		}()
	}
}

func (s *stubUpstream) serve(c net.Conn) {
	br := bufio.NewReader(c)
	bw := bufio.NewWriter(c)
	say := func(lines ...string) {
		for _, l := range lines {
			bw.WriteString(l + "\r\n")
		}
		bw.Flush()
	}
	s.mu.Lock()
	greeting := s.greeting
	s.mu.Unlock()
	say(greeting)
	if !strings.HasPrefix(greeting, "+OK") {
		return
	}
	authed := false
	deleted := map[int]bool{}
	var snapshot []stubMsg
	for {
		line, err := br.ReadString('\n')
		if err != nil {
			return
		}
		line = strings.TrimRight(line, "\r\n")
		cmd, arg, _ := strings.Cut(line, " ")
		cmd = strings.ToUpper(cmd)
		if !authed {
			switch cmd {
			case "CAPA":
				say("+OK", "TOP", "UIDL", "SASL PLAIN XOAUTH2", "USER", ".")
			case "AUTH":
				s.mu.Lock()
				s.authLines = append(s.authLines, line)
				s.mu.Unlock()
				if !strings.EqualFold(arg, "XOAUTH2") {
					// Exchange POP3: no initial response on the AUTH line.
					say("-ERR Protocol error. 14")
					continue
				}
				say("+ ")
				resp, err := br.ReadString('\n')
				if err != nil {
					return
				}
				raw, _ := base64.StdEncoding.DecodeString(strings.TrimRight(resp, "\r\n"))
				user, tok := parseXOAUTH2(string(raw))
				s.mu.Lock()
				ok := s.tokens[tok] && user == s.mailbox
				challenge := s.challenge
				authTemp := s.authTemp
				s.mu.Unlock()
				if authTemp {
					say("-ERR [SYS/TEMP] Temporary authentication failure.")
					continue
				}
				if !ok {
					if challenge {
						say("+ " + b64(`{"status":"401","schemes":"bearer","scope":"https://outlook.office.com/POP.AccessAsUser.All"}`))
						if l, err := br.ReadString('\n'); err != nil || l != "\r\n" {
							return
						}
					}
					say("-ERR Authentication failure: unknown user name or bad password.")
					continue
				}
				authed = true
				s.mu.Lock()
				s.logins++
				snapshot = append([]stubMsg(nil), s.msgs...)
				s.mu.Unlock()
				say("+OK User successfully authenticated.")
			case "QUIT":
				say("+OK Microsoft Exchange Server POP3 server signing off.")
				return
			default:
				say("-ERR Command is not valid in this state.")
			}
			continue
		}
		num := func() (int, bool) {
			n, err := strconv.Atoi(strings.Fields(arg + " x")[0])
			if err != nil || n < 1 || n > len(snapshot) || deleted[n] {
				say("-ERR The specified message is out of range.")
				return 0, false
			}
			return n, true
		}
		switch cmd {
		case "STAT":
			n, size := 0, 0
			for i, m := range snapshot {
				if !deleted[i+1] {
					n++
					size += len(m.data)
				}
			}
			say(fmt.Sprintf("+OK %d %d", n, size))
		case "LIST", "UIDL":
			if arg != "" {
				if n, ok := num(); ok {
					v := strconv.Itoa(len(snapshot[n-1].data))
					if cmd == "UIDL" {
						v = snapshot[n-1].uid
					}
					say(fmt.Sprintf("+OK %d %s", n, v))
				}
				continue
			}
			lines := []string{"+OK"}
			for i, m := range snapshot {
				if deleted[i+1] {
					continue
				}
				v := strconv.Itoa(len(m.data))
				if cmd == "UIDL" {
					v = m.uid
				}
				lines = append(lines, fmt.Sprintf("%d %s", i+1, v))
			}
			say(append(lines, ".")...)
		case "RETR":
			if n, ok := num(); ok {
				bw.WriteString(fmt.Sprintf("+OK %d octets\r\n", len(snapshot[n-1].data)))
				writeDotStuffed(bw, snapshot[n-1].data)
				bw.Flush()
			}
		case "DELE":
			if n, ok := num(); ok {
				deleted[n] = true
				say("+OK")
			}
		case "NOOP":
			say("+OK")
		case "RSET":
			deleted = map[int]bool{}
			say("+OK")
		case "QUIT":
			s.mu.Lock()
			var keep []stubMsg
			for _, m := range s.msgs {
				drop := false
				for i, d := range snapshot {
					if deleted[i+1] && d.uid == m.uid {
						drop = true
					}
				}
				if !drop {
					keep = append(keep, m)
				}
			}
			s.msgs = keep
			s.mu.Unlock()
			say("+OK Microsoft Exchange Server POP3 server signing off.")
			return
		default:
			say("-ERR Protocol error. 14")
		}
	}
}

func parseXOAUTH2(s string) (user, token string) {
	for _, f := range strings.Split(s, "\x01") {
		if v, ok := strings.CutPrefix(f, "user="); ok {
			user = v
		}
		if v, ok := strings.CutPrefix(f, "auth=Bearer "); ok {
			token = v
		}
	}
	return user, token
}

// writeDotStuffed writes a message body as a POP3 multi-line response.
func writeDotStuffed(w *bufio.Writer, data []byte) {
	for len(data) > 0 {
		i := bytes.IndexByte(data, '\n')
		var line []byte
		if i < 0 {
			line, data = data, nil
		} else {
			line, data = data[:i+1], data[i+1:]
		}
		if len(line) > 0 && line[0] == '.' {
			w.WriteByte('.')
		}
		w.Write(line)
	}
	w.WriteString(".\r\n")
}

// ---------------------------------------------------------------------------
// Token sources.

// errSource fails every request with a token error of the given kind.
type errSource struct{ kind tokens.Kind }

func (s errSource) AccessToken(_ context.Context, account string) (string, error) {
	return "", &tokens.Error{Account: account, Kind: s.kind, Reason: "test says " + s.kind.String(), AADSTS: 70008}
}
func (errSource) Rejected(string, string) {}

// staleSource hands out a stale token until told it was rejected.
type staleSource struct {
	mu       sync.Mutex
	rejected []string
}

func (s *staleSource) AccessToken(context.Context, string) (string, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.rejected) == 0 {
		return "stale-token", nil
	}
	return goodToken, nil
}

func (s *staleSource) Rejected(_, tok string) {
	s.mu.Lock()
	s.rejected = append(s.rejected, tok)
	s.mu.Unlock()
}
