package imapgraph

import (
	"bufio"
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"time"

	"crypto/cipher"
	"golang.org/x/crypto/chacha20poly1305"
)

// UIDFileName is the UID map's file inside state_dir, beside the token store.
const UIDFileName = "imap-uids.enc"

// CompactAfterRecords is how many appended records the UID map file may
// collect before it is rewritten as one snapshot.
const CompactAfterRecords = 1000

// UID map file layout: magic(8) | version(1) | keyID(8), then records, each
// len(4, big endian) | nonce(24) | ciphertext. A record's additional data is
// the header plus its 8-byte sequence number, so records cannot be dropped
// from the middle, reordered or moved to another file unnoticed.
var uidMagic = []byte("OBUIDMAP")

const (
	uidVersion   = 1
	uidHeaderLen = 8 + 1 + 8
	maxRecordLen = 64 << 20
)

// UIDStore keeps, per account and folder, the IMAP UIDVALIDITY, UIDNEXT and
// the map from Graph's immutable message id to UID. It lives in one file,
// encrypted with XChaCha20-Poly1305 under a key derived from the token
// store's key, and survives restarts. Every change is appended and fsynced
// before a UID is shown to a client, so a UID is never handed out twice.
type UIDStore struct {
	mu      sync.Mutex
	path    string
	aead    cipher.AEAD
	header  []byte
	f       *os.File // open for append, flock(2)ed
	seq     uint64   // records in the file
	appends int      // records since the last snapshot
	now     func() time.Time
	folders map[folderKey]*folderUIDs
}

type folderKey struct{ account, folder string }

type folderUIDs struct {
	validity uint32
	next     uint32 // UIDNEXT: never decreases
	ids      map[string]uint32
}

// record is one change (or, in a snapshot, one folder's full state).
type record struct {
	Account  string            `json:"a"`
	Folder   string            `json:"f"`
	Validity uint32            `json:"v,omitempty"`
	Next     uint32            `json:"n,omitempty"`
	Reset    bool              `json:"r,omitempty"` // start the folder over (snapshot or new UIDVALIDITY)
	Set      map[string]uint32 `json:"s,omitempty"`
	Del      []string          `json:"d,omitempty"`
}

// OpenUIDStore opens (creating if needed) the UID map in dir with a 32-byte
// key. The file is locked for this process: a second daemon on the same
// state_dir gets a clear error instead of handing out conflicting UIDs.
func OpenUIDStore(dir string, key []byte) (*UIDStore, error) {
	aead, err := chacha20poly1305.NewX(key)
	if err != nil {
		return nil, fmt.Errorf("imapgraph: UID map key: %w", err)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("imapgraph: create state_dir: %w", err)
	}
	h := sha256.Sum256(append([]byte("oauthbridge uid map key id\x00"), key...))
	s := &UIDStore{
		path:    filepath.Join(dir, UIDFileName),
		aead:    aead,
		header:  append(append(append([]byte{}, uidMagic...), uidVersion), h[:8]...),
		now:     time.Now,
		folders: map[folderKey]*folderUIDs{},
	}
	f, err := os.OpenFile(s.path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("imapgraph: open UID map: %w", err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		f.Close()
		return nil, fmt.Errorf("imapgraph: UID map %s is in use by another oauthbridge process (%v): run one daemon per state_dir", s.path, err)
	}
	s.f = f
	if fi, err := f.Stat(); err == nil && fi.Mode().Perm()&0o077 != 0 {
		f.Close()
		return nil, fmt.Errorf("imapgraph: %s is accessible by group or others (mode %04o): run 'chmod 600 %s'", s.path, fi.Mode().Perm(), s.path)
	}
	if err := s.load(); err != nil {
		f.Close()
		return nil, err
	}
	if s.appends > 0 {
		if err := s.compactLocked(); err != nil {
			f.Close()
			return nil, err
		}
	}
	return s, nil
}

// Close releases the file.
func (s *UIDStore) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.f == nil {
		return nil
	}
	err := s.f.Close()
	s.f = nil
	return err
}

func (s *UIDStore) damaged(why string) error {
	return fmt.Errorf("imapgraph: UID map %s is damaged (%s): move it aside and restart; IMAP clients then see a new UIDVALIDITY and download the folders' messages again (nothing is lost in the mailbox)", s.path, why)
}

