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
	// A fresh install (the package ships this file) must accept no login:
	// the example's user block is commented out.
	if len(cfg.UserByName) != 0 {
		t.Errorf("config.hcl.example defines users %v; a packaged default must accept no login", cfg.UserByName)
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
		{"bad send_via", "account \"c\" {\n  provider = \"p\"\n  mailbox = \"c@contoso.com\"\n  send_via = \"ews\"\n}\n", []string{"Invalid send_via", "line 17", `"smtp"`, `"graph"`, `"auto"`}},
		{"graph_url with path", "provider \"q\" {\n  tenant = \"t\"\n  client_id = \"c\"\n  graph_url = \"https://graph.microsoft.com/v1.0\"\n}\n", []string{"Invalid graph_url", "line 17", "without a path"}},
		{"http graph_url off loopback", "provider \"q\" {\n  tenant = \"t\"\n  client_id = \"c\"\n  graph_url = \"http://graph.example.com\"\n}\n", []string{"Insecure graph_url", "line 17"}},
		{"bad auto_smtp_recheck", "smtp {\n  auto_smtp_recheck = \"often\"\n}\n", []string{"Invalid duration", "auto_smtp_recheck", "line 15"}},
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
		if isLoopbackHostPort(addr) != want {
			t.Errorf("isLoopbackHostPort(%q) = %v", addr, !want)
		}
	}
	if cfg.Shutdown != DefaultShutdownTimeout || cfg.POP3.Limits.IdleTimeout != 10*time.Minute {
		t.Errorf("defaults: shutdown %v pop3 idle %v", cfg.Shutdown, cfg.POP3.Limits.IdleTimeout)
	}
}

