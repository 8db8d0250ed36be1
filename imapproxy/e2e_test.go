package imapproxy

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapclient"

	"github.com/oauthbridge/oauthbridge/config"
	"github.com/oauthbridge/oauthbridge/internal/fakems"
	"github.com/oauthbridge/oauthbridge/internal/limiter"
	"github.com/oauthbridge/oauthbridge/internal/localauth"
	"github.com/oauthbridge/oauthbridge/tokens/tokenstest"
)

// fakeEnv is the bridge in front of fakems (a fake Microsoft 365), served
// on a loopback listener.
type fakeEnv struct {
	f    *fakems.Fake
	cfg  *config.Config
	srv  *Server
	lim  *limiter.Limiter
	logs *logBuffer
	addr string
}

// startFake starts fakems with alice@contoso.com as the delegate of
// shared@contoso.com, and the bridge with account "acct" = that mailbox
// and the token of tokenUser.
func startFake(t *testing.T, tokenUser string, tweak func(*config.Config, *Options)) *fakeEnv {
	t.Helper()
	f, err := fakems.Start(fakems.Options{})
	if err != nil {
		t.Fatalf("fakems.Start() = %v", err)
	}
	t.Cleanup(func() { f.Close() })
	f.AddUser("alice@contoso.com")
	f.AddUser("bob@contoso.com")
	f.AddMailbox(testMailbox, "alice@contoso.com")
	ca := filepath.Join(t.TempDir(), "ca.pem")
	if err := f.WriteCAFile(ca); err != nil {
		t.Fatal(err)
	}
	e := &fakeEnv{f: f, lim: &limiter.Limiter{}, logs: &logBuffer{}}
	e.cfg = testConfig(t, f.IMAPAddr, ca, "")
	opts := Options{
		Config:       func() *config.Config { return e.cfg },
		Tokens:       tokenstest.StaticSource{"acct": f.IssueAccessToken(tokenUser)},
		Limiter:      e.lim,
		Logger:       slog.New(slog.NewJSONHandler(e.logs, nil)),
		FailureDelay: -1,
	}
	if tweak != nil {
		tweak(e.cfg, &opts)
	}
	opts.Auth = localauth.New(e.cfg, localauth.Options{})
	e.srv = New(opts)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	e.addr = ln.Addr().String()
	done := make(chan error, 1)
	go func() { done <- e.srv.Serve(ln, false) }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := e.srv.Shutdown(ctx); err != nil {
			t.Errorf("Shutdown() = %v", err)
		}
		if err := <-done; err != nil {
			t.Errorf("Serve() = %v", err)
		}
		if t.Failed() {
			t.Logf("bridge log:\n%s", e.logs.String())
		}
	})
	return e
}

func (e *fakeEnv) client(t *testing.T) *imapclient.Client {
	t.Helper()
	conn, err := net.Dial("tcp", e.addr)
	if err != nil {
		t.Fatalf("net.Dial() = %v", err)
	}
	c := imapclient.New(conn, nil)
	t.Cleanup(func() { c.Close() })
	return c
}

func wantCode(t *testing.T, err error, code imap.ResponseCode) {
	t.Helper()
	var ie *imap.Error
	if !errors.As(err, &ie) || ie.Code != code {
		t.Fatalf("Login() = %v, want NO [%s]", err, code)
	}
}

const testMessage = "From: customer@example.com\r\nTo: shared@contoso.com\r\nSubject: printer on fire\r\n\r\nHelp!\r\n"

