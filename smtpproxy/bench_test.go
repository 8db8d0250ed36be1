package smtpproxy

import (
	"crypto/tls"
	"io"
	"runtime"
	"runtime/metrics"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/oauthbridge/oauthbridge/tokens"
	"github.com/oauthbridge/oauthbridge/tokens/tokenstest"
)

// bodyGen produces an n-byte CRLF message without holding it in memory.
type bodyGen struct {
	left int64
	col  int
}

func (g *bodyGen) Read(p []byte) (int, error) {
	if g.left <= 0 {
		return 0, io.EOF
	}
	n := 0
	for n < len(p) && g.left > 0 {
		var c byte
		switch {
		case g.col == 76:
			c = '\r'
		case g.col == 77:
			c, g.col = '\n', -1
		default:
			c = 'A' + byte(g.col%26)
		}
		p[n] = c
		n++
		g.col++
		g.left--
	}
	return n, nil
}

// heapPeak samples the live heap until stopped and returns the peak. It
// reads runtime/metrics, which does not stop the world as
// runtime.ReadMemStats does (every 2 ms that would dominate a CPU profile).
func heapPeak() (stop func() uint64) {
	var peak atomic.Uint64
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		sample := []metrics.Sample{{Name: "/memory/classes/heap/objects:bytes"}}
		t := time.NewTicker(2 * time.Millisecond)
		defer t.Stop()
		for {
			metrics.Read(sample)
			if v := sample[0].Value.Uint64(); v > peak.Load() {
				peak.Store(v)
			}
			select {
			case <-done:
				return
			case <-t.C:
			}
		}
	}()
	return func() uint64 { close(done); wg.Wait(); return peak.Load() }
}

// BenchmarkRelay50MB streams a 50 MB message through the bridge to an
// upstream that discards it, and reports the process's peak heap growth
// (the client generates the body on the fly, so the growth is the
// bridge's plus go-smtp's buffers).
func BenchmarkRelay50MB(b *testing.B) {
	const size = 50 << 20
	ms := startStubMS(b)
	ms.set(func(s *stubMS) { s.discardData = true })
	br := startBridge(b, ms.addr, bridgeOpts{smtpExtra: `max_message_bytes = 104857600`, tokens: tokenstest.StaticSource{"helpdesk": ms.issue("helpdesk@contoso.com")}})
	c := loginClient(b, br.addr, "otrs")

	var worst uint64
	b.SetBytes(size)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		runtime.GC()
		before := []metrics.Sample{{Name: "/memory/classes/heap/objects:bytes"}}
		metrics.Read(before)
		stop := heapPeak()
		if err := c.Mail("helpdesk@contoso.com", nil); err != nil {
			b.Fatal(err)
		}
		if err := c.Rcpt("x@example.com", nil); err != nil {
			b.Fatal(err)
		}
		w, err := c.Data()
		if err != nil {
			b.Fatal(err)
		}
		if _, err := io.Copy(w, &bodyGen{left: size}); err != nil {
			b.Fatal(err)
		}
		if err := w.Close(); err != nil {
			b.Fatal(err)
		}
		peak := stop()
		if b := before[0].Value.Uint64(); peak > b && peak-b > worst {
			worst = peak - b
		}
	}
	b.StopTimer()
	b.ReportMetric(float64(worst)/(1<<20), "peak-heap-growth-MB")
	if worst > 16<<20 {
		b.Errorf("peak heap growth %d MB for a 50 MB message: the body is being buffered", worst>>20)
	}
}

// BenchmarkThroughput sends small messages through the bridge and directly
// to the same upstream (each over one reused session, like a helpdesk
// draining its queue) and reports both rates and their ratio.
func BenchmarkThroughput(b *testing.B) {
	ms := startStubMS(b)
	ms.set(func(s *stubMS) { s.discardData = true })
	tok := ms.issue("helpdesk@contoso.com")
	br := startBridge(b, ms.addr, bridgeOpts{tokens: tokenstest.StaticSource{"helpdesk": tok}})
	msg := []byte("From: helpdesk@contoso.com\r\nTo: x@example.com\r\nSubject: ticket update\r\n\r\n" +
		"Your ticket #12345 has been updated.\r\n")

	via := loginClient(b, br.addr, "otrs")
	direct, err := smtp.DialStartTLS(ms.addr, &tls.Config{RootCAs: getPKI(b).pool})
	if err != nil {
		b.Fatal(err)
	}
	defer direct.Close()
	if err := direct.Auth(tokens.NewXOAUTH2Client("helpdesk@contoso.com", tok)); err != nil {
		b.Fatal(err)
	}

	run := func(c *smtp.Client) time.Duration {
		start := time.Now()
		for i := 0; i < b.N; i++ {
			if _, err := send(c, "helpdesk@contoso.com", []string{"x@example.com"}, msg); err != nil {
				b.Fatal(err)
			}
		}
		return time.Since(start)
	}
	b.ResetTimer()
	dBridge := run(via)
	dDirect := run(direct)
	b.StopTimer()
	rb := float64(b.N) / dBridge.Seconds()
	rd := float64(b.N) / dDirect.Seconds()
	b.ReportMetric(rb, "msgs/s-bridge")
	b.ReportMetric(rd, "msgs/s-direct")
	b.ReportMetric(rb/rd, "ratio")
}
