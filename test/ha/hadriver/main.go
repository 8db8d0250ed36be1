// Command hadriver is the process-level high-availability test that
// test/ha/run.sh runs: three real `oauthbridge serve` processes (replicas)
// sharing one PostgreSQL token store (OAUTHBRIDGE_TEST_PG_DSN), in front of
// the fake Microsoft 365 (test/peers/fakeidp) with access tokens of a few
// seconds, while IMAP and SMTP logins run against every replica from
// 127.0.0.1. It kills the lease holder with SIGKILL in the middle of a
// refresh (the identity platform has redeemed the refresh token, the
// replica has not stored the result), restarts it, stops another holder
// with SIGSTOP past its lease and resumes it, and checks at the fake
// identity platform that each sign-in's refresh token was redeemed once per
// lifetime and that no stale refresh token was ever presented. It prints
// PASS/FAIL lines and "N passed, M failed", and exits 1 on a failure.
//
// As root the replicas run as the unprivileged user nobody, with their
// secrets in a credentials directory (CREDENTIALS_DIRECTORY), as the unit
// runs them.
package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"flag"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"os/user"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
)

const domain = "contoso.test"

var (
	bin      = flag.String("bin", "bin/oauthbridge", "the oauthbridge binary")
	fakeBin  = flag.String("fakeidp", "", "the fakeidp binary (test/peers/fakeidp)")
	work     = flag.String("work", "", "work directory (default: a new temporary one)")
	lifetime = flag.Duration("token-lifetime", 16*time.Second, "access token lifetime at the fake")
	leaseDur = flag.Duration("lease", time.Second, "store lease_duration")
	pollDur  = flag.Duration("poll", 250*time.Millisecond, "store poll_interval")
	benchDur = flag.Duration("bench", 3*time.Second, "how long to measure IMAP logins per second at the end (0: skip)")
)

var passed, failed int

func pass(format string, a ...any) {
	passed++
	fmt.Printf("PASS %s\n", fmt.Sprintf(format, a...))
}

func fail(format string, a ...any) {
	failed++
	fmt.Printf("FAIL %s\n", fmt.Sprintf(format, a...))
}

func info(format string, a ...any) { fmt.Printf("  .. %s\n", fmt.Sprintf(format, a...)) }

func fatal(format string, a ...any) {
	fail(format, a...)
	finish()
}

var cleanups []func()

func finish() {
	for i := len(cleanups) - 1; i >= 0; i-- {
		cleanups[i]()
	}
	fmt.Printf("%d passed, %d failed\n", passed, failed)
	if failed > 0 {
		os.Exit(1)
	}
	os.Exit(0)
}

