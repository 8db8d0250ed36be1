package fakems

import (
	"crypto/tls"
	"errors"
	"strings"
	"testing"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapclient"

	"github.com/oauthbridge/oauthbridge/tokens"
)

func dialIMAP(t *testing.T, f *Fake) *imapclient.Client {
	t.Helper()
	c, err := imapclient.DialTLS(f.IMAPAddr, &imapclient.Options{TLSConfig: f.ClientTLS()})
	if err != nil {
		t.Fatalf("DialTLS() = %v", err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func wantIMAPError(t *testing.T, err error, typ imap.StatusResponseType, text string) {
	t.Helper()
	var ie *imap.Error
	if !errors.As(err, &ie) || ie.Type != typ || ie.Text != text {
		t.Fatalf("error = %v, want %s %s", err, typ, text)
	}
}

const testMsg = "From: carol@example.net\r\nTo: alice@contoso.com\r\nSubject: hello\r\n\r\nHi Alice.\r\n.dot line\r\n"

func fetchAll(t *testing.T, c *imapclient.Client) []string {
	t.Helper()
	if _, err := c.Select("INBOX", nil).Wait(); err != nil {
		t.Fatalf("SELECT = %v", err)
	}
	section := &imap.FetchItemBodySection{}
	msgs, err := c.Fetch(imap.SeqSetNum(1, 2, 3, 4, 5), &imap.FetchOptions{BodySection: []*imap.FetchItemBodySection{section}}).Collect()
	if err != nil {
		t.Fatalf("FETCH = %v", err)
	}
	var out []string
	for _, m := range msgs {
		out = append(out, string(m.FindBodySection(section)))
	}
	return out
}

func TestIMAPXOAUTH2(t *testing.T) {
	t.Parallel()
	f := newFake(t, Options{})
	if err := f.Deliver(alice, []byte(testMsg)); err != nil {
		t.Fatal(err)
	}
	c := dialIMAP(t, f)
	caps := c.Caps()
	if !caps.Has("AUTH=XOAUTH2") || !caps.Has(imap.CapSASLIR) || !caps.Has(imap.CapIMAP4rev1) || caps.Has("AUTH=PLAIN") {
		t.Errorf("pre-auth caps = %v", caps)
	}
	wantIMAPError(t, c.Login(alice, "password").Wait(), imap.StatusResponseTypeNo, "LOGIN failed.")
	if err := c.Authenticate(tokens.NewXOAUTH2Client(alice, f.IssueAccessToken(alice))); err != nil {
		t.Fatalf("Authenticate() = %v", err)
	}
	if got := fetchAll(t, c); len(got) != 1 || got[0] != testMsg {
		t.Fatalf("INBOX = %q", got)
	}
	// APPEND over IMAP lands in the shared store.
	second := "Subject: appended\r\n\r\nbody\r\n"
	ac := c.Append("INBOX", int64(len(second)), nil)
	ac.Write([]byte(second))
	ac.Close()
	if _, err := ac.Wait(); err != nil {
		t.Fatalf("APPEND = %v", err)
	}
	if got := f.Messages(alice); len(got) != 2 || string(got[1]) != second {
		t.Errorf("Messages() after APPEND = %q", got)
	}
	// EXPUNGE over IMAP is seen by Messages.
	if err := c.Store(imap.SeqSetNum(1), &imap.StoreFlags{Op: imap.StoreFlagsAdd, Silent: true, Flags: []imap.Flag{imap.FlagDeleted}}, nil).Close(); err != nil {
		t.Fatalf("STORE = %v", err)
	}
	if err := c.Expunge().Close(); err != nil {
		t.Fatalf("EXPUNGE = %v", err)
	}
	if got := f.Messages(alice); len(got) != 1 || string(got[0]) != second {
		t.Errorf("Messages() after EXPUNGE = %q", got)
	}
	// COPY from another folder into INBOX keeps the bytes known.
	if err := f.appendRaw(f.lookupMailbox(alice), "Drafts", []byte(testMsg), nil); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Select("Drafts", nil).Wait(); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Copy(imap.SeqSetNum(1), "INBOX").Wait(); err != nil {
		t.Fatalf("COPY = %v", err)
	}
	if _, err := c.Move(imap.SeqSetNum(1), "INBOX").Wait(); err != nil {
		t.Fatalf("MOVE = %v", err)
	}
	if got := f.Messages(alice); len(got) != 3 || string(got[1]) != testMsg || string(got[2]) != testMsg {
		t.Errorf("Messages() after COPY+MOVE = %q", got)
	}
	if err := c.Logout().Wait(); err != nil {
		t.Errorf("LOGOUT = %v", err)
	}
}

func TestIMAPAuthRules(t *testing.T) {
	t.Parallel()
	f := newFake(t, Options{})
	f.AddApp("app-granted", "x")
	f.GrantApp("app-granted", shared)
	if err := f.Deliver(shared, []byte(testMsg)); err != nil {
		t.Fatal(err)
	}
	expired := f.IssueAccessToken(alice)
	f.ExpireAccessToken(expired)
	smtpOnly := deviceLogin(t, f, alice, scopeSMTP)["access_token"].(string)

	tests := []struct {
		name, user, token string
		want              string // "ok", "no" (NO AUTHENTICATE failed.) or "notconnected"
	}{
		{"own mailbox", alice, f.IssueAccessToken(alice), "ok"},
		{"case-insensitive user", strings.ToUpper(alice), f.IssueAccessToken(alice), "ok"},
		{"delegate on shared", shared, f.IssueAccessToken(bob), "ok"},
		{"app granted", shared, f.IssueAppToken("app-granted"), "ok"},
		{"unknown token", alice, "EwBnotatoken", "no"},
		{"expired token", alice, expired, "no"},
		{"token without IMAP scope", alice, smtpOnly, "no"},
		{"someone else's mailbox", bob, f.IssueAccessToken(alice), "notconnected"},
		{"not a delegate", shared, f.IssueAccessToken(alice), "notconnected"},
		{"app not granted", alice, f.IssueAppToken("app-granted"), "notconnected"},
		{"no such mailbox", "nobody@contoso.com", f.IssueAccessToken(alice), "notconnected"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			c := dialIMAP(t, f)
			err := c.Authenticate(tokens.NewXOAUTH2Client(tc.user, tc.token))
			switch tc.want {
			case "no":
				wantIMAPError(t, err, imap.StatusResponseTypeNo, "AUTHENTICATE failed.")
				return
			case "ok", "notconnected":
				if err != nil {
					t.Fatalf("Authenticate() = %v, want OK", err)
				}
			}
			_, err = c.Select("INBOX", nil).Wait()
			if tc.want == "notconnected" {
				wantIMAPError(t, err, imap.StatusResponseTypeBad, "User is authenticated but not connected.")
				// Every later command gets the same answer.
				wantIMAPError(t, c.Noop().Wait(), imap.StatusResponseTypeBad, "User is authenticated but not connected.")
				if err := c.Logout().Wait(); err != nil {
					t.Errorf("LOGOUT in not-connected state = %v", err)
				}
				return
			}
			if err != nil {
				t.Fatalf("SELECT = %v", err)
			}
		})
	}
}

func TestIMAPNotConnectedBehaviour(t *testing.T) {
	t.Parallel()
	f := newFake(t, Options{})
	f.SetIMAPBehaviour(IMAPBehaviour{NotConnected: true})
	c := dialIMAP(t, f)
	if err := c.Authenticate(tokens.NewXOAUTH2Client(alice, f.IssueAccessToken(alice))); err != nil {
		t.Fatalf("Authenticate() = %v", err)
	}
	_, err := c.List("", "*", nil).Collect()
	wantIMAPError(t, err, imap.StatusResponseTypeBad, "User is authenticated but not connected.")

	f.SetIMAPBehaviour(IMAPBehaviour{})
	c2 := dialIMAP(t, f)
	if err := c2.Authenticate(tokens.NewXOAUTH2Client(alice, f.IssueAccessToken(alice))); err != nil {
		t.Fatalf("Authenticate() = %v", err)
	}
	if _, err := c2.Select("INBOX", nil).Wait(); err != nil {
		t.Fatalf("SELECT after reset = %v", err)
	}
}

// The raw wire of the quirk, as a proxy sees it (testdata transcript).
func TestIMAPTranscript(t *testing.T) {
	t.Parallel()
	f := newFake(t, Options{})
	conn, err := tls.Dial("tcp", f.IMAPAddr, f.ClientTLS())
	if err != nil {
		t.Fatal(err)
	}
	runTranscript(t, f, conn, "imap_xoauth2.txt", map[string]string{
		"ALICE_OK":   tokens.XOAUTH2Base64(alice, f.IssueAccessToken(alice)),
		"ALICE_AS_B": tokens.XOAUTH2Base64(bob, f.IssueAccessToken(alice)),
		"BAD":        tokens.XOAUTH2Base64(alice, "EwBbogus"),
	})
}

func TestDropConnections(t *testing.T) {
	t.Parallel()
	f := newFake(t, Options{})
	c := dialIMAP(t, f)
	if err := c.Authenticate(tokens.NewXOAUTH2Client(alice, f.IssueAccessToken(alice))); err != nil {
		t.Fatal(err)
	}
	pop, err := tls.Dial("tcp", f.POP3Addr, f.ClientTLS())
	if err != nil {
		t.Fatal(err)
	}
	defer pop.Close()
	buf := make([]byte, 100)
	if _, err := pop.Read(buf); err != nil {
		t.Fatal(err)
	}
	f.DropConnections()
	if err := c.Noop().Wait(); err == nil {
		t.Errorf("NOOP after DropConnections() = nil, want error")
	}
	if _, err := pop.Read(buf); err == nil {
		t.Errorf("POP3 read after DropConnections() = nil, want error")
	}
	// New connections still work.
	c2 := dialIMAP(t, f)
	if err := c2.Authenticate(tokens.NewXOAUTH2Client(alice, f.IssueAccessToken(alice))); err != nil {
		t.Errorf("Authenticate() after drop = %v", err)
	}
}
