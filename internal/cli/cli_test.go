package cli

import (
	"bytes"
	"context"
	"flag"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"golang.org/x/crypto/bcrypt"
)

func run(t *testing.T, stdin string, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	var o, e bytes.Buffer
	code = Run(context.Background(), args, Env{Stdin: strings.NewReader(stdin), Stdout: &o, Stderr: &e})
	return code, o.String(), e.String()
}

func TestUsageAndExitCodes(t *testing.T) {
	if code, o, e := run(t, ""); code != ExitConfig || !strings.Contains(e, "Commands:") || o != "" {
		t.Errorf("no args: code %d, stdout %q, stderr %q; want usage on stderr, exit 2", code, o, e)
	}
	if code, _, e := run(t, "", "frobnicate"); code != ExitConfig || !strings.Contains(e, `unknown command "frobnicate"`) {
		t.Errorf("unknown command: code %d, stderr %q", code, e)
	}
	if code, _, e := run(t, "", "-config", "x.hcl", "status"); code != ExitConfig || !strings.Contains(e, "flags go after the command") {
		t.Errorf("flag before the command: code %d, stderr %q", code, e)
	}
	if code, _, e := run(t, "", "check", "-nope"); code != ExitConfig || !strings.Contains(e, "-nope") || !strings.Contains(e, "oauthbridge check -h") {
		t.Errorf("bad flag: code %d, stderr %q", code, e)
	}
	if code, _, e := run(t, "", "login", "-config", "../../config.hcl.example"); code != ExitConfig || !strings.Contains(e, "exactly one ACCOUNT") {
		t.Errorf("login without account: code %d, stderr %q", code, e)
	}
	if code, _, e := run(t, "", "login", "-config", "../../config.hcl.example", "nosuch"); code != ExitConfig || !strings.Contains(e, `no account "nosuch"`) || !strings.Contains(e, "helpdesk") {
		t.Errorf("login unknown account: code %d, stderr %q", code, e)
	}
	if code, _, e := run(t, "", "check", "extra", "-config", "../../config.hcl.example"); code != ExitConfig || !strings.Contains(e, "takes no arguments") {
		t.Errorf("check with an argument: code %d, stderr %q", code, e)
	}
}

// TestHelp: every form of help goes to standard output with exit 0 and is
// complete: every command, its flags, the exit codes, the admin password.
func TestHelp(t *testing.T) {
	for _, args := range [][]string{{"-h"}, {"--help"}, {"-help"}, {"help"}} {
		code, o, e := run(t, "", args...)
		if code != ExitOK || e != "" {
			t.Errorf("%v: code %d, stderr %q", args, code, e)
		}
		for _, c := range commands {
			if !strings.Contains(o, "\n  "+c.name+" ") {
				t.Errorf("%v: help lacks command %s", args, c.name)
			}
		}
		for _, want := range []string{"Exit codes:", "OAUTHBRIDGE_ADMIN_PASSWORD", "-credentials", "-config", "-browser", "-json", "-cost", "/etc/oauthbridge/credentials", "LoadCredential="} {
			if !strings.Contains(o, want) {
				t.Errorf("%v: help lacks %q", args, want)
			}
		}
	}
	for cmd, args := range map[string][]string{"check": {"check", "-h"}, "login": {"login", "--help"}, "status": {"help", "status"}, "consent-url": {"consent-url", "contoso", "-h"}} {
		code, o, e := run(t, "", args...)
		if code != ExitOK || e != "" || !strings.HasPrefix(o, "Usage: oauthbridge "+cmd+" ") || !strings.Contains(o, "Exit codes") {
			t.Errorf("%v: code %d, stdout %q, stderr %q", args, code, o, e)
		}
	}
	if _, o, _ := run(t, "", "status", "-h"); !strings.Contains(o, "3  no daemon answers") || !strings.Contains(o, "1  some account is not ok") {
		t.Errorf("status -h lacks its exit codes:\n%s", o)
	}
}

func TestVersion(t *testing.T) {
	_, want, _ := run(t, "", "version")
	if !strings.HasPrefix(want, "oauthbridge ") {
		t.Fatalf("version = %q", want)
	}
	for _, f := range []string{"--version", "-version"} {
		if code, o, e := run(t, "", f); code != ExitOK || o != want || e != "" {
			t.Errorf("%s: code %d, stdout %q (want %q), stderr %q", f, code, o, want, e)
		}
	}
	old := buildVersion
	defer func() { buildVersion = old }()
	buildVersion = "1.2.3-test"
	if _, o, _ := run(t, "", "--version"); o != "oauthbridge 1.2.3-test\n" {
		t.Errorf("stamped --version = %q", o)
	}
}

