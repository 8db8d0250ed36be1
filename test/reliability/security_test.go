package reliability

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"

	"github.com/oauthbridge/oauthbridge/internal/fakems"
	"github.com/oauthbridge/oauthbridge/tokens"
)

func plain(authz, user, pass string) string {
	return base64.StdEncoding.EncodeToString([]byte(authz + "\x00" + user + "\x00" + pass))
}

func httpGet(t *testing.T, url string) string {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return string(b)
}

// TestSecretsNotExposed drives good and bad logins over every protocol and
// mechanism plus the token failure paths, then looks for every password,
// token and the client secret in the log, the errors, Status, /metrics and
// the health endpoints. Key and store files are 0600, and NewManager
// refuses them when group or world may read them.
func TestSecretsNotExposed(t *testing.T) {
	const pw, wrong = "Secret-Passw0rd-Xy1", "Wrong-Passw0rd-Zq2"
	addSecret(wrong)
	e := newEnv(t, 0, []account{{"secrets", "alice@contoso.com", "alice@contoso.com"}},
		[]user{{"otrs", pw, "secrets"}})
	d := e.start()
	addSecret(plain("", "otrs", pw), plain("", "otrs", wrong))

	for _, p := range []string{pw, wrong} {
		c, _ := imapLogin(t, d.Addr("imap"), "otrs", p)
		c.close()
		c = dialLine(t, d.Addr("imap"))
		c.expectPrefix("* OK")
		c.send("a1 AUTHENTICATE PLAIN " + plain("", "otrs", p))
		c.until("a1 ")
		c.close()
		c, _ = pop3Login(t, d.Addr("pop3"), "otrs", p)
		c.close()
		c = dialLine(t, d.Addr("pop3"))
		c.expectPrefix("+OK")
		c.send("AUTH PLAIN " + plain("", "otrs", p))
		c.line()
		c.close()
		for _, mech := range []sasl.Client{sasl.NewPlainClient("", "otrs", p), sasl.NewLoginClient("otrs", p)} {
			sc, err := smtp.Dial(d.Addr("smtp"))
			if err != nil {
				t.Fatal(err)
			}
			sc.Hello("t")
			if err := sc.Auth(mech); (err == nil) != (p == pw) {
				t.Errorf("SMTP AUTH with %s: %v", map[bool]string{true: "the right password", false: "a wrong one"}[p == pw], err)
			}
			if p == pw {
				if err := sc.SendMail("alice@contoso.com", []string{"alice@contoso.com"}, strings.NewReader("Subject: s\r\n\r\nx\r\n")); err != nil {
					t.Error(err)
				}
			}
			sc.Close()
		}
	}

	// Token failure paths: a bad client secret, then a revoked grant.
	m := d.Tokens()
	ctx := context.Background()
	tok, _ := m.AccessToken(ctx, "secrets")
	var errs []string
	e.f.SetTokenFault(fakems.TokenFault{Code: "invalid_client", AADSTS: 7000215, Status: 401})
	m.Rejected("secrets", tok)
	if _, err := m.AccessToken(ctx, "secrets"); err == nil {
		t.Error("AccessToken with a bad client secret succeeded")
	} else {
		errs = append(errs, err.Error())
	}
	e.f.SetTokenFault(fakems.TokenFault{})
	e.writeConfig()
	if err := d.Reload(e.loadConfig()); err != nil { // retries a failing account at once
		t.Fatal(err)
	}
	tok, err := m.AccessToken(ctx, "secrets") // works again after the reload
	if err != nil {
		t.Fatalf("AccessToken after fixing the secret: %v", err)
	}
	addSecret(tok)
	e.f.RevokeRefreshTokens("alice@contoso.com")
	m.Rejected("secrets", tok)
	if _, err := m.AccessToken(ctx, "secrets"); err == nil {
		t.Error("AccessToken after revocation succeeded")
	} else {
		errs = append(errs, err.Error())
	}
	c, r := imapLogin(t, d.Addr("imap"), "otrs", pw)
	errs = append(errs, r)
	c.close()

	status, _ := json.Marshal(m.Status())
	surfaces := map[string]string{
		"errors":  strings.Join(errs, "\n"),
		"status":  string(status),
		"metrics": scrapeMetrics(t, d.Addr("admin")),
		"healthz": httpGet(t, "http://"+d.Addr("admin")+"/healthz"),
		"readyz":  httpGet(t, "http://"+d.Addr("admin")+"/readyz"),
		"log":     e.logs.String(),
	}
	for name, text := range surfaces {
		if l := leaks(text); len(l) > 0 {
			t.Errorf("%s exposes %v", name, l)
		}
	}
	if !strings.Contains(e.logs.String(), `"msg":"login"`) || !strings.Contains(string(status), "needs_login") {
		t.Fatal("the failure paths were not exercised")
	}

	// Files: 0600, and refused when readable by others.
	ctx2, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	d.Shutdown(ctx2)
	for _, name := range []string{tokens.StoreFileName, tokens.KeyFileName} {
		path := filepath.Join(e.state, name)
		fi, err := os.Stat(path)
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm() != 0o600 {
			t.Errorf("%s has mode %04o, want 0600", name, fi.Mode().Perm())
		}
		for _, mode := range []os.FileMode{0o640, 0o604} {
			os.Chmod(path, mode)
			_, err := tokens.NewManager(e.loadConfig(), tokens.Options{})
			if err == nil || !strings.Contains(err.Error(), "chmod 600") || !strings.Contains(err.Error(), path) {
				t.Errorf("NewManager with %s at %04o: %v, want a refusal naming the file and the fix", name, mode, err)
			}
			os.Chmod(path, 0o600)
		}
	}
	if _, err := tokens.NewManager(e.loadConfig(), tokens.Options{}); err != nil {
		t.Errorf("NewManager after restoring the modes: %v", err)
	}
}

