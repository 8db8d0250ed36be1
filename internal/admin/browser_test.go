//go:build browser

// The browser test drives Debian's headless Chromium through the real
// sign-in: status page -> Connect -> the fake identity platform's /authorize
// page -> Sign in -> /oauth/callback -> status page with the account "ok".
// Run it with: go test -tags browser -race ./internal/admin/
// (apt-get install -y chromium first).
package admin

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/oauthbridge/oauthbridge/config"
	"github.com/oauthbridge/oauthbridge/internal/fakems"
	"github.com/oauthbridge/oauthbridge/tokens"
)

// chromiumPath is Debian's Chromium; CHROMIUM overrides it.
const chromiumPath = "/usr/bin/chromium"

// browserTimeout bounds the whole browser run.
const browserTimeout = 60 * time.Second

func TestBrowserConnect(t *testing.T) {
	exe := chromiumPath
	if p := os.Getenv("CHROMIUM"); p != "" {
		exe = p
	}
	if _, err := os.Stat(exe); err != nil {
		t.Fatalf("chromium not found at %s (apt-get install -y chromium, or set CHROMIUM): %v", exe, err)
	}

	const (
		clientID = "11111111-2222-3333-4444-555555555555"
		secret   = "fake-client-secret"
		upn      = "alice@contoso.com"
	)
	f, err := fakems.Start(fakems.Options{})
	if err != nil {
		t.Fatalf("fakems.Start() = %v", err)
	}
	t.Cleanup(func() { f.Close() })
	f.AddApp(clientID, secret)
	f.AddUser(upn)

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("net.Listen() = %v", err)
	}
	addr := ln.Addr().String()
	src := fmt.Sprintf(`
state_dir = %q
admin {
  listen = %q
}
provider "m365" {
  tenant        = "contoso.com"
  client_id     = %q
  client_secret = %q
  authority     = %q
}
account "helpdesk" {
  provider = "m365"
  mailbox  = %q
}
`, t.TempDir(), addr, clientID, secret, f.AuthorityURL, upn)
	cfg, err := config.Parse("browser_test.hcl", []byte(src))
	if err != nil {
		t.Fatalf("config.Parse() = %v", err)
	}
	mgr, err := tokens.NewManager(cfg, tokens.Options{})
	if err != nil {
		t.Fatalf("tokens.NewManager() = %v", err)
	}
	t.Cleanup(func() { mgr.Close() })

	srv := &http.Server{
		Handler: New(Options{
			Config:  func() *config.Config { return cfg },
			Tokens:  mgr,
			Version: "browser-test",
			Logger:  testLogger(t),
		}),
		ReadHeaderTimeout: 10 * time.Second,
	}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })

	opts := []chromedp.ExecAllocatorOption{
		chromedp.ExecPath(exe),
		chromedp.Headless,
		chromedp.NoSandbox,
		chromedp.DisableGPU,
		chromedp.NoFirstRun,
		chromedp.NoDefaultBrowserCheck,
		chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true),
		chromedp.Flag("disable-dev-shm-usage", true),
		chromedp.UserDataDir(t.TempDir()),
	}
	ctx, cancel := context.WithTimeout(context.Background(), browserTimeout)
	defer cancel()
	allocCtx, cancelAlloc := chromedp.NewExecAllocator(ctx, opts...)
	defer cancelAlloc()
	bctx, cancelBrowser := chromedp.NewContext(allocCtx, chromedp.WithLogf(t.Logf))
	defer cancelBrowser()

	page := "http://" + addr + "/"
	text := func(css string) string {
		t.Helper()
		v, err := chromedp.Run(bctx, chromedp.Text(chromedp.CSS(css)))
		if err != nil {
			t.Fatalf("Text(%s): %v", css, err)
		}
		return v
	}
	step := func(what string, actions ...chromedp.Action[chromedp.Void]) {
		t.Helper()
		if err := chromedp.Do(bctx, actions...); err != nil {
			loc, _ := chromedp.Run(bctx, chromedp.Location())
			t.Fatalf("%s: %v (browser at %s)", what, err, loc)
		}
	}

	step("load the status page", chromedp.Navigate(page), chromedp.WaitVisible(chromedp.ID("connect-helpdesk")))
	before := text("#acct-helpdesk .state")
	button := text("#connect-helpdesk")
	step("click Connect", chromedp.Click(chromedp.ID("connect-helpdesk")), chromedp.WaitVisible(chromedp.ID("signin")))
	authorizeURL, err := chromedp.Run(bctx, chromedp.Location())
	if err != nil {
		t.Fatalf("Location: %v", err)
	}
	step("click Sign in", chromedp.Click(chromedp.ID("signin")), chromedp.WaitVisible(chromedp.ID("flash")))
	flashText := text("#flash")
	after := text("#acct-helpdesk .state")
	finalURL, err := chromedp.Run(bctx, chromedp.Location())
	if err != nil {
		t.Fatalf("Location: %v", err)
	}

	if before != "unknown" && before != "needs_login" {
		t.Errorf("state before sign-in = %q, want unknown or needs_login", before)
	}
	if button != "Connect" {
		t.Errorf("button before sign-in = %q, want Connect", button)
	}
	if !strings.HasPrefix(authorizeURL, f.AuthorityURL) || !strings.Contains(authorizeURL, "/authorize") {
		t.Errorf("Connect went to %q, want the fake's /authorize under %s", authorizeURL, f.AuthorityURL)
	}
	if !strings.HasPrefix(finalURL, page) || !strings.Contains(finalURL, "result=ok") {
		t.Errorf("landed on %q, want %s?result=ok...", finalURL, page)
	}
	if !strings.Contains(flashText, "helpdesk") || !strings.Contains(flashText, "connected") {
		t.Errorf("flash = %q, want the account connected", flashText)
	}
	if after != "ok" {
		t.Errorf("state after sign-in = %q, want ok", after)
	}
	for _, s := range mgr.Status() {
		if s.Account == "helpdesk" && s.State != tokens.StateOK {
			t.Errorf("manager state = %q, want ok", s.State)
		}
	}
}
