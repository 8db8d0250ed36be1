package smtpproxy

import (
	"bufio"
	"bytes"
	"encoding/base64"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"strings"
	"testing"
	"testing/iotest"

	"github.com/oauthbridge/oauthbridge/tokens/tokenstest"
)

// Message-body relaying: what the legacy client puts on the wire must
// reach the upstream byte for byte (after bare CR/LF normalisation), over
// BDAT where the upstream offers CHUNKING (the fake, like Exchange Online,
// does) and over DATA where it does not.

// upstreamModes runs f once with BDAT upstream and once with DATA.
func upstreamModes(t *testing.T, f func(t *testing.T, noBDAT bool)) {
	for _, noBDAT := range []bool{false, true} {
		name := "BDAT"
		if noBDAT {
			name = "DATA"
		}
		t.Run(name, func(t *testing.T) { f(t, noBDAT) })
	}
}

// rawClient is a legacy client that writes exactly the bytes it is given.
type rawClient struct {
	t    *testing.T
	conn net.Conn
	rd   *bufio.Reader
}

func dialRaw(t *testing.T, addr string) *rawClient {
	t.Helper()
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	rc := &rawClient{t: t, conn: conn, rd: bufio.NewReader(conn)}
	rc.expect("220")
	rc.say("EHLO client.example\r\n")
	rc.expect("250")
	rc.say("AUTH PLAIN " + base64.StdEncoding.EncodeToString([]byte("\x00otrs\x00"+testPassword)) + "\r\n")
	rc.expect("235")
	return rc
}

// expect reads one reply and fails unless it has the given code.
func (rc *rawClient) expect(code string) string {
	rc.t.Helper()
	for {
		line, err := rc.rd.ReadString('\n')
		if err != nil {
			rc.t.Fatalf("waiting for %s: %v", code, err)
		}
		if !strings.HasPrefix(line, code) {
			rc.t.Fatalf("got %q, want %s", line, code)
		}
		if len(line) > 3 && line[3] == ' ' {
			return line
		}
	}
}

func (rc *rawClient) say(s string) {
	rc.t.Helper()
	if _, err := io.WriteString(rc.conn, s); err != nil {
		rc.t.Fatal(err)
	}
}

// stuff dot-stuffs a body for DATA (RFC 5321 4.5.2) the way a client must:
// a "." is added to every line that starts with "." (lines end at LF here,
// as a sloppy client would count them; go-smtp's server removes a leading
// dot after CRLF only, so only CRLF-ended lines are stuffed).
func stuff(body []byte) []byte {
	var b bytes.Buffer
	bol := true
	for i, c := range body {
		if bol && c == '.' {
			b.WriteByte('.')
		}
		b.WriteByte(c)
		bol = c == '\n' && i > 0 && body[i-1] == '\r'
	}
	return b.Bytes()
}

// normalise is the reference for what crlfReader must produce: a byte at a
// time, every bare CR and bare LF becomes CRLF.
func normalise(in []byte) []byte {
	var out []byte
	for i := 0; i < len(in); i++ {
		switch {
		case in[i] == '\r' && i+1 < len(in) && in[i+1] == '\n':
			out = append(out, '\r', '\n')
			i++
		case in[i] == '\r' || in[i] == '\n':
			out = append(out, '\r', '\n')
		default:
			out = append(out, in[i])
		}
	}
	return out
}

