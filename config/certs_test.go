package config

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/oauthbridge/oauthbridge/internal/certgen"
)

// writeClientCert writes an RSA certificate and key valid from now-5m for
// life into dir as name.crt and name.key.
func writeClientCert(t *testing.T, dir, name string, now time.Time, life time.Duration) (certFile, keyFile string, thumb string) {
	t.Helper()
	cert, key, err := certgen.New(certgen.Options{CommonName: name, Bits: 2048, Lifetime: life, Now: now})
	if err != nil {
		t.Fatal(err)
	}
	certFile, keyFile = filepath.Join(dir, name+".crt"), filepath.Join(dir, name+".key")
	if err := os.WriteFile(certFile, certgen.CertPEM(cert), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyFile, certgen.KeyPEM(key), 0o600); err != nil {
		t.Fatal(err)
	}
	return certFile, keyFile, CertThumbprint(cert)
}

// certSrc is a configuration whose app-flow account uses provider "c" with
// the given provider body.
func certSrc(t *testing.T, body string) string {
	return base(t) + `provider "c" {
  tenant    = "contoso.onmicrosoft.com"
  client_id = "id"
` + body + `}
account "app" {
  provider = "c"
  mailbox  = "app@contoso.com"
  flow     = "app"
}
`
}

func certBlock(certFile, keyFile string) string {
	return fmt.Sprintf("  client_certificate {\n    cert_file = %q\n    key_file  = %q\n  }\n", certFile, keyFile)
}

func TestClientCertificate(t *testing.T) {
	dir := t.TempDir()
	now := time.Now()
	cf, kf, thumb := writeClientCert(t, dir, "a", now, 365*24*time.Hour)
	cfg, err := Parse("c.hcl", []byte(certSrc(t, certBlock(cf, kf))))
	if err != nil {
		t.Fatalf("Parse() = %v", err)
	}
	p := cfg.ProviderByName["c"]
	cc := p.ClientCertificates[0]
	if cc.Cert == nil || cc.Key == nil || cc.Thumbprint() != thumb || len(thumb) != 40 || strings.ToUpper(thumb) != thumb || cc.Algorithm != DefaultCertAlgorithm {
		t.Fatalf("client certificate = %+v thumb %q", cc, cc.Thumbprint())
	}

	cf2, kf2, _ := writeClientCert(t, dir, "b", now, 365*24*time.Hour)
	expCert, expKey, _ := writeClientCert(t, dir, "old", now.Add(-48*time.Hour), time.Hour)
	ecKey := filepath.Join(dir, "ec.key")
	k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	der, _ := x509.MarshalECPrivateKey(k)
	os.WriteFile(ecKey, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: der}), 0o600)
	for _, tc := range []struct{ name, body, want string }{
		{"unreadable cert", certBlock(filepath.Join(dir, "missing.crt"), kf), "no such file or directory"},
		{"unreadable key", certBlock(cf, filepath.Join(dir, "missing.key")), "credential_path(\"NAME\")"},
		{"key not matching", certBlock(cf, kf2), "is not the private key of certificate " + thumb},
		{"expired", certBlock(expCert, expKey), "expired on"},
		{"both secret and certificate", "  client_secret = \"s\"\n" + certBlock(cf, kf), "Remove client_secret to use the certificate"},
		{"non-RSA key", certBlock(cf, ecKey), "EC key; the bridge signs with RSA"},
		{"three blocks", certBlock(cf, kf) + certBlock(cf2, kf2) + certBlock(expCert, expKey), "Too many client_certificate blocks"},
		{"same twice", certBlock(cf, kf) + certBlock(cf, kf), "Same certificate twice"},
		{"algorithm", "  client_certificate {\n    cert_file = \"" + cf + "\"\n    key_file = \"" + kf + "\"\n    algorithm = \"HS256\"\n  }\n", `use "RS256"`},
		{"cert is a key", certBlock(kf, kf), "no PEM CERTIFICATE block"},
	} {
		if out := diagFor(t, certSrc(t, tc.body)); !strings.Contains(squash(out), tc.want) {
			t.Errorf("%s: diagnostics lack %q:\n%s", tc.name, tc.want, out)
		}
	}
	if out := diagFor(t, base(t)+"provider \"c\" {\n  tenant = \"t.example\"\n  client_id = \"id\"\n}\naccount \"app\" {\n  provider = \"c\"\n  mailbox = \"app@contoso.com\"\n  flow = \"app\"\n}\n"); !strings.Contains(squash(out), "needs client_secret or a client_certificate block") {
		t.Errorf("app flow without a credential:\n%s", out)
	}

	// Rotation: an expired certificate beside a valid one is a warning.
	cfg, err = Parse("c.hcl", []byte(certSrc(t, certBlock(expCert, expKey)+certBlock(cf, kf))))
	if err != nil {
		t.Fatalf("expired + valid = %v", err)
	}
	if w := cfg.WarningsError(); w == nil || !strings.Contains(w.Error(), "expired") {
		t.Errorf("no warning for the expired certificate: %v", w)
	}
	// PS256 is accepted.
	if _, err := Parse("c.hcl", []byte(certSrc(t, "  client_certificate {\n    cert_file = \""+cf+"\"\n    key_file = \""+kf+"\"\n    algorithm = \"PS256\"\n  }\n"))); err != nil {
		t.Errorf("PS256: %v", err)
	}
}

