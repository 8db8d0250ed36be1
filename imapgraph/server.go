package imapgraph

import (
	"bytes"
	"container/list"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapserver"

	"github.com/oauthbridge/oauthbridge/config"
	"github.com/oauthbridge/oauthbridge/internal/aside"
)

// Named defaults of Options.
const (
	DefaultIdlePoll           = 30 * time.Second    // IDLE re-reads the folder (delta) this often
	DefaultSyncAge            = 5 * time.Second     // other commands re-read it when the view is older
	DefaultMIMECacheBytes     = 64 << 20            // MIME kept for repeated FETCHes, all sessions together
	DefaultMaxMessageBytes    = 150 << 20           // largest message read or appended (Exchange's own ceiling)
	DefaultThrottleWait       = 60 * time.Second    // total wait for 429/Retry-After before a command fails
	DefaultMaxCachedFolders   = 64                  // folder listings kept while no session selects them
	DefaultMaxSearchDownloads = 500                 // messages one SEARCH may read for HEADER/BODY/TEXT keys
	ExpungeToDeletedItems     = "deleteditems"      // EXPUNGE moves to Deleted Items (default)
	ExpungeDelete             = "delete"            // EXPUNGE deletes permanently
	hierarchyDelim            = '/'                 // folder path separator
	greetingMaxLine           = 4096                // bound on the PREAUTH line rewritten into the login's OK
	pipeName                  = "oauthbridge-graph" // pseudo listener address
)

// Options configure a Server. Mailbox and UIDs are required.
type Options struct {
	// Mailbox returns the Graph mailbox of a configured account.
	Mailbox func(account string) (Mailbox, error)
	// UIDs is the persistent UID map; or OpenUIDs opens it at the first
	// Graph-served login (a failure refuses that login and is tried again
	// at the next). One of them is required.
	UIDs     *UIDStore
	OpenUIDs func() (*UIDStore, error)
	// Serves reports whether an account's mail is read through Graph
	// (read_via = "graph"); nil: none.
	Serves func(acct *config.Account) bool
	Logger *slog.Logger // nil: discard

	// IdleTimeout, read when a session starts, is the longest a logged-in
	// client may stay silent: between commands and in IDLE (until its
	// DONE); then it gets "* BYE Autologout; idle for too long" and the
	// session ends. The daemon passes imap { idle_timeout }, the limit
	// the proxy applies to spliced sessions. nil or <= 0:
	// DefaultIdleTimeout. The rest of a command that has begun must come
	// within CommandTimeout (imapserver's own limits apply to literals:
	// 5 minutes, and to a command's size: 50 KiB besides literals).
	IdleTimeout func() time.Duration

	IdlePoll time.Duration // see DefaultIdlePoll
	// PollInterval, if set, is read at each IDLE instead of IdlePoll (the
	// configuration's graph_poll_interval, which a reload may change).
	PollInterval    func() time.Duration
	SyncAge         time.Duration // see DefaultSyncAge
	MIMECacheBytes  int64         // see DefaultMIMECacheBytes
	MaxMessageBytes int64         // see DefaultMaxMessageBytes
	// ThrottleWait bounds the total wait for 429/Retry-After (and 5xx on
	// reads) before a command fails with NO [UNAVAILABLE]; see
	// DefaultThrottleWait. Negative: no retries here, because the backend
	// already waits out throttling (graphmail does).
	ThrottleWait       time.Duration
	MaxCachedFolders   int // see DefaultMaxCachedFolders
	MaxSearchDownloads int // see DefaultMaxSearchDownloads
	// Expunge is ExpungeToDeletedItems (default) or ExpungeDelete. In
	// Deleted Items itself EXPUNGE always deletes.
	Expunge func(account string) string

	Now   func() time.Time                                 // nil: time.Now
	Sleep func(ctx context.Context, d time.Duration) error // nil: a timer; tests count the waits
}

