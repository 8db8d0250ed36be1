package graphmail

// The measured MIME sizes of Graph-served messages, kept across restarts.
//
// Graph reports only Exchange's store size (PR_MESSAGE_SIZE), so POP3's
// STAT/LIST and IMAP's RFC822.SIZE read a message whole once to measure it.
// Without this file a restart would forget every measurement and the first
// LIST of a large folder would download it all again.
//
// A size is keyed by the mailbox (account, Graph URL, mailbox user), the
// folder id and the SHA-256 of the immutable message id, and is used only
// while Exchange's store size of the message is still the one seen when
// it was measured (a changed item is measured again). Drafts, whose MIME
// may change under the same id, are not kept. A message that moves gets
// listed in another folder and is measured there again; its entry in the
// old folder goes when that folder is next listed (pruning), and
// MaxEntries (DefaultMaxStoredSizes) bounds the whole: the entries least
// recently measured or seen in a listing go first.
//
// The file holds only those hashes, folder ids, account and mailbox names
// and numbers, encrypted with XChaCha20-Poly1305 under a key derived from
// the token store's key, mode 0600, like the IMAP UID map. It is rewritten
// whole (temporary file, fsync, rename, fsync of the directory) at most
// once per FlushInterval while sizes change, and on Close. A crash loses
// at most the last interval's sizes (they are measured again). A file
// that cannot be read (torn, damaged, another key, another format) is
// logged as a warning naming it, and the bridge starts without it.

import (
	"bytes"
	"crypto/cipher"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"time"

	"golang.org/x/crypto/chacha20poly1305"
)

// SizeFileName is the size file's name inside state_dir, beside the token
// store.
const SizeFileName = "graph-sizes.enc"

// Named limits and defaults of the size store.
const (
	// DefaultMaxStoredSizes bounds the sizes kept (about 105 bytes each
	// in memory, 41 in the file; BenchmarkSizeStoreFlush100k).
	DefaultMaxStoredSizes = 100_000
	// DefaultSizeFlushInterval is the longest a measured size waits in
	// memory before the file is rewritten.
	DefaultSizeFlushInterval = 30 * time.Second
	// maxSizeFileBytes bounds the file read at start (far above what
	// DefaultMaxStoredSizes needs).
	maxSizeFileBytes = 256 << 20
)

// File layout: magic(8) | version(1) | keyID(8) | nonce(24) | ciphertext,
// the header being the additional data. The plaintext is
//
//	clock uvarint | folders uvarint |
//	per folder: scope, folder (uvarint length + bytes) | entries uvarint |
//	per entry: SHA-256 of the id (32) | mime uvarint | graph uvarint | used uvarint
var sizeMagic = []byte("OBGSIZES")

const (
	sizeVersion   = 1
	sizeHeaderLen = 8 + 1 + 8
)

// SizeStoreOptions configure a SizeStore; zero values take the defaults.
type SizeStoreOptions struct {
	// Dir is state_dir.
	Dir string
	// Key returns the 32-byte key (the daemon derives it from the token
	// store's key). It is called when the first mailbox is attached; a
	// failure keeps sizes in memory only and is tried again at the next
	// mailbox.
	Key func() ([]byte, error)
	// MaxEntries: see DefaultMaxStoredSizes.
	MaxEntries int
	// FlushInterval: see DefaultSizeFlushInterval.
	FlushInterval time.Duration
	Logger        *slog.Logger // nil: discard
	// OnFlush, if set, is called after every write of the file with its
	// outcome (tests synchronise on it).
	OnFlush func(error)
}

// SizeStore keeps measured MIME sizes in SizeFileName. Give it to a
// Registry (Registry.Sizes) so that every Mailbox the registry hands out
// uses it. Its methods are safe for concurrent use.
type SizeStore struct {
	opts    SizeStoreOptions
	path    string
	flushMu sync.Mutex // one write of the file at a time

	mu      sync.Mutex
	aead    cipher.AEAD // nil until the key is known
	header  []byte
	loaded  bool // the file was read (or found missing or unreadable)
	folders map[sizeFolder]map[sizeID]sizeRec
	count   int
	clock   uint64 // orders entries by last use, for the bound
	dirty   bool
	closed  bool
	started bool
	kick    chan struct{} // a flush is due
	stop    chan struct{}
	done    chan struct{}
}

type sizeFolder struct{ scope, folder string }

type sizeID [sha256.Size]byte

type sizeRec struct {
	mime  int64  // exact MIME octets (CRLF line ends)
	graph int64  // Exchange's store size when measured
	used  uint64 // clock of the last measurement or listing that saw it
}