// TestEndToEnd plays a helpdesk: ID, LOGIN with a password that needs
// quoting, APPEND, SELECT, FETCH with literals, IDLE, pipelined commands,
// LOGOUT; against a shared mailbox through its delegate's token.
func TestEndToEnd(t *testing.T) {
	e := startFake(t, "alice@contoso.com", nil)
	if err := e.f.Deliver(testMailbox, []byte(testMessage)); err != nil {
		t.Fatal(err)
	}
	c := e.client(t)
	if _, err := c.ID(&imap.IDData{Name: "OTRS", Version: "8"}).Wait(); err != nil {
		t.Fatalf("ID() = %v", err)
	}
	if err := c.Login("glpi", testUsers["glpi"]).Wait(); err != nil {
		t.Fatalf("Login() = %v", err)
	}
	if caps := c.Caps(); !caps.Has(imap.CapIdle) || caps.Has(imap.Cap("LOGINDISABLED")) {
		t.Errorf("Caps() = %v, want the upstream's post-auth caps with IDLE", caps)
	}

	appended := strings.Replace(testMessage, "printer on fire", "re: printer", 1)
	app := c.Append("INBOX", int64(len(appended)), nil)
	if _, err := app.Write([]byte(appended)); err != nil {
		t.Fatalf("Append.Write() = %v", err)
	}
	if err := app.Close(); err != nil {
		t.Fatalf("Append.Close() = %v", err)
	}
	if _, err := app.Wait(); err != nil {
		t.Fatalf("Append() = %v", err)
	}

	// Pipelined: SELECT and NOOP go out before either answer is read.
	sel := c.Select("INBOX", nil)
	noop := c.Noop()
	data, err := sel.Wait()
	if err != nil {
		t.Fatalf("Select() = %v", err)
	}
	if err := noop.Wait(); err != nil {
		t.Fatalf("Noop() = %v", err)
	}
	if data.NumMessages != 2 {
		t.Fatalf("Select() NumMessages = %d, want 2", data.NumMessages)
	}

	section := &imap.FetchItemBodySection{}
	msgs, err := c.Fetch(imap.SeqSetNum(1, 2), &imap.FetchOptions{BodySection: []*imap.FetchItemBodySection{section}}).Collect()
	if err != nil {
		t.Fatalf("Fetch() = %v", err)
	}
	var bodies []string
	for _, m := range msgs {
		bodies = append(bodies, string(m.FindBodySection(section)))
	}
	if len(bodies) != 2 || bodies[0] != testMessage || bodies[1] != appended {
		t.Fatalf("Fetch() bodies = %q, want the delivered and the appended message", bodies)
	}

	idle, err := c.Idle()
	if err != nil {
		t.Fatalf("Idle() = %v", err)
	}
	time.Sleep(20 * time.Millisecond)
	if err := idle.Close(); err != nil {
		t.Fatalf("Idle.Close() = %v", err)
	}
	if err := idle.Wait(); err != nil {
		t.Fatalf("Idle.Wait() = %v", err)
	}
	if err := c.Logout().Wait(); err != nil {
		t.Fatalf("Logout() = %v", err)
	}
	if got := e.f.Messages(testMailbox); len(got) != 2 || !bytes.Equal(got[1], []byte(appended)) {
		t.Errorf("fakems Messages() = %d messages, want 2 with the appended one", len(got))
	}
	waitFor(t, func() bool { return e.srv.ActiveSessions() == 0 && e.lim.InUse("mail:acct") == 0 })
	if got := e.logs.audits(); len(got) != 1 || got[0] != localauth.ResultOK {
		t.Errorf("audits = %q, want [ok]", got)
	}
}

// A token for a user without access to the mailbox: Exchange (and fakems)
// accept it and then answer "BAD User is authenticated but not connected.".
func TestEndToEndNoMailboxAccess(t *testing.T) {
	e := startFake(t, "bob@contoso.com", nil)
	c := e.client(t)
	wantCode(t, c.Login("otrs", "secret").Wait(), imap.ResponseCodeAuthenticationFailed)
	if got := e.logs.audits(); len(got) != 1 || got[0] != localauth.ResultUpstreamRejected {
		t.Errorf("audits = %q, want [upstream_rejected]", got)
	}
	if !strings.Contains(e.logs.String(), "not connected") || !strings.Contains(e.logs.String(), "FullAccess") {
		t.Errorf("log does not quote the upstream text with a FullAccess hint:\n%s", e.logs.String())
	}
}

func TestEndToEndNotConnectedQuirk(t *testing.T) {
	e := startFake(t, "alice@contoso.com", nil)
	e.f.SetIMAPBehaviour(fakems.IMAPBehaviour{NotConnected: true})
	c := e.client(t)
	wantCode(t, c.Login("otrs", "secret").Wait(), imap.ResponseCodeAuthenticationFailed)
	// The session is still in the not-authenticated state and usable.
	if err := c.Noop().Wait(); err != nil {
		t.Errorf("Noop() after a failed login = %v", err)
	}
}