// Server serves IMAP from Microsoft Graph to clients the IMAP proxy has
// already logged in (ServeLoggedIn), or that a test hands over pre-
// authenticated (ServePreauth). It runs go-imap's imapserver over those
// connections; the protocol is go-imap's, the mailbox is Graph.
type Server struct {
	opts    Options
	imap    *imapserver.Server
	ln      *handoffListener
	mime    *mimeCache
	pending sync.Map // net.Conn -> *handoff

	uids   atomic.Pointer[UIDStore]
	uidsMu sync.Mutex // opening it

	mu      sync.Mutex
	folders map[folderKey]*folderCache
	lru     *list.List
	serveWG sync.WaitGroup

	// viewHook, when set (tests only, before the first session starts),
	// is called on a session's goroutine with its view after SELECT and
	// after every update.
	viewHook func(*session)
}

type handoff struct {
	ctx     context.Context
	account string
	user    string
	log     *slog.Logger
	started func(error) // called once: nil when the session runs
}

// New returns a running Server; Close stops it.
func New(opts Options) (*Server, error) {
	if opts.Mailbox == nil || (opts.UIDs == nil && opts.OpenUIDs == nil) {
		return nil, errors.New("imapgraph: Options.Mailbox and Options.UIDs or OpenUIDs are required")
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if opts.IdlePoll <= 0 {
		opts.IdlePoll = DefaultIdlePoll
	}
	if opts.SyncAge <= 0 {
		opts.SyncAge = DefaultSyncAge
	}
	if opts.MIMECacheBytes <= 0 {
		opts.MIMECacheBytes = DefaultMIMECacheBytes
	}
	if opts.MaxMessageBytes <= 0 {
		opts.MaxMessageBytes = DefaultMaxMessageBytes
	}
	if opts.ThrottleWait == 0 {
		opts.ThrottleWait = DefaultThrottleWait
	}
	if opts.MaxSearchDownloads <= 0 {
		opts.MaxSearchDownloads = DefaultMaxSearchDownloads
	}
	if opts.MaxCachedFolders <= 0 {
		opts.MaxCachedFolders = DefaultMaxCachedFolders
	}
	if opts.Expunge == nil {
		opts.Expunge = func(string) string { return ExpungeToDeletedItems }
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.Sleep == nil {
		opts.Sleep = sleepCtx
	}
	s := &Server{
		opts:    opts,
		ln:      newHandoffListener(),
		mime:    newMIMECache(opts.MIMECacheBytes),
		folders: map[folderKey]*folderCache{},
		lru:     list.New(),
	}
	if opts.UIDs != nil {
		s.uids.Store(opts.UIDs)
	}
	s.imap = imapserver.New(&imapserver.Options{
		NewSession: s.newSession,
		Caps: imap.CapSet{
			imap.CapIMAP4rev1: {},
			imap.CapUIDPlus:   {},
			imap.CapMove:      {},
		},
		Logger: logAdapter{opts.Logger},
	})
	s.serveWG.Add(1)
	go func() {
		defer s.serveWG.Done()
		_ = s.imap.Serve(s.ln)
	}()
	return s, nil
}

// Close stops the server and closes every connection it serves.
func (s *Server) Close() error {
	// Stop the accept loop first: imapserver's Close must not race with
	// its Serve still starting up.
	s.ln.Close()
	s.serveWG.Wait()
	return s.imap.Close()
}

func (s *Server) newSession(c *imapserver.Conn) (imapserver.Session, *imapserver.GreetingData, error) {
	v, ok := s.pending.LoadAndDelete(c.NetConn())
	if !ok {
		return nil, nil, &imap.Error{Type: imap.StatusResponseTypeBye, Text: "not logged in"}
	}
	h := v.(*handoff)
	if _, err := s.uidStore(); err != nil {
		h.started(err)
		h.log.Error("Graph-served IMAP: cannot open the UID map", "error", err)
		return nil, nil, &imap.Error{Type: imap.StatusResponseTypeBye, Code: imap.ResponseCodeUnavailable, Text: "mailbox unavailable: the bridge cannot open its IMAP UID map, see the bridge log"}
	}
	mb, err := s.opts.Mailbox(h.account)
	if err != nil {
		h.started(err)
		h.log.Warn("Graph-served IMAP: no mailbox for the account", "error", err)
		return nil, nil, &imap.Error{Type: imap.StatusResponseTypeBye, Code: imap.ResponseCodeUnavailable, Text: "mailbox unavailable: bridge configuration problem, see the bridge log"}
	}
	sess := &session{srv: s, ctx: h.ctx, account: h.account, user: h.user, mb: mb, log: h.log}
	// Listing the folders checks the token and the permissions now, so
	// that a login to an unusable mailbox is refused with the reason
	// instead of failing at SELECT.
	// Aside: the request and its JSON would leave a deep stack on the
	// session's goroutine for the whole session.
	err = aside.Run(func() error {
		return s.retry(h.ctx, true, func() error {
			var err error
			sess.folders, err = mb.Folders(h.ctx)
			return err
		})
	})
	if err != nil {
		h.started(err)
		var ie *imap.Error
		if !errors.As(sess.imapError("login", err), &ie) {
			ie = &imap.Error{Code: imap.ResponseCodeUnavailable, Text: textTemporary}
		}
		return nil, nil, &imap.Error{Type: imap.StatusResponseTypeBye, Code: ie.Code, Text: ie.Text}
	}
	h.started(nil)
	return sess, &imapserver.GreetingData{PreAuth: true}, nil
}

// IdleTimeout is the idle timeout a session starting now gets.
func (s *Server) IdleTimeout() time.Duration {
	if s.opts.IdleTimeout != nil {
		if d := s.opts.IdleTimeout(); d > 0 {
			return d
		}
	}
	return DefaultIdleTimeout
}

// idlePoll is the IDLE polling interval now in force.
func (s *Server) idlePoll() time.Duration {
	if s.opts.PollInterval != nil {
		if d := s.opts.PollInterval(); d > 0 {
			return d
		}
	}
	return s.opts.IdlePoll
}

// uidStore returns the UID map, opening it if needed.
func (s *Server) uidStore() (*UIDStore, error) {
	if u := s.uids.Load(); u != nil {
		return u, nil
	}
	s.uidsMu.Lock()
	defer s.uidsMu.Unlock()
	if u := s.uids.Load(); u != nil {
		return u, nil
	}
	u, err := s.opts.OpenUIDs()
	if err != nil {
		return nil, err
	}
	s.uids.Store(u)
	return u, nil
}

// UIDs returns the UID map once it is open (nil before the first
// Graph-served login when Options.OpenUIDs is used).
func (s *Server) UIDs() *UIDStore { return s.uids.Load() }

// Serves reports whether acct's IMAP logins are served here.
func (s *Server) Serves(acct *config.Account) bool {
	return s.opts.Serves != nil && acct != nil && s.opts.Serves(acct)
}

// ServeLoggedIn serves a client whose LOGIN or AUTHENTICATE (tagged tag)
// the IMAP proxy has accepted for account. in holds what the proxy read
// ahead of the client (it is read before conn): the proxy's *bufio.Reader
// over conn, whose buffered bytes are taken and the rest read from conn
// (so its buffer is not kept), or any other reader of the client's
// input. The mailbox is checked
// (one folder listing); then the client gets "tag OK [CAPABILITY ...]
// Logged in" and the Graph-served session, or "tag NO [code] reason".
// started (may be nil) is called once with the outcome of that check,
// before the client's answer. ServeLoggedIn returns when the session is
// over; ctx ends it (shutdown).
func (s *Server) ServeLoggedIn(ctx context.Context, conn net.Conn, in io.Reader, tag, account, user string, log *slog.Logger, started func(error)) {
	s.serve(ctx, &handoffConn{Conn: conn, in: in, tag: tag}, account, user, log, started)
}

// ServePreauth serves conn as an already authenticated client of account:
// the greeting is "* PREAUTH [CAPABILITY ...]". For tests and tools.
func (s *Server) ServePreauth(ctx context.Context, conn net.Conn, account string) {
	s.serve(ctx, &handoffConn{Conn: conn, in: conn}, account, account, s.opts.Logger, nil)
}

func (s *Server) serve(ctx context.Context, hc *handoffConn, account, user string, log *slog.Logger, started func(error)) {
	if log == nil {
		log = s.opts.Logger
	}
	var once sync.Once
	report := func(err error) {
		once.Do(func() {
			if started != nil {
				started(err)
			}
		})
	}
	defer report(errors.New("imapgraph: server closed before the session started"))
	hc.done = make(chan struct{})
	hc.log = log
	idle := s.IdleTimeout()
	hc.stream = newClientStream(hc, hc.in, idle)
	hc.in = nil // the stream has what it held
	hc.stream.timedOut = func() {
		log.Info("Graph-served IMAP: no command within idle_timeout; closing the session", "idle_timeout", idle.String())
	}
	s.pending.Store(net.Conn(hc), &handoff{ctx: ctx, account: account, user: user, log: log, started: report})
	stop := context.AfterFunc(ctx, func() { hc.Close() })
	defer stop()
	if !s.ln.give(hc) {
		s.pending.Delete(net.Conn(hc))
		hc.Close()
		return
	}
	<-hc.done
}

// handoffConn is the client connection as imapserver sees it: reads come
// first from what the proxy buffered, and the first line imapserver writes
// (its PREAUTH greeting) becomes the answer to the client's login.
type handoffConn struct {
	net.Conn
	in      io.Reader     // what the client sent, read ahead by the proxy first
	stream  *clientStream // over in: what imapserver reads
	log     *slog.Logger
	tag     string // "" : keep the PREAUTH greeting
	mu      sync.Mutex
	greeted bool
	line    []byte
	done    chan struct{}
	once    sync.Once

	// Output seen since the current command began (under mu): whether
	// imapserver has written its tagged answer (a line starting with
	// cmdTag), and how much of cmdTag the current output line matches
	// so far (-1: not a match).
	cmdTag []byte
	tagged bool
	outPos int
	said   bool   // the bridge said BYE: imapserver's further output is dropped
	caps   string // the session's capabilities (imapserver's and ID), from the greeting
}

func (c *handoffConn) Read(b []byte) (int, error) { return c.stream.Read(b) }

func (c *handoffConn) Write(b []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.said {
		return len(b), nil
	}
	if c.greeted {
		c.sawOutput(b)
		return c.Conn.Write(b)
	}
	c.line = append(c.line, b...)
	i := bytes.Index(c.line, []byte("\r\n"))
	if i < 0 {
		if len(c.line) > greetingMaxLine {
			return 0, errors.New("imapgraph: greeting line too long")
		}
		return len(b), nil
	}
	c.greeted = true
	greeting := string(c.line[:i])
	greeting, c.caps = withID(greeting)
	out := []byte(greeting + "\r\n")
	if c.tag != "" {
		out = []byte(loginOK(c.tag, greeting))
	}
	c.sawOutput(c.line[i+2:])
	out = append(out, c.line[i+2:]...)
	c.line = nil
	if _, err := c.Conn.Write(out); err != nil {
		return 0, err
	}
	return len(b), nil
}

// beginCommand starts watching the output for the tagged answer of the
// command tagged tag.
func (c *handoffConn) beginCommand(tag string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.cmdTag = append(append(c.cmdTag[:0], tag...), ' ')
	c.tagged, c.outPos = false, 0
}

// answered reports whether the current command's tagged answer was
// written.
func (c *handoffConn) answered() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.tagged
}

// sawOutput follows imapserver's output for the tagged answer of the
// current command. Callers hold mu.
func (c *handoffConn) sawOutput(b []byte) {
	for len(b) > 0 && !c.tagged && len(c.cmdTag) > 0 {
		if c.outPos >= 0 {
			for c.outPos < len(c.cmdTag) && len(b) > 0 && b[0] == c.cmdTag[c.outPos] {
				c.outPos++
				b = b[1:]
			}
			if c.outPos == len(c.cmdTag) {
				c.tagged = true
				return
			}
			if len(b) == 0 {
				return // the line goes on in the next write
			}
		}
		i := bytes.IndexByte(b, '\n')
		if i < 0 {
			c.outPos = -1
			return
		}
		b, c.outPos = b[i+1:], 0
	}
}

// direct writes the bridge's own answer (to ID) at a command start, where
// imapserver writes nothing.
func (c *handoffConn) direct(s string) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.said {
		return net.ErrClosed
	}
	// Bounded like imapserver's own answers (it clears its deadline
	// after each).
	_ = c.Conn.SetWriteDeadline(time.Now().Add(CommandTimeout))
	_, err := io.WriteString(c.Conn, s)
	_ = c.Conn.SetWriteDeadline(time.Time{})
	return err
}

