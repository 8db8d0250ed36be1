package smtpproxy

import (
	"bufio"
	"crypto/tls"
	"encoding/base64"
	"fmt"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/oauthbridge/oauthbridge/internal/transcript"
)

// TestTranscripts replays testdata/*.txt (the format of internal/transcript)
// against the bridge (with the stub upstream). In C: lines {USER64},
// {PASS64} and {PLAIN64} expand to the test credentials.
// Files named graph_*.txt run against an account with send_via = "graph"
// and a Graph stand-in; there "G: status code retry-after message" queues
// a Graph error answer.
func TestTranscripts(t *testing.T) {
	files, _ := filepath.Glob("testdata/*.txt")
	if len(files) == 0 {
		t.Fatal("no transcripts in testdata")
	}
	b64 := base64.StdEncoding.EncodeToString
	repl := strings.NewReplacer(
		"{USER64}", b64([]byte("otrs")),
		"{PASS64}", b64([]byte(testPassword)),
		"{PLAIN64}", b64([]byte("\x00otrs\x00"+testPassword)),
	)
	for _, file := range files {
		t.Run(filepath.Base(file), func(t *testing.T) {
			sc, err := transcript.ParseFile(file)
			if err != nil {
				t.Fatal(err)
			}
			var br *bridge
			var g *stubGraph
			if strings.HasPrefix(filepath.Base(file), "graph_") {
				br, g, _, _ = graphBridge(t, "graph")
			} else {
				ms := startStubMS(t)
				br = startBridge(t, ms.addr, bridgeOpts{})
				br.tokens.set("helpdesk", ms.issue("helpdesk@contoso.com"))
			}
			conn, err := net.Dial("tcp", br.addr)
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			conn.SetDeadline(time.Now().Add(10 * time.Second))
			sc.Run(t, &lineConn{c: conn, r: bufio.NewReader(conn)}, transcript.Hooks{
				Expand: repl.Replace,
				Note: func(key, text string) error {
					if key != "G" || g == nil {
						return fmt.Errorf("unknown note %s: %q", key, text)
					}
					var f fault
					parts := strings.SplitN(text, " ", 4)
					if len(parts) != 4 {
						return fmt.Errorf("bad G: line %q", text)
					}
					fmt.Sscan(parts[0], &f.status)
					f.code, f.retryAt, f.msg = parts[1], strings.Trim(parts[2], "-"), parts[3]
					g.set(func(g *stubGraph) { g.faults = append(g.faults, f) })
					return nil
				},
			})
		})
	}
}

// lineConn adapts a client connection to transcript.Conn.
type lineConn struct {
	c net.Conn
	r *bufio.Reader
}

func (l *lineConn) Write(s string) error {
	_, err := l.c.Write([]byte(s))
	return err
}

func (l *lineConn) ReadLine() (string, error) {
	line, err := l.r.ReadString('\n')
	if err != nil {
		return "", err
	}
	return strings.TrimRight(line, "\r\n"), nil
}

// TestStartTLSDuringBDAT: go-smtp logs the session out on STARTTLS while
// Data still runs on its BDAT goroutine, and closes the BDAT pipe only
// afterwards. The session must not wait for Data there (it would deadlock)
// and the half-sent message must not be delivered.
func TestStartTLSDuringBDAT(t *testing.T) {
	ms := startStubMS(t)
	br := startBridge(t, ms.addr, bridgeOpts{})
	br.tokens.set("helpdesk", ms.issue("helpdesk@contoso.com"))
	conn, err := net.Dial("tcp", br.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(5 * time.Second))
	r := bufio.NewReader(conn)
	expect := func(prefix string) {
		t.Helper()
		for {
			line, err := r.ReadString('\n')
			if err != nil {
				t.Fatalf("waiting for %q: %v", prefix, err)
			}
			if strings.HasPrefix(line, prefix) {
				return
			}
		}
	}
	plain := base64.StdEncoding.EncodeToString([]byte("\x00otrs\x00" + testPassword))
	expect("220 ")
	for _, step := range []struct{ send, want string }{
		{"EHLO legacy.test\r\n", "250 "},
		{"AUTH PLAIN " + plain + "\r\n", "235 "},
		{"MAIL FROM:<helpdesk@contoso.com>\r\n", "250 "},
		{"RCPT TO:<c@example.com>\r\n", "250 "},
		{"BDAT 15\r\nSubject: bdat\r\n", "250 2.0.0 Continue"},
		{"STARTTLS\r\n", "220 "},
	} {
		conn.Write([]byte(step.send))
		expect(step.want)
	}
	tc := tls.Client(conn, &tls.Config{RootCAs: getPKI(t).pool, ServerName: "127.0.0.1"})
	if err := tc.Handshake(); err != nil {
		t.Fatalf("TLS handshake = %v", err)
	}
	tc.Write([]byte("EHLO legacy.test\r\n"))
	tr := bufio.NewReader(tc)
	for {
		line, err := tr.ReadString('\n')
		if err != nil {
			t.Fatalf("EHLO after STARTTLS: %v (session hung?)", err)
		}
		if strings.HasPrefix(line, "250 ") {
			break
		}
	}
	if n := len(ms.Sent()); n != 0 {
		t.Errorf("upstream delivered %d half-sent messages", n)
	}
}
