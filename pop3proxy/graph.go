package pop3proxy

// POP3 served from Microsoft Graph (read_via = "graph"): after the local
// login the bridge itself is the POP3 server of the TRANSACTION and UPDATE
// states (RFC 1939), over graphmail:
//
//   - the maildrop is the configured folder (pop3_folder, the Inbox by
//     default) as it was at login: later mail waits for the next session;
//   - message numbers follow the received time, oldest first;
//   - UIDL is the base64url SHA-256 of the message's immutable Graph id
//     (43 characters of 0x21-0x7E, within RFC 1939's 70): stable across
//     sessions and bridge restarts without storing anything, and kept
//     when the message moves and comes back;
//   - sizes (STAT, LIST) are the octets RETR sends before dot-stuffing
//     (CRLF line ends). Exchange's size property (PR_MESSAGE_SIZE) is the
//     item's size in its store, not the MIME's, so the bridge measures each
//     message once by reading it, the first time a size is asked for, and
//     keeps the size (graphmail's SizeStore, across restarts when the
//     daemon gives the registry one); fetchmail and others compare LIST
//     with what RETR delivers;
//   - DELE marks; QUIT moves the marked messages to Deleted Items
//     (pop3_delete = "move") or deletes them ("delete"); a dropped
//     connection deletes nothing.

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/oauthbridge/oauthbridge/config"
	"github.com/oauthbridge/oauthbridge/graph"
	"github.com/oauthbridge/oauthbridge/graphmail"
	"github.com/oauthbridge/oauthbridge/internal/frontdoor"
	"github.com/oauthbridge/oauthbridge/internal/localauth"
	"github.com/oauthbridge/oauthbridge/tokens"
)

// Replies of Graph-served sessions.
const (
	replyGraphTemp     = "-ERR [SYS/TEMP] Microsoft Graph is throttling or unavailable for this mailbox, try again later"
	replyGraphGone     = "-ERR message was removed from the mailbox by another client"
	replyNoSuchMsg     = "-ERR no such message"
	replyMsgDeleted    = "-ERR message already deleted"
	replyNotInState    = "-ERR command not valid in this state"
	replyUnknownCmd    = "-ERR unknown command"
	replyUpdateFailed  = "-ERR [SYS/TEMP] some deleted messages were not removed, they will be offered again"
	graphWriteBufBytes = 32 << 10
)

// graphBackend is the Server's Graph state: one graphmail.Mailbox per
// account (shared limiter and message lists) and one HTTP client per
// provider.
type graphBackend struct {
	mailboxes graphmail.Registry
	clients   graph.HTTPClients[*config.Provider]
}

func (s *Server) graphHTTP(p *config.Provider) *http.Client {
	if s.opts.GraphHTTP != nil {
		return s.opts.GraphHTTP
	}
	return s.gb.clients.Get(p.Name, p, p.RootCAs)
}

// graphMailbox returns the account's shared graphmail.Mailbox: key the
// account name, signature the Graph URL, the mailbox and the provider
// snapshot (a reload that changes them starts a new Mailbox).
func (s *Server) graphMailbox(acct *config.Account) *graphmail.Mailbox {
	reg := s.opts.GraphMailboxes
	if reg == nil {
		reg = &s.gb.mailboxes
	}
	sig := fmt.Sprintf("%s|%s|%p", acct.Provider.GraphURL, acct.Mailbox, acct.Provider)
	return reg.Get(acct.Name, sig, func() *graphmail.Mailbox {
		src := graphmail.TokenSource(s.opts.GraphTokens, s.opts.Tokens)
		c := graphmail.NewClient(acct.Provider.GraphURL, s.graphHTTP(acct.Provider), acct.Name, src)
		c.Sleep = s.opts.GraphMail.Sleep // nil: a timer
		return graphmail.New(c, acct.Mailbox, s.opts.GraphMail)
	})
}

// POP3UIDL is the unique-id listing of a message with Graph immutable id
// id: base64url (no padding) of its SHA-256, 43 characters.
func POP3UIDL(id string) string {
	sum := sha256.Sum256([]byte(id))
	return base64.RawURLEncoding.EncodeToString(sum[:])
}

type graphMsg struct {
	e       graphmail.Entry
	size    int64 // octets RETR sends before dot-stuffing; -1 until measured
	deleted bool
}

type graphSession struct {
	c      *session
	log    *slog.Logger
	acct   *config.Account
	mb     *graphmail.Mailbox
	folder string
	msgs   []graphMsg
	bw     *bufio.Writer
}

