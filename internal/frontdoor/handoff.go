package frontdoor

import (
	"net"
	"sync"
)

// Handoff is a net.Listener for a library that owns its connection loop
// (go-smtp's Server.Serve). The front door accepts, handshakes, counts and
// drains; each admitted session is handed over through Accept. So the
// library never sees an accept error (its own retry policy never runs) and
// gets implicit-TLS connections with the handshake done.
//
// Use Handoff.Serve as Options.Serve and give the Handoff to the library's
// Serve; Close it after Shutdown to end the library's loop.
type Handoff struct {
	addr      net.Addr
	ch        chan net.Conn
	closeOnce sync.Once
	done      chan struct{}
}

// NewHandoff returns a Handoff whose Addr is addr (may be nil).
func NewHandoff(addr net.Addr) *Handoff {
	return &Handoff{addr: addr, ch: make(chan net.Conn), done: make(chan struct{})}
}

// Serve hands the session's connection to the library and waits until the
// connection is closed (by the library, or by Shutdown's cut), so the
// session's lifetime is the connection's, as for the other proxies.
func (h *Handoff) Serve(s *Session) {
	select {
	case h.ch <- s.Conn():
	case <-h.done:
		return
	}
	<-s.Closed()
}

// Accept implements net.Listener.
func (h *Handoff) Accept() (net.Conn, error) {
	select {
	case c := <-h.ch:
		return c, nil
	case <-h.done:
		return nil, net.ErrClosed
	}
}

// Close implements net.Listener: Accept returns net.ErrClosed from now on.
func (h *Handoff) Close() error {
	h.closeOnce.Do(func() { close(h.done) })
	return nil
}

// Addr implements net.Listener.
func (h *Handoff) Addr() net.Addr {
	if h.addr == nil {
		return &net.TCPAddr{}
	}
	return h.addr
}