func TestParseInterleaved(t *testing.T) {
	cases := []struct {
		args      []string
		config    string
		local     bool
		positions []string
	}{
		{[]string{"helpdesk", "-config", "/x.hcl"}, "/x.hcl", false, []string{"helpdesk"}},
		{[]string{"-config", "/x.hcl", "helpdesk"}, "/x.hcl", false, []string{"helpdesk"}},
		{[]string{"--config=/x.hcl", "helpdesk", "-local"}, "/x.hcl", true, []string{"helpdesk"}},
		{[]string{"a", "-local", "b", "-config", "/y"}, "/y", true, []string{"a", "b"}},
		{[]string{"a", "--", "-local", "b"}, "d", false, []string{"a", "-local", "b"}},
		{[]string{"-", "-local"}, "d", true, []string{"-"}},
		{nil, "d", false, nil},
	}
	for _, tc := range cases {
		fs := flag.NewFlagSet("t", flag.ContinueOnError)
		fs.SetOutput(io.Discard)
		cfg := fs.String("config", "d", "")
		local := fs.Bool("local", false, "")
		pos, err := parseInterleaved(fs, tc.args)
		if err != nil || *cfg != tc.config || *local != tc.local || !slices.Equal(pos, tc.positions) {
			t.Errorf("parseInterleaved(%q) = %q, %v; config %q local %v", tc.args, pos, err, *cfg, *local)
		}
	}
	fs := flag.NewFlagSet("t", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	fs.String("config", "d", "")
	if _, err := parseInterleaved(fs, []string{"a", "-config"}); err == nil {
		t.Error("a flag without its value was accepted")
	}
}

// TestFlagsAfterArguments runs the README's spellings: flags after the
// positional argument.
func TestFlagsAfterArguments(t *testing.T) {
	code, o, e := run(t, "", "consent-url", "contoso", "-config", "../../config.hcl.example")
	if code != ExitOK || !strings.Contains(o, "adminconsent") {
		t.Errorf("consent-url contoso -config: code %d, stdout %q, stderr %q", code, o, e)
	}
	code, _, e = run(t, "", "consent-url", "nosuch", "-config", "../../config.hcl.example")
	if code != ExitConfig || !strings.Contains(e, `no provider "nosuch"`) || !strings.Contains(e, "contoso") {
		t.Errorf("consent-url nosuch: code %d, stderr %q", code, e)
	}
}

func TestCheck(t *testing.T) {
	code, o, e := run(t, "", "check", "-config", "../../config.hcl.example")
	if code != ExitOK || !strings.Contains(o, "OK") || !strings.Contains(o, "helpdesk") {
		t.Fatalf("check example: code %d out %q err %q", code, o, e)
	}
	bad := filepath.Join(t.TempDir(), "bad.hcl")
	os.WriteFile(bad, []byte("state_dir = \"/tmp\"\n\naccount \"a\" {\n  provider = \"missing\"\n  mailbox  = \"a@b.c\"\n}\n"), 0o600)
	code, _, e = run(t, "", "check", "-config", bad)
	if code != ExitConfig {
		t.Errorf("check bad: code %d, want %d", code, ExitConfig)
	}
	for _, want := range []string{"Undefined provider", "line 4", `provider = "missing"`, "configuration is invalid"} {
		if !strings.Contains(e, want) {
			t.Errorf("check bad: stderr lacks %q:\n%s", want, e)
		}
	}
	code, _, e = run(t, "", "check", "-config", filepath.Join(t.TempDir(), "absent.hcl"))
	if code == ExitOK || !strings.Contains(e, "no such file") {
		t.Errorf("check absent: code %d stderr %q", code, e)
	}
}

func TestHashPassword(t *testing.T) {
	code, o, e := run(t, "s3cret \"quoted\"\n", "hash-password", "-cost", "10")
	if code != ExitOK {
		t.Fatalf("hash-password: code %d, stderr %q", code, e)
	}
	h := strings.TrimSpace(o)
	if err := bcrypt.CompareHashAndPassword([]byte(h), []byte(`s3cret "quoted"`)); err != nil {
		t.Errorf("hash %q does not verify: %v", h, err)
	}
	if strings.Contains(o+e, "s3cret") {
		t.Error("the password was echoed")
	}
	if code, _, e := run(t, "\n", "hash-password"); code == ExitOK || !strings.Contains(e, "empty") {
		t.Errorf("empty password: code %d stderr %q", code, e)
	}
	if code, _, _ := run(t, "x\n", "hash-password", "-cost", "40"); code != ExitConfig {
		t.Errorf("bad cost: code %d", code)
	}
}
