package pop3proxy

import (
	"context"
	"testing"

	"github.com/oauthbridge/oauthbridge/internal/localauth"
	"github.com/oauthbridge/oauthbridge/tokens"
	"github.com/oauthbridge/oauthbridge/tokens/tokenstest"
)

// gatedTokens blocks AccessToken until gate is closed.
type gatedTokens struct {
	tokens.Source
	entered chan struct{}
	gate    chan struct{}
}

func (g *gatedTokens) AccessToken(ctx context.Context, account string) (string, error) {
	g.entered <- struct{}{}
	select {
	case <-g.gate:
	case <-ctx.Done():
		return "", ctx.Err()
	}
	return g.Source.AccessToken(ctx, account)
}

// A login that completes while the bridge drains is refused with
// [SYS/TEMP], never spliced; the same rule as IMAP and SMTP.
func TestLoginDuringDrainRefused(t *testing.T) {
	stub := startStub(t)
	g := &gatedTokens{Source: tokenstest.StaticSource{"acct": goodToken}, entered: make(chan struct{}, 1), gate: make(chan struct{})}
	e := newEnv(t, testConfig{Upstream: stub.Addr}, envOptions{tokens: g})
	c := e.pipe()
	c.expect("+OK oauthbridge POP3 ready")
	c.send("USER " + testUser)
	c.expect("+OK send PASS")
	c.send("PASS " + testPassword)
	<-g.entered
	res := make(chan error, 1)
	go func() { res <- e.srv.Shutdown(context.Background()) }()
	waitFor(t, e.srv.fd.Draining)
	close(g.gate)
	c.expect("-ERR [SYS/TEMP] bridge shutting down, try again later")
	c.expectEOF()
	if err := <-res; err != nil {
		t.Errorf("Shutdown() = %v", err)
	}
	logins := e.logs.find("login")
	if len(logins) != 1 || logins[0]["result"] != localauth.ResultTemporary {
		t.Errorf("audit lines = %v, want one with result temporary", logins)
	}
	if n := e.lim.InUse("mail:acct"); n != 0 {
		t.Errorf("limiter InUse = %d after the refused login, want 0", n)
	}
}