func TestEndToEndMaxConnections(t *testing.T) {
	e := startFake(t, "alice@contoso.com", nil)
	for range 2 { // max_connections = 2
		c := e.client(t)
		if err := c.Login("otrs", "secret").Wait(); err != nil {
			t.Fatalf("Login() = %v", err)
		}
	}
	c := e.client(t)
	err := c.Login("otrs", "secret").Wait()
	wantCode(t, err, imap.ResponseCodeUnavailable)
	if !strings.Contains(err.Error(), "too many connections for this mailbox (max 2)") {
		t.Errorf("Login() = %v, want the max_connections text", err)
	}
}

// Guessing from many connections at once, all from 127.0.0.1 like the
// helpdesk: every guess is refused - as invalid when its password was
// checked, as [UNAVAILABLE] when the user's checks were used up and it was
// not - each is audited once, and the real helpdesk keeps working and logs
// in again from the same address.
func TestEndToEndBadPasswordsUnderLoad(t *testing.T) {
	e := startFake(t, "alice@contoso.com", func(_ *config.Config, o *Options) { o.FailureDelay = 20 * time.Millisecond })
	// Short waits so the throttled path runs in real time here.
	e.srv.opts.Auth = localauth.New(e.cfg, localauth.Options{CheckInterval: 20 * time.Millisecond, ThrottledHold: 50 * time.Millisecond, MaxQueueWait: 100 * time.Millisecond})
	good := e.client(t)
	if err := good.Login("otrs", "secret").Wait(); err != nil {
		t.Fatalf("Login() = %v", err)
	}
	const n = 16
	var wg sync.WaitGroup
	errs := make(chan error, n)
	var checked, throttled atomic.Int32
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			conn, err := net.Dial("tcp", e.addr)
			if err != nil {
				errs <- err
				return
			}
			c := imapclient.New(conn, nil)
			defer c.Close()
			err = c.Login("otrs", fmt.Sprintf("guess%d", i)).Wait()
			var ie *imap.Error
			switch {
			case errors.As(err, &ie) && ie.Code == imap.ResponseCodeAuthenticationFailed:
				checked.Add(1)
			case errors.As(err, &ie) && ie.Code == imap.ResponseCodeUnavailable && strings.Contains(ie.Text, "password not checked"):
				throttled.Add(1)
			default:
				errs <- fmt.Errorf("guess %d: Login() = %v, want NO [AUTHENTICATIONFAILED] or NO [UNAVAILABLE]", i, err)
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if checked.Load() < localauth.DefaultBurst {
		t.Errorf("%d guesses checked, %d throttled: want at least the burst (%d) checked", checked.Load(), throttled.Load(), localauth.DefaultBurst)
	}
	if _, err := good.Select("INBOX", nil).Wait(); err != nil {
		t.Errorf("Select() on the logged-in session during the attack = %v", err)
	}
	// A new login from the attacked address with the right password.
	again := e.client(t)
	if err := again.Login("otrs", "secret").Wait(); err != nil {
		t.Errorf("right password after the guesses = %v", err)
	}
	counts := map[string]int{}
	total := 0
	for _, r := range e.logs.audits() {
		counts[r]++
		total++
	}
	if total != n+2 || counts[localauth.ResultOK] != 2 || counts[localauth.ResultBadCredentials] != int(checked.Load()) || counts[localauth.ResultThrottled] != int(throttled.Load()) {
		t.Errorf("audit counts = %v, want one line per attempt (%d): 2 ok, %d bad_credentials, %d throttled", counts, n+2, checked.Load(), throttled.Load())
	}
}

// When the upstream drops the connection, the client's session ends and
// the per-account slot is freed.
func TestEndToEndUpstreamDrop(t *testing.T) {
	e := startFake(t, "alice@contoso.com", nil)
	c := e.client(t)
	if err := c.Login("otrs", "secret").Wait(); err != nil {
		t.Fatalf("Login() = %v", err)
	}
	if e.lim.InUse("mail:acct") != 1 {
		t.Fatalf("InUse() = %d, want 1", e.lim.InUse("mail:acct"))
	}
	e.f.DropConnections()
	if err := c.Noop().Wait(); err == nil {
		t.Errorf("Noop() after the upstream dropped = nil, want an error")
	}
	waitFor(t, func() bool { return e.srv.ActiveSessions() == 0 && e.lim.InUse("mail:acct") == 0 })
}
