package imapproxy

import (
	"bufio"
	"errors"
	"runtime"
	"strings"
	"testing"

	"github.com/oauthbridge/oauthbridge/internal/transcript"
)

func newTestReader(input string) (*cmdReader, *int) {
	conts := 0
	return &cmdReader{
		br:         bufio.NewReader(strings.NewReader(input)),
		cont:       func() error { conts++; return nil },
		maxLine:    1024,
		maxLiteral: 64,
	}, &conts
}

func TestReadCommand(t *testing.T) {
	tests := []struct {
		name, in           string
		wantName, wantUser string
		wantPass           string
		wantConts          int
		wantErr            string // substring; "" = no error
	}{
		{name: "atoms", in: "a1 LOGIN otrs secret\r\n", wantName: "LOGIN", wantUser: "otrs", wantPass: "secret"},
		{name: "lower case", in: "a1 login otrs secret\r\n", wantName: "LOGIN", wantUser: "otrs", wantPass: "secret"},
		{name: "bare LF", in: "a1 LOGIN otrs secret\n", wantName: "LOGIN", wantUser: "otrs", wantPass: "secret"},
		{name: "quoted escapes", in: `a1 LOGIN "o t" "p\"w\\d"` + "\r\n", wantName: "LOGIN", wantUser: "o t", wantPass: `p"w\d`},
		{name: "utf8 quoted", in: "a1 LOGIN \"jörg\" \"pässwörd\"\r\n", wantName: "LOGIN", wantUser: "jörg", wantPass: "pässwörd"},
		{name: "sync literals", in: "a1 LOGIN {4}\r\notrs {3}\r\na\"b\r\n", wantName: "LOGIN", wantUser: "otrs", wantPass: `a"b`, wantConts: 2},
		{name: "nonsync literal", in: "a1 LOGIN {4+}\r\notrs \"x\"\r\n", wantName: "LOGIN", wantUser: "otrs", wantPass: "x"},
		{name: "empty literal", in: "a1 LOGIN otrs {0}\r\n\r\n", wantName: "LOGIN", wantUser: "otrs", wantPass: "", wantConts: 1},
		{name: "literal with CRLF inside", in: "a1 LOGIN otrs {4+}\r\na\r\nb\r\n", wantName: "LOGIN", wantUser: "otrs", wantPass: "a\r\nb"},
		{name: "bracket in atom", in: "a1 LOGIN us]er pw\r\n", wantName: "LOGIN", wantUser: "us]er", wantPass: "pw"},
		{name: "capability", in: "t CAPABILITY\r\n", wantName: "CAPABILITY"},
		{name: "unknown", in: "a1 SELECT INBOX\r\n", wantErr: "unknown command"},
		{name: "no tag", in: "\r\n", wantErr: "expected a tag"},
		{name: "plus in tag", in: "a+ NOOP\r\n", wantErr: "expected a space"},
		{name: "trailing junk", in: "a1 NOOP x\r\n", wantErr: "end of the command"},
		{name: "bad escape", in: `a1 LOGIN "a\b" c` + "\r\n", wantErr: "invalid escape"},
		{name: "unterminated quote", in: "a1 LOGIN \"abc\r\n", wantErr: "unterminated"},
		{name: "missing password", in: "a1 LOGIN otrs\r\n", wantErr: "expected a space"},
		{name: "literal too large", in: "a1 LOGIN {65}\r\n", wantErr: "exceeds the limit"},
		{name: "literal size not at end", in: "a1 LOGIN {4} x\r\n", wantErr: "must end the line"},
		{name: "literal no digits", in: "a1 LOGIN {}\r\n", wantErr: "invalid literal size"},
		{name: "line too long", in: "a1 LOGIN " + strings.Repeat("x", 2000) + " y\r\n", wantErr: "too long"},
		{name: "eof", in: "a1 LOG", wantErr: "EOF"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r, conts := newTestReader(tc.in)
			cmd, err := r.readCommand()
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("readCommand() = %+v, %v; want error containing %q", cmd, err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("readCommand() = %v", err)
			}
			if cmd.name != tc.wantName || cmd.user != tc.wantUser || cmd.pass != tc.wantPass {
				t.Errorf("readCommand() = %q %q %q, want %q %q %q", cmd.name, cmd.user, cmd.pass, tc.wantName, tc.wantUser, tc.wantPass)
			}
			if *conts != tc.wantConts {
				t.Errorf("continuations = %d, want %d", *conts, tc.wantConts)
			}
		})
	}
}