// NewSizeStore returns a store of sizes in opts.Dir. Nothing is read until
// the first mailbox is attached; Close writes what changed.
func NewSizeStore(opts SizeStoreOptions) *SizeStore {
	if opts.MaxEntries <= 0 {
		opts.MaxEntries = DefaultMaxStoredSizes
	}
	if opts.FlushInterval <= 0 {
		opts.FlushInterval = DefaultSizeFlushInterval
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	return &SizeStore{
		opts:    opts,
		path:    filepath.Join(opts.Dir, SizeFileName),
		folders: map[sizeFolder]map[sizeID]sizeRec{},
		kick:    make(chan struct{}, 1),
		stop:    make(chan struct{}),
		done:    make(chan struct{}),
	}
}

// Path returns the file's path.
func (s *SizeStore) Path() string { return s.path }

// Len returns how many sizes the store holds.
func (s *SizeStore) Len() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.count
}

func hashID(id string) sizeID { return sha256.Sum256([]byte(id)) }

// attach makes mb keep its sizes here under scope (the registry key, the
// Graph URL and the mailbox user), reading the file first if needed.
func (s *SizeStore) attach(mb *Mailbox, key string) {
	s.mu.Lock()
	s.loadLocked()
	s.mu.Unlock()
	mb.sizes = s
	mb.sizeScope = key + "\n" + mb.client.BaseURL + "\n" + mb.user
}

// loadLocked reads the file once the key is available.
func (s *SizeStore) loadLocked() {
	if s.loaded || s.closed {
		return
	}
	if s.opts.Key == nil {
		s.opts.Logger.Warn("Graph message sizes are kept in memory only: no key (a bridge bug)", "file", s.path)
		s.loaded = true // nothing will be written
		return
	}
	key, err := s.opts.Key()
	if err != nil {
		s.opts.Logger.Warn("Graph message sizes are kept in memory only for now: the key of their file is not available; tried again at the next Graph-served login",
			"file", s.path, "error", err)
		return
	}
	aead, err := chacha20poly1305.NewX(key)
	kid := sha256.Sum256(append([]byte("oauthbridge graph sizes key id\x00"), key...))
	clear(key)
	if err != nil {
		s.opts.Logger.Warn("Graph message sizes are kept in memory only: bad key", "file", s.path, "error", err)
		s.loaded = true
		return
	}
	s.aead = aead
	s.header = append(append(append([]byte{}, sizeMagic...), sizeVersion), kid[:8]...)
	s.loaded = true
	s.startLocked()
	if why := s.readLocked(); why != "" {
		s.opts.Logger.Warn("the file of measured Graph message sizes is unreadable; starting without it: sizes are measured again as messages are read, and the file is rewritten",
			"file", s.path, "reason", why)
		s.markDirtyLocked() // replace it
	}
}

// readLocked merges the file into the store; it returns why the file
// cannot be used ("" when it is fine or missing).
func (s *SizeStore) readLocked() string {
	f, err := os.Open(s.path)
	if errors.Is(err, fs.ErrNotExist) {
		return ""
	}
	if err != nil {
		return err.Error()
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return err.Error()
	}
	if fi.Mode().Perm()&0o077 != 0 {
		return fmt.Sprintf("accessible by group or others (mode %04o); it is replaced by one of mode 0600", fi.Mode().Perm())
	}
	data, err := io.ReadAll(io.LimitReader(f, maxSizeFileBytes+1))
	if err != nil {
		return err.Error()
	}
	if len(data) > maxSizeFileBytes {
		return "larger than " + fmt.Sprint(maxSizeFileBytes) + " bytes"
	}
	ns := s.aead.NonceSize()
	switch {
	case len(data) < sizeHeaderLen+ns+s.aead.Overhead():
		return "too short (torn write?)"
	case !bytes.Equal(data[:8], sizeMagic):
		return "not an oauthbridge size file"
	case data[8] != sizeVersion:
		return fmt.Sprintf("format version %d, this oauthbridge reads version %d", data[8], sizeVersion)
	case !bytes.Equal(data[:sizeHeaderLen], s.header):
		return "encrypted with a different key than the token store's key"
	}
	body := data[sizeHeaderLen:]
	plain, err := s.aead.Open(nil, body[:ns], body[ns:], s.header)
	if err != nil {
		return "authentication failed (damaged or torn)"
	}
	if err := s.decodeLocked(plain); err != nil {
		return err.Error()
	}
	return ""
}

