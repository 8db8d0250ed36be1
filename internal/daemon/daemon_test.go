package daemon

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/emersion/go-imap/v2/imapclient"
	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"
	"golang.org/x/crypto/bcrypt"

	"github.com/oauthbridge/oauthbridge/config"
	"github.com/oauthbridge/oauthbridge/internal/fakems"
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

type env struct {
	f       *fakems.Fake
	dir     string
	caFile  string
	secret  string
	logs    *syncBuffer
	log     *slog.Logger
	cfgPath string
}

func newEnv(t *testing.T) *env {
	t.Helper()
	f, err := fakems.Start(fakems.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	e := &env{f: f, dir: t.TempDir(), secret: "client-secret-VALUE-123", logs: &syncBuffer{}}
	e.caFile = filepath.Join(e.dir, "ca.pem")
	if err := f.WriteCAFile(e.caFile); err != nil {
		t.Fatal(err)
	}
	f.AddApp("app-id", e.secret)
	f.AddUser("alice@contoso.com")
	f.AddMailbox("helpdesk@contoso.com", "alice@contoso.com")
	f.Deliver("helpdesk@contoso.com", []byte("Subject: one\r\n\r\nbody\r\n"))
	e.log = slog.New(slog.NewJSONHandler(e.logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	e.cfgPath = filepath.Join(e.dir, "config.hcl")
	os.MkdirAll(filepath.Join(e.dir, "state"), 0o700)
	return e
}

// users maps local user -> password; all map to account "helpdesk".
func (e *env) writeConfig(t *testing.T, users map[string]string, extra string) {
	t.Helper()
	src := fmt.Sprintf(`state_dir = %q
imap { listen = ["127.0.0.1:0"] }
pop3 { listen = ["127.0.0.1:0"] }
smtp { listen = ["127.0.0.1:0"] }
admin { listen = "127.0.0.1:0" }
provider "fake" {
  tenant        = "contoso.com"
  client_id     = "app-id"
  client_secret = %q
  authority     = %q
  imap_server   = %q
  pop3_server   = %q
  smtp_server   = %q
  ca_file       = %q
}
account "helpdesk" {
  provider = "fake"
  mailbox  = "helpdesk@contoso.com"
  delegate = "alice@contoso.com"
}
%s
`, filepath.Join(e.dir, "state"), e.secret, e.f.AuthorityURL, e.f.IMAPAddr, e.f.POP3Addr, e.f.SMTPAddr, e.caFile, extra)
	for u, pw := range users {
		h, err := bcrypt.GenerateFromPassword([]byte(pw), bcrypt.MinCost)
		if err != nil {
			t.Fatal(err)
		}
		src += fmt.Sprintf("user %q {\n  password_hash = %q\n  account = \"helpdesk\"\n}\n", u, h)
	}
	if err := os.WriteFile(e.cfgPath, []byte(src), 0o600); err != nil {
		t.Fatal(err)
	}
}

func (e *env) start(t *testing.T) *Daemon {
	t.Helper()
	d := e.restart(t)
	dl, done, err := d.Tokens().StartDeviceLogin(context.Background(), "helpdesk")
	if err != nil {
		t.Fatal(err)
	}
	if err := e.f.ApproveDevice(dl.UserCode, "alice@contoso.com"); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatalf("device login: %v", err)
	}
	return d
}

func imapLogin(t *testing.T, addr, user, pw string) (*imapclient.Client, error) {
	t.Helper()
	c, err := imapclient.DialInsecure(addr, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Login(user, pw).Wait(); err != nil {
		c.Close()
		return nil, err
	}
	return c, nil
}

func TestReloadKeepsSessionsAndAppliesUsers(t *testing.T) {
	e := newEnv(t)
	e.writeConfig(t, map[string]string{"otrs": "old-password-1"}, "")
	d := e.start(t)
	defer d.Shutdown(context.Background())

	held, err := imapLogin(t, d.Addr("imap"), "otrs", "old-password-1")
	if err != nil {
		t.Fatalf("login before reload: %v", err)
	}
	defer held.Close()
	if _, err := held.Select("INBOX", nil).Wait(); err != nil {
		t.Fatal(err)
	}

	// New password for otrs, a new user glpi.
	e.writeConfig(t, map[string]string{"otrs": "new-password-2", "glpi": "glpi-password-3"}, "")
	cfg, err := config.Load(e.cfgPath)
	if err != nil {
		t.Fatal(err)
	}
	if err := d.Reload(cfg); err != nil {
		t.Fatal(err)
	}
	// The established session keeps running.
	if err := held.Noop().Wait(); err != nil {
		t.Errorf("session established before reload broke: %v", err)
	}
	if _, err := imapLogin(t, d.Addr("imap"), "otrs", "old-password-1"); err == nil {
		t.Error("old password still accepted after reload")
	}
	for u, pw := range map[string]string{"otrs": "new-password-2", "glpi": "glpi-password-3"} {
		c, err := imapLogin(t, d.Addr("imap"), u, pw)
		if err != nil {
			t.Errorf("%s after reload: %v", u, err)
			continue
		}
		c.Logout().Wait()
	}
}

func TestRunSignals(t *testing.T) {
	e := newEnv(t)
	e.writeConfig(t, map[string]string{"otrs": "pw-otrs-1"}, "")
	d := e.start(t)
	loads := make(chan struct{}, 4)
	load := func() (*config.Config, error) {
		loads <- struct{}{}
		return config.Load(e.cfgPath)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	// Run calls Start again: use a fresh daemon that Run starts itself.
	d.Shutdown(context.Background())
	cfg, _ := config.Load(e.cfgPath)
	d2, err := New(cfg, Options{Logger: e.log})
	if err != nil {
		t.Fatal(err)
	}
	go func() { done <- Run(ctx, d2, load) }()
	waitFor(t, func() bool { return d2.Addr("imap") != "" && d2.ready.Load() })

	// An invalid configuration is refused and the old one keeps serving.
	os.WriteFile(e.cfgPath, []byte("this is not { valid hcl"), 0o600)
	syscall.Kill(os.Getpid(), syscall.SIGHUP)
	<-loads
	waitFor(t, func() bool { return strings.Contains(e.logs.String(), "reload refused") })
	c, err := imapLogin(t, d2.Addr("imap"), "otrs", "pw-otrs-1")
	if err != nil {
		t.Fatalf("login after refused reload: %v", err)
	}
	c.Logout().Wait()

	cancel() // as SIGTERM: drain and stop
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("Run = %v", err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("Run did not stop")
	}
}

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not reached in 10s")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestNoSecretsInLogs drives logins over all three protocols, good and bad,
// and checks that no password, token or client secret reaches the log.
func TestNoSecretsInLogs(t *testing.T) {
	e := newEnv(t)
	e.writeConfig(t, map[string]string{"otrs": "Sup3r-Secret-Passw0rd"}, "")
	d := e.start(t)
	defer d.Shutdown(context.Background())

	c, err := imapLogin(t, d.Addr("imap"), "otrs", "Sup3r-Secret-Passw0rd")
	if err != nil {
		t.Fatal(err)
	}
	c.Logout().Wait()
	if _, err := imapLogin(t, d.Addr("imap"), "otrs", "Wrong-Guess-Passw0rd"); err == nil {
		t.Fatal("wrong password accepted")
	}
	sc, err := smtp.Dial(d.Addr("smtp"))
	if err != nil {
		t.Fatal(err)
	}
	sc.Hello("t")
	if err := sc.Auth(sasl.NewPlainClient("", "otrs", "Sup3r-Secret-Passw0rd")); err != nil {
		t.Fatal(err)
	}
	if err := sc.SendMail("helpdesk@contoso.com", []string{"helpdesk@contoso.com"}, strings.NewReader("Subject: x\r\n\r\ny\r\n")); err != nil {
		t.Fatal(err)
	}
	sc.Quit()
	sc2, _ := smtp.Dial(d.Addr("smtp"))
	sc2.Hello("t")
	if err := sc2.Auth(sasl.NewPlainClient("", "otrs", "Another-Wrong-One")); err == nil {
		t.Error("SMTP wrong password accepted")
	}
	sc2.Close()

	// Revoke the grant and force a refresh so the failure path logs too.
	tok, err := d.Tokens().AccessToken(context.Background(), "helpdesk")
	if err != nil {
		t.Fatal(err)
	}
	e.f.RevokeRefreshTokens("alice@contoso.com")
	e.f.ExpireAccessToken(tok)
	d.Tokens().Rejected("helpdesk", tok)
	_, err = d.Tokens().AccessToken(context.Background(), "helpdesk")
	if err == nil {
		t.Fatal("AccessToken after revocation succeeded")
	}
	if _, err := imapLogin(t, d.Addr("imap"), "otrs", "Sup3r-Secret-Passw0rd"); err == nil || !strings.Contains(err.Error(), "oauthbridge login helpdesk") {
		t.Errorf("login after revocation = %v, want the re-authorisation hint", err)
	}

	logs := e.logs.String()
	if !strings.Contains(logs, `"msg":"login"`) {
		t.Fatalf("no login audit lines captured:\n%s", logs)
	}
	for _, secret := range []string{"Sup3r-Secret-Passw0rd", "Wrong-Guess-Passw0rd", "Another-Wrong-One", e.secret, tok} {
		if strings.Contains(logs, secret) {
			t.Errorf("log contains a secret %q", secret[:6]+"...")
		}
	}
	// Store and status carry no token either.
	for _, st := range d.Tokens().Status() {
		if strings.Contains(fmt.Sprintf("%+v", st), tok) {
			t.Error("status contains the access token")
		}
	}
}

// TestSecondSignalExitsAtOnce: SIGTERM drains for shutdown_timeout while a
// session is open; a second SIGTERM ends Run at once.
func TestSecondSignalExitsAtOnce(t *testing.T) {
	e := newEnv(t)
	e.writeConfig(t, map[string]string{"otrs": "pw-otrs-2"}, "shutdown_timeout = \"60s\"\n")
	cfg, err := config.Load(e.cfgPath)
	if err != nil {
		t.Fatal(err)
	}
	d, err := New(cfg, Options{Logger: e.log})
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() {
		done <- Run(context.Background(), d, func() (*config.Config, error) { return config.Load(e.cfgPath) })
	}()
	waitFor(t, func() bool { return d.Addr("imap") != "" && d.ready.Load() })
	dl, login, err := d.Tokens().StartDeviceLogin(context.Background(), "helpdesk")
	if err != nil {
		t.Fatal(err)
	}
	e.f.ApproveDevice(dl.UserCode, "alice@contoso.com")
	if err := <-login; err != nil {
		t.Fatal(err)
	}
	held, err := imapLogin(t, d.Addr("imap"), "otrs", "pw-otrs-2")
	if err != nil {
		t.Fatal(err)
	}
	defer held.Close()

	syscall.Kill(os.Getpid(), syscall.SIGTERM)
	waitFor(t, func() bool { return strings.Contains(e.logs.String(), "a second SIGTERM or SIGINT exits at once") })
	// A reload (SIGHUP) during the drain is not the second signal: the
	// draining session keeps working and Run goes on draining.
	syscall.Kill(os.Getpid(), syscall.SIGHUP)
	waitFor(t, func() bool { return strings.Contains(e.logs.String(), "reload ignored: shutting down") })
	if err := held.Noop().Wait(); err != nil {
		t.Fatalf("draining session after SIGHUP: %v", err)
	}
	select {
	case err := <-done:
		t.Fatalf("Run returned %v while a session was still draining", err)
	default:
	}
	start := time.Now()
	syscall.Kill(os.Getpid(), syscall.SIGTERM)
	select {
	case err := <-done:
		if err == nil || !strings.Contains(err.Error(), "second signal") {
			t.Errorf("Run after the second SIGTERM = %v", err)
		}
		if d := time.Since(start); d > 5*time.Second {
			t.Errorf("second SIGTERM took %v", d)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("second SIGTERM did not end Run")
	}
}
