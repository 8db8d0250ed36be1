package audit_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strings"
	"testing"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"

	"github.com/oauthbridge/oauthbridge/audit"
	"github.com/oauthbridge/oauthbridge/config"
	"github.com/oauthbridge/oauthbridge/imapproxy"
	"github.com/oauthbridge/oauthbridge/internal/limiter"
	"github.com/oauthbridge/oauthbridge/internal/localauth"
	"github.com/oauthbridge/oauthbridge/pop3proxy"
	"github.com/oauthbridge/oauthbridge/smtpproxy"
	"github.com/oauthbridge/oauthbridge/tokens/tokenstest"
)

// Passwords the user-defined checker below answers with each kind of
// refusal.
const (
	throttledPassword = "Throttled-Pass-2210"
	busyPassword      = "Busy-Pass-4417"
	downPassword      = "Directory-Down-8093"
)

// errDirectoryDown is an error of the caller's own that is none of the
// audit errors.
var errDirectoryDown = errors.New("directory: connection refused")

// directoryChecker is a password checker written outside the module (an
// LDAP directory, say): it uses only public packages, and one value serves
// as the PasswordChecker of all three proxies.
type directoryChecker struct{ cfg *config.Config }

func (d directoryChecker) Check(_ context.Context, user, password, _ string) (*config.User, error) {
	switch password {
	case goodPassword:
		return d.cfg.UserByName[user], nil
	case throttledPassword:
		return nil, fmt.Errorf("directory: %w (account %s is rate-limited)", audit.ErrThrottled, user)
	case busyPassword:
		return nil, fmt.Errorf("directory: %w (all 4 connections in use)", audit.ErrBusy)
	case downPassword:
		return nil, fmt.Errorf("directory: bind %s: %w", user, errDirectoryDown)
	}
	return nil, fmt.Errorf("directory: bind %s: %w", user, audit.ErrBadCredentials)
}

var (
	_ imapproxy.PasswordChecker = directoryChecker{}
	_ pop3proxy.PasswordChecker = directoryChecker{}
	_ smtpproxy.PasswordChecker = directoryChecker{}
)

// refusal is what one protocol's client hears for one of the checker's
// answers.
type refusal struct {
	password string
	cause    error // in the observed attempt's Err
	result   audit.Result
	imap     string // prefix of the tagged LOGIN reply
	pop3     string // prefix of the reply to PASS
	smtpCode int
	smtpEnh  smtp.EnhancedCode
	smtpText string // prefix of the message
}

var refusals = []refusal{
	{password: badPassword, cause: audit.ErrBadCredentials, result: audit.ResultBadCredentials,
		imap: "a1 NO [AUTHENTICATIONFAILED]", pop3: "-ERR [AUTH]",
		smtpCode: 535, smtpEnh: smtp.EnhancedCode{5, 7, 8}, smtpText: "Authentication credentials invalid"},
	{password: throttledPassword, cause: audit.ErrThrottled, result: audit.ResultThrottled,
		imap: "a1 NO [UNAVAILABLE] Too many login attempts", pop3: "-ERR [SYS/TEMP] too many login attempts",
		smtpCode: 454, smtpEnh: smtp.EnhancedCode{4, 7, 0}, smtpText: "Too many login attempts"},
	{password: busyPassword, cause: audit.ErrBusy, result: audit.ResultBusy,
		imap: "a1 NO [UNAVAILABLE] Bridge busy", pop3: "-ERR [SYS/TEMP] bridge busy",
		smtpCode: 454, smtpEnh: smtp.EnhancedCode{4, 7, 0}, smtpText: "Bridge busy"},
	// Any other error was not a checked password: a temporary failure,
	// never "wrong credentials".
	{password: downPassword, cause: errDirectoryDown, result: audit.ResultBusy,
		imap: "a1 NO [UNAVAILABLE] Bridge busy", pop3: "-ERR [SYS/TEMP] bridge busy",
		smtpCode: 454, smtpEnh: smtp.EnhancedCode{4, 7, 0}, smtpText: "Bridge busy"},
}

