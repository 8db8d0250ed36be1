package pop3proxy

import (
	"strings"
	"testing"
	"time"

	"github.com/oauthbridge/oauthbridge/internal/localauth"
)

// A password that was not checked (the user's checks are used up) gets
// -ERR [SYS/TEMP], audited and logged as throttled, never [AUTH]; it counts
// toward the per-connection failure limit like a wrong password; the right
// password verified before still gets in.
func TestThrottledIsTemporary(t *testing.T) {
	stub := startStub(t)
	e := newEnv(t, testConfig{Upstream: stub.Addr}, envOptions{auth: localauth.Options{
		Burst: 1, CheckInterval: time.Hour, ThrottledHold: time.Millisecond, MaxQueueWait: time.Millisecond}})
	login := func(c *client, pass string) string {
		c.send("USER " + testUser)
		c.expect("+OK*")
		c.send("PASS " + pass)
		s, err := c.readLine()
		if err != nil {
			t.Fatalf("PASS: %v", err)
		}
		return s
	}
	c := e.pipe()
	c.expect("+OK*")
	if r := login(c, testPassword); r != replyLoggedIn { // spends the one check, cached
		t.Fatalf("first login: %q", r)
	}
	c.conn.Close()

	c = e.pipe()
	c.expect("+OK*")
	for i := range 3 {
		if r := login(c, "stale"); r != replyThrottled {
			t.Errorf("unchecked password %d: %q, want %q", i, r, replyThrottled)
		}
	}
	c.expectEOF() // the third failure closed the connection

	c = e.pipe()
	c.expect("+OK*")
	if r := login(c, testPassword); r != replyLoggedIn {
		t.Errorf("verified password while throttled: %q", r)
	}
	logs := e.logs.dump()
	if !strings.Contains(logs, "result:throttled") || strings.Contains(logs, "too many failed logins") {
		t.Errorf("log lines for the unchecked password:\n%s", logs)
	}
	if !strings.HasPrefix(replyThrottled, "-ERR [SYS/TEMP] ") {
		t.Errorf("throttled reply %q is not [SYS/TEMP]", replyThrottled)
	}
}
