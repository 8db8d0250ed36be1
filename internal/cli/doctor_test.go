package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/oauthbridge/oauthbridge/internal/doctor"
)

// rewriteConfig writes a copy of the configuration at path with the
// attribute line re (e.g. state_dir) replaced by repl.
func rewriteConfig(t *testing.T, path string, re, repl string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	rx := regexp.MustCompile(re)
	if !rx.Match(b) {
		t.Fatalf("%s: no line matching %s", path, re)
	}
	out := filepath.Join(t.TempDir(), "config.hcl")
	if err := os.WriteFile(out, rx.ReplaceAll(b, []byte(repl)), 0o600); err != nil {
		t.Fatal(err)
	}
	return out
}

// TestDoctorThroughDaemon: with the daemon running, doctor runs its checks
// inside it (POST /api/doctor) with the daemon's tokens: the CLI makes no
// token request, needs no token store (its configuration copy points at an
// empty state_dir, where a local run would find nobody signed in), and
// exits 0 only when every check passes.
func TestDoctorThroughDaemon(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	var logs bytes.Buffer
	info, stop, err := StartDemo(ctx, false, Env{Stdin: strings.NewReader(""), Stdout: &logs, Stderr: &logs})
	if err != nil {
		t.Fatal(err)
	}
	defer stop()
	cfg := rewriteConfig(t, info.ConfigPath, `(?m)^state_dir = .*$`, `state_dir = "`+filepath.Join(t.TempDir(), "empty")+`"`)

	// The daemon fetches the Graph token of "notices" (send_via = graph)
	// by itself after the start; wait for it, so that every token request
	// counted below would be the doctor's.
	waitGraphToken(t, info, "notices")
	before := info.Fake.TokenRequests()
	code, o, e := run(t, "", "doctor", "helpdesk", "-config", cfg)
	if code != ExitOK || !strings.Contains(o, "checks run by the running daemon") || strings.Contains(e, "No daemon answers") {
		t.Fatalf("doctor through the daemon: exit %d\nstdout:\n%s\nstderr:\n%s", code, o, e)
	}
	for _, id := range []string{"config", "reach", "token-outlook", "imap", "pop3", "smtp", "send-as", "headroom"} {
		if !regexp.MustCompile(`(?m)^pass\s+` + regexp.QuoteMeta(id) + `\s`).MatchString(o) {
			t.Errorf("no passing %s line:\n%s", id, o)
		}
	}
	if n := info.Fake.TokenRequests() - before; n != 0 {
		t.Errorf("doctor through the daemon made %d token request(s); the daemon's cached token serves it, want 0", n)
	}

	// -json: every account, parsed.
	code, o, e = run(t, "", "doctor", "-json", "-config", cfg)
	var rep doctor.Report
	if err := json.Unmarshal([]byte(o), &rep); err != nil {
		t.Fatalf("doctor -json does not parse: %v\n%s\nstderr: %s", err, o, e)
	}
	if code != ExitOK || !rep.OK || rep.Source != "daemon" || len(rep.Accounts) != 3 { // the demo: helpdesk, notices and the Google account
		t.Errorf("doctor -json: exit %d, ok %v, source %q, %d account(s)\n%s", code, rep.OK, rep.Source, len(rep.Accounts), o)
	}
	for _, ar := range rep.Accounts {
		if ar.Account == "notices" {
			ids := map[string]doctor.Status{}
			for _, c := range ar.Checks {
				ids[c.ID] = c.Status
			}
			if ids["token-graph"] != doctor.Pass || ids["graph"] != doctor.Pass || ids["smtp"] != doctor.Skip {
				t.Errorf("notices (send_via = graph): %v", ids)
			}
		}
	}

	// A failure found by the daemon: exit 1 with the fix.
	info.Fake.SetIMAPEnabled(info.Mailbox, false)
	before = info.Fake.TokenRequests()
	code, o, e = run(t, "", "doctor", "helpdesk", "-config", cfg)
	if code != ExitError || !strings.Contains(o, "Set-CASMailbox -Identity "+info.Mailbox+" -ImapEnabled $true") || !strings.Contains(e, "1 check(s) failed") {
		t.Errorf("IMAP disabled: exit %d\nstdout:\n%s\nstderr:\n%s", code, o, e)
	}
	if n := info.Fake.TokenRequests() - before; n != 0 {
		t.Errorf("doctor made %d token request(s) after an IMAP refusal, want 0", n)
	}

	// Usage errors: exit 2.
	if code, _, e := run(t, "", "doctor", "nosuch", "-config", cfg); code != ExitConfig || !strings.Contains(e, `no account "nosuch"`) {
		t.Errorf("unknown account: exit %d, stderr %q", code, e)
	}
	if code, _, _ := run(t, "", "doctor", "a", "b", "-config", cfg); code != ExitConfig {
		t.Errorf("two accounts: exit %d, want %d", code, ExitConfig)
	}
}

// TestDoctorWithoutDaemon: no daemon answers, so doctor reads the token
// store itself; a state_dir nobody signed in to gives the login command and
// creates nothing.
func TestDoctorWithoutDaemon(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	var logs bytes.Buffer
	info, stop, err := StartDemo(ctx, false, Env{Stdin: strings.NewReader(""), Stdout: &logs, Stderr: &logs})
	if err != nil {
		t.Fatal(err)
	}
	defer stop()
	// The same store, but an admin address nothing listens on.
	cfg := rewriteConfig(t, info.ConfigPath, `(?m)^admin \{ listen = .*$`, `admin { listen = "`+unusedAddr(t)+`" }`)
	code, o, e := run(t, "", "doctor", "helpdesk", "-config", cfg)
	if code != ExitOK || !strings.Contains(e, "No daemon answers") || !strings.Contains(o, "checks run by this process") {
		t.Fatalf("doctor without daemon: exit %d\nstdout:\n%s\nstderr:\n%s", code, o, e)
	}

	empty := filepath.Join(t.TempDir(), "empty")
	cfg = rewriteConfig(t, cfg, `(?m)^state_dir = .*$`, `state_dir = "`+empty+`"`)
	code, o, e = run(t, "", "doctor", "helpdesk", "-config", cfg)
	if code != ExitError || !strings.Contains(o, "oauthbridge login helpdesk") || !regexp.MustCompile(`(?m)^skip\s+imap\s`).MatchString(o) {
		t.Errorf("doctor with nobody signed in: exit %d\nstdout:\n%s\nstderr:\n%s", code, o, e)
	}
	if _, err := os.Stat(empty); err == nil {
		t.Error("doctor created state_dir")
	}
}

// waitGraphToken waits until the daemon holds a Graph token for account.
func waitGraphToken(t *testing.T, info *DemoInfo, account string) {
	t.Helper()
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		for _, s := range info.Daemon.Tokens().Status() {
			if s.Account == account && !s.GraphExpiry.IsZero() {
				return
			}
		}
	}
	t.Fatalf("the daemon never fetched the Graph token of %s", account)
}
