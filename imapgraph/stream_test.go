package imapgraph

import (
	"bufio"
	"errors"
	"io"
	"net"
	"strconv"
	"strings"
	"testing"
	"time"
)

// failSafe bounds a read that the test expects to succeed soon, so that a
// missing answer fails the test instead of hanging it; it is no timing
// assertion (the events come far sooner, even under -race).
const failSafe = 20 * time.Second

// untilTagged reads lines up to and including the one tagged tag.
func untilTagged(t *testing.T, r *bufio.Reader, tag string) []string {
	t.Helper()
	var lines []string
	for {
		l := readLine(t, r)
		lines = append(lines, l)
		if strings.HasPrefix(l, tag+" ") {
			return lines
		}
	}
}

// wantBYEThenClose reads until the connection ends and checks that the
// last line was the idle timeout's BYE.
func wantBYEThenClose(t *testing.T, r *bufio.Reader, c net.Conn) {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(failSafe))
	var last string
	for {
		l, err := r.ReadString('\n')
		if err != nil {
			if !errors.Is(err, io.EOF) {
				t.Fatalf("want BYE and the connection closed; got %v after %q", err, last)
			}
			break
		}
		last = strings.TrimRight(l, "\r\n")
	}
	if last != byeIdle {
		t.Fatalf("last line before the close = %q, want %q", last, byeIdle)
	}
}

// A Graph-served session applies the configured idle timeout (the
// proxy's imap { idle_timeout }), not imapserver's built-in 35 minutes:
// between commands and while in IDLE.
func TestIdleTimeoutEndsSessionWithBYE(t *testing.T) {
	var asked int
	h := newHarness(t, func(o *Options) {
		o.IdleTimeout = func() time.Duration { asked++; return 150 * time.Millisecond }
		o.IdlePoll = time.Hour // IDLE sends nothing on its own
	})
	h.mb.deliver("f-inbox", testMIME(1, "a"), day)

	t.Run("between commands", func(t *testing.T) {
		r, c, started := h.loggedIn("a2 NOOP\r\n")
		if err := <-started; err != nil {
			t.Fatal(err)
		}
		c.SetReadDeadline(time.Now().Add(failSafe))
		if l := readLine(t, r); !strings.HasPrefix(l, "a1 OK ") {
			t.Fatalf("login answer %q", l)
		}
		// Commands sent at once are served.
		untilTagged(t, r, "a2")
		wantBYEThenClose(t, r, c)
	})
	t.Run("in IDLE", func(t *testing.T) {
		r, c, started := h.loggedIn("a2 SELECT INBOX\r\na3 IDLE\r\n")
		if err := <-started; err != nil {
			t.Fatal(err)
		}
		c.SetReadDeadline(time.Now().Add(failSafe))
		readLine(t, r)
		if l := untilTagged(t, r, "a2"); !strings.HasPrefix(l[len(l)-1], "a2 OK") {
			t.Fatalf("SELECT: %q", l)
		}
		if l := readLine(t, r); !strings.HasPrefix(l, "+ ") {
			t.Fatalf("IDLE: %q", l)
		}
		wantBYEThenClose(t, r, c)
	})
	if asked != 2 {
		t.Errorf("IdleTimeout read %d times, want once per session (2)", asked)
	}
}

// Without a timeout configured, the default is the configuration's
// default.
func TestDefaultIdleTimeout(t *testing.T) {
	h := newHarness(t, nil)
	if got := h.srv.IdleTimeout(); got != DefaultIdleTimeout || DefaultIdleTimeout != 35*time.Minute {
		t.Errorf("idle timeout = %v, want %v", got, DefaultIdleTimeout)
	}
}

// ID (RFC 2971) after login gets the same answer as the proxy gives before
// login; the session goes on. Quoted strings, NIL, literals (with the
// continuation for {n}) and pipelining work; a syntax error gets BAD.
func TestIDAfterLogin(t *testing.T) {
	h := newHarness(t, nil)
	r, c, started := h.loggedIn(`a2 ID ("name" "Thunderbird" "version" "115.0")` + "\r\n")
	if err := <-started; err != nil {
		t.Fatal(err)
	}
	c.SetReadDeadline(time.Now().Add(failSafe))
	if l := readLine(t, r); !strings.Contains(l, " ID ") && !strings.Contains(l, " ID]") {
		t.Errorf("login answer %q does not advertise ID", l)
	}
	want := func(tag string) {
		t.Helper()
		lines := untilTagged(t, r, tag)
		if len(lines) != 2 || lines[0] != idReply || lines[1] != tag+" OK ID completed" {
			t.Errorf("ID %s answered %q", tag, lines)
		}
	}
	want("a2")

	c.Write([]byte("a3 NOOP\r\na4 id NIL\r\na5 NOOP\r\n"))
	if l := untilTagged(t, r, "a3"); !strings.HasPrefix(l[len(l)-1], "a3 OK") {
		t.Errorf("NOOP: %q", l)
	}
	want("a4")
	if l := untilTagged(t, r, "a5"); !strings.HasPrefix(l[len(l)-1], "a5 OK") {
		t.Errorf("NOOP: %q", l)
	}

	c.Write([]byte("a6 ID (\"name\" {11}\r\n"))
	if l := readLine(t, r); !strings.HasPrefix(l, "+ ") {
		t.Fatalf("literal in ID: %q, want a continuation", l)
	}
	c.Write([]byte("Thunderbird \"version\" {3+}\r\n115)\r\n"))
	want("a6")

	c.Write([]byte("a7 ID (\"name\"\r\n"))
	if l := untilTagged(t, r, "a7"); !strings.HasPrefix(l[len(l)-1], "a7 BAD") {
		t.Errorf("malformed ID: %q", l)
	}
	c.Write([]byte("a8 ID (\"name\" {5000}\r\n"))
	if l := untilTagged(t, r, "a8"); !strings.HasPrefix(l[len(l)-1], "a8 BAD") {
		t.Errorf("ID with a literal over 1024 bytes: %q", l)
	}
	c.Write([]byte("a10 CAPABILITY\r\n"))
	if l := untilTagged(t, r, "a10"); len(l) != 2 || !strings.HasPrefix(l[0], "* CAPABILITY IMAP4rev1 ") || !strings.HasSuffix(l[0], " ID") || !strings.Contains(l[0], " IDLE ") || l[1] != "a10 OK CAPABILITY completed" {
		t.Errorf("CAPABILITY answered %q, want imapserver's list and ID", l)
	}
	c.Write([]byte("a9 LOGOUT\r\n"))
	if l := readLine(t, r); !strings.HasPrefix(l, "* BYE") {
		t.Errorf("LOGOUT: %q", l)
	}
}