func TestReadCommandAuthenticateAndID(t *testing.T) {
	r, _ := newTestReader("a AUTHENTICATE plain AG90cnMAc2VjcmV0\r\nb AUTHENTICATE LOGIN\r\nc ID (\"name\" \"OTRS\" \"os\" NIL)\r\nd ID NIL\r\n")
	cmd, err := r.readCommand()
	if err != nil || cmd.mech != "PLAIN" || cmd.ir == nil || *cmd.ir != "AG90cnMAc2VjcmV0" {
		t.Fatalf("readCommand() = %+v, %v; want PLAIN with an initial response", cmd, err)
	}
	cmd, err = r.readCommand()
	if err != nil || cmd.mech != "LOGIN" || cmd.ir != nil {
		t.Fatalf("readCommand() = %+v, %v; want LOGIN without an initial response", cmd, err)
	}
	cmd, err = r.readCommand()
	if err != nil || cmd.id["name"] != "OTRS" || cmd.id["os"] != "" {
		t.Fatalf("readCommand() = %+v, %v; want ID name OTRS", cmd, err)
	}
	cmd, err = r.readCommand()
	if err != nil || cmd.name != "ID" || cmd.id != nil {
		t.Fatalf("readCommand() = %+v, %v; want ID NIL", cmd, err)
	}
}

// A skipped bad line that ends in a non-synchronising literal skips its
// data too, so the data is not run as a command.
func TestSkipLineNonSyncLiteral(t *testing.T) {
	r, _ := newTestReader("a1 SELECT {5+}\r\nb2 NO\r\nc3 NOOP\r\n")
	_, err := r.readCommand()
	var se *syntaxError
	if !errors.As(err, &se) {
		t.Fatalf("readCommand() = %v, want a syntax error", err)
	}
	if err := r.skipLine(); err != nil {
		t.Fatalf("skipLine() = %v", err)
	}
	cmd, err := r.readCommand()
	if err != nil || cmd.tag != "c3" || cmd.name != "NOOP" {
		t.Fatalf("readCommand() = %+v, %v; want c3 NOOP", cmd, err)
	}
}

// A literal announced as a billion bytes must be refused without
// allocating it.
func TestHugeLiteralDoesNotAllocate(t *testing.T) {
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	for range 10 {
		r, conts := newTestReader("a1 LOGIN {1000000000}\r\n")
		r.maxLiteral = 4096
		_, err := r.readCommand()
		var lt *literalTooLarge
		if !errors.As(err, &lt) || lt.nonSync || *conts != 0 {
			t.Fatalf("readCommand() = %v (continuations %d), want a refused synchronising literal without continuation", err, *conts)
		}
	}
	runtime.ReadMemStats(&after)
	if grew := after.TotalAlloc - before.TotalAlloc; grew > 1<<20 {
		t.Fatalf("refusing 10 huge literals allocated %d bytes", grew)
	}
}

func TestTrailingLiteral(t *testing.T) {
	tests := []struct {
		in        string
		n         uint64
		nonSync   bool
		isLiteral bool
	}{
		{"a1 X {5}", 5, false, true},
		{"a1 X {5+}", 5, true, true},
		{"a1 X {}", 0, false, false},
		{"a1 X {a}", 0, false, false},
		{"a1 X", 0, false, false},
	}
	for _, tc := range tests {
		n, ns, ok := trailingLiteral(tc.in)
		if n != tc.n || ns != tc.nonSync || ok != tc.isLiteral {
			t.Errorf("trailingLiteral(%q) = %d %v %v, want %d %v %v", tc.in, n, ns, ok, tc.n, tc.nonSync, tc.isLiteral)
		}
	}
}

func TestMatchLine(t *testing.T) {
	tests := []struct {
		pattern, line string
		want          bool
	}{
		{"a1 OK", "a1 OK", true},
		{"a1 OK *", "a1 OK [CAPABILITY X] Logged in", true},
		{"* OK [CAPABILITY *] oauthbridge ready", "* OK [CAPABILITY A/B C] oauthbridge ready", true},
		{"a1 NO *", "a1 OK x", false},
		{"*x", "abc", false},
		{"a*b*c", "aXbYc", true},
	}
	for _, tc := range tests {
		if got := transcript.Match(tc.pattern, tc.line); got != tc.want {
			t.Errorf("Match(%q, %q) = %v, want %v", tc.pattern, tc.line, got, tc.want)
		}
	}
}

// BenchmarkPreauthParser measures decoding of typical pre-auth commands.
func BenchmarkPreauthParser(b *testing.B) {
	input := "a0 CAPABILITY\r\na1 ID (\"name\" \"OTRS\" \"version\" \"8.0\")\r\n" +
		"a2 LOGIN \"otrs\" \"p\\\"ssw\\\\rd\"\r\na3 LOGIN {4+}\r\notrs {6+}\r\nsecret\r\n" +
		"a4 AUTHENTICATE PLAIN AG90cnMAc2VjcmV0\r\n"
	b.SetBytes(int64(len(input)))
	b.ReportAllocs()
	sr := strings.NewReader(input)
	r := &cmdReader{br: bufio.NewReader(sr), maxLine: 50 * 1024, maxLiteral: 4096}
	for b.Loop() {
		sr.Reset(input)
		r.br.Reset(sr)
		for range 5 {
			if _, err := r.readCommand(); err != nil {
				b.Fatal(err)
			}
		}
	}
}
