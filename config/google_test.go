package config

import (
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// testServiceAccountKey writes a Google-style service account JSON key.
func testServiceAccountKey(t *testing.T, dir string) (string, *rsa.PrivateKey) {
	t.Helper()
	k, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.MarshalPKCS8PrivateKey(k)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := json.Marshal(map[string]string{
		"type":           "service_account",
		"project_id":     "bridge-123",
		"private_key_id": "kid1",
		"private_key":    string(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})),
		"client_email":   "bridge@bridge-123.iam.gserviceaccount.com",
		"client_id":      "1234567890",
		"token_uri":      "https://oauth2.googleapis.com/token",
	})
	path := filepath.Join(dir, "sa.json")
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
	return path, k
}

func TestGoogleProviderDefaults(t *testing.T) {
	dir := t.TempDir()
	keyPath, _ := testServiceAccountKey(t, dir)
	src := `
provider "gw" {
  type                = "google"
  client_id           = "123-abc.apps.googleusercontent.com"
  client_secret       = "GOCSPX-secret"
  service_account_key = file("` + keyPath + `")
}
account "person" {
  provider = "gw"
  mailbox  = "alice@example.org"
}
account "robot" {
  provider = "gw"
  mailbox  = "helpdesk@example.org"
  flow     = "app"
}
`
	cfg, err := Parse("g.hcl", []byte(src))
	if err != nil {
		t.Fatal(err)
	}
	p := cfg.ProviderByName["gw"]
	if p.Authority != GoogleAuthority || p.TokenURL != GoogleTokenURL || p.AuthURL() != "https://accounts.google.com/o/oauth2/v2/auth" {
		t.Errorf("endpoints: %q %q %q", p.Authority, p.TokenURL, p.AuthURL())
	}
	if p.IMAPServer != "imap.gmail.com:993" || p.POP3Server != "pop.gmail.com:995" || p.SMTPServer != "smtp.gmail.com:587" {
		t.Errorf("servers: %s %s %s", p.IMAPServer, p.POP3Server, p.SMTPServer)
	}
	if p.AppScope != "https://mail.google.com/" {
		t.Errorf("scope %q", p.AppScope)
	}
	if p.ServiceAccount == nil || p.ServiceAccount.Email != "bridge@bridge-123.iam.gserviceaccount.com" || p.ServiceAccount.KeyID != "kid1" {
		t.Fatalf("service account: %+v", p.ServiceAccount)
	}
	if got := p.ServiceAccount.PrivateKey.String(); strings.Contains(got, "PRIVATE KEY") {
		t.Errorf("the private key prints as %q", got)
	}
	if a := cfg.AccountByName["robot"]; a.MaxConnections != DefaultGoogleAccountConnections {
		t.Errorf("google account max_connections default %d, want %d", a.MaxConnections, DefaultGoogleAccountConnections)
	}

	// authority moves both endpoints (a local fake).
	src2 := strings.Replace(src, `type                = "google"`, `type = "google"
  authority = "http://127.0.0.1:9/"
  imap_server = "127.0.0.1:1993"`, 1)
	cfg, err = Parse("g.hcl", []byte(src2))
	if err != nil {
		t.Fatal(err)
	}
	p = cfg.ProviderByName["gw"]
	if p.TokenURL != "http://127.0.0.1:9/token" || p.AuthURL() != "http://127.0.0.1:9/o/oauth2/v2/auth" || p.IMAPServer != "127.0.0.1:1993" {
		t.Errorf("overrides: %q %q %q", p.TokenURL, p.AuthURL(), p.IMAPServer)
	}
}

func TestGoogleProviderErrors(t *testing.T) {
	dir := t.TempDir()
	bad := filepath.Join(dir, "client.json")
	os.WriteFile(bad, []byte(`{"installed":{"client_id":"x"}}`), 0o600)
	cases := []struct {
		name, src string
		want      []string
	}{
		{"tenant", `provider "g" {
  type = "google"
  tenant = "example.org"
  client_id = "c"
  client_secret = "s"
}`, []string{"tenant is a Microsoft setting"}},
		{"delegate", `provider "g" {
  type = "google"
  client_id = "c"
  client_secret = "s"
}
account "a" {
  provider = "g"
  mailbox = "helpdesk@example.org"
  delegate = "alice@example.org"
}`, []string{"delegate with a Google provider", "service account"}},
		{"graph", `provider "g" {
  type = "google"
  client_id = "c"
  client_secret = "s"
}
account "a" {
  provider = "g"
  mailbox = "helpdesk@example.org"
  send_via = "graph"
}`, []string{"send_via with a Google provider"}},
		{"app without key", `provider "g" {
  type = "google"
}
account "a" {
  provider = "g"
  mailbox = "helpdesk@example.org"
  flow = "app"
}`, []string{"App flow needs a service account key", "Domain-wide delegation"}},
		{"delegated without client", `provider "g" {
  type = "google"
}
account "a" {
  provider = "g"
  mailbox = "helpdesk@example.org"
}`, []string{"Missing client_id", "Desktop app"}},
		{"oauth client json as key", `provider "g" {
  type = "google"
  service_account_key = file("` + bad + `")
}`, []string{"Unusable service_account_key", `not "service_account"`}},
		{"certificate", `provider "g" {
  type = "google"
  client_id = "c"
  client_certificate {
    cert_file = "/nonexistent/bridge.crt"
    key_file  = "/nonexistent/bridge.key"
  }
}`, []string{"client_certificate is a Microsoft setting", "service_account_key"}},
		{"microsoft without client_id", `provider "m" {
  tenant = "contoso.com"
}`, []string{"Missing client_id"}},
		{"unknown type", `provider "m" {
  type = "yahoo"
  tenant = "contoso.com"
  client_id = "c"
}`, []string{`"microsoft"`, `"google"`}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := Parse("g.hcl", []byte(c.src))
			if err == nil {
				t.Fatal("no error")
			}
			for _, w := range c.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not mention %q", err, w)
				}
			}
		})
	}
}