func TestCloudPresets(t *testing.T) {
	for cloud, want := range map[string][2]string{
		"usgov":     {"outlook.office365.us:993", "https://graph.microsoft.us"},
		"usgov-dod": {"outlook-dod.office365.us:993", "https://dod-graph.microsoft.us"},
		"china":     {"partner.outlook.cn:993", "https://microsoftgraph.chinacloudapi.cn"},
	} {
		src := base(t) + fmt.Sprintf("provider \"c\" {\n  tenant = \"t\"\n  client_id = \"c\"\n  cloud = %q\n}\n", cloud)
		cfg, err := Parse("ok.hcl", []byte(src))
		if err != nil {
			t.Fatal(err)
		}
		p := cfg.ProviderByName["c"]
		if p.IMAPServer != want[0] || p.GraphURL != want[1] || p.GraphResource != want[1] {
			t.Errorf("cloud %s: imap %q graph_url %q resource %q, want %q", cloud, p.IMAPServer, p.GraphURL, p.GraphResource, want)
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

// strictDiag parses src the way serve and check do (no InProcess) and
// returns the rendered diagnostics; it fails the test when src is accepted.
func strictDiag(t *testing.T, src string) string {
	t.Helper()
	_, err := ParseWith("bad.hcl", []byte(src), Options{})
	if err == nil {
		t.Fatalf("ParseWith accepted:\n%s", src)
	}
	var ce *Error
	if !errors.As(err, &ce) {
		t.Fatalf("ParseWith() error %T %v, want *Error", err, err)
	}
	var b bytes.Buffer
	ce.WriteTo(&b)
	return b.String()
}

// TestServeWouldMisuse: everything serve would reject at bind time or
// silently misuse is a diagnostic with the file and line.
func TestServeWouldMisuse(t *testing.T) {
	cases := []struct {
		name  string
		extra string
		want  []string
	}{
		{"port above 65535", "imap {\n  listen = [\"127.0.0.1:99999\"]\n}\n", []string{"Invalid port", "line 15", "1 to 65535"}},
		{"port 0", "pop3 {\n  listen = [\"127.0.0.1:0\"]\n}\n", []string{"Invalid port", "line 15", "port 0"}},
		{"port not a number", "smtp {\n  listen_tls = [\"127.0.0.1:smtps\"]\n}\ntls {\n  cert_file = \"/nonexistent\"\n  key_file = \"/nonexistent\"\n}\n", []string{"Invalid port", "line 15"}},
		{"admin port 0", "admin {\n  listen = \"127.0.0.1:0\"\n}\n", []string{"Invalid port", "admin listen", "line 15"}},
		{"upstream port", "provider \"q\" {\n  tenant = \"t\"\n  client_id = \"c\"\n  imap_server = \"outlook.office365.com:70000\"\n}\n", []string{"Invalid port", "line 17"}},
		{"imap and pop3 on one address", "imap {\n  listen = [\"127.0.0.1:1143\"]\n}\npop3 {\n  listen = [\"127.0.0.1:1143\"]\n}\n", []string{"Address used twice", "line 18", "imap listen at bad.hcl:15"}},
		{"listen and listen_tls", "imap {\n  listen = [\"127.0.0.1:1143\"]\n  listen_tls = [\"127.0.0.1:1143\"]\n}\n", []string{"Address used twice", "imap listen_tls", "line 16"}},
		{"wildcard against loopback", "smtp {\n  listen = [\"0.0.0.0:1110\"]\n  allow_insecure_auth = true\n}\n", []string{"Address used twice", "pop3 listen", "smtp listen"}},
		{"admin on a mail port", "admin {\n  listen = \"localhost:1587\"\n}\n", []string{"Address used twice", "admin listen", "smtp listen"}},
		{"twice in one list", "imap {\n  listen = [\"127.0.0.1:2143\", \"127.0.0.1:2143\"]\n}\n", []string{"Address used twice"}},
		{"relative state_dir", "", []string{"Relative state_dir", "line 1", "absolute"}},
		{"no mail listener", "imap {\n  listen = []\n}\npop3 {\n  listen = []\n}\nsmtp {\n  listen = []\n}\n", []string{"No mail listener"}},
		{"zero max_connections", "imap {\n  max_connections = 0\n}\n", []string{"Invalid max_connections", "line 15", "default (1000)"}},
		{"negative account limit", "account \"b\" {\n  provider = \"p\"\n  mailbox = \"b@contoso.com\"\n  smtp_max_connections = -1\n}\n", []string{"Invalid smtp_max_connections", "line 17"}},
		{"negative message size", "smtp {\n  max_message_bytes = -5\n}\n", []string{"Invalid max_message_bytes", "line 15"}},
		{"log_level", "log_level = \"loud\"\n", []string{"Invalid log_level", "line 14"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			src := base(t) + tc.extra
			if tc.name == "relative state_dir" {
				src = strings.Replace(src, "state_dir = \"/", "state_dir = \"", 1)
			}
			out := strictDiag(t, src)
			for _, w := range tc.want {
				if !strings.Contains(out, w) {
					t.Errorf("diagnostics lack %q:\n%s", w, out)
				}
			}
		})
	}
}

// TestServesNothing: an empty file, or one without an account, is refused
// by serve and check; in-process loads (tests) may have no account.
func TestServesNothing(t *testing.T) {
	for name, src := range map[string]string{
		"empty file": "",
		"no account": fmt.Sprintf("state_dir = %q\nprovider \"p\" {\n  tenant = \"t\"\n  client_id = \"c\"\n}\n", t.TempDir()),
	} {
		t.Run(name, func(t *testing.T) {
			if out := strictDiag(t, src); !strings.Contains(out, "No account") || !strings.Contains(out, "serve nothing") {
				t.Errorf("diagnostics:\n%s", out)
			}
		})
	}
	if _, err := Parse("t.hcl", []byte(fmt.Sprintf("state_dir = %q\n", t.TempDir()))); err != nil {
		t.Errorf("in-process Parse of a config without accounts = %v", err)
	}
	// Port 0 and the same port 0 twice are fine in-process.
	if _, err := Parse("t.hcl", []byte(base(t)+"imap {\n  listen = [\"127.0.0.1:0\"]\n}\npop3 {\n  listen = [\"127.0.0.1:0\"]\n}\nadmin {\n  listen = \"127.0.0.1:0\"\n}\n")); err != nil {
		t.Errorf("in-process Parse with port 0 = %v", err)
	}
}

func TestWarnings(t *testing.T) {
	src := base(t) + "account \"lonely\" {\n  provider = \"p\"\n  mailbox = \"l@contoso.com\"\n}\n"
	cfg, err := ParseWith("w.hcl", []byte(src), Options{})
	if err != nil {
		t.Fatal(err)
	}
	w := cfg.WarningsError()
	if w == nil {
		t.Fatal("no warning for an account without a user")
	}
	var b bytes.Buffer
	w.WriteTo(&b)
	if !strings.Contains(b.String(), "Account without a user") || !strings.Contains(b.String(), "line 14") || strings.Contains(b.String(), `"a"`) {
		t.Errorf("warnings:\n%s", b.String())
	}
}

// TestCredentialsDir: credential() reads -credentials, else
// $CREDENTIALS_DIRECTORY, else /etc/oauthbridge/credentials, and a missing
// one names the directory and the unit's LoadCredential= line.
func TestCredentialsDir(t *testing.T) {
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "client-secret"), []byte("s3cret\n"), 0o600)
	src := base(t) + "provider \"q\" {\n  tenant = \"t\"\n  client_id = \"c\"\n  client_secret = credential(\"client-secret\")\n}\n"
	t.Setenv("CREDENTIALS_DIRECTORY", "")
	os.Unsetenv("CREDENTIALS_DIRECTORY")
	cfg, err := ParseWith("c.hcl", []byte(src), Options{CredentialsDir: dir})
	if err != nil {
		t.Fatalf("ParseWith(-credentials) = %v", err)
	}
	if cfg.ProviderByName["q"].ClientSecret.Reveal() != "s3cret" || cfg.CredentialsDir != dir {
		t.Errorf("secret or dir wrong: dir %q", cfg.CredentialsDir)
	}
	if d, _ := ResolveCredentialsDir(""); d != DefaultCredentialsDir {
		t.Errorf("default dir = %q", d)
	}
	t.Setenv("CREDENTIALS_DIRECTORY", dir)
	if _, err := ParseWith("c.hcl", []byte(src), Options{}); err != nil {
		t.Errorf("ParseWith($CREDENTIALS_DIRECTORY) = %v", err)
	}
	empty := t.TempDir()
	_, err = ParseWith("c.hcl", []byte(src), Options{CredentialsDir: empty})
	var ce *Error
	if !errors.As(err, &ce) {
		t.Fatalf("missing credential: %v", err)
	}
	var b bytes.Buffer
	ce.WriteTo(&b)
	for _, want := range []string{"line 17", filepath.Join(empty, "client-secret") + " does not exist", "LoadCredential=client-secret:/etc/oauthbridge/credentials/client-secret", "-credentials"} {
		if !strings.Contains(b.String(), want) {
			t.Errorf("missing-credential diagnostic lacks %q:\n%s", want, b.String())
		}
	}
	// env() explains the EnvironmentFile trap.
	out := diagFor(t, base(t)+"provider \"q\" {\n  tenant = \"t\"\n  client_id = \"c\"\n  client_secret = env(\"OAUTHBRIDGE_TEST_UNSET\")\n}\n")
	for _, want := range []string{"EnvironmentFile", "set -a; . /etc/default/oauthbridge; set +a", "credential("} {
		if !strings.Contains(out, want) {
			t.Errorf("env() diagnostic lacks %q:\n%s", want, out)
		}
	}
}

// TestDeferSecrets: commands that only talk to the daemon load a
// configuration whose secrets they cannot read, and learn about them only
// when they ask.
func TestDeferSecrets(t *testing.T) {
	empty := t.TempDir()
	src := base(t) + `provider "q" {
  tenant = "t"
  client_id = "c"
  client_secret = credential("client-secret")
}
account "app" {
  provider = "q"
  mailbox = "app@contoso.com"
  flow = "app"
}
admin {
  password_hash = file("/nonexistent/admin.hash")
}
user "v" {
  password_hash = env("OAUTHBRIDGE_TEST_UNSET_HASH")
  account = "app"
}
`
	if _, err := ParseWith("d.hcl", []byte(src), Options{CredentialsDir: empty}); err == nil {
		t.Fatal("a strict load accepted unreadable secrets")
	}
	cfg, err := ParseWith("d.hcl", []byte(src), Options{CredentialsDir: empty, DeferSecrets: true})
	if err != nil {
		t.Fatalf("deferred load = %v", err)
	}
	if cfg.Admin.Username != "admin" || !cfg.Admin.PasswordHash.Unresolved() || !cfg.ProviderByName["q"].ClientSecret.Unresolved() {
		t.Error("unresolved secrets not marked, or the admin user not defaulted")
	}
	if s := fmt.Sprintf("%v %s", cfg.ProviderByName["q"].ClientSecret, cfg.Admin.PasswordHash); strings.Contains(s, "unresolved") {
		t.Errorf("a placeholder prints: %q", s)
	}
	err = cfg.SecretsError()
	var ce *Error
	if !errors.As(err, &ce) || len(ce.Diags) != 3 {
		t.Fatalf("SecretsError() = %v, want 3 diagnostics", err)
	}
	var b bytes.Buffer
	ce.WriteTo(&b)
	for _, want := range []string{"line 17", "line 25", "line 28", "Secret not available", "client-secret"} {
		if !strings.Contains(b.String(), want) {
			t.Errorf("SecretsError lacks %q:\n%s", want, b.String())
		}
	}
	// A failing function outside a secret attribute is still an error.
	bad := base(t) + "provider \"q\" {\n  tenant = env(\"OAUTHBRIDGE_TEST_UNSET\")\n  client_id = \"c\"\n}\n"
	if _, err := ParseWith("e.hcl", []byte(bad), Options{DeferSecrets: true}); err == nil || !strings.Contains(err.Error(), "OAUTHBRIDGE_TEST_UNSET") {
		t.Errorf("deferred load with env() in tenant = %v, want the env error", err)
	}
}

// TestCredentialPath: credential_path() names a file in the same
// credentials directory as credential(); an admin command that only talks
// to the daemon does not need the TLS key.
func TestCredentialPath(t *testing.T) {
	dir := t.TempDir()
	src := base(t) + "tls {\n  cert_file = credential_path(\"tls-cert\")\n  key_file  = credential_path(\"tls-key\")\n}\n"
	_, err := ParseWith("t.hcl", []byte(src), Options{CredentialsDir: dir})
	var ce *Error
	if !errors.As(err, &ce) {
		t.Fatalf("missing TLS credential = %v", err)
	}
	var b bytes.Buffer
	ce.WriteTo(&b)
	if !strings.Contains(b.String(), "LoadCredential=tls-cert:/etc/oauthbridge/credentials/tls-cert") || !strings.Contains(b.String(), "line 15") {
		t.Errorf("missing TLS credential:\n%s", b.String())
	}
	cfg, err := ParseWith("t.hcl", []byte(src), Options{CredentialsDir: dir, DeferSecrets: true})
	if err != nil {
		t.Fatalf("deferred load without the TLS key = %v", err)
	}
	if cfg.TLS.KeyFile != filepath.Join(dir, "tls-key") || cfg.SecretsError() == nil || !strings.Contains(cfg.SecretsError().Error(), "Unusable TLS certificate") {
		t.Errorf("key_file %q, SecretsError %v", cfg.TLS.KeyFile, cfg.SecretsError())
	}
	if out := strictDiag(t, base(t)+"tls {\n  cert_file = credential_path(\"../x\")\n  key_file  = \"k\"\n}\n"); !strings.Contains(out, "not a plain file name") {
		t.Errorf("path trick:\n%s", out)
	}
}

func TestStateDirAndPublicURL(t *testing.T) {
	f := filepath.Join(t.TempDir(), "file")
	os.WriteFile(f, nil, 0o600)
	src := strings.Replace(base(t), "state_dir = \"", "state_dir = \""+f+"\"\n# ", 1)
	if out := strictDiag(t, src); !strings.Contains(out, "state_dir is not a directory") || !strings.Contains(out, "line 1") {
		t.Errorf("state_dir file:\n%s", out)
	}
	// An http public_url for another host (a reverse proxy in front of the
	// loopback admin listener) is a warning; with the admin listener itself
	// off loopback it is an error (TestDiagnostics).
	cfg, err := ParseWith("w.hcl", []byte(base(t)+"admin {\n  public_url = \"http://bridge.example.com\"\n}\n"), Options{})
	if err != nil {
		t.Fatal(err)
	}
	var b bytes.Buffer
	if w := cfg.WarningsError(); w != nil {
		w.WriteTo(&b)
	}
	if !strings.Contains(b.String(), "https public_url") || !strings.Contains(b.String(), "http://bridge.example.com/oauth/callback") {
		t.Errorf("no warning for an http public_url off loopback:\n%s", b.String())
	}
	cfg, err = ParseWith("w.hcl", []byte(base(t)), Options{})
	if err != nil || cfg.WarningsError() != nil {
		t.Errorf("loopback admin: %v, warnings %v", err, cfg.WarningsError())
	}
}

func TestSendVia(t *testing.T) {
	src := base(t) + `provider "f" {
  tenant    = "t"
  client_id = "c"
  graph_url = "http://127.0.0.1:8443/"
}
account "g" {
  provider = "f"
  mailbox  = "g@contoso.com"
  send_via = "graph"
}
account "h" {
  provider = "f"
  mailbox  = "h@contoso.com"
  send_via = "auto"
}
smtp {
  auto_smtp_recheck = "30m"
}
`
	cfg, err := Parse("ok.hcl", []byte(src))
	if err != nil {
		t.Fatal(err)
	}
	if a := cfg.AccountByName["a"]; a.SendVia != SendViaSMTP || a.UsesGraph() || a.Provider.UsesGraph {
		t.Errorf("default send_via: %q uses graph %v, provider %v", a.SendVia, a.UsesGraph(), a.Provider.UsesGraph)
	}
	if a := cfg.AccountByName["a"].Provider; a.GraphURL != DefaultGraphURL || a.GraphResource != DefaultGraphURL {
		t.Errorf("default graph_url %q resource %q", a.GraphURL, a.GraphResource)
	}
	g, h := cfg.AccountByName["g"], cfg.AccountByName["h"]
	if g.SendVia != SendViaGraph || h.SendVia != SendViaAuto || !g.UsesGraph() || !h.UsesGraph() || !g.Provider.UsesGraph {
		t.Errorf("send_via: g %q h %q provider uses graph %v", g.SendVia, h.SendVia, g.Provider.UsesGraph)
	}
	// A local fake at graph_url; tokens are still for the cloud's Graph resource.
	if g.Provider.GraphURL != "http://127.0.0.1:8443" || g.Provider.GraphResource != "https://graph.microsoft.com" {
		t.Errorf("graph_url %q resource %q", g.Provider.GraphURL, g.Provider.GraphResource)
	}
	if cfg.SMTP.Limits.AutoSMTPRecheck != 30*time.Minute {
		t.Errorf("auto_smtp_recheck = %v", cfg.SMTP.Limits.AutoSMTPRecheck)
	}
}

func TestReadVia(t *testing.T) {
	src := base(t) + `account "g" {
  provider    = "p"
  mailbox     = "g@contoso.com"
  read_via    = "graph"
  pop3_folder = "/Inbox/Tickets/"
  pop3_delete = "delete"
}
`
	cfg, err := Parse("ok.hcl", []byte(src))
	if err != nil {
		t.Fatal(err)
	}
	a := cfg.AccountByName["a"]
	if a.ReadVia != ReadViaIMAP || a.ReadsViaGraph() || a.POP3Folder != DefaultPOP3Folder || a.POP3Delete != POP3DeleteMove {
		t.Errorf("defaults: read_via %q pop3_folder %q pop3_delete %q", a.ReadVia, a.POP3Folder, a.POP3Delete)
	}
	g := cfg.AccountByName["g"]
	if !g.ReadsViaGraph() || !g.UsesGraph() || !g.Provider.UsesGraph || g.POP3Folder != "Inbox/Tickets" || g.POP3Delete != POP3DeleteDelete {
		t.Errorf("g: read_via %q uses graph %v pop3_folder %q pop3_delete %q", g.ReadVia, g.UsesGraph(), g.POP3Folder, g.POP3Delete)
	}
	for _, bad := range []struct{ attr, want string }{
		{`read_via = "ews"`, "Invalid read_via"},
		{`pop3_delete = "expunge"`, "Invalid pop3_delete"},
	} {
		_, err := Parse("bad.hcl", []byte(base(t)+"account \"x\" {\n  provider = \"p\"\n  mailbox = \"x@contoso.com\"\n  "+bad.attr+"\n}\n"))
		if err == nil || !strings.Contains(err.Error(), bad.want) {
			t.Errorf("%s: err = %v, want %q", bad.attr, err, bad.want)
		}
	}
}
