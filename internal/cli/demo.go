package cli

import (
	"context"
	"crypto/rand"
	"encoding/base32"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/crypto/bcrypt"

	"github.com/oauthbridge/oauthbridge/config"
	"github.com/oauthbridge/oauthbridge/internal/daemon"
	"github.com/oauthbridge/oauthbridge/internal/fakems"
	"github.com/oauthbridge/oauthbridge/internal/logging"
)

// Demo identities in the fake tenant.
const (
	demoClientID = "11111111-2222-3333-4444-555555555555"
	demoDelegate = "alice@contoso.example"
	demoMailbox  = "helpdesk@contoso.example"
	demoUser     = "demo"
	// A second account whose mailbox has SMTP AUTH disabled sends through
	// Microsoft Graph (send_via = "graph").
	demoGraphMailbox = "notices@contoso.example"
	demoGraphUser    = "notices"
	// A Google Workspace mailbox beside them (a second fake, in Google
	// mode), reached with a service account's domain-wide delegation.
	demoGoogleMailbox = "helpdesk@fabrikam.example"
	demoGoogleUser    = "workspace"
	demoGoogleSA      = "oauthbridge@fabrikam-demo.iam.gserviceaccount.com"
)

// DemoInfo describes a running demo (for tests and the printed banner).
type DemoInfo struct {
	User, Password       string
	IMAP, POP3, SMTP     string
	Admin                string
	Mailbox, Delegate    string
	GraphUser            string // sends through Microsoft Graph, same password
	GraphMailbox         string
	GoogleUser           string // a Google Workspace mailbox (service account), same password
	GoogleMailbox        string
	GoogleFake           *fakems.Fake
	StateDir, ConfigPath string
	Fake                 *fakems.Fake
	Daemon               *daemon.Daemon
}

func runDemo(ctx context.Context, env Env, args []string) error {
	fs := newFlags(env, "demo", "", `
Starts a fake Microsoft 365 (identity platform, IMAP, POP3, SMTP accepting
only XOAUTH2), a fake Google Workspace beside it, and a bridge in front of
both, all on loopback, signs the demo
account in with the device-code flow and prints a user, a password and curl
commands to try. Nothing outside a temporary directory is touched; Ctrl-C
stops it.`)
	verbose := fs.Bool("v", false, "log the bridge's activity (JSON) to standard error")
	pos, err := fs.parse(args)
	if err != nil {
		return err
	}
	if len(pos) > 0 {
		return usagef("demo takes no arguments")
	}
	info, stop, err := StartDemo(ctx, *verbose, env)
	if err != nil {
		return err
	}
	defer stop()
	printDemo(env, info)
	<-ctx.Done()
	fmt.Fprintln(env.Stderr, "\noauthbridge demo: stopping")
	return nil
}

// freeAddr returns preferred if it can be bound on loopback, else a free port.
func freeAddr(preferred string) string {
	if ln, err := net.Listen("tcp", preferred); err == nil {
		ln.Close()
		return preferred
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "127.0.0.1:0"
	}
	defer ln.Close()
	return ln.Addr().String()
}

