package reliability

import (
	"bufio"
	"bytes"
	"context"
	"encoding/base64"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/crypto/bcrypt"

	"github.com/oauthbridge/oauthbridge/config"
	"github.com/oauthbridge/oauthbridge/internal/daemon"
	"github.com/oauthbridge/oauthbridge/internal/fakems"
	"github.com/oauthbridge/oauthbridge/tokens"
)

// Timings shared by the suite. Token lifetimes are seconds so expiry
// scenarios need no long sleeps.
const (
	shortLifetime = 3 * time.Second
	ioTimeout     = 10 * time.Second
	clientSecret  = "client-secret-VALUE-9f8e7d"
)

// syncBuffer collects log output from many goroutines.
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

// suite-wide secret bookkeeping: every password, token and client secret a
// test uses is registered, and every log line of every daemon is kept, so
// TestMain can check that no secret ever reached a log.
var (
	secretsMu sync.Mutex
	secrets   = map[string]bool{clientSecret: true}
	allLogs   syncBuffer
)

func addSecret(s ...string) {
	secretsMu.Lock()
	defer secretsMu.Unlock()
	for _, x := range s {
		if len(x) >= 6 {
			secrets[x] = true
		}
	}
}

// tokenShapes match the fake's access and refresh tokens whatever their
// value, so a leaked token is found even if no test registered it.
var tokenShapes = regexp.MustCompile(`EwB[A-Za-z0-9_-]{60,}|1\.AQ[A-Za-z0-9_-]{60,}`)

// leaks returns a description of every registered secret or token-shaped
// string found in text.
func leaks(text string) []string {
	secretsMu.Lock()
	defer secretsMu.Unlock()
	var out []string
	for s := range secrets {
		for _, form := range []string{s, base64.StdEncoding.EncodeToString([]byte(s))} {
			if strings.Contains(text, form) {
				out = append(out, fmt.Sprintf("secret %q...", s[:4]))
			}
		}
	}
	for _, m := range tokenShapes.FindAllString(text, 3) {
		out = append(out, fmt.Sprintf("token %q...", m[:8]))
	}
	return out
}

func TestMain(m *testing.M) {
	code := m.Run()
	if w := worstHeapMB.Load(); w > 0 {
		fmt.Fprintf(os.Stderr, "reliability: worst HeapInuse measured: %d MB\n", w)
	}
	if l := leaks(allLogs.String()); len(l) > 0 {
		fmt.Fprintf(os.Stderr, "FAIL: secrets found in the suite's logs: %v\n", l)
		code = 1
	}
	os.Exit(code)
}

type account struct{ name, mailbox, delegate string }

type user struct{ name, password, account string }

// env is a fake Microsoft 365 plus the configuration of one bridge.
type env struct {
	t       *testing.T
	f       *fakems.Fake
	dir     string
	state   string
	caFile  string
	cfgPath string
	logs    *syncBuffer
	log     *slog.Logger
	accts   []account
	users   []user

	// Inside the imap/pop3/smtp blocks, and at top level.
	imapExtra, pop3Extra, smtpExtra, extra string
	tokenOpts                              tokens.Options
}

// newEnv starts a fake with the given access-token lifetime (0: default),
// and the accounts (each delegated to its own person who is also the
// mailbox owner).
func newEnv(t *testing.T, lifetime time.Duration, accts []account, users []user) *env {
	t.Helper()
	f, err := fakems.Start(fakems.Options{AccessTokenLifetime: lifetime})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	e := &env{t: t, f: f, dir: t.TempDir(), logs: &syncBuffer{}, accts: accts, users: users}
	e.state = filepath.Join(e.dir, "state")
	e.caFile = filepath.Join(e.dir, "ca.pem")
	if err := f.WriteCAFile(e.caFile); err != nil {
		t.Fatal(err)
	}
	f.AddApp("app-id", clientSecret)
	for _, a := range accts {
		f.AddUser(a.delegate)
		if a.mailbox != a.delegate {
			f.AddMailbox(a.mailbox, a.delegate)
		}
	}
	for _, u := range users {
		addSecret(u.password)
	}
	e.log = slog.New(slog.NewJSONHandler(io.MultiWriter(e.logs, &allLogs), &slog.HandlerOptions{Level: slog.LevelDebug}))
	e.tokenOpts = tokens.Options{
		RetryMin:       100 * time.Millisecond,
		RetryMax:       400 * time.Millisecond,
		RequestTimeout: time.Second,
		FailingRetry:   time.Second,
	}
	t.Cleanup(func() {
		if l := leaks(e.logs.String()); len(l) > 0 {
			t.Errorf("secrets in the bridge log: %v", l)
		}
		if t.Failed() {
			t.Logf("bridge log (tail):\n%s", tail(e.logs.String(), 6000))
		}
	})
	return e
}

