package reliability

import (
	"encoding/base64"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// loginVia logs user in once over a fresh connection from 127.0.0.1 and
// returns the reply to the password. A throttled login may wait the hold,
// the check queue and the failure delay (about 15 s) before its answer, so
// that reply gets a longer read deadline than the suite's ioTimeout.
func loginVia(t *testing.T, proto, addr, user, pass string) string {
	t.Helper()
	c := dialLine(t, addr)
	defer c.close()
	answer := func(prefix string) string {
		c.c.SetReadDeadline(time.Now().Add(time.Minute))
		for {
			s, err := c.br.ReadString('\n')
			if err != nil {
				return fmt.Sprintf("no answer: %v", err)
			}
			if s = strings.TrimRight(s, "\r\n"); strings.HasPrefix(s, prefix) {
				return s
			}
		}
	}
	switch proto {
	case "imap":
		c.expectPrefix("* OK")
		c.send(fmt.Sprintf("a1 LOGIN %s %s", imapQuote(user), imapQuote(pass)))
		return answer("a1 ")
	case "pop3":
		c.expectPrefix("+OK")
		c.send("USER " + user)
		c.expectPrefix("+OK")
		c.send("PASS " + pass)
		return answer("")
	}
	c.expectPrefix("220 ")
	c.send("EHLO helpdesk.example")
	c.until("250 ")
	c.send("AUTH PLAIN " + base64.StdEncoding.EncodeToString([]byte("\x00"+user+"\x00"+pass)))
	return answer("")
}

// Replies per protocol: a successful login, a checked wrong password, and
// a password that was not checked (throttled or busy).
var loginReplies = map[string]struct{ ok, invalid, notChecked string }{
	"imap": {"a1 OK", "a1 NO [AUTHENTICATIONFAILED] Invalid credentials", "a1 NO [UNAVAILABLE] "},
	"pop3": {"+OK", "-ERR [AUTH] Invalid credentials", "-ERR [SYS/TEMP] "},
	"smtp": {"235 ", "535 5.7.8 ", "454 4.7.0 "},
}

// staleClients starts n loops per protocol that log in as user with a stale
// password from 127.0.0.1 over and over (a cron job, a forgotten fetchmail),
// each attempt on a new connection. stop ends them and returns the replies
// by kind.
func staleClients(t *testing.T, d interface{ Addr(string) string }, user string, n int) (stop func() map[string]int) {
	var mu sync.Mutex
	got := map[string]int{}
	var quit atomic.Bool
	var wg sync.WaitGroup
	for proto, want := range loginReplies {
		for i := range n {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for j := 0; !quit.Load(); j++ {
					r := loginVia(t, proto, d.Addr(proto), user, fmt.Sprintf("stale-%d-%d", i, j))
					kind := proto + " other: " + r
					switch {
					case strings.HasPrefix(r, want.invalid):
						kind = proto + " invalid"
					case strings.HasPrefix(r, want.notChecked):
						kind = proto + " not checked"
					}
					mu.Lock()
					got[kind]++
					mu.Unlock()
				}
			}()
		}
	}
	return func() map[string]int {
		quit.Store(true)
		wg.Wait()
		mu.Lock()
		defer mu.Unlock()
		return got
	}
}

// TestStaleClientBesideHelpdesk: every client on 127.0.0.1, as in the real
// deployment. Clients with stale passwords loop beside the helpdesk over
// IMAP, POP3 and SMTP - for another user, for a name that does not exist,
// and for the helpdesk's own user - and the helpdesk's right password keeps
// logging in on all three protocols. The stale clients get "invalid
// credentials" when their password was checked and a temporary answer when
// it was not; the log never says "too many failed logins".
func TestStaleClientBesideHelpdesk(t *testing.T) {
	const otrsPW, bobPW = "Helpdesk-Right-Passw0rd", "Bob-Right-Passw0rd"
	e := newEnv(t, 0, []account{{"helpdesk", "alice@contoso.com", "alice@contoso.com"}},
		[]user{{"otrs", otrsPW, "helpdesk"}, {"bob", bobPW, "helpdesk"}})
	d := e.start()

	for _, tc := range []struct {
		name, stale string
		loops       int
		logins      int
	}{
		{"other-user", "bob", 2, 4},
		{"unknown-name", "ghost", 2, 4},
		// Four loops per protocol (12 at once) run the user's checks dry:
		// it is throttled, its right password waits for the hold, and the
		// stale ones wait their turn to be checked.
		{"same-user", "otrs", 4, 2},
	} {
		t.Run(tc.name, func(t *testing.T) {
			stop := staleClients(t, d, tc.stale, tc.loops)
			var wg sync.WaitGroup
			for proto, want := range loginReplies {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for i := range tc.logins {
						t0 := time.Now()
						r := loginVia(t, proto, d.Addr(proto), "otrs", otrsPW)
						if !strings.HasPrefix(r, want.ok) {
							t.Errorf("%s: helpdesk login %d beside a stale %q client: %q", proto, i, tc.stale, r)
						}
						t.Logf("%s: helpdesk login %d in %s", proto, i, time.Since(t0).Round(time.Millisecond))
					}
				}()
			}
			wg.Wait()
			got := stop()
			t.Logf("stale %q clients got %v", tc.stale, got)
			for kind, n := range got {
				if strings.Contains(kind, " other: ") {
					t.Errorf("stale client: %s (%d times)", kind, n)
				}
			}
			if got["imap invalid"]+got["pop3 invalid"]+got["smtp invalid"] == 0 {
				t.Errorf("no stale password was checked and refused: %v", got)
			}
		})
	}
	// The helpdesk's bob also still gets in, after all that.
	for proto, want := range loginReplies {
		if r := loginVia(t, proto, d.Addr(proto), "bob", bobPW); !strings.HasPrefix(r, want.ok) {
			t.Errorf("%s: bob's right password after the stale loops: %q", proto, r)
		}
	}
	logs := e.logs.String()
	if strings.Contains(logs, "too many failed logins") {
		t.Error(`the log says "too many failed logins"`)
	}
}