// serveGraph serves a logged-in session of a read_via = "graph" account:
// it takes the maildrop snapshot, answers +OK and runs the TRANSACTION
// state until QUIT. It writes the login's audit line and reports that the
// connection is finished.
func (c *session) serveGraph(ctx context.Context, log *slog.Logger, acct *config.Account, at *localauth.Attempt) bool {
	log = log.With("read_via", "graph", "folder", acct.POP3Folder)
	mb := c.srv.graphMailbox(acct)
	folderID, err := mb.FolderID(ctx, acct.POP3Folder)
	var snap []graphmail.Entry
	if err == nil {
		snap, err = mb.Snapshot(ctx, folderID)
	}
	if err != nil {
		reply := c.graphLoginFailure(err, at, acct)
		localauth.Audit(c.audit, c.srv.m, c.srv.opts.LoginObservers, *at)
		c.closeWith(reply)
		return true
	}
	if err := c.fs.BeginSplice(); err != nil {
		at.Result, at.Err = localauth.ResultTemporary, fmt.Errorf("pop3proxy: login completed during shutdown: %w", err)
		localauth.Audit(c.audit, c.srv.m, c.srv.opts.LoginObservers, *at)
		c.closeWith(replyShutdown)
		return true
	}
	at.Result = localauth.ResultOK
	localauth.Audit(c.audit, c.srv.m, c.srv.opts.LoginObservers, *at)
	g := &graphSession{c: c, log: log, acct: acct, mb: mb, folder: folderID, bw: bufio.NewWriterSize(c.conn, graphWriteBufBytes)}
	g.msgs = make([]graphMsg, len(snap))
	for i, e := range snap {
		g.msgs[i] = graphMsg{e: e, size: e.MIMESize}
	}
	if err := c.reply(fmt.Sprintf("+OK logged in, %d messages (served from Microsoft Graph)", len(g.msgs))); err != nil {
		return true
	}
	retrieved, removed := g.run(ctx)
	log.Info("session closed", "messages", len(g.msgs), "retrieved", retrieved, "removed", removed,
		"duration", time.Since(c.start).Round(time.Millisecond).String())
	return true
}

// graphLoginFailure maps an error of the login's snapshot to the reply
// and the audit attempt.
func (c *session) graphLoginFailure(err error, at *localauth.Attempt, acct *config.Account) string {
	var te *tokens.Error
	if errors.As(err, &te) {
		// Token trouble: the front door's one classification and reply.
		f := frontdoor.TokenFailure(acct.Name, te)
		at.Result, at.Err = f.Kind.String(), err
		return failureReply(f)
	}
	at.Err = err
	switch graphmail.KindOf(err) {
	case graphmail.Temporary:
		at.Result = localauth.ResultTemporary
		return replyGraphTemp
	case graphmail.NotFound:
		at.Result = localauth.ResultFailing
		return fmt.Sprintf("-ERR [SYS/PERM] the folder %q (pop3_folder of account %s) does not exist in the mailbox", acct.POP3Folder, acct.Name)
	}
	at.Result = localauth.ResultFailing
	return graphPermReply(err)
}

// graphPermReply is the client's text for a permanent Graph error: it
// names the fix, without details only the bridge log should carry.
func graphPermReply(err error) string {
	var ge *graph.Error
	if errors.As(err, &ge) && ge.IsODataDisabled() {
		return "-ERR [SYS/PERM] Microsoft Graph refused the mailbox: an application access policy or RBAC for Applications scope excludes it, see the bridge log"
	}
	if errors.As(err, &ge) && ge.Code == graph.CodeMailboxNotEnabled {
		return "-ERR [SYS/PERM] Microsoft Graph does not serve this mailbox (inactive, soft-deleted or on-premises)"
	}
	return "-ERR [SYS/PERM] the bridge may not read this mailbox through Microsoft Graph: grant Mail.ReadWrite (Mail.ReadWrite.Shared and FullAccess for a shared mailbox), see the bridge log"
}

func (g *graphSession) errReply(op string, err error) string {
	switch graphmail.KindOf(err) {
	case graphmail.NotFound:
		g.log.Info("message gone", "op", op, "error", err)
		return replyGraphGone
	case graphmail.Temporary:
		g.log.Warn("Microsoft Graph request failed; the client may retry", "op", op, "error", err)
		g.c.srv.m.UpstreamErrors.WithLabelValues("pop3", "graph_temporary").Inc()
		return replyGraphTemp
	}
	g.log.Error("Microsoft Graph refused a request", "op", op, "error", err)
	g.c.srv.m.UpstreamErrors.WithLabelValues("pop3", "graph_permanent").Inc()
	var te *tokens.Error
	if errors.As(err, &te) && te.Kind == tokens.NeedsLogin {
		return fmt.Sprintf("-ERR [SYS/PERM] mailbox needs re-authorisation: run 'oauthbridge login %s'", g.acct.Name)
	}
	return graphPermReply(err)
}