// edgeBody has the lines that break dot-transparency and newline handling.
func edgeBody() []byte {
	var b bytes.Buffer
	b.WriteString("From: helpdesk@contoso.com\r\nTo: bob@contoso.com\r\nSubject: edges\r\nContent-Transfer-Encoding: 8bit\r\n\r\n")
	b.WriteString(".\r\n")
	b.WriteString("..\r\n")
	b.WriteString(".x\r\n")
	b.WriteString("...\r\n")
	b.WriteString("x.\r\n")
	b.WriteString("\r\n")
	b.WriteString("cr-only line\r")
	b.WriteString("lf-only line\n")
	b.WriteString("\r")  // a CR-only empty line
	b.WriteString("\n")  // an LF-only empty line
	b.WriteString(".\r") // a dot line ended by a bare CR
	b.WriteString("after\r\n")
	b.WriteString(strings.Repeat("long-", 300) + "\r\n") // 1502 bytes: over RFC 5321's 1000, under the fake's 2000
	b.WriteString("8bit: \xc3\xa9t\xc3\xa9 \x80\x81\xfe\xff \x00nul\x01\x7f\r\n")
	for i := range 256 { // every byte value but CR and LF, on one line
		if i != '\r' && i != '\n' {
			b.WriteByte(byte(i))
		}
	}
	b.WriteString("\r\n.\r\n.")
	b.WriteString("\r\nlast line is a dot:\r\n.\r\n")
	return b.Bytes()
}

// TestDotTransparency sends the edge-case body over DATA from a raw client
// (MAIL with BODY=8BITMIME) and checks the fake's copy byte for byte.
func TestDotTransparency(t *testing.T) {
	upstreamModes(t, func(t *testing.T, noBDAT bool) {
		f, ca := startFake(t)
		br := startBridge(t, f.SMTPAddr, bridgeOpts{caFile: ca, noBDAT: noBDAT,
			tokens: tokenstest.StaticSource{"helpdesk": f.IssueAccessToken("helpdesk@contoso.com")}})
		body := edgeBody()
		rc := dialRaw(t, br.addr)
		rc.say("MAIL FROM:<helpdesk@contoso.com> BODY=8BITMIME\r\nRCPT TO:<bob@contoso.com>\r\nDATA\r\n")
		rc.expect("250")
		rc.expect("250")
		rc.expect("354")
		rc.say(string(stuff(body)) + ".\r\n")
		if reply := rc.expect("250"); !strings.Contains(reply, "@FAKE.prod.outlook.com") {
			t.Errorf("final reply %q is not the upstream's", reply)
		}
		want := normalise(body)
		msgs := f.Messages("bob@contoso.com")
		if len(msgs) != 1 {
			t.Fatalf("bob has %d messages, want 1", len(msgs))
		}
		if !bytes.Equal(msgs[0], want) {
			t.Errorf("upstream got\n%q\nwant\n%q", msgs[0], want)
		}
		if !strings.Contains(br.logs.String(), "bare CR or LF in the message normalised") {
			t.Error("no log line about the normalised bare CR/LF")
		}
	})
}

// TestLargeBodyExact sends a body of several BDAT chunks whose lines start
// with dots and whose chunk boundaries fall inside CRLFs and before dots.
func TestLargeBodyExact(t *testing.T) {
	upstreamModes(t, func(t *testing.T, noBDAT bool) {
		f, ca := startFake(t)
		br := startBridge(t, f.SMTPAddr, bridgeOpts{caFile: ca, noBDAT: noBDAT,
			tokens: tokenstest.StaticSource{"helpdesk": f.IssueAccessToken("helpdesk@contoso.com")}})
		rng := rand.New(rand.NewPCG(1, 2))
		var b bytes.Buffer
		b.WriteString("Subject: large\r\n\r\n")
		for b.Len() < 3*BDATChunkBytes+777 {
			switch rng.IntN(6) {
			case 0:
				b.WriteString(".\r\n")
			case 1:
				b.WriteString("..dots\r\n")
			case 2:
				b.WriteString("\r\n")
			default:
				n := rng.IntN(200)
				for range n {
					b.WriteByte(byte(32 + rng.IntN(200))) // 8-bit text, no CR/LF
				}
				b.WriteString("\r\n")
			}
		}
		// Put a dot line and a CRLF exactly on a chunk boundary.
		body := b.Bytes()
		copy(body[BDATChunkBytes-1:], "\r\n.\r\n")
		copy(body[2*BDATChunkBytes-2:], ".\r\n.")
		body = normalise(body)
		c := loginClient(t, br.addr, "otrs")
		if _, err := send(c, "helpdesk@contoso.com", []string{"bob@contoso.com"}, body); err != nil {
			t.Fatalf("send() = %v", err)
		}
		msgs := f.Messages("bob@contoso.com")
		if len(msgs) != 1 || !bytes.Equal(msgs[0], body) {
			t.Fatalf("bob's copy differs from the %d bytes sent (%d messages)", len(body), len(msgs))
		}
	})
}

