package smtpproxy

import (
	"encoding/base64"
	"io"
	"net"
	"strings"
	"testing"
	"time"
)

// FuzzLoginServer drives the SASL LOGIN server with arbitrary responses:
// it never panics, asks for the user name and the password in that order,
// checks credentials exactly once with what the client sent, and is done
// after that.
func FuzzLoginServer(f *testing.F) {
	f.Add(true, []byte("otrs"), []byte("secret"), []byte("extra"))
	f.Add(false, []byte("otrs"), []byte("secret"), []byte(""))
	f.Add(true, []byte(""), []byte(""), []byte("\x00"))
	f.Fuzz(func(t *testing.T, withIR bool, user, pass, extra []byte) {
		var calls int
		var gotUser, gotPass string
		s := newLoginServer(func(u, p string) error {
			calls++
			gotUser, gotPass = u, p
			return nil
		})
		var first []byte
		if withIR {
			first = user
		}
		ch, done, err := s.Next(first)
		if done || err != nil {
			t.Fatalf("first step: done=%v err=%v", done, err)
		}
		if !withIR {
			if string(ch) != "Username:" {
				t.Fatalf("first challenge %q", ch)
			}
			if ch, done, err = s.Next(user); done || err != nil {
				t.Fatalf("user step: done=%v err=%v", done, err)
			}
		}
		if string(ch) != "Password:" {
			t.Fatalf("password challenge %q", ch)
		}
		if _, done, err = s.Next(pass); !done || err != nil || calls != 1 {
			t.Fatalf("password step: done=%v err=%v calls=%d", done, err, calls)
		}
		if gotUser != string(user) || gotPass != string(pass) {
			t.Fatalf("checked %q/%q, client sent %q/%q", gotUser, gotPass, user, pass)
		}
		if _, done, err = s.Next(extra); !done || err == nil || calls != 1 {
			t.Fatalf("step after done: done=%v err=%v calls=%d", done, err, calls)
		}
	})
}

// FuzzSession feeds arbitrary client bytes to a bridge SMTP listener (with
// a stub Microsoft upstream): the bridge never panics, the connection ends
// once the client is done, no message is accepted for a sender the account
// may not use, and the bridge still serves afterwards.
func FuzzSession(f *testing.F) {
	pl := base64.StdEncoding.EncodeToString([]byte("\x00otrs\x00" + testPassword))
	for _, s := range []string{
		"EHLO x\r\nAUTH PLAIN " + pl + "\r\nMAIL FROM:<helpdesk@contoso.com>\r\nRCPT TO:<a@example.org>\r\nDATA\r\nSubject: x\r\n\r\nbody\r\n.\r\nQUIT\r\n",
		"EHLO x\r\nAUTH LOGIN\r\nb3Rycw==\r\n" + base64.StdEncoding.EncodeToString([]byte(testPassword)) + "\r\n",
		"EHLO x\r\nAUTH PLAIN " + base64.StdEncoding.EncodeToString([]byte("boss\x00otrs\x00"+testPassword)) + "\r\nMAIL FROM:<ceo@contoso.com>\r\n",
		"EHLO x\r\nAUTH PLAIN " + pl + "\r\nMAIL FROM:<ceo@contoso.com>\r\nRCPT TO:<a@example.org>\r\nDATA\r\nx\r\n.\r\n",
		"EHLO x\r\nAUTH PLAIN\r\n*\r\nBDAT 5 LAST\r\nhello",
		"EHLO x\r\nSTARTTLS\r\n\x16\x03\x01\x00",
		"\x00\xff\r\nHELO\r\n",
	} {
		f.Add([]byte(s))
	}
	st := startStubMS(f)
	b := startBridge(f, st.addr, bridgeOpts{})
	b.tokens.set("helpdesk", st.issue("helpdesk@contoso.com"))
	b.tokens.set("ceo", st.issue("ceo@contoso.com"))
	f.Fuzz(func(t *testing.T, data []byte) {
		c, err := net.DialTimeout("tcp", b.addr, 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		read := make(chan struct{})
		go func() {
			defer close(read)
			io.Copy(io.Discard, c)
		}()
		c.SetWriteDeadline(time.Now().Add(2 * time.Second))
		c.Write(data)
		c.(*net.TCPConn).CloseWrite()
		select {
		case <-read:
		case <-time.After(15 * time.Second):
			t.Fatal("the bridge did not end the connection after the client finished")
		}
		b.logs.mu.Lock()
		logs := b.logs.b.String()
		b.logs.b.Reset()
		b.logs.mu.Unlock()
		if strings.Contains(logs, "panic") {
			t.Fatalf("panic in the SMTP session:\n%s", logs)
		}
		allowed := map[string][]string{
			"helpdesk@contoso.com": {"helpdesk@contoso.com", "noreply@contoso.com", "shared@contoso.com"},
			"ceo@contoso.com":      {"ceo@contoso.com"},
		}
		for _, m := range st.Sent() {
			ok := false
			for _, a := range allowed[strings.ToLower(m.AuthUser)] {
				ok = ok || strings.EqualFold(a, m.From)
			}
			if !ok {
				t.Fatalf("message relayed for %s from %q", m.AuthUser, m.From)
			}
		}
	})
}