// load replays the file. A record cut short at the end (a crash during its
// write) is dropped: its UIDs were never shown to a client.
func (s *UIDStore) load() error {
	fi, err := s.f.Stat()
	if err != nil {
		return fmt.Errorf("imapgraph: stat UID map: %w", err)
	}
	if fi.Size() == 0 {
		if _, err := s.f.Write(s.header); err != nil {
			return fmt.Errorf("imapgraph: write UID map: %w", err)
		}
		return s.f.Sync()
	}
	r := bufio.NewReader(s.f)
	hdr := make([]byte, uidHeaderLen)
	if _, err := io.ReadFull(r, hdr); err != nil {
		return s.damaged("too short")
	}
	if !bytes.Equal(hdr[:8], uidMagic) {
		return s.damaged("not an oauthbridge UID map")
	}
	if hdr[8] != uidVersion {
		return fmt.Errorf("imapgraph: UID map %s has format version %d, this oauthbridge reads version %d: use a matching oauthbridge release", s.path, hdr[8], uidVersion)
	}
	if !bytes.Equal(hdr, s.header) {
		return fmt.Errorf("imapgraph: UID map %s was encrypted with a different key than the token store's key: restore the original key, or move %s aside (IMAP clients then see a new UIDVALIDITY and download the messages again)", s.path, s.path)
	}
	good := int64(uidHeaderLen)
	for {
		var lb [4]byte
		if _, err := io.ReadFull(r, lb[:]); err != nil {
			break // clean end, or a torn length
		}
		n := binary.BigEndian.Uint32(lb[:])
		ns := s.aead.NonceSize()
		if n > maxRecordLen || int(n) < ns+s.aead.Overhead() {
			return s.damaged("bad record length")
		}
		buf := make([]byte, n)
		if _, err := io.ReadFull(r, buf); err != nil {
			break // torn last record
		}
		plain, err := s.aead.Open(nil, buf[:ns], buf[ns:], s.ad(s.seq))
		if err != nil {
			// A complete record that does not authenticate is damage
			// unless it is the very last bytes of the file (torn write
			// of a length that happened to fit).
			if _, perr := r.Peek(1); perr == nil {
				return s.damaged("record authentication failed")
			}
			break
		}
		var rec record
		if err := json.Unmarshal(plain, &rec); err != nil {
			return s.damaged("bad record")
		}
		s.apply(&rec)
		s.seq++
		s.appends++
		good += 4 + int64(n)
	}
	if good < fi.Size() {
		if err := s.f.Truncate(good); err != nil {
			return fmt.Errorf("imapgraph: truncate torn UID map record: %w", err)
		}
	}
	_, err = s.f.Seek(0, io.SeekEnd)
	return err
}

func (s *UIDStore) ad(seq uint64) []byte {
	ad := make([]byte, 0, uidHeaderLen+8)
	ad = append(ad, s.header...)
	return binary.BigEndian.AppendUint64(ad, seq)
}

func (s *UIDStore) apply(rec *record) {
	k := folderKey{rec.Account, rec.Folder}
	fu := s.folders[k]
	if fu == nil || rec.Reset {
		fu = &folderUIDs{ids: map[string]uint32{}}
		s.folders[k] = fu
	}
	if rec.Validity != 0 {
		fu.validity = rec.Validity
	}
	if rec.Next > fu.next {
		fu.next = rec.Next
	}
	for id, uid := range rec.Set {
		fu.ids[id] = uid
		if uid >= fu.next {
			fu.next = uid + 1
		}
	}
	for _, id := range rec.Del {
		delete(fu.ids, id)
	}
}

func (s *UIDStore) frame(rec *record, seq uint64) ([]byte, error) {
	plain, err := json.Marshal(rec)
	if err != nil {
		return nil, err
	}
	ns := s.aead.NonceSize()
	out := make([]byte, 4+ns, 4+ns+len(plain)+s.aead.Overhead())
	if _, err := rand.Read(out[4 : 4+ns]); err != nil {
		return nil, err
	}
	out = s.aead.Seal(out, out[4:4+ns], plain, s.ad(seq))
	binary.BigEndian.PutUint32(out[:4], uint32(len(out)-4))
	return out, nil
}

// appendLocked applies rec and makes it durable before returning.
func (s *UIDStore) appendLocked(rec *record) error {
	if s.f == nil {
		return errors.New("imapgraph: UID map is closed")
	}
	b, err := s.frame(rec, s.seq)
	if err != nil {
		return fmt.Errorf("imapgraph: encode UID map record: %w", err)
	}
	if _, err := s.f.Write(b); err != nil {
		return fmt.Errorf("imapgraph: write UID map %s: %w", s.path, err)
	}
	if err := s.f.Sync(); err != nil {
		return fmt.Errorf("imapgraph: sync UID map %s: %w", s.path, err)
	}
	s.apply(rec)
	s.seq++
	if s.appends++; s.appends >= CompactAfterRecords {
		// A failed compaction leaves the (valid) log as it was.
		_ = s.compactLocked()
	}
	return nil
}

