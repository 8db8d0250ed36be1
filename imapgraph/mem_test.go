package imapgraph

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"slices"
	"sync"
	"time"

	"github.com/oauthbridge/oauthbridge/graph"
)

// memMailbox is an in-memory Mailbox for the unit tests. Its delta
// token is a change counter.
type memMailbox struct {
	mu      sync.Mutex
	folders []Folder
	msgs    map[string]*memMsg
	seq     int
	calls   map[string]int

	// throttle makes the next n calls of op fail with 429.
	throttle map[string]int
	// fail makes every call of op fail with err.
	fail map[string]error
}

type memMsg struct {
	Message
	folder string
	mime   []byte
}

func newMemMailbox() *memMailbox {
	return &memMailbox{
		folders: []Folder{
			{ID: "f-inbox", Name: "Inbox", WellKnown: "inbox"},
			{ID: "f-sent", Name: "Sent Items", WellKnown: "sentitems"},
			{ID: "f-trash", Name: "Deleted Items", WellKnown: "deleteditems"},
			{ID: "f-drafts", Name: "Drafts", WellKnown: "drafts"},
			{ID: "f-proc", Name: "Processed"},
			{ID: "f-sub", Name: "2026", ParentID: "f-proc"},
		},
		msgs:     map[string]*memMsg{},
		calls:    map[string]int{},
		throttle: map[string]int{},
		fail:     map[string]error{},
	}
}

func (m *memMailbox) enter(op string) error {
	m.calls[op]++
	if err := m.fail[op]; err != nil {
		return err
	}
	if m.throttle[op] > 0 {
		m.throttle[op]--
		return &graph.Error{Op: op, Status: 429, Code: "ApplicationThrottled", RetryAfter: 2 * time.Second}
	}
	return nil
}

// deliver adds a message to a folder (as mail arriving).
func (m *memMailbox) deliver(folder string, mime string, received time.Time) string {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.seq++
	id := fmt.Sprintf("AAMk-%06d", m.seq)
	msgID := ""
	if i := bytes.Index([]byte(mime), []byte("Message-ID: ")); i >= 0 {
		rest := mime[i+12:]
		msgID = rest[:bytes.IndexByte([]byte(rest), '\r')]
	}
	m.msgs[id] = &memMsg{Message: Message{ID: id, Size: int64(len(mime)), Received: received, MessageID: msgID}, folder: folder, mime: []byte(mime)}
	return id
}

func (m *memMailbox) get(id string) memMsg {
	m.mu.Lock()
	defer m.mu.Unlock()
	return *m.msgs[id]
}

func (m *memMailbox) count(op string) int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.calls[op]
}

func (m *memMailbox) Folders(ctx context.Context) ([]Folder, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if err := m.enter("folders"); err != nil {
		return nil, err
	}
	return slices.Clone(m.folders), nil
}

func (m *memMailbox) List(ctx context.Context, folderID string) ([]Message, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if err := m.enter("list"); err != nil {
		return nil, err
	}
	var out []Message
	for _, msg := range m.msgs {
		if msg.folder == folderID {
			out = append(out, msg.Message)
		}
	}
	return out, nil
}

func (m *memMailbox) Content(ctx context.Context, id string) (io.ReadCloser, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if err := m.enter("content"); err != nil {
		return nil, err
	}
	msg := m.msgs[id]
	if msg == nil {
		return nil, ErrNotFound
	}
	return io.NopCloser(bytes.NewReader(msg.mime)), nil
}

func (m *memMailbox) Update(ctx context.Context, id string, u FlagUpdate) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if err := m.enter("update"); err != nil {
		return err
	}
	msg := m.msgs[id]
	if msg == nil {
		return ErrNotFound
	}
	if u.Read != nil {
		msg.Read = *u.Read
	}
	if u.Flagged != nil {
		msg.Flagged = *u.Flagged
	}
	return nil
}

func (m *memMailbox) Move(ctx context.Context, id, dest string) (string, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if err := m.enter("move"); err != nil {
		return "", err
	}
	msg := m.msgs[id]
	if msg == nil {
		return "", ErrNotFound
	}
	msg.folder = dest
	return id, nil // immutable ids survive a move
}

func (m *memMailbox) Copy(ctx context.Context, id, dest string) (string, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if err := m.enter("copy"); err != nil {
		return "", err
	}
	msg := m.msgs[id]
	if msg == nil {
		return "", ErrNotFound
	}
	m.seq++
	nid := fmt.Sprintf("AAMk-%06d", m.seq)
	c := *msg
	c.ID, c.folder = nid, dest
	m.msgs[nid] = &c
	return nid, nil
}

func (m *memMailbox) Delete(ctx context.Context, id string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if err := m.enter("delete"); err != nil {
		return err
	}
	msg := m.msgs[id]
	if msg == nil {
		return ErrNotFound
	}
	delete(m.msgs, id)
	return nil
}

func (m *memMailbox) Append(ctx context.Context, folder string, mime []byte, read, flagged bool) (string, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if err := m.enter("append"); err != nil {
		return "", err
	}
	m.seq++
	id := fmt.Sprintf("AAMk-%06d", m.seq)
	m.msgs[id] = &memMsg{Message: Message{ID: id, Size: int64(len(mime)), Received: time.Now().UTC(), Read: read, Flagged: flagged, Draft: true}, folder: folder, mime: mime}
	return id, nil
}
