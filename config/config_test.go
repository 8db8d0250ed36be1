package config

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/bcrypt"
)

func testHash(t *testing.T) string {
	t.Helper()
	h, err := bcrypt.GenerateFromPassword([]byte("pw"), bcrypt.MinCost)
	if err != nil {
		t.Fatal(err)
	}
	return string(h)
}

func TestExampleDecodes(t *testing.T) {
	cfg, err := Load("../config.hcl.example")
	if err != nil {
		var ce *Error
		if errors.As(err, &ce) {
			var b bytes.Buffer
			ce.WriteTo(&b)
			t.Fatalf("Load(config.hcl.example) failed:\n%s", b.String())
		}
		t.Fatal(err)
	}
	a := cfg.AccountByName["helpdesk"]
	if a == nil || a.Provider == nil || a.Provider.Name != "contoso" {
		t.Fatalf("account helpdesk not resolved: %+v", a)
	}
	if a.LoginHint() != "alice@contoso.com" || a.MaxConnections != 10 || a.SMTPMaxConnections != DefaultAccountSMTPConnections {
		t.Errorf("account fields: hint=%q max=%d smtp=%d", a.LoginHint(), a.MaxConnections, a.SMTPMaxConnections)
	}
	if !a.SenderAllowed("SUPPORT@contoso.com") || !a.SenderAllowed("helpdesk@CONTOSO.com") || a.SenderAllowed("ceo@contoso.com") {
		t.Error("SenderAllowed is wrong")
	}
	if cfg.UserByName["otrs"].Account != a {
		t.Error("user otrs not mapped to helpdesk")
	}
	p := a.Provider
	if p.IMAPServer != "outlook.office365.com:993" || p.SMTPServer != "smtp.office365.com:587" || p.ScopePrefix != "https://outlook.office.com/" {
		t.Errorf("global preset not applied: %+v", p)
	}
	if cfg.IMAP.Limits.IdleTimeout != DefaultIMAPIdleTimeout || cfg.SMTP.Limits.MaxMessageBytes != DefaultMaxMessageBytes {
		t.Errorf("defaults not applied: %+v %+v", cfg.IMAP.Limits, cfg.SMTP.Limits)
	}
	if cfg.Admin.PublicURL != "https://bridge.example.com" {
		t.Errorf("public_url = %q", cfg.Admin.PublicURL)
	}
}

// diagFor parses src and returns the rendered diagnostics; it fails the
// test when src is accepted.
func diagFor(t *testing.T, src string) string {
	t.Helper()
	_, err := Parse("bad.hcl", []byte(src))
	if err == nil {
		t.Fatalf("Parse accepted:\n%s", src)
	}
	var ce *Error
	if !errors.As(err, &ce) {
		t.Fatalf("Parse() error %T %v, want *Error", err, err)
	}
	var b bytes.Buffer
	ce.WriteTo(&b)
	return b.String()
}

func base(t *testing.T) string {
	return fmt.Sprintf(`state_dir = %q
provider "p" {
  tenant    = "contoso.onmicrosoft.com"
  client_id = "id"
}
account "a" {
  provider = "p"
  mailbox  = "a@contoso.com"
}
user "u" {
  password_hash = %q
  account       = "a"
}
`, t.TempDir(), testHash(t))
}

