package imapproxy

import (
	"context"
	"crypto/rand"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapclient"

	"github.com/oauthbridge/oauthbridge/config"
	"github.com/oauthbridge/oauthbridge/graph"
	"github.com/oauthbridge/oauthbridge/graphmail"
	"github.com/oauthbridge/oauthbridge/imapgraph"
	"github.com/oauthbridge/oauthbridge/internal/fakems"
)

// A legacy client logs in to the proxy with its local password (quoted,
// with a space) and is served from Graph by imapgraph over the fake
// Microsoft 365: the whole read_via = "graph" path below the daemon.
func TestGraphServedLoginEndToEnd(t *testing.T) {
	f, err := fakems.Start(fakems.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	f.AddUser(testMailbox)
	f.AddMailbox(testMailbox)
	raw := "From: a@example.com\r\nTo: " + testMailbox + "\r\nSubject: hello\r\nMessage-ID: <x1@example.com>\r\n\r\nhi\r\n"
	if err := f.Deliver(testMailbox, []byte(raw)); err != nil {
		t.Fatal(err)
	}
	gc := &graph.Client{BaseURL: f.GraphURL(), HTTP: f.GraphHTTPClient(),
		Token: func(context.Context) (string, error) { return f.IssueGraphToken(testMailbox), nil }}
	gm := graphmail.New(gc, testMailbox, graphmail.Options{})
	key := make([]byte, 32)
	rand.Read(key)
	uids, err := imapgraph.OpenUIDStore(t.TempDir(), key)
	if err != nil {
		t.Fatal(err)
	}
	defer uids.Close()
	gs, err := imapgraph.New(imapgraph.Options{
		Serves:       func(a *config.Account) bool { return a.Name == "acct" },
		Mailbox:      func(string) (imapgraph.Mailbox, error) { return imapgraph.NewGraphMailbox(gm), nil },
		UIDs:         uids,
		ThrottleWait: -1,
	})
	if err != nil {
		t.Fatal(err)
	}
	defer gs.Close()

	e := newEnv(t)
	e.opts.Graph = gs
	srv := e.start()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(ln, false)

	conn, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	c := imapclient.New(conn, nil)
	defer c.Close()
	if err := c.Login("glpi", testUsers["glpi"]).Wait(); err != nil {
		t.Fatalf("LOGIN: %v", err)
	}
	if !c.Caps().Has(imap.CapIdle) || !c.Caps().Has(imap.CapMove) || !c.Caps().Has(imap.CapID) || c.Caps().Has(imap.CapStartTLS) {
		t.Errorf("post-login caps %v", c.Caps())
	}
	// ID after login (Thunderbird and helpdesk clients send it) gets the
	// answer it gets before login.
	if id, err := c.ID(&imap.IDData{Name: "Thunderbird", Version: "115.0"}).Wait(); err != nil || id == nil || id.Name != "oauthbridge" {
		t.Errorf("ID after login = %+v, %v", id, err)
	}
	sel, err := c.Select("INBOX", nil).Wait()
	if err != nil || sel.NumMessages != 1 {
		t.Fatalf("SELECT = %+v, %v", sel, err)
	}
	body := &imap.FetchItemBodySection{}
	msgs, err := c.Fetch(imap.UIDSetNum(1), &imap.FetchOptions{BodySection: []*imap.FetchItemBodySection{body}}).Collect()
	if err != nil || len(msgs) != 1 || string(msgs[0].FindBodySection(body)) != raw {
		t.Fatalf("FETCH BODY[]: %v", err)
	}
	if err := c.Logout().Wait(); err != nil {
		t.Fatal(err)
	}
	if n := len(e.up.seen()); n != 0 {
		t.Errorf("the upstream IMAP server saw %d commands", n)
	}
	if got := strings.Join(e.logs.audits(), ","); got != "ok" {
		t.Errorf("audit %q", got)
	}

	// Shutdown waits for a logged-in Graph session, then ends it.
	conn2, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	c2 := imapclient.New(conn2, nil)
	defer c2.Close()
	if err := c2.Login("otrs", testUsers["otrs"]).Wait(); err != nil {
		t.Fatal(err)
	}
	if _, err := c2.Select("INBOX", nil).Wait(); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if err := srv.Shutdown(ctx); err == nil {
		t.Error("Shutdown returned nil with a session still logged in")
	}
	<-c2.Closed() // the session was closed, not left running
}
