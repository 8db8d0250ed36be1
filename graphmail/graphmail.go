// Package graphmail is the mailbox layer that serves POP3 and IMAP sessions
// from Microsoft Graph. It knows no POP3 or IMAP: it keeps, per mailbox,
//
//   - a limiter of MailboxConcurrency requests in flight (Graph's limit of
//     4 concurrent requests per app and mailbox; a fifth gets 429
//     ApplicationThrottled), shared by every session of the mailbox;
//   - throttling handling: a 429/503 is waited out (Retry-After) within
//     MaxThrottleWait per operation, then reported as a temporary error;
//   - a per-folder message list kept current with messages/delta (the
//     first round is a full listing, paged; later rounds bring changes
//     only), holding per message only its id, sizes, received time and
//     flags, so a 10,000-message folder costs a few megabytes;
//   - the exact MIME sizes measured, kept across restarts by a SizeStore
//     (sizestore.go) when the Registry has one;
//   - errors classified as temporary (retry later) or permanent (an
//     administrator must act), with the fix named.
//
// Ids are Graph's immutable ids: they survive moves between folders.
//
// NewClient and TokenSource (client.go) build an account's graph.Client
// for every part of the bridge that calls Graph, the SMTP send path too.
package graphmail

import (
	"context"
	"errors"
	"io"
	"net/http"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/oauthbridge/oauthbridge/graph"
	"github.com/oauthbridge/oauthbridge/tokens"
)

// Named limits and defaults.
const (
	// MailboxConcurrency is Graph's limit of concurrent requests per app
	// and mailbox.
	MailboxConcurrency = 4
	// DefaultMaxThrottleWait bounds the time one operation waits for
	// throttling (429/503) before it fails with a temporary error, on top
	// of what the graph.Client waits inside one call.
	DefaultMaxThrottleWait = 30 * time.Second
	// DefaultPageSize is the page size of listings and delta rounds.
	DefaultPageSize = graph.DefaultPageSize
	// defaultThrottleWait is the wait after a 429/503 without Retry-After.
	defaultThrottleWait = 2 * time.Second
)

// Options tune a Mailbox; zero values take the defaults.
type Options struct {
	MaxThrottleWait time.Duration
	PageSize        int
	// Sleep waits between retries; nil means a timer. Tests replace it.
	Sleep func(ctx context.Context, d time.Duration) error
}

// Mailbox is one Graph mailbox, shared by all sessions that read it.
// Its methods are safe for concurrent use.
type Mailbox struct {
	client *graph.Client
	user   string
	opts   Options
	slots  chan struct{}

	mu      sync.Mutex
	folders map[string]*folder // by folder id
	paths   map[string]string  // folder path -> id

	// sizes, if set (Registry.Sizes), keeps measured sizes across
	// restarts under sizeScope (sizestore.go).
	sizes     *SizeStore
	sizeScope string
}

// New returns a Mailbox reading user's mailbox ("me", a UPN or an object
// id) through c.
func New(c *graph.Client, user string, opts Options) *Mailbox {
	if opts.MaxThrottleWait <= 0 {
		opts.MaxThrottleWait = DefaultMaxThrottleWait
	}
	if opts.PageSize <= 0 {
		opts.PageSize = DefaultPageSize
	}
	return &Mailbox{
		client:  c,
		user:    user,
		opts:    opts,
		slots:   make(chan struct{}, MailboxConcurrency),
		folders: map[string]*folder{},
		paths:   map[string]string{},
	}
}

// User returns the mailbox's user as given to New.
func (m *Mailbox) User() string { return m.user }

// ---- Errors ----

// Kind says whether an error may pass by itself.
type Kind int

const (
	// Temporary: throttling, Graph's 5xx, network trouble, a token that
	// could not be refreshed right now. Retry later.
	Temporary Kind = iota + 1
	// Permanent: a permission, configuration or sign-in problem an
	// administrator must fix (Fix says how).
	Permanent
	// NotFound: the message or folder does not exist (any more).
	NotFound
)

// Error is every error graphmail returns; Err keeps the cause
// (*graph.Error, *graph.TransportError, *tokens.Error, ...) for errors.As.
type Error struct {
	Op   string
	Kind Kind
	Fix  string // what an administrator does about a permanent error
	Err  error
}

func (e *Error) Error() string {
	s := "graphmail: " + e.Op + ": " + e.Err.Error()
	if e.Fix != "" {
		s += "; fix: " + e.Fix
	}
	return s
}

func (e *Error) Unwrap() error { return e.Err }

// Temporary reports whether retrying later may succeed.
func (e *Error) Temporary() bool { return e.Kind == Temporary }

