package pop3proxy

import (
	"bufio"
	"crypto/tls"
	"net"
	"strings"
	"testing"

	"github.com/oauthbridge/oauthbridge/tokens"
)

// BenchmarkPreauthParse measures reading and splitting pre-auth command
// lines, the only per-command work before login.
func BenchmarkPreauthParse(b *testing.B) {
	script := "CAPA\r\nUSER otrs\r\nPASS s3cret pass\r\nAUTH PLAIN " + plainIR("", testUser, testPassword) + "\r\nQUIT\r\n"
	b.SetBytes(int64(len(script)))
	sr := strings.NewReader(script)
	br := bufio.NewReader(sr)
	b.ReportAllocs()
	for b.Loop() {
		sr.Reset(script)
		br.Reset(sr)
		for range 5 {
			line, err := readLimitedLine(br, 50*1024)
			if err != nil {
				b.Fatal(err)
			}
			if cmd, _ := parseCommand(line); cmd == "" {
				b.Fatal("empty command")
			}
		}
	}
}

// BenchmarkPreauthSession runs greeting, CAPA and QUIT over net.Pipe: the
// cost of a connection that never logs in.
func BenchmarkPreauthSession(b *testing.B) {
	stub := startStub(b)
	e := newEnv(b, testConfig{Upstream: stub.Addr}, envOptions{})
	for b.Loop() {
		c := e.pipe()
		c.expect("+OK*")
		c.send("CAPA")
		for c.expect("*") != "." {
		}
		c.send("QUIT")
		c.expect("+OK*")
		c.expectEOF()
		c.conn.Close()
	}
}

// BenchmarkRETR compares RETR throughput of a 1 MiB message read directly
// from the (stub) upstream and through the bridge; both over TLS on
// loopback upstream, the bridge's client side plain TCP on loopback.
func BenchmarkRETR(b *testing.B) {
	msg := bigMessage(1 << 20)
	stub := startStub(b)
	stub.Deliver("1", msg)

	run := func(b *testing.B, p *popClient) {
		b.SetBytes(int64(len(msg)))
		for b.Loop() {
			if got := p.multi("RETR 1"); len(got) != len(msg) {
				b.Fatalf("RETR: %d bytes, want %d", len(got), len(msg))
			}
		}
		b.StopTimer()
		p.cmd("QUIT")
	}

	b.Run("direct", func(b *testing.B) {
		conn, err := tls.Dial("tcp", stub.Addr, &tls.Config{ServerName: "localhost", RootCAs: testPool})
		if err != nil {
			b.Fatal(err)
		}
		p := newPopClient(b, conn)
		p.cmd("")
		if err := p.tp.PrintfLine("AUTH XOAUTH2"); err != nil {
			b.Fatal(err)
		}
		if l, err := p.tp.ReadLine(); err != nil || !strings.HasPrefix(l, "+") {
			b.Fatalf("AUTH XOAUTH2: %q %v", l, err)
		}
		p.cmd("%s", tokens.XOAUTH2Base64(testMailbox, goodToken))
		run(b, p)
	})
	b.Run("bridge", func(b *testing.B) {
		e := newEnv(b, testConfig{Upstream: stub.Addr}, envOptions{})
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			b.Fatal(err)
		}
		go e.srv.Serve(ln, false)
		conn, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			b.Fatal(err)
		}
		p := newPopClient(b, conn)
		p.cmd("")
		p.cmd("USER %s", testUser)
		p.cmd("PASS %s", testPassword)
		run(b, p)
	})
}
