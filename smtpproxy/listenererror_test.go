package smtpproxy_test

import (
	"context"
	"errors"
	"net"
	"testing"

	"github.com/oauthbridge/oauthbridge/config"
	"github.com/oauthbridge/oauthbridge/smtpproxy"
)

type noAuth struct{}

func (noAuth) Check(context.Context, string, string, string) (*config.User, error) {
	return nil, errors.New("no users")
}

type noTokens struct{}

func (noTokens) AccessToken(context.Context, string) (string, error) {
	return "", errors.New("no tokens")
}
func (noTokens) Rejected(string, string) {}

// A caller outside the module can tell a dead listener from a shutdown:
// Serve on a listening socket closed behind its back returns an error that
// errors.As matches with the package's exported ListenerError, naming the
// protocol and the address and wrapping net.ErrClosed.
func TestServeListenerErrorFromOutside(t *testing.T) {
	cfg := &config.Config{SMTP: &config.SMTPBlock{Domain: "bridge.test"}}
	srv := smtpproxy.New(smtpproxy.Options{Config: func() *config.Config { return cfg }, Auth: noAuth{}, Tokens: noTokens{}})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	got := srv.Serve(ln, false)
	var le *smtpproxy.ListenerError
	if !errors.As(got, &le) {
		t.Fatalf("Serve() = %v (%T), want an error matching *smtpproxy.ListenerError", got, got)
	}
	if le.Proto != "smtp" || le.Addr != addr || !errors.Is(le.Err, net.ErrClosed) {
		t.Errorf("ListenerError = {Proto: %q, Addr: %q, Err: %v}, want {%q, %q, net.ErrClosed}", le.Proto, le.Addr, le.Err, "smtp", addr)
	}
}