// StartDemo starts the fake Microsoft 365 and a bridge configured against
// it, signs the demo account in with the device-code flow (the fake approves
// the code), and returns what a person needs to connect.
func StartDemo(ctx context.Context, verbose bool, env Env) (*DemoInfo, func(), error) {
	log := logging.Discard
	if verbose {
		log = logging.New(env.Stderr, "json", "info")
	}
	f, err := fakems.Start(fakems.Options{Logger: log.With("component", "fake-m365")})
	if err != nil {
		return nil, nil, fmt.Errorf("demo: starting the fake Microsoft 365: %w", err)
	}
	f.AddApp(demoClientID, "")
	f.AddUser(demoDelegate)
	f.AddMailbox(demoMailbox, demoDelegate)
	f.AllowSendAs(demoMailbox, "support@contoso.example")
	f.AddUser(demoGraphMailbox)
	f.SetMailboxSMTPAuth(demoGraphMailbox, fakems.SMTPAuthDisabled)
	_ = f.Deliver(demoMailbox, []byte("From: Contoso IT <it@contoso.example>\r\nTo: "+demoMailbox+"\r\nSubject: Welcome to the oauthbridge demo\r\nDate: "+time.Now().Format(time.RFC1123Z)+"\r\nMessage-ID: <demo-1@contoso.example>\r\n\r\nThis message sits in the fake Exchange mailbox "+demoMailbox+".\r\nYou read it through the bridge with a plain password; the bridge used XOAUTH2.\r\n"))

	gf, err := fakems.Start(fakems.Options{Google: true, Logger: log.With("component", "fake-google")})
	if err != nil {
		f.Close()
		return nil, nil, fmt.Errorf("demo: starting the fake Google Workspace: %w", err)
	}
	dir, err := os.MkdirTemp("", "oauthbridge-demo-")
	if err != nil {
		f.Close()
		gf.Close()
		return nil, nil, err
	}
	cleanup := func() { f.Close(); gf.Close(); os.RemoveAll(dir) }
	caFile := filepath.Join(dir, "fake-ca.pem")
	if err := f.WriteCAFile(caFile); err != nil {
		cleanup()
		return nil, nil, err
	}
	googleCA, googleKey, err := demoGoogle(gf, dir)
	if err != nil {
		cleanup()
		return nil, nil, err
	}
	var rb [10]byte
	rand.Read(rb[:])
	password := strings.ToLower(base32.StdEncoding.WithPadding(base32.NoPadding).EncodeToString(rb[:]))
	hash, err := bcrypt.GenerateFromPassword([]byte(password), bcrypt.DefaultCost)
	if err != nil {
		cleanup()
		return nil, nil, err
	}
	src := fmt.Sprintf(`# Written by 'oauthbridge demo'.
state_dir = %q
log_level = "info"
imap { listen = [%q] }
pop3 { listen = [%q] }
smtp { listen = [%q] }
admin { listen = %q }
provider "fake" {
  tenant      = "contoso.example"
  client_id   = %q
  authority   = %q
  imap_server = %q
  pop3_server = %q
  smtp_server = %q
  graph_url   = %q
  ca_file     = %q
}
account "helpdesk" {
  provider = "fake"
  mailbox  = %q
  delegate = %q
  send_as  = ["support@contoso.example"]
}
account "notices" {               # SMTP AUTH is disabled for this mailbox
  provider = "fake"
  mailbox  = %q
  send_via = "graph"
}
user %q {
  password_hash = %q
  account       = "helpdesk"
}
user %q {
  password_hash = %q
  account       = "notices"
}

provider "google" {               # a fake Google Workspace
  type                = "google"
  service_account_key = file(%q)
  authority           = %q
  imap_server         = %q
  pop3_server         = %q
  smtp_server         = %q
  ca_file             = %q
}
account "workspace" {             # a service account with domain-wide delegation acts for the mailbox
  provider = "google"
  mailbox  = %q
  flow     = "app"
}
user %q {
  password_hash = %q
  account       = "workspace"
}
`, filepath.Join(dir, "state"), freeAddr("127.0.0.1:1143"), freeAddr("127.0.0.1:1110"), freeAddr("127.0.0.1:1587"), freeAddr("127.0.0.1:8025"),
		demoClientID, f.AuthorityURL, f.IMAPAddr, f.POP3Addr, f.SMTPAddr, f.GraphURL(), caFile, demoMailbox, demoDelegate, demoGraphMailbox,
		demoUser, string(hash), demoGraphUser, string(hash),
		googleKey, gf.AuthorityURL, gf.IMAPAddr, gf.POP3Addr, gf.SMTPAddr, googleCA, demoGoogleMailbox, demoGoogleUser, string(hash))
	if err := os.MkdirAll(filepath.Join(dir, "state"), 0o700); err != nil {
		cleanup()
		return nil, nil, err
	}
	cfgPath := filepath.Join(dir, "config.hcl")
	if err := os.WriteFile(cfgPath, []byte(src), 0o600); err != nil {
		cleanup()
		return nil, nil, err
	}
	cfg, err := config.Load(cfgPath)
	if err != nil {
		cleanup()
		return nil, nil, err
	}
	daemon.Version = version()
	d, err := daemon.New(cfg, daemon.Options{Logger: log})
	if err != nil {
		cleanup()
		return nil, nil, err
	}
	if err := d.Start(ctx); err != nil {
		cleanup()
		return nil, nil, err
	}
	stop := func() {
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		d.Shutdown(sctx)
		cleanup()
	}
	// Sign each account in, exactly as `oauthbridge login ACCOUNT` would,
	// with the fake standing in for the person who enters the code. The
	// sign-in of "notices" also consents to its Microsoft Graph permissions.
	for _, acct := range []struct{ name, who string }{{"helpdesk", demoDelegate}, {"notices", demoGraphMailbox}} {
		dl, done, err := d.Tokens().StartDeviceLogin(ctx, acct.name)
		if err != nil {
			stop()
			return nil, nil, fmt.Errorf("demo: device login: %w", err)
		}
		fmt.Fprintf(env.Stderr, "Signing in %s for account %s: device code %s at %s (the fake approves it for you)...\n", acct.who, acct.name, dl.UserCode, dl.VerificationURI)
		if err := f.ApproveDevice(dl.UserCode, acct.who); err != nil {
			stop()
			return nil, nil, err
		}
		select {
		case err = <-done:
		case <-time.After(30 * time.Second):
			err = fmt.Errorf("demo: the device login did not complete in 30s")
		}
		if err != nil {
			stop()
			return nil, nil, err
		}
	}
	// The service account needs no sign-in; get its first token now so
	// that status shows it ok at once.
	if _, err := d.Tokens().AccessToken(ctx, "workspace"); err != nil {
		stop()
		return nil, nil, fmt.Errorf("demo: service account token: %w", err)
	}
	return &DemoInfo{
		GoogleUser: demoGoogleUser, GoogleMailbox: demoGoogleMailbox, GoogleFake: gf,
		User: demoUser, Password: password,
		IMAP: d.Addr("imap"), POP3: d.Addr("pop3"), SMTP: d.Addr("smtp"), Admin: d.Addr("admin"),
		Mailbox: demoMailbox, Delegate: demoDelegate, GraphUser: demoGraphUser, GraphMailbox: demoGraphMailbox,
		StateDir: dir, ConfigPath: cfgPath, Fake: f, Daemon: d,
	}, stop, nil
}

