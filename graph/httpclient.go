package graph

import (
	"crypto/tls"
	"crypto/x509"
	"net/http"
	"sync"
)

// IdleConnsPerHost is how many idle connections a client of NewHTTPClient
// keeps per host: one per concurrent request of four mailboxes (Graph
// allows 4 requests in flight per app and mailbox), instead of net/http's
// 2, so that parallel reads and uploads do not redo the TLS handshake.
const IdleConnsPerHost = 4 * 4

// NewHTTPClient returns the HTTP client the bridge uses for Microsoft's
// HTTPS endpoints (graph_url, and the identity platform where a caller
// has no client of its own): net/http's default transport (proxy from
// the environment, dial and TLS handshake timeouts, HTTP/2), TLS 1.2 or
// later, the server certificate checked against rootCAs (a provider's
// ca_file; nil: the system's roots), and IdleConnsPerHost idle
// connections per host.
func NewHTTPClient(rootCAs *x509.CertPool) *http.Client {
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.TLSClientConfig = &tls.Config{RootCAs: rootCAs, MinVersion: tls.VersionTLS12}
	tr.MaxIdleConnsPerHost = IdleConnsPerHost
	return &http.Client{Transport: tr}
}

// HTTPClients keeps one HTTP client (NewHTTPClient) per provider name,
// shared by every account and session of the provider. S is the
// provider's configuration snapshot (a *config.Provider): the same client
// is returned while the snapshot is the same value; a different snapshot
// (a reload) gets a new client, made with its root CAs, and the replaced
// client's idle connections are closed (requests in flight on it finish).
// The zero value is ready to use; it is safe for concurrent use.
type HTTPClients[S comparable] struct {
	mu      sync.Mutex
	clients map[string]snapClient[S]
}

type snapClient[S comparable] struct {
	snap S
	c    *http.Client
}

// Get returns the client of provider name for snapshot snap; rootCAs are
// used only when a client is made.
func (h *HTTPClients[S]) Get(name string, snap S, rootCAs *x509.CertPool) *http.Client {
	h.mu.Lock()
	defer h.mu.Unlock()
	old, ok := h.clients[name]
	if ok && old.snap == snap {
		return old.c
	}
	if ok {
		old.c.CloseIdleConnections()
	}
	if h.clients == nil {
		h.clients = map[string]snapClient[S]{}
	}
	c := NewHTTPClient(rootCAs)
	h.clients[name] = snapClient[S]{snap: snap, c: c}
	return c
}

// CloseIdleConnections closes the idle connections of every client (at
// shutdown); the clients stay usable.
func (h *HTTPClients[S]) CloseIdleConnections() {
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, sc := range h.clients {
		sc.c.CloseIdleConnections()
	}
}
