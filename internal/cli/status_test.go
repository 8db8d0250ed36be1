package cli

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// cliConfig writes a configuration for the command line tests: one
// delegated account helpdesk whose provider's secret is the credential
// client-secret, its admin listener at admin.
func cliConfig(t *testing.T, admin string) (path, stateDir string) {
	t.Helper()
	dir := t.TempDir()
	stateDir = filepath.Join(dir, "state")
	path = filepath.Join(dir, "config.hcl")
	src := fmt.Sprintf(`state_dir = %q
admin { listen = %q }
provider "contoso" {
  tenant        = "contoso.example"
  client_id     = "c"
  client_secret = credential("client-secret")
}
account "helpdesk" {
  provider = "contoso"
  mailbox  = "helpdesk@contoso.example"
}
`, stateDir, admin)
	if err := os.WriteFile(path, []byte(src), 0o600); err != nil {
		t.Fatal(err)
	}
	return path, stateDir
}

// unusedAddr is a loopback address nothing listens on.
func unusedAddr(t *testing.T) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return addr
}

// fakeAdminAPI serves h on a loopback listener, as a daemon's admin API.
func fakeAdminAPI(t *testing.T, h http.HandlerFunc) string {
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	return strings.TrimPrefix(srv.URL, "http://")
}

func TestStatusExitCodes(t *testing.T) {
	noCreds := t.TempDir()

	// No daemon: the store's view (nobody signed in: needs_login), exit 3,
	// no secret needed and nothing created.
	cfg, stateDir := cliConfig(t, unusedAddr(t))
	code, o, e := run(t, "", "status", "-config", cfg, "-credentials", noCreds)
	if code != ExitUnavailable || !strings.Contains(o, "needs_login") || !strings.Contains(o, "oauthbridge login helpdesk") || !strings.Contains(e, "no daemon answers") {
		t.Errorf("status without daemon: code %d\nstdout: %s\nstderr: %s", code, o, e)
	}
	if _, err := os.Stat(stateDir); err == nil {
		t.Error("status without a daemon created state_dir")
	}

	// A daemon reporting an account that needs a login: exit 1, naming it.
	rows := `[{"account":"helpdesk","mailbox":"helpdesk@contoso.example","flow":"delegated","state":"needs_login","last_error":"nobody has signed in for this account yet","fix":"run 'oauthbridge login helpdesk'"},
	          {"account":"scanner","mailbox":"scan@contoso.example","flow":"app","state":"ok"}]`
	var mu sync.Mutex
	api := fakeAdminAPI(t, func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		defer mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		fmt.Fprint(w, rows)
	})
	cfg, _ = cliConfig(t, api)
	code, o, e = run(t, "", "status", "-config", cfg, "-credentials", noCreds)
	if code != ExitStatusNotOK || !strings.Contains(e, "1 of 2 account(s) not ok: helpdesk is needs_login") || !strings.Contains(o, "daemon at") {
		t.Errorf("status with needs_login: code %d\nstdout: %s\nstderr: %s", code, o, e)
	}
	code, o, _ = run(t, "", "status", "-json", "-config", cfg, "-credentials", noCreds)
	if code != ExitStatusNotOK || !strings.Contains(o, `"state": "needs_login"`) {
		t.Errorf("status -json: code %d, stdout %s", code, o)
	}
	mu.Lock()
	rows = strings.ReplaceAll(rows, "needs_login", "ok")
	mu.Unlock()
	if code, o, e := run(t, "", "status", "-config", cfg, "-credentials", noCreds); code != ExitOK {
		t.Errorf("status all ok: code %d\nstdout: %s\nstderr: %s", code, o, e)
	}
	// client_secret_expires: in the JSON and under the table, with the
	// fix once it is within the warning.
	soon := time.Now().Add(10 * 24 * time.Hour).UTC().Format("2006-01-02")
	mu.Lock()
	rows = strings.ReplaceAll(rows, `"account":"helpdesk",`, `"account":"helpdesk","client_secret_expires":"`+soon+`T00:00:00Z",`)
	mu.Unlock()
	code, o, _ = run(t, "", "status", "-config", cfg, "-credentials", noCreds)
	if code != ExitOK || !strings.Contains(o, "Client secret of provider contoso (accounts helpdesk) expires "+soon+", in 9 days. Fix: in Entra") {
		t.Errorf("status with an expiring secret: code %d\nstdout: %s", code, o)
	}
	code, o, _ = run(t, "", "status", "-json", "-config", cfg, "-credentials", noCreds)
	if code != ExitOK || !strings.Contains(o, `"client_secret_expires": "`+soon+`T00:00:00Z"`) {
		t.Errorf("status -json with client_secret_expires: %s", o)
	}

	// An admin API that fails: exit 3 and a sentence, not the body.
	broken := fakeAdminAPI(t, func(w http.ResponseWriter, r *http.Request) {
		http.Error(w, "<html>proxy error</html>", http.StatusBadGateway)
	})
	cfg, _ = cliConfig(t, broken)
	code, _, e = run(t, "", "status", "-config", cfg, "-credentials", noCreds)
	if code != ExitUnavailable || !strings.Contains(e, "502 Bad Gateway") {
		t.Errorf("status with a failing API: code %d, stderr %q", code, e)
	}
}

