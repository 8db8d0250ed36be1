package transcript

import (
	"errors"
	"strings"
	"testing"
)

func TestMatch(t *testing.T) {
	for _, tc := range []struct {
		p, l string
		want bool
	}{
		{"a1 OK", "a1 OK", true},
		{"a1 OK", "a1 NO", false},
		{"* OK *", "* OK [CAPABILITY X] ready", true},
		{"250 *", "250-PIPELINING", false},
		{"*x*x", "axbx", true},
		{"*xx", "x", false},
		{"[a]?", "[a]?", true}, // no other wildcard than *
	} {
		if got := Match(tc.p, tc.l); got != tc.want {
			t.Errorf("Match(%q, %q) = %v", tc.p, tc.l, got)
		}
	}
}

type fakeConn struct {
	sent  []string
	lines []string
}

func (f *fakeConn) Write(s string) error { f.sent = append(f.sent, s); return nil }
func (f *fakeConn) ReadLine() (string, error) {
	if len(f.lines) == 0 {
		return "", ErrClosed
	}
	l := f.lines[0]
	f.lines = f.lines[1:]
	return l, nil
}

func TestRun(t *testing.T) {
	src := "# c\n! tls on\nS: +OK *\nC+ USER {U}\nC: PASS x<NOEOL>\nA: ok\nC: <GO>\nS~ last\nC:\nS: <closed>\n"
	s, err := Parse("t.txt", src)
	if err != nil {
		t.Fatal(err)
	}
	if len(s.Directives) != 1 || s.Directives[0].Rest != "on" || s.Notes["A"][0] != "ok" {
		t.Fatalf("parsed %+v", s)
	}
	c := &fakeConn{lines: []string{"+OK hi", "skip", "last"}}
	var went bool
	var notes []string
	s.Run(t, c, Hooks{
		Expand:  strings.NewReplacer("{U}", "otrs").Replace,
		Actions: map[string]func() error{"GO": func() error { went = true; return nil }},
		Note:    func(k, v string) error { notes = append(notes, k+v); return nil },
	})
	if strings.Join(c.sent, "|") != "USER otrs\r\nPASS x|\r\n" || !went || len(notes) != 1 {
		t.Fatalf("sent %q, action %v, notes %v", c.sent, went, notes)
	}
	if _, err := Parse("t.txt", "X bad\n"); err == nil || !errors.Is(err, err) {
		t.Fatal("a bad line parsed")
	}
}
