package imapproxy

import (
	"bufio"
	"io"
	"net"
	"runtime"
	"strings"
	"testing"
)

// BenchmarkIdleSessionMemory opens sessions spliced to the stub upstream
// (TLS) that sit in IDLE, and reports the process's stack and heap in use
// and its goroutines per session. The figures include the in-process
// client's and the stub upstream's side of each session (the same in every
// run), so compare them between runs; the bridge process alone is measured
// by oauthbridge-bench -idle-only.
func BenchmarkIdleSessionMemory(b *testing.B) {
	const sessions = 500
	e := newEnv(b)
	for _, a := range e.cfg.Accounts {
		a.MaxConnections = 2 * sessions
	}
	e.cfg.IMAP.Limits.MaxConnections = 2 * sessions
	srv := e.start()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	go srv.Serve(ln, false)
	var stack, heap, gor float64
	for b.Loop() {
		before := memNow()
		conns := make([]net.Conn, sessions)
		for j := range conns {
			c, err := net.Dial("tcp", ln.Addr().String())
			if err != nil {
				b.Fatal(err)
			}
			conns[j] = c
			br := bufio.NewReaderSize(c, 512)
			idleExpect(b, br, "* OK")
			io.WriteString(c, "a1 LOGIN otrs secret\r\na2 IDLE\r\n")
			idleExpect(b, br, "a1 OK")
			idleExpect(b, br, "+ ")
		}
		after := memNow()
		stack += float64(after.stack-before.stack) / sessions
		heap += float64(after.heap-before.heap) / sessions
		gor += float64(after.goroutines-before.goroutines) / sessions
		for _, c := range conns {
			c.Close()
		}
		for srv.ActiveSessions() > 0 {
			runtime.Gosched()
		}
	}
	b.ReportMetric(stack/float64(b.N), "stack-B/session")
	b.ReportMetric(heap/float64(b.N), "heap-B/session")
	b.ReportMetric(gor/float64(b.N), "goroutines/session")
}

type memFigures struct{ stack, heap, goroutines int64 }

func memNow() memFigures {
	// Stacks shrink at most by half per GC: a few cycles let them settle.
	for range 5 {
		runtime.GC()
	}
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return memFigures{stack: int64(ms.StackInuse), heap: int64(ms.HeapInuse), goroutines: int64(runtime.NumGoroutine())}
}

func idleExpect(b *testing.B, br *bufio.Reader, prefix string) {
	b.Helper()
	for {
		line, err := br.ReadString('\n')
		if err != nil {
			b.Fatalf("want %q: %v", prefix, err)
		}
		if strings.HasPrefix(line, prefix) {
			return
		}
	}
}
