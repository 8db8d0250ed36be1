// Package transcript is the one transcript format of the IMAP, POP3 and
// SMTP proxies' tests (testdata/*.txt), and its runner. One item per line:
//
//	# comment
//	! directive args   set up the test (the proxy's runner interprets it)
//	C: text            the client sends text + CRLF; inside, <CRLF> is a
//	                   line break and <LF> a bare LF, a trailing <NOEOL>
//	                   drops the final CRLF; "C:" alone sends an empty line
//	C+ text            queued and sent in one write with the next C: line
//	                   (pipelining)
//	C: <NAME>          runs the runner's action NAME (e.g. <STARTTLS>)
//	S: pattern         the next server line; * matches any run of text
//	S~ pattern         server lines are skipped until one matches
//	S: <closed>        the server closed the connection
//	K: text            a note for the runner (any other capital letter K):
//	                   A: audit result, R: rejected token, U: upstream line,
//	                   G: a scripted Graph answer, ...; collected in order
//	                   and also handed to Hooks.Note at its place
package transcript

import (
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"syscall"
	"testing"
)

// Directive is one "! name args" line.
type Directive struct {
	Line int
	Args []string // name first
	Rest string   // everything after the name, as written
}

// step is one C:, C+, S:, S~ or note line.
type step struct {
	line int
	op   string // "C", "C+", "S", "S~", or a note key
	text string
}

// Script is a parsed transcript.
type Script struct {
	File       string
	Directives []Directive
	Notes      map[string][]string // by key, in order
	steps      []step
}

// ParseFile reads and parses a transcript.
func ParseFile(file string) (*Script, error) {
	src, err := os.ReadFile(file)
	if err != nil {
		return nil, err
	}
	return Parse(file, string(src))
}

// Parse parses a transcript; file names it in errors.
func Parse(file, src string) (*Script, error) {
	s := &Script{File: file, Notes: map[string][]string{}}
	for i, line := range strings.Split(strings.ReplaceAll(src, "\r\n", "\n"), "\n") {
		n := i + 1
		switch {
		case strings.TrimSpace(line) == "" || strings.HasPrefix(line, "#"):
		case strings.HasPrefix(line, "! "):
			rest := strings.TrimSpace(line[2:])
			f := strings.Fields(rest)
			_, after, _ := strings.Cut(rest, " ")
			s.Directives = append(s.Directives, Directive{Line: n, Args: f, Rest: strings.TrimSpace(after)})
		case line == "C:":
			s.steps = append(s.steps, step{n, "C", ""})
		case strings.HasPrefix(line, "C: "), strings.HasPrefix(line, "S: "):
			s.steps = append(s.steps, step{n, line[:1], line[3:]})
		case strings.HasPrefix(line, "C+ "):
			s.steps = append(s.steps, step{n, "C+", line[3:]})
		case strings.HasPrefix(line, "S~ "):
			s.steps = append(s.steps, step{n, "S~", line[3:]})
		case len(line) >= 3 && line[0] >= 'A' && line[0] <= 'Z' && line[1:3] == ": ":
			key := line[:1]
			s.Notes[key] = append(s.Notes[key], line[3:])
			s.steps = append(s.steps, step{n, key, line[3:]})
		default:
			return nil, fmt.Errorf("%s:%d: unknown transcript line %q", file, n, line)
		}
	}
	return s, nil
}

// Conn is the client side a Script runs over. ReadLine returns one server
// line without its line ending, or an error once the server closed the
// connection (or a deadline passed).
type Conn interface {
	Write(data string) error
	ReadLine() (string, error)
}

// Hooks are a runner's extensions; every field is optional.
type Hooks struct {
	// Expand rewrites a C: text before it is sent (placeholders).
	Expand func(string) string
	// Actions are run by "C: <NAME>".
	Actions map[string]func() error
	// Note is called at each note line's place.
	Note func(key, text string) error
}

// ErrClosed is what a Conn's ReadLine may return for a closed connection.
var ErrClosed = errors.New("transcript: connection closed")

// Run plays the script's C: and S: lines over c and stops the test at the
// first difference, naming the transcript's file and line.
func (s *Script) Run(t testing.TB, c Conn, h Hooks) {
	t.Helper()
	var queued strings.Builder
	for _, st := range s.steps {
		where := fmt.Sprintf("%s:%d", s.File, st.line)
		switch st.op {
		case "C", "C+":
			if st.op == "C" && strings.HasPrefix(st.text, "<") && strings.HasSuffix(st.text, ">") && queued.Len() == 0 {
				if act, ok := h.Actions[strings.Trim(st.text, "<>")]; ok {
					if err := act(); err != nil {
						t.Fatalf("%s: %s: %v", where, st.text, err)
					}
					continue
				}
			}
			queued.WriteString(clientBytes(st.text, h.Expand))
			if st.op == "C+" {
				continue
			}
			if err := c.Write(queued.String()); err != nil {
				t.Fatalf("%s: write: %v", where, err)
			}
			queued.Reset()
		case "S", "S~":
			if st.text == "<closed>" {
				line, err := c.ReadLine()
				if err == nil {
					t.Fatalf("%s: got %q, want the connection closed", where, line)
				}
				if !closedErr(err) {
					t.Fatalf("%s: read error %v, want the connection closed", where, err)
				}
				continue
			}
			for {
				line, err := c.ReadLine()
				if err != nil {
					t.Fatalf("%s: want %q, read error %v", where, st.text, err)
				}
				if Match(st.text, line) {
					break
				}
				if st.op == "S" {
					t.Fatalf("%s: got %q, want %q", where, line, st.text)
				}
			}
		default:
			if h.Note != nil {
				if err := h.Note(st.op, st.text); err != nil {
					t.Fatalf("%s: %v", where, err)
				}
			}
		}
	}
}

// closedErr reports whether a read error means the server closed the
// connection (not a deadline that passed).
func closedErr(err error) bool {
	return errors.Is(err, ErrClosed) || errors.Is(err, io.EOF) || errors.Is(err, net.ErrClosed) ||
		errors.Is(err, io.ErrClosedPipe) || errors.Is(err, syscall.ECONNRESET)
}

// clientBytes resolves a C: text's escapes and appends its CRLF.
func clientBytes(text string, expand func(string) string) string {
	if expand != nil {
		text = expand(text)
	}
	text = strings.ReplaceAll(strings.ReplaceAll(text, "<CRLF>", "\r\n"), "<LF>", "\n")
	if s, ok := strings.CutSuffix(text, "<NOEOL>"); ok {
		return s
	}
	return text + "\r\n"
}

// Match reports whether line matches pattern, where * matches any run of
// characters and every other character only itself.
func Match(pattern, line string) bool {
	parts := strings.Split(pattern, "*")
	if len(parts) == 1 {
		return pattern == line
	}
	if !strings.HasPrefix(line, parts[0]) {
		return false
	}
	line = line[len(parts[0]):]
	for i, p := range parts[1:] {
		if i == len(parts)-2 {
			return strings.HasSuffix(line, p)
		}
		j := strings.Index(line, p)
		if j < 0 {
			return false
		}
		line = line[j+len(p):]
	}
	return true
}
