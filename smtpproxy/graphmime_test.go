package smtpproxy

import (
	"bytes"
	"net/mail"
	"strings"
	"testing"
)

func TestFitRecipients(t *testing.T) {
	cases := []struct {
		name, in string
		env      []string
		to, cc   string // want (header values after parsing)
		bcc      string
		body     string
	}{
		{"all in envelope, kept byte for byte", "To: \"Doe, John\" <j@x.com>,\r\n k@x.com\r\nSubject: s\r\n\r\nbody\r\n",
			[]string{"J@X.com", "k@x.com"}, "\"Doe, John\" <j@x.com>, k@x.com", "", "", "body\r\n"},
		{"envelope-only becomes Bcc", "To: a@x.com\r\n\r\nb\r\n", []string{"a@x.com", "hidden@y.com"}, "a@x.com", "", "<hidden@y.com>", "b\r\n"},
		{"header-only is removed", "To: a@x.com, evil@z.com\r\nCc: =?utf-8?q?J=C3=BCrgen?= <j@x.com>, c@z.com\r\nBcc: spy@z.com, a2@x.com\r\n\r\nb\r\n",
			[]string{"a@x.com", "j@x.com", "a2@x.com"}, "<a@x.com>", "=?utf-8?q?J=C3=BCrgen?= <j@x.com>", "<a2@x.com>", "b\r\n"},
		{"all of To removed", "To: evil@z.com\r\nSubject: x\r\n\r\nb\r\n", []string{"a@x.com"}, "", "", "<a@x.com>", "b\r\n"},
		{"no body", "To: a@x.com\r\nSubject: x\r\n", []string{"a@x.com"}, "a@x.com", "", "", ""},
		{"group", "To: team: a@x.com, b@x.com;\r\n\r\nb\r\n", []string{"a@x.com", "b@x.com"}, "team: a@x.com, b@x.com;", "", "", "b\r\n"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			rh, err := fitRecipients(strings.NewReader(tc.in), tc.env)
			if err != nil {
				t.Fatal(err)
			}
			out := append(append([]byte(nil), rh.header...), tc.in[rh.bodyOff:]...)
			m, err := mail.ReadMessage(bytes.NewReader(out))
			if err != nil {
				t.Fatalf("output is not a message: %v\n%q", err, out)
			}
			if got := m.Header.Get("To"); got != tc.to {
				t.Errorf("To = %q, want %q", got, tc.to)
			}
			if got := m.Header.Get("Cc"); got != tc.cc {
				t.Errorf("Cc = %q, want %q", got, tc.cc)
			}
			if got := m.Header.Get("Bcc"); got != tc.bcc {
				t.Errorf("Bcc = %q, want %q", got, tc.bcc)
			}
			if got := tc.in[rh.bodyOff:]; got != tc.body {
				t.Errorf("body = %q, want %q", got, tc.body)
			}
		})
	}
}

func TestFitRecipientsLimits(t *testing.T) {
	if _, err := fitRecipients(strings.NewReader("X-Big: "+strings.Repeat("a", maxHeaderBytes)+"\r\n\r\n"), []string{"a@x.com"}); err != errHeaderTooLarge {
		t.Errorf("huge header: %v", err)
	}
	if _, err := fitRecipients(strings.NewReader("To: a@x.com <<<\r\n\r\n"), []string{"a@x.com"}); err != errBadRecipients {
		t.Errorf("bad To: %v", err)
	}
}

// FuzzFitRecipients: whatever the header, the result never names a
// recipient outside the envelope and names every envelope recipient.
func FuzzFitRecipients(f *testing.F) {
	f.Add("To: a@x.com, b@y.com\r\nCc: c@z.com\r\nBcc: d@w.com\r\n\r\nbody", "a@x.com,d@w.com,e@v.com")
	f.Add("to:\r\n a@x.com\r\n\r\n", "a@x.com")
	f.Fuzz(func(t *testing.T, in, envs string) {
		env := strings.Split(envs, ",")
		for _, e := range env {
			// go-smtp's RCPT parser ends an address at a space or tab, so an
			// envelope address never holds white space or control bytes.
			if _, err := mail.ParseAddress(e); err != nil || strings.ContainsAny(e, "<>\" \t\r\n") {
				return
			}
		}
		rh, err := fitRecipients(strings.NewReader(in), env)
		if err != nil {
			return
		}
		m, err := mail.ReadMessage(bytes.NewReader(append(rh.header, "\r\n"...)))
		if err != nil {
			return
		}
		inEnv := map[string]bool{}
		for _, e := range env {
			inEnv[strings.ToLower(e)] = true
		}
		seen := map[string]bool{}
		for _, h := range []string{"To", "Cc", "Bcc"} {
			for _, v := range m.Header[h] {
				list, err := mail.ParseAddressList(v)
				if err != nil {
					continue
				}
				for _, a := range list {
					if !inEnv[strings.ToLower(a.Address)] {
						t.Fatalf("%s keeps %q, not an envelope recipient\n%q", h, a.Address, rh.header)
					}
					seen[strings.ToLower(a.Address)] = true
				}
			}
		}
		for e := range inEnv {
			if !seen[e] {
				t.Fatalf("envelope recipient %q missing from the headers\n%q", e, rh.header)
			}
		}
	})
}
