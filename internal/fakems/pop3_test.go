package fakems

import (
	"crypto/tls"
	"strconv"
	"testing"
	"time"

	"github.com/oauthbridge/oauthbridge/tokens"
)

func TestPOP3Transcript(t *testing.T) {
	t.Parallel()
	f := newFake(t, Options{})
	one := "Subject: one\r\n\r\nfirst body line\r\n.starts with a dot\nbare LF line"
	two := "Subject: two\r\nX-Extra: yes\r\n\r\nkeep\r\ndrop\r\n"
	for _, m := range []string{one, two} {
		if err := f.Deliver(alice, []byte(m)); err != nil {
			t.Fatal(err)
		}
	}
	conn, err := tls.Dial("tcp", f.POP3Addr, f.ClientTLS())
	if err != nil {
		t.Fatal(err)
	}
	runTranscript(t, f, conn, "pop3_session.txt", map[string]string{
		"ALICE":        tokens.XOAUTH2Base64(alice, f.IssueAccessToken(alice)),
		"ALICE_AS_BOB": tokens.XOAUTH2Base64(bob, f.IssueAccessToken(alice)),
		"SIZE":         strconv.Itoa(len(one) + len(two)),
		"SIZE1":        strconv.Itoa(len(one)),
		"SIZE2":        strconv.Itoa(len(two)),
	})

	// DELE + QUIT removed message 1 for real: Messages and IMAP agree.
	if got := f.Messages(alice); len(got) != 1 || string(got[0]) != two {
		t.Fatalf("Messages() after POP3 QUIT = %q", got)
	}
	c := dialIMAP(t, f)
	if err := c.Authenticate(tokens.NewXOAUTH2Client(alice, f.IssueAccessToken(alice))); err != nil {
		t.Fatal(err)
	}
	if got := fetchAll(t, c); len(got) != 1 || got[0] != two {
		t.Errorf("IMAP INBOX after POP3 QUIT = %q", got)
	}
}

// Without QUIT nothing is deleted (RFC 1939 §6), and app and delegate
// tokens follow the IMAP rules.
func TestPOP3NoQuitNoDelete(t *testing.T) {
	t.Parallel()
	f := newFake(t, Options{})
	f.AddApp("app", "x")
	f.GrantApp("app", shared)
	if err := f.Deliver(shared, []byte("Subject: s\r\n\r\nbody\r\n")); err != nil {
		t.Fatal(err)
	}
	for _, tok := range []string{f.IssueAppToken("app"), f.IssueAccessToken(bob)} {
		conn, err := tls.Dial("tcp", f.POP3Addr, f.ClientTLS())
		if err != nil {
			t.Fatal(err)
		}
		runTranscript(t, f, conn, "pop3_dele_no_quit.txt", map[string]string{"AUTH": tokens.XOAUTH2Base64(shared, tok)})
		conn.Close()
		waitNoConns(t, f) // the server has seen the disconnect
		if n := len(f.Messages(shared)); n != 1 {
			t.Fatalf("Messages() after DELE without QUIT = %d, want 1", n)
		}
	}
}

// waitNoConns waits until the fake has no open mail connections.
func waitNoConns(t *testing.T, f *Fake) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		f.conns.mu.Lock()
		n := len(f.conns.conns)
		f.conns.mu.Unlock()
		if n == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d connections still open", n)
		}
		time.Sleep(5 * time.Millisecond)
	}
}