// Only command starts are taken for ID: an appended message (a literal)
// with a line that looks like an ID command, and IDLE's DONE, reach
// imapserver untouched.
func TestIDOnlyAtCommandStart(t *testing.T) {
	h := newHarness(t, func(o *Options) { o.IdlePoll = time.Hour })
	r, c, started := h.loggedIn("")
	if err := <-started; err != nil {
		t.Fatal(err)
	}
	c.SetReadDeadline(time.Now().Add(failSafe))
	readLine(t, r)
	msg := "From: a@example.com\r\nSubject: x\r\n\r\nz9 ID NIL\r\nz8 ID (\"name\" {4}\r\nbody\r\n"
	c.Write([]byte("a2 APPEND INBOX {" + strconv.Itoa(len(msg)) + "}\r\n"))
	if l := readLine(t, r); !strings.HasPrefix(l, "+ ") {
		t.Fatalf("APPEND: %q", l)
	}
	c.Write([]byte(msg + "\r\n"))
	if l := untilTagged(t, r, "a2"); len(l) != 1 || !strings.HasPrefix(l[0], "a2 OK") {
		t.Fatalf("APPEND answered %q", l)
	}
	var got []byte
	h.mb.mu.Lock()
	for _, m := range h.mb.msgs {
		got = m.mime
	}
	h.mb.mu.Unlock()
	if string(got) != msg {
		t.Errorf("appended %q, want %q", got, msg)
	}
	// A literal imapserver refuses is not sent by the client: the next
	// line is a command again.
	c.Write([]byte("a20 APPEND INBOX {200000000}\r\n"))
	if l := untilTagged(t, r, "a20"); !strings.HasPrefix(l[len(l)-1], "a20 NO") {
		t.Fatalf("APPEND over the limit answered %q", l)
	}
	c.Write([]byte("a21 ID NIL\r\n"))
	if l := untilTagged(t, r, "a21"); len(l) != 2 || l[0] != idReply {
		t.Errorf("ID after a refused literal answered %q", l)
	}
	c.Write([]byte("a3 SELECT INBOX\r\na4 IDLE\r\n"))
	untilTagged(t, r, "a3")
	if l := readLine(t, r); !strings.HasPrefix(l, "+ ") {
		t.Fatalf("IDLE: %q", l)
	}
	c.Write([]byte("DONE\r\na5 ID NIL\r\n"))
	if l := untilTagged(t, r, "a4"); !strings.HasPrefix(l[len(l)-1], "a4 OK") {
		t.Errorf("IDLE ended with %q", l)
	}
	if l := untilTagged(t, r, "a5"); len(l) != 2 || l[0] != idReply {
		t.Errorf("ID after IDLE answered %q", l)
	}
}

func TestParseIDParams(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want map[string]string
		bad  bool
	}{
		{" NIL\r\n", map[string]string{}, false},
		{` ("name" "x" "Version" NIL)` + "\r\n", map[string]string{"name": "x", "version": ""}, false},
		{` ("name" "a\"b")` + "\r\n", map[string]string{"name": `a"b`}, false},
		{" (\"name\" {3}\r\nabc)\r\n", map[string]string{"name": "abc"}, false},
		{` ("name")` + "\r\n", nil, true},
		{` ("name" "x"` + "\r\n", nil, true},
		{` "name"` + "\r\n", nil, true},
		{"\r\n", nil, true},
		{" (\"name\" {9}\r\nabc)\r\n", nil, true},
	} {
		got, err := parseIDParams([]byte(tc.in))
		if (err != nil) != tc.bad {
			t.Errorf("%q: err = %v, want bad = %v", tc.in, err, tc.bad)
			continue
		}
		if !tc.bad && len(got) != len(tc.want) {
			t.Errorf("%q = %v, want %v", tc.in, got, tc.want)
		}
		for k, v := range tc.want {
			if got[k] != v {
				t.Errorf("%q: %s = %q, want %q", tc.in, k, got[k], v)
			}
		}
	}
}

func TestLiteralAtEnd(t *testing.T) {
	for in, want := range map[string]struct {
		n       int64
		nonSync bool
		ok      bool
	}{
		"a1 APPEND INBOX {12}\r\n": {12, false, true},
		"a1 ID (\"x\" {3+}\r\n":    {3, true, true},
		"a1 NOOP\r\n":              {0, false, false},
		"a1 X {}\r\n":              {0, false, false},
		"a1 X {+}\r\n":             {0, false, false},
		"a1 X \"{3}\"\r\n":         {0, false, false},
	} {
		n, nonSync, ok := literalAtEnd([]byte(in))
		if n != want.n || nonSync != want.nonSync || ok != want.ok {
			t.Errorf("%q = %d %v %v, want %+v", in, n, nonSync, ok, want)
		}
	}
}
