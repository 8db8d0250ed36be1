package cli

// TestDocumentedCommands runs every command line that README.md and
// config.hcl.example print, exactly as printed.
//
// What counts as a command line:
//   - every line of README.md's fenced sh/bash/shell/console blocks (a
//     trailing "# comment" is not part of it; "# ... or: CMD" in such a
//     comment is another command line);
//   - README.md's inline code spans that start with "oauthbridge ", and
//     'oauthbridge ...' quoted inside a code span (the fixes the error
//     table prints);
//   - in config.hcl.example's comments, "oauthbridge SUBCOMMAND ..." to the
//     end of the line, or the code span it is in.
//
// How the oauthbridge commands run: the test builds the binary and runs
// each line with /bin/sh in a private mount namespace (unshare) in which
// /etc/oauthbridge is a temporary directory holding config.hcl and
// credentials/client-secret, so "-config /etc/oauthbridge/config.hcl" and
// the default paths are used as printed without touching the machine's
// /etc. The configuration has the README's names (provider contoso,
// account helpdesk, user otrs) and points at the fake Microsoft 365
// (internal/fakems). "go run ./cmd/oauthbridge" stands for the built
// binary. Each command runs in the state the README puts it in: first
// with no service running (login then writes the token store itself),
// then with the service running (the in-process daemon; status and login
// talk to its admin API). Namespaces need root or user namespaces; without
// either the test skips, except under CI=true, where it fails.
//
// Commands that are not oauthbridge's (make, install, systemctl, ...) are
// run by other checks; coverage below names which, and a README command
// that no entry covers fails the test.

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/oauthbridge/oauthbridge/config"
	"github.com/oauthbridge/oauthbridge/internal/daemon"
	"github.com/oauthbridge/oauthbridge/internal/fakems"
	"github.com/oauthbridge/oauthbridge/internal/logging"
)

// docCommand is one command line found in the documentation.
type docCommand struct {
	where string // file:line
	text  string
}

// coverage maps the first words of a documented command that is not
// oauthbridge's to the check that runs it: a file that must exist and
// mention the command (".ci/run" runs make check; the packaged-install
// script installs the .deb and starts the unit's command as systemd would),
// or "Makefile" for make targets, which must exist.
var coverage = []struct{ prefix, by string }{
	{"make check", ".ci/run"},
	{"make ", "Makefile"},
	{"install ", "test/install/run.sh"},
	{"systemctl ", "test/install/in-container.sh"},
	{"journalctl ", "test/install/in-container.sh"},
	{"dpkg ", "test/install/run.sh"},
	{"apt ", "test/install/run.sh"},
	{"apt-get ", "test/install/run.sh"},
	{"chmod ", "test/install/run.sh"},
	{"chown ", "test/install/run.sh"},
	{"mkdir ", "test/install/run.sh"},
	{"printf ", "test/install/run.sh"},
	{"umask ", "test/install/run.sh"},
	{"systemd-creds ", "test/install/run.sh"},
	{"sudoedit ", "test/install/in-container.sh"},
}

var (
	fenceRE     = regexp.MustCompile("^\\s*```\\s*([A-Za-z0-9_-]*)")
	spanRE      = regexp.MustCompile("`([^`]+)`")
	quotedRE    = regexp.MustCompile(`'(oauthbridge [^']+)'`)
	exampleCmdR = regexp.MustCompile(`oauthbridge\s+(serve|check|hash-password|login|status|doctor|consent-url|demo|version|help|--help|-h|--version)\b[^#]*`)
	shellLangs  = []string{"", "sh", "bash", "shell", "console"}
)

// stripComment splits a shell line at its first unquoted " #".
func stripComment(line string) (cmd, comment string) {
	var q rune
	for i, r := range line {
		switch {
		case q != 0:
			if r == q {
				q = 0
			}
		case r == '\'' || r == '"':
			q = r
		case r == '#' && (i == 0 || line[i-1] == ' ' || line[i-1] == '\t'):
			return strings.TrimSpace(line[:i]), strings.TrimSpace(line[i+1:])
		}
	}
	return strings.TrimSpace(line), ""
}

