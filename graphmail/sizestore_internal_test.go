package graphmail

import (
	"bytes"
	"crypto/rand"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/oauthbridge/oauthbridge/graph"
)

type logBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *logBuf) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *logBuf) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

func sizeKey() []byte {
	k := make([]byte, 32)
	rand.Read(k)
	return k
}

type storeEnv struct {
	dir  string
	key  []byte
	logs *logBuf
}

func newStoreEnv(t *testing.T) *storeEnv {
	return &storeEnv{dir: t.TempDir(), key: sizeKey(), logs: &logBuf{}}
}

// open is a bridge start: a new store over the same directory and key,
// with one mailbox attached (which reads the file).
func (e *storeEnv) open(t *testing.T, opts SizeStoreOptions) (*SizeStore, *Mailbox) {
	t.Helper()
	opts.Dir = e.dir
	if opts.Key == nil {
		opts.Key = func() ([]byte, error) { return bytes.Clone(e.key), nil }
	}
	opts.Logger = slog.New(slog.NewTextHandler(e.logs, nil))
	s := NewSizeStore(opts)
	t.Cleanup(func() { s.Close() })
	r := &Registry{Sizes: s}
	mb := r.Get("helpdesk", "sig", func() *Mailbox {
		return New(&graph.Client{BaseURL: "https://graph.example"}, "helpdesk@contoso.com", Options{})
	})
	return s, mb
}

// put lists a message in the folder and notes its measured size, as a
// POP3 RETR or an IMAP FETCH does.
func put(mb *Mailbox, folder, id string, mime, graphSize int64) {
	f := mb.folder(folder)
	f.mu.Lock()
	f.entries[id] = &Entry{ID: id, Size: graphSize, MIMESize: -1}
	f.mu.Unlock()
	mb.NoteMIMESize(folder, id, mime)
}

func stored(mb *Mailbox, folder, id string, graphSize int64) int64 {
	e := &Entry{ID: id, Size: graphSize, MIMESize: -1}
	mb.storedSize(folder, e)
	return e.MIMESize
}

func TestSizeStorePersistsAndChecksExchangeSize(t *testing.T) {
	e := newStoreEnv(t)
	s, mb := e.open(t, SizeStoreOptions{})
	put(mb, "inbox", "id-1", 1000, 1200)
	put(mb, "inbox", "id-2", 2000, 2300)
	// A draft's MIME may change under the same id: not kept.
	f := mb.folder("inbox")
	f.entries["draft"] = &Entry{ID: "draft", Size: 10, MIMESize: -1, Draft: true}
	mb.NoteMIMESize("inbox", "draft", 5)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(filepath.Join(e.dir, SizeFileName))
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("size file: %v %v", fi, err)
	}
	data, _ := os.ReadFile(filepath.Join(e.dir, SizeFileName))
	for _, secret := range []string{"id-1", "helpdesk", "inbox"} {
		if bytes.Contains(data, []byte(secret)) {
			t.Errorf("the size file holds %q in the clear", secret)
		}
	}

	s, mb = e.open(t, SizeStoreOptions{})
	if s.Len() != 2 {
		t.Errorf("after restart %d sizes, want 2", s.Len())
	}
	if n := stored(mb, "inbox", "id-1", 1200); n != 1000 {
		t.Errorf("id-1 = %d, want 1000", n)
	}
	// Exchange's store size changed: the item changed, measure again.
	if n := stored(mb, "inbox", "id-2", 2301); n != -1 {
		t.Errorf("id-2 with another store size = %d, want unknown", n)
	}
	// Another folder, another mailbox: never applied.
	if n := stored(mb, "archive", "id-1", 1200); n != -1 {
		t.Errorf("id-1 in another folder = %d", n)
	}
	other := (&Registry{Sizes: s}).Get("archive", "sig", func() *Mailbox {
		return New(&graph.Client{BaseURL: "https://graph.example"}, "archive@contoso.com", Options{})
	})
	if n := stored(other, "inbox", "id-1", 1200); n != -1 {
		t.Errorf("id-1 in another mailbox = %d", n)
	}
	if n := stored(mb, "inbox", "draft", 10); n != -1 {
		t.Errorf("a draft's size was kept: %d", n)
	}
	if strings.Contains(e.logs.String(), "level=WARN") {
		t.Errorf("warnings: %s", e.logs)
	}
}

