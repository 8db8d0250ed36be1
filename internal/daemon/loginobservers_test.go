package daemon

import (
	"fmt"
	"testing"

	"github.com/oauthbridge/oauthbridge/internal/alerts"
)

// Two bridges in one process (each with its own Microsoft 365) count only
// their own failed upstream logins: Exchange refusing the first bridge's
// archive logins raises the first bridge's upstream_login_failures alert,
// not the second's, although both have an account named archive.
func TestLoginObserversPerDaemon(t *testing.T) {
	r1, r2 := newHookReceiver(t, false), newHookReceiver(t, false)
	one := startAlertEnv(t, "2099-01-01", fmt.Sprintf(alertBlock, r1.srv.URL), true)
	two := startAlertEnv(t, "2099-01-01", fmt.Sprintf(alertBlock, r2.srv.URL), true)

	failArchiveLogins := func(ae *alertEnv) {
		t.Helper()
		for range 2 { // alerts upstream_login_failures = 2
			if c, err := imapLogin(t, ae.d.Addr("imap"), "arch", "pw-otrs-1"); err == nil {
				c.Close()
				t.Fatal("IMAP login worked without FullAccess")
			}
		}
	}
	upstreamFailing := func(ae *alertEnv) []alerts.Alert {
		var out []alerts.Alert
		for _, a := range ae.d.Alerts().Active() {
			if a.Condition == alerts.UpstreamLoginFailures {
				out = append(out, a)
			}
		}
		return out
	}

	failArchiveLogins(one)
	one.expectKicked(t, alerts.UpstreamLoginFailures, alerts.Firing, "archive")
	if p := r1.next(t, alerts.UpstreamLoginFailures, alerts.Firing); p.Account != "archive" || p.Host != "bridge1" {
		t.Errorf("first bridge's webhook: %+v", p)
	}
	// Each login's audit (and its observers) ran before the client got its
	// NO: an evaluation of the second bridge now sees everything it was
	// told. Nothing kicked the second bridge's engine.
	if got := two.evaluate(t); len(got) != 0 {
		t.Fatalf("the second bridge announced %+v after the first bridge's failed logins", got)
	}
	if got := upstreamFailing(two); len(got) != 0 {
		t.Fatalf("the second bridge counts the first bridge's failed logins: %+v", got)
	}

	// The second bridge does count its own.
	failArchiveLogins(two)
	two.expectKicked(t, alerts.UpstreamLoginFailures, alerts.Firing, "archive")
	if got := upstreamFailing(two); len(got) != 1 || got[0].Account != "archive" {
		t.Fatalf("second bridge's upstream_login_failures after its own failures: %+v", got)
	}
	r2.next(t, alerts.UpstreamLoginFailures, alerts.Firing)
}
