package bench

import (
	"bufio"
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
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/crypto/bcrypt"

	"github.com/oauthbridge/oauthbridge/config"
	"github.com/oauthbridge/oauthbridge/internal/daemon"
	"github.com/oauthbridge/oauthbridge/internal/fakems"
)

// Fixed identities of the bench tenant.
const (
	benchClientID = "bench-app"
	benchSecret   = "bench-client-secret"
	benchDelegate = "alice@contoso.com"
	benchTenant   = "contoso.com"

	// maxSessions is the per-account and per-protocol connection limit the
	// bench configures: above the largest IDLE workload.
	maxSessions = 12000
	// bridgeMaxMessage is the bridge's SMTP size limit (above the 50 MB workload).
	bridgeMaxMessage = 100 << 20
	// startTimeout bounds waiting for sign-in and for a bridge process.
	startTimeout = 60 * time.Second
)

// account is one bench account: a mailbox, its local user and password.
// graph accounts have read_via = "graph": the bridge serves their IMAP
// from the fake's Microsoft Graph instead of splicing to its IMAP server.
type account struct {
	name, mailbox, user, password string
	graph                         bool
}

func mailboxName(i int) string { return fmt.Sprintf("mb%02d@%s", i, benchTenant) }

// env is the fake upstream plus the in-process bridge.
type env struct {
	f      *fakems.Fake
	dir    string
	caFile string
	// The bridge's own certificate (tls block), so bridged clients speak
	// TLS to the bridge as direct clients do to the fake.
	certFile, keyFile string
	bridgeCAs         *x509.CertPool
	accounts          []account
	graphIdle         int // index in accounts of the Graph-served IDLE account
	graphPoll         time.Duration
	procs             int // bridge processes started (names their files)
	d                 *daemon.Daemon
	progress          io.Writer

	tokenMu sync.Mutex
	direct  map[string]string // mailbox -> access token issued for direct logins
}

// newEnv starts the fake with n mailboxes plus one served from Graph
// (delegate alice), an in-process bridge with one account and user per
// mailbox, and signs every account in with the device-code flow. graphPoll
// is the configuration's imap { graph_poll_interval } (0: its default).
func newEnv(ctx context.Context, n int, graphPoll time.Duration, progress io.Writer) (*env, error) {
	f, err := fakems.Start(fakems.Options{DiscardSubmitted: true})
	if err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp("", "oauthbridge-bench-")
	if err != nil {
		f.Close()
		return nil, err
	}
	e := &env{f: f, dir: dir, progress: progress, graphPoll: graphPoll, direct: map[string]string{}}
	e.caFile = filepath.Join(dir, "ca.pem")
	if err := f.WriteCAFile(e.caFile); err != nil {
		e.close()
		return nil, err
	}
	if err := os.MkdirAll(filepath.Join(dir, "state"), 0o700); err != nil {
		e.close()
		return nil, err
	}
	if err := e.makeCert(); err != nil {
		e.close()
		return nil, err
	}
	f.AddApp(benchClientID, benchSecret)
	f.AddUser(benchDelegate)
	for i := range n {
		a := account{name: fmt.Sprintf("acct%02d", i), mailbox: mailboxName(i), user: fmt.Sprintf("user%02d", i), password: fmt.Sprintf("bench-password-%02d", i)}
		f.AddMailbox(a.mailbox, benchDelegate)
		e.accounts = append(e.accounts, a)
	}
	// Last, so that the workloads using the first accounts never get it.
	g := account{name: "graph00", mailbox: "graph00@" + benchTenant, user: "guser00", password: "bench-password-g00", graph: true}
	f.AddMailbox(g.mailbox, benchDelegate)
	e.graphIdle = len(e.accounts)
	e.accounts = append(e.accounts, g)
	cfgPath := filepath.Join(dir, "inproc.hcl")
	lo := "127.0.0.1:0"
	if err := e.writeConfig(cfgPath, listenAddrs{lo, lo, lo, lo, lo}, lo); err != nil {
		e.close()
		return nil, err
	}
	cfg, err := config.Load(cfgPath)
	if err != nil {
		e.close()
		return nil, err
	}
	// Info-level JSON logging to nowhere: the bridge formats its audit lines
	// as it would in production.
	log := slog.New(slog.NewJSONHandler(io.Discard, &slog.HandlerOptions{Level: slog.LevelInfo}))
	d, err := daemon.New(cfg, daemon.Options{Logger: log})
	if err != nil {
		e.close()
		return nil, err
	}
	if err := d.Start(ctx); err != nil {
		e.close()
		return nil, err
	}
	e.d = d
	if err := e.signIn(ctx); err != nil {
		e.close()
		return nil, err
	}
	return e, nil
}

func (e *env) logf(format string, args ...any) {
	if e.progress != nil {
		fmt.Fprintf(e.progress, format+"\n", args...)
	}
}

