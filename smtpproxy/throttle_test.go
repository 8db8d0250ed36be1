package smtpproxy

import (
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"

	"github.com/oauthbridge/oauthbridge/internal/frontdoor"
	"github.com/oauthbridge/oauthbridge/internal/localauth"
)

// A password that was not checked (the user's checks are used up) gets
// 454 4.7.0, audited as throttled, never 535; it counts toward the
// per-connection failure limit (the third failed AUTH closes the
// connection, as in IMAP and POP3); the right password verified before
// still gets in. All from 127.0.0.1.
func TestAuthThrottledIsTemporary(t *testing.T) {
	ms := startStubMS(t)
	br := startBridge(t, ms.addr, bridgeOpts{
		auth:     localauth.Options{Burst: 1, CheckInterval: time.Hour, ThrottledHold: time.Millisecond, MaxQueueWait: time.Millisecond},
		failures: &frontdoor.Policy{FailureDelay: time.Millisecond},
	})
	loginClient(t, br.addr, "otrs") // spends the one check; cached

	c := dialClient(t, br.addr)
	for i := range 3 {
		se := wantCode(t, "Auth(stale)", c.Auth(sasl.NewPlainClient("", "otrs", "stale")), 454, smtp.EnhancedCode{4, 7, 0})
		if !strings.Contains(se.Message, "not checked") {
			t.Errorf("attempt %d: %q does not say the password was not checked", i, se.Message)
		}
	}
	if err := c.Noop(); err == nil {
		t.Error("the connection is still open after three failed AUTHs")
	}

	loginClient(t, br.addr, "otrs") // the verified password, while throttled
	logs := br.logs.String()
	if strings.Count(logs, "result=throttled") != 3 || strings.Contains(logs, "too many failed logins") {
		t.Errorf("audit lines for the unchecked passwords:\n%s", logs)
	}
	if !strings.Contains(logs, "too many failed AUTH attempts") {
		t.Errorf("no log line for the disconnect:\n%s", logs)
	}
}

// The per-connection policy for checked wrong passwords: 535 each time,
// after the failure delay, and the connection closes after the third.
func TestAuthFailurePolicy(t *testing.T) {
	ms := startStubMS(t)
	br := startBridge(t, ms.addr, bridgeOpts{failures: &frontdoor.Policy{FailureDelay: 100 * time.Millisecond}})
	c := dialClient(t, br.addr)
	start := time.Now()
	for range 3 {
		wantCode(t, "Auth(wrong)", c.Auth(sasl.NewPlainClient("", "otrs", "wrong")), 535, smtp.EnhancedCode{5, 7, 8})
	}
	if took := time.Since(start); took < 300*time.Millisecond {
		t.Errorf("3 failed AUTHs answered in %s, want at least 3 x the 100ms failure delay", took)
	}
	if err := c.Noop(); err == nil {
		t.Error("the connection is still open after three failed AUTHs")
	}
}
