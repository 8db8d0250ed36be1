package fakems

import (
	"bufio"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strings"
	"sync/atomic"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapserver"
	"github.com/emersion/go-imap/v2/imapserver/imapmemserver"
	"github.com/emersion/go-sasl"

	"github.com/oauthbridge/oauthbridge/internal/logging"
	"github.com/oauthbridge/oauthbridge/tokens"
)

// IMAPBehaviour injects IMAP faults.
type IMAPBehaviour struct {
	// NotConnected: every successful AUTHENTICATE is followed by
	// "BAD User is authenticated but not connected." on every command.
	NotConnected bool
}

// Exchange's IMAP texts (microsoft-365.md §2.2, §6.1).
const (
	imapAuthFailed   = "AUTHENTICATE failed."
	imapLoginFailed  = "LOGIN failed."
	imapNotConnected = "User is authenticated but not connected."
)

// SetIMAPBehaviour sets IMAP fault injection for later logins.
func (f *Fake) SetIMAPBehaviour(b IMAPBehaviour) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.imapBehaviour = b
}

func (f *Fake) newIMAPServer() *imapserver.Server {
	return imapserver.New(&imapserver.Options{
		NewSession: func(c *imapserver.Conn) (imapserver.Session, *imapserver.GreetingData, error) {
			ic, _ := c.NetConn().(*imapConn)
			log := f.log.With("proto", "imap", "conn", logging.ConnID(), "remote", c.NetConn().RemoteAddr().String())
			return &imapSession{f: f, conn: ic, log: log}, nil, nil
		},
		Caps: imap.CapSet{
			imap.CapIMAP4rev1:   {},
			imap.CapNamespace:   {},
			imap.CapUIDPlus:     {},
			imap.CapMove:        {},
			imap.CapLiteralPlus: {},
		},
		Logger: printfLogger{f.log.With("proto", "imap")},
		// The listener hands imapserver an *imapConn around the *tls.Conn,
		// so imapserver cannot see the TLS itself: the port is implicit
		// TLS and authentication is always allowed.
		InsecureAuth: true,
	})
}

// printfLogger adapts the libraries' Printf loggers to slog at debug level.
type printfLogger struct{ log *slog.Logger }

func (l printfLogger) Printf(format string, args ...any) { l.log.Debug(fmt.Sprintf(format, args...)) }
func (l printfLogger) Println(args ...any) {
	l.log.Debug(strings.TrimSuffix(fmt.Sprintln(args...), "\n"))
}

// imapListener wraps accepted (TLS) connections in *imapConn.
type imapListener struct{ net.Listener }

func (l *imapListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return &imapConn{Conn: c}, nil
}

// imapConn reproduces Exchange's "authenticated but not connected" state.
// Once notConnected is set (during AUTHENTICATE, before imapserver writes
// its OK), imapserver's next read never returns a command: the connection
// itself answers every command with BAD, and LOGOUT with BYE, until the
// client leaves.
type imapConn struct {
	net.Conn
	notConnected atomic.Bool
	br           *bufio.Reader // quirk mode only; used by imapserver's goroutine alone
}

func (c *imapConn) Read(p []byte) (int, error) {
	if !c.notConnected.Load() {
		return c.Conn.Read(p)
	}
	return 0, c.serveNotConnected()
}

// maxQuirkLine bounds command lines read in the not-connected state.
const maxQuirkLine = 64 << 10

func (c *imapConn) serveNotConnected() error {
	if c.br == nil {
		c.br = bufio.NewReader(c.Conn)
	}
	for {
		line, err := c.br.ReadSlice('\n')
		if err == bufio.ErrBufferFull {
			return fmt.Errorf("fakems: imap: command line longer than %d bytes", maxQuirkLine)
		}
		if err != nil {
			return err
		}
		fields := strings.Fields(string(line))
		if len(fields) == 0 {
			continue
		}
		tag := fields[0]
		if len(fields) > 1 && strings.EqualFold(fields[1], "LOGOUT") {
			_, err := io.WriteString(c.Conn, "* BYE Microsoft Exchange Server IMAP4 server signing off.\r\n"+tag+" OK LOGOUT completed.\r\n")
			if err != nil {
				return err
			}
			return io.EOF
		}
		if _, err := io.WriteString(c.Conn, tag+" BAD "+imapNotConnected+"\r\n"); err != nil {
			return err
		}
	}
}

// imapSession is one IMAP connection. Before authentication UserSession is
// nil; imapserver does not call mailbox methods in that state.
type imapSession struct {
	*imapmemserver.UserSession

	f        *Fake
	conn     *imapConn
	log      *slog.Logger
	mb       *mailbox
	selected string
	gslot    bool // holds one of the mailbox's Gmail connection slots (google.go)
}

var (
	_ imapserver.Session     = (*imapSession)(nil)
	_ imapserver.SessionSASL = (*imapSession)(nil)
	_ imapserver.SessionMove = (*imapSession)(nil)
)

func (s *imapSession) Close() error {
	s.releaseGoogleSlot()
	if s.UserSession != nil {
		return s.UserSession.Close()
	}
	return nil
}

// Login refuses password logins, as Exchange Online does since Basic auth
// was turned off.
func (s *imapSession) Login(username, password string) error {
	s.log.Info("fakems: imap login refused", "user", username)
	return &imap.Error{Type: imap.StatusResponseTypeNo, Text: imapLoginFailed}
}

func (s *imapSession) AuthenticateMechanisms() []string { return []string{tokens.XOAUTH2} }