func (g *graphSession) write(s string) error {
	_ = g.c.conn.SetWriteDeadline(time.Now().Add(g.c.lim.IdleTimeout))
	_, err := g.bw.WriteString(s + "\r\n")
	return err
}

func (g *graphSession) flush() error {
	_ = g.c.conn.SetWriteDeadline(time.Now().Add(g.c.lim.IdleTimeout))
	return g.bw.Flush()
}

// run is the TRANSACTION state; it returns after QUIT (with the UPDATE
// state) or when the connection ends.
func (g *graphSession) run(ctx context.Context) (retrieved, removed int) {
	for {
		if g.c.br.Buffered() == 0 {
			if g.flush() != nil {
				return
			}
		}
		_ = g.c.raw.SetReadDeadline(time.Now().Add(g.c.lim.IdleTimeout))
		line, err := readLimitedLine(g.c.br, g.c.lim.MaxLineBytes)
		if err != nil {
			if errors.Is(err, errLineTooLong) {
				_ = g.write(replyLineTooLong)
				_ = g.flush()
			}
			return
		}
		cmd, arg := parseCommand(line)
		arg = strings.TrimSpace(arg)
		switch cmd {
		case "QUIT":
			removed, err = g.update(ctx)
			if err != nil {
				_ = g.write(replyUpdateFailed)
			} else {
				_ = g.write(replyBye)
			}
			_ = g.flush()
			return
		case "STAT":
			err = g.stat(ctx)
		case "LIST":
			err = g.list(ctx, arg)
		case "UIDL":
			err = g.uidl(arg)
		case "RETR":
			var ok bool
			ok, err = g.retr(ctx, arg, -1)
			if ok {
				retrieved++
			}
		case "TOP":
			num, rest, _ := strings.Cut(arg, " ")
			n, perr := strconv.Atoi(strings.TrimSpace(rest))
			if perr != nil || n < 0 {
				err = g.write("-ERR TOP needs a message number and a non-negative line count")
				break
			}
			_, err = g.retr(ctx, num, n)
		case "DELE":
			err = g.dele(arg)
		case "RSET":
			for i := range g.msgs {
				g.msgs[i].deleted = false
			}
			err = g.write(fmt.Sprintf("+OK maildrop has %d messages", len(g.msgs)))
		case "NOOP":
			err = g.write("+OK")
		case "CAPA":
			err = g.write("+OK capability list follows\r\nTOP\r\nUIDL\r\nUSER\r\nRESP-CODES\r\nPIPELINING\r\nIMPLEMENTATION oauthbridge\r\n.")
		case "USER", "PASS", "AUTH", "APOP", "STLS":
			err = g.write(replyNotInState)
		default:
			err = g.write(replyUnknownCmd)
		}
		if err != nil {
			return
		}
	}
}

// msg returns the message numbered by arg (1-based), or the reply that
// refuses it.
func (g *graphSession) msg(arg string) (int, string) {
	n, err := strconv.Atoi(arg)
	if err != nil || n < 1 || n > len(g.msgs) {
		return 0, replyNoSuchMsg
	}
	if g.msgs[n-1].deleted {
		return 0, replyMsgDeleted
	}
	return n - 1, ""
}

// sizes measures the messages in idx whose size is not known yet.
func (g *graphSession) sizes(ctx context.Context, idx []int) error {
	var todo []int
	for _, i := range idx {
		if g.msgs[i].size < 0 {
			todo = append(todo, i)
		}
	}
	if len(todo) == 0 {
		return nil
	}
	jobs := make(chan int)
	errs := make(chan error, graphmail.MailboxConcurrency)
	var wg sync.WaitGroup
	for range min(graphmail.MailboxConcurrency, len(todo)) {
		wg.Go(func() {
			var first error
			for i := range jobs {
				if first != nil {
					continue
				}
				n, err := g.mb.MIMESize(ctx, g.folder, g.msgs[i].e.ID)
				if err != nil {
					first = err
					continue
				}
				g.msgs[i].size = n
			}
			errs <- first
		})
	}
	for _, i := range todo {
		jobs <- i
	}
	close(jobs)
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			return err
		}
	}
	return nil
}

func (g *graphSession) live() []int {
	var idx []int
	for i, m := range g.msgs {
		if !m.deleted {
			idx = append(idx, i)
		}
	}
	return idx
}

func (g *graphSession) stat(ctx context.Context) error {
	idx := g.live()
	if err := g.sizes(ctx, idx); err != nil {
		return g.write(g.errReply("stat", err))
	}
	var total int64
	for _, i := range idx {
		total += g.msgs[i].size
	}
	return g.write(fmt.Sprintf("+OK %d %d", len(idx), total))
}