// eventually polls cond every 50 ms until it holds or d passes.
func eventually(d time.Duration, cond func() bool) bool {
	end := time.Now().Add(d)
	for {
		if cond() {
			return true
		}
		if time.Now().After(end) {
			return false
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func freePort() int {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		fatal("free port: %v", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

func randHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// ---- the service user ----

var cred *syscall.Credential // nil unless root
var svcUID = -1

func setupUser() {
	if os.Geteuid() != 0 {
		return
	}
	u, err := user.Lookup("nobody")
	if err != nil {
		fatal("service user: %v", err)
	}
	uid, _ := strconv.Atoi(u.Uid)
	gid, _ := strconv.Atoi(u.Gid)
	cred = &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}
	svcUID = uid
}

// own gives path to the service user (as root).
func own(path string) {
	if svcUID >= 0 {
		if err := os.Chown(path, svcUID, -1); err != nil {
			fatal("chown %s: %v", path, err)
		}
	}
}

// ---- replicas ----

type replica struct {
	name              string
	dir, conf, log    string
	imap, smtp, admin int
	cmd               *exec.Cmd
	down              atomic.Bool // killed or stopped: its client failures are not counted
}

func (r *replica) start(env []string) {
	lf, err := os.OpenFile(r.log, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
	if err != nil {
		fatal("%s log: %v", r.name, err)
	}
	cmd := exec.Command(*bin, "serve", "-config", r.conf)
	cmd.Env = env
	cmd.Stdout, cmd.Stderr = lf, lf
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: cred}
	if err := cmd.Start(); err != nil {
		fatal("start %s: %v", r.name, err)
	}
	lf.Close()
	r.cmd = cmd
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	ok := eventually(30*time.Second, func() bool {
		select {
		case <-done:
			return true
		default:
		}
		resp, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d/healthz", r.admin))
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == 200
	})
	select {
	case <-done:
		fatal("%s exited at start; its log:\n%s", r.name, tail(r.log, 30))
	default:
	}
	if !ok {
		fatal("%s: /healthz did not answer within 30s; its log:\n%s", r.name, tail(r.log, 30))
	}
}

func tail(path string, n int) string {
	b, _ := os.ReadFile(path)
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

type acctStatus struct {
	Account     string    `json:"account"`
	State       string    `json:"state"`
	Expiry      time.Time `json:"access_token_expiry"`
	LeaseHolder string    `json:"lease_holder"`
}

var apiClient = &http.Client{Timeout: 2 * time.Second}

func (r *replica) accounts() ([]acctStatus, error) {
	resp, err := apiClient.Get(fmt.Sprintf("http://127.0.0.1:%d/api/accounts", r.admin))
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	var rows []acctStatus
	if err := json.NewDecoder(resp.Body).Decode(&rows); err != nil {
		return nil, fmt.Errorf("%s: %w", resp.Status, err)
	}
	return rows, nil
}

// metric sums the samples of a metric family on r's /metrics, optionally
// only those whose labels contain sel.
func (r *replica) metric(name, sel string, exclude string) float64 {
	resp, err := apiClient.Get(fmt.Sprintf("http://127.0.0.1:%d/metrics", r.admin))
	if err != nil {
		return -1
	}
	defer resp.Body.Close()
	var sum float64
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		l := sc.Text()
		if !strings.HasPrefix(l, name+"{") && !strings.HasPrefix(l, name+" ") {
			continue
		}
		if sel != "" && !strings.Contains(l, sel) || exclude != "" && strings.Contains(l, exclude) {
			continue
		}
		f := strings.Fields(l)
		v, _ := strconv.ParseFloat(f[len(f)-1], 64)
		sum += v
	}
	return sum
}

// ---- the fake identity platform ----

type grantStats struct {
	UPN       string      `json:"upn"`
	Refreshes int         `json:"refreshes"`
	Times     []time.Time `json:"times"`
	Reused    int         `json:"reused"`
	Stale     int         `json:"stale"`
}

type refreshStats struct {
	Grants       map[string]*grantStats `json:"grants"`
	Order        []string               `json:"order"`
	Unknown      int                    `json:"unknown"`
	Holding      int                    `json:"holding"`
	HoldingGrant string                 `json:"holding_grant"`
	Held         int                    `json:"held"`
}

var idpURL string

func stats() refreshStats {
	var st refreshStats
	resp, err := apiClient.Get(idpURL + "/test/refresh-stats")
	if err != nil {
		fatal("refresh stats: %v", err)
	}
	defer resp.Body.Close()
	if err := json.NewDecoder(resp.Body).Decode(&st); err != nil {
		fatal("refresh stats: %v", err)
	}
	return st
}

func (st refreshStats) total() (n int) {
	for _, g := range st.Grants {
		n += g.Refreshes
	}
	return n
}

func idpPost(path string, v url.Values) {
	resp, err := apiClient.PostForm(idpURL+path, v)
	if err != nil {
		fatal("%s: %v", path, err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		fatal("%s: %s", path, resp.Status)
	}
}

// ---- legacy clients ----

// imapLogin logs in and out; nil when the bridge said OK.
func imapLogin(port int, user, pw string) error {
	c, err := net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", port), 5*time.Second)
	if err != nil {
		return err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(15 * time.Second))
	br := bufio.NewReader(c)
	l, err := br.ReadString('\n')
	if err != nil {
		return fmt.Errorf("greeting: %w", err)
	}
	if !strings.HasPrefix(l, "* OK") {
		return fmt.Errorf("greeting: %q", l)
	}
	fmt.Fprintf(c, "a1 LOGIN %s %s\r\n", user, pw)
	for {
		l, err = br.ReadString('\n')
		if err != nil {
			return fmt.Errorf("login: %w", err)
		}
		if strings.HasPrefix(l, "a1 ") {
			break
		}
	}
	if !strings.HasPrefix(l, "a1 OK") {
		return fmt.Errorf("login: %s", strings.TrimSpace(l))
	}
	fmt.Fprintf(c, "a2 LOGOUT\r\n")
	return nil
}

func smtpReply(br *bufio.Reader) (string, error) {
	for {
		l, err := br.ReadString('\n')
		if err != nil {
			return "", err
		}
		if len(l) < 4 || l[3] != '-' {
			return strings.TrimSpace(l), nil
		}
	}
}

// smtpLogin authenticates (AUTH PLAIN on loopback) and quits.
func smtpLogin(port int, user, pw string) error {
	c, err := net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", port), 5*time.Second)
	if err != nil {
		return err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(15 * time.Second))
	br := bufio.NewReader(c)
	if l, err := smtpReply(br); err != nil || !strings.HasPrefix(l, "220") {
		return fmt.Errorf("greeting: %q %v", l, err)
	}
	fmt.Fprintf(c, "EHLO ha.test\r\n")
	if l, err := smtpReply(br); err != nil || !strings.HasPrefix(l, "250") {
		return fmt.Errorf("EHLO: %q %v", l, err)
	}
	fmt.Fprintf(c, "AUTH PLAIN %s\r\n", base64.StdEncoding.EncodeToString([]byte("\x00"+user+"\x00"+pw)))
	l, err := smtpReply(br)
	if err != nil || !strings.HasPrefix(l, "235") {
		return fmt.Errorf("AUTH: %q %v", l, err)
	}
	fmt.Fprintf(c, "QUIT\r\n")
	return nil
}

type clientStats struct {
	mu                      sync.Mutex
	logins, retried, failed int
	whileDown               int
	firstErrs               []string
	perReplica              map[string]int
}

func (cs *clientStats) note(f func()) {
	cs.mu.Lock()
	defer cs.mu.Unlock()
	f()
}

// ---- main ----

func main() {
	flag.Parse()
	dsn := os.Getenv("OAUTHBRIDGE_TEST_PG_DSN")
	if dsn == "" {
		fatal("OAUTHBRIDGE_TEST_PG_DSN is not set: run through test/ha/run.sh (test/pg/run.sh starts a PostgreSQL)")
	}
	setupUser()
	T := *work
	if T == "" {
		var err error
		if T, err = os.MkdirTemp("", "oauthbridge-ha."); err != nil {
			fatal("work dir: %v", err)
		}
	}
	_ = os.Chmod(T, 0o755)
	info("work dir %s", T)
	start := time.Now()

	// The fake Microsoft 365.
	secret := "cs-" + randHex(12)
	idp := exec.Command(*fakeBin, "-listen", "127.0.0.1:0", "-url-file", T+"/idp.url", "-env-file", T+"/fake.env",
		"-log", T+"/fakeidp.log", "-token-lifetime", lifetime.String(), "-app", "bridge-app:"+secret,
		"-user", "alice@"+domain, "-user", "bob@"+domain,
		"-mailbox", "helpdesk@"+domain+"=alice@"+domain, "-mailbox", "bob@"+domain)
	if err := idp.Start(); err != nil {
		fatal("fakeidp: %v", err)
	}
	cleanups = append(cleanups, func() { _ = idp.Process.Kill(); _ = idp.Wait() })
	var envb []byte
	if !eventually(10*time.Second, func() bool {
		u, _ := os.ReadFile(T + "/idp.url")
		envb, _ = os.ReadFile(T + "/fake.env")
		idpURL = strings.TrimSpace(string(u))
		return idpURL != "" && len(envb) > 0
	}) {
		fatal("fakeidp did not start")
	}
	fake := map[string]string{}
	for _, l := range strings.Split(string(envb), "\n") {
		if k, v, ok := strings.Cut(l, "="); ok {
			fake[k] = v
		}
	}

	// Secrets in a credentials directory, the service user's own as
	// systemd's LoadCredential= would hand them over.
	creds := T + "/credentials"
	must(os.MkdirAll(creds, 0o700))
	own(creds)
	key := make([]byte, 32)
	_, _ = rand.Read(key)
	writeSecret(creds+"/token-store-key", key)
	writeSecret(creds+"/client-secret", []byte(secret+"\n"))
	pgPass := ""
	if u, err := url.Parse(dsn); err == nil && u.User != nil {
		pgPass, _ = u.User.Password()
	}
	writeSecret(creds+"/oauthbridge-dsn", []byte(dsn+"\n"))
	ca := T + "/fake-ca.pem"
	b, err := os.ReadFile(fake["FAKE_CA_FILE"])
	must(err)
	must(os.WriteFile(ca, b, 0o644))

	users := map[string]string{"legacy": "pw-" + randHex(8), "legacy2": "pw-" + randHex(8)}
	hashes := map[string]string{}
	for u, pw := range users {
		c := exec.Command(*bin, "hash-password")
		c.Stdin = strings.NewReader(pw + "\n")
		out, err := c.Output()
		if err != nil {
			fatal("hash-password: %v", err)
		}
		hashes[u] = strings.TrimSpace(string(out))
	}

	env := append(os.Environ(), "CREDENTIALS_DIRECTORY="+creds)
	var rs []*replica
	for i := 1; i <= 3; i++ {
		r := &replica{name: fmt.Sprintf("r%d", i), dir: fmt.Sprintf("%s/r%d", T, i), imap: freePort(), smtp: freePort(), admin: freePort()}
		r.conf, r.log = r.dir+"/config.hcl", r.dir+"/serve.log"
		must(os.MkdirAll(r.dir, 0o755))
		must(os.Mkdir(r.dir+"/state", 0o700))
		own(r.dir + "/state")
		conf := fmt.Sprintf(`state_dir = %q
store {
  type            = "postgres"
  dsn             = credential("oauthbridge-dsn")
  replica         = %q
  lease_duration  = %q
  lease_heartbeat = %q
  poll_interval   = %q
}
imap {
  listen = ["127.0.0.1:%d"]
}
pop3 {
  listen = ["127.0.0.1:%d"]
}
smtp {
  listen = ["127.0.0.1:%d"]
  domain = "bridge.test"
}
admin {
  listen     = "127.0.0.1:%d"
  public_url = "http://127.0.0.1:%d"
}
provider "contoso" {
  tenant        = %q
  client_id     = "bridge-app"
  client_secret = credential("client-secret")
  authority     = %q
  imap_server   = %q
  pop3_server   = %q
  smtp_server   = %q
  ca_file       = %q
}
account "helpdesk" {
  provider = "contoso"
  mailbox  = "helpdesk@%s"
  delegate = "alice@%s"
}
account "bob" {
  provider = "contoso"
  mailbox  = "bob@%s"
}
user "legacy" {
  password_hash = %q
  account       = "helpdesk"
}
user "legacy2" {
  password_hash = %q
  account       = "bob"
}
`, r.dir+"/state", r.name, leaseDur.String(), (*leaseDur / 2).String(), pollDur.String(),
			r.imap, freePort(), r.smtp, r.admin, r.admin, domain, idpURL, fake["FAKE_IMAP"], fake["FAKE_POP3"], fake["FAKE_SMTP"], ca,
			domain, domain, domain, hashes["legacy"], hashes["legacy2"])
		// root:<the service user's group> 0640, as the package installs it.
		must(os.WriteFile(r.conf, []byte(conf), 0o640))
		if cred != nil {
			must(os.Chown(r.conf, 0, int(cred.Gid)))
		}
		rs = append(rs, r)
	}
	for _, r := range rs {
		r.start(env)
		cleanups = append(cleanups, func() {
			if r.cmd != nil && r.cmd.Process != nil {
				_ = r.cmd.Process.Signal(syscall.SIGCONT)
				_ = r.cmd.Process.Kill()
			}
		})
	}
	pass("three replicas started on one PostgreSQL store (as %s), in %.1fs", map[bool]string{true: "nobody", false: "the current user"}[cred != nil], time.Since(start).Seconds())

	// Sign in each account once, through different replicas.
	signIn := func(r *replica, account, upn string) {
		c := exec.Command(*bin, "login", account, "-config", r.conf)
		c.Env = env
		var out syncBuf
		c.Stdout, c.Stderr = &out, &out
		must(c.Start())
		code := ""
		re := regexp.MustCompile(`enter the code[^\n]*\n\s*(\S+)`)
		eventually(20*time.Second, func() bool {
			if m := re.FindStringSubmatch(out.String()); m != nil {
				code = m[1]
			}
			return code != ""
		})
		if code == "" {
			_ = c.Process.Kill()
			fatal("login %s through %s: no device code in: %s", account, r.name, out.String())
		}
		idpPost("/test/approve", url.Values{"code": {code}, "upn": {upn}})
		if err := c.Wait(); err != nil {
			fatal("login %s through %s: %v: %s", account, r.name, err, out.String())
		}
	}
	signIn(rs[0], "helpdesk", "alice@"+domain)
	signIn(rs[1], "bob", "bob@"+domain)
	converged := func(live []*replica) (string, bool) {
		var detail string
		ok := eventually(2**lifetime, func() bool {
			exp := map[string]time.Time{}
			for _, r := range live {
				rows, err := r.accounts()
				if err != nil {
					detail = r.name + ": " + err.Error()
					return false
				}
				for _, a := range rows {
					if a.State != "ok" {
						detail = fmt.Sprintf("%s: %s is %s", r.name, a.Account, a.State)
						return false
					}
					if e, seen := exp[a.Account]; seen && !e.Equal(a.Expiry) {
						detail = fmt.Sprintf("%s: %s expires %s, another replica's %s", r.name, a.Account, a.Expiry.Format(time.StampMilli), e.Format(time.StampMilli))
						return false
					}
					exp[a.Account] = a.Expiry
				}
			}
			return len(exp) == 2
		})
		return detail, ok
	}
	if d, ok := converged(rs); ok {
		pass("sign-ins through r1 and r2 adopted by every replica without a restart (same token state on all three)")
	} else {
		fatal("replicas did not converge after the sign-ins: %s", d)
	}
	metricsAt := time.Now()
	q0, p0 := make([]float64, len(rs)), make([]float64, len(rs))
	for i, r := range rs {
		q0[i] = r.metric("oauthbridge_token_store_queries_total", "", "")
		p0[i] = r.metric("oauthbridge_token_store_queries_total", `op="poll"`, "")
	}

	// Legacy clients on every replica, throughout.
	cs := &clientStats{perReplica: map[string]int{}}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for _, r := range rs {
		for _, proto := range []string{"imap", "smtp"} {
			wg.Add(1)
			go func() {
				defer wg.Done()
				n := 0
				for {
					select {
					case <-stop:
						return
					case <-time.After(200 * time.Millisecond):
					}
					n++
					u := []string{"legacy", "legacy2"}[n%2]
					try := func() error {
						if proto == "imap" {
							return imapLogin(r.imap, u, users[u])
						}
						return smtpLogin(r.smtp, u, users[u])
					}
					if r.down.Load() {
						continue
					}
					err := try()
					if err == nil {
						cs.note(func() { cs.logins++; cs.perReplica[r.name]++ })
						continue
					}
					if r.down.Load() {
						cs.note(func() { cs.whileDown++ })
						continue
					}
					time.Sleep(time.Second) // the client retries once
					err2 := try()
					if r.down.Load() {
						cs.note(func() { cs.whileDown++ })
						continue
					}
					cs.note(func() {
						cs.logins++
						cs.retried++
						if err2 != nil {
							cs.failed++
						}
						if len(cs.firstErrs) < 5 {
							cs.firstErrs = append(cs.firstErrs, fmt.Sprintf("%s %s %s: %v; retry: %v", r.name, proto, u, err, err2))
						}
					})
				}
			}()
		}
	}
	stopClients := func() {
		select {
		case <-stop:
		default:
			close(stop)
			wg.Wait()
		}
	}
	cleanups = append(cleanups, stopClients)

	// One refresh per grant with everyone up.
	grantsRefreshed := func(base refreshStats, within time.Duration) bool {
		return eventually(within, func() bool {
			st := stats()
			for k, g := range st.Grants {
				if b := base.Grants[k]; b != nil && g.Refreshes <= b.Refreshes {
					return false
				}
			}
			return len(st.Grants) == 2
		})
	}
	st0 := stats()
	if grantsRefreshed(st0, 2**lifetime) {
		pass("each sign-in refreshed ahead of expiry with all three replicas up")
	} else {
		fail("no refresh of both sign-ins within two lifetimes: %+v", stats().Grants)
	}

	// holder finds the replica holding a lease now, asking the live ones.
	holder := func(live []*replica, want string) (*replica, string) {
		var h *replica
		var acct string
		eventually(*leaseDur*3/2, func() bool {
			for _, r := range live {
				rows, err := r.accounts()
				if err != nil {
					continue
				}
				for _, a := range rows {
					if a.LeaseHolder == "" || a.Account != want {
						continue
					}
					for _, x := range rs {
						if strings.HasPrefix(a.LeaseHolder, x.name+"/") || a.LeaseHolder == x.name {
							h, acct = x, a.Account
							return true
						}
					}
				}
			}
			return false
		})
		return h, acct
	}
	// midRefresh holds the next redemption's answer and waits until a
	// replica is waiting for it; it returns the holder and the refresh count.
	midRefresh := func(what string) (*replica, string, func() bool) {
		hold := *leaseDur * 2
		held := stats().Held // an earlier hold may still run: its client was killed
		idpPost("/test/token-hold", url.Values{"ms": {strconv.Itoa(int(hold.Milliseconds()))}, "count": {"1"}})
		var st refreshStats
		if !eventually(2**lifetime, func() bool { st = stats(); return st.Held > held && st.Holding > 0 }) {
			fatal("%s: no refresh started within two lifetimes", what)
		}
		g := st.HoldingGrant
		acct := map[string]string{"alice@" + domain: "helpdesk", "bob@" + domain: "bob"}[st.Grants[g].UPN]
		h, _ := holder(rs, acct)
		if h == nil {
			// Ask the table itself, and say what status showed.
			owner := dbLeaseOwner(acct)
			var shown []string
			for _, r := range rs {
				rows, err := r.accounts()
				shown = append(shown, fmt.Sprintf("%s: %+v %v", r.name, rows, err))
			}
			fail("%s: %s's refresh is under way (lease_owner %q in the table), but no replica's status showed a lease_holder within %s: %s", what, acct, owner, *leaseDur*3/2, strings.Join(shown, "; "))
			for _, x := range rs {
				if strings.HasPrefix(owner, x.name+"/") {
					h = x
				}
			}
			if h == nil {
				fatal("%s: no lease holder for %s's refresh", what, acct)
			}
		}
		n := st.Grants[g].Refreshes
		// takenOver: the same sign-in was redeemed again (by another replica).
		return h, acct, func() bool { return stats().Grants[g].Refreshes > n }
	}

	// kill -9 the holder in the middle of a refresh.
	victim, acct, takenOver := midRefresh("kill")
	victim.down.Store(true)
	t0 := time.Now()
	_ = victim.cmd.Process.Kill()
	info("killed %s (SIGKILL) while it redeemed %s's refresh token", victim.name, acct)
	if stats().Holding > 0 {
		pass("%s killed in the middle of a refresh (the identity platform had redeemed the refresh token; its answer was not read yet)", victim.name)
	} else {
		fail("%s was killed only after its refresh ended (the machine is too slow for the held answer of %s)", victim.name, 2**leaseDur)
	}
	var survivors []*replica
	for _, r := range rs {
		if r != victim {
			survivors = append(survivors, r)
		}
	}
	if eventually(*lifetime, takenOver) {
		pass("kill -9 of the lease holder mid-refresh: another replica redeemed the grant %.1fs later", time.Since(t0).Seconds())
	} else {
		fail("kill -9 of the lease holder: no other replica redeemed the grant within a lifetime")
	}
	if d, ok := converged(survivors); ok {
		pass("the two survivors serve the same, fresh tokens")
	} else {
		fail("survivors after kill -9: %s", d)
	}
	victim.start(env)
	if d, ok := converged(rs); ok {
		pass("%s restarted and rejoined (same token state on all three)", victim.name)
	} else {
		fail("%s after restart: %s", victim.name, d)
	}
	victim.down.Store(false)

	// SIGSTOP the holder past its lease, then SIGCONT it.
	stopped, acct, takenOver := midRefresh("stop")
	stopped.down.Store(true)
	t0 = time.Now()
	_ = stopped.cmd.Process.Signal(syscall.SIGSTOP)
	info("stopped %s (SIGSTOP) while it redeemed %s's refresh token", stopped.name, acct)
	if stats().Holding == 0 {
		fail("%s was stopped only after its refresh ended (the machine is too slow for the held answer of %s)", stopped.name, 2**leaseDur)
	}
	if eventually(*lifetime, takenOver) {
		pass("SIGSTOP of the lease holder: another replica took the grant over %.1fs later (lease %s)", time.Since(t0).Seconds(), *leaseDur)
	} else {
		fail("SIGSTOP of the lease holder: no other replica redeemed the grant within a lifetime")
	}
	time.Sleep(*leaseDur) // well past its lease: the stall, not the test, is what is measured
	_ = stopped.cmd.Process.Signal(syscall.SIGCONT)
	info("resumed %s (SIGCONT) after %.1fs", stopped.name, time.Since(t0).Seconds())
	if d, ok := converged(rs); ok {
		pass("%s resumed and adopted the stored tokens (same token state on all three)", stopped.name)
	} else {
		fail("%s after SIGCONT: %s", stopped.name, d)
	}
	stopped.down.Store(false)
	// Fencing: the resumed replica found its lease gone, or its write of
	// the tokens it got was refused by the version check.
	// The resumed process first reads the answer it was waiting for, then
	// finds its lease gone or its write refused: wait for that event (the
	// other replicas may have converged before it got there).
	var lost, conflicts float64
	if eventually(*lifetime, func() bool {
		lost = stopped.metric("oauthbridge_token_leases_lost_total", "", "")
		conflicts = stopped.metric("oauthbridge_token_store_conflicts_total", "", "")
		return lost+conflicts >= 1
	}) {
		pass("%s was fenced after SIGCONT: leases lost %.0f, writes refused by the version check %.0f", stopped.name, lost, conflicts)
	} else {
		fail("%s resumed past its lease but reports no lost lease and no refused write", stopped.name)
	}

	// Steady again: one more refresh of each grant with all three up.
	st1 := stats()
	if grantsRefreshed(st1, 2**lifetime) {
		pass("each sign-in refreshed again with all three replicas up")
	} else {
		fail("no further refresh of both sign-ins within two lifetimes")
	}
	stopClients()
	elapsed := time.Since(metricsAt)

	// The identity platform's view.
	st := stats()
	if st.Unknown == 0 {
		pass("no refresh token presented that the identity platform never issued")
	} else {
		fail("%d refresh tokens presented that were never issued", st.Unknown)
	}
	reused, extra := 0, 0
	for _, k := range st.Order {
		g := st.Grants[k]
		short := 0
		var gaps []string
		for i := 1; i < len(g.Times); i++ {
			gap := g.Times[i].Sub(g.Times[i-1])
			gaps = append(gaps, fmt.Sprintf("%.1f", gap.Seconds()))
			if gap < *lifetime/2 {
				short++
			}
		}
		reused += g.Reused
		extra += short
		info("sign-in %s: %d redemptions, gaps %vs; re-presented %d, stale %d", k, g.Refreshes, gaps, g.Reused, g.Stale)
		if g.Stale == 0 {
			pass("%s: no stale refresh token presented (none older than, or beside, one already redeemed)", k)
		} else {
			fail("%s: %d stale refresh tokens presented", k, g.Stale)
		}
		if short <= g.Reused {
			pass("%s: redeemed once per lifetime (%d redemptions; %d early ones, each a takeover of a redemption whose holder died or stalled)", k, g.Refreshes, short)
		} else {
			fail("%s: %d redemptions less than half a lifetime after the previous one, only %d explained by takeovers", k, short, g.Reused)
		}
	}
	if reused <= 2 {
		pass("refresh tokens re-presented: %d, at most one per disrupted redemption (2 disruptions)", reused)
	} else {
		fail("refresh tokens re-presented %d times for 2 disrupted redemptions", reused)
	}

	// The clients' view.
	info("client logins: %d (%v per replica), %d failed once and were retried, %d failed after the retry, %d on a replica while it was killed or stopped (not counted)",
		cs.logins, cs.perReplica, cs.retried, cs.failed, cs.whileDown)
	for _, e := range cs.firstErrs {
		info("  %s", e)
	}
	if cs.failed == 0 && cs.logins > 0 {
		pass("IMAP and SMTP logins on all replicas throughout: %d, none failed after one retry (%d needed it)", cs.logins, cs.retried)
	} else {
		fail("IMAP/SMTP logins: %d of %d failed even after one retry", cs.failed, cs.logins)
	}

	// What the replicas cost the database.
	var qpm []string
	for i, r := range rs {
		q := r.metric("oauthbridge_token_store_queries_total", "", "")
		p := r.metric("oauthbridge_token_store_queries_total", `op="poll"`, "")
		if r == victim || q < q0[i] { // restarted: its counters started again
			continue
		}
		qpm = append(qpm, fmt.Sprintf("%s %.0f (%.0f of them polls)", r.name, (q-q0[i])/elapsed.Minutes(), (p-p0[i])/elapsed.Minutes()))
	}
	info("store queries a minute per replica over %.0fs (poll_interval %s, %s tokens, %d redemptions): %s", elapsed.Seconds(), *pollDur, *lifetime, st.total()-st0.total(), strings.Join(qpm, ", "))

	// Logins per second through one replica on the shared store.
	if *benchDur > 0 {
		r := rs[0]
		var ok, bad atomic.Int64
		end := time.Now().Add(*benchDur)
		var bw sync.WaitGroup
		for i := range 4 {
			bw.Add(1)
			go func() {
				defer bw.Done()
				u := []string{"legacy", "legacy2"}[i%2]
				for time.Now().Before(end) {
					if imapLogin(r.imap, u, users[u]) == nil {
						ok.Add(1)
					} else {
						bad.Add(1)
					}
				}
			}()
		}
		bw.Wait()
		info("IMAP logins through one replica on the shared store: %.0f/s (4 clients, %s, %d failed)", float64(ok.Load())/benchDur.Seconds(), *benchDur, bad.Load())
	}

	// No secret in any replica's log.
	leaked := ""
	for _, r := range rs {
		b, _ := os.ReadFile(r.log)
		for _, s := range []string{secret, users["legacy"], users["legacy2"], pgPass} {
			if s != "" && bytes.Contains(b, []byte(s)) {
				leaked += r.name + " "
			}
		}
	}
	if leaked == "" {
		pass("no client secret, user password or database password in the replicas' logs")
	} else {
		fail("a secret in the logs of %s", leaked)
	}
	info("took %.0fs", time.Since(start).Seconds())
	finish()
}

// dbLeaseOwner reads account's lease owner from the shared table.
func dbLeaseOwner(account string) string {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, os.Getenv("OAUTHBRIDGE_TEST_PG_DSN"))
	if err != nil {
		return "(" + err.Error() + ")"
	}
	defer conn.Close(ctx)
	var owner string
	if err := conn.QueryRow(ctx, "SELECT lease_owner FROM oauthbridge_tokens WHERE id = $1 AND lease_until > now()", account).Scan(&owner); err != nil {
		return "(" + err.Error() + ")"
	}
	return owner
}

func must(err error) {
	if err != nil {
		fatal("%v", err)
	}
}

func writeSecret(path string, b []byte) {
	must(os.WriteFile(path, b, 0o600))
	own(path)
}

type syncBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuf) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuf) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}
