package pop3proxy

import (
	"bufio"
	"bytes"
	"context"
	"io"
	"log/slog"
	"net"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/oauthbridge/oauthbridge/config"
	"github.com/oauthbridge/oauthbridge/internal/limiter"
	"github.com/oauthbridge/oauthbridge/internal/localauth"
	"github.com/oauthbridge/oauthbridge/tokens/tokenstest"
)

// FuzzReadLine feeds arbitrary bytes to the pre-auth line reader and the
// command splitter: no panic, no line over the limit, and every line read
// consumes input.
func FuzzReadLine(f *testing.F) {
	for _, s := range []string{
		"USER otrs\r\nPASS s3cret pass\r\n",
		"AUTH PLAIN AG90cnMAczNjcmV0IHBhc3M=\r\n",
		"CAPA\nQUIT\n",
		"no newline at all",
		"\r\n\r\n\r\n",
		"x" + strings.Repeat("y", 100) + "\r\n",
	} {
		f.Add([]byte(s), uint8(16))
	}
	f.Fuzz(func(t *testing.T, data []byte, max uint8) {
		limit := int(max)
		br := bufio.NewReaderSize(bytes.NewReader(data), 16) // small buffer: exercise ErrBufferFull
		for range len(data) + 1 {
			line, err := readLimitedLine(br, limit)
			if err != nil {
				return
			}
			if limit > 0 && len(line) > limit+2 {
				t.Fatalf("line of %d bytes with limit %d", len(line), limit)
			}
			cmd, arg := parseCommand(line)
			word, rest, _ := strings.Cut(line, " ")
			if cmd != strings.ToUpper(word) || arg != rest {
				t.Fatalf("parseCommand(%q) = %q, %q", line, cmd, arg)
			}
		}
		t.Fatal("reader did not reach the end of the input")
	})
}

// panicFlag notes a recovered session panic ("panic in session", logged by the front door).
type panicFlag struct{ hit *atomic.Value }

func (h panicFlag) Enabled(context.Context, slog.Level) bool { return true }
func (h panicFlag) Handle(_ context.Context, r slog.Record) error {
	if strings.HasPrefix(r.Message, "panic") {
		var s string
		r.Attrs(func(a slog.Attr) bool { s += a.Key + "=" + a.Value.String() + "\n"; return true })
		h.hit.Store(s)
	}
	return nil
}
func (h panicFlag) WithAttrs([]slog.Attr) slog.Handler { return h }
func (h panicFlag) WithGroup(string) slog.Handler      { return h }

// FuzzSession feeds arbitrary client bytes to ServeConn over net.Pipe with
// a stub upstream: no panic, and the session ends once the client closed.
// The SASL PLAIN/LOGIN decoding of AUTH runs inside the session.
func FuzzSession(f *testing.F) {
	for _, s := range []string{
		"USER otrs\r\nPASS s3cret pass\r\nSTAT\r\nLIST\r\nRETR 1\r\nQUIT\r\n",
		"AUTH PLAIN AG90cnMAczNjcmV0IHBhc3M=\r\nUIDL\r\n",
		"AUTH PLAIN\r\nAG90cnMAczNjcmV0IHBhc3M=\r\n",
		"AUTH LOGIN b3Rycw==\r\nczNjcmV0IHBhc3M=\r\n",
		"AUTH PLAIN Ym9zcwBvdHJzAHMzY3JldCBwYXNz\r\n",
		"AUTH PLAIN =\r\nAUTH LOGIN\r\n*\r\n",
		"AUTH\r\nCAPA\r\nSTLS\r\n",
		"USER otrs\r\nPASS wrong\r\nUSER otrs\r\nPASS wrong\r\n",
		"\x00\xff\r\n\r\nAPOP x y\r\n",
	} {
		f.Add([]byte(s))
	}
	stub := startStub(f)
	stub.Deliver("1", []byte("Subject: fuzz\r\n\r\nbody\r\n"))
	cfg := parseConfig(f, testConfig{Upstream: stub.Addr, PreauthTimeout: "5s"})
	var hit atomic.Value
	srv := New(Options{
		Config:       func() *config.Config { return cfg },
		Auth:         localauth.New(cfg, localauth.Options{}),
		Tokens:       tokenstest.StaticSource{"acct": goodToken},
		Limiter:      &limiter.Limiter{},
		Logger:       slog.New(panicFlag{&hit}),
		FailureDelay: -1,
	})
	f.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		srv.Shutdown(ctx)
	})
	f.Fuzz(func(t *testing.T, data []byte) {
		cc, sc := net.Pipe()
		done := make(chan struct{})
		go func() {
			defer close(done)
			srv.ServeConn(sc, false)
		}()
		go io.Copy(io.Discard, cc)
		cc.SetWriteDeadline(time.Now().Add(2 * time.Second))
		cc.Write(data)
		cc.Close()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			t.Fatal("ServeConn did not return after the client closed")
		}
		if v := hit.Load(); v != nil {
			t.Fatalf("session panicked:\n%s", v)
		}
	})
}
