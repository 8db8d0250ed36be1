package cli

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
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
	if code, _, e := run(t, ""); code != ExitConfig || !strings.Contains(e, "Commands:") {
		t.Errorf("no args: code %d, stderr %q", code, e)
	}
	if code, _, e := run(t, "", "frobnicate"); code != ExitConfig || !strings.Contains(e, `unknown command "frobnicate"`) {
		t.Errorf("unknown command: code %d, stderr %q", code, e)
	}
	if code, _, _ := run(t, "", "check", "-h"); code != ExitOK {
		t.Errorf("check -h: code %d", code)
	}
	if code, _, e := run(t, "", "check", "-nope"); code != ExitConfig || !strings.Contains(e, "-nope") {
		t.Errorf("bad flag: code %d, stderr %q", code, e)
	}
	if code, o, _ := run(t, "", "version"); code != ExitOK || !strings.HasPrefix(o, "oauthbridge ") {
		t.Errorf("version: code %d, out %q", code, o)
	}
	if code, _, e := run(t, "", "login", "-config", "../../config.hcl.example"); code != ExitConfig || !strings.Contains(e, "exactly one ACCOUNT") {
		t.Errorf("login without account: code %d, stderr %q", code, e)
	}
	if code, _, e := run(t, "", "login", "-config", "../../config.hcl.example", "nosuch"); code != ExitConfig || !strings.Contains(e, `no account "nosuch"`) || !strings.Contains(e, "helpdesk") {
		t.Errorf("login unknown account: code %d, stderr %q", code, e)
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
