package tokens_test

import (
	"context"
	"testing"
	"time"

	"github.com/oauthbridge/oauthbridge/internal/fakems"
	. "github.com/oauthbridge/oauthbridge/tokens"
)

func roundEnded(ch <-chan struct{}) bool {
	select {
	case <-ch:
		return true
	default:
		return false
	}
}

func waitRound(t *testing.T, m *Manager) {
	t.Helper()
	select {
	case <-m.FirstRound():
	case <-time.After(20 * time.Second):
		t.Fatal("the first refresh round did not end")
	}
}

// After a restart with tokens that expired while the bridge was down,
// Status shows the stored state (ok) until the first refresh answers; the
// first round ends only when it did, and then Status tells the truth.
func TestFirstRoundEndsAfterTheDueRefreshes(t *testing.T) {
	// A long request timeout: only the hang's end may end the round.
	e := newEnv(t, envOpts{secret: secret, manager: func(o *Options) { o.RequestTimeout = 10 * time.Minute }})
	if err := e.deviceLogin(e.m, helpdesk, alice); err != nil {
		t.Fatal(err)
	}
	e.token(e.m, helpdesk)
	e.token(e.m, scanner)
	e.m.Close()
	e.f.RevokeRefreshTokens(alice) // the sign-in died while the bridge was down
	e.clock.Add(2 * tokenLife)

	m := e.open()
	if s := statusOf(m, helpdesk); s.State != StateOK {
		t.Fatalf("before the first refresh: Status = %+v, want the stored state ok", s)
	}
	if roundEnded(m.FirstRound()) {
		t.Fatal("FirstRound ended before Start")
	}
	// The refreshes hang: the round must not end while they run.
	e.f.SetTokenFault(fakems.TokenFault{Hang: true})
	before := e.f.TokenRequests()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	m.Start(ctx)
	eventually(t, "both due refreshes reaching the token endpoint", func() bool { return e.f.TokenRequests()-before >= 2 })
	if roundEnded(m.FirstRound()) {
		t.Fatal("FirstRound ended while the refreshes hang")
	}
	m.Close() // cancels the hanging requests; Close waits for the round's end
	if !roundEnded(m.FirstRound()) {
		t.Fatal("FirstRound did not end when Close ended its refreshes")
	}

	// Again, answering: the revoked sign-in is needs_login, the app flow ok.
	e.f.SetTokenFault(fakems.TokenFault{})
	m = e.open()
	m.Start(ctx)
	waitRound(t, m)
	if s := statusOf(m, helpdesk); s.State != StateNeedsLogin || s.AADSTS != 50173 {
		t.Fatalf("after the first round: Status(helpdesk) = %+v, want needs_login AADSTS50173", s)
	}
	if s := statusOf(m, scanner); s.State != StateOK || s.LastError != "" || s.LastRefresh.IsZero() {
		t.Fatalf("after the first round: Status(scanner) = %+v, want ok and refreshed", s)
	}
}

// Nothing due at start (valid tokens, an account nobody signed in to):
// the round ends at once, without a token request.
func TestFirstRoundWithNothingDue(t *testing.T) {
	e := newEnv(t, envOpts{secret: secret})
	e.token(e.m, scanner)
	e.m.Close()
	m := e.open()
	before := e.f.TokenRequests()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	m.Start(ctx)
	waitRound(t, m)
	if n := e.f.TokenRequests() - before; n != 0 {
		t.Fatalf("%d token requests in the first round, want 0", n)
	}
	if s := statusOf(m, helpdesk); s.State != StateNeedsLogin {
		t.Fatalf("Status(helpdesk) = %+v, want needs_login", s)
	}
}