func readmeCommands(t *testing.T, path string) []docCommand {
	src, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var out []docCommand
	add := func(n int, s string) {
		out = append(out, docCommand{fmt.Sprintf("%s:%d", filepath.Base(path), n), strings.TrimSpace(s)})
	}
	inFence, shell, lang := false, false, ""
	var cont string
	for i, line := range strings.Split(string(src), "\n") {
		n := i + 1
		if m := fenceRE.FindStringSubmatch(line); m != nil {
			if !inFence {
				inFence, lang = true, m[1]
				shell = slices.Contains(shellLangs, lang)
			} else {
				inFence = false
			}
			continue
		}
		if inFence {
			if !shell {
				continue
			}
			if lang == "console" {
				t := strings.TrimSpace(line)
				if !strings.HasPrefix(t, "$ ") && !strings.HasPrefix(t, "# ") {
					continue // output
				}
				line = t[2:]
			}
			cmd, comment := stripComment(line)
			if strings.HasSuffix(cmd, "\\") {
				cont += strings.TrimSuffix(cmd, "\\") + " "
				continue
			}
			cmd, cont = cont+cmd, ""
			if cmd != "" {
				add(n, cmd)
			}
			if _, alt, ok := strings.Cut(comment, "or: "); ok && strings.Contains(alt, "oauthbridge ") {
				add(n, alt)
			}
			continue
		}
		for _, m := range spanRE.FindAllStringSubmatch(line, -1) {
			span := m[1]
			if isCommandSpan(span) {
				add(n, span)
				continue
			}
			for _, q := range quotedRE.FindAllStringSubmatch(span, -1) {
				if isCommandSpan(q[1]) {
					add(n, q[1])
				}
			}
		}
	}
	return out
}

func exampleCommands(t *testing.T, path string) []docCommand {
	src, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var out []docCommand
	for i, line := range strings.Split(string(src), "\n") {
		_, comment, ok := strings.Cut(line, "#")
		if !ok {
			continue
		}
		where := fmt.Sprintf("%s:%d", filepath.Base(path), i+1)
		spans := spanRE.FindAllStringSubmatch(comment, -1)
		for _, m := range spans {
			if isCommandSpan(m[1]) {
				out = append(out, docCommand{where, m[1]})
			}
		}
		if len(spans) == 0 {
			if m := exampleCmdR.FindString(comment); m != "" {
				out = append(out, docCommand{where, strings.TrimSpace(m)})
			}
		}
	}
	return out
}

// isCommandSpan reports whether an inline code span in prose is an
// oauthbridge command line: "oauthbridge" then a subcommand or a flag
// (prose also names the user and group oauthbridge in code spans).
func isCommandSpan(span string) bool {
	f := strings.Fields(span)
	if len(f) < 2 || f[0] != "oauthbridge" {
		return false
	}
	if strings.HasPrefix(f[1], "-") {
		return true
	}
	for _, c := range commands {
		if c.name == f[1] {
			return true
		}
	}
	return false
}

// isTemplate reports a command with placeholders (ACCOUNT, <name>, ...):
// a form to fill in, not a command line.
func isTemplate(cmd string) bool {
	for _, w := range strings.Fields(cmd) {
		if (strings.HasPrefix(w, "<") && strings.HasSuffix(w, ">")) || strings.Contains(w, "...") {
			return true
		}
		if len(w) >= 3 && strings.ToUpper(w) == w && strings.Trim(w, "ABCDEFGHIJKLMNOPQRSTUVWXYZ_[]|") == "" {
			return true
		}
	}
	return false
}

// docWorld is the machine the documented commands run on.
type docWorld struct {
	t       *testing.T
	root    string // temporary directory
	etc     string // mounted on /etc/oauthbridge
	bin     string
	fake    *fakems.Fake
	cfg     string // config path outside the namespace
	unshare []string
	daemon  *daemon.Daemon
	ran     map[string]bool // subcommands run
}

const (
	docDelegate = "alice@contoso.com"
	docMailbox  = "helpdesk@contoso.com"
	docClientID = "00000000-0000-0000-0000-000000000000"
	docSecret   = "client-secret-from-credential"
)