// signIn runs the device-code flow for every account concurrently.
func (e *env) signIn(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, startTimeout)
	defer cancel()
	errs := make([]error, len(e.accounts))
	var wg sync.WaitGroup
	for i, a := range e.accounts {
		wg.Go(func() {
			dl, done, err := e.d.Tokens().StartDeviceLogin(ctx, a.name)
			if err != nil {
				errs[i] = err
				return
			}
			if err := e.f.ApproveDevice(dl.UserCode, benchDelegate); err != nil {
				errs[i] = err
				return
			}
			select {
			case err := <-done:
				errs[i] = err
			case <-ctx.Done():
				errs[i] = ctx.Err()
			}
		})
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("bench: sign-in: %w", err)
	}
	// The Graph accounts' Graph token now, so that its redemption is a
	// setup request (and the bridge process finds it in the shared store).
	for _, a := range e.accounts {
		if a.graph {
			if _, err := e.d.Tokens().GraphToken(ctx, a.name); err != nil {
				return fmt.Errorf("bench: Graph token of %s: %w", a.name, err)
			}
		}
	}
	return nil
}

// graphAccounts is how many accounts are served from Graph (each holds a
// Graph token besides its Exchange one).
func (e *env) graphAccounts() int {
	n := 0
	for _, a := range e.accounts {
		if a.graph {
			n++
		}
	}
	return n
}

// listenAddrs are a bridge's client listeners: plaintext (STARTTLS) and
// implicit TLS.
type listenAddrs struct{ imap, imaps, pop3, pop3s, smtp string }

// makeCert writes a certificate for 127.0.0.1 for the bridge's tls block
// (ECDSA P-256, as the fake's).
func (e *env) makeCert() error {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()), Subject: pkix.Name{CommonName: "oauthbridge bench"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)}, DNSNames: []string{"localhost"},
		KeyUsage: x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true, IsCA: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return err
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return err
	}
	kder, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return err
	}
	e.certFile, e.keyFile = filepath.Join(e.dir, "bridge.crt"), filepath.Join(e.dir, "bridge.key")
	if err := os.WriteFile(e.certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
		return err
	}
	if err := os.WriteFile(e.keyFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder}), 0o600); err != nil {
		return err
	}
	e.bridgeCAs = x509.NewCertPool()
	e.bridgeCAs.AddCert(cert)
	return nil
}

// bridgeTLS is the bridged clients' TLS configuration.
func (e *env) bridgeTLS() *tls.Config {
	return &tls.Config{RootCAs: e.bridgeCAs, ServerName: "127.0.0.1"}
}

// writeConfig writes a bridge configuration for all accounts.
func (e *env) writeConfig(path string, l listenAddrs, adminAddr string) error {
	var b strings.Builder
	pollLine := ""
	if e.graphPoll > 0 {
		pollLine = fmt.Sprintf("  graph_poll_interval = %q\n", e.graphPoll.String())
	}
	fmt.Fprintf(&b, `state_dir = %q
log_level = "info"
log_format = "json"
tls {
  cert_file = %q
  key_file  = %q
}
imap {
  listen          = [%q]
  listen_tls      = [%q]
  max_connections = %d
%s}
pop3 {
  listen     = [%q]
  listen_tls = [%q]
}
smtp {
  listen            = [%q]
  max_connections   = %d
  max_message_bytes = %d
}
admin { listen = %q }
provider "fake" {
  tenant        = %q
  client_id     = %q
  client_secret = %q
  authority     = %q
  imap_server   = %q
  pop3_server   = %q
  smtp_server   = %q
  graph_url     = %q
  ca_file       = %q
}
`, filepath.Join(e.dir, "state"), e.certFile, e.keyFile, l.imap, l.imaps, maxSessions, pollLine, l.pop3, l.pop3s, l.smtp, maxSessions, bridgeMaxMessage, adminAddr,
		benchTenant, benchClientID, benchSecret, e.f.AuthorityURL, e.f.IMAPAddr, e.f.POP3Addr, e.f.SMTPAddr, e.f.GraphURL(), e.caFile)
	for _, a := range e.accounts {
		h, err := bcrypt.GenerateFromPassword([]byte(a.password), bcrypt.MinCost)
		if err != nil {
			return err
		}
		readVia := ""
		if a.graph {
			readVia = "  read_via = \"graph\"\n"
		}
		fmt.Fprintf(&b, "account %q {\n  provider = \"fake\"\n  mailbox = %q\n  delegate = %q\n  max_connections = %d\n%s}\n", a.name, a.mailbox, benchDelegate, maxSessions, readVia)
		fmt.Fprintf(&b, "user %q {\n  password_hash = %q\n  account = %q\n}\n", a.user, h, a.name)
	}
	return os.WriteFile(path, []byte(b.String()), 0o600)
}

// directToken returns an access token for direct XOAUTH2 logins to mailbox,
// issued by the fake without a token-endpoint request (so the bench's own
// direct logins do not count as token requests).
func (e *env) directToken(mailbox string) string {
	e.tokenMu.Lock()
	defer e.tokenMu.Unlock()
	if t, ok := e.direct[mailbox]; ok {
		return t
	}
	t := e.f.IssueAccessToken(benchDelegate)
	e.direct[mailbox] = t
	return t
}