// TestClientCertificateCredential: the key may be a systemd credential
// (LoadCredential=name:/etc/oauthbridge/credentials/name, then
// key_file = credential_path("name")); an admin command without access to
// it still loads.
func TestClientCertificateCredential(t *testing.T) {
	dir, creds := t.TempDir(), t.TempDir()
	cf, kf, _ := writeClientCert(t, dir, "a", time.Now(), 365*24*time.Hour)
	if err := os.Rename(kf, filepath.Join(creds, "contoso-cert-key")); err != nil {
		t.Fatal(err)
	}
	src := certSrc(t, fmt.Sprintf("  client_certificate {\n    cert_file = %q\n    key_file  = credential_path(\"contoso-cert-key\")\n  }\n", cf))
	cfg, err := ParseWith("c.hcl", []byte(src), Options{CredentialsDir: creds})
	if err != nil {
		t.Fatalf("key from the credentials directory = %v", err)
	}
	if cfg.ProviderByName["c"].ClientCertificates[0].Key == nil {
		t.Fatal("key not loaded")
	}
	// An admin shell without the credential: the load is deferred.
	cfg, err = ParseWith("c.hcl", []byte(src), Options{CredentialsDir: t.TempDir(), DeferSecrets: true})
	if err != nil {
		t.Fatalf("deferred load = %v", err)
	}
	cc := cfg.ProviderByName["c"].ClientCertificates[0]
	if cc.Cert == nil || cc.Key != nil || cfg.SecretsError() == nil || !strings.Contains(cfg.SecretsError().Error(), "Unusable client certificate key") {
		t.Fatalf("cert %v key %v SecretsError %v", cc.Cert != nil, cc.Key != nil, cfg.SecretsError())
	}
	// credential() instead of credential_path(): refused without echoing the key.
	wrong := strings.Replace(src, "credential_path(", "credential(", 1)
	_, err = ParseWith("c.hcl", []byte(wrong), Options{CredentialsDir: creds})
	if err == nil || !strings.Contains(squash(err.Error()), "credential_path") || strings.Contains(err.Error(), "PRIVATE KEY") {
		t.Fatalf("key_file = credential(): %v", err)
	}
	if _, err := ParseWith("c.hcl", []byte(src), Options{CredentialsDir: t.TempDir()}); err == nil || !strings.Contains(err.Error(), "LoadCredential=contoso-cert-key:/etc/oauthbridge/credentials/contoso-cert-key") {
		t.Fatalf("strict load without the credential = %v", err)
	}
}

// squash joins the lines the diagnostic writer wrapped.
func squash(s string) string { return strings.Join(strings.Fields(s), " ") }
