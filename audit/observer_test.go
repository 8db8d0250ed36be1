package audit_test

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"
	"golang.org/x/crypto/bcrypt"

	"github.com/oauthbridge/oauthbridge/audit"
	"github.com/oauthbridge/oauthbridge/config"
	"github.com/oauthbridge/oauthbridge/imapproxy"
	"github.com/oauthbridge/oauthbridge/internal/fakems"
	"github.com/oauthbridge/oauthbridge/internal/limiter"
	"github.com/oauthbridge/oauthbridge/internal/localauth"
	"github.com/oauthbridge/oauthbridge/pop3proxy"
	"github.com/oauthbridge/oauthbridge/smtpproxy"
	"github.com/oauthbridge/oauthbridge/tokens/tokenstest"
)

const (
	goodPassword = "Correct-Horse-7731"
	badPassword  = "Wrong-Battery-5519"
	mailbox      = "helpdesk@contoso.com"
)

// recorder is a user-defined observer: what a caller outside the module
// writes to see the proxies' logins.
type recorder struct {
	mu   sync.Mutex
	seen []audit.LoginAttempt
}

func (r *recorder) ObserveLogin(a audit.LoginAttempt) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.seen = append(r.seen, a)
}

// take returns the attempts seen since the last take.
func (r *recorder) take() []audit.LoginAttempt {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := r.seen
	r.seen = nil
	return out
}

// env is one fake Microsoft 365 and a configuration whose account
// "helpdesk" reaches its IMAP, POP3 and SMTP servers, with the local user
// "scanner".
type env struct {
	cfg   *config.Config
	token string // the account's access token
}

func startEnv(t *testing.T) *env {
	t.Helper()
	f, err := fakems.Start(fakems.Options{})
	if err != nil {
		t.Fatalf("fakems.Start() = %v", err)
	}
	t.Cleanup(func() { f.Close() })
	f.AddUser(mailbox)
	ca := filepath.Join(t.TempDir(), "ca.pem")
	if err := f.WriteCAFile(ca); err != nil {
		t.Fatal(err)
	}
	hash, err := bcrypt.GenerateFromPassword([]byte(goodPassword), bcrypt.MinCost)
	if err != nil {
		t.Fatal(err)
	}
	src := fmt.Sprintf(`
state_dir = %q
imap {
  listen = ["127.0.0.1:0"]
  upstream_timeout = "10s"
}
pop3 {
  listen = ["127.0.0.1:0"]
  upstream_timeout = "10s"
}
smtp {
  listen = ["127.0.0.1:0"]
  upstream_timeout = "10s"
}
provider "ms" {
  tenant      = "contoso.com"
  client_id   = "00000000-0000-0000-0000-000000000001"
  authority   = "http://127.0.0.1:1"
  imap_server = %q
  pop3_server = %q
  smtp_server = %q
  ca_file     = %q
}
account "helpdesk" {
  provider = "ms"
  mailbox  = %q
}
user "scanner" {
  password_hash = %q
  account       = "helpdesk"
}
`, t.TempDir(), f.IMAPAddr, f.POP3Addr, f.SMTPAddr, ca, mailbox, hash)
	cfg, err := config.Parse("observer.hcl", []byte(src))
	if err != nil {
		t.Fatalf("config.Parse() = %v", err)
	}
	return &env{cfg: cfg, token: f.IssueAccessToken(mailbox)}
}

// serve runs serve on a loopback listener until the test ends and returns
// its address.
func serve(t *testing.T, serve func(net.Listener) error, shutdown func(context.Context) error) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- serve(ln) }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := shutdown(ctx); err != nil {
			t.Errorf("Shutdown() = %v", err)
		}
		<-done
	})
	return ln.Addr().String()
}

// dialText opens a line-based client connection and reads the greeting.
func dialText(t *testing.T, addr string) (net.Conn, *bufio.Reader) {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	if err := c.SetDeadline(time.Now().Add(30 * time.Second)); err != nil {
		t.Fatal(err)
	}
	br := bufio.NewReader(c)
	if _, err := br.ReadString('\n'); err != nil {
		t.Fatalf("greeting: %v", err)
	}
	return c, br
}

// imapLogin sends LOGIN and returns the tagged reply.
func imapLogin(t *testing.T, addr, pass string) string {
	t.Helper()
	c, br := dialText(t, addr)
	fmt.Fprintf(c, "a1 LOGIN scanner %s\r\n", pass)
	for {
		line, err := br.ReadString('\n')
		if err != nil {
			t.Fatalf("LOGIN reply: %v", err)
		}
		if strings.HasPrefix(line, "a1 ") {
			return line
		}
	}
}

// pop3Login sends USER and PASS and returns the reply to PASS.
func pop3Login(t *testing.T, addr, pass string) string {
	t.Helper()
	c, br := dialText(t, addr)
	fmt.Fprintf(c, "USER scanner\r\n")
	if line, err := br.ReadString('\n'); err != nil || !strings.HasPrefix(line, "+OK") {
		t.Fatalf("USER: %q, %v", line, err)
	}
	fmt.Fprintf(c, "PASS %s\r\n", pass)
	line, err := br.ReadString('\n')
	if err != nil {
		t.Fatalf("PASS reply: %v", err)
	}
	return line
}

