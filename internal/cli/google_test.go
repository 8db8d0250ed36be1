package cli

import (
	"context"
	"fmt"
	"html"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/oauthbridge/oauthbridge/internal/fakems"
)

// `oauthbridge login` for a Google account: the browser flow on the
// loopback redirect (no daemon: the command serves /oauth/callback
// itself), and -device refused with the alternative named.
func TestGoogleLogin(t *testing.T) {
	f, err := fakems.Start(fakems.Options{Google: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	f.AddApp("gclient.apps.googleusercontent.com", "GOCSPX-x")
	f.AddUser("alice@example.org")
	dir := t.TempDir()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	admin := ln.Addr().String()
	ln.Close()
	cfgPath := filepath.Join(dir, "config.hcl")
	os.MkdirAll(filepath.Join(dir, "state"), 0o700)
	src := fmt.Sprintf(`state_dir = %q
admin { listen = %q }
provider "workspace" {
  type          = "google"
  client_id     = "gclient.apps.googleusercontent.com"
  client_secret = "GOCSPX-x"
  authority     = %q
}
account "gmail" {
  provider = "workspace"
  mailbox  = "alice@example.org"
}
`, filepath.Join(dir, "state"), admin, f.AuthorityURL)
	if err := os.WriteFile(cfgPath, []byte(src), 0o600); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	var out, errb lockedBuffer
	if code := Run(ctx, []string{"login", "-config", cfgPath, "-device", "gmail"}, Env{Stdin: strings.NewReader(""), Stdout: &out, Stderr: &errb}); code != ExitConfig ||
		!strings.Contains(errb.String(), "device flow does not cover Gmail's scope") || !strings.Contains(errb.String(), "oauthbridge login -browser gmail") {
		t.Fatalf("login -device: exit %d\n%s%s", code, out.String(), errb.String())
	}
	if n := f.TokenRequests(); n != 0 {
		t.Fatalf("%d token requests for a refused device login", n)
	}

	out, errb = lockedBuffer{}, lockedBuffer{}
	if code := Run(ctx, []string{"consent-url", "-config", cfgPath, "workspace"}, Env{Stdin: strings.NewReader(""), Stdout: &out, Stderr: &errb}); code != ExitOK ||
		!strings.Contains(out.String(), "Domain-wide delegation") || strings.Contains(out.String(), "adminconsent") {
		t.Fatalf("consent-url for a Google provider: exit %d\n%s%s", code, out.String(), errb.String())
	}

	// Without -browser a Google account still gets the browser flow.
	out, errb = lockedBuffer{}, lockedBuffer{}
	done := make(chan int, 1)
	go func() {
		done <- Run(ctx, []string{"login", "-config", cfgPath, "gmail"}, Env{Stdin: strings.NewReader(""), Stdout: &out, Stderr: &errb})
	}()
	urlRE := regexp.MustCompile(`(http://\S+/o/oauth2/v2/auth\?\S+)`)
	var authURL string
	for deadline := time.Now().Add(20 * time.Second); authURL == "" && time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		if m := urlRE.FindStringSubmatch(out.String()); m != nil {
			authURL = m[1]
		}
	}
	if authURL == "" {
		t.Fatalf("login printed no Google sign-in URL:\n%s%s", out.String(), errb.String())
	}
	u, _ := url.Parse(authURL)
	if q := u.Query(); q.Get("access_type") != "offline" || q.Get("prompt") != "consent" || q.Get("redirect_uri") != "http://"+admin+"/oauth/callback" {
		t.Fatalf("sign-in URL %s", authURL)
	}
	// The person signs in; the browser follows the redirect to the
	// command's loopback callback.
	hc := &http.Client{Timeout: 10 * time.Second}
	resp, err := hc.Get(authURL)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	form := url.Values{"login": {"alice@example.org"}, "action": {"signin"}}
	for _, m := range regexp.MustCompile(`<input type="hidden" name="([^"]+)" value="([^"]*)">`).FindAllStringSubmatch(string(body), -1) {
		form.Set(html.UnescapeString(m[1]), html.UnescapeString(m[2]))
	}
	u.RawQuery = ""
	resp, err = hc.PostForm(u.String(), form)
	if err != nil {
		t.Fatal(err)
	}
	body, _ = io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || !strings.Contains(string(body), "account gmail is signed in") {
		t.Fatalf("callback answered %s: %s", resp.Status, body)
	}
	select {
	case code := <-done:
		if code != ExitOK || !strings.Contains(out.String(), "Signed in as alice@example.org") {
			t.Fatalf("login: exit %d\n%s%s", code, out.String(), errb.String())
		}
	case <-ctx.Done():
		t.Fatal("login did not finish")
	}
}