func (e *env) close() {
	if e.d != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		_ = e.d.Shutdown(ctx)
		cancel()
	}
	if e.f != nil {
		_ = e.f.Close()
	}
	_ = os.RemoveAll(e.dir)
}

// bridgeProc is the bridge running as `oauthbridge serve` in its own process.
type bridgeProc struct {
	cmd       *exec.Cmd
	addrs     listenAddrs
	imap      string
	smtp      string
	stderr    *os.File
	waitErr   chan error
	stderrLog string
	admin     string // the admin listener (/metrics)
	stopOnce  sync.Once
}

// freePort returns a loopback address that was free a moment ago.
func freePort() (string, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer ln.Close()
	return ln.Addr().String(), nil
}

// startProc starts binary as a separate bridge process sharing the
// in-process bridge's token store (so it needs no sign-in of its own).
func (e *env) startProc(binary string) (*bridgeProc, error) {
	var l listenAddrs
	for _, a := range []*string{&l.imap, &l.imaps, &l.pop3, &l.pop3s, &l.smtp} {
		addr, err := freePort()
		if err != nil {
			return nil, err
		}
		*a = addr
	}
	imapAddr := l.imap
	adminAddr, err := freePort() // serve refuses port 0: a random port serves nobody
	if err != nil {
		return nil, err
	}
	e.procs++
	cfgPath := filepath.Join(e.dir, fmt.Sprintf("proc%d.hcl", e.procs))
	if err := e.writeConfig(cfgPath, l, adminAddr); err != nil {
		return nil, err
	}
	logPath := filepath.Join(e.dir, fmt.Sprintf("bridge-process%d.log", e.procs))
	lf, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	p := &bridgeProc{addrs: l, imap: l.imap, smtp: l.smtp, stderr: lf, waitErr: make(chan error, 1), stderrLog: logPath, admin: adminAddr}
	p.cmd = exec.Command(binary, "serve", "-config", cfgPath)
	p.cmd.Stdout = lf
	p.cmd.Stderr = lf
	if err := p.cmd.Start(); err != nil {
		lf.Close()
		return nil, fmt.Errorf("bench: start bridge process: %w", err)
	}
	go func() { p.waitErr <- p.cmd.Wait() }()
	deadline := time.Now().Add(startTimeout)
	for {
		c, err := net.DialTimeout("tcp", imapAddr, time.Second)
		if err == nil {
			line, rerr := bufio.NewReader(c).ReadString('\n')
			c.Close()
			if rerr == nil && strings.HasPrefix(line, "* OK") {
				return p, nil
			}
		}
		select {
		case werr := <-p.waitErr:
			lf.Close()
			out, _ := os.ReadFile(logPath)
			return nil, fmt.Errorf("bench: bridge process exited (%v): %s", werr, tail(out, 2048))
		default:
		}
		if time.Now().After(deadline) {
			p.stop()
			return nil, errors.New("bench: bridge process did not start listening")
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// status reads a field in kB ("VmRSS", "VmHWM") from /proc/PID/status.
func (p *bridgeProc) status(field string) (int64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", p.cmd.Process.Pid))
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, field+":"); ok {
			v, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 10, 64)
			return v * 1024, err
		}
	}
	return 0, fmt.Errorf("bench: %s not in /proc status", field)
}

func (p *bridgeProc) rss() (int64, error) { return p.status("VmRSS") }

// clockTicks is USER_HZ, the unit of utime and stime in /proc/PID/stat
// (100 on every Linux architecture Go supports).
const clockTicks = 100

// cpu returns the process's user + system CPU time so far.
func (p *bridgeProc) cpu() (time.Duration, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", p.cmd.Process.Pid))
	if err != nil {
		return 0, err
	}
	// The command name (field 2) is in parentheses and may hold spaces;
	// utime and stime are fields 14 and 15.
	i := strings.LastIndexByte(string(b), ')')
	f := strings.Fields(string(b[i+1:]))
	if i < 0 || len(f) < 13 {
		return 0, errors.New("bench: unexpected /proc stat format")
	}
	ut, err1 := strconv.ParseInt(f[11], 10, 64)
	st, err2 := strconv.ParseInt(f[12], 10, 64)
	if err := errors.Join(err1, err2); err != nil {
		return 0, err
	}
	return time.Duration(ut+st) * time.Second / clockTicks, nil
}

// stop ends the process (once; later calls do nothing).
func (p *bridgeProc) stop() {
	p.stopOnce.Do(func() {
		_ = p.cmd.Process.Signal(os.Interrupt)
		select {
		case <-p.waitErr:
		case <-time.After(15 * time.Second):
			_ = p.cmd.Process.Kill()
			<-p.waitErr
		}
		p.stderr.Close()
	})
}

// tail returns at most the last n bytes of b as a string.
func tail(b []byte, n int) string {
	if len(b) > n {
		b = b[len(b)-n:]
	}
	return strings.TrimSpace(string(b))
}
