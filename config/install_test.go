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
	"io/fs"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// writeSelfSigned writes a PEM certificate and key for 127.0.0.1 into dir
// under the names cert and key.
func writeSelfSigned(t *testing.T, dir, cert, key string) {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: "bridge.test"},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
		DNSNames:     []string{"bridge.test"},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &k.PublicKey, k)
	if err != nil {
		t.Fatal(err)
	}
	kder, err := x509.MarshalECPrivateKey(k)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, cert), pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, key), pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder}), 0o600); err != nil {
		t.Fatal(err)
	}
}

// The tls block names its certificate and key with credential_path(), as the
// packaged unit passes them with LoadCredential=tls-cert:... and tls-key:....
func TestTLSFromCredentialPath(t *testing.T) {
	dir := t.TempDir()
	writeSelfSigned(t, dir, "tls-cert", "tls-key")
	t.Setenv("CREDENTIALS_DIRECTORY", dir)
	src := base(t) + "tls {\n  cert_file = credential_path(\"tls-cert\")\n  key_file  = credential_path(\"tls-key\")\n}\n"
	cfg, err := Parse("tls.hcl", []byte(src))
	if err != nil {
		var ce *Error
		if errors.As(err, &ce) {
			var b bytes.Buffer
			ce.WriteTo(&b)
			t.Fatalf("Parse: %s", b.String())
		}
		t.Fatal(err)
	}
	if cfg.LocalTLS == nil || len(cfg.LocalTLS.Certificates) != 1 {
		t.Fatalf("LocalTLS = %+v, want the credential's certificate", cfg.LocalTLS)
	}
	if got, want := cfg.TLS.KeyFile, filepath.Join(dir, "tls-key"); got != want {
		t.Errorf("key_file = %q, want %q", got, want)
	}

	// A credential the unit does not load is reported at its line, naming the fix.
	out := diagFor(t, base(t)+"tls {\n  cert_file = credential_path(\"tls-cert\")\n  key_file  = credential_path(\"tls-missing\")\n}\n")
	for _, want := range []string{"LoadCredential=tls-missing", `credential_path("tls-missing")`} {
		if !strings.Contains(out, want) {
			t.Errorf("missing credential: diagnostics lack %q:\n%s", want, out)
		}
	}
	if out := diagFor(t, base(t)+"tls {\n  cert_file = credential_path(\"../tls-cert\")\n  key_file  = credential_path(\"tls-key\")\n}\n"); !strings.Contains(out, "not a plain file name") {
		t.Errorf("credential_path path trick not refused:\n%s", out)
	}
	os.Unsetenv("CREDENTIALS_DIRECTORY")
	if out := diagFor(t, src); !strings.Contains(out, "$CREDENTIALS_DIRECTORY is not set") {
		t.Errorf("unset CREDENTIALS_DIRECTORY not explained:\n%s", out)
	}
}

// A configuration file that cannot be read is a configuration error (exit
// status 2 for serve, so systemd does not restart it in a loop) whose text
// names the fix.
func TestUnreadableConfig(t *testing.T) {
	absent := filepath.Join(t.TempDir(), "absent.hcl")
	_, err := Load(absent)
	var ce *Error
	if !errors.As(err, &ce) {
		t.Fatalf("Load(absent) = %T %v, want *Error", err, err)
	}
	var b bytes.Buffer
	ce.WriteTo(&b)
	for _, want := range []string{absent, "no such file", "config.hcl.example"} {
		if !strings.Contains(b.String(), want) {
			t.Errorf("absent file: diagnostics lack %q:\n%s", want, b.String())
		}
	}

	// Permission denied cannot be provoked as root (tests run as root in
	// CI), so the diagnostic is built from the error os.ReadFile returns;
	// test/install/run.sh provokes the real one as the service user.
	p := filepath.Join(t.TempDir(), "config.hcl")
	os.WriteFile(p, []byte("x"), 0o640)
	d := readError(p, &fs.PathError{Op: "open", Path: p, Err: syscall.EACCES})
	for _, want := range []string{"permission denied", "chown root:oauthbridge " + p, "chmod 0640 " + p, "mode 0640"} {
		if !strings.Contains(d.Detail, want) {
			t.Errorf("permission denied: detail lacks %q: %s", want, d.Detail)
		}
	}
}
