package reliability

import (
	"context"
	"errors"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"

	"github.com/oauthbridge/oauthbridge/internal/fakems"
	"github.com/oauthbridge/oauthbridge/tokens"
)

// smtpSession dials the bridge's SMTP listener and authenticates.
func smtpSession(t *testing.T, addr, user, pass string) *smtp.Client {
	t.Helper()
	c, err := smtp.Dial(addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	if err := c.Hello("reliability.test"); err != nil {
		t.Fatal(err)
	}
	if err := c.Auth(sasl.NewPlainClient("", user, pass)); err != nil {
		t.Fatalf("SMTP AUTH %s: %v", user, err)
	}
	return c
}

// smtpCode returns the reply code of an SMTP error, or 0.
func smtpCode(err error) int {
	var se *smtp.SMTPError
	if errors.As(err, &se) {
		return se.Code
	}
	return 0
}

// TestTokenEndpointOutage: the token endpoint fails (500) or hangs for
// longer than an access token lives. Logged-in sessions keep working, new
// logins use the cached token until it expires, then every protocol answers
// with its "try again later" reply, and service resumes by itself when the
// endpoint returns.
func TestTokenEndpointOutage(t *testing.T) {
	for _, tc := range []struct {
		name  string
		fault fakems.TokenFault
	}{
		{"status500", fakems.TokenFault{Status: 500}},
		{"hang", fakems.TokenFault{Hang: true}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			acct := "outage-" + tc.name
			e := newEnv(t, shortLifetime,
				[]account{{acct, "alice@contoso.com", "alice@contoso.com"}},
				[]user{{"otrs", "Outage-Passw0rd-1", acct}})
			e.imapExtra = `upstream_timeout = "2s"`
			e.pop3Extra = `upstream_timeout = "2s"`
			e.smtpExtra = `upstream_timeout = "2s"`
			e.f.Deliver("alice@contoso.com", []byte("Subject: outage\r\n\r\nbody\r\n"))
			d := e.start()
			expiry := statusOf(t, d.Tokens(), acct).Expiry

			held, r := imapLogin(t, d.Addr("imap"), "otrs", "Outage-Passw0rd-1")
			if !strings.HasPrefix(r, "a1 OK") {
				t.Fatalf("login before the outage: %q", r)
			}
			held.send("a2 SELECT INBOX")
			held.until("a2 OK")

			e.f.SetTokenFault(tc.fault)
			// Before expiry a new login is served from the cached token.
			c, r := imapLogin(t, d.Addr("imap"), "otrs", "Outage-Passw0rd-1")
			if time.Now().Before(expiry.Add(-time.Second)) && !strings.HasPrefix(r, "a1 OK") {
				t.Errorf("IMAP login with a cached token during the outage: %q", r)
			}
			c.close()

			// After expiry: temporary failures on all three protocols.
			waitFor(t, 10*time.Second, "the access token to expire", func() bool { return time.Now().After(expiry) })
			c, r = imapLogin(t, d.Addr("imap"), "otrs", "Outage-Passw0rd-1")
			if !strings.HasPrefix(r, "a1 NO [UNAVAILABLE]") {
				t.Errorf("IMAP login after expiry = %q, want NO [UNAVAILABLE]", r)
			}
			c.close()
			p, r := pop3Login(t, d.Addr("pop3"), "otrs", "Outage-Passw0rd-1")
			if !strings.HasPrefix(r, "-ERR [SYS/TEMP]") {
				t.Errorf("POP3 login after expiry = %q, want -ERR [SYS/TEMP]", r)
			}
			p.close()
			sc := smtpSession(t, d.Addr("smtp"), "otrs", "Outage-Passw0rd-1")
			err := sc.Mail("alice@contoso.com", nil)
			if code := smtpCode(err); code < 400 || code > 499 {
				t.Errorf("SMTP MAIL after expiry = %v, want a 4xx", err)
			}
			sc.Close()
			if st := statusOf(t, d.Tokens(), acct); st.State != tokens.StateFailing || st.LastError == "" {
				t.Errorf("status during the outage = %s %q, want failing with an error", st.State, st.LastError)
			}

			// The session that logged in before keeps working.
			held.send("a3 NOOP")
			if r := held.until("a3 "); !strings.HasPrefix(r, "a3 OK") {
				t.Errorf("established session during the outage: %q", r)
			}

			// The endpoint comes back: service resumes with nobody acting.
			e.f.SetTokenFault(fakems.TokenFault{})
			var last string
			waitFor(t, 10*time.Second, "IMAP logins to work again", func() bool {
				c, r := imapLogin(t, d.Addr("imap"), "otrs", "Outage-Passw0rd-1")
				c.close()
				last = r
				return strings.HasPrefix(r, "a1 OK")
			})
			_ = last
			p, r = pop3Login(t, d.Addr("pop3"), "otrs", "Outage-Passw0rd-1")
			if !strings.HasPrefix(r, "+OK") {
				t.Errorf("POP3 login after recovery = %q", r)
			}
			p.close()
			sc = smtpSession(t, d.Addr("smtp"), "otrs", "Outage-Passw0rd-1")
			if err := sc.SendMail("alice@contoso.com", []string{"alice@contoso.com"}, strings.NewReader("Subject: back\r\n\r\nok\r\n")); err != nil {
				t.Errorf("SMTP after recovery: %v", err)
			}
			if st := statusOf(t, d.Tokens(), acct); st.State != tokens.StateOK {
				t.Errorf("status after recovery = %s (%s)", st.State, st.LastError)
			}
			held.send("a4 LOGOUT")
			held.until("a4 OK")
		})
	}
}

