package cli

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"net/textproto"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapclient"
	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"
)

// TestDemo is the acceptance test for the README's first command: the demo
// serves, and a client using what it prints can log in over IMAP, POP3 and
// SMTP, through the bridge, against the fake Microsoft 365.
func TestDemo(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var out, errb bytes.Buffer
	env := Env{Stdin: strings.NewReader(""), Stdout: &out, Stderr: &errb}
	info, stop, err := StartDemo(ctx, false, env)
	if err != nil {
		t.Fatalf("StartDemo: %v\n%s", err, errb.String())
	}
	defer stop()
	printDemo(env, info)
	banner := out.String()
	for _, want := range []string{info.Password, info.IMAP, info.POP3, info.SMTP, "curl"} {
		if !strings.Contains(banner, want) {
			t.Errorf("banner lacks %q", want)
		}
	}

	// IMAP through the bridge, with go-imap's client as the legacy client.
	c, err := imapclient.DialInsecure(info.IMAP, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Login(info.User, info.Password).Wait(); err != nil {
		t.Fatalf("IMAP LOGIN: %v", err)
	}
	sel, err := c.Select("INBOX", nil).Wait()
	if err != nil || sel.NumMessages != 1 {
		t.Fatalf("SELECT INBOX = %+v, %v; want 1 message", sel, err)
	}
	msgs, err := c.Fetch(imap.SeqSetNum(1), &imap.FetchOptions{Envelope: true}).Collect()
	if err != nil || len(msgs) != 1 || !strings.Contains(msgs[0].Envelope.Subject, "Welcome") {
		t.Fatalf("FETCH 1 = %+v, %v", msgs, err)
	}
	c.Logout().Wait()

	// A wrong password is refused.
	c2, err := imapclient.DialInsecure(info.IMAP, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := c2.Login(info.User, "wrong").Wait(); err == nil || !strings.Contains(err.Error(), "AUTHENTICATIONFAILED") {
		t.Errorf("LOGIN with a wrong password = %v, want AUTHENTICATIONFAILED", err)
	}
	c2.Close()

	// SMTP submission through the bridge lands in the mailbox.
	sc, err := smtp.Dial(info.SMTP)
	if err != nil {
		t.Fatal(err)
	}
	if err := sc.Hello("test.local"); err != nil {
		t.Fatal(err)
	}
	if err := sc.Auth(sasl.NewPlainClient("", info.User, info.Password)); err != nil {
		t.Fatalf("SMTP AUTH PLAIN: %v", err)
	}
	msg := "From: " + info.Mailbox + "\r\nTo: " + info.Mailbox + "\r\nSubject: demo test\r\n\r\nhello\r\n"
	if err := sc.SendMail(info.Mailbox, []string{info.Mailbox}, strings.NewReader(msg)); err != nil {
		t.Fatalf("SMTP send: %v", err)
	}
	sc.Quit()
	if n := len(info.Fake.Messages(info.Mailbox)); n != 2 {
		t.Errorf("mailbox has %d messages after SMTP, want 2", n)
	}

	// POP3 through the bridge sees both.
	conn, err := net.Dial("tcp", info.POP3)
	if err != nil {
		t.Fatal(err)
	}
	tp := textproto.NewConn(conn)
	expectOK := func(cmd string) string {
		t.Helper()
		if cmd != "" {
			tp.PrintfLine("%s", cmd)
		}
		l, err := tp.ReadLine()
		if err != nil || !strings.HasPrefix(l, "+OK") {
			t.Fatalf("POP3 %q -> %q, %v", cmd, l, err)
		}
		return l
	}
	expectOK("")
	expectOK("USER " + info.User)
	expectOK("PASS " + info.Password)
	if l := expectOK("STAT"); !strings.HasPrefix(l, "+OK 2 ") {
		t.Errorf("POP3 STAT = %q, want 2 messages", l)
	}
	expectOK("QUIT")
	conn.Close()

	// The second account sends through Microsoft Graph (its mailbox has
	// SMTP AUTH disabled); the message lands in the helpdesk mailbox.
	gc, err := smtp.Dial(info.SMTP)
	if err != nil {
		t.Fatal(err)
	}
	if err := gc.Auth(sasl.NewPlainClient("", info.GraphUser, info.Password)); err != nil {
		t.Fatalf("SMTP AUTH PLAIN as %s: %v", info.GraphUser, err)
	}
	gmsg := "From: " + info.GraphMailbox + "\r\nTo: " + info.Mailbox + "\r\nSubject: via Graph\r\n\r\nhello\r\n"
	if err := gc.SendMail(info.GraphMailbox, []string{info.Mailbox}, strings.NewReader(gmsg)); err != nil {
		t.Fatalf("SMTP send through Graph: %v", err)
	}
	gc.Quit()
	if gs := info.Fake.GraphSent(); len(gs) != 1 || len(info.Fake.Messages(info.Mailbox)) != 3 {
		t.Errorf("Graph sent %d, mailbox has %d messages; want 1 and 3", len(gs), len(info.Fake.Messages(info.Mailbox)))
	}

	// The printed curl commands work, when curl is installed.
	if _, err := exec.LookPath("curl"); err == nil {
		cctx, ccancel := context.WithTimeout(ctx, 30*time.Second)
		defer ccancel()
		b, err := exec.CommandContext(cctx, "curl", "-sS", "--user", info.User+":"+info.Password, fmt.Sprintf("imap://%s/INBOX;UID=1", info.IMAP)).CombinedOutput()
		if err != nil || !strings.Contains(string(b), "Welcome to the oauthbridge demo") {
			t.Errorf("curl IMAP fetch: %v\n%s", err, b)
		}
		b, err = exec.CommandContext(cctx, "curl", "-sS", "--user", info.User+":"+info.Password, fmt.Sprintf("pop3://%s/1", info.POP3)).CombinedOutput()
		if err != nil || !strings.Contains(string(b), "Welcome to the oauthbridge demo") {
			t.Errorf("curl POP3 RETR: %v\n%s", err, b)
		}
	} else {
		t.Log("curl not installed; the curl commands were not exercised")
	}

	// Token state is ok and nobody's secret reached the banner.
	st := info.Daemon.Tokens().Status()
	if len(st) != 3 || st[0].State != "ok" || !strings.EqualFold(st[0].SignedInAs, info.Delegate) || st[0].SendPath != "smtp" ||
		st[1].State != "ok" || st[1].SendPath != "graph" || st[2].Account != info.GoogleUser || st[2].State != "ok" {
		t.Errorf("status = %+v", st)
	}

	// The Google Workspace account beside them: IMAP reads its mailbox,
	// SMTP sends from it, through the same bridge.
	if !strings.Contains(banner, info.GoogleUser) || !strings.Contains(banner, info.GoogleMailbox) {
		t.Errorf("banner lacks the Google account")
	}
	wc, err := imapclient.DialInsecure(info.IMAP, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := wc.Login(info.GoogleUser, info.Password).Wait(); err != nil {
		t.Fatalf("IMAP LOGIN as %s: %v", info.GoogleUser, err)
	}
	if sel, serr := wc.Select("INBOX", nil).Wait(); serr != nil || sel.NumMessages != 1 {
		t.Fatalf("Google INBOX = %+v, %v", sel, serr)
	}
	gmsgs, err := wc.Fetch(imap.SeqSetNum(1), &imap.FetchOptions{Envelope: true}).Collect()
	if err != nil || len(gmsgs) != 1 || !strings.Contains(gmsgs[0].Envelope.Subject, "Google Workspace") {
		t.Fatalf("Google FETCH 1 = %+v, %v", gmsgs, err)
	}
	wc.Logout().Wait()
	sc, err2 := smtp.Dial(info.SMTP)
	if err2 != nil {
		t.Fatal(err2)
	}
	defer sc.Close()
	if err := sc.Auth(sasl.NewPlainClient("", info.GoogleUser, info.Password)); err != nil {
		t.Fatalf("SMTP AUTH as %s: %v", info.GoogleUser, err)
	}
	if err := sc.SendMail(info.GoogleMailbox, []string{info.GoogleMailbox}, strings.NewReader("Subject: to myself\r\n\r\nhi\r\n")); err != nil {
		t.Fatalf("SMTP send through Google: %v", err)
	}
	if sent := info.GoogleFake.Sent(); len(sent) != 1 || sent[0].AuthUser != info.GoogleMailbox {
		t.Errorf("Google fake received %+v", sent)
	}
}
