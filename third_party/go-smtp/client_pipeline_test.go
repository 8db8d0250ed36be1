package smtp

import (
	"errors"
	"io"
	"net/textproto"
	"strings"
	"testing"
)

// writeLog records each Write the client makes to the connection.
type writeLog struct {
	io.Reader
	writes []string
}

func (w *writeLog) Write(p []byte) (int, error) {
	w.writes = append(w.writes, string(p))
	return len(p), nil
}

func pipelineClient(server string) (*Client, *writeLog) {
	log := &writeLog{Reader: strings.NewReader(strings.ReplaceAll(server, "\n", "\r\n"))}
	fake := faker{ReadWriter: log}
	c := &Client{text: textproto.NewConn(fake), conn: fake, localName: "localhost", didHello: true,
		ext: map[string]string{"PIPELINING": "", "8BITMIME": "", "SIZE": ""}}
	return c, log
}

func TestMailRcptOneWrite(t *testing.T) {
	c, log := pipelineClient("250 2.1.0 sender ok\n250 2.1.5 recipient ok\n")
	mailErr, rcptErr := c.MailRcpt("a@example.com", &MailOptions{Size: 42}, "b@example.net", nil)
	if mailErr != nil || rcptErr != nil {
		t.Fatalf("MailRcpt: %v, %v", mailErr, rcptErr)
	}
	want := "MAIL FROM:<a@example.com> BODY=8BITMIME SIZE=42\r\nRCPT TO:<b@example.net>\r\n"
	if len(log.writes) != 1 || log.writes[0] != want {
		t.Fatalf("writes = %q, want one write %q", log.writes, want)
	}
	if len(c.rcpts) != 1 || c.rcpts[0] != "b@example.net" {
		t.Errorf("rcpts = %q", c.rcpts)
	}
}

func TestMailRcptMailRefused(t *testing.T) {
	c, _ := pipelineClient("550 5.7.60 not allowed to send as this sender\n503 5.5.1 need MAIL first\n250 2.0.0 reset\n")
	mailErr, rcptErr := c.MailRcpt("a@example.com", nil, "b@example.net", nil)
	var me, re *SMTPError
	if !errors.As(mailErr, &me) || me.Code != 550 || me.Message != "not allowed to send as this sender" {
		t.Fatalf("mailErr = %#v", mailErr)
	}
	if !errors.As(rcptErr, &re) || re.Code != 503 {
		t.Fatalf("rcptErr = %#v", rcptErr)
	}
	// Both replies were consumed: the next command reads its own reply.
	if err := c.Reset(); err != nil {
		t.Fatalf("Reset after a refused MAIL: %v", err)
	}
}

func TestMailRcptRcptRefused(t *testing.T) {
	c, _ := pipelineClient("250 2.1.0 sender ok\n550 5.1.10 RESOLVER.ADR.RecipientNotFound\n")
	mailErr, rcptErr := c.MailRcpt("a@example.com", nil, "nobody@example.net", nil)
	var re *SMTPError
	if mailErr != nil || !errors.As(rcptErr, &re) || re.Code != 550 {
		t.Fatalf("MailRcpt: %v, %#v", mailErr, rcptErr)
	}
	if len(c.rcpts) != 0 {
		t.Errorf("rcpts = %q, want none", c.rcpts)
	}
}

func TestMailRcptConnectionLost(t *testing.T) {
	c, _ := pipelineClient("") // EOF before any reply
	mailErr, rcptErr := c.MailRcpt("a@example.com", nil, "b@example.net", nil)
	if mailErr == nil || rcptErr == nil {
		t.Fatalf("MailRcpt on a closed connection: %v, %v", mailErr, rcptErr)
	}
	var se *SMTPError
	if errors.As(mailErr, &se) {
		t.Fatalf("a transport error became an SMTP reply: %v", mailErr)
	}
}

func TestMailRcptBadAddresses(t *testing.T) {
	c, log := pipelineClient("")
	if mailErr, _ := c.MailRcpt("a@example.com\r\nRSET", nil, "b@example.net", nil); mailErr == nil {
		t.Fatal("MAIL with CRLF in the address was accepted")
	}
	if len(log.writes) != 0 {
		t.Fatalf("sent %q for an invalid MAIL", log.writes)
	}
	c, log = pipelineClient("250 2.1.0 sender ok\n")
	mailErr, rcptErr := c.MailRcpt("a@example.com", nil, "b@example.net\nRSET", nil)
	if mailErr != nil || rcptErr == nil {
		t.Fatalf("invalid RCPT: %v, %v", mailErr, rcptErr)
	}
	if len(log.writes) != 1 || log.writes[0] != "MAIL FROM:<a@example.com> BODY=8BITMIME\r\n" {
		t.Fatalf("writes = %q, want MAIL alone", log.writes)
	}
}