func TestDiagnostics(t *testing.T) {
	hash := testHash(t)
	cases := []struct {
		name  string
		extra string
		want  []string // substrings of the rendered diagnostics
	}{
		{"unknown attribute", "bogus = 1\n", []string{"Unsupported argument", "line 14", "bogus = 1"}},
		{"unknown block", "imapp {\n}\n", []string{"Unsupported block type", "line 14"}},
		{"undefined provider", "account \"b\" {\n  provider = \"nope\"\n  mailbox = \"b@x.com\"\n}\n", []string{"Undefined provider", `provider = "nope"`, "line 15"}},
		{"undefined account", fmt.Sprintf("user \"v\" {\n  password_hash = %q\n  account = \"zzz\"\n}\n", hash), []string{"Undefined account", `account = "zzz"`}},
		{"duplicate user", fmt.Sprintf("user \"u\" {\n  password_hash = %q\n  account = \"a\"\n}\n", hash), []string{"Duplicate user", "already defined at bad.hcl:10"}},
		{"duplicate account", "account \"a\" {\n  provider = \"p\"\n  mailbox = \"x@y.z\"\n}\n", []string{"Duplicate account"}},
		{"malformed hash", "user \"w\" {\n  password_hash = \"secret-in-clear\"\n  account = \"a\"\n}\n", []string{"Malformed bcrypt hash", "line 15", "hash-password"}},
		{"plaintext on network", "imap {\n  listen = [\"0.0.0.0:143\"]\n}\n", []string{"Plaintext passwords on a network address", "line 15", "allow_insecure_auth"}},
		{"listen_tls without cert", "smtp {\n  listen_tls = [\"127.0.0.1:4650\"]\n}\n", []string{"listen_tls needs a certificate"}},
		{"unreadable cert", "tls {\n  cert_file = \"/nonexistent/c.pem\"\n  key_file = \"/nonexistent/k.pem\"\n}\n", []string{"Unusable TLS certificate", "line 15"}},
		{"bad duration", "imap {\n  preauth_timeout = \"5 minutes\"\n}\n", []string{"Invalid duration", "line 15", `"5 minutes"`}},
		{"idle too short", "imap {\n  idle_timeout = \"5m\"\n}\n", []string{"idle_timeout too short"}},
		{"missing env", "provider \"q\" {\n  tenant = \"t\"\n  client_id = \"c\"\n  client_secret = env(\"OAUTHBRIDGE_TEST_UNSET_VAR\")\n}\n", []string{"OAUTHBRIDGE_TEST_UNSET_VAR", "is not set", "line 17"}},
		{"app flow without secret", "account \"c\" {\n  provider = \"p\"\n  mailbox = \"c@contoso.com\"\n  flow = \"app\"\n}\n", []string{"App flow needs a client secret"}},
		{"bad flow", "account \"c\" {\n  provider = \"p\"\n  mailbox = \"c@contoso.com\"\n  flow = \"magic\"\n}\n", []string{"Invalid flow", "line 17"}},
		{"unknown cloud", "provider \"q\" {\n  tenant = \"t\"\n  client_id = \"c\"\n  cloud = \"mars\"\n}\n", []string{"Unknown cloud"}},
		{"http authority off loopback", "provider \"q\" {\n  tenant = \"t\"\n  client_id = \"c\"\n  authority = \"http://login.example.com\"\n}\n", []string{"Insecure authority"}},
		{"admin off loopback unprotected", "admin {\n  listen = \"0.0.0.0:8025\"\n}\n", []string{"Unprotected admin listener"}},
		{"admin off loopback tls off", fmt.Sprintf("admin {\n  listen = \"0.0.0.0:8025\"\n  password_hash = %q\n  tls = false\n}\n", hash), []string{"Admin listener without TLS", "line 17"}},
		{"admin off loopback without tls block", fmt.Sprintf("admin {\n  listen = \"0.0.0.0:8025\"\n  password_hash = %q\n}\n", hash), []string{"Admin listener needs a tls block", "line 15"}},
		{"admin tls on loopback without tls block", "admin {\n  tls = true\n}\n", []string{"Admin listener needs a tls block"}},
		{"admin off loopback http public_url", fmt.Sprintf("admin {\n  listen = \"0.0.0.0:8025\"\n  password_hash = %q\n  public_url = \"http://bridge.example.com\"\n}\n", hash), []string{"Insecure public_url", "line 17"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			out := diagFor(t, base(t)+tc.extra)
			for _, w := range tc.want {
				if !strings.Contains(out, w) {
					t.Errorf("diagnostics lack %q:\n%s", w, out)
				}
			}
		})
	}
}

func TestFunctionsAndSecrets(t *testing.T) {
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "secretfile"), []byte("from-file-secret\n"), 0o600)
	os.WriteFile(filepath.Join(dir, "cred"), []byte("from-credential\r\n"), 0o600)
	t.Setenv("OAUTHBRIDGE_TEST_SECRET", "from-env-secret")
	t.Setenv("CREDENTIALS_DIRECTORY", dir)
	src := base(t) + fmt.Sprintf(`provider "e" {
  tenant = "t1"
  client_id = "c"
  client_secret = env("OAUTHBRIDGE_TEST_SECRET")
}
provider "f" {
  tenant = "t2"
  client_id = "c"
  client_secret = file(%q)
}
provider "g" {
  tenant = "t3"
  client_id = "c"
  client_secret = credential("cred")
}
`, filepath.Join(dir, "secretfile"))
	cfg, err := Parse("ok.hcl", []byte(src))
	if err != nil {
		t.Fatal(err)
	}
	for name, want := range map[string]string{"e": "from-env-secret", "f": "from-file-secret", "g": "from-credential"} {
		if got := cfg.ProviderByName[name].ClientSecret.Reveal(); got != want {
			t.Errorf("provider %s secret = %q, want %q", name, got, want)
		}
	}
	// Secrets never print.
	var logBuf bytes.Buffer
	l := slog.New(slog.NewJSONHandler(&logBuf, nil))
	p := cfg.ProviderByName["e"]
	l.Info("x", "secret", p.ClientSecret, "provider", fmt.Sprintf("%v %+v %#v", p.ClientSecret, p.ClientSecret, p.ClientSecret))
	if strings.Contains(logBuf.String(), "from-env-secret") || !strings.Contains(logBuf.String(), Redacted) {
		t.Errorf("secret leaked or not redacted: %s", logBuf.String())
	}
	if s := fmt.Sprintf("%v", *p); strings.Contains(s, "from-env-secret") {
		t.Errorf("provider struct prints its secret: %s", s)
	}

	// credential() refuses path tricks and explains a missing directory.
	out := diagFor(t, base(t)+"provider \"h\" {\n  tenant = \"t\"\n  client_id = \"c\"\n  client_secret = credential(\"../etc/passwd\")\n}\n")
	if !strings.Contains(out, "not a plain file name") {
		t.Errorf("credential path trick not refused:\n%s", out)
	}
	t.Setenv("CREDENTIALS_DIRECTORY", "")
	os.Unsetenv("CREDENTIALS_DIRECTORY")
	out = diagFor(t, base(t)+"provider \"h\" {\n  tenant = \"t\"\n  client_id = \"c\"\n  client_secret = credential(\"x\")\n}\n")
	if !strings.Contains(out, "LoadCredential") {
		t.Errorf("missing CREDENTIALS_DIRECTORY not explained:\n%s", out)
	}
}

