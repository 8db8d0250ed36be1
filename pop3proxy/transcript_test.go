package pop3proxy

import (
	"context"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/oauthbridge/oauthbridge/tokens"
	"github.com/oauthbridge/oauthbridge/tokens/tokenstest"
)

// TestTranscripts replays testdata/*.txt over net.Pipe against a stub
// upstream. Format:
//
//	# comment
//	! directive [value]   set-up, before the first C:/S: line
//	C: line               client sends line + CRLF; "C: <STARTTLS>" runs the TLS handshake
//	W: "go string"        client writes the unquoted bytes as they are (pipelining)
//	S: pattern            server line; * matches any run of characters
//	S: <EOF>              server closed the connection
//	A: result             the next audit line's result (checked at the end, in order)
//
// Directives: tls, loopback false, allow_insecure_auth, token
// good|bad|stale|needs_login|failing|temporary, upstream down|challenge|greeting-err,
// limit-full, preauth_timeout D, max_line_bytes N, max_connections N,
// deliver UID TEXT.
func TestTranscripts(t *testing.T) {
	files, err := filepath.Glob("testdata/*.txt")
	if err != nil || len(files) == 0 {
		t.Fatalf("no transcripts: %v", err)
	}
	for _, f := range files {
		t.Run(strings.TrimSuffix(filepath.Base(f), ".txt"), func(t *testing.T) {
			t.Parallel()
			src, err := os.ReadFile(f)
			if err != nil {
				t.Fatal(err)
			}
			runTranscript(t, string(src))
		})
	}
}

func runTranscript(t *testing.T, src string) {
	lines := strings.Split(strings.ReplaceAll(src, "\r\n", "\n"), "\n")
	stub := startStub(t)
	tc := testConfig{Upstream: stub.Addr, PreauthTimeout: "5s", ConnectionWait: "20ms", UpstreamTimeout: "5s"}
	var eo envOptions
	var limitFull bool
	var wantAudits []string

	i := 0
	for ; i < len(lines); i++ {
		l := strings.TrimSpace(lines[i])
		if l == "" || strings.HasPrefix(l, "#") {
			continue
		}
		if !strings.HasPrefix(l, "!") {
			break
		}
		f := strings.Fields(strings.TrimPrefix(l, "!"))
		arg := ""
		if len(f) > 1 {
			arg = f[1]
		}
		switch f[0] {
		case "tls":
			tc.LocalTLS = true
		case "loopback":
			v := arg != "false"
			eo.loopback = &v
		case "allow_insecure_auth":
			tc.AllowInsecureAuth = true
		case "token":
			switch arg {
			case "good":
			case "bad":
				eo.tokens = tokenstest.StaticSource{"acct": "bad-token"}
			case "stale":
				eo.tokens = &staleSource{}
			case "needs_login":
				eo.tokens = errSource{tokens.NeedsLogin}
			case "failing":
				eo.tokens = errSource{tokens.Failing}
			case "temporary":
				eo.tokens = errSource{tokens.Temporary}
			default:
				t.Fatalf("line %d: unknown token %q", i+1, arg)
			}
		case "upstream":
			switch arg {
			case "down":
				ln, err := net.Listen("tcp", "127.0.0.1:0")
				if err != nil {
					t.Fatal(err)
				}
				tc.Upstream = ln.Addr().String()
				ln.Close()
			case "challenge":
				stub.mu.Lock()
				stub.challenge = true
				stub.mu.Unlock()
			case "auth-temp":
				stub.mu.Lock()
				stub.authTemp = true
				stub.mu.Unlock()
			case "greeting-err":
				stub.mu.Lock()
				stub.greeting = "-ERR Server Unavailable. 21"
				stub.mu.Unlock()
			default:
				t.Fatalf("line %d: unknown upstream %q", i+1, arg)
			}
		case "limit-full":
			limitFull = true
			tc.AccountMax = 1
		case "preauth_timeout":
			tc.PreauthTimeout = arg
		case "max_line_bytes":
			tc.MaxLineBytes, _ = strconv.Atoi(arg)
		case "max_connections":
			tc.MaxConnections, _ = strconv.Atoi(arg)
		case "deliver":
			_, text, _ := strings.Cut(strings.TrimSpace(strings.TrimPrefix(l, "!")), " ")
			uid, body, _ := strings.Cut(text, " ")
			stub.Deliver(uid, []byte(strings.ReplaceAll(body, `\r\n`, "\r\n")))
		default:
			t.Fatalf("line %d: unknown directive %q", i+1, f[0])
		}
	}

	e := newEnv(t, tc, eo)
	if limitFull {
		release, err := e.lim.Acquire(context.Background(), "mail:acct", 1, 0)
		if err != nil {
			t.Fatal(err)
		}
		defer release()
	}
	c := e.pipe()
	for ; i < len(lines); i++ {
		l := lines[i]
		if strings.TrimSpace(l) == "" || strings.HasPrefix(l, "#") {
			continue
		}
		kind, rest, ok := strings.Cut(l, ": ")
		if !ok {
			kind, rest = strings.TrimSuffix(l, ":"), ""
		}
		switch kind {
		case "C":
			if rest == "<STARTTLS>" {
				c.startTLS()
			} else {
				c.send(rest)
			}
		case "W":
			s, err := strconv.Unquote(rest)
			if err != nil {
				t.Fatalf("line %d: W: needs a quoted string: %v", i+1, err)
			}
			c.write(s)
		case "S":
			if rest == "<EOF>" {
				c.expectEOF()
			} else {
				line, err := c.readLine()
				if err != nil {
					t.Fatalf("line %d: reading, want %q: %v (partial %q)", i+1, rest, err, line)
				}
				if !match(rest, line) {
					t.Fatalf("line %d: got %q, want %q", i+1, line, rest)
				}
			}
		case "A":
			wantAudits = append(wantAudits, rest)
		default:
			t.Fatalf("line %d: unknown line kind %q", i+1, kind)
		}
	}
	// Close the client, then wait for the session to end so every audit
	// line has been written.
	c.conn.Close()
	if err := e.srv.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
	if got := e.logs.audits(); !slices.Equal(got, wantAudits) {
		t.Errorf("audit results = %q, want %q", got, wantAudits)
	}
}
