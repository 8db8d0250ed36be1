package pop3proxy

import (
	"context"
	"net"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/oauthbridge/oauthbridge/internal/transcript"
	"github.com/oauthbridge/oauthbridge/tokens"
	"github.com/oauthbridge/oauthbridge/tokens/tokenstest"
)

// TestTranscripts replays testdata/*.txt (the format of internal/transcript)
// over net.Pipe against a stub upstream. "C: <STARTTLS>" runs the client's
// TLS handshake; A: notes are the audit results, in order.
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
			sc, err := transcript.ParseFile(f)
			if err != nil {
				t.Fatal(err)
			}
			runTranscript(t, sc)
		})
	}
}

func runTranscript(t *testing.T, sc *transcript.Script) {
	stub := startStub(t)
	tc := testConfig{Upstream: stub.Addr, PreauthTimeout: "5s", ConnectionWait: "20ms", UpstreamTimeout: "5s"}
	var eo envOptions
	var limitFull bool

	for _, d := range sc.Directives {
		i := d.Line - 1
		f := d.Args

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
			uid, body, _ := strings.Cut(d.Rest, " ")
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
	sc.Run(t, clientConn{c}, transcript.Hooks{Actions: map[string]func() error{
		"STARTTLS": func() error { c.startTLS(); return nil },
	}})
	// Close the client, then wait for the session to end so every audit
	// line has been written.
	c.conn.Close()
	if err := e.srv.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
	if got, want := e.logs.audits(), sc.Notes["A"]; !slices.Equal(got, want) {
		t.Errorf("audit results = %q, want %q", got, want)
	}
}

// clientConn adapts client to transcript.Conn.
type clientConn struct{ c *client }

func (cc clientConn) Write(s string) error { cc.c.write(s); return nil }

func (cc clientConn) ReadLine() (string, error) { return cc.c.readLine() }
