package fakems

import (
	"bufio"
	"bytes"
	"encoding/base64"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strconv"
	"strings"
	"time"

	"github.com/emersion/go-imap/v2"

	"github.com/oauthbridge/oauthbridge/internal/logging"
)

// POP3 limits.
const (
	pop3IdleTimeout = 10 * time.Minute // Exchange drops idle POP3 sessions after 10 minutes
	pop3MaxLine     = 64 << 10         // longest command line (an XOAUTH2 response is a few KiB)
)

// Exchange's POP3 texts (microsoft-365.md §2.3, §6.3).
const (
	pop3Greeting    = "+OK The Microsoft Exchange POP3 service is ready."
	pop3AuthOK      = "+OK User successfully authenticated."
	pop3AuthFailed  = "-ERR Authentication failure: unknown user name or bad password."
	pop3LogonFailed = "-ERR Logon failure: unknown user name or bad password."
	pop3Bye         = "+OK Microsoft Exchange Server POP3 server signing off."
	pop3NoSuchMsg   = "-ERR The specified message is out of range."
	pop3BadState    = "-ERR Command is not valid in this state."
	pop3Unknown     = "-ERR Protocol error."
)

// servePOP3 accepts POP3 connections until ln is closed.
func (f *Fake) servePOP3(ln net.Listener) error {
	for {
		c, err := ln.Accept()
		if err != nil {
			return err
		}
		f.wg.Add(1)
		go func() {
			defer f.wg.Done()
			defer c.Close()
			p := &pop3Conn{
				f:   f,
				c:   c,
				br:  bufio.NewReaderSize(c, pop3MaxLine),
				bw:  bufio.NewWriter(c),
				log: f.log.With("proto", "pop3", "conn", logging.ConnID(), "remote", c.RemoteAddr().String()),
			}
			if err := p.serve(); err != nil {
				p.log.Debug("fakems: pop3 connection ended", "error", err)
			}
		}()
	}
}

type pop3Msg struct {
	uid     imap.UID
	raw     []byte
	deleted bool
}

type pop3Conn struct {
	f   *Fake
	c   net.Conn
	br  *bufio.Reader
	bw  *bufio.Writer
	log *slog.Logger

	mb   *mailbox  // nil until authenticated
	msgs []pop3Msg // the maildrop as of authentication
}

func (p *pop3Conn) writeLine(s string) error {
	p.bw.WriteString(s)
	p.bw.WriteString("\r\n")
	return p.bw.Flush()
}

func (p *pop3Conn) readLine() (string, error) {
	_ = p.c.SetReadDeadline(time.Now().Add(pop3IdleTimeout))
	line, err := p.br.ReadSlice('\n')
	if errors.Is(err, bufio.ErrBufferFull) {
		return "", fmt.Errorf("fakems: pop3: line longer than %d bytes", pop3MaxLine)
	}
	if err != nil {
		return "", err
	}
	return strings.TrimRight(string(line), "\r\n"), nil
}

func (p *pop3Conn) serve() error {
	if err := p.writeLine(pop3Greeting); err != nil {
		return err
	}
	for {
		line, err := p.readLine()
		if err != nil {
			return err
		}
		cmd, arg, _ := strings.Cut(line, " ")
		cmd = strings.ToUpper(cmd)
		quit, err := p.handle(cmd, strings.TrimSpace(arg))
		if err != nil || quit {
			return err
		}
	}
}

func (p *pop3Conn) handle(cmd, arg string) (quit bool, err error) {
	switch cmd {
	case "CAPA":
		return false, p.writeLine("+OK\r\nTOP\r\nUIDL\r\nSASL XOAUTH2\r\nUSER\r\n.")
	case "QUIT":
		if p.mb != nil {
			if err := p.commit(); err != nil {
				p.log.Warn("fakems: pop3 delete failed", "error", err)
				return true, p.writeLine("-ERR Some deleted messages were not removed.")
			}
		}
		return true, p.writeLine(pop3Bye)
	}
	if p.mb == nil {
		switch cmd {
		case "USER":
			return false, p.writeLine("+OK")
		case "PASS":
			p.log.Info("fakems: pop3 password login refused")
			return false, p.writeLine(pop3LogonFailed)
		case "AUTH":
			if p.f.opts.Google {
				return false, p.authGoogle(arg)
			}
			return false, p.auth(arg)
		case "STAT", "LIST", "UIDL", "RETR", "TOP", "DELE", "NOOP", "RSET":
			return false, p.writeLine(pop3BadState)
		}
		return false, p.writeLine(pop3Unknown)
	}
	switch cmd {
	case "STAT":
		n, size := 0, 0
		for _, m := range p.msgs {
			if !m.deleted {
				n++
				size += len(m.raw)
			}
		}
		return false, p.writeLine(fmt.Sprintf("+OK %d %d", n, size))
	case "LIST", "UIDL":
		val := func(i int) string {
			if cmd == "LIST" {
				return strconv.Itoa(len(p.msgs[i].raw))
			}
			return uidl(p.msgs[i].uid)
		}
		if arg != "" {
			i, ok := p.msgIndex(arg)
			if !ok {
				return false, p.writeLine(pop3NoSuchMsg)
			}
			return false, p.writeLine(fmt.Sprintf("+OK %d %s", i+1, val(i)))
		}
		var b strings.Builder
		b.WriteString("+OK\r\n")
		for i, m := range p.msgs {
			if !m.deleted {
				fmt.Fprintf(&b, "%d %s\r\n", i+1, val(i))
			}
		}
		b.WriteString(".")
		return false, p.writeLine(b.String())
	case "RETR", "TOP":
		num, rest, _ := strings.Cut(arg, " ")
		i, ok := p.msgIndex(num)
		if !ok {
			return false, p.writeLine(pop3NoSuchMsg)
		}
		bodyLines := -1
		if cmd == "TOP" {
			n, err := strconv.Atoi(strings.TrimSpace(rest))
			if err != nil || n < 0 {
				return false, p.writeLine("-ERR Protocol error. TOP needs a message number and a line count.")
			}
			bodyLines = n
		}
		p.bw.WriteString("+OK\r\n")
		p.bw.Write(dotStuff(p.msgs[i].raw, bodyLines))
		return false, p.writeLine(".")
	case "DELE":
		i, ok := p.msgIndex(arg)
		if !ok {
			return false, p.writeLine(pop3NoSuchMsg)
		}
		p.msgs[i].deleted = true
		return false, p.writeLine("+OK")
	case "NOOP":
		return false, p.writeLine("+OK")
	case "RSET":
		for i := range p.msgs {
			p.msgs[i].deleted = false
		}
		return false, p.writeLine("+OK")
	case "USER", "PASS", "AUTH":
		return false, p.writeLine(pop3BadState)
	}
	return false, p.writeLine(pop3Unknown)
}