func (s *imapSession) Authenticate(mech string) (sasl.Server, error) {
	if mech != tokens.XOAUTH2 {
		return nil, &imap.Error{Type: imap.StatusResponseTypeNo, Text: "Unsupported authentication mechanism."}
	}
	if s.f.opts.Google {
		return googleSASL(s.checkGoogleXOAUTH2), nil
	}
	return &xoauth2Server{check: s.checkXOAUTH2}, nil
}

func (s *imapSession) checkXOAUTH2(user, token string, perr error) error {
	failed := &imap.Error{Type: imap.StatusResponseTypeNo, Text: imapAuthFailed}
	if perr != nil {
		s.log.Info("fakems: imap authenticate failed", "error", perr)
		return failed
	}
	res := s.f.checkBearer(scopeIMAP, user, token)
	if !res.tokenOK {
		s.log.Info("fakems: imap authenticate failed", "mailbox", user, "error", "invalid, expired or out-of-scope token")
		return failed
	}
	if res.mailbox != nil && s.f.protocolDisabled("imap", res.mailbox.addr) {
		s.log.Info("fakems: imap authenticate failed", "mailbox", user, "error", "IMAP disabled for the mailbox")
		return failed
	}
	s.f.mu.Lock()
	quirk := s.f.imapBehaviour.NotConnected
	s.f.mu.Unlock()
	if !res.mailboxOK || quirk {
		if s.conn == nil {
			return failed
		}
		s.log.Info("fakems: imap authenticated but not connected", "user", res.who, "mailbox", user, "injected", quirk)
		s.conn.notConnected.Store(true)
		return nil
	}
	s.mb = res.mailbox
	s.UserSession = imapmemserver.NewUserSession(res.mailbox.user)
	s.log = s.log.With("user", res.who, "mailbox", res.mailbox.addr)
	s.log.Info("fakems: imap authenticated")
	return nil
}

func canonFolder(name string) string {
	if strings.EqualFold(name, "INBOX") {
		return "INBOX"
	}
	return name
}

func (s *imapSession) Select(name string, options *imap.SelectOptions) (*imap.SelectData, error) {
	name = canonFolder(name)
	data, err := s.UserSession.Select(name, options)
	if err == nil {
		s.selected = name
	}
	return data, err
}

func (s *imapSession) Unselect() error {
	s.selected = ""
	return s.UserSession.Unselect()
}

// Append stores the message through the fake's store so that its bytes are
// indexed for Messages and POP3.
func (s *imapSession) Append(mailbox string, r imap.LiteralReader, options *imap.AppendOptions) (*imap.AppendData, error) {
	buf, err := io.ReadAll(r)
	if err != nil {
		return nil, err
	}
	s.f.storeMu.Lock()
	defer s.f.storeMu.Unlock()
	return s.mb.appendLocked(canonFolder(mailbox), buf, options)
}

func (s *imapSession) Copy(numSet imap.NumSet, dest string) (*imap.CopyData, error) {
	dest = canonFolder(dest)
	s.f.storeMu.Lock()
	defer s.f.storeMu.Unlock()
	data, err := s.UserSession.Copy(numSet, dest)
	if err != nil {
		return nil, err
	}
	src, _ := data.SourceUIDs.Nums()
	dst, _ := data.DestUIDs.Nums()
	s.mb.carryLocked(s.selected, dest, src, dst)
	return data, nil
}

func (s *imapSession) Move(w *imapserver.MoveWriter, numSet imap.NumSet, dest string) error {
	dest = canonFolder(dest)
	s.f.storeMu.Lock()
	defer s.f.storeMu.Unlock()
	// The MoveWriter hides the new UIDs; work them out beforehand. Moved
	// messages get consecutive UIDs from the destination's UIDNEXT, in
	// source order, and storeMu keeps anything else from appending.
	criteria := &imap.SearchCriteria{}
	switch ns := numSet.(type) {
	case imap.SeqSet:
		criteria.SeqNum = []imap.SeqSet{ns}
	case imap.UIDSet:
		criteria.UID = []imap.UIDSet{ns}
	}
	var src []imap.UID
	if sd, err := s.UserSession.Search(imapserver.NumKindUID, criteria, &imap.SearchOptions{}); err == nil {
		src = sd.AllUIDs()
	}
	st, statusErr := s.UserSession.Status(dest, &imap.StatusOptions{UIDNext: true})
	if err := s.UserSession.Move(w, numSet, dest); err != nil {
		return err
	}
	if statusErr == nil {
		dst := make([]imap.UID, len(src))
		for i := range src {
			dst[i] = st.UIDNext + imap.UID(i)
		}
		s.mb.carryLocked(s.selected, dest, src, dst)
	}
	return nil
}

func (s *imapSession) Delete(name string) error {
	name = canonFolder(name)
	s.f.storeMu.Lock()
	defer s.f.storeMu.Unlock()
	if err := s.UserSession.Delete(name); err != nil {
		return err
	}
	delete(s.mb.raw, name) // a re-created folder starts its UIDs again
	return nil
}

func (s *imapSession) Rename(oldName, newName string, options *imap.RenameOptions) error {
	oldName, newName = canonFolder(oldName), canonFolder(newName)
	s.f.storeMu.Lock()
	defer s.f.storeMu.Unlock()
	if err := s.UserSession.Rename(oldName, newName, options); err != nil {
		return err
	}
	s.mb.raw[newName] = s.mb.raw[oldName]
	delete(s.mb.raw, oldName)
	return nil
}

// carryLocked indexes the bytes of messages copied from one folder to
// another. Callers hold storeMu.
func (mb *mailbox) carryLocked(from, to string, src, dst []imap.UID) {
	for i := range src {
		if i >= len(dst) {
			break
		}
		if raw, ok := mb.raw[from][src[i]]; ok {
			mb.rememberLocked(to, dst[i], raw)
		}
	}
}
