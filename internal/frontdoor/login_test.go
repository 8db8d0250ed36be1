package frontdoor

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/bcrypt"

	"github.com/oauthbridge/oauthbridge/config"
	"github.com/oauthbridge/oauthbridge/internal/limiter"
	"github.com/oauthbridge/oauthbridge/internal/localauth"
	"github.com/oauthbridge/oauthbridge/tokens"
)

// gateConfig has accounts a and b; users maps a user name to its account.
func gateConfig(t testing.TB, users map[string]string) *config.Config {
	t.Helper()
	src := fmt.Sprintf("state_dir = %q\nprovider \"p\" {\n tenant = \"t\"\n client_id = \"c\"\n}\n"+
		"account \"a\" {\n provider = \"p\"\n mailbox = \"a@x.com\"\n max_connections = 1\n}\n"+
		"account \"b\" {\n provider = \"p\"\n mailbox = \"b@x.com\"\n}\n", t.TempDir())
	h, err := bcrypt.GenerateFromPassword([]byte("pw"), bcrypt.MinCost)
	if err != nil {
		t.Fatal(err)
	}
	for name, acct := range users {
		src += fmt.Sprintf("user %q {\n password_hash = %q\n account = %q\n}\n", name, h, acct)
	}
	cfg, err := config.Parse("t.hcl", []byte(src))
	if err != nil {
		t.Fatal(err)
	}
	return cfg
}

// stubTokens hands out one token per account or fails with err.
type stubTokens struct {
	err      error
	rejected []string
}

func (s *stubTokens) AccessToken(_ context.Context, account string) (string, error) {
	if s.err != nil {
		return "", s.err
	}
	return "tok-" + account, nil
}

func (s *stubTokens) Rejected(account, tok string) { s.rejected = append(s.rejected, account+"/"+tok) }

func newGate(cfg *config.Config, src tokens.Source) *Gate {
	return &Gate{
		Auth:    localauth.New(cfg, localauth.Options{}),
		Tokens:  src,
		Limiter: &limiter.Limiter{},
		Slot: func(l *Login) Slot {
			return Slot{Key: "mail:" + l.Account.Name, Max: l.Account.MaxConnections, Wait: time.Millisecond}
		},
	}
}

// TestGateAccountFromSnapshot: a reload between accept and login does not
// move a connection's login to another account; the next connection gets
// the new one. A user only the newer configuration knows is a temporary
// failure on the old connection, never "bad credentials".
func TestGateAccountFromSnapshot(t *testing.T) {
	ctx := context.Background()
	old := gateConfig(t, map[string]string{"otrs": "a"})
	g := newGate(old, &stubTokens{})
	accepted := old // the connection's snapshot, taken at accept

	// The reload: otrs moves to account b, scanner is new.
	newer := gateConfig(t, map[string]string{"otrs": "b", "scanner": "b"})
	g.Auth.(*localauth.Authenticator).SetUsers(newer)

	l, f := g.Check(ctx, accepted, "otrs", "pw", "127.0.0.1")
	if f != nil || l.Account.Name != "a" || l.Config != accepted {
		t.Fatalf("login on the old connection = %+v, %v; want account a of its snapshot", l, f)
	}
	l, f = g.Check(ctx, newer, "otrs", "pw", "127.0.0.1")
	if f != nil || l.Account.Name != "b" {
		t.Fatalf("login on a new connection = %+v, %v; want account b", l, f)
	}
	_, f = g.Check(ctx, accepted, "scanner", "pw", "127.0.0.1")
	if f == nil || f.Kind != Temporary {
		t.Fatalf("user added after accept = %v, want Temporary", f)
	}
	_, f = g.Check(ctx, accepted, "otrs", "wrong", "127.0.0.1")
	if f == nil || f.Kind != BadCredentials || f.Kind.String() != localauth.ResultBadCredentials {
		t.Fatalf("wrong password = %v, want BadCredentials", f)
	}
	// A user the reload removed is refused at once, even on a connection
	// accepted before it.
	g.Auth.(*localauth.Authenticator).SetUsers(gateConfig(t, map[string]string{"scanner": "b"}))
	if _, f = g.Check(ctx, accepted, "otrs", "pw", "127.0.0.1"); f == nil || f.Kind != BadCredentials {
		t.Fatalf("removed user = %v, want BadCredentials", f)
	}
}