// TestClientBDAT: a client that itself uses BDAT (go-smtp's server offers
// CHUNKING to it) with a body that does not end in CRLF.
func TestClientBDAT(t *testing.T) {
	upstreamModes(t, func(t *testing.T, noBDAT bool) {
		f, ca := startFake(t)
		br := startBridge(t, f.SMTPAddr, bridgeOpts{caFile: ca, noBDAT: noBDAT,
			tokens: tokenstest.StaticSource{"helpdesk": f.IssueAccessToken("helpdesk@contoso.com")}})
		rc := dialRaw(t, br.addr)
		rc.say("MAIL FROM:<helpdesk@contoso.com>\r\nRCPT TO:<bob@contoso.com>\r\n")
		rc.expect("250")
		rc.expect("250")
		chunks := []string{"Subject: bdat\r\n\r\n.\r\n..\r", "\n.x\n", "tail\r"}
		for i, ch := range chunks {
			last := ""
			if i == len(chunks)-1 {
				last = " LAST"
			}
			rc.say(fmt.Sprintf("BDAT %d%s\r\n%s", len(ch), last, ch))
			rc.expect("250")
		}
		want := "Subject: bdat\r\n\r\n.\r\n..\r\n.x\r\ntail\r\n"
		msgs := f.Messages("bob@contoso.com")
		if len(msgs) != 1 || string(msgs[0]) != want {
			t.Fatalf("bob's messages = %q, want %q", msgs, want)
		}
	})
}

// TestClientGoneMidBody: the client disappears after sending more than
// one BDAT chunk's worth: the upstream must not deliver anything (no LAST
// chunk, no final dot), and the bridge's next session still works.
func TestClientGoneMidBody(t *testing.T) {
	upstreamModes(t, func(t *testing.T, noBDAT bool) {
		f, ca := startFake(t)
		br := startBridge(t, f.SMTPAddr, bridgeOpts{caFile: ca, noBDAT: noBDAT,
			tokens: tokenstest.StaticSource{"helpdesk": f.IssueAccessToken("helpdesk@contoso.com")}})
		rc := dialRaw(t, br.addr)
		rc.say("MAIL FROM:<helpdesk@contoso.com>\r\nRCPT TO:<bob@contoso.com>\r\nDATA\r\n")
		rc.expect("250")
		rc.expect("250")
		rc.expect("354")
		// Lines that end in CRLF, one of them ".": a complete-looking
		// message from the upstream's side, if the bridge ended it.
		part := bytes.Repeat([]byte("some line of the body\r\n..\r\n"), 3*BDATChunkBytes/27)
		rc.say(string(part))
		rc.conn.Close()
		waitFor(t, "the session to end", func() bool { return br.srv.ActiveSessions() == 0 })
		waitFor(t, "the failure log line", func() bool {
			return strings.Contains(br.logs.String(), "client stopped sending the message")
		})
		if n := len(f.Sent()); n != 0 {
			t.Fatalf("the upstream accepted %d messages from a client that left mid-body", n)
		}
		c := loginClient(t, br.addr, "otrs")
		if _, err := send(c, "helpdesk@contoso.com", []string{"bob@contoso.com"}, []byte("Subject: next\r\n\r\nok\r\n")); err != nil {
			t.Fatalf("next message: %v", err)
		}
		if msgs := f.Messages("bob@contoso.com"); len(msgs) != 1 || !bytes.Contains(msgs[0], []byte("Subject: next")) {
			t.Fatalf("bob's messages = %d, want only the next one", len(msgs))
		}
	})
}

