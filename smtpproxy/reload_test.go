package smtpproxy

import (
	"net"
	"net/textproto"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/oauthbridge/oauthbridge/config"
)

// smtpDial opens a session and returns its greeting.
func smtpDial(t *testing.T, addr string) (*textproto.Conn, string) {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(10 * time.Second))
	tp := textproto.NewConn(c)
	_, msg, err := tp.ReadResponse(220)
	if err != nil {
		t.Fatalf("greeting: %q, %v", msg, err)
	}
	return tp, msg
}

func ehlo(t *testing.T, tp *textproto.Conn) string {
	t.Helper()
	if err := tp.PrintfLine("EHLO client.test"); err != nil {
		t.Fatal(err)
	}
	_, msg, err := tp.ReadResponse(250)
	if err != nil {
		t.Fatalf("EHLO: %q, %v", msg, err)
	}
	return msg
}

// A reload in the middle of a session: the session keeps the SMTP settings
// it was accepted under (domain, max_message_bytes, no STARTTLS), a
// session accepted after the reload gets the new ones, including STARTTLS
// once a tls block was added.
func TestReloadSMTPListenerSettings(t *testing.T) {
	ms := startStubMS(t)
	var cur atomic.Pointer[config.Config]
	br := startBridge(t, ms.addr, bridgeOpts{noTLS: true, smtpExtra: `max_message_bytes = 1000`,
		wrapConfig: func(next func() *config.Config) func() *config.Config {
			cur.Store(next())
			return cur.Load
		}})
	newer := testConfig(t, ms.addr, bridgeOpts{smtpExtra: `max_message_bytes = 2000`})
	newer.SMTP.Domain = "new.bridge.test"

	old, greeting := smtpDial(t, br.addr)
	if !strings.HasPrefix(greeting, "bridge.test") {
		t.Fatalf("greeting before the reload = %q", greeting)
	}
	before := ehlo(t, old)
	if !strings.Contains(before, "SIZE 1000") || strings.Contains(before, "STARTTLS") {
		t.Fatalf("EHLO before the reload = %q", before)
	}

	cur.Store(newer) // the reload

	// The old session: unchanged.
	after := ehlo(t, old)
	if !strings.Contains(after, "SIZE 1000") || strings.Contains(after, "STARTTLS") {
		t.Fatalf("old session's EHLO after the reload = %q; want its own settings", after)
	}
	// A new session: the new settings.
	fresh, greeting := smtpDial(t, br.addr)
	if !strings.HasPrefix(greeting, "new.bridge.test") {
		t.Fatalf("greeting after the reload = %q, want the new domain", greeting)
	}
	got := ehlo(t, fresh)
	if !strings.Contains(got, "SIZE 2000") || !strings.Contains(got, "STARTTLS") {
		t.Fatalf("new session's EHLO = %q; want SIZE 2000 and STARTTLS", got)
	}
	// The old session still works on its own settings.
	if err := old.PrintfLine("NOOP"); err != nil {
		t.Fatal(err)
	}
	if _, _, err := old.ReadResponse(250); err != nil {
		t.Fatalf("old session after the reload: %v", err)
	}
}
