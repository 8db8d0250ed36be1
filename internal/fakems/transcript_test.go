package fakems

import (
	"bufio"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"os"
	"strings"
	"testing"
	"time"
)

// runTranscript plays testdata/name against conn. Lines:
//
//	C: text      the client sends text + CRLF (${VAR} substituted)
//	S: pattern   the next server line must match; "{*}" matches any run of
//	             characters, everything else is literal
//	!starttls    upgrade conn to TLS (trusting the fake's CA)
//	!eof         the server must close the connection
//	# ...        comment
func runTranscript(t *testing.T, f *Fake, conn net.Conn, name string, vars map[string]string) {
	t.Helper()
	b, err := os.ReadFile("testdata/" + name)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	br := bufio.NewReader(conn)
	subst := func(s string) string {
		for k, v := range vars {
			s = strings.ReplaceAll(s, "${"+k+"}", v)
		}
		return s
	}
	for n, line := range strings.Split(strings.ReplaceAll(string(b), "\r\n", "\n"), "\n") {
		where := name + ":" + itoa(n+1)
		_ = conn.SetDeadline(time.Now().Add(5 * time.Second))
		switch {
		case line == "" || strings.HasPrefix(line, "#"):
		case strings.HasPrefix(line, "C: "):
			if _, err := io.WriteString(conn, subst(line[3:])+"\r\n"); err != nil {
				t.Fatalf("%s: write: %v", where, err)
			}
		case strings.HasPrefix(line, "S: "):
			got, err := br.ReadString('\n')
			if err != nil {
				t.Fatalf("%s: read: %v (want %q)", where, err, line[3:])
			}
			got = strings.TrimRight(got, "\r\n")
			if want := subst(line[3:]); !globMatch(want, got) {
				t.Fatalf("%s: server said %q, want %q", where, got, want)
			}
		case line == "!starttls":
			cfg := f.ClientTLS()
			cfg.ServerName = "127.0.0.1"
			tc := tls.Client(conn, cfg)
			if err := tc.Handshake(); err != nil {
				t.Fatalf("%s: TLS handshake: %v", where, err)
			}
			conn, br = tc, bufio.NewReader(tc)
		case line == "!eof":
			got, err := br.ReadString('\n')
			if !errors.Is(err, io.EOF) && !errors.Is(err, net.ErrClosed) {
				t.Fatalf("%s: want connection closed, got %q, %v", where, got, err)
			}
		default:
			t.Fatalf("%s: bad transcript line %q", where, line)
		}
	}
}

// globMatch matches s against pattern where "{*}" is the only wildcard.
func globMatch(pattern, s string) bool {
	parts := strings.Split(pattern, "{*}")
	if len(parts) == 1 {
		return pattern == s
	}
	if !strings.HasPrefix(s, parts[0]) {
		return false
	}
	s = s[len(parts[0]):]
	last := parts[len(parts)-1]
	for _, p := range parts[1 : len(parts)-1] {
		i := strings.Index(s, p)
		if i < 0 {
			return false
		}
		s = s[i+len(p):]
	}
	return strings.HasSuffix(s, last) && len(s) >= len(last)
}

func TestGlobMatch(t *testing.T) {
	for _, tc := range []struct {
		pattern, s string
		want       bool
	}{
		{"a", "a", true},
		{"a", "ab", false},
		{"* OK {*}", "* OK hello", true},
		{"{*} BAD x", "a1 BAD x", true},
		{"{*} BAD x", "a1 BAD xy", false},
		{"a{*}b{*}c", "aXbYc", true},
		{"a{*}b{*}c", "aXcYb", false},
		{"ab{*}ba", "aba", false},
	} {
		if got := globMatch(tc.pattern, tc.s); got != tc.want {
			t.Errorf("globMatch(%q, %q) = %v, want %v", tc.pattern, tc.s, got, tc.want)
		}
	}
}
