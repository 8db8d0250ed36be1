// Package splice copies bytes both ways between a logged-in client and its
// upstream server. From here on the bridge is protocol-blind: IDLE,
// literals, COMPRESS and anything else pass through untouched.
package splice

import (
	"bufio"
	"context"
	"io"
	"net"
	"sync"
	"time"
)

// Stats are the byte counts of a finished splice.
type Stats struct {
	Up   int64 // client -> server
	Down int64 // server -> client
}

// Run splices client and upstream until either side closes or ctx is done,
// then closes both connections and waits for both copy goroutines. The
// readers must be the bufio.Readers used before the splice (or nil to read
// the connections directly), so bytes already read ahead (a command
// pipelined behind LOGIN, data the server sent after its OK) are forwarded
// first. idle, if positive, closes a session on which neither side has sent
// anything for that long.
func Run(ctx context.Context, client net.Conn, clientR *bufio.Reader, up net.Conn, upR *bufio.Reader, idle time.Duration) Stats {
	_ = client.SetDeadline(time.Time{})
	_ = up.SetDeadline(time.Time{})
	setKeepAlive(client)
	setKeepAlive(up)

	var closeOnce sync.Once
	closeBoth := func() {
		closeOnce.Do(func() {
			client.Close()
			up.Close()
		})
	}
	stop := context.AfterFunc(ctx, closeBoth)
	defer stop()

	var act *activity
	if idle > 0 {
		act = newActivity(idle, closeBoth)
		defer act.stop()
	}

	var st Stats
	var wg sync.WaitGroup
	wg.Add(1)
	// The readers are handed over as arguments, not captured, so once a
	// direction has forwarded what its reader held the reader (and its
	// buffer) is garbage for the rest of a possibly days-long session. The
	// calling goroutine copies one direction itself: one stack fewer per
	// session.
	go func(br *bufio.Reader) {
		defer wg.Done()
		st.Up = copyConn(up, client, br, act)
		closeBoth()
	}(clientR)
	clientR = nil
	st.Down = copyConn(client, up, upR, act)
	closeBoth()
	wg.Wait()
	return st
}

// Copy buffer sizes. An idle direction blocks in Read holding only a small
// buffer; a direction that fills it borrows a large pooled one while data
// keeps flowing. Thousands of idle IMAP sessions (IDLE) then cost a few KiB
// each, not two 32 KiB buffers.
const (
	SmallBuffer = 1 << 10
	LargeBuffer = 64 << 10
)

var largePool = sync.Pool{New: func() any { b := make([]byte, LargeBuffer); return &b }}

// copyConn forwards what br (if any) has buffered, then copies src to dst
// until either fails. It returns the bytes written to dst.
func copyConn(dst io.Writer, src io.Reader, br *bufio.Reader, act *activity) int64 {
	var total int64
	if br != nil {
		if n := br.Buffered(); n > 0 {
			b, _ := br.Peek(n)
			if act != nil {
				act.touch()
			}
			w, err := dst.Write(b)
			total += int64(w)
			if err != nil {
				return total
			}
			// Not deferred: a deferred call would keep br, and its
			// buffer, alive for the rest of the session.
			br.Discard(n)
		}
		br = nil
	}
	small := make([]byte, SmallBuffer)
	buf := small
	var large *[]byte
	defer func() {
		if large != nil {
			largePool.Put(large)
		}
	}()
	for {
		n, err := src.Read(buf)
		if n > 0 {
			if act != nil {
				act.touch()
			}
			w, werr := dst.Write(buf[:n])
			total += int64(w)
			if werr != nil {
				return total
			}
		}
		if err != nil {
			return total
		}
		switch {
		case large == nil && n == len(small):
			large = largePool.Get().(*[]byte)
			buf = *large
		case large != nil && n < len(small):
			largePool.Put(large)
			large, buf = nil, small
		}
	}
}

func setKeepAlive(c net.Conn) {
	type keepAliver interface {
		SetKeepAlive(bool) error
		SetKeepAlivePeriod(time.Duration) error
	}
	if tc, ok := c.(interface{ NetConn() net.Conn }); ok { // *tls.Conn
		c = tc.NetConn()
	}
	if ka, ok := c.(keepAliver); ok {
		_ = ka.SetKeepAlive(true)
		_ = ka.SetKeepAlivePeriod(time.Minute)
	}
}

// activity closes the session when nothing moved in either direction for
// idle. It uses one timer reset at most once per second, not per read.
type activity struct {
	mu    sync.Mutex
	last  time.Time
	timer *time.Timer
	idle  time.Duration
}

func newActivity(idle time.Duration, onIdle func()) *activity {
	a := &activity{idle: idle, last: time.Now()}
	check := func() {
		a.mu.Lock()
		defer a.mu.Unlock()
		if rest := a.idle - time.Since(a.last); rest > 0 {
			a.timer.Reset(rest)
			return
		}
		onIdle()
	}
	a.mu.Lock()
	a.timer = time.AfterFunc(idle, check)
	a.mu.Unlock()
	return a
}

func (a *activity) touch() {
	a.mu.Lock()
	a.last = time.Now()
	a.mu.Unlock()
}

func (a *activity) stop() { a.timer.Stop() }