// TestLoginAPIErrorReadable: a daemon that cannot reach Microsoft answers
// the device-login POST with a JSON error; login prints its message.
func TestLoginAPIErrorReadable(t *testing.T) {
	api := fakeAdminAPI(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusBadRequest)
		fmt.Fprint(w, `{"error": "tokens: account \"helpdesk\": device code request: dial tcp 20.190.1.1:443: connect: network is unreachable"}`)
	})
	cfg, _ := cliConfig(t, api)
	code, o, e := run(t, "", "login", "helpdesk", "-config", cfg, "-credentials", t.TempDir())
	if code != ExitError || strings.ContainsAny(e, "{}") || !strings.Contains(e, "could not start the sign-in") || !strings.Contains(e, "network is unreachable") {
		t.Errorf("login with an API error: code %d\nstdout: %s\nstderr: %s", code, o, e)
	}
}

// TestAdminCommandsNeedNoSecret: with the daemon running, status and
// login need no client secret; check (which validates what serve reads)
// does, and says where it looked.
func TestAdminCommandsNeedNoSecret(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	var e1 lockedBuffer
	info, stop, err := StartDemo(ctx, false, Env{Stdin: strings.NewReader(""), Stdout: &e1, Stderr: &e1})
	if err != nil {
		t.Fatal(err)
	}
	defer stop()
	src, err := os.ReadFile(info.ConfigPath)
	if err != nil {
		t.Fatal(err)
	}
	withSecret := strings.Replace(string(src), `client_id   =`, `client_secret = credential("client-secret")
  client_id   =`, 1)
	cfg := filepath.Join(t.TempDir(), "config.hcl")
	os.WriteFile(cfg, []byte(withSecret), 0o600)
	noCreds := t.TempDir()
	t.Setenv("CREDENTIALS_DIRECTORY", "")
	os.Unsetenv("CREDENTIALS_DIRECTORY")

	if code, o, e := run(t, "", "status", "-config", cfg, "-credentials", noCreds); code != ExitOK || !strings.Contains(o, "daemon at") {
		t.Errorf("status through the daemon without the secret: code %d\nstdout: %s\nstderr: %s", code, o, e)
	}
	code, _, e := run(t, "", "check", "-config", cfg, "-credentials", noCreds)
	if code != ExitConfig || !strings.Contains(e, filepath.Join(noCreds, "client-secret")) || !strings.Contains(e, "LoadCredential=client-secret:/etc/oauthbridge/credentials/client-secret") {
		t.Errorf("check without the secret: code %d, stderr %s", code, e)
	}
	os.WriteFile(filepath.Join(noCreds, "client-secret"), []byte("whatever\n"), 0o600)
	if code, o, e := run(t, "", "check", "-config", cfg, "-credentials", noCreds); code != ExitOK {
		t.Errorf("check with -credentials: code %d\nstdout: %s\nstderr: %s", code, o, e)
	}
}

// A Microsoft Graph token problem (the account itself ok) is in the
// table, with its fix naming the sign-in to run, and makes status exit 1:
// the account's mail through Graph fails.
func TestStatusShowsGraphError(t *testing.T) {
	rows := `[{"account":"helpdesk","mailbox":"helpdesk@contoso.example","flow":"delegated","state":"ok","send_via":"graph",
	  "graph_error":"no consent for the Microsoft Graph permissions Mail.Send, Mail.ReadWrite that send_via = \"graph\" needs",
	  "graph_fix":"grant consent, then run 'oauthbridge login helpdesk' so the sign-in covers them"}]`
	api := fakeAdminAPI(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		fmt.Fprint(w, rows)
	})
	cfg, _ := cliConfig(t, api)
	code, o, e := run(t, "", "status", "-config", cfg, "-credentials", t.TempDir())
	if code != ExitStatusNotOK || !strings.Contains(e, "1 of 1 account(s) not ok: helpdesk has a Microsoft Graph token error") || !strings.Contains(o, `Microsoft Graph: no consent for the Microsoft Graph permissions Mail.Send, Mail.ReadWrite that send_via = "graph" needs -> grant consent, then run 'oauthbridge login helpdesk'`) {
		t.Errorf("status with a Graph error: code %d\nstdout: %s\nstderr: %s", code, o, e)
	}
}
