package fakems

import (
	"net"
	"sync"
)

// tracker records every accepted TCP connection so that DropConnections can
// cut them and Close can wait until their owners have let go of them.
type tracker struct {
	mu    sync.Mutex
	conns map[*trackedConn]struct{}
	wg    sync.WaitGroup // one count per connection not yet closed by its owner
}

func newTracker() *tracker {
	return &tracker{conns: make(map[*trackedConn]struct{})}
}

// dropAll closes the sockets of every open connection, abruptly. The owners
// notice on their next read or write and clean up; their own Close calls
// then release the wait group.
func (t *tracker) dropAll() {
	t.mu.Lock()
	conns := make([]*trackedConn, 0, len(t.conns))
	for c := range t.conns {
		conns = append(conns, c)
	}
	t.mu.Unlock()
	for _, c := range conns {
		_ = c.Conn.Close()
	}
}

// trackedListener wraps a listener so that every accepted connection is
// tracked.
type trackedListener struct {
	net.Listener
	t *tracker
}

func (l *trackedListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	tc := &trackedConn{Conn: c, t: l.t}
	l.t.mu.Lock()
	l.t.conns[tc] = struct{}{}
	l.t.wg.Add(1)
	l.t.mu.Unlock()
	return tc, nil
}

var _ net.Conn = (*trackedConn)(nil)

// trackedConn is a connection whose owner's Close is recorded.
type trackedConn struct {
	net.Conn
	t    *tracker
	once sync.Once
}

func (c *trackedConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(func() {
		c.t.mu.Lock()
		delete(c.t.conns, c)
		c.t.mu.Unlock()
		c.t.wg.Done()
	})
	return err
}