func TestDocumentedCommands(t *testing.T) {
	cmds := append(readmeCommands(t, "../../README.md"), exampleCommands(t, "../../config.hcl.example")...)
	var ours, others []docCommand
	for _, c := range cmds {
		if isTemplate(c.text) {
			t.Logf("%s: %q is a template, not a command line", c.where, c.text)
			continue
		}
		first := strings.Fields(c.text)[0]
		switch {
		case first == "oauthbridge" || strings.HasPrefix(c.text, "go run ./cmd/oauthbridge ") || strings.Contains(c.text, "| oauthbridge "):
			ours = append(ours, c)
		default:
			others = append(others, c)
		}
	}
	t.Run("others-covered", func(t *testing.T) {
		for _, c := range others {
			checkCovered(t, c)
		}
	})
	if len(ours) < 5 {
		t.Fatalf("found only %d oauthbridge command lines in README.md and config.hcl.example: the extraction is broken", len(ours))
	}
	t.Run("oauthbridge", func(t *testing.T) { runDocumented(t, ours) })
}

// runDocumented runs the oauthbridge command lines.
func runDocumented(t *testing.T, ours []docCommand) {
	w := newDocWorld(t)
	// Phase 1: nothing running, as in the README's first steps.
	for _, c := range ours {
		switch subcommand(c.text) {
		case "status", "doctor":
			continue // needs the service (phase 2)
		}
		w.run(c)
	}
	// Phase 2: the service runs; status and login go through its admin API.
	w.startDaemon()
	for _, c := range ours {
		switch subcommand(c.text) {
		case "status", "login", "doctor":
			w.run(c)
		}
	}
	for _, sub := range []string{"check", "login", "status"} {
		if !w.ran[sub] {
			t.Errorf("the documentation shows no 'oauthbridge %s' command line; expected one (README setup steps)", sub)
		}
	}
}

// checkCovered fails unless some other check runs command c.
func checkCovered(t *testing.T, c docCommand) {
	t.Helper()
	text := c.text + " "
	for _, p := range []string{"( ", "(", "sudo "} { // a subshell or sudo in front does not change who runs it
		text = strings.TrimPrefix(text, p)
	}
	for _, cv := range coverage {
		if !strings.HasPrefix(text, cv.prefix) {
			continue
		}
		src, err := os.ReadFile(filepath.Join("../..", cv.by))
		if err != nil {
			t.Errorf("%s: %q is to be run by %s, which is missing: %v", c.where, c.text, cv.by, err)
			return
		}
		if cv.by == "Makefile" {
			target := strings.Fields(text)[1]
			if !regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(target) + `:`).Match(src) {
				t.Errorf("%s: %q: the Makefile has no target %q", c.where, c.text, target)
			}
			return
		}
		if word := strings.Fields(cv.prefix)[0]; !strings.Contains(string(src), word) {
			t.Errorf("%s: %q is to be run by %s, which never runs %s", c.where, c.text, cv.by, word)
		}
		return
	}
	t.Errorf("%s: %q: no test runs this documented command; run it in a test and add it to coverage in docs_test.go", c.where, c.text)
}

// subcommand is the oauthbridge subcommand of a command line.
func subcommand(cmd string) string {
	f := strings.Fields(cmd)
	for i, w := range f {
		if (w == "oauthbridge" || strings.HasSuffix(w, "/cmd/oauthbridge")) && i+1 < len(f) {
			return f[i+1]
		}
	}
	return ""
}

