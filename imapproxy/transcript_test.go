package imapproxy

import (
	"context"
	"crypto/tls"
	"net"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/oauthbridge/oauthbridge/internal/localauth"
	"github.com/oauthbridge/oauthbridge/internal/transcript"
	"github.com/oauthbridge/oauthbridge/tokens"
)

// TestTranscripts replays testdata/*.txt (the format of internal/transcript)
// against ServeConn over net.Pipe with the stub upstream. Notes: A: the
// audit results, R: the Tokens.Rejected calls, U: the commands the upstream
// saw after login, each in order.
func TestTranscripts(t *testing.T) {
	files, err := filepath.Glob("testdata/*.txt")
	if err != nil || len(files) == 0 {
		t.Fatalf("no transcripts: %v", err)
	}
	for _, f := range files {
		t.Run(strings.TrimSuffix(filepath.Base(f), ".txt"), func(t *testing.T) {
			t.Parallel()
			runTranscript(t, f)
		})
	}
}

// pipeConn adapts pipeClient to transcript.Conn.
type pipeConn struct{ pc *pipeClient }

func (p pipeConn) Write(s string) error { p.pc.send(s); return nil }

func (p pipeConn) ReadLine() (string, error) {
	l, ok := p.pc.next()
	if !ok {
		return "", transcript.ErrClosed
	}
	return l, nil
}

func runTranscript(t *testing.T, file string) {
	sc, err := transcript.ParseFile(file)
	if err != nil {
		t.Fatal(err)
	}
	e := newEnv(t)
	for _, d := range sc.Directives {
		e.directive(t, d.Args, d.Line)
	}
	wantAudit, wantRejected, wantUpstream := sc.Notes["A"], sc.Notes["R"], sc.Notes["U"]
	e.start()
	pc := e.dialPipe()
	sc.Run(t, pipeConn{pc}, transcript.Hooks{})
	pc.close()
	if got := e.logs.audits(); !reflect.DeepEqual(got, wantAudit) && !(len(got) == 0 && len(wantAudit) == 0) {
		t.Errorf("audit results = %q, want %q", got, wantAudit)
	}
	e.toks.mu.Lock()
	gotRejected := e.toks.rejected
	e.toks.mu.Unlock()
	if !reflect.DeepEqual(gotRejected, wantRejected) && !(len(gotRejected) == 0 && len(wantRejected) == 0) {
		t.Errorf("Rejected() calls = %q, want %q", gotRejected, wantRejected)
	}
	if wantUpstream != nil {
		// The upstream may still be reading the last spliced bytes.
		deadline := time.Now().Add(2 * time.Second)
		for !reflect.DeepEqual(e.up.seen(), wantUpstream) && time.Now().Before(deadline) {
			time.Sleep(5 * time.Millisecond)
		}
		if got := e.up.seen(); !reflect.DeepEqual(got, wantUpstream) {
			t.Errorf("upstream saw %q, want %q", got, wantUpstream)
		}
	}
}

func (e *env) directive(t *testing.T, f []string, line int) {
	arg := func(i int) string {
		if len(f) <= i {
			t.Fatalf("line %d: directive %q needs an argument", line, f[0])
		}
		return f[i]
	}
	atoi := func(s string) int {
		n, err := strconv.Atoi(s)
		if err != nil {
			t.Fatalf("line %d: %v", line, err)
		}
		return n
	}
	switch f[0] {
	case "loopback":
		v := arg(1) == "true"
		e.opts.IsLoopback = func(net.Addr) bool { return v }
	case "insecure":
		e.cfg.IMAP.AllowInsecureAuth = true
	case "localtls":
		e.cfg.LocalTLS = &tls.Config{Certificates: []tls.Certificate{getCert(t).cert}}
	case "upstream":
		e.up.setMode(arg(1))
	case "upstreamdown":
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		addr := ln.Addr().String()
		ln.Close()
		e.cfg.AccountByName["acct"].Provider.IMAPServer = addr
	case "tokens":
		e.toks.seq = strings.Split(arg(1), ",")
	case "tokenerr":
		kinds := map[string]tokens.Kind{"needs_login": tokens.NeedsLogin, "failing": tokens.Failing, "temporary": tokens.Temporary}
		e.toks.err = &tokens.Error{Account: "acct", Kind: kinds[arg(1)], Reason: "scripted " + arg(1), AADSTS: 70008}
	case "hold":
		for range atoi(arg(1)) {
			release, err := e.lim.Acquire(context.Background(), "mail:acct", 100, 0)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(release)
		}
	case "maxline":
		e.cfg.IMAP.Limits.MaxLineBytes = atoi(arg(1))
	case "maxliteral":
		e.cfg.IMAP.Limits.MaxLiteralBytes = atoi(arg(1))
	case "preauth":
		d, err := time.ParseDuration(arg(1))
		if err != nil {
			t.Fatal(err)
		}
		e.cfg.IMAP.Limits.PreauthTimeout = d
	case "throttle":
		// One check per hour for the user, the first one spent at once.
		e.authOpt = localauth.Options{Burst: 1, CheckInterval: time.Hour, ThrottledHold: time.Millisecond, MaxQueueWait: time.Second}
	default:
		t.Fatalf("line %d: unknown directive %q", line, f[0])
	}
}