// bye writes line (an untagged BYE) once; imapserver's output after it is
// dropped, as the session ends.
func (c *handoffConn) bye(line string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.said {
		return
	}
	c.said = true
	_ = c.Conn.SetWriteDeadline(time.Now().Add(CommandTimeout))
	_, _ = io.WriteString(c.Conn, line+"\r\n")
}

// withID adds ID (answered by clientStream) to the capabilities of
// imapserver's greeting, and returns them.
func withID(greeting string) (string, string) {
	i := strings.Index(greeting, "[CAPABILITY ")
	if i < 0 {
		return greeting, ""
	}
	j := strings.IndexByte(greeting[i:], ']')
	if j < 0 {
		return greeting, ""
	}
	caps := greeting[i+len("[CAPABILITY ") : i+j]
	if !slices.Contains(strings.Fields(caps), string(imap.CapID)) {
		caps += " " + string(imap.CapID)
	}
	return greeting[:i] + "[CAPABILITY " + caps + greeting[i+j:], caps
}

// loginOK turns "* PREAUTH [CAPABILITY ...] text" into the tagged answer,
// and a refusal "* BYE [code] text" into "tag NO [code] text".
func loginOK(tag, greeting string) string {
	if rest, ok := strings.CutPrefix(greeting, "* BYE "); ok {
		return tag + " NO " + rest + "\r\n"
	}
	caps := ""
	if i := strings.Index(greeting, "[CAPABILITY "); i >= 0 {
		if j := strings.IndexByte(greeting[i:], ']'); j > 0 {
			caps = greeting[i : i+j+1]
		}
	}
	if caps == "" {
		return tag + " OK Logged in\r\n"
	}
	return tag + " OK " + caps + " Logged in\r\n"
}

