package cli

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/oauthbridge/oauthbridge/config"
	"github.com/oauthbridge/oauthbridge/internal/certgen"
	"github.com/oauthbridge/oauthbridge/internal/daemon"
	"github.com/oauthbridge/oauthbridge/internal/fakems"
	"github.com/oauthbridge/oauthbridge/internal/logging"
)

// TestStatusShowsCertificateInUse: a provider rotating certificates, the
// first one not (or no longer) uploaded to Entra: the running service uses
// the second, and status says so with both expiry dates.
func TestStatusShowsCertificateInUse(t *testing.T) {
	f, err := fakems.Start(fakems.Options{Logger: logging.Discard})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	dir := t.TempDir()
	ca := filepath.Join(dir, "ca.pem")
	if err := f.WriteCAFile(ca); err != nil {
		t.Fatal(err)
	}
	var files [2][2]string
	var thumbs [2]string
	var notAfter [2]time.Time
	for i, name := range []string{"old", "new"} {
		cert, key, err := certgen.New(certgen.Options{CommonName: "oauthbridge-" + name, Bits: 2048, Lifetime: time.Duration(100*(i+1)) * 24 * time.Hour})
		if err != nil {
			t.Fatal(err)
		}
		files[i] = [2]string{filepath.Join(dir, name+".crt"), filepath.Join(dir, name+".key")}
		os.WriteFile(files[i][0], certgen.CertPEM(cert), 0o644)
		os.WriteFile(files[i][1], certgen.KeyPEM(key), 0o600)
		thumbs[i], notAfter[i] = config.CertThumbprint(cert), cert.NotAfter
		if i == 1 {
			f.RegisterCertificate("app-id", cert)
		}
	}
	f.AddApp("app-id", "")
	f.AddMailbox("scan@contoso.com")
	f.GrantApp("app-id", "scan@contoso.com")
	path := filepath.Join(dir, "config.hcl")
	src := fmt.Sprintf(`state_dir = %q
imap { listen = [%q] }
pop3 { listen = [%q] }
smtp { listen = [%q] }
admin { listen = %q }
provider "contoso" {
  tenant      = "contoso.onmicrosoft.com"
  client_id   = "app-id"
  authority   = %q
  imap_server = %q
  pop3_server = %q
  smtp_server = %q
  ca_file     = %q
  client_certificate {
    cert_file = %q
    key_file  = %q
  }
  client_certificate {
    cert_file = %q
    key_file  = %q
  }
}
account "scanner" {
  provider = "contoso"
  mailbox  = "scan@contoso.com"
  flow     = "app"
}
`, filepath.Join(dir, "state"), freeLoopback(t), freeLoopback(t), freeLoopback(t), unusedAddr(t), f.AuthorityURL, f.IMAPAddr, f.POP3Addr, f.SMTPAddr, ca, files[0][0], files[0][1], files[1][0], files[1][1])
	if err := os.WriteFile(path, []byte(src), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, err := config.Load(path)
	if err != nil {
		t.Fatal(err)
	}
	d, err := daemon.New(cfg, daemon.Options{Logger: logging.Discard})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	if err := d.Start(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		sctx, c2 := context.WithTimeout(context.Background(), 10*time.Second)
		defer c2()
		d.Shutdown(sctx)
	})
	if _, err := d.Tokens().AccessToken(ctx, "scanner"); err != nil {
		t.Fatalf("token with the second certificate: %v", err)
	}

	code, o, e := run(t, "", "status", "-config", path, "-credentials", t.TempDir())
	if code != ExitOK {
		t.Fatalf("status: code %d\n%s\n%s", code, o, e)
	}
	t.Logf("status:\n%s", o)
	for i, inUse := range []string{"no", "yes"} {
		re := regexp.MustCompile(`contoso\s+certificate\s+` + thumbs[i] + `\s+` + notAfter[i].UTC().Format("2006-01-02") + ` \(in \d+d\)\s+` + inUse + `\n`)
		if !re.MatchString(o) {
			t.Errorf("status lacks certificate %d (%s, in use: %s):\n%s", i, thumbs[i], inUse, o)
		}
	}
	// check lists the certificates with their thumbprints.
	if code, o, e := run(t, "", "check", "-config", path, "-credentials", t.TempDir()); code != ExitOK || !strings.Contains(o, "client certificate "+thumbs[0]) || !strings.Contains(o, "client certificate "+thumbs[1]) {
		t.Errorf("check: code %d\n%s\n%s", code, o, e)
	}

	// A reload (what SIGHUP does) re-reads the files: the retired
	// certificate's files now hold a third, registered one.
	third, thirdKey, err := certgen.New(certgen.Options{CommonName: "oauthbridge-third", Bits: 2048, Lifetime: 300 * 24 * time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	f.RegisterCertificate("app-id", third)
	os.WriteFile(files[0][0], certgen.CertPEM(third), 0o644)
	os.WriteFile(files[0][1], certgen.KeyPEM(thirdKey), 0o600)
	cfg, err = config.Load(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := d.Reload(cfg); err != nil {
		t.Fatal(err)
	}
	code, o, e = run(t, "", "status", "-config", path, "-credentials", t.TempDir())
	if code != ExitOK || !strings.Contains(o, config.CertThumbprint(third)) || strings.Contains(o, thumbs[0]) || !regexp.MustCompile(thumbs[1]+`\s+\S+ \(in \d+d\)\s+yes`).MatchString(o) {
		t.Errorf("status after reload: code %d\n%s\n%s", code, o, e)
	}

	// Without the daemon the configuration's view: which one is in use is unknown.
	d.Shutdown(ctx)
	code, o, _ = run(t, "", "status", "-config", path, "-credentials", t.TempDir())
	if code != ExitUnavailable || !regexp.MustCompile(`contoso\s+certificate\s+`+thumbs[1]+`\s+\S+ \(in \d+d\)\s+\?`).MatchString(o) {
		t.Errorf("status without the daemon: code %d\n%s", code, o)
	}
	if strings.Contains(o, "PRIVATE KEY") {
		t.Error("key material in the output")
	}
}
