package imapproxy

import (
	"bufio"
	"context"
	"io"
	"log/slog"
	"net"
	"slices"
	"testing"

	"github.com/oauthbridge/oauthbridge/config"
	"github.com/oauthbridge/oauthbridge/graph"
)

// fakeGraph plays imapgraph.Server: it answers the login tag, then echoes
// one command line read through in (to prove pipelined bytes arrive).
type fakeGraph struct {
	serves   string // account name served from Graph
	startErr error
	calls    chan graphCall
}

type graphCall struct{ tag, account, user, next string }

func (f *fakeGraph) Serves(acct *config.Account) bool { return acct.Name == f.serves }

func (f *fakeGraph) ServeLoggedIn(ctx context.Context, conn net.Conn, in io.Reader, tag, account, user string, log *slog.Logger, started func(error)) {
	started(f.startErr)
	if f.startErr != nil {
		io.WriteString(conn, tag+" NO [NOPERM] refused\r\n")
		f.calls <- graphCall{tag, account, user, ""}
		return
	}
	io.WriteString(conn, tag+" OK [CAPABILITY IMAP4rev1 IDLE] Logged in\r\n")
	line, _ := bufio.NewReader(in).ReadString('\n')
	io.WriteString(conn, "* echo "+line)
	f.calls <- graphCall{tag, account, user, line}
}

func TestGraphAccountIsServedLocally(t *testing.T) {
	e := newEnv(t)
	g := &fakeGraph{serves: "acct", calls: make(chan graphCall, 1)}
	e.opts.Graph = g
	e.start()
	c := e.dialPipe()
	c.expect("* OK [CAPABILITY *] oauthbridge ready")
	// A wrong password is refused as before, without reaching Graph.
	c.send("a0 LOGIN otrs wrong\r\n")
	c.expect("a0 NO [AUTHENTICATIONFAILED] *")
	// The right one is handed over, with the command pipelined behind it.
	c.send("a1 LOGIN otrs secret\r\na2 SELECT INBOX\r\n")
	c.expect("a1 OK [CAPABILITY IMAP4rev1 IDLE] Logged in")
	c.expect("* echo a2 SELECT INBOX")
	call := <-g.calls
	if call.tag != "a1" || call.account != "acct" || call.user != "otrs" {
		t.Errorf("handed over %+v", call)
	}
	c.expectClosed()
	if n := len(e.up.seen()); n != 0 {
		t.Errorf("the upstream IMAP server saw %d commands for a Graph-served account", n)
	}
	if got := e.logs.audits(); !slices.Equal(got, []string{"bad_credentials", "ok"}) {
		t.Errorf("audit results %v", got)
	}
}

func TestGraphAccountRefusedMailboxIsAudited(t *testing.T) {
	e := newEnv(t)
	g := &fakeGraph{serves: "acct", calls: make(chan graphCall, 1), startErr: &graph.Error{Op: "mailFolders", Status: 403, Code: "ErrorAccessDenied"}}
	e.opts.Graph = g
	e.start()
	c := e.dialPipe()
	c.expect("* OK *")
	c.send("a1 AUTHENTICATE PLAIN AG90cnMAc2VjcmV0\r\n") // \0otrs\0secret
	c.expect("a1 NO [NOPERM] refused")
	<-g.calls
	c.expectClosed()
	if got := e.logs.audits(); !slices.Equal(got, []string{"failing"}) {
		t.Errorf("audit results %v", got)
	}
}

func TestAccountNotServedByGraphIsSpliced(t *testing.T) {
	e := newEnv(t)
	e.opts.Graph = &fakeGraph{serves: "other"}
	e.start()
	c := e.dialPipe()
	c.expect("* OK *")
	c.send("a1 LOGIN otrs secret\r\n")
	c.expect("a1 OK [CAPABILITY *] Logged in")
	c.close()
	if len(e.up.seen()) == 0 {
		t.Error("the account was not spliced to the upstream")
	}
}
