package imapproxy

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/oauthbridge/oauthbridge/tokens"
)

// BenchmarkFetchThroughput fetches a 4 MiB message body through the bridge
// and directly from the same upstream in each iteration and reports both
// rates and their ratio (bridge/direct; 1.0 = no overhead).
func BenchmarkFetchThroughput(b *testing.B) {
	const size = 4 << 20
	e := newEnv(b)
	e.up.mu.Lock()
	e.up.bulk = bytes.Repeat([]byte("0123456789abcdef"), size/16)
	e.up.mu.Unlock()
	srv := e.start()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	go srv.Serve(ln, false)

	// Through the bridge: plain LOGIN on loopback.
	bconn, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		b.Fatal(err)
	}
	defer bconn.Close()
	bbr := bufio.NewReaderSize(bconn, 64*1024)
	benchExpect(b, bbr, "* OK")
	io.WriteString(bconn, "a1 LOGIN otrs secret\r\n")
	benchExpect(b, bbr, "a1 OK")

	// Directly: TLS and XOAUTH2 to the stub.
	dconn, err := tls.Dial("tcp", e.up.addr, &tls.Config{RootCAs: getCert(b).pool, ServerName: "127.0.0.1"})
	if err != nil {
		b.Fatal(err)
	}
	defer dconn.Close()
	dbr := bufio.NewReaderSize(dconn, 64*1024)
	benchExpect(b, dbr, "* OK")
	io.WriteString(dconn, "d1 AUTHENTICATE XOAUTH2 "+tokens.XOAUTH2Base64(testMailbox, "good")+"\r\n")
	benchExpect(b, dbr, "d1 OK")

	var viaBridge, direct time.Duration
	i := 0
	for b.Loop() {
		i++
		t0 := time.Now()
		benchFetch(b, bconn, bbr, "b"+strconv.Itoa(i), size)
		t1 := time.Now()
		benchFetch(b, dconn, dbr, "d"+strconv.Itoa(i), size)
		viaBridge += t1.Sub(t0)
		direct += time.Since(t1)
	}
	mb := float64(size) * float64(i) / 1e6
	bridgeRate, directRate := mb/viaBridge.Seconds(), mb/direct.Seconds()
	b.ReportMetric(bridgeRate, "bridge_MB/s")
	b.ReportMetric(directRate, "direct_MB/s")
	b.ReportMetric(bridgeRate/directRate, "bridge/direct")
}

func benchExpect(b *testing.B, br *bufio.Reader, prefix string) {
	b.Helper()
	line, err := br.ReadString('\n')
	if err != nil || !strings.HasPrefix(line, prefix) {
		b.Fatalf("got %q, %v; want %q...", line, err, prefix)
	}
}

func benchFetch(b *testing.B, w io.Writer, br *bufio.Reader, tag string, size int) {
	b.Helper()
	fmt.Fprintf(w, "%s FETCH 1 BODY[]\r\n", tag)
	benchExpect(b, br, fmt.Sprintf("* 1 FETCH (BODY[] {%d}", size))
	if _, err := io.CopyN(io.Discard, br, int64(size)); err != nil {
		b.Fatal(err)
	}
	benchExpect(b, br, ")")
	benchExpect(b, br, tag+" OK")
}
