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
	var cr io.Reader = client
	if clientR != nil {
		cr = clientR
	}
	var ur io.Reader = up
	if upR != nil {
		ur = upR
	}
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
	wg.Add(2)
	go func() {
		defer wg.Done()
		st.Up = copyBuf(up, cr, act)
		closeBoth()
	}()
	go func() {
		defer wg.Done()
		st.Down = copyBuf(client, ur, act)
		closeBoth()
	}()
	wg.Wait()
	return st
}

var bufPool = sync.Pool{New: func() any { b := make([]byte, 32*1024); return &b }}

// copyBuf is io.Copy with a pooled buffer that also marks activity. A
// *bufio.Reader first hands out whatever it had buffered.
func copyBuf(dst io.Writer, src io.Reader, act *activity) int64 {
	if act == nil {
		if br, ok := src.(*bufio.Reader); ok {
			n, _ := br.WriteTo(dst)
			return n
		}
		bp := bufPool.Get().(*[]byte)
		defer bufPool.Put(bp)
		n, _ := io.CopyBuffer(onlyWriter{dst}, onlyReader{src}, *bp)
		return n
	}
	bp := bufPool.Get().(*[]byte)
	defer bufPool.Put(bp)
	buf := *bp
	var total int64
	for {
		n, err := src.Read(buf)
		if n > 0 {
			act.touch()
			w, werr := dst.Write(buf[:n])
			total += int64(w)
			if werr != nil {
				return total
			}
		}
		if err != nil {
			return total
		}
	}
}

// onlyWriter/onlyReader hide ReaderFrom/WriterTo so CopyBuffer uses the
// pooled buffer (net.TCPConn's splice path would otherwise allocate).
type onlyWriter struct{ io.Writer }
type onlyReader struct{ io.Reader }

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
	var check func()
	check = func() {
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