// A damaged, torn, foreign or too open file never stops the bridge: a
// warning names the file, the store starts empty and the next write
// replaces the file with a good one.
func TestSizeStoreUnreadableFile(t *testing.T) {
	e := newStoreEnv(t)
	s, mb := e.open(t, SizeStoreOptions{})
	for i := range 20 {
		put(mb, "inbox", fmt.Sprint("id-", i), int64(100+i), int64(200+i))
	}
	s.Close()
	p := filepath.Join(e.dir, SizeFileName)
	good, _ := os.ReadFile(p)
	flip := bytes.Clone(good)
	flip[len(flip)/2] ^= 1
	otherKey := newStoreEnv(t)
	otherKey.dir = t.TempDir()
	os2, omb := otherKey.open(t, SizeStoreOptions{})
	put(omb, "inbox", "x", 1, 2)
	os2.Close()
	foreign, _ := os.ReadFile(filepath.Join(otherKey.dir, SizeFileName))
	version := bytes.Clone(good)
	version[8] = 9

	for _, tc := range []struct {
		name   string
		data   []byte
		mode   os.FileMode
		reason string
	}{
		{"empty", nil, 0o600, "too short"},
		{"torn", good[:len(good)/2], 0o600, "authentication failed"},
		{"header only", good[:sizeHeaderLen+3], 0o600, "too short"},
		{"flipped bit", flip, 0o600, "authentication failed"},
		{"garbage", bytes.Repeat([]byte("x"), 500), 0o600, "not an oauthbridge size file"},
		{"other key", foreign, 0o600, "different key"},
		{"newer format", version, 0o600, "format version 9"},
		{"group readable", good, 0o644, "mode 0644"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			os.Remove(p)
			if err := os.WriteFile(p, tc.data, tc.mode); err != nil {
				t.Fatal(err)
			}
			os.Chmod(p, tc.mode)
			e.logs = &logBuf{}
			s, mb := e.open(t, SizeStoreOptions{FlushInterval: time.Hour})
			logs := e.logs.String()
			if s.Len() != 0 || !strings.Contains(logs, "level=WARN") || !strings.Contains(logs, p) || !strings.Contains(logs, tc.reason) {
				t.Fatalf("%d sizes, logs %s", s.Len(), logs)
			}
			put(mb, "inbox", "new", 7, 8)
			if err := s.Close(); err != nil {
				t.Fatal(err)
			}
			if fi, err := os.Stat(p); err != nil || fi.Mode().Perm() != 0o600 {
				t.Fatalf("rewritten file: %v %v", fi, err)
			}
			e.logs = &logBuf{}
			s, mb = e.open(t, SizeStoreOptions{})
			if s.Len() != 1 || stored(mb, "inbox", "new", 8) != 7 || strings.Contains(e.logs.String(), "level=WARN") {
				t.Errorf("after the rewrite: %d sizes, logs %s", s.Len(), e.logs)
			}
			s.Close()
		})
	}
}

// A key that cannot be had yet (no token store key) keeps sizes in
// memory; the next mailbox tries again and merges the file.
func TestSizeStoreKeyLater(t *testing.T) {
	e := newStoreEnv(t)
	s, mb := e.open(t, SizeStoreOptions{})
	put(mb, "inbox", "old", 10, 11)
	s.Close()

	fail := true
	s, mb = e.open(t, SizeStoreOptions{Key: func() ([]byte, error) {
		if fail {
			return nil, errors.New("tokens: key file is missing")
		}
		return bytes.Clone(e.key), nil
	}})
	if !strings.Contains(e.logs.String(), "in memory only") {
		t.Errorf("logs: %s", e.logs)
	}
	put(mb, "inbox", "new", 20, 21)
	fail = false
	(&Registry{Sizes: s}).Get("other", "sig", func() *Mailbox {
		return New(&graph.Client{BaseURL: "https://graph.example"}, "other@contoso.com", Options{})
	})
	if s.Len() != 2 || stored(mb, "inbox", "old", 11) != 10 || stored(mb, "inbox", "new", 21) != 20 {
		t.Fatalf("after the key came: %d sizes", s.Len())
	}
	s.Close()
	s, _ = e.open(t, SizeStoreOptions{})
	if s.Len() != 2 {
		t.Errorf("after restart %d sizes", s.Len())
	}
}