// KindOf returns the Kind of err (Temporary for errors not from graphmail).
func KindOf(err error) Kind {
	var e *Error
	if errors.As(err, &e) {
		return e.Kind
	}
	return Temporary
}

// FixPermissions names what an administrator grants so that the bridge
// can read a mailbox through Graph.
const FixPermissions = "grant the app registration the Microsoft Graph permission Mail.ReadWrite with consent " +
	"(delegated: plus Mail.ReadWrite.Shared and Exchange FullAccess on the mailbox when the signed-in user is a delegate; " +
	"flow = \"app\": the application permission Mail.ReadWrite, with the mailbox inside its RBAC for Applications or application access policy scope), " +
	"then sign in again with 'oauthbridge login ACCOUNT' for a delegated account"

func classify(op string, err error) error {
	if err == nil {
		return nil
	}
	var e *Error
	if errors.As(err, &e) {
		return err
	}
	out := &Error{Op: op, Kind: Temporary, Err: err}
	var te *tokens.Error
	var ge *graph.Error
	switch {
	case errors.Is(err, graph.ErrFolderNotFound):
		out.Kind, out.Fix = NotFound, "create the folder or correct the folder name in the configuration"
	case errors.As(err, &te):
		if te.Kind != tokens.Temporary {
			out.Kind, out.Fix = Permanent, te.Fix
		}
	case errors.As(err, &ge):
		switch {
		case ge.Temporary():
		case ge.Status == http.StatusUnauthorized:
			// Refused even after a fresh token: a revoked grant or a token
			// without the Graph audience.
			out.Kind, out.Fix = Permanent, FixPermissions
		case ge.Status == http.StatusForbidden:
			out.Kind, out.Fix = Permanent, FixPermissions
			if ge.IsODataDisabled() {
				out.Fix = "an application access policy or RBAC for Applications scope excludes this mailbox: add the mailbox to the app's scope"
			}
		case ge.Code == graph.CodeMailboxNotEnabled:
			out.Kind, out.Fix = Permanent, "the mailbox is inactive, soft-deleted or on-premises; Graph serves only active Exchange Online mailboxes"
		case ge.Status == http.StatusNotFound:
			out.Kind = NotFound
		default:
			out.Kind = Permanent
		}
	}
	return out
}

// ---- Limiter and throttling ----