// TestRefreshTokenRevoked: one account's grant is revoked; it turns
// needs_login in Status and metrics while the other account keeps working
// and keeps refreshing.
func TestRefreshTokenRevoked(t *testing.T) {
	e := newEnv(t, shortLifetime,
		[]account{{"revoked-a", "alice@contoso.com", "alice@contoso.com"}, {"revoked-b", "bob@contoso.com", "bob@contoso.com"}},
		[]user{{"ua", "Revoke-Passw0rd-A", "revoked-a"}, {"ub", "Revoke-Passw0rd-B", "revoked-b"}})
	d := e.start()
	m := d.Tokens()
	lastB := statusOf(t, m, "revoked-b").LastRefresh

	e.f.RevokeRefreshTokens("alice@contoso.com")
	// The next refresh of A (background, ahead of expiry) fails for good.
	waitFor(t, 10*time.Second, "revoked-a to need a login", func() bool {
		return statusOf(t, m, "revoked-a").State == tokens.StateNeedsLogin
	})
	st := statusOf(t, m, "revoked-a")
	if st.AADSTS != 50173 || !strings.Contains(st.Fix, "oauthbridge login revoked-a") {
		t.Errorf("status of the revoked account = %+v, want AADSTS50173 and the login hint", st)
	}
	// B refreshes normally meanwhile.
	waitFor(t, 10*time.Second, "revoked-b to refresh", func() bool {
		return statusOf(t, m, "revoked-b").LastRefresh.After(lastB)
	})
	if st := statusOf(t, m, "revoked-b"); st.State != tokens.StateOK || st.LastError != "" {
		t.Errorf("untouched account: %+v", st)
	}

	text := scrapeMetrics(t, d.Addr("admin"))
	for series, want := range map[string]string{
		`oauthbridge_account_state{account="revoked-a",state="needs_login"}`: "1",
		`oauthbridge_account_state{account="revoked-a",state="ok"}`:          "0",
		`oauthbridge_account_state{account="revoked-b",state="ok"}`:          "1",
		`oauthbridge_account_state{account="revoked-b",state="needs_login"}`: "0",
	} {
		if got, ok := metricValue(text, series); got != want {
			t.Errorf("%s = %q (present %v), want %s", series, got, ok, want)
		}
	}

	// A's token expires: its users are told to re-authorise; B's work.
	waitFor(t, 10*time.Second, "revoked-a's access token to expire", func() bool {
		return time.Now().After(statusOf(t, m, "revoked-a").Expiry)
	})
	c, r := imapLogin(t, d.Addr("imap"), "ua", "Revoke-Passw0rd-A")
	if !strings.HasPrefix(r, "a1 NO [UNAVAILABLE]") || !strings.Contains(r, "oauthbridge login revoked-a") {
		t.Errorf("IMAP login of the revoked account = %q", r)
	}
	c.close()
	p, r := pop3Login(t, d.Addr("pop3"), "ua", "Revoke-Passw0rd-A")
	if !strings.HasPrefix(r, "-ERR [") || !strings.Contains(r, "oauthbridge login revoked-a") {
		t.Errorf("POP3 login of the revoked account = %q", r)
	}
	p.close()
	c, r = imapLogin(t, d.Addr("imap"), "ub", "Revoke-Passw0rd-B")
	if !strings.HasPrefix(r, "a1 OK") {
		t.Errorf("IMAP login of the other account = %q", r)
	}
	c.close()
}

// TestUpstreamDropped: the upstream IMAP or POP3 connection dies in the
// middle of a session: the client's connection is closed and no goroutine
// is left behind.
func TestUpstreamDropped(t *testing.T) {
	e := newEnv(t, 0, []account{{"drop", "alice@contoso.com", "alice@contoso.com"}},
		[]user{{"otrs", "Drop-Passw0rd-1", "drop"}})
	e.f.Deliver("alice@contoso.com", []byte("Subject: drop\r\n\r\nbody\r\n"))
	d := e.start()

	t.Run("imap", func(t *testing.T) {
		// Warm up once so lazily started goroutines (HTTP keep-alives,
		// pools) are part of the baseline.
		c, _ := imapLogin(t, d.Addr("imap"), "otrs", "Drop-Passw0rd-1")
		c.send("a2 LOGOUT")
		c.expectClosed(5 * time.Second)
		base := goroutines()

		c, r := imapLogin(t, d.Addr("imap"), "otrs", "Drop-Passw0rd-1")
		if !strings.HasPrefix(r, "a1 OK") {
			t.Fatalf("login: %q", r)
		}
		c.send("a2 SELECT INBOX")
		c.until("a2 OK")
		e.f.DropConnections()
		c.expectClosed(5 * time.Second)
		c.close()
		waitGoroutines(t, base, "after an upstream IMAP drop")
	})
	t.Run("pop3", func(t *testing.T) {
		c, _ := pop3Login(t, d.Addr("pop3"), "otrs", "Drop-Passw0rd-1")
		c.send("QUIT")
		c.expectClosed(5 * time.Second)
		base := goroutines()

		c, r := pop3Login(t, d.Addr("pop3"), "otrs", "Drop-Passw0rd-1")
		if !strings.HasPrefix(r, "+OK") {
			t.Fatalf("login: %q", r)
		}
		c.send("STAT")
		c.expectPrefix("+OK 1 ")
		e.f.DropConnections()
		c.expectClosed(5 * time.Second)
		c.close()
		waitGoroutines(t, base, "after an upstream POP3 drop")
	})
}

