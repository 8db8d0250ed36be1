package smtpproxy

import (
	"bufio"
	"bytes"
	"encoding/base64"
	"fmt"
	"io"
	"net"
	"strings"
	"testing"
	"testing/iotest"

	"github.com/oauthbridge/oauthbridge/tokens/tokenstest"
)

func TestCRLFReader(t *testing.T) {
	for _, tc := range []struct {
		in, want string
		fixed    int64
	}{
		{"", "", 0},
		{"a\r\nb\r\n", "a\r\nb\r\n", 0},
		{"a\nb\n", "a\r\nb\r\n", 2},
		{"a\rb\r", "a\r\nb\r\n", 2},
		{"a\r\r\nb", "a\r\n\r\nb", 1},
		{"\n.\n", "\r\n.\r\n", 2},
		{"\r.\r\n", "\r\n.\r\n", 1},
		{"x\r\n.\r", "x\r\n.\r\n", 1},
		{"\r\n\n\r", "\r\n\r\n\r\n", 2},
		{"binary\x00\xff\r\n", "binary\x00\xff\r\n", 0},
	} {
		for _, oneByte := range []bool{false, true} {
			var r io.Reader = strings.NewReader(tc.in)
			if oneByte {
				r = iotest.OneByteReader(r)
			}
			cr := newCRLFReader(r)
			got, err := io.ReadAll(cr)
			if err != nil || string(got) != tc.want || cr.fixed != tc.fixed {
				t.Errorf("crlfReader(%q, oneByte=%v) = %q, %d fixed, %v; want %q, %d fixed",
					tc.in, oneByte, got, cr.fixed, err, tc.want, tc.fixed)
			}
		}
	}
	// A read error other than EOF is passed on after the bytes before it.
	cr := newCRLFReader(io.MultiReader(strings.NewReader("ab\n"), iotest.ErrReader(io.ErrUnexpectedEOF)))
	got, err := io.ReadAll(cr)
	if string(got) != "ab\r\n" || err != io.ErrUnexpectedEOF {
		t.Errorf("crlfReader with a failing source = %q, %v", got, err)
	}
}

// TestSmugglingSequences sends the classic SMTP smuggling sequences raw
// (go-smtp's client would normalise them) from 127.0.0.1 through the bridge
// to the fake Microsoft 365: each session delivers exactly one message, the
// smuggled "second message" stays text inside it, and no bare CR or LF
// reaches the upstream.
func TestSmugglingSequences(t *testing.T) {
	f, ca := startFake(t)
	br := startBridge(t, f.SMTPAddr, bridgeOpts{caFile: ca,
		tokens: tokenstest.StaticSource{"helpdesk": f.IssueAccessToken("helpdesk@contoso.com")}})
	seqs := map[string]string{
		"LF.LF":     "\n.\n",
		"LF.CRLF":   "\n.\r\n",
		"CRLF.LF":   "\r\n.\n",
		"CR.CRLF":   "\r.\r\n",
		"CR.CR":     "\r.\r",
		"CRLF.CR":   "\r\n.\r",
		"CRLF.CRCR": "\r\n.\r\r",
		"LF.CR":     "\n.\r",
	}
	delivered := 0
	for name, seq := range seqs {
		t.Run(name, func(t *testing.T) {
			conn, err := net.Dial("tcp", br.addr)
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			rd := bufio.NewReader(conn)
			expect := func(code string) string {
				t.Helper()
				for {
					line, err := rd.ReadString('\n')
					if err != nil {
						t.Fatalf("waiting for %s: %v", code, err)
					}
					if !strings.HasPrefix(line, code) {
						t.Fatalf("got %q, want %s", line, code)
					}
					if len(line) > 3 && line[3] == ' ' {
						return line
					}
				}
			}
			say := func(s string) {
				if _, err := io.WriteString(conn, s); err != nil {
					t.Fatal(err)
				}
			}
			expect("220")
			say("EHLO client.example\r\n")
			expect("250")
			say("AUTH PLAIN " + base64.StdEncoding.EncodeToString([]byte("\x00otrs\x00"+testPassword)) + "\r\n")
			expect("235")
			say("MAIL FROM:<helpdesk@contoso.com>\r\nRCPT TO:<bob@contoso.com>\r\nDATA\r\n")
			expect("250")
			expect("250")
			expect("354")
			subject := "smuggle-" + name
			say(fmt.Sprintf("Subject: %s\r\n\r\nfirst%sMAIL FROM:<ceo@contoso.com>\r\nRCPT TO:<bob@contoso.com>\r\nDATA\r\nSubject: smuggled\r\n\r\nsecond\r\n.\r\n", subject, seq))
			expect("250")
			say("QUIT\r\n")
			expect("221")
			delivered++
		})
	}
	msgs := f.Messages("bob@contoso.com")
	if len(msgs) != delivered {
		t.Fatalf("bob has %d messages after %d sessions, want one each", len(msgs), delivered)
	}
	for _, m := range msgs {
		if bytes.Contains(bytes.ReplaceAll(m, []byte("\r\n"), nil), []byte("\r")) ||
			bytes.Contains(bytes.ReplaceAll(m, []byte("\r\n"), nil), []byte("\n")) {
			t.Errorf("a bare CR or LF reached the upstream: %q", m)
		}
		if !bytes.Contains(m, []byte("Subject: smuggled")) || bytes.HasPrefix(m, []byte("Subject: smuggled")) {
			t.Errorf("the smuggled part is not text inside the first message: %q", m)
		}
	}
}