func newDocWorld(t *testing.T) *docWorld {
	w := &docWorld{t: t, root: t.TempDir(), ran: map[string]bool{}}
	w.unshare = namespaceRunner(t)
	w.etc = filepath.Join(w.root, "etc-oauthbridge")
	w.bin = filepath.Join(w.root, "bin")
	for _, d := range []string{w.etc, filepath.Join(w.etc, "credentials"), w.bin, filepath.Join(w.root, "ov"), filepath.Join(w.root, "home")} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			t.Fatal(err)
		}
	}
	build := exec.Command("go", "build", "-o", filepath.Join(w.bin, "oauthbridge"), "./cmd/oauthbridge")
	build.Dir = "../.."
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	f, err := fakems.Start(fakems.Options{Logger: logging.Discard})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	w.fake = f
	f.AddApp(docClientID, docSecret)
	f.AddUser(docDelegate)
	f.AddMailbox(docMailbox, docDelegate)
	ca := filepath.Join(w.root, "fake-ca.pem")
	if err := f.WriteCAFile(ca); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(w.etc, "credentials", "client-secret"), []byte(docSecret+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	hash, _, _ := strings.Cut(runOut(t, "printf 'otrs-password\\n' | "+filepath.Join(w.bin, "oauthbridge")+" hash-password -cost 10"), "\n")
	src := fmt.Sprintf(`state_dir = %q
imap { listen = [%q] }
pop3 { listen = [%q] }
smtp { listen = [%q] }
admin { listen = %q }
provider "contoso" {
  tenant        = "contoso.onmicrosoft.com"
  client_id     = %q
  client_secret = credential("client-secret")
  authority     = %q
  imap_server   = %q
  pop3_server   = %q
  smtp_server   = %q
  ca_file       = %q
}
account "helpdesk" {
  provider = "contoso"
  mailbox  = %q
  delegate = %q
}
user "otrs" {
  password_hash = %q
  account       = "helpdesk"
}
`, filepath.Join(w.root, "state"), freeLoopback(t), freeLoopback(t), freeLoopback(t), freeLoopback(t),
		docClientID, f.AuthorityURL, f.IMAPAddr, f.POP3Addr, f.SMTPAddr, ca, docMailbox, docDelegate, hash)
	w.cfg = filepath.Join(w.etc, "config.hcl")
	if err := os.WriteFile(w.cfg, []byte(src), 0o640); err != nil {
		t.Fatal(err)
	}
	return w
}

func runOut(t *testing.T, script string) string {
	out, err := exec.Command("/bin/sh", "-c", script).Output()
	if err != nil {
		t.Fatalf("%s: %v", script, err)
	}
	return string(out)
}

func freeLoopback(t *testing.T) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// nsSetup runs inside the new mount namespace: an overlay over /etc (so
// /etc/oauthbridge can be created whether or not it exists) with the test's
// directory bound on /etc/oauthbridge, then the command line.
const nsSetup = `set -e
mount -t tmpfs oauthbridge-docs "$OB_T/ov"
mkdir "$OB_T/ov/u" "$OB_T/ov/w"
mount -t overlay overlay -o "lowerdir=/etc,upperdir=$OB_T/ov/u,workdir=$OB_T/ov/w" /etc
mkdir -p /etc/oauthbridge
mount --bind "$OB_ETC" /etc/oauthbridge
exec /bin/sh -c "$1"
`

// namespaceRunner returns the unshare command line that gives a command its
// own mount namespace, or skips (fails under CI=true).
func namespaceRunner(t *testing.T) []string {
	candidates := [][]string{{"unshare", "--mount"}, {"unshare", "--user", "--map-root-user", "--mount"}}
	var errs []string
	for _, c := range candidates {
		dir := t.TempDir()
		os.MkdirAll(filepath.Join(dir, "ov"), 0o700)
		os.MkdirAll(filepath.Join(dir, "etc"), 0o700)
		cmd := exec.Command(c[0], append(c[1:], "/bin/sh", "-c", nsSetup, "sh", "test -d /etc/oauthbridge")...)
		cmd.Env = append(os.Environ(), "OB_T="+dir, "OB_ETC="+filepath.Join(dir, "etc"))
		out, err := cmd.CombinedOutput()
		if err == nil {
			return c
		}
		errs = append(errs, fmt.Sprintf("%s: %v %s", strings.Join(c, " "), err, out))
	}
	msg := "cannot run the documented commands in a private mount namespace (needs root or user namespaces): " + strings.Join(errs, "; ")
	if os.Getenv("CI") == "true" {
		t.Fatal(msg)
	}
	t.Skip(msg)
	return nil
}

// start starts one command line in the namespace.
func (w *docWorld) start(c docCommand) (*exec.Cmd, *lockedBuffer, *lockedBuffer, io.WriteCloser) {
	text := strings.Replace(c.text, "go run ./cmd/oauthbridge ", "oauthbridge ", 1)
	args := append(w.unshare[1:], "/bin/sh", "-c", nsSetup, "sh", text)
	cmd := exec.Command(w.unshare[0], args...)
	cmd.Env = []string{
		"PATH=" + w.bin + ":/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
		"HOME=" + filepath.Join(w.root, "home"),
		"LANG=C.UTF-8",
		"PW=otrs-password",
		"OB_T=" + w.root,
		"OB_ETC=" + w.etc,
	}
	var o, e lockedBuffer
	cmd.Stdout, cmd.Stderr = &o, &e
	in, err := cmd.StdinPipe()
	if err != nil {
		w.t.Fatal(err)
	}
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		w.t.Fatalf("%s: %q: %v", c.where, c.text, err)
	}
	return cmd, &o, &e, in
}