func (g *graphSession) list(ctx context.Context, arg string) error {
	if arg != "" {
		i, bad := g.msg(arg)
		if bad != "" {
			return g.write(bad)
		}
		if err := g.sizes(ctx, []int{i}); err != nil {
			return g.write(g.errReply("list", err))
		}
		return g.write(fmt.Sprintf("+OK %d %d", i+1, g.msgs[i].size))
	}
	idx := g.live()
	if err := g.sizes(ctx, idx); err != nil {
		return g.write(g.errReply("list", err))
	}
	if err := g.write(fmt.Sprintf("+OK %d messages", len(idx))); err != nil {
		return err
	}
	for _, i := range idx {
		if err := g.write(fmt.Sprintf("%d %d", i+1, g.msgs[i].size)); err != nil {
			return err
		}
	}
	return g.write(".")
}

func (g *graphSession) uidl(arg string) error {
	if arg != "" {
		i, bad := g.msg(arg)
		if bad != "" {
			return g.write(bad)
		}
		return g.write(fmt.Sprintf("+OK %d %s", i+1, POP3UIDL(g.msgs[i].e.ID)))
	}
	if err := g.write("+OK"); err != nil {
		return err
	}
	for _, i := range g.live() {
		if err := g.write(fmt.Sprintf("%d %s", i+1, POP3UIDL(g.msgs[i].e.ID))); err != nil {
			return err
		}
	}
	return g.write(".")
}

func (g *graphSession) dele(arg string) error {
	i, bad := g.msg(arg)
	if bad != "" {
		return g.write(bad)
	}
	g.msgs[i].deleted = true
	return g.write(fmt.Sprintf("+OK message %d deleted", i+1))
}

// retr sends message arg whole (bodyLines < 0) or its header and the
// first bodyLines body lines (TOP). The content streams from Graph; the
// +OK goes out only once the first bytes arrived, so a Graph error is an
// -ERR, not a cut multi-line answer. An error after that closes the
// connection (the answer cannot be taken back).
func (g *graphSession) retr(ctx context.Context, arg string, bodyLines int) (bool, error) {
	i, bad := g.msg(arg)
	if bad != "" {
		return false, g.write(bad)
	}
	op := "retr"
	if bodyLines >= 0 {
		op = "top"
	}
	rc, err := g.mb.MIME(ctx, g.msgs[i].e.ID)
	if err != nil {
		return false, g.write(g.errReply(op, err))
	}
	defer rc.Close()
	br := bufio.NewReaderSize(graphmail.CRLF(rc), 32<<10)
	if _, err := br.Peek(1); err != nil && err != io.EOF {
		return false, g.write(g.errReply(op, err))
	}
	if err := g.write("+OK"); err != nil {
		return false, err
	}
	var n int64
	inBody, lines := false, 0
	for {
		line, err := br.ReadSlice('\n')
		if len(line) > 0 {
			if bodyLines >= 0 && inBody {
				if lines >= bodyLines {
					break
				}
				lines++
			}
			n += int64(len(line))
			if line[0] == '.' {
				if werr := g.bw.WriteByte('.'); werr != nil {
					return false, werr
				}
			}
			if _, werr := g.bw.Write(line); werr != nil {
				return false, werr
			}
			if !inBody && (len(line) == 2 && line[0] == '\r') {
				inBody = true
			}
		}
		if err == bufio.ErrBufferFull {
			// A long line: the rest follows without a dot check.
			for err == bufio.ErrBufferFull {
				line, err = br.ReadSlice('\n')
				n += int64(len(line))
				if _, werr := g.bw.Write(line); werr != nil {
					return false, werr
				}
			}
		}
		if err == io.EOF {
			break
		}
		if err != nil {
			g.log.Warn("message content broke off; closing the connection", "op", op, "error", err)
			return false, err
		}
		if g.bw.Buffered() > graphWriteBufBytes/2 {
			if err := g.flush(); err != nil {
				return false, err
			}
		}
	}
	if bodyLines < 0 {
		g.msgs[i].size = n
		g.mb.NoteMIMESize(g.folder, g.msgs[i].e.ID, n)
	}
	return true, g.write(".")
}

// update is the UPDATE state: the marked messages leave the folder.
func (g *graphSession) update(ctx context.Context) (int, error) {
	var first error
	removed := 0
	for _, m := range g.msgs {
		if !m.deleted {
			continue
		}
		var err error
		if g.acct.POP3Delete == config.POP3DeleteDelete {
			err = g.mb.Delete(ctx, m.e.ID)
		} else {
			_, err = g.mb.Move(ctx, m.e.ID, graph.FolderDeletedItems)
		}
		switch {
		case err == nil:
			removed++
		case graphmail.KindOf(err) == graphmail.NotFound:
			// Another session removed it already.
		default:
			g.log.Warn("could not remove a deleted message", "pop3_delete", g.acct.POP3Delete, "error", err)
			if first == nil {
				first = err
			}
		}
	}
	return removed, first
}