// TestSMTPDroppedInData: the upstream SMTP connection dies during DATA: the
// client gets a 4xx and nothing is delivered; the retry then goes through.
func TestSMTPDroppedInData(t *testing.T) {
	e := newEnv(t, 0, []account{{"smtpdrop", "alice@contoso.com", "alice@contoso.com"}},
		[]user{{"otrs", "SmtpDrop-Passw0rd-1", "smtpdrop"}})
	d := e.start()
	base := goroutines()

	e.f.SetSMTPDropInData(true)
	sc := smtpSession(t, d.Addr("smtp"), "otrs", "SmtpDrop-Passw0rd-1")
	err := sc.SendMail("alice@contoso.com", []string{"carol@example.org"},
		strings.NewReader("Subject: dropped\r\n\r\n"+strings.Repeat(strings.Repeat("x", 98)+"\r\n", 2000)))
	if code := smtpCode(err); code < 400 || code > 499 {
		t.Fatalf("DATA with the upstream dropping = %v, want a 4xx", err)
	}
	if n := len(e.f.Sent()); n != 0 {
		t.Fatalf("%d messages delivered after a failed DATA", n)
	}
	sc.Quit()

	e.f.SetSMTPDropInData(false)
	sc = smtpSession(t, d.Addr("smtp"), "otrs", "SmtpDrop-Passw0rd-1")
	if err := sc.SendMail("alice@contoso.com", []string{"carol@example.org"}, strings.NewReader("Subject: retried\r\n\r\nok\r\n")); err != nil {
		t.Fatalf("retry: %v", err)
	}
	sc.Quit()
	sent := e.f.Sent()
	if len(sent) != 1 || !strings.Contains(string(sent[0].Data), "Subject: retried") {
		t.Fatalf("sent after retry = %d messages", len(sent))
	}
	waitGoroutines(t, base, "after the SMTP sessions ended")
}

// TestStateDirUnwritable: the token store cannot be written any more (the
// state directory is replaced by a file, which stops root too). Refreshes
// keep serving from memory; the error is logged and shown in Status; when
// the directory is back the next write clears it.
func TestStateDirUnwritable(t *testing.T) {
	e := newEnv(t, 0, []account{{"rostate", "alice@contoso.com", "alice@contoso.com"}},
		[]user{{"otrs", "RoState-Passw0rd-1", "rostate"}})
	d := e.start()
	m := d.Tokens()

	moved := e.state + ".moved"
	if err := os.Rename(e.state, moved); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(e.state, []byte("not a directory\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	restored := false
	restore := func() {
		if !restored {
			restored = true
			os.Remove(e.state)
			os.Rename(moved, e.state)
		}
	}
	defer restore()

	ctx := context.Background()
	old, err := m.AccessToken(ctx, "rostate")
	if err != nil {
		t.Fatal(err)
	}
	m.Rejected("rostate", old) // force a refresh, and with it a store write
	tok, err := m.AccessToken(ctx, "rostate")
	if err != nil {
		t.Fatalf("refresh with an unwritable store: %v", err)
	}
	addSecret(tok)
	if tok == old {
		t.Fatal("no new token after Rejected")
	}
	st := statusOf(t, m, "rostate")
	if st.State != tokens.StateOK || !strings.Contains(st.LastError, "cannot save the token store") {
		t.Errorf("status with an unwritable store = %s %q", st.State, st.LastError)
	}
	if !strings.Contains(e.logs.String(), "cannot save the token store") {
		t.Error("the store write failure was not logged")
	}
	c, r := imapLogin(t, d.Addr("imap"), "otrs", "RoState-Passw0rd-1")
	if !strings.HasPrefix(r, "a1 OK") {
		t.Errorf("login while the store is unwritable = %q", r)
	}
	c.close()

	restore()
	m.Rejected("rostate", tok)
	if _, err := m.AccessToken(ctx, "rostate"); err != nil {
		t.Fatal(err)
	}
	if st := statusOf(t, m, "rostate"); st.LastError != "" {
		t.Errorf("status after the store is writable again = %q", st.LastError)
	}
	if !strings.Contains(e.logs.String(), "the token store is writable again") {
		t.Error("recovery of the store was not logged")
	}
}
