package frontdoor_test

import (
	"context"
	"errors"
	"net"
	"testing"

	"github.com/oauthbridge/oauthbridge/config"
	"github.com/oauthbridge/oauthbridge/imapproxy"
	"github.com/oauthbridge/oauthbridge/pop3proxy"
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
// each proxy's Serve, on a listening socket closed behind its back, returns
// an error that errors.As matches with that package's exported
// ListenerError, naming the protocol and the address and wrapping
// net.ErrClosed. Each case names the proxy's own type, so the test does
// not compile if one of them stops exporting it.
func TestServeListenerErrorFromOutside(t *testing.T) {
	cfg := &config.Config{SMTP: &config.SMTPBlock{Domain: "bridge.test"}}
	conf := func() *config.Config { return cfg }
	type serve func(net.Listener) error
	for _, tc := range []struct {
		proto string
		serve serve
		match func(error) (*imapproxy.ListenerError, bool) // the three aliases are one type
	}{
		{"imap", func(ln net.Listener) error {
			return imapproxy.New(imapproxy.Options{Config: conf, Auth: noAuth{}, Tokens: noTokens{}}).Serve(ln, false)
		}, func(err error) (*imapproxy.ListenerError, bool) {
			var le *imapproxy.ListenerError
			return le, errors.As(err, &le)
		}},
		{"pop3", func(ln net.Listener) error {
			return pop3proxy.New(pop3proxy.Options{Config: conf, Auth: noAuth{}, Tokens: noTokens{}}).Serve(ln, false)
		}, func(err error) (*imapproxy.ListenerError, bool) {
			var le *pop3proxy.ListenerError
			return le, errors.As(err, &le)
		}},
		{"smtp", func(ln net.Listener) error {
			return smtpproxy.New(smtpproxy.Options{Config: conf, Auth: noAuth{}, Tokens: noTokens{}}).Serve(ln, false)
		}, func(err error) (*imapproxy.ListenerError, bool) {
			var le *smtpproxy.ListenerError
			return le, errors.As(err, &le)
		}},
	} {
		t.Run(tc.proto, func(t *testing.T) {
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			addr := ln.Addr().String()
			ln.Close()
			got := tc.serve(ln)
			le, ok := tc.match(got)
			if !ok {
				t.Fatalf("Serve() = %v (%T), want an error matching the package's *ListenerError", got, got)
			}
			if le.Proto != tc.proto || le.Addr != addr || !errors.Is(le.Err, net.ErrClosed) {
				t.Errorf("ListenerError = {Proto: %q, Addr: %q, Err: %v}, want {%q, %q, net.ErrClosed}", le.Proto, le.Addr, le.Err, tc.proto, addr)
			}
		})
	}
}