// auth runs AUTH XOAUTH2. Exchange accepts it only in two steps: the
// initial response on the AUTH line is refused.
func (p *pop3Conn) auth(arg string) error {
	mech, ir, _ := strings.Cut(arg, " ")
	switch {
	case mech == "":
		return p.writeLine("+OK\r\nXOAUTH2\r\n.")
	case !strings.EqualFold(mech, "XOAUTH2"):
		return p.writeLine("-ERR Unrecognized authentication type.")
	case strings.TrimSpace(ir) != "":
		p.log.Info("fakems: pop3 refused AUTH XOAUTH2 with initial response")
		return p.writeLine("-ERR Protocol error. AUTH XOAUTH2 must be sent in two steps.")
	}
	if err := p.writeLine("+ "); err != nil {
		return err
	}
	line, err := p.readLine()
	if err != nil {
		return err
	}
	if line == "*" {
		return p.writeLine("-ERR Authentication cancelled.")
	}
	resp, err := base64.StdEncoding.DecodeString(strings.TrimSpace(line))
	if err != nil {
		return p.writeLine(pop3AuthFailed)
	}
	user, token, perr := parseXOAUTH2(resp)
	if perr != nil {
		p.log.Info("fakems: pop3 auth failed", "error", perr)
		return p.writeLine(pop3AuthFailed)
	}
	res := p.f.checkBearer(scopePOP, user, token)
	if !res.tokenOK || !res.mailboxOK || p.f.protocolDisabled("pop3", res.mailbox.addr) {
		p.log.Info("fakems: pop3 auth failed", "mailbox", user, "token_ok", res.tokenOK)
		return p.writeLine(pop3AuthFailed)
	}
	return p.loggedIn(res, "-ERR Server Unavailable. 21", "fakems: pop3 authenticated", pop3AuthOK)
}

// loggedIn opens the INBOX of an authenticated session as a POP3 maildrop
// and sends ok; unavailable is the reply when the folder cannot be read.
func (p *pop3Conn) loggedIn(res bearerCheck, unavailable, logMsg, ok string) error {
	p.f.storeMu.Lock()
	msgs, err := res.mailbox.folderMessagesLocked("INBOX")
	p.f.storeMu.Unlock()
	if err != nil {
		return p.writeLine(unavailable)
	}
	p.mb = res.mailbox
	p.msgs = make([]pop3Msg, len(msgs))
	for i, m := range msgs {
		p.msgs[i] = pop3Msg{uid: m.uid, raw: m.raw}
	}
	p.log = p.log.With("user", res.who, "mailbox", res.mailbox.addr)
	p.log.Info(logMsg)
	return p.writeLine(ok)
}

// msgIndex parses a message number; deleted messages do not exist.
func (p *pop3Conn) msgIndex(s string) (int, bool) {
	n, err := strconv.Atoi(strings.TrimSpace(s))
	if err != nil || n < 1 || n > len(p.msgs) || p.msgs[n-1].deleted {
		return 0, false
	}
	return n - 1, true
}

// commit removes the DELE'd messages from the mailbox for real (UPDATE
// state, RFC 1939 §6).
func (p *pop3Conn) commit() error {
	var uids []imap.UID
	for _, m := range p.msgs {
		if m.deleted {
			uids = append(uids, m.uid)
		}
	}
	p.f.storeMu.Lock()
	defer p.f.storeMu.Unlock()
	return p.mb.expungeLocked("INBOX", uids)
}

func uidl(uid imap.UID) string { return fmt.Sprintf("AAAAAA%010d", uid) }

// dotStuff returns raw with CRLF line endings and leading dots doubled,
// ending in CRLF. bodyLines >= 0 keeps the header and only that many body
// lines (TOP).
func dotStuff(raw []byte, bodyLines int) []byte {
	var out bytes.Buffer
	lines := bytes.Split(raw, []byte("\n"))
	if len(lines) > 0 && len(lines[len(lines)-1]) == 0 {
		lines = lines[:len(lines)-1]
	}
	inBody, n := false, 0
	for _, l := range lines {
		l = bytes.TrimSuffix(l, []byte("\r"))
		if inBody && bodyLines >= 0 {
			if n >= bodyLines {
				break
			}
			n++
		}
		if len(l) > 0 && l[0] == '.' {
			out.WriteByte('.')
		}
		out.Write(l)
		out.WriteString("\r\n")
		if !inBody && len(l) == 0 {
			inBody = true
		}
	}
	return out.Bytes()
}