// demoGoogle fills the fake Google Workspace and writes its CA and the
// service account's JSON key into dir.
func demoGoogle(gf *fakems.Fake, dir string) (caFile, keyFile string, err error) {
	gf.AddUser(demoGoogleMailbox)
	_ = gf.Deliver(demoGoogleMailbox, []byte("From: Fabrikam IT <it@fabrikam.example>\r\nTo: "+demoGoogleMailbox+"\r\nSubject: Welcome to Google Workspace through oauthbridge\r\nDate: "+time.Now().Format(time.RFC1123Z)+"\r\nMessage-ID: <demo-g1@fabrikam.example>\r\n\r\nThis message sits in the fake Gmail mailbox "+demoGoogleMailbox+".\r\nThe bridge reached it with a service account token (JWT bearer grant) and XOAUTH2.\r\n"))
	key, err := gf.AddServiceAccount(demoGoogleSA)
	if err != nil {
		return "", "", err
	}
	gf.AllowDomainWideDelegation(demoGoogleSA, fakems.GoogleMailScope)
	caFile, keyFile = filepath.Join(dir, "fake-google-ca.pem"), filepath.Join(dir, "google-service-account.json")
	if err := gf.WriteCAFile(caFile); err != nil {
		return "", "", err
	}
	if err := os.WriteFile(keyFile, key, 0o600); err != nil {
		return "", "", err
	}
	return caFile, keyFile, nil
}

func printDemo(env Env, i *DemoInfo) {
	w := env.Stdout
	fmt.Fprintf(w, `
oauthbridge demo is running against an embedded fake Microsoft 365 and a fake Google Workspace (all on loopback).

  Local user:     %s
  Password:       %s
  Mailbox:        %s (shared; signed in as delegate %s)

  IMAP:           %s      POP3: %s      SMTP (submission): %s
  Status page:    http://%s/      metrics: http://%s/metrics

Try it from another terminal:

  # list the INBOX and read message 1 over IMAP
  curl -s --user '%s:%s' 'imap://%s/INBOX?ALL'
  curl -s --user '%s:%s' 'imap://%s/INBOX;UID=1'

  # the same over POP3
  curl -s --user '%s:%s' 'pop3://%s/1'

  # send a message through SMTP (it lands in the fake mailbox; read it back with IMAP)
  printf 'From: %s\r\nTo: %s\r\nSubject: hello from the demo\r\n\r\nSent through oauthbridge.\r\n' |
    curl -s --user '%s:%s' --url 'smtp://%s' --mail-from '%s' --mail-rcpt '%s' -T -

  # user %s (same password) sends through Microsoft Graph: SMTP AUTH is disabled for %s
  printf 'From: %s\r\nTo: %s\r\nSubject: sent through Graph\r\n\r\nSMTP in, Microsoft Graph out.\r\n' |
    curl -s --user '%s:%s' --url 'smtp://%s' --mail-from '%s' --mail-rcpt '%s' -T -

  # user %s (same password) is a Google Workspace mailbox, %s, reached with a service account
  curl -s --user '%s:%s' 'imap://%s/INBOX;UID=1'

  go run ./cmd/oauthbridge status -config %s   # token state and send path, from the running daemon

The configuration the bridge runs with is %s.
Press Ctrl-C to stop.
`, i.User, i.Password, i.Mailbox, i.Delegate, i.IMAP, i.POP3, i.SMTP, i.Admin, i.Admin,
		i.User, i.Password, i.IMAP, i.User, i.Password, i.IMAP,
		i.User, i.Password, i.POP3,
		i.Mailbox, i.Mailbox, i.User, i.Password, i.SMTP, i.Mailbox, i.Mailbox,
		i.GraphUser, i.GraphMailbox,
		i.GraphMailbox, i.Mailbox, i.GraphUser, i.Password, i.SMTP, i.GraphMailbox, i.Mailbox,
		i.GoogleUser, i.GoogleMailbox, i.GoogleUser, i.Password, i.IMAP,
		i.ConfigPath, i.ConfigPath)
}
