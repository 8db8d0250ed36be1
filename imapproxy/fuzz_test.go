package imapproxy

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// FuzzReadCommand feeds arbitrary bytes to the pre-auth command parser:
// it must never panic, never hand out more than the line budget, and
// always make progress (every call consumes input or fails).
func FuzzReadCommand(f *testing.F) {
	for _, s := range []string{
		"a1 LOGIN otrs secret\r\n",
		"a1 LOGIN \"we\\\"ird\" {5}\r\nhello\r\n",
		"a1 LOGIN {5+}\r\nhello \"x\"\r\n",
		"a1 LOGIN {1073741824}\r\n",
		"a1 AUTHENTICATE PLAIN AG90cnMAc2VjcmV0\r\n",
		"a1 AUTHENTICATE PLAIN =\r\n",
		"a1 ID (\"name\" \"x\" \"version\" NIL)\r\na2 ID NIL\r\n",
		"a1 CAPABILITY\r\na2 NOOP\r\na3 STARTTLS\r\na4 LOGOUT\r\n",
		"* LOGIN\r\n",
		"a1 LOGIN \"unterminated\r\n",
		"a1 SELECT INBOX\r\n",
		"\x00\xff\r\n",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		const maxLine, maxLiteral = 256, 64
		br := bufio.NewReader(bytes.NewReader(data))
		conts := 0
		r := cmdReader{br: br, cont: func() error { conts++; return nil }, maxLine: maxLine, maxLiteral: maxLiteral}
		for i := 0; i <= len(data); i++ {
			cmd, err := r.readCommand()
			if cmd == nil {
				t.Fatal("nil command")
			}
			if len(cmd.tag)+len(cmd.user)+len(cmd.pass)+len(cmd.mech) > maxLine {
				t.Fatalf("command exceeds the line budget: %d bytes", len(cmd.tag)+len(cmd.user)+len(cmd.pass))
			}
			if err == nil {
				continue
			}
			var se *syntaxError
			var lt *literalTooLarge
			switch {
			case errors.As(err, &se):
				if r.skipLine() != nil {
					return
				}
			case errors.As(err, &lt) && !lt.nonSync:
				if lt.size <= uint64(lt.max) {
					t.Fatalf("literal of %d refused with max %d", lt.size, lt.max)
				}
			default:
				return // EOF, line too long, non-sync literal: the session closes
			}
		}
		t.Fatalf("parser did not finish %d bytes in %d commands", len(data), len(data)+1)
	})
}

// FuzzDecodeSASL checks the SASL response decoding used by AUTHENTICATE.
func FuzzDecodeSASL(f *testing.F) {
	for _, s := range []string{"=", "", "AG90cnMAc2VjcmV0", "b3Rycw==", "!!!", "b3Rycw", "*"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		b, err := decodeSASL(s)
		if err != nil {
			return
		}
		if s == "=" {
			if len(b) != 0 {
				t.Fatalf("\"=\" decoded to %q", b)
			}
			return
		}
		if len(b) > len(s) {
			t.Fatalf("decoded %d bytes from %d characters", len(b), len(s))
		}
	})
}

// panicFlag is a slog handler that only notes whether a session panicked
// (the front door recovers and logs "panic in session").
type panicFlag struct{ hit *atomic.Value }

func (h panicFlag) Enabled(context.Context, slog.Level) bool { return true }
func (h panicFlag) Handle(_ context.Context, r slog.Record) error {
	if strings.HasPrefix(r.Message, "panic") {
		var stack string
		r.Attrs(func(a slog.Attr) bool {
			if a.Key == "stack" || a.Key == "error" {
				stack += a.Value.String() + "\n"
			}
			return true
		})
		h.hit.Store(stack)
	}
	return nil
}
func (h panicFlag) WithAttrs([]slog.Attr) slog.Handler { return h }
func (h panicFlag) WithGroup(string) slog.Handler      { return h }

// FuzzSession feeds arbitrary client bytes to ServeConn over net.Pipe with
// a stub upstream: no panic, and the session ends once the client has sent
// everything and closed.
func FuzzSession(f *testing.F) {
	for _, s := range []string{
		"a1 LOGIN otrs secret\r\na2 SELECT INBOX\r\na3 LOGOUT\r\n",
		"a1 AUTHENTICATE PLAIN\r\nAG90cnMAc2VjcmV0\r\n",
		"a1 AUTHENTICATE LOGIN\r\nb3Rycw==\r\nc2VjcmV0\r\n",
		"a1 AUTHENTICATE PLAIN b3RocgBvdHJzAHNlY3JldA==\r\n",
		"a1 LOGIN otrs wrong\r\na2 LOGIN otrs wrong\r\na3 LOGIN otrs wrong\r\n",
		"a1 LOGIN {4}\r\notrs {6}\r\nsecret\r\n",
		"a1 STARTTLS\r\n\x16\x03\x01",
		"a1 ID (\"name\" \"fuzz\")\r\na2 CAPABILITY\r\n",
		"\x00\x01\x02\r\n\xff\xfe\r\n",
	} {
		f.Add([]byte(s))
	}
	e := newEnv(f)
	var hit atomic.Value
	e.opts.Logger = slog.New(panicFlag{&hit})
	srv := e.start()
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
			t.Fatalf("ServeConn did not return after the client closed")
		}
		if v := hit.Load(); v != nil && v.(string) != "" {
			t.Fatalf("session panicked:\n%s", v)
		}
	})
}
