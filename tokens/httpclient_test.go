package tokens_test

import (
	"context"
	"crypto/x509"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	. "github.com/oauthbridge/oauthbridge/tokens"
)

// The token endpoint over HTTPS: the server certificate is checked against
// the provider's ca_file roots (RootCAs), and HTTP/2 is used as with every
// Microsoft endpoint of the bridge.
func TestTokenEndpointTLSRootsAndHTTP2(t *testing.T) {
	var h2 atomic.Int32
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !strings.HasSuffix(r.URL.Path, "/oauth2/v2.0/token") {
			http.NotFound(w, r)
			return
		}
		if r.ProtoMajor == 2 {
			h2.Add(1)
		}
		w.Header().Set("Content-Type", "application/json")
		w.Write([]byte(`{"access_token":"at-over-tls","token_type":"Bearer","expires_in":3600}`))
	}))
	srv.EnableHTTP2 = true
	srv.Config.ErrorLog = log.New(io.Discard, "", 0) // the refused handshake below
	srv.StartTLS()
	t.Cleanup(srv.Close)

	open := func(roots *x509.CertPool) *Manager {
		t.Helper()
		cfg := testConfig(t, filepath.Join(t.TempDir(), "state"), srv.URL, secret, testAccount{name: scanner, mailbox: "scan@contoso.com", flow: "app"})
		cfg.ProviderByName["p"].RootCAs = roots
		logger, _ := testLogger()
		m, err := NewManager(cfg, Options{Logger: logger, Registerer: testRegistry, RequestTimeout: 5 * time.Second})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { m.Close() })
		return m
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()

	// Without the test CA (system roots only) the certificate is refused.
	if _, err := open(nil).AccessToken(ctx, scanner); err == nil || !strings.Contains(err.Error(), "certificate") {
		t.Fatalf("AccessToken() without the CA = %v, want a certificate error", err)
	}
	roots := x509.NewCertPool()
	roots.AddCert(srv.Certificate())
	tok, err := open(roots).AccessToken(ctx, scanner)
	if err != nil || tok != "at-over-tls" {
		t.Fatalf("AccessToken() with the CA = %q, %v", tok, err)
	}
	if h2.Load() != 1 {
		t.Errorf("%d token requests over HTTP/2, want 1", h2.Load())
	}
}