// TestSMTPFailurePolicy: SMTP has the same per-connection policy as IMAP
// and POP3: each failed AUTH waits the failure delay, and the third ends
// the connection after its reply.
func TestSMTPFailurePolicy(t *testing.T) {
	e := newEnv(t, 0, []account{{"smtppol", "alice@contoso.com", "alice@contoso.com"}},
		[]user{{"otrs", "Smtp-Policy-Passw0rd", "smtppol"}})
	d := e.start()
	c := dialLine(t, d.Addr("smtp"))
	c.expectPrefix("220 ")
	c.send("EHLO x")
	c.until("250 ")
	start := time.Now()
	var replies []string
	for i := range 30 {
		if c.write("AUTH PLAIN "+base64.StdEncoding.EncodeToString([]byte(fmt.Sprintf("\x00otrs\x00wrong-%d", i)))+"\r\n") != nil {
			break
		}
		s, err := c.readLine()
		if err != nil {
			break
		}
		replies = append(replies, s)
	}
	took := time.Since(start)
	if len(replies) != 3 {
		t.Fatalf("%d replies before the connection closed, want 3: %q", len(replies), replies)
	}
	for _, r := range replies {
		if !strings.HasPrefix(r, "535 5.7.8 ") {
			t.Errorf("wrong password answered %q", r)
		}
	}
	if took < 3*time.Second-100*time.Millisecond { // lower bound only: 3 failures, 1 s delay each
		t.Errorf("3 failed AUTHs took %s, want at least the 1 s delay each", took)
	}
	if !strings.Contains(e.logs.String(), "too many failed AUTH attempts") {
		t.Error("no log line for the disconnect")
	}
}

// TestColdBurstIMAP: right after a start (nothing cached), 100 concurrent
// IMAP logins with the right password for one user, then 100 spread over
// 10 users (one mailbox each, so the per-mailbox connection limit of 10 is
// not the bottleneck), all from 127.0.0.1. None may be refused as invalid
// or as not checked; over 10 users all succeed, and identical credentials
// share one bcrypt (the daemon's check count is not visible here, so that
// part is in internal/localauth's TestColdBurst).
func TestColdBurstIMAP(t *testing.T) {
	var accts []account
	var users []user
	for i := range 10 {
		mb := fmt.Sprintf("u%d@contoso.com", i)
		accts = append(accts, account{fmt.Sprintf("acct%d", i), mb, mb})
		users = append(users, user{fmt.Sprintf("u%d", i), fmt.Sprintf("Cold-Burst-Passw0rd-%d", i), fmt.Sprintf("acct%d", i)})
	}
	e := newEnv(t, 0, accts, users)
	d := e.start()
	addr := d.Addr("imap")
	burst := func(nUsers int) map[string]int {
		var mu sync.Mutex
		got := map[string]int{}
		var wg sync.WaitGroup
		for i := range 100 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				u := users[i%nUsers]
				r := loginVia(t, "imap", addr, u.name, u.password)
				if strings.HasPrefix(r, "a1 OK") {
					r = "a1 OK"
				}
				mu.Lock()
				got[r]++
				mu.Unlock()
			}()
		}
		wg.Wait()
		return got
	}
	// One user first, so both bursts start cold for their users.
	got := burst(1)
	t.Logf("100 logins for one user: %v", got)
	for r, n := range got {
		if r != "a1 OK" && !strings.Contains(r, "too many connections for this mailbox") {
			t.Errorf("login for one user answered %q %d times", r, n)
		}
	}
	if got := burst(10); got["a1 OK"] != 100 {
		t.Errorf("100 logins over 10 users (9 of them cold): %v", got)
	}
}
