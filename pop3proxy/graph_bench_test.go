package pop3proxy

import (
	"fmt"
	"runtime"
	"testing"
)

// BenchmarkGraphPOP3Stat10k is a POP3 session (login, STAT, UIDL, QUIT) on
// a 10,000-message folder served from the fake's Graph, after a first
// session measured the sizes. It reports the heap the bridge keeps for the
// folder per message (bytes/msg).
//
//	go test -run '^$' -bench GraphPOP3Stat10k -benchmem ./pop3proxy/
func BenchmarkGraphPOP3Stat10k(b *testing.B) {
	const n = 10000
	g := newGraphFake(b)
	for i := range n {
		if err := g.f.Deliver(testMailbox, []byte(fmt.Sprintf("Subject: %d\r\n\r\nbody\r\n", i))); err != nil {
			b.Fatal(err)
		}
	}
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	_, addr := g.bridge(b, testConfig{})
	session := func() {
		p := dialPop(b, addr)
		if got := p.cmd("STAT"); len(got) < 6 {
			b.Fatalf("STAT = %q", got)
		}
		p.multi("UIDL")
		p.cmd("QUIT")
		p.tp.Close()
	}
	session() // the first session lists the folder and measures the sizes
	b.ResetTimer()
	for b.Loop() {
		session()
	}
	b.StopTimer()
	runtime.GC()
	runtime.ReadMemStats(&after)
	// The fake's own store grows too (delta states); this is an upper bound
	// of what the bridge keeps.
	b.ReportMetric(float64(int64(after.HeapAlloc)-int64(before.HeapAlloc))/n, "heap-bytes/msg")
}