func tail(s string, n int) string {
	if len(s) > n {
		return s[len(s)-n:]
	}
	return s
}

// hashes are computed once per password: bcrypt.MinCost keeps the suite fast.
var (
	hashMu sync.Mutex
	hashes = map[string]string{}
)

func hashOf(t *testing.T, pw string) string {
	hashMu.Lock()
	defer hashMu.Unlock()
	if h, ok := hashes[pw]; ok {
		return h
	}
	h, err := bcrypt.GenerateFromPassword([]byte(pw), bcrypt.MinCost)
	if err != nil {
		t.Fatal(err)
	}
	hashes[pw] = string(h)
	return string(h)
}

func (e *env) writeConfig() {
	t := e.t
	t.Helper()
	var b strings.Builder
	fmt.Fprintf(&b, "state_dir = %q\nshutdown_timeout = \"2s\"\n", e.state)
	fmt.Fprintf(&b, "imap {\n  listen = [\"127.0.0.1:0\"]\n%s\n}\n", e.imapExtra)
	fmt.Fprintf(&b, "pop3 {\n  listen = [\"127.0.0.1:0\"]\n%s\n}\n", e.pop3Extra)
	fmt.Fprintf(&b, "smtp {\n  listen = [\"127.0.0.1:0\"]\n%s\n}\n", e.smtpExtra)
	b.WriteString("admin { listen = \"127.0.0.1:0\" }\n")
	fmt.Fprintf(&b, `provider "fake" {
  tenant        = "contoso.com"
  client_id     = "app-id"
  client_secret = %q
  authority     = %q
  imap_server   = %q
  pop3_server   = %q
  smtp_server   = %q
  ca_file       = %q
}
`, clientSecret, e.f.AuthorityURL, e.f.IMAPAddr, e.f.POP3Addr, e.f.SMTPAddr, e.caFile)
	for _, a := range e.accts {
		fmt.Fprintf(&b, "account %q {\n  provider = \"fake\"\n  mailbox = %q\n  delegate = %q\n}\n", a.name, a.mailbox, a.delegate)
	}
	for _, u := range e.users {
		fmt.Fprintf(&b, "user %q {\n  password_hash = %q\n  account = %q\n}\n", u.name, hashOf(t, u.password), u.account)
	}
	b.WriteString(e.extra)
	e.cfgPath = filepath.Join(e.dir, "config.hcl")
	if err := os.WriteFile(e.cfgPath, []byte(b.String()), 0o600); err != nil {
		t.Fatal(err)
	}
}

func (e *env) loadConfig() *config.Config {
	e.t.Helper()
	cfg, err := config.Load(e.cfgPath)
	if err != nil {
		e.t.Fatal(err)
	}
	return cfg
}

// start writes the configuration, starts a bridge and signs every account
// in with a device login approved by the account's delegate.
func (e *env) start() *daemon.Daemon {
	t := e.t
	t.Helper()
	e.writeConfig()
	d, err := daemon.New(e.loadConfig(), daemon.Options{Logger: e.log, TokenOptions: e.tokenOpts})
	if err != nil {
		t.Fatal(err)
	}
	if err := d.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		d.Shutdown(ctx)
	})
	var dones []<-chan error
	for _, a := range e.accts {
		dl, done, err := d.Tokens().StartDeviceLogin(context.Background(), a.name)
		if err != nil {
			t.Fatal(err)
		}
		if err := e.f.ApproveDevice(dl.UserCode, a.delegate); err != nil {
			t.Fatal(err)
		}
		dones = append(dones, done)
	}
	for i, done := range dones {
		if err := <-done; err != nil {
			t.Fatalf("device login %s: %v", e.accts[i].name, err)
		}
	}
	for _, a := range e.accts {
		tok, err := d.Tokens().AccessToken(context.Background(), a.name)
		if err != nil {
			t.Fatalf("AccessToken(%s) after login: %v", a.name, err)
		}
		addSecret(tok)
	}
	return d
}

// waitFor polls cond every 20 ms until it holds or d passes.
func waitFor(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", d, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// ---- raw line clients ----

// lineConn is a raw text-protocol client with a deadline on every read.
type lineConn struct {
	t  *testing.T
	c  net.Conn
	br *bufio.Reader
}

func dialLine(t *testing.T, addr string) *lineConn {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, ioTimeout)
	if err != nil {
		t.Fatalf("dial %s: %v", addr, err)
	}
	t.Cleanup(func() { c.Close() })
	return &lineConn{t: t, c: c, br: newReader(c)}
}

func newReader(c net.Conn) *bufio.Reader { return bufio.NewReaderSize(c, 64*1024) }

