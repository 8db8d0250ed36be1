package tokens_test

import (
	"testing"
	"time"

	"github.com/oauthbridge/oauthbridge/config"
	. "github.com/oauthbridge/oauthbridge/tokens"
)

// The send path the SMTP proxy reports for a send_via = "auto" account is
// kept in the store: a restart reports it (Status, SendPath) with its
// original since; refreshes and a new sign-in keep it; an account whose
// send_via is no longer "auto" ignores it, and its next write drops it.
func TestSendPathKeptAcrossRestart(t *testing.T) {
	e := newEnv(t, envOpts{secret: secret})
	cfgVia := func(via string) *config.Config {
		return testConfig(t, e.dir, e.f.AuthorityURL, secret, testAccount{name: helpdesk, mailbox: "hd@contoso.com", delegate: alice, sendVia: via})
	}
	open := func(via string) *Manager {
		t.Helper()
		e.cfg = cfgVia(via)
		return e.open()
	}
	e.m.Close()
	m := open("auto")
	if err := e.deviceLogin(m, helpdesk, alice); err != nil {
		t.Fatal(err)
	}
	if _, _, _, _, ok := m.SendPath(helpdesk); ok {
		t.Fatal("a send path before any was reported")
	}
	since := e.clock.Now()
	m.SetSendPath(helpdesk, "graph", "SMTP AUTH is disabled: 535 5.7.139", since.Add(6*time.Hour))
	e.clock.Add(time.Minute)
	recheck := e.clock.Now().Add(6 * time.Hour)
	m.SetSendPath(helpdesk, "graph", "SMTP AUTH is disabled: 535 5.7.139", recheck) // a failed recheck
	if st := statusOf(m, helpdesk); st.SendPath != "graph" || !st.SendPathSince.Equal(since) {
		t.Fatalf("status = %+v, want graph since %v", st, since)
	}
	// A refresh writes the entry: the kept path stays in it.
	tok := e.token(m, helpdesk)
	m.Rejected(helpdesk, tok)
	e.token(m, helpdesk)
	m.Close() // waits for the background write

	check := func(m *Manager, what string) {
		t.Helper()
		path, reason, s, r, ok := m.SendPath(helpdesk)
		if !ok || path != "graph" || reason != "SMTP AUTH is disabled: 535 5.7.139" || !s.Equal(since) || !r.Equal(recheck) {
			t.Fatalf("%s: SendPath = %q %q %v %v %v, want graph since %v recheck %v", what, path, reason, s, r, ok, since, recheck)
		}
		if st := statusOf(m, helpdesk); st.SendPath != "graph" || !st.SendPathSince.Equal(since) || st.SendPathReason != reason {
			t.Fatalf("%s: status = %+v", what, st)
		}
	}
	m = open("auto")
	check(m, "after a restart")
	// A new sign-in keeps it.
	if err := e.deviceLogin(m, helpdesk, alice); err != nil {
		t.Fatal(err)
	}
	m.Close()
	m = open("auto")
	check(m, "after a sign-in and a restart")
	m.Close()

	// send_via = "smtp" now: the kept path is ignored, and dropped by the
	// next write of the entry.
	m = open("smtp")
	if _, _, _, _, ok := m.SendPath(helpdesk); ok {
		t.Error("send_via = smtp: a kept send path is reported")
	}
	if st := statusOf(m, helpdesk); st.SendPath != "smtp" || !st.SendPathSince.IsZero() {
		t.Errorf("send_via = smtp: status = %+v", st)
	}
	tok = e.token(m, helpdesk)
	m.Rejected(helpdesk, tok)
	e.token(m, helpdesk)
	m.Close()
	m = open("auto")
	if p, _, _, _, ok := m.SendPath(helpdesk); ok {
		t.Errorf("back to send_via = auto: the dropped send path %q came back", p)
	}
	// The way back to SMTP is kept too.
	m.SetSendPath(helpdesk, "graph", "x", e.clock.Now().Add(time.Hour))
	m.SetSendPath(helpdesk, "smtp", "SMTP AUTH works again", time.Time{})
	m.Close()
	m = open("auto")
	if p, r, _, _, ok := m.SendPath(helpdesk); !ok || p != "smtp" || r != "SMTP AUTH works again" {
		t.Errorf("after the way back: SendPath = %q %q %v", p, r, ok)
	}
}