// Writes are batched: many sizes make one write per interval, and Close
// writes what is left.
func TestSizeStoreBatchesWrites(t *testing.T) {
	e := newStoreEnv(t)
	var mu sync.Mutex
	writes := 0
	s, mb := e.open(t, SizeStoreOptions{FlushInterval: time.Hour, OnFlush: func(err error) {
		if err != nil {
			t.Error(err)
		}
		mu.Lock()
		writes++
		mu.Unlock()
	}})
	for i := range 500 {
		put(mb, "inbox", fmt.Sprint("id-", i), int64(i), int64(i+1))
	}
	mu.Lock()
	if writes != 0 {
		t.Errorf("%d writes before the interval", writes)
	}
	mu.Unlock()
	if _, err := os.Stat(filepath.Join(e.dir, SizeFileName)); err == nil {
		t.Error("the file was written before the interval")
	}
	s.Close()
	if writes != 1 {
		t.Errorf("%d writes at Close, want 1", writes)
	}

	// With a short interval the background writer saves the sizes by
	// itself (a crash after it loses nothing).
	flushed := make(chan error, 10)
	_, mb = e.open(t, SizeStoreOptions{FlushInterval: time.Millisecond, OnFlush: func(err error) { flushed <- err }})
	put(mb, "inbox", "late", 5, 6)
	if err := <-flushed; err != nil {
		t.Fatal(err)
	}
	// Read the file as a crashed bridge's successor would (no Close).
	s2 := NewSizeStore(SizeStoreOptions{Dir: e.dir, Key: func() ([]byte, error) { return bytes.Clone(e.key), nil }})
	defer s2.Close()
	mb2 := (&Registry{Sizes: s2}).Get("helpdesk", "sig", func() *Mailbox {
		return New(&graph.Client{BaseURL: "https://graph.example"}, "helpdesk@contoso.com", Options{})
	})
	if stored(mb2, "inbox", "late", 6) != 5 || s2.Len() != 501 {
		t.Errorf("after the background write: %d sizes", s2.Len())
	}
}

// MaxEntries bounds the store: the sizes least recently measured or seen
// in a listing go first, so a folder no longer listed goes before the
// folder being read.
func TestSizeStoreBounded(t *testing.T) {
	e := newStoreEnv(t)
	const max = 100
	s, mb := e.open(t, SizeStoreOptions{MaxEntries: max})
	for i := range 50 {
		put(mb, "stale", fmt.Sprint("s-", i), 1, 2)
	}
	for i := range 50 {
		put(mb, "inbox", fmt.Sprint("i-", i), 1, 2)
	}
	// A full listing of stale sees its messages again: they are now more
	// recent than inbox's.
	listed := map[string]*Entry{}
	for i := range 50 {
		listed[fmt.Sprint("s-", i)] = nil
	}
	s.retain(mb.sizeScope, "stale", listed)
	for i := range 30 {
		put(mb, "new", fmt.Sprint("n-", i), 1, 2)
	}
	if n := s.Len(); n > max || n < max-max/10 {
		t.Fatalf("%d sizes, want at most %d", n, max)
	}
	if stored(mb, "inbox", "i-0", 2) != -1 || stored(mb, "stale", "s-0", 2) != 1 || stored(mb, "new", "n-29", 2) != 1 {
		t.Error("the bound did not drop the least recently used sizes")
	}
	s.Close()
	s, _ = e.open(t, SizeStoreOptions{MaxEntries: 10})
	if n := s.Len(); n > 10 {
		t.Errorf("a smaller bound at start keeps %d sizes", n)
	}
}