func TestLoopbackAndInsecure(t *testing.T) {
	src := base(t) + "imap {\n  listen = [\"0.0.0.0:1143\"]\n  allow_insecure_auth = true\n}\npop3 {\n  listen = [\"[::1]:1110\", \"localhost:1111\"]\n}\n"
	cfg, err := Parse("ok.hcl", []byte(src))
	if err != nil {
		t.Fatal(err)
	}
	if !cfg.IMAP.AllowInsecureAuth {
		t.Error("allow_insecure_auth not decoded")
	}
	for addr, want := range map[string]bool{"127.0.0.1:1": true, "[::1]:1": true, "localhost:1": true, "0.0.0.0:1": false, ":1143": false, "10.0.0.1:1": false} {
		if IsLoopback(addr) != want {
			t.Errorf("IsLoopback(%q) = %v", addr, !want)
		}
	}
	if cfg.Shutdown != DefaultShutdownTimeout || cfg.POP3.Limits.IdleTimeout != 10*time.Minute {
		t.Errorf("defaults: shutdown %v pop3 idle %v", cfg.Shutdown, cfg.POP3.Limits.IdleTimeout)
	}
}

func TestCloudPresets(t *testing.T) {
	for cloud, imap := range map[string]string{"usgov": "outlook.office365.us:993", "usgov-dod": "outlook-dod.office365.us:993", "china": "partner.outlook.cn:993"} {
		src := base(t) + fmt.Sprintf("provider \"c\" {\n  tenant = \"t\"\n  client_id = \"c\"\n  cloud = %q\n}\n", cloud)
		cfg, err := Parse("ok.hcl", []byte(src))
		if err != nil {
			t.Fatal(err)
		}
		if got := cfg.ProviderByName["c"].IMAPServer; got != imap {
			t.Errorf("cloud %s imap = %q, want %q", cloud, got, imap)
		}
	}
}

// Off loopback the admin listener serves TLS with the tls block, and its
// default public_url is https; on loopback both stay plain unless asked.
func TestAdminTLS(t *testing.T) {
	dir := t.TempDir()
	certFile, keyFile := writeTestCert(t, dir)
	tlsBlock := fmt.Sprintf("tls {\n  cert_file = %q\n  key_file = %q\n}\n", certFile, keyFile)
	for _, tc := range []struct {
		admin   string
		useTLS  bool
		public  string
		metrics bool
	}{
		{"", false, "http://127.0.0.1:8025", false},
		{fmt.Sprintf("admin {\n  listen = \"0.0.0.0:8025\"\n  password_hash = %q\n}\n", testHash(t)), true, "https://0.0.0.0:8025", false},
		{"admin {\n  tls = true\n  metrics_public = true\n}\n", true, "https://127.0.0.1:8025", true},
	} {
		c, err := Parse("t.hcl", []byte(base(t)+tlsBlock+tc.admin))
		if err != nil {
			t.Fatalf("Parse(%q) = %v", tc.admin, err)
		}
		if c.Admin.UseTLS != tc.useTLS || c.Admin.PublicURL != tc.public || c.Admin.MetricsPublic != tc.metrics {
			t.Errorf("admin %q: UseTLS=%v PublicURL=%q MetricsPublic=%v, want %v %q %v",
				tc.admin, c.Admin.UseTLS, c.Admin.PublicURL, c.Admin.MetricsPublic, tc.useTLS, tc.public, tc.metrics)
		}
	}
}

func writeTestCert(t *testing.T, dir string) (certFile, keyFile string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "bridge.test"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), DNSNames: []string{"bridge.test"}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	kb, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	certFile, keyFile = filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600)
	os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kb}), 0o600)
	return certFile, keyFile
}