// both is stdout and stderr together.
type both [2]*lockedBuffer

func (b both) String() string { return b[0].String() + b[1].String() }

// signalBinary sends sig to the oauthbridge processes in process group pgid.
func signalBinary(pgid int, sig syscall.Signal) {
	dirs, _ := os.ReadDir("/proc")
	for _, d := range dirs {
		b, err := os.ReadFile(filepath.Join("/proc", d.Name(), "stat"))
		if err != nil {
			continue
		}
		// pid (comm) state ppid pgrp ...
		i := strings.LastIndexByte(string(b), ')')
		j := strings.IndexByte(string(b), '(')
		if i < 0 || j < 0 || string(b[j+1:i]) != "oauthbridge" {
			continue
		}
		f := strings.Fields(string(b[i+1:]))
		var pid, pgrp int
		fmt.Sscan(d.Name(), &pid)
		if len(f) > 2 {
			fmt.Sscan(f[2], &pgrp)
		}
		if pgrp == pgid && pid > 0 {
			syscall.Kill(pid, sig)
		}
	}
}

// waitFor polls buf until re matches or the command exits.
func waitFor(buf fmt.Stringer, re *regexp.Regexp, exited <-chan struct{}, limit time.Duration) []string {
	deadline := time.Now().Add(limit)
	for time.Now().Before(deadline) {
		if m := re.FindStringSubmatch(buf.String()); m != nil {
			return m
		}
		select {
		case <-exited:
			return re.FindStringSubmatch(buf.String())
		case <-time.After(20 * time.Millisecond):
		}
	}
	return nil
}

