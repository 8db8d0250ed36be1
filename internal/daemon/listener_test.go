package daemon

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/oauthbridge/oauthbridge/config"
)

// A listener that dies while the bridge runs (here: closed behind the
// daemon's back, as a broken socket would be) makes the bridge not ready,
// and Run returns an error naming the listener, so the process exits
// non-zero and systemd restarts it.
func TestListenerDeathExitsRun(t *testing.T) {
	e := newEnv(t)
	e.writeConfig(t, map[string]string{"otrs": "pw-otrs-3"}, "")
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
	waitFor(t, func() bool { return d.Addr("pop3") != "" && d.ready.Load() })
	if err := d.readyErr(); err != nil {
		t.Fatalf("readyErr() = %v before the failure", err)
	}
	addr := d.Addr("pop3")
	d.mu.Lock()
	for _, l := range d.listeners {
		if l.proto == "pop3" && !l.implicitTLS {
			l.ln.Close()
		}
	}
	d.mu.Unlock()

	select {
	case err := <-done:
		if err == nil || !strings.Contains(err.Error(), "pop3 listener "+addr) {
			t.Errorf("Run() = %v, want an error naming the pop3 listener %s", err, addr)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("Run did not return after a listener died")
	}
	if err := d.readyErr(); err == nil || !strings.Contains(err.Error(), addr) {
		t.Errorf("readyErr() = %v, want the listener failure", err)
	}
	if logs := e.logs.String(); !strings.Contains(logs, "listener stopped") || !strings.Contains(logs, addr) {
		t.Errorf("no log line names the stopped listener:\n%s", logs)
	}
}

// With admin tls = true (the default off loopback) the admin listener
// speaks TLS with the tls block's certificate: a plain HTTP client gets
// nothing useful, an HTTPS client gets /healthz.
func TestAdminListenerTLS(t *testing.T) {
	e := newEnv(t)
	e.writeConfig(t, map[string]string{"otrs": "pw-otrs-4"}, "")
	certFile, keyFile, pool := writeLocalCert(t, e.dir)
	src, err := os.ReadFile(e.cfgPath)
	if err != nil {
		t.Fatal(err)
	}
	src = bytes.Replace(src, []byte(`admin { listen = "127.0.0.1:0" }`), []byte(fmt.Sprintf(
		"admin {\n  listen = \"127.0.0.1:0\"\n  tls = true\n}\ntls {\n  cert_file = %q\n  key_file = %q\n}\n", certFile, keyFile)), 1)
	if err := os.WriteFile(e.cfgPath, src, 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, err := config.Load(e.cfgPath)
	if err != nil {
		t.Fatal(err)
	}
	if !cfg.Admin.UseTLS || !strings.HasPrefix(cfg.Admin.PublicURL, "https://") {
		t.Fatalf("admin UseTLS = %v, public_url = %q; want TLS and https", cfg.Admin.UseTLS, cfg.Admin.PublicURL)
	}
	d, err := New(cfg, Options{Logger: e.log})
	if err != nil {
		t.Fatal(err)
	}
	if err := d.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	defer d.Shutdown(context.Background())
	addr := d.Addr("admin")
	client := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
	resp, err := client.Get("https://" + addr + "/healthz")
	if err != nil {
		t.Fatalf("GET https://%s/healthz = %v", addr, err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Errorf("/healthz over TLS = %d, want 200", resp.StatusCode)
	}
	plain := &http.Client{Timeout: 10 * time.Second}
	if resp, err := plain.Get("http://" + addr + "/healthz"); err == nil {
		resp.Body.Close()
		if resp.StatusCode == 200 {
			t.Errorf("plain HTTP to the TLS admin listener got 200")
		}
	}
}

func writeLocalCert(t *testing.T, dir string) (certFile, keyFile string, pool *x509.CertPool) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "127.0.0.1"},
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)}, NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	kb, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	certFile, keyFile = filepath.Join(dir, "local.pem"), filepath.Join(dir, "local.key")
	os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600)
	os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kb}), 0o600)
	pool = x509.NewCertPool()
	pool.AddCert(leaf)
	return certFile, keyFile, pool
}