// TestFakeMSDropInDataBothModes: the upstream cuts the connection during
// the body: the client gets a 4xx, never a 250.
func TestFakeMSDropInDataBothModes(t *testing.T) {
	upstreamModes(t, func(t *testing.T, noBDAT bool) {
		f, ca := startFake(t)
		br := startBridge(t, f.SMTPAddr, bridgeOpts{caFile: ca, noBDAT: noBDAT,
			tokens: tokenstest.StaticSource{"helpdesk": f.IssueAccessToken("helpdesk@contoso.com")}})
		c := loginClient(t, br.addr, "otrs")
		f.SetSMTPDropInData(true)
		_, err := send(c, "helpdesk@contoso.com", []string{"bob@contoso.com"}, bytes.Repeat([]byte("line of text\r\n"), 60000))
		if err == nil || !strings.Contains(err.Error(), "451") {
			t.Fatalf("send() with the upstream cut mid-body = %v, want 451", err)
		}
		if n := len(f.Sent()); n != 0 {
			t.Fatalf("fake delivered %d messages, want 0", n)
		}
	})
}

// TestCRLFReaderMatchesReference compares crlfReader with the byte-at-a-
// time reference on random bodies read in random pieces.
func TestCRLFReaderMatchesReference(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	alphabet := []byte("\r\n.ab\x00\xff")
	for i := range 2000 {
		in := make([]byte, rng.IntN(300))
		for j := range in {
			in[j] = alphabet[rng.IntN(len(alphabet))]
		}
		var r io.Reader = bytes.NewReader(in)
		if i%2 == 1 {
			r = iotest.HalfReader(iotest.OneByteReader(r))
		}
		cr := newCRLFReader(r)
		got, err := io.ReadAll(iotest.HalfReader(cr))
		cr.release()
		if want := normalise(in); err != nil || !bytes.Equal(got, want) {
			t.Fatalf("crlfReader(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
}

// TestPipelinedAfterBody: commands the client pipelines behind the end of
// a body arrive in the same read as the body's end (the connection's
// read-ahead holds them) and must still be executed in order.
func TestPipelinedAfterBody(t *testing.T) {
	f, ca := startFake(t)
	br := startBridge(t, f.SMTPAddr, bridgeOpts{caFile: ca,
		tokens: tokenstest.StaticSource{"helpdesk": f.IssueAccessToken("helpdesk@contoso.com")}})
	rc := dialRaw(t, br.addr)
	body := strings.Repeat("0123456789abcdefghijklmnopqrstuvwxyz\r\n", 5000) // > ClientReadAhead
	var b strings.Builder
	for i := range 3 {
		fmt.Fprintf(&b, "MAIL FROM:<helpdesk@contoso.com>\r\nRCPT TO:<bob@contoso.com>\r\nDATA\r\nSubject: %d\r\n\r\n%s.\r\n", i, body)
	}
	b.WriteString("QUIT\r\n")
	go func() { _, _ = io.WriteString(rc.conn, b.String()) }()
	for range 3 {
		rc.expect("250")
		rc.expect("250")
		rc.expect("354")
		rc.expect("250")
	}
	rc.expect("221")
	msgs := f.Messages("bob@contoso.com")
	if len(msgs) != 3 {
		t.Fatalf("bob has %d messages, want 3", len(msgs))
	}
	for i, m := range msgs {
		if want := fmt.Sprintf("Subject: %d\r\n\r\n%s", i, body); string(m) != want {
			t.Errorf("message %d differs (%d bytes, want %d)", i, len(m), len(want))
		}
	}
}
