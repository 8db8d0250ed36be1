package imapproxy

import (
	"fmt"
	"sync/atomic"
	"testing"

	"github.com/oauthbridge/oauthbridge/config"
	"github.com/oauthbridge/oauthbridge/internal/localauth"
)

// A reload between accept and login: the login on the connection accepted
// before it resolves to the account of that connection's configuration
// (the front door's one account rule); a connection accepted after it gets
// the new account. Both are logged on the audit line.
func TestReloadBetweenAcceptAndLogin(t *testing.T) {
	e := newEnv(t)
	ca := e.cfg.ProviderByName["ms"].CAFile
	extra := `account "other" {
  provider = "ms"
  mailbox  = "other@contoso.com"
  delegate = "alice@contoso.com"
}`
	old := testConfig(t, e.up.addr, ca, extra)
	newer := testConfig(t, e.up.addr, ca, extra)
	newer.UserByName["otrs"].Account = newer.AccountByName["other"] // the reload moves otrs
	var cur atomic.Pointer[config.Config]
	cur.Store(old)
	e.cfg = old
	e.opts.Config = cur.Load
	e.start()

	first := e.dialPipe()
	defer first.close()
	first.expect("* OK [CAPABILITY *] oauthbridge ready") // accepted under old

	// The reload, as the daemon does it: new snapshot, new user table.
	cur.Store(newer)
	e.opts.Auth.(*localauth.Authenticator).SetUsers(newer)

	second := e.dialPipe()
	defer second.close()
	second.expect("* OK [CAPABILITY *] oauthbridge ready")

	first.send("a LOGIN otrs secret\r\n")
	first.expect("a *")
	second.send("b LOGIN otrs secret\r\n")
	second.expect("b *")

	var accounts []string
	for _, en := range e.logs.entries() {
		if en["msg"] == "login" {
			accounts = append(accounts, fmt.Sprint(en["account"]))
		}
	}
	if len(accounts) != 2 || accounts[0] != "acct" || accounts[1] != "other" {
		t.Fatalf("logins resolved to accounts %v, want [acct other]\n%s", accounts, e.logs.String())
	}
}
