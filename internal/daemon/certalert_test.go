package daemon

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/bcrypt"

	"github.com/oauthbridge/oauthbridge/config"
	"github.com/oauthbridge/oauthbridge/internal/alerts"
	"github.com/oauthbridge/oauthbridge/internal/certgen"
)

// The certificate of a provider that authenticates with client_certificate
// only is close to its expiry: the running daemon announces it on the
// webhook with its thumbprint and expiry date. The administrator puts a
// fresh certificate in the same files, uploads it in Entra and reloads: the
// alert clears and the new certificate signs the token requests.
func TestAlertsCertificateExpiringAndReplaced(t *testing.T) {
	e := newEnv(t)
	// An app registration without a secret: only its certificates
	// authenticate it, so a working sign-in proves which one signed.
	e.f.AddApp("cert-app", "")
	certFile, keyFile := filepath.Join(e.dir, "bridge.crt"), filepath.Join(e.dir, "bridge.key")
	newCert := func(name string, life time.Duration) (thumbprint string, notAfter time.Time) {
		t.Helper()
		cert, key, err := certgen.New(certgen.Options{CommonName: "oauthbridge-test-" + name, Bits: 2048, Lifetime: life})
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(certFile, certgen.CertPEM(cert), 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(keyFile, certgen.KeyPEM(key), 0o600); err != nil {
			t.Fatal(err)
		}
		e.f.RegisterCertificate("cert-app", cert) // uploaded in Entra
		return config.CertThumbprint(cert), cert.NotAfter
	}
	oldThumb, oldNotAfter := newCert("old", 10*24*time.Hour) // within the 30-day warning

	r := newHookReceiver(t, false)
	h, _ := bcrypt.GenerateFromPassword([]byte("pw-otrs-1"), bcrypt.MinCost)
	src := fmt.Sprintf(`state_dir = %q
imap { listen = ["127.0.0.1:0"] }
pop3 { listen = ["127.0.0.1:0"] }
smtp { listen = ["127.0.0.1:0"] }
admin { listen = "127.0.0.1:0" }
provider "fake" {
  tenant      = "contoso.com"
  client_id   = "cert-app"
  authority   = %q
  imap_server = %q
  pop3_server = %q
  smtp_server = %q
  ca_file     = %q
  client_certificate {
    cert_file = %q
    key_file  = %q
  }
}
account "helpdesk" {
  provider = "fake"
  mailbox  = "helpdesk@contoso.com"
  delegate = "alice@contoso.com"
}
user "otrs" {
  password_hash = %q
  account       = "helpdesk"
}
alerts {
  webhook_url               = %q
  credential_expiry_warning = "30d"
  check_interval            = "100ms"
}
`, filepath.Join(e.dir, "state"), e.f.AuthorityURL, e.f.IMAPAddr, e.f.POP3Addr, e.f.SMTPAddr, e.caFile, certFile, keyFile, h, r.srv.URL)
	if err := os.WriteFile(e.cfgPath, []byte(src), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, err := config.Load(e.cfgPath)
	if err != nil {
		t.Fatal(err)
	}
	d, err := New(cfg, Options{Logger: e.log, Alerts: alerts.Options{RetryMin: time.Millisecond, Hostname: "bridge1"}})
	if err != nil {
		t.Fatal(err)
	}
	if err := d.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Shutdown(context.Background()) })
	ae := &alertEnv{env: e, d: d}
	ae.signIn(t, "helpdesk", "alice@contoso.com") // signed with the old certificate

	p := r.next(t, alerts.CredentialExpiring, alerts.Firing)
	date := oldNotAfter.UTC().Format("2006-01-02")
	if p.Provider != "fake" || !strings.Contains(p.Message, "certificate "+oldThumb) || !strings.Contains(p.Message, "expires on "+date) ||
		!strings.Contains(p.Message, "in 9 days") || !strings.Contains(p.Message, "AADSTS700027") || !strings.Contains(p.Fix, "oauthbridge cert new") {
		t.Errorf("credential alert: %+v\nwant certificate %s expiring on %s", p, oldThumb, date)
	}
	if !strings.Contains(p.Text, oldThumb) {
		t.Errorf("webhook text does not name the certificate %s: %q", oldThumb, p.Text)
	}

	// The fresh certificate goes into the same files; Entra knows both
	// until the old one is removed there.
	newThumb, _ := newCert("new", 365*24*time.Hour)
	cfg, err = config.Load(e.cfgPath)
	if err != nil {
		t.Fatal(err)
	}
	if err := d.Reload(cfg); err != nil {
		t.Fatal(err)
	}
	p = r.next(t, alerts.CredentialExpiring, alerts.Resolved)
	if !strings.Contains(p.Message, "certificate "+oldThumb) {
		t.Errorf("resolved alert: %+v\nwant it to name certificate %s", p, oldThumb)
	}
	e.f.RemoveCertificate("cert-app", oldThumb)
	creds := d.Tokens().Credentials()
	if len(creds) != 1 || creds[0].Name != newThumb || !creds[0].InUse {
		t.Fatalf("credentials after the reload: %+v, want the new certificate %s in use", creds, newThumb)
	}
	// The token request is signed with the new certificate now.
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	tok, err := d.Tokens().AccessToken(ctx, "helpdesk")
	if err != nil {
		t.Fatal(err)
	}
	d.Tokens().Rejected("helpdesk", tok)
	if _, err := d.Tokens().AccessToken(ctx, "helpdesk"); err != nil {
		t.Fatalf("token refresh with the new certificate: %v", err)
	}
}
