package doctor_test

import (
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/oauthbridge/oauthbridge/internal/doctor"
)

// The IMAP and POP3 login checks report a refused XOAUTH2 login with the
// server's reply and the command that was refused.
func TestMailboxLoginRefused(t *testing.T) {
	w := newWorld(t, "", nil)
	w.f.SetIMAPEnabled(helpdesk, false)
	w.f.SetPOPEnabled(helpdesk, false)
	ar := w.run(t).Accounts[0]
	for id, cmd := range map[string]string{"imap": "AUTHENTICATE", "pop3": "AUTH"} {
		c := check(ar, id)
		if c.Status != doctor.Fail || c.Upstream == "" {
			t.Errorf("%s: %s, upstream %q, want a failure with the server's reply", id, c.Status, c.Upstream)
		}
		if !strings.Contains(c.Detail, " refused "+cmd+" XOAUTH2 for "+helpdesk+" although the token was just issued") {
			t.Errorf("%s detail = %q", id, c.Detail)
		}
	}
}

// A server at imap_server or pop3_server that does not complete the TLS
// handshake, or whose certificate the provider does not trust, fails the
// check with the provider's setting to check.
func TestMailboxDialFailures(t *testing.T) {
	// Accepts and hangs up at once: no TLS.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	// TLS with a certificate of another CA.
	untrusted := httptest.NewUnstartedServer(http.NotFoundHandler())
	untrusted.Config.ErrorLog = log.New(io.Discard, "", 0) // the refused handshakes are expected
	untrusted.StartTLS()
	t.Cleanup(untrusted.Close)
	untrustedAddr := strings.TrimPrefix(untrusted.URL, "https://")

	for _, tc := range []struct {
		name, server, meaning, fix string
	}{
		{"hang-up", ln.Addr().String(), "no connection to the server", "and %s of provider contoso"},
		{"untrusted certificate", untrustedAddr, "TLS certificate is not trusted here", "check %s of provider contoso and its ca_file"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			w := newWorld(t, "", nil)
			p := w.cfg.Providers[0]
			p.IMAPServer, p.POP3Server = tc.server, tc.server
			ar := w.run(t).Accounts[0]
			for id, attr := range map[string]string{"imap": "imap_server", "pop3": "pop3_server"} {
				c := check(ar, id)
				if c.Status != doctor.Fail || !strings.HasPrefix(c.Detail, tc.server+": ") || !strings.Contains(c.Meaning, tc.meaning) {
					t.Errorf("%s: %s %q (%s), want a failure at %s: %s", id, c.Status, c.Detail, c.Meaning, tc.server, tc.meaning)
				}
				if fix := strings.Join(c.Fix, "\n"); !strings.Contains(fix, strings.Replace(tc.fix, "%s", attr, 1)) {
					t.Errorf("%s fix = %q, want it to name %s", id, fix, attr)
				}
			}
		})
	}
}