// run runs one documented command line and checks that it did its job.
func (w *docWorld) run(c docCommand) {
	t := w.t
	sub := subcommand(c.text)
	w.ran[sub] = true
	cmd, o, e, in := w.start(c)
	exited := make(chan struct{})
	var waitErr error
	go func() { waitErr = cmd.Wait(); close(exited) }()
	fail := func(format string, a ...any) {
		t.Helper()
		t.Errorf("%s: %q: %s\nstdout:\n%s\nstderr:\n%s", c.where, c.text, fmt.Sprintf(format, a...), o.String(), e.String())
	}
	finish := func() int {
		select {
		case <-exited:
		case <-time.After(2 * time.Minute):
			syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
			<-exited
			fail("did not finish")
		}
		var ee *exec.ExitError
		if errors.As(waitErr, &ee) {
			return ee.ExitCode()
		}
		if waitErr != nil {
			return -1
		}
		return 0
	}
	interrupt := func(ready *regexp.Regexp) {
		if waitFor(both{o, e}, ready, exited, time.Minute) == nil {
			fail("never printed %q", ready)
		}
		// The shell in front of the binary would die of the signal and
		// hide the binary's exit status: signal the binary only, as
		// systemctl stop does.
		signalBinary(cmd.Process.Pid, syscall.SIGTERM)
	}
	switch sub {
	case "hash-password":
		io.WriteString(in, "otrs-password\n")
		in.Close()
		if code := finish(); code != 0 || !strings.HasPrefix(o.String(), "$2") {
			fail("exit %d, want 0 and a bcrypt hash", code)
		}
	case "login":
		in.Close()
		m := waitFor(o, regexp.MustCompile(`enter the code\s+(\S+)`), exited, time.Minute)
		if m == nil {
			finish()
			fail("printed no device code")
			return
		}
		if err := w.fake.ApproveDevice(m[1], docDelegate); err != nil {
			fail("approving the code: %v", err)
		}
		if code := finish(); code != 0 || !strings.Contains(o.String(), "Signed in as "+docDelegate) {
			fail("exit %d, want 0 and the signed-in identity", code)
		}
		if w.daemon != nil && strings.Contains(e.String(), "No daemon answers") {
			fail("did not sign in through the running service")
		}
	case "status":
		in.Close()
		ok := regexp.MustCompile(`helpdesk\s+helpdesk@contoso.com\s+delegated\s+ok`)
		if strings.Contains(c.text, "-json") {
			ok = regexp.MustCompile(`"account": "helpdesk",[^}]*"state": "ok"`)
		}
		if code := finish(); code != 0 || !ok.MatchString(o.String()) {
			fail("exit %d, want 0 and helpdesk ok", code)
		}
	case "doctor":
		// Through the running service: every check of the documented
		// account passes against the fake.
		in.Close()
		ok := regexp.MustCompile(`0 failed, \d+ skipped \(checks run by the running daemon`)
		if strings.Contains(c.text, "-json") {
			ok = regexp.MustCompile(`(?s)^\{\s*"source": "daemon",\s*"ok": true,`)
		}
		if code := finish(); code != 0 || !ok.MatchString(o.String()) {
			fail("exit %d, want 0 and every check passing through the service", code)
		}
	case "check":
		in.Close()
		if code := finish(); code != 0 || !strings.Contains(o.String(), ": OK (") {
			fail("exit %d, want 0 and OK", code)
		}
	case "consent-url":
		in.Close()
		if code := finish(); code != 0 || !strings.Contains(o.String(), "/adminconsent?client_id="+docClientID) {
			fail("exit %d, want 0 and the admin-consent URL", code)
		}
	case "serve":
		in.Close()
		interrupt(regexp.MustCompile(`"proto":"admin"`))
		if code := finish(); code != 0 {
			fail("exit %d after SIGTERM, want 0", code)
		}
	case "demo":
		in.Close()
		interrupt(regexp.MustCompile(`Press Ctrl-C to stop`))
		if code := finish(); code != 0 {
			fail("exit %d after SIGTERM, want 0", code)
		}
	case "cert":
		in.Close()
		code := finish()
		m := regexp.MustCompile(`Wrote the private key to (\S+)`).FindStringSubmatch(o.String())
		if code != 0 || m == nil || !strings.Contains(o.String(), "Thumbprint (SHA-1, as Entra shows it): ") || !strings.Contains(o.String(), "Upload certificate") {
			fail("exit %d, want 0, the key written, the thumbprint and the upload step", code)
			return
		}
		key := m[1]
		if rest, ok := strings.CutPrefix(key, "/etc/oauthbridge/"); ok {
			key = filepath.Join(w.etc, rest) // the namespace's /etc/oauthbridge
		}
		if st, err := os.Stat(key); err != nil || st.Mode().Perm() != 0o600 {
			fail("the key %s: %v, want mode 0600", key, err)
		}
	case "version", "--version", "-version", "help", "-h", "--help":
		in.Close()
		if code := finish(); code != 0 || o.String() == "" {
			fail("exit %d, want 0 and output", code)
		}
	default:
		in.Close()
		finish()
		fail("the test does not know how to check 'oauthbridge %s'; add a case to docWorld.run", sub)
	}
}

// startDaemon starts the service in-process with the configuration at
// /etc/oauthbridge as the unit gives it: the credentials from their
// directory. The account is signed in if no documented login did it.
func (w *docWorld) startDaemon() {
	t := w.t
	cfg, err := config.LoadWith(w.cfg, config.Options{CredentialsDir: filepath.Join(w.etc, "credentials")})
	if err != nil {
		t.Fatalf("loading the documented configuration: %v", err)
	}
	d, err := daemon.New(cfg, daemon.Options{Logger: logging.Discard})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	if err := d.Start(ctx); err != nil {
		cancel()
		t.Fatal(err)
	}
	w.daemon = d
	t.Cleanup(func() {
		sctx, c2 := context.WithTimeout(context.Background(), 10*time.Second)
		defer c2()
		d.Shutdown(sctx)
		cancel()
	})
	if resp, err := http.Get("http://" + d.Addr("admin") + "/healthz"); err != nil {
		t.Fatalf("service not answering: %v", err)
	} else {
		resp.Body.Close()
	}
	for _, s := range d.Tokens().Status() {
		if s.State == "ok" {
			continue
		}
		dl, done, err := d.Tokens().StartDeviceLogin(ctx, s.Account)
		if err != nil {
			t.Fatal(err)
		}
		if err := w.fake.ApproveDevice(dl.UserCode, docDelegate); err != nil {
			t.Fatal(err)
		}
		if err := <-done; err != nil {
			t.Fatal(err)
		}
	}
}