func (s *SizeStore) decodeLocked(p []byte) error {
	bad := errors.New("bad encoding")
	uv := func() (uint64, error) {
		v, n := binary.Uvarint(p)
		if n <= 0 {
			return 0, bad
		}
		p = p[n:]
		return v, nil
	}
	str := func() (string, error) {
		n, err := uv()
		if err != nil || n > uint64(len(p)) {
			return "", bad
		}
		v := string(p[:n])
		p = p[n:]
		return v, nil
	}
	clock, err := uv()
	if err != nil {
		return err
	}
	nf, err := uv()
	if err != nil {
		return err
	}
	loaded := map[sizeFolder]map[sizeID]sizeRec{}
	for range nf {
		var k sizeFolder
		if k.scope, err = str(); err != nil {
			return err
		}
		if k.folder, err = str(); err != nil {
			return err
		}
		ne, err := uv()
		if err != nil || ne > uint64(len(p))/(sha256.Size+3) {
			return bad
		}
		m := loaded[k]
		if m == nil {
			m = make(map[sizeID]sizeRec, ne)
			loaded[k] = m
		}
		for range ne {
			if len(p) < sha256.Size {
				return bad
			}
			var id sizeID
			copy(id[:], p)
			p = p[sha256.Size:]
			var v [3]uint64
			for i := range v {
				if v[i], err = uv(); err != nil {
					return err
				}
			}
			if v[0] > 1<<62 || v[1] > 1<<62 {
				return bad
			}
			m[id] = sizeRec{mime: int64(v[0]), graph: int64(v[1]), used: v[2]}
		}
	}
	if len(p) != 0 {
		return bad
	}
	// Merge: what was measured in memory before the file could be read
	// is newer.
	for k, m := range loaded {
		cur := s.folders[k]
		if cur == nil {
			cur = map[sizeID]sizeRec{}
			s.folders[k] = cur
		}
		for id, r := range m {
			if _, ok := cur[id]; !ok {
				cur[id] = r
				s.count++
			}
		}
	}
	s.clock = max(s.clock, clock)
	if s.count > s.opts.MaxEntries {
		s.evictLocked()
	}
	return nil
}

func (s *SizeStore) encodeLocked() []byte {
	b := make([]byte, 0, 16+s.count*(sha256.Size+12))
	b = binary.AppendUvarint(b, s.clock)
	b = binary.AppendUvarint(b, uint64(len(s.folders)))
	for k, m := range s.folders {
		b = binary.AppendUvarint(b, uint64(len(k.scope)))
		b = append(b, k.scope...)
		b = binary.AppendUvarint(b, uint64(len(k.folder)))
		b = append(b, k.folder...)
		b = binary.AppendUvarint(b, uint64(len(m)))
		for id, r := range m {
			b = append(b, id[:]...)
			b = binary.AppendUvarint(b, uint64(r.mime))
			b = binary.AppendUvarint(b, uint64(r.graph))
			b = binary.AppendUvarint(b, r.used)
		}
	}
	return b
}

func (s *SizeStore) markDirtyLocked() {
	if s.dirty {
		return
	}
	s.dirty = true
	select {
	case s.kick <- struct{}{}:
	default:
	}
}

// startLocked starts the goroutine that writes the file at most once per
// FlushInterval while sizes change.
func (s *SizeStore) startLocked() {
	if s.started {
		return
	}
	s.started = true
	go func() {
		defer close(s.done)
		for {
			select {
			case <-s.stop:
				return
			case <-s.kick:
			}
			t := time.NewTimer(s.opts.FlushInterval)
			select {
			case <-s.stop:
				t.Stop()
				return // Close writes
			case <-t.C:
			}
			_ = s.Flush()
		}
	}()
}

// Flush writes the file now if sizes changed since the last write. A
// failure is logged (naming the file) and tried again later.
func (s *SizeStore) Flush() error {
	s.flushMu.Lock()
	defer s.flushMu.Unlock()
	s.mu.Lock()
	if !s.dirty || s.aead == nil {
		s.mu.Unlock()
		return nil
	}
	plain := s.encodeLocked()
	s.dirty = false
	aead, header := s.aead, s.header
	s.mu.Unlock()

	ns := aead.NonceSize()
	out := make([]byte, 0, len(header)+ns+len(plain)+aead.Overhead())
	out = append(out, header...)
	out = out[:len(header)+ns]
	_, err := rand.Read(out[len(header):])
	if err == nil {
		out = aead.Seal(out, out[len(header):], plain, header)
		err = s.write(out)
	}
	clear(plain)
	if err != nil {
		s.mu.Lock()
		s.markDirtyLocked()
		s.mu.Unlock()
		err = fmt.Errorf("graphmail: write the Graph message sizes file %s: %w", s.path, err)
		s.opts.Logger.Warn("could not save the measured Graph message sizes; tried again later", "file", s.path, "error", err)
	}
	if s.opts.OnFlush != nil {
		s.opts.OnFlush(err)
	}
	return err
}