func (c *handoffConn) Close() error {
	var err error
	c.once.Do(func() {
		err = c.Conn.Close()
		if c.done != nil {
			close(c.done)
		}
	})
	return err
}

// handoffListener feeds connections to imapserver.Serve.
type handoffListener struct {
	ch     chan net.Conn
	closed chan struct{}
	once   sync.Once
}

func newHandoffListener() *handoffListener {
	return &handoffListener{ch: make(chan net.Conn), closed: make(chan struct{})}
}

func (l *handoffListener) give(c net.Conn) bool {
	select {
	case l.ch <- c:
		return true
	case <-l.closed:
		return false
	}
}

func (l *handoffListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.ch:
		return c, nil
	case <-l.closed:
		return nil, net.ErrClosed
	}
}

func (l *handoffListener) Close() error {
	l.once.Do(func() { close(l.closed) })
	return nil
}

func (l *handoffListener) Addr() net.Addr { return pipeAddr{} }

type pipeAddr struct{}

func (pipeAddr) Network() string { return "pipe" }
func (pipeAddr) String() string  { return pipeName }

// logAdapter sends imapserver's log lines (client disconnects, protocol
// errors, recovered panics) to the bridge log. They never contain
// passwords: the login happened in the proxy.
type logAdapter struct{ log *slog.Logger }

func (l logAdapter) Printf(format string, args ...any) {
	msg := fmt.Sprintf(format, args...)
	if strings.Contains(msg, "panic") {
		l.log.Error("Graph-served IMAP: " + msg)
		return
	}
	l.log.Debug("Graph-served IMAP: " + msg)
}

// capabilities returns the session's capability list ("" before the
// greeting).
func (c *handoffConn) capabilities() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.caps
}