// worstHeapMB is the largest HeapInuse a test measured, for the report.
var worstHeapMB atomic.Int64

func (l *lineConn) write(s string) error {
	l.c.SetWriteDeadline(time.Now().Add(ioTimeout))
	_, err := io.WriteString(l.c, s)
	return err
}

func (l *lineConn) send(s string) {
	l.t.Helper()
	if err := l.write(s + "\r\n"); err != nil {
		l.t.Fatalf("send %.40q: %v", s, err)
	}
}

func (l *lineConn) readLine() (string, error) {
	l.c.SetReadDeadline(time.Now().Add(ioTimeout))
	s, err := l.br.ReadString('\n')
	return strings.TrimRight(s, "\r\n"), err
}

func (l *lineConn) line() string {
	l.t.Helper()
	s, err := l.readLine()
	if err != nil {
		l.t.Fatalf("read: %v (partial %q)", err, s)
	}
	return s
}

// until reads lines until one starts with prefix and returns it.
func (l *lineConn) until(prefix string) string {
	l.t.Helper()
	for {
		s := l.line()
		if strings.HasPrefix(s, prefix) {
			return s
		}
	}
}

// expectPrefix reads one line and checks its start.
func (l *lineConn) expectPrefix(prefix string) string {
	l.t.Helper()
	s := l.line()
	if !strings.HasPrefix(s, prefix) {
		l.t.Fatalf("got %q, want prefix %q", s, prefix)
	}
	return s
}

// expectClosed reads until the server closes the connection (EOF, or a
// reset when it closed with input unread) within d; the bytes read before
// are returned.
func (l *lineConn) expectClosed(d time.Duration) string {
	l.t.Helper()
	l.c.SetReadDeadline(time.Now().Add(d))
	rest, err := io.ReadAll(l.br)
	if ne, ok := err.(net.Error); ok && ne.Timeout() {
		l.t.Fatalf("connection not closed within %v: %v (read %q)", d, err, tail(string(rest), 200))
	}
	return string(rest)
}

func (l *lineConn) close() { l.c.Close() }

// imapLogin dials addr, reads the greeting and sends LOGIN; it returns the
// connection and the tagged reply.
func imapLogin(t *testing.T, addr, user, pass string) (*lineConn, string) {
	t.Helper()
	c := dialLine(t, addr)
	c.expectPrefix("* OK")
	c.send(fmt.Sprintf("a1 LOGIN %s %s", imapQuote(user), imapQuote(pass)))
	return c, c.until("a1 ")
}

func imapQuote(s string) string {
	return `"` + strings.NewReplacer(`\`, `\\`, `"`, `\"`).Replace(s) + `"`
}

// pop3Login dials addr and sends USER/PASS; it returns the reply to PASS.
func pop3Login(t *testing.T, addr, user, pass string) (*lineConn, string) {
	t.Helper()
	c := dialLine(t, addr)
	c.expectPrefix("+OK")
	c.send("USER " + user)
	c.expectPrefix("+OK")
	c.send("PASS " + pass)
	return c, c.line()
}

// goroutines returns the current number of goroutines after a short
// settling GC.
func goroutines() int {
	runtime.GC()
	return runtime.NumGoroutine()
}

// waitGoroutines waits until the goroutine count is back to at most base.
func waitGoroutines(t *testing.T, base int, what string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		n := goroutines()
		if n <= base {
			return
		}
		if time.Now().After(deadline) {
			buf := make([]byte, 1<<20)
			buf = buf[:runtime.Stack(buf, true)]
			t.Fatalf("%s: %d goroutines, want <= %d; stacks:\n%s", what, n, base, tail(string(buf), 20000))
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// scrapeMetrics fetches /metrics from the admin listener.
func scrapeMetrics(t *testing.T, adminAddr string) string {
	t.Helper()
	resp, err := http.Get("http://" + adminAddr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("GET /metrics: %d %v", resp.StatusCode, err)
	}
	return string(b)
}

// metricValue returns the value of one sample line of the exposition text,
// e.g. metricValue(text, `oauthbridge_account_state{account="a",state="ok"}`).
func metricValue(text, series string) (string, bool) {
	for _, ln := range strings.Split(text, "\n") {
		if v, ok := strings.CutPrefix(ln, series+" "); ok {
			return strings.TrimSpace(v), true
		}
	}
	return "", false
}

func statusOf(t *testing.T, m *tokens.Manager, acct string) tokens.AccountStatus {
	t.Helper()
	for _, st := range m.Status() {
		if st.Account == acct {
			return st
		}
	}
	t.Fatalf("no status for account %s", acct)
	return tokens.AccountStatus{}
}