func (m *Mailbox) acquire(ctx context.Context) error {
	select {
	case m.slots <- struct{}{}:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (m *Mailbox) release() { <-m.slots }

func (m *Mailbox) sleep(ctx context.Context, d time.Duration) error {
	if m.opts.Sleep != nil {
		return m.opts.Sleep(ctx, d)
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

// call runs one Graph request in a slot, waiting out throttling within
// MaxThrottleWait.
func (m *Mailbox) call(ctx context.Context, op string, fn func(ctx context.Context) error) error {
	return m.callSlot(ctx, op, false, fn)
}

// callSlot is call; with keep, a successful fn keeps its slot (the caller
// releases it).
func (m *Mailbox) callSlot(ctx context.Context, op string, keep bool, fn func(ctx context.Context) error) error {
	var waited time.Duration
	for {
		if err := m.acquire(ctx); err != nil {
			return classify(op, err)
		}
		err := fn(ctx)
		if err != nil || !keep {
			m.release()
		}
		if err == nil {
			return nil
		}
		ge, ok := graph.AsError(err)
		if !ok || !(ge.Status == http.StatusTooManyRequests || ge.Status == http.StatusServiceUnavailable) {
			return classify(op, err)
		}
		wait := ge.RetryAfter
		if wait <= 0 {
			wait = defaultThrottleWait
		}
		if waited+wait > m.opts.MaxThrottleWait {
			return classify(op, err)
		}
		if serr := m.sleep(ctx, wait); serr != nil {
			return classify(op, err)
		}
		waited += wait
	}
}

// ---- Folders ----

// FolderID resolves a folder path ("inbox", "Inbox/Tickets", "archive")
// to its id, cached for the Mailbox's life.
func (m *Mailbox) FolderID(ctx context.Context, path string) (string, error) {
	key := strings.ToLower(strings.Trim(path, "/"))
	m.mu.Lock()
	id, ok := m.paths[key]
	m.mu.Unlock()
	if ok {
		return id, nil
	}
	var f *graph.Folder
	err := m.call(ctx, "folder "+path, func(ctx context.Context) error {
		var err error
		f, err = m.client.FolderByPath(ctx, m.user, path)
		return err
	})
	if err != nil {
		return "", err
	}
	m.mu.Lock()
	m.paths[key] = f.ID
	m.mu.Unlock()
	return f.ID, nil
}

// ListFolders lists the folders under parentID ("" = the top level).
func (m *Mailbox) ListFolders(ctx context.Context, parentID string) ([]graph.Folder, error) {
	var fs []graph.Folder
	err := m.call(ctx, "list folders", func(ctx context.Context) error {
		var err error
		fs, err = m.client.ListFolders(ctx, m.user, parentID)
		return err
	})
	return fs, err
}

// ---- Message lists ----

// Entry is what the Mailbox keeps of a message.
type Entry struct {
	ID       string    // immutable id
	Received time.Time // receivedDateTime
	Size     int64     // PR_MESSAGE_SIZE, Exchange's estimate; -1 unknown
	MIMESize int64     // exact octets of $value (CRLF line ends, see CRLF) once measured; -1 unknown
	Seen     bool
	Flagged  bool
	Draft    bool
	// MessageID is the internetMessageId (IMAP SEARCH HEADER Message-ID).
	MessageID string
}

type folder struct {
	sync    sync.Mutex // one delta round at a time
	mu      sync.Mutex // guards the fields below
	link    string     // deltaLink of the last complete round
	entries map[string]*Entry
}

func (m *Mailbox) folder(id string) *folder {
	m.mu.Lock()
	defer m.mu.Unlock()
	f := m.folders[id]
	if f == nil {
		f = &folder{entries: map[string]*Entry{}}
		m.folders[id] = f
	}
	return f
}

// Sync brings folderID's list up to date with one delta round: a full,
// paged round the first time (or after Graph dropped the sync state), a
// round of changes after that. A page that fails is retried within the
// throttling bound; a round that fails leaves the list as it was.
func (m *Mailbox) Sync(ctx context.Context, folderID string) error {
	f := m.folder(folderID)
	f.sync.Lock()
	defer f.sync.Unlock()
	f.mu.Lock()
	link := f.link
	f.mu.Unlock()
	err := m.round(ctx, f, folderID, link)
	if link != "" && err != nil {
		var ge *graph.Error
		if errors.As(err, &ge) && graph.IsSyncReset(ge) {
			err = m.round(ctx, f, folderID, "")
		}
	}
	return err
}

func (m *Mailbox) round(ctx context.Context, f *folder, folderID, link string) error {
	full := link == ""
	var fresh map[string]*Entry
	if full {
		fresh = map[string]*Entry{}
	}
	for {
		var p *graph.DeltaPage
		err := m.call(ctx, "delta", func(ctx context.Context) error {
			var err error
			p, err = m.client.DeltaMessages(ctx, m.user, folderID, link, m.opts.PageSize)
			return err
		})
		if err != nil {
			return err
		}
		f.mu.Lock()
		target := f.entries
		if full {
			target = fresh
		}
		for _, gm := range p.Changed {
			e := &Entry{ID: gm.ID, Received: gm.ReceivedDateTime, Size: gm.Size, MIMESize: -1, Seen: gm.IsRead, Flagged: gm.Flagged, Draft: gm.IsDraft, MessageID: gm.InternetMessageID}
			// The MIME of a message does not change with its flags.
			if old := f.entries[gm.ID]; old != nil {
				e.MIMESize = old.MIMESize
			}
			m.storedSize(folderID, e)
			target[gm.ID] = e
		}
		for _, id := range p.Removed {
			delete(target, id)
		}
		if m.sizes != nil && !full {
			m.sizes.forget(m.sizeScope, folderID, p.Removed)
		}
		if p.DeltaLink != "" {
			if full {
				f.entries = fresh
				if m.sizes != nil {
					m.sizes.retain(m.sizeScope, folderID, fresh)
				}
			}
			f.link = p.DeltaLink
			f.mu.Unlock()
			return nil
		}
		f.mu.Unlock()
		link = p.NextLink
	}
}

// Snapshot syncs folderID and returns its messages, oldest first (by
// received time, then id): a copy the caller may keep.
func (m *Mailbox) Snapshot(ctx context.Context, folderID string) ([]Entry, error) {
	if err := m.Sync(ctx, folderID); err != nil {
		return nil, err
	}
	f := m.folder(folderID)
	f.mu.Lock()
	out := make([]Entry, 0, len(f.entries))
	for _, e := range f.entries {
		out = append(out, *e)
	}
	f.mu.Unlock()
	sort.Slice(out, func(i, j int) bool {
		if !out[i].Received.Equal(out[j].Received) {
			return out[i].Received.Before(out[j].Received)
		}
		return out[i].ID < out[j].ID
	})
	return out, nil
}

// ---- Content ----

// MIME opens a message's MIME content. The reader holds one of the
// mailbox's request slots until it is closed.
func (m *Mailbox) MIME(ctx context.Context, id string) (io.ReadCloser, error) {
	var rc io.ReadCloser
	err := m.callSlot(ctx, "get message", true, func(ctx context.Context) error {
		var err error
		rc, _, err = m.client.MIME(ctx, m.user, id)
		return err
	})
	if err != nil {
		return nil, err
	}
	return &slotReader{rc: rc, release: m.release}, nil
}

type slotReader struct {
	rc      io.ReadCloser
	release func()
	once    sync.Once
}

func (s *slotReader) Read(p []byte) (int, error) { return s.rc.Read(p) }
func (s *slotReader) Close() error {
	err := s.rc.Close()
	s.once.Do(s.release)
	return err
}

// MIMESize returns the exact size of a message's MIME content with CRLF
// line ends (see CRLF), measuring
// it (reading $value once) if no earlier call did, and remembers it in
// folderID's list.
func (m *Mailbox) MIMESize(ctx context.Context, folderID, id string) (int64, error) {
	f := m.folder(folderID)
	f.mu.Lock()
	if e := f.entries[id]; e != nil && e.MIMESize >= 0 {
		n := e.MIMESize
		f.mu.Unlock()
		return n, nil
	}
	f.mu.Unlock()
	rc, err := m.MIME(ctx, id)
	if err != nil {
		return 0, err
	}
	n, err := io.Copy(io.Discard, CRLF(rc))
	rc.Close()
	if err != nil {
		return 0, classify("get message", err)
	}
	m.NoteMIMESize(folderID, id, n)
	return n, nil
}

// NoteMIMESize records the exact MIME size of a message read whole.
func (m *Mailbox) NoteMIMESize(folderID, id string, n int64) {
	f := m.folder(folderID)
	f.mu.Lock()
	if e := f.entries[id]; e != nil {
		e.MIMESize = n
		m.storeSize(folderID, e)
	}
	f.mu.Unlock()
}

// ---- Changes ----

// SetFlags changes a message's read and flagged state (nil: unchanged).
func (m *Mailbox) SetFlags(ctx context.Context, id string, seen, flagged *bool) error {
	return m.call(ctx, "set flags", func(ctx context.Context) error {
		return m.client.PatchMessage(ctx, m.user, id, graph.Patch{IsRead: seen, Flagged: flagged})
	})
}

// Move moves a message to destFolderID (an id or a well-known name such
// as graph.FolderDeletedItems) and returns its id there.
func (m *Mailbox) Move(ctx context.Context, id, destFolderID string) (string, error) {
	var nid string
	err := m.call(ctx, "move message", func(ctx context.Context) error {
		var err error
		nid, err = m.client.Move(ctx, m.user, id, destFolderID)
		return err
	})
	return nid, err
}

// Copy copies a message to destFolderID and returns the copy's id.
func (m *Mailbox) Copy(ctx context.Context, id, destFolderID string) (string, error) {
	var nid string
	err := m.call(ctx, "copy message", func(ctx context.Context) error {
		var err error
		nid, err = m.client.Copy(ctx, m.user, id, destFolderID)
		return err
	})
	return nid, err
}

// Delete deletes a message (Graph DELETE: it goes to Recoverable Items).
func (m *Mailbox) Delete(ctx context.Context, id string) error {
	return m.call(ctx, "delete message", func(ctx context.Context) error {
		return m.client.DeleteMessage(ctx, m.user, id)
	})
}

// CreateMIME creates a message from MIME in folderID; Graph makes it a
// draft (see graph.Client.CreateMessageMIME).
func (m *Mailbox) CreateMIME(ctx context.Context, folderID string, open func() (io.Reader, error), size int64) (string, error) {
	var id string
	err := m.call(ctx, "create message", func(ctx context.Context) error {
		var err error
		id, err = m.client.CreateMessageMIME(ctx, m.user, folderID, open, size)
		return err
	})
	return id, err
}

// ---- Sharing between sessions ----

// Registry hands out one Mailbox per key (an account), so that all
// sessions of a mailbox share its limiter and message lists.
type Registry struct {
	// Sizes, if set before the first Get, keeps the measured MIME sizes of
	// every Mailbox handed out across restarts.
	Sizes *SizeStore

	mu sync.Mutex
	m  map[string]regEntry
}

type regEntry struct {
	sig string
	mb  *Mailbox
}

// Get returns the Mailbox for key, creating it with mk. A different sig
// (e.g. the Graph URL and mailbox after a configuration reload) replaces
// the old Mailbox.
func (r *Registry) Get(key, sig string, mk func() *Mailbox) *Mailbox {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.m == nil {
		r.m = map[string]regEntry{}
	}
	if e, ok := r.m[key]; ok && e.sig == sig {
		return e.mb
	}
	mb := mk()
	if r.Sizes != nil {
		r.Sizes.attach(mb, key)
	}
	r.m[key] = regEntry{sig: sig, mb: mb}
	return mb
}
