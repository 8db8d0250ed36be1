package cli

import (
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/oauthbridge/oauthbridge/config"
)

func TestCertNew(t *testing.T) {
	dir := t.TempDir()
	certFile, keyFile := filepath.Join(dir, "contoso.crt"), filepath.Join(dir, "keys", "contoso.key")
	code, o, e := run(t, "", "cert", "new", "-cn", "oauthbridge-contoso", "-cert", certFile, "-key", keyFile, "-days", "90", "-bits", "2048", "-provider", "contoso")
	if code != ExitOK {
		t.Fatalf("cert new: code %d\n%s\n%s", code, o, e)
	}
	st, err := os.Stat(keyFile)
	if err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("key file: %v, mode %v", err, st.Mode())
	}
	// The printed client_certificate block works in a configuration, and
	// the printed thumbprint is the certificate's.
	block := regexp.MustCompile(`(?s)\n  provider "contoso" \{\n.*?\n  \}\n`).FindString(o)
	if block == "" {
		t.Fatalf("no provider snippet in:\n%s", o)
	}
	block = strings.Replace(block, "# ... tenant, client_id as before; remove client_secret once the certificate works", "tenant = \"contoso.example\"\n client_id = \"id\"", 1)
	src := "state_dir = \"" + t.TempDir() + "\"\n" + block + "account \"scanner\" {\n  provider = \"contoso\"\n  mailbox = \"scan@contoso.example\"\n  flow = \"app\"\n}\n"
	cfg, err := config.Parse("snippet.hcl", []byte(src))
	if err != nil {
		t.Fatalf("the printed snippet does not load: %v\n%s", err, src)
	}
	cc := cfg.ProviderByName["contoso"].ClientCertificates[0]
	if !strings.Contains(o, "Thumbprint (SHA-1, as Entra shows it): "+cc.Thumbprint()) || !strings.Contains(o, config.CertThumbprintSHA256(cc.Cert)) {
		t.Fatalf("printed thumbprints do not match %s:\n%s", cc.Thumbprint(), o)
	}
	if cc.Cert.Subject.CommonName != "oauthbridge-contoso" || cc.Key.N.BitLen() != 2048 {
		t.Fatalf("certificate CN %q, key %d bits", cc.Cert.Subject.CommonName, cc.Key.N.BitLen())
	}
	if life := time.Until(cc.Cert.NotAfter); life < 89*24*time.Hour || life > 91*24*time.Hour {
		t.Fatalf("lifetime %v, want 90 days", life)
	}
	for _, want := range []string{"Certificates & secrets", "Upload certificate", "az ad app credential reset --id CLIENT_ID --cert @" + certFile + " --append", cc.Cert.NotAfter.UTC().Format("2006-01-02")} {
		if !strings.Contains(o, want) {
			t.Errorf("output lacks %q:\n%s", want, o)
		}
	}

	// No overwrite without -force; nothing is changed.
	before, _ := os.ReadFile(keyFile)
	if code, _, e := run(t, "", "cert", "new", "-cert", certFile, "-key", keyFile); code != ExitError || !strings.Contains(e, "refusing to overwrite") {
		t.Fatalf("overwrite: code %d, %s", code, e)
	}
	if after, _ := os.ReadFile(keyFile); string(after) != string(before) {
		t.Fatal("the key was overwritten without -force")
	}
	if code, _, e := run(t, "", "cert", "new", "-cert", certFile, "-key", keyFile, "-bits", "2048", "-force"); code != ExitOK {
		t.Fatalf("-force: code %d, %s", code, e)
	}
	if after, _ := os.ReadFile(keyFile); string(after) == string(before) {
		t.Fatal("-force did not write a new key")
	}

	for _, bad := range [][]string{
		{"cert", "new", "-cert", filepath.Join(dir, "x.crt")},
		{"cert", "new", "-cert", filepath.Join(dir, "x.crt"), "-key", filepath.Join(dir, "x.key"), "-days", "800"},
		{"cert", "new", "-cert", filepath.Join(dir, "x.crt"), "-key", filepath.Join(dir, "x.key"), "-bits", "1024"},
		{"cert", "new", "-cert", filepath.Join(dir, "x.crt"), "-key", filepath.Join(dir, "x.crt")},
		{"cert", "old"},
		{"cert"},
	} {
		if code, _, _ := run(t, "", bad...); code != ExitConfig {
			t.Errorf("%v: code %d, want %d", bad, code, ExitConfig)
		}
	}
	if _, err := os.Stat(filepath.Join(dir, "x.key")); err == nil {
		t.Error("a refused command wrote a key")
	}
}