// TestIsolation: user A can never reach account B's mailbox or send as it,
// whatever it puts in the user name, the SASL authorisation identity or
// MAIL FROM. The fake's mailboxes and sent log prove nothing crossed.
func TestIsolation(t *testing.T) {
	const pwA, pwB = "Iso-Passw0rd-A1", "Iso-Passw0rd-B2"
	e := newEnv(t, 0,
		[]account{{"iso-a", "a-box@contoso.com", "alice@contoso.com"}, {"iso-b", "b-box@contoso.com", "bob@contoso.com"}},
		[]user{{"ua", pwA, "iso-a"}, {"ub", pwB, "iso-b"}})
	e.f.Deliver("a-box@contoso.com", []byte("Subject: for-A\r\n\r\nA's mail\r\n"))
	e.f.Deliver("b-box@contoso.com", []byte("Subject: for-B\r\n\r\nB's mail\r\n"))
	d := e.start()
	imapAddr, pop3Addr := d.Addr("imap"), d.Addr("pop3")

	// seesOnlyA checks a logged-in IMAP session's INBOX.
	seesOnlyA := func(c *lineConn, what string) {
		t.Helper()
		c.send("s1 SELECT INBOX")
		c.until("s1 OK")
		c.send("s2 FETCH 1:* (BODY.PEEK[])")
		var got strings.Builder
		for {
			s := c.line()
			got.WriteString(s + "\n")
			if strings.HasPrefix(s, "s2 ") {
				break
			}
		}
		if strings.Contains(got.String(), "for-B") || !strings.Contains(got.String(), "for-A") {
			t.Errorf("%s: session shows %q", what, got.String())
		}
	}

	// IMAP LOGIN with A's password and names pointing at B.
	for _, name := range []string{"ub", "b-box@contoso.com", "iso-b", "ub\\", "ua@b-box@contoso.com", "ua ub", "UB", "ua\tub"} {
		c, r := imapLogin(t, imapAddr, name, pwA)
		if strings.HasPrefix(r, "a1 OK") {
			seesOnlyA(c, "LOGIN "+name)
		} else if !strings.HasPrefix(r, "a1 NO") && !strings.HasPrefix(r, "a1 BAD") {
			t.Errorf("LOGIN %q: %q", name, r)
		}
		c.close()
	}
	// AUTHENTICATE PLAIN with an authorisation identity of B.
	for _, authz := range []string{"ub", "b-box@contoso.com", "iso-b"} {
		c := dialLine(t, imapAddr)
		c.expectPrefix("* OK")
		c.send("a1 AUTHENTICATE PLAIN " + plain(authz, "ua", pwA))
		if r := c.until("a1 "); !strings.HasPrefix(r, "a1 NO [AUTHORIZATIONFAILED]") {
			t.Errorf("IMAP PLAIN authzid=%s: %q", authz, r)
		}
		c.close()
		p := dialLine(t, pop3Addr)
		p.expectPrefix("+OK")
		p.send("AUTH PLAIN " + plain(authz, "ua", pwA))
		if r := p.line(); !strings.HasPrefix(r, "-ERR [AUTH]") {
			t.Errorf("POP3 PLAIN authzid=%s: %q", authz, r)
		}
		p.close()
		sc, err := smtp.Dial(d.Addr("smtp"))
		if err != nil {
			t.Fatal(err)
		}
		sc.Hello("t")
		if err := sc.Auth(sasl.NewPlainClient(authz, "ua", pwA)); smtpCode(err) != 535 {
			t.Errorf("SMTP PLAIN authzid=%s: %v, want 535", authz, err)
		}
		sc.Close()
	}
	// A's own session, poking at B from inside.
	c, r := imapLogin(t, imapAddr, "ua", pwA)
	if !strings.HasPrefix(r, "a1 OK") {
		t.Fatalf("ua login: %q", r)
	}
	c.send(`x1 SELECT "b-box@contoso.com/INBOX"`)
	c.until("x1 ")
	c.send("x2 LOGIN ub " + imapQuote(pwB)) // after login this goes to Exchange as A
	c.until("x2 ")
	seesOnlyA(c, "A's session")
	c.close()
	// POP3 as A.
	p, r := pop3Login(t, pop3Addr, "ua", pwA)
	if r != "+OK logged in" {
		t.Fatalf("POP3 ua: %q", r)
	}
	p.send("RETR 1")
	var msg strings.Builder
	for s := p.line(); s != "."; s = p.line() {
		msg.WriteString(s + "\n")
	}
	if !strings.Contains(msg.String(), "for-A") {
		t.Errorf("POP3 RETR 1 as A: %q", msg.String())
	}
	p.send("RETR 2")
	if r := p.line(); !strings.HasPrefix(r, "-ERR") {
		t.Errorf("POP3 RETR 2 as A: %q", r)
	}
	p.close()
	// SMTP as A: B and other foreign senders refused, A's own accepted.
	sc := smtpSession(t, d.Addr("smtp"), "ua", pwA)
	for _, from := range []string{"b-box@contoso.com", "B-BOX@contoso.com", "bob@contoso.com", "ub", "<b-box@contoso.com>"} {
		err := sc.Mail(from, nil)
		if code := smtpCode(err); code < 500 {
			t.Errorf("MAIL FROM:<%s> as A = %v, want a 5xx refusal", from, err)
		}
		sc.Reset()
	}
	if err := sc.SendMail("a-box@contoso.com", []string{"b-box@contoso.com"}, strings.NewReader("Subject: from-A\r\n\r\nhi\r\n")); err != nil {
		t.Fatalf("A sending as A: %v", err)
	}
	sc.Quit()

	sent := e.f.Sent()
	if len(sent) != 1 {
		t.Fatalf("%d messages sent, want 1", len(sent))
	}
	if sent[0].AuthUser != "a-box@contoso.com" || sent[0].From != "a-box@contoso.com" {
		t.Errorf("sent as %s from %s, want a-box", sent[0].AuthUser, sent[0].From)
	}
	if got := e.f.Messages("b-box@contoso.com"); len(got) != 2 || !strings.Contains(string(got[0]), "for-B") || !strings.Contains(string(got[1]), "from-A") {
		t.Errorf("B's INBOX changed: %d messages", len(got))
	}
	if got := e.f.Messages("a-box@contoso.com"); len(got) != 1 || !strings.Contains(string(got[0]), "for-A") {
		t.Errorf("A's INBOX: %d messages", len(got))
	}
}
