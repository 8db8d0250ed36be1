package graph

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"
)

// tlsServer is an HTTPS server on 127.0.0.1 that reports each connection
// that served a request when it is closed, and the pool that trusts it.
func tlsServer(t *testing.T) (*httptest.Server, *x509.CertPool, <-chan net.Conn) {
	t.Helper()
	closed := make(chan net.Conn, 16)
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "ok")
	}))
	var mu sync.Mutex
	served := map[net.Conn]bool{} // failed TLS handshakes never become active
	srv.Config.ConnState = func(c net.Conn, s http.ConnState) {
		mu.Lock()
		defer mu.Unlock()
		switch s {
		case http.StateActive:
			served[c] = true
		case http.StateClosed, http.StateHijacked:
			if served[c] {
				closed <- c
			}
		}
	}
	srv.Config.ErrorLog = log.New(io.Discard, "", 0) // the refused handshakes are expected
	srv.StartTLS()
	t.Cleanup(srv.Close)
	pool := x509.NewCertPool()
	pool.AddCert(srv.Certificate())
	return srv, pool, closed
}

func get(t *testing.T, c *http.Client, url string) error {
	t.Helper()
	resp, err := c.Get(url)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if _, err := io.ReadAll(resp.Body); err != nil {
		return err
	}
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: status %d", url, resp.StatusCode)
	}
	return nil
}

func TestNewHTTPClient(t *testing.T) {
	srv, pool, _ := tlsServer(t)
	c := NewHTTPClient(pool)
	tr, ok := c.Transport.(*http.Transport)
	if !ok {
		t.Fatalf("transport is %T, want *http.Transport", c.Transport)
	}
	if tr.TLSClientConfig.MinVersion != tls.VersionTLS12 {
		t.Errorf("MinVersion = %#x, want TLS 1.2", tr.TLSClientConfig.MinVersion)
	}
	if tr.MaxIdleConnsPerHost != IdleConnsPerHost {
		t.Errorf("MaxIdleConnsPerHost = %d, want %d", tr.MaxIdleConnsPerHost, IdleConnsPerHost)
	}
	if tr.Proxy == nil {
		t.Error("the environment's proxy settings are not used (Proxy is nil)")
	}
	if tr == http.DefaultTransport {
		t.Error("the client shares http.DefaultTransport")
	}
	if err := get(t, c, srv.URL); err != nil {
		t.Fatalf("with the server's CA: %v", err)
	}
	// Without the CA the server is not trusted: rootCAs is what is checked.
	err := get(t, NewHTTPClient(nil), srv.URL)
	var ua x509.UnknownAuthorityError
	if !errors.As(err, &ua) {
		t.Fatalf("without the server's CA: error %v, want x509.UnknownAuthorityError", err)
	}
}

func TestHTTPClientsSameSnapshot(t *testing.T) {
	type snap struct{ name string }
	a, b := &snap{"a"}, &snap{"b"}
	var h HTTPClients[*snap] // the zero value is ready
	ca := h.Get("a", a, nil)
	if h.Get("a", a, nil) != ca {
		t.Fatal("the same snapshot got a new client")
	}
	cb := h.Get("b", b, nil)
	if cb == ca {
		t.Fatal("two providers share a client")
	}
	if h.Get("a", a, nil) != ca || h.Get("b", b, nil) != cb {
		t.Fatal("a second provider replaced the first one's client")
	}
	h.CloseIdleConnections()
	if h.Get("a", a, nil) != ca {
		t.Fatal("CloseIdleConnections dropped a client")
	}
}

func TestHTTPClientsReload(t *testing.T) {
	srv, pool, closed := tlsServer(t)
	type snap struct{ roots *x509.CertPool }
	// The first snapshot does not trust the server, the reloaded one does.
	old, reloaded := &snap{nil}, &snap{pool}
	var h HTTPClients[*snap]
	c1 := h.Get("contoso", old, old.roots)
	var ua x509.UnknownAuthorityError
	if err := get(t, c1, srv.URL); !errors.As(err, &ua) {
		t.Fatalf("first snapshot: error %v, want x509.UnknownAuthorityError", err)
	}
	c2 := h.Get("contoso", reloaded, reloaded.roots)
	if c2 == c1 {
		t.Fatal("a reloaded snapshot kept the old client")
	}
	if err := get(t, c2, srv.URL); err != nil {
		t.Fatalf("reloaded snapshot with the CA: %v", err)
	}
	if h.Get("contoso", reloaded, nil) != c2 {
		t.Fatal("the reloaded snapshot got a new client on its second Get")
	}

	// A third snapshot closes the idle connection c2 keeps to the server.
	c3 := h.Get("contoso", &snap{pool}, pool)
	select {
	case <-closed:
	case <-time.After(time.Minute): // a hang guard, not a timing assertion
		t.Fatal("the replaced client's idle connection was not closed")
	}
	if err := get(t, c3, srv.URL); err != nil {
		t.Fatalf("new client: %v", err)
	}
	// The replaced client still works for a request already holding it.
	if err := get(t, c2, srv.URL); err != nil {
		t.Fatalf("replaced client: %v", err)
	}
}

func TestHTTPClientsCloseIdleConnections(t *testing.T) {
	srv, pool, closed := tlsServer(t)
	var h HTTPClients[string]
	if err := get(t, h.Get("contoso", "v1", pool), srv.URL); err != nil {
		t.Fatal(err)
	}
	h.CloseIdleConnections()
	select {
	case <-closed:
	case <-time.After(time.Minute): // a hang guard, not a timing assertion
		t.Fatal("CloseIdleConnections left the idle connection open")
	}
}