func TestGateSlotAndToken(t *testing.T) {
	ctx := context.Background()
	cfg := gateConfig(t, map[string]string{"otrs": "a"})
	src := &stubTokens{}
	g := newGate(cfg, src)

	gr, f := g.Login(ctx, cfg, "otrs", "pw", "127.0.0.1")
	if f != nil {
		t.Fatal(f)
	}
	tok, f := gr.Token(ctx)
	if f != nil || tok != "tok-a" {
		t.Fatalf("Token = %q, %v", tok, f)
	}
	gr.Rejected(tok)
	if len(src.rejected) != 1 || src.rejected[0] != "a/tok-a" {
		t.Fatalf("Rejected reached the source as %v", src.rejected)
	}
	// Account a has max_connections = 1: a second login waits, then fails
	// as AccountBusy (temporary, the limit named), not as a password error.
	_, f = g.Login(ctx, cfg, "otrs", "pw", "127.0.0.1")
	if f == nil || f.Kind != AccountBusy || f.Max != 1 || f.Account != "a" || f.Class != "limit" || !f.Kind.Temporary() {
		t.Fatalf("second login = %+v, want AccountBusy with max 1", f)
	}
	gr.Release()
	gr.Release() // idempotent
	gr2, f := g.Login(ctx, cfg, "otrs", "pw", "127.0.0.1")
	if f != nil {
		t.Fatalf("login after Release = %v", f)
	}
	gr2.Release()

	for _, tc := range []struct {
		err  error
		kind Kind
	}{
		{&tokens.Error{Account: "a", Kind: tokens.NeedsLogin}, NeedsLogin},
		{&tokens.Error{Account: "a", Kind: tokens.Failing}, Failing},
		{&tokens.Error{Account: "a", Kind: tokens.Temporary}, Temporary},
		{errors.New("not a tokens.Error"), Temporary},
	} {
		src.err = tc.err
		gr, f := g.Login(ctx, cfg, "otrs", "pw", "127.0.0.1")
		if f != nil {
			t.Fatal(f)
		}
		_, f = gr.Token(ctx)
		gr.Release()
		if f == nil || f.Kind != tc.kind || f.Account != "a" || !errors.Is(f, tc.err) {
			t.Errorf("token error %v -> %+v, want %v for account a", tc.err, f, tc.kind)
		}
	}
}

func TestKindsNeverBadCredentials(t *testing.T) {
	for k := BadCredentials; k <= Stopping; k++ {
		if k.String() == localauth.ResultError {
			t.Errorf("kind %d has no audit result", k)
		}
		if k != BadCredentials && (k.String() == localauth.ResultBadCredentials || !k.Temporary()) {
			t.Errorf("kind %v counts as bad credentials", k)
		}
		if k.Local() != (k == BadCredentials || k == Throttled || k == Busy) {
			t.Errorf("%v.Local() = %v", k, k.Local())
		}
	}
}

func TestPlaintextAllowed(t *testing.T) {
	local := &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 1}
	remote := &net.TCPAddr{IP: net.IPv4(192, 0, 2, 7), Port: 1}
	for _, tc := range []struct {
		tls, insecure bool
		addr          net.Addr
		want          bool
	}{
		{false, false, local, true},
		{false, false, remote, false},
		{true, false, remote, true},
		{false, true, remote, true},
	} {
		if got := PlaintextAllowed(tc.tls, tc.addr, tc.insecure, nil); got != tc.want {
			t.Errorf("PlaintextAllowed(tls=%v, %v, insecure=%v) = %v", tc.tls, tc.addr, tc.insecure, got)
		}
	}
	never := func(net.Addr) bool { return false }
	if PlaintextAllowed(false, local, false, never) {
		t.Error("the isLoopback override is ignored")
	}
	if !strings.Contains(Failuref(Temporary, "x %d", 1).Error(), "x 1") {
		t.Error("Failuref lost its detail")
	}
}