// write replaces the file atomically: temporary file, fsync, rename,
// fsync of the directory.
func (s *SizeStore) write(data []byte) error {
	dir := filepath.Dir(s.path)
	tmp, err := os.CreateTemp(dir, "."+SizeFileName+".tmp-*") // mode 0600
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name()) // no-op after the rename
	_, err = tmp.Write(data)
	if err == nil {
		err = tmp.Sync()
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp.Name(), s.path)
	}
	if err != nil {
		return err
	}
	if d, err := os.Open(dir); err == nil {
		d.Sync()
		d.Close()
	}
	return nil
}

// Close stops the background writes and writes what changed.
func (s *SizeStore) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	started := s.started
	s.mu.Unlock()
	if started {
		close(s.stop)
		<-s.done
	}
	return s.Flush()
}

// lookup returns the stored size of id in the folder if Exchange's store
// size is still graphSize.
func (s *SizeStore) lookup(scope, folder, id string, graphSize int64) (int64, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	m := s.folders[sizeFolder{scope, folder}]
	if m == nil {
		return 0, false
	}
	h := hashID(id)
	r, ok := m[h]
	if !ok || r.graph != graphSize {
		return 0, false
	}
	s.clock++
	r.used = s.clock
	m[h] = r
	return r.mime, true
}

// put stores a measured size.
func (s *SizeStore) put(scope, folder, id string, mime, graphSize int64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	k := sizeFolder{scope, folder}
	m := s.folders[k]
	if m == nil {
		m = map[sizeID]sizeRec{}
		s.folders[k] = m
	}
	h := hashID(id)
	old, had := m[h]
	s.clock++
	m[h] = sizeRec{mime: mime, graph: graphSize, used: s.clock}
	if had && old.mime == mime && old.graph == graphSize {
		return
	}
	if !had {
		s.count++
	}
	s.markDirtyLocked()
	if s.count > s.opts.MaxEntries {
		s.evictLocked()
	}
}

// forget drops the sizes of messages that left the folder.
func (s *SizeStore) forget(scope, folder string, ids []string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	k := sizeFolder{scope, folder}
	m := s.folders[k]
	if m == nil {
		return
	}
	for _, id := range ids {
		h := hashID(id)
		if _, ok := m[h]; ok {
			delete(m, h)
			s.count--
			s.markDirtyLocked()
		}
	}
	if len(m) == 0 {
		delete(s.folders, k)
	}
}

// retain keeps, of the folder's sizes, those of the messages a full
// listing returned, and marks them used.
func (s *SizeStore) retain(scope, folder string, listed map[string]*Entry) {
	s.mu.Lock()
	defer s.mu.Unlock()
	k := sizeFolder{scope, folder}
	m := s.folders[k]
	if m == nil {
		return
	}
	keep := make(map[sizeID]bool, len(listed))
	for id := range listed {
		keep[hashID(id)] = true
	}
	s.clock++
	for h, r := range m {
		if !keep[h] {
			delete(m, h)
			s.count--
			s.markDirtyLocked()
			continue
		}
		r.used = s.clock
		m[h] = r
	}
	if len(m) == 0 {
		delete(s.folders, k)
	}
}

// evictLocked drops the least recently used tenth of MaxEntries (at
// least one entry), so that a full store is not sorted at every put.
func (s *SizeStore) evictLocked() {
	target := s.opts.MaxEntries - s.opts.MaxEntries/10
	if target >= s.count {
		target = s.count - 1
	}
	n := s.count - target // to drop
	used := make([]uint64, 0, s.count)
	for _, m := range s.folders {
		for _, r := range m {
			used = append(used, r.used)
		}
	}
	slices.Sort(used)
	cut := used[n-1]
	for k, m := range s.folders {
		for h, r := range m {
			if r.used <= cut {
				delete(m, h)
				s.count--
			}
		}
		if len(m) == 0 {
			delete(s.folders, k)
		}
	}
	s.markDirtyLocked()
}

// ---- The Mailbox's side ----

// storedSize fills e.MIMESize from the store (e is a fresh entry of a
// listing, its caller holds the folder's lock).
func (m *Mailbox) storedSize(folderID string, e *Entry) {
	if m.sizes == nil || e.MIMESize >= 0 || e.Draft || e.Size < 0 {
		return
	}
	if n, ok := m.sizes.lookup(m.sizeScope, folderID, e.ID, e.Size); ok {
		e.MIMESize = n
	}
}

// storeSize keeps a measured size of e.
func (m *Mailbox) storeSize(folderID string, e *Entry) {
	if m.sizes == nil || e.MIMESize < 0 || e.Draft || e.Size < 0 {
		return
	}
	m.sizes.put(m.sizeScope, folderID, e.ID, e.MIMESize, e.Size)
}