// A caller's own PasswordChecker reports a wrong password with
// audit.ErrBadCredentials and gets the wrong-credentials reply of each
// protocol and the bad_credentials result; audit.ErrThrottled and
// audit.ErrBusy get the throttled and busy replies, and any other error
// is busy: a temporary failure the client retries.
func TestUserCheckerErrors(t *testing.T) {
	e := startEnv(t)
	rec := &recorder{}
	current := func() *config.Config { return e.cfg }
	auth := directoryChecker{cfg: e.cfg}
	toks := tokenstest.StaticSource{"helpdesk": e.token}
	lim := &limiter.Limiter{}
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	observers := []audit.LoginObserver{rec}

	// observed checks the one attempt observed since the last call.
	observed := func(t *testing.T, proto string, r refusal) {
		t.Helper()
		got := rec.take()
		if len(got) != 1 {
			t.Fatalf("observed %d attempts, want 1: %+v", len(got), got)
		}
		if !errors.Is(got[0].Err, r.cause) {
			t.Errorf("observed Err = %v, want one wrapping %v", got[0].Err, r.cause)
		}
		checkAttempt(t, got[0], audit.LoginAttempt{Proto: proto, User: "scanner", Remote: "127.0.0.1", Result: r.result})
	}
	// accepted checks the successful attempt observed since the last call.
	accepted := func(t *testing.T, proto string) {
		t.Helper()
		got := rec.take()
		if len(got) != 1 {
			t.Fatalf("observed %d attempts, want 1: %+v", len(got), got)
		}
		checkAttempt(t, got[0], audit.LoginAttempt{Proto: proto, User: "scanner", Remote: "127.0.0.1", Result: audit.ResultOK, Account: "helpdesk", Mailbox: mailbox})
	}

	t.Run("imap", func(t *testing.T) {
		srv := imapproxy.New(imapproxy.Options{Config: current, Auth: auth, Tokens: toks, Limiter: lim, Logger: log,
			LoginObservers: observers, FailureDelay: -1})
		addr := serve(t, func(ln net.Listener) error { return srv.Serve(ln, false) }, srv.Shutdown)
		for _, r := range refusals {
			if got := imapLogin(t, addr, r.password); !strings.HasPrefix(got, r.imap) {
				t.Errorf("checker error %v: LOGIN = %q, want %q...", r.cause, got, r.imap)
			}
			observed(t, audit.IMAP, r)
		}
		if got := imapLogin(t, addr, goodPassword); !strings.HasPrefix(got, "a1 OK") {
			t.Fatalf("accepted by the checker: LOGIN = %q", got)
		}
		accepted(t, audit.IMAP)
	})

	t.Run("pop3", func(t *testing.T) {
		srv := pop3proxy.New(pop3proxy.Options{Config: current, Auth: auth, Tokens: toks, Limiter: lim, Logger: log,
			LoginObservers: observers, FailureDelay: -1})
		addr := serve(t, func(ln net.Listener) error { return srv.Serve(ln, false) }, srv.Shutdown)
		for _, r := range refusals {
			if got := pop3Login(t, addr, r.password); !strings.HasPrefix(got, r.pop3) {
				t.Errorf("checker error %v: PASS = %q, want %q...", r.cause, got, r.pop3)
			}
			observed(t, audit.POP3, r)
		}
		if got := pop3Login(t, addr, goodPassword); !strings.HasPrefix(got, "+OK") {
			t.Fatalf("accepted by the checker: PASS = %q", got)
		}
		accepted(t, audit.POP3)
	})

	t.Run("smtp", func(t *testing.T) {
		srv := smtpproxy.New(smtpproxy.Options{Config: current, Auth: auth, Tokens: toks, Logger: log,
			LoginObservers: observers, FailureDelay: -1})
		addr := serve(t, func(ln net.Listener) error { return srv.Serve(ln, false) }, srv.Shutdown)
		auth := func(pass string) error {
			c, err := smtp.Dial(addr)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			return c.Auth(sasl.NewPlainClient("", "scanner", pass))
		}
		for _, r := range refusals {
			var se *smtp.SMTPError
			err := auth(r.password)
			if !errors.As(err, &se) || se.Code != r.smtpCode || se.EnhancedCode != r.smtpEnh || !strings.HasPrefix(se.Message, r.smtpText) {
				t.Errorf("checker error %v: AUTH = %v, want %d %v %s...", r.cause, err, r.smtpCode, r.smtpEnh, r.smtpText)
			}
			observed(t, audit.SMTP, r)
		}
		if err := auth(goodPassword); err != nil {
			t.Fatalf("accepted by the checker: AUTH = %v", err)
		}
		accepted(t, audit.SMTP)
	})
}

// The daemon's own checker answers with the same errors, so a caller's
// code that tests its answers with errors.Is works for both.
func TestBuiltinCheckerErrorsArePublic(t *testing.T) {
	e := startEnv(t)
	a := localauth.New(e.cfg, localauth.Options{})
	_, err := a.Check(context.Background(), "scanner", badPassword, "127.0.0.1")
	if !errors.Is(err, audit.ErrBadCredentials) || !errors.Is(err, localauth.ErrInvalid) {
		t.Errorf("Check(wrong password) = %v, want an error wrapping audit.ErrBadCredentials", err)
	}
	for _, pair := range [][2]error{
		{localauth.ErrInvalid, audit.ErrBadCredentials},
		{localauth.ErrThrottled, audit.ErrThrottled},
		{localauth.ErrBusy, audit.ErrBusy},
	} {
		if !errors.Is(pair[0], pair[1]) || !errors.Is(pair[1], pair[0]) {
			t.Errorf("%v and %v are not the same error", pair[0], pair[1])
		}
	}
}
