package smtpproxy

import (
	"encoding/base64"
	"fmt"
	"io"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/oauthbridge/oauthbridge/tokens/tokenstest"
)

// multipartGen streams a multipart/mixed message: a text part and
// attachments of the given sizes, base64 in 76-character lines, generated
// on the fly so that the client holds none of it in memory.
func multipartGen(to string, sizes ...int64) io.Reader {
	const boundary = "bench-boundary-1234567890"
	rs := []io.Reader{strings.NewReader(fmt.Sprintf("From: helpdesk@contoso.com\r\nTo: %s\r\nSubject: bench\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=%q\r\n\r\n"+
		"--%s\r\nContent-Type: text/plain\r\n\r\nSee attachments.\r\n", to, boundary, boundary))}
	for i, n := range sizes {
		rs = append(rs, strings.NewReader(fmt.Sprintf("--%s\r\nContent-Type: application/octet-stream\r\nContent-Disposition: attachment; filename=\"f%d.bin\"\r\nContent-Transfer-Encoding: base64\r\n\r\n", boundary, i)))
		pr, pw := io.Pipe()
		go func() {
			lw := &lineWriter{w: pw}
			enc := base64.NewEncoder(base64.StdEncoding, lw)
			_, err := io.Copy(enc, &bodyGen{left: n})
			if err == nil {
				err = enc.Close()
			}
			if err == nil {
				_, err = pw.Write([]byte("\r\n"))
			}
			pw.CloseWithError(err)
		}()
		rs = append(rs, pr)
	}
	rs = append(rs, strings.NewReader("--"+boundary+"--\r\n"))
	return io.MultiReader(rs...)
}

// lineWriter breaks base64 into 76-character lines.
type lineWriter struct {
	w   io.Writer
	col int
}

func (l *lineWriter) Write(p []byte) (int, error) {
	n := 0
	for len(p) > 0 {
		k := min(76-l.col, len(p))
		if _, err := l.w.Write(p[:k]); err != nil {
			return n, err
		}
		n += k
		l.col += k
		p = p[k:]
		if l.col == 76 {
			if _, err := l.w.Write([]byte("\r\n")); err != nil {
				return n, err
			}
			l.col = 0
		}
	}
	return n, nil
}

// BenchmarkGraph30MB sends a 30 MB message with attachments through the
// Graph path (draft + upload sessions) to a Graph stand-in that discards
// the content, and reports the process's peak heap growth: the spool is a
// file and every request body is streamed, so it stays far below the
// message size.
func BenchmarkGraph30MB(b *testing.B) {
	g := startStubGraph(b)
	g.set(func(g *stubGraph) { g.discard = true })
	gt := &stubTokens{}
	gt.set("helpdesk", g.issue("graph-token"))
	ms := startStubMS(b)
	br := startBridge(b, ms.addr, bridgeOpts{accountExtra: `send_via = "graph"`, smtpExtra: `max_message_bytes = 104857600`,
		providerExtra: fmt.Sprintf("graph_url = %q", g.srv.URL), graphTokens: gt})
	c := loginClient(b, br.addr, "otrs")
	sizes := []int64{10 << 20, 8 << 20, 4 << 20, 512 << 10}
	var total int64
	for _, n := range sizes {
		total += n * 4 / 3
	}
	var worst uint64
	b.SetBytes(total)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		runtime.GC()
		var before runtime.MemStats
		runtime.ReadMemStats(&before)
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
		if _, err := io.Copy(w, multipartGen("x@example.com", sizes...)); err != nil {
			b.Fatal(err)
		}
		if err := w.Close(); err != nil {
			b.Fatal(err)
		}
		peak := stop()
		if peak > before.HeapAlloc && peak-before.HeapAlloc > worst {
			worst = peak - before.HeapAlloc
		}
	}
	b.StopTimer()
	if s := g.Sent(); len(s) != b.N || len(s[0].Attachments) == 0 {
		b.Fatalf("Graph got %d messages", len(s))
	}
	b.ReportMetric(float64(worst)/(1<<20), "peak-heap-growth-MB")
	if worst > 16<<20 {
		b.Errorf("peak heap growth %d MB for a 30 MB message on the Graph path: the message is being buffered", worst>>20)
	}
}

// BenchmarkGraphThroughput sends small messages through the bridge on the
// Graph path and on the SMTP path (each over one reused session) and
// reports both rates.
func BenchmarkGraphThroughput(b *testing.B) {
	ms := startStubMS(b)
	ms.set(func(s *stubMS) { s.discardData = true })
	g := startStubGraph(b)
	g.set(func(g *stubGraph) { g.discard = true })
	gt := &stubTokens{}
	gt.set("helpdesk", g.issue("graph-token"))
	viaGraph := startBridge(b, ms.addr, bridgeOpts{accountExtra: `send_via = "graph"`,
		providerExtra: fmt.Sprintf("graph_url = %q", g.srv.URL), graphTokens: gt})
	viaSMTP := startBridge(b, ms.addr, bridgeOpts{tokens: tokenstest.StaticSource{"helpdesk": ms.issue("helpdesk@contoso.com")}})
	msg := []byte("From: helpdesk@contoso.com\r\nTo: x@example.com\r\nSubject: ticket update\r\n\r\n" +
		"Your ticket #12345 has been updated.\r\n")
	run := func(addr string) time.Duration {
		c := loginClient(b, addr, "otrs")
		start := time.Now()
		for i := 0; i < b.N; i++ {
			if _, err := send(c, "helpdesk@contoso.com", []string{"x@example.com"}, msg); err != nil {
				b.Fatal(err)
			}
		}
		return time.Since(start)
	}
	b.ResetTimer()
	dGraph := run(viaGraph.addr)
	dSMTP := run(viaSMTP.addr)
	b.StopTimer()
	b.ReportMetric(float64(b.N)/dGraph.Seconds(), "msgs/s-graph")
	b.ReportMetric(float64(b.N)/dSMTP.Seconds(), "msgs/s-smtp")
}