// compactLocked rewrites the file as one snapshot record per folder
// (temporary file, fsync, rename, fsync of the directory).
func (s *UIDStore) compactLocked() error {
	dir := filepath.Dir(s.path)
	tmp, err := os.CreateTemp(dir, "."+UIDFileName+".tmp-*")
	if err != nil {
		return fmt.Errorf("imapgraph: compact UID map: %w", err)
	}
	defer os.Remove(tmp.Name()) // no-op after the rename
	w := bufio.NewWriter(tmp)
	w.Write(s.header)
	var seq uint64
	for k, fu := range s.folders {
		rec := &record{Account: k.account, Folder: k.folder, Validity: fu.validity, Next: fu.next, Reset: true, Set: fu.ids}
		b, err := s.frame(rec, seq)
		if err != nil {
			tmp.Close()
			return err
		}
		w.Write(b)
		seq++
	}
	err = w.Flush()
	if err == nil {
		err = tmp.Sync()
	}
	if err == nil {
		// The lock moves with the new file: lock it before the rename.
		err = syscall.Flock(int(tmp.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
	}
	if err == nil {
		err = os.Rename(tmp.Name(), s.path)
	}
	if err != nil {
		tmp.Close()
		return fmt.Errorf("imapgraph: compact UID map: %w", err)
	}
	if d, err := os.Open(dir); err == nil {
		d.Sync()
		d.Close()
	}
	s.f.Close()
	s.f = tmp
	s.seq = seq
	s.appends = 0
	return nil
}

// newValidity picks a UIDVALIDITY for a folder that has none (or lost its
// map): the current time in seconds, and always larger than the previous
// one, so a client can never mistake old UIDs for new ones.
func (s *UIDStore) newValidity(prev uint32) uint32 {
	v := uint32(s.now().Unix())
	if v <= prev {
		v = prev + 1
	}
	return v
}

// FolderState is a folder's UIDVALIDITY and UIDNEXT.
type FolderState struct {
	Validity uint32
	Next     uint32
}

// Open returns the folder's state, creating it (new UIDVALIDITY) if needed.
func (s *UIDStore) Open(account, folder string) (FolderState, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	fu := s.folders[folderKey{account, folder}]
	if fu != nil {
		return FolderState{fu.validity, fu.next}, nil
	}
	rec := &record{Account: account, Folder: folder, Validity: s.newValidity(0), Next: 1, Reset: true}
	if err := s.appendLocked(rec); err != nil {
		return FolderState{}, err
	}
	fu = s.folders[folderKey{account, folder}]
	return FolderState{fu.validity, fu.next}, nil
}

// Lookup returns the UID of id in the folder, or 0.
func (s *UIDStore) Lookup(account, folder, id string) uint32 {
	s.mu.Lock()
	defer s.mu.Unlock()
	if fu := s.folders[folderKey{account, folder}]; fu != nil {
		return fu.ids[id]
	}
	return 0
}

// Assign gives every id without a UID in the folder the next UIDs, in the
// order given, forgets the ids in gone, and stores both durably. It returns
// the UIDs of ids (existing or new) in order.
func (s *UIDStore) Assign(account, folder string, ids, gone []string) ([]uint32, FolderState, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	k := folderKey{account, folder}
	fu := s.folders[k]
	rec := &record{Account: account, Folder: folder, Del: gone}
	if fu == nil {
		rec.Reset, rec.Validity, rec.Next = true, s.newValidity(0), 1
		fu = &folderUIDs{next: 1, ids: map[string]uint32{}}
	}
	uids := make([]uint32, len(ids))
	next := fu.next
	for i, id := range ids {
		if uid, ok := fu.ids[id]; ok && !rec.Reset {
			uids[i] = uid
			continue
		}
		if uid, ok := rec.Set[id]; ok {
			uids[i] = uid
			continue
		}
		if rec.Set == nil {
			rec.Set = map[string]uint32{}
		}
		if next == 0 || next == ^uint32(0) {
			return nil, FolderState{}, fmt.Errorf("imapgraph: folder %q of account %q ran out of UIDs", folder, account)
		}
		rec.Set[id] = next
		uids[i] = next
		next++
	}
	if len(rec.Set) == 0 && len(rec.Del) == 0 && !rec.Reset {
		return uids, FolderState{fu.validity, fu.next}, nil
	}
	rec.Next = next
	if err := s.appendLocked(rec); err != nil {
		return nil, FolderState{}, err
	}
	fu = s.folders[k]
	return uids, FolderState{fu.validity, fu.next}, nil
}

// Known returns the ids the folder's map holds (to find those that vanished
// while the bridge was down).
func (s *UIDStore) Known(account, folder string) []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	fu := s.folders[folderKey{account, folder}]
	if fu == nil {
		return nil
	}
	ids := make([]string, 0, len(fu.ids))
	for id := range fu.ids {
		ids = append(ids, id)
	}
	return ids
}
