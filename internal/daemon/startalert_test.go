package daemon

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/oauthbridge/oauthbridge/config"
	"github.com/oauthbridge/oauthbridge/internal/alerts"
	"github.com/oauthbridge/oauthbridge/tokens"
)

// A bridge restarted after a sign-in died while it was down announces it
// as soon as the token refresh has told, not one check_interval (1h here)
// later; the account that is fine announces nothing.
func TestAlertsAtRestart(t *testing.T) {
	r := newHookReceiver(t, false)
	e := newEnv(t)
	e.f.AddUser("bob@contoso.com")
	e.f.AddMailbox("archive@contoso.com")
	e.writeAlertConfig(t, "2099-01-01", fmt.Sprintf("  webhook_url = %q\n  check_interval = \"1h\"", r.srv.URL))
	cfg, err := config.Load(e.cfgPath)
	if err != nil {
		t.Fatal(err)
	}
	ae := &alertEnv{env: e, clk: &fakeClock{t: time.Date(2026, 11, 26, 3, 0, 0, 0, time.UTC)}}
	start := func() {
		t.Helper()
		ae.newDaemon(t, cfg)
	}

	// The first run: both accounts signed in and fine.
	start()
	ae.signIn(t, "helpdesk", "alice@contoso.com")
	ae.signIn(t, "archive", "bob@contoso.com")
	if err := ae.d.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	if got := ae.startEvaluation(t); len(got) != 0 {
		t.Fatalf("first run: the evaluation at the start announced %+v, want nothing", got)
	}
	if err := ae.d.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}

	// Down for two hours (both access tokens expired); meanwhile an
	// administrator revoked bob's sessions.
	ae.clk.Add(2 * time.Hour)
	ae.f.RevokeRefreshTokens("bob@contoso.com")

	start()
	if err := ae.d.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ae.d.Shutdown(context.Background()) })
	got := ae.startEvaluation(t)
	if len(got) != 1 || got[0].Condition != alerts.NeedsLogin || got[0].State != alerts.Firing || got[0].Account != "archive" {
		t.Fatalf("after the restart: the evaluation at the start announced %+v, want needs_login of archive only", got)
	}
	p := r.next(t, alerts.NeedsLogin, alerts.Firing)
	if p.Account != "archive" {
		t.Errorf("webhook: %+v", p)
	}
	// helpdesk was refreshed in the round the engine waited for.
	for _, st := range ae.d.Tokens().Status() {
		if st.Account == "helpdesk" && (st.State != tokens.StateOK || !st.LastRefresh.Equal(ae.clk.Now())) {
			t.Errorf("helpdesk after the restart: %+v, want ok and refreshed at the start", st)
		}
	}
}