// checkAttempt compares one observed attempt with what is wanted, and
// checks that none of its fields carries either password.
func checkAttempt(t *testing.T, got audit.LoginAttempt, want audit.LoginAttempt) {
	t.Helper()
	if got.Err != nil && want.Result == audit.ResultOK {
		t.Errorf("%s: successful attempt with error %v", got.Proto, got.Err)
	}
	errMsg := ""
	if got.Err != nil {
		errMsg = got.Err.Error()
	}
	got.Err, want.Err = nil, nil
	if got != want {
		t.Errorf("observed %+v\n          want %+v", got, want)
	}
	all := fmt.Sprintf("%#v %s", got, errMsg)
	for _, p := range []string{goodPassword, badPassword} {
		if strings.Contains(all, p) {
			t.Errorf("%s %s attempt carries a password: %s", got.Proto, got.Result, all)
		}
	}
}

// A caller's own LoginObserver, given to each proxy's Options, sees a
// failed and a successful login on IMAP, POP3 and SMTP (and the SMTP
// proxy's upstream login at MAIL), with the user, account, mailbox,
// result and client address, and never a password.
func TestUserObserverSeesLogins(t *testing.T) {
	e := startEnv(t)
	rec := &recorder{}
	current := func() *config.Config { return e.cfg }
	auth := localauth.New(e.cfg, localauth.Options{})
	toks := tokenstest.StaticSource{"helpdesk": e.token}
	lim := &limiter.Limiter{}
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	observers := []audit.LoginObserver{rec}

	failed := func(proto string) audit.LoginAttempt {
		return audit.LoginAttempt{Proto: proto, User: "scanner", Remote: "127.0.0.1", Result: audit.ResultBadCredentials}
	}
	ok := func(proto string) audit.LoginAttempt {
		return audit.LoginAttempt{Proto: proto, User: "scanner", Remote: "127.0.0.1", Result: audit.ResultOK, Account: "helpdesk", Mailbox: mailbox}
	}
	expect := func(t *testing.T, want ...audit.LoginAttempt) {
		t.Helper()
		got := rec.take()
		if len(got) != len(want) {
			t.Fatalf("observed %d attempts, want %d: %+v", len(got), len(want), got)
		}
		for i := range got {
			checkAttempt(t, got[i], want[i])
		}
	}

	t.Run("imap", func(t *testing.T) {
		srv := imapproxy.New(imapproxy.Options{Config: current, Auth: auth, Tokens: toks, Limiter: lim, Logger: log,
			LoginObservers: observers, FailureDelay: -1})
		addr := serve(t, func(ln net.Listener) error { return srv.Serve(ln, false) }, srv.Shutdown)
		if r := imapLogin(t, addr, badPassword); !strings.HasPrefix(r, "a1 NO") {
			t.Fatalf("wrong password: %q", r)
		}
		expect(t, failed(audit.IMAP))
		if r := imapLogin(t, addr, goodPassword); !strings.HasPrefix(r, "a1 OK") {
			t.Fatalf("right password: %q", r)
		}
		expect(t, ok(audit.IMAP))
	})

	t.Run("pop3", func(t *testing.T) {
		srv := pop3proxy.New(pop3proxy.Options{Config: current, Auth: auth, Tokens: toks, Limiter: lim, Logger: log,
			LoginObservers: observers, FailureDelay: -1})
		addr := serve(t, func(ln net.Listener) error { return srv.Serve(ln, false) }, srv.Shutdown)
		if r := pop3Login(t, addr, badPassword); !strings.HasPrefix(r, "-ERR") {
			t.Fatalf("wrong password: %q", r)
		}
		expect(t, failed(audit.POP3))
		if r := pop3Login(t, addr, goodPassword); !strings.HasPrefix(r, "+OK") {
			t.Fatalf("right password: %q", r)
		}
		expect(t, ok(audit.POP3))
	})

	t.Run("smtp", func(t *testing.T) {
		srv := smtpproxy.New(smtpproxy.Options{Config: current, Auth: auth, Tokens: toks, Logger: log,
			LoginObservers: observers, FailureDelay: -1})
		addr := serve(t, func(ln net.Listener) error { return srv.Serve(ln, false) }, srv.Shutdown)
		c, err := smtp.Dial(addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		var se *smtp.SMTPError
		if err := c.Auth(sasl.NewPlainClient("", "scanner", badPassword)); !errors.As(err, &se) || se.Code != 535 {
			t.Fatalf("AUTH with the wrong password = %v, want 535", err)
		}
		expect(t, failed(audit.SMTP))
		if err := c.Auth(sasl.NewPlainClient("", "scanner", goodPassword)); err != nil {
			t.Fatalf("AUTH with the right password = %v", err)
		}
		expect(t, ok(audit.SMTP))
		// The upstream login happens at MAIL and is reported on its own.
		if err := c.Mail(mailbox, nil); err != nil {
			t.Fatalf("MAIL FROM = %v", err)
		}
		expect(t, audit.LoginAttempt{Proto: audit.SMTP, Result: audit.ResultOK, Account: "helpdesk", Mailbox: mailbox, Upstream: true})
	})
}

// A nil observer in the list is skipped, and a LoginObserverFunc is an
// observer.
func TestLoginObserverFunc(t *testing.T) {
	var got []audit.LoginAttempt
	var o audit.LoginObserver = audit.LoginObserverFunc(func(a audit.LoginAttempt) { got = append(got, a) })
	localauth.Notify([]audit.LoginObserver{nil, o}, localauth.Attempt{Proto: "imap", User: "scanner", Result: localauth.ResultThrottled})
	if len(got) != 1 || got[0].Result != audit.ResultThrottled || got[0].User != "scanner" {
		t.Fatalf("observed %+v", got)
	}
}
