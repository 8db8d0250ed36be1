package tokens

import (
	"bytes"
	"crypto/cipher"
	"crypto/rand"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"time"

	"golang.org/x/crypto/chacha20poly1305"
)

// File names inside state_dir.
const (
	StoreFileName = "tokens.enc"  // the encrypted token store
	LockFileName  = "tokens.lock" // flock(2) target for read-merge-write
	KeyFileName   = "key"         // default key file: 32 raw random bytes
	KeySize       = 32            // XChaCha20-Poly1305 key length
)

// Store layout: magic(8) | version(1) | keyID(8) | nonce(24) | ciphertext.
// The first 17 bytes are the AEAD's additional data. keyID is a fingerprint
// of the key, so a wrong key is told apart from a damaged file.
var storeMagic = []byte("OBTOKENS")

const (
	storeVersion   = 1
	storeHeaderLen = 8 + 1 + 8
)

// entry is what the store keeps per account. It holds tokens, so it is
// never logged or shown; Status copies the harmless fields.
type entry struct {
	// Version is the row version in a shared store (compare-and-swap);
	// the file store does not keep it.
	Version int64 `json:"-"`

	RefreshToken string    `json:"refresh_token,omitempty"`
	AccessToken  string    `json:"access_token,omitempty"`
	Expiry       time.Time `json:"expiry,omitzero"`
	Issued       time.Time `json:"issued,omitzero"` // when AccessToken was obtained; Expiry-Issued is its lifetime
	SignedInAs   string    `json:"signed_in_as,omitempty"`
	LastRefresh  time.Time `json:"last_refresh,omitzero"`
	State        State     `json:"state,omitempty"`
	LastError    string    `json:"last_error,omitempty"`
	ErrorKind    Kind      `json:"error_kind,omitempty"`
	AADSTS       int       `json:"aadsts,omitempty"`
	Fix          string    `json:"fix,omitempty"`
	LoginID      string    `json:"login_id,omitempty"` // random id of the sign-in that produced RefreshToken
	LoginAt      time.Time `json:"login_at,omitzero"`
	// Binding names the app registration, flow and person the tokens belong
	// to; an entry whose binding differs from the configuration is ignored.
	Binding string `json:"binding"`

	// The Microsoft Graph access token, from the same refresh token.
	GraphAccessToken string    `json:"graph_access_token,omitempty"`
	GraphExpiry      time.Time `json:"graph_expiry,omitzero"`
	GraphIssued      time.Time `json:"graph_issued,omitzero"`
	// GraphScope is the permissions (graphScopeKey) the Graph token was
	// redeemed for; a token for other permissions than the account's
	// settings need now is not used. "" (app flow, or a token stored by
	// an older version, which asked for every permission): any.
	GraphScope string `json:"graph_scope,omitempty"`

	// KeptPath is the send path of a send_via = "auto" account as the
	// SMTP proxy last reported it (sendpath.go), so that a switch to
	// Microsoft Graph survives a restart. Nil in entries of older versions.
	KeptPath *keptPath `json:"send_path,omitempty"`
}

type storeFile struct {
	Version  int               `json:"version"`
	Accounts map[string]*entry `json:"accounts"`
}

// fileStamp identifies one version of the store file for change polling.
type fileStamp struct {
	mod  time.Time
	size int64
	ino  uint64
}

// store is the encrypted token file. Writers in this process are
// serialised by mu; writers in other processes (the CLI while the daemon
// runs) by an exclusive flock on LockFileName.
type store struct {
	dir, path, lockPath string
	aead                cipher.AEAD
	keyID               [8]byte

	mu        sync.Mutex
	last      fileStamp                             // stamp after our last read or write
	writeFile func(tmp *os.File, data []byte) error // test hook: simulate a full or read-only disk
}

// openStore opens (creating state_dir and the key if needed) the store in
// dir and returns its current contents. It never resets a store it cannot
// read: a wrong key or a damaged file is an error that says what to do.
func openStore(dir, keyFile string) (*store, map[string]*entry, error) {
	if dir == "" {
		return nil, nil, errors.New("tokens: state_dir is empty")
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, nil, fmt.Errorf("tokens: create state_dir: %w", err)
	}
	s := &store{
		dir:      dir,
		path:     filepath.Join(dir, StoreFileName),
		lockPath: filepath.Join(dir, LockFileName),
	}
	if keyFile == "" {
		keyFile = filepath.Join(dir, KeyFileName)
	}
	_, err := os.Stat(s.path)
	storeExists := err == nil
	key, err := loadKey(keyFile, !storeExists, s.path)
	if err != nil {
		return nil, nil, err
	}
	s.aead, err = chacha20poly1305.NewX(key)
	if err != nil {
		return nil, nil, fmt.Errorf("tokens: key: %w", err)
	}
	s.keyID = keyID(key)
	clear(key)
	accts, stamp, err := s.read()
	if err != nil {
		return nil, nil, err
	}
	s.last = stamp
	s.removeStaleTemps()
	return s, accts, nil
}

// removeStaleTemps deletes temporary files left by a writer that was killed
// between creating its temp file and the rename (SIGKILL, power loss). They
// never replace the store, but they would pile up. Writers hold the lock
// while their temp file exists, so under the lock every temp file is stale.
func (s *store) removeStaleTemps() {
	unlock, err := s.lock()
	if err != nil {
		return
	}
	defer unlock()
	stale, _ := filepath.Glob(filepath.Join(s.dir, "."+StoreFileName+".tmp-*"))
	for _, f := range stale {
		os.Remove(f)
	}
}

func keyID(key []byte) [8]byte {
	h := sha256.Sum256(append([]byte("oauthbridge token store key id\x00"), key...))
	var id [8]byte
	copy(id[:], h[:8])
	return id
}

// loadKey reads the 32-byte key, creating it (0600, crypto/rand) when it is
// missing and create is set. create is false when a store already exists:
// a new key could never open it.
func loadKey(path string, create bool, storePath string) ([]byte, error) {
	fi, err := os.Stat(path)
	if errors.Is(err, fs.ErrNotExist) {
		if !create {
			return nil, fmt.Errorf("tokens: key file %s is missing but the token store %s exists: restore the key file from backup, or move %s aside and log every account in again", path, storePath, storePath)
		}
		return createKey(path)
	}
	if err != nil {
		return nil, fmt.Errorf("tokens: key file: %w", err)
	}
	if err := checkPrivate(path, fi); err != nil {
		return nil, err
	}
	key, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("tokens: read key file: %w", err)
	}
	if len(key) != KeySize {
		n := len(key)
		clear(key)
		return nil, fmt.Errorf("tokens: key file %s holds %d bytes, want exactly %d raw random bytes: restore the right key file (if it was created by hand, create it with 'head -c 32 /dev/urandom > %s')", path, n, KeySize, path)
	}
	return key, nil
}

func createKey(path string) ([]byte, error) {
	key := make([]byte, KeySize)
	if _, err := rand.Read(key); err != nil {
		return nil, fmt.Errorf("tokens: generate key: %w", err)
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return nil, fmt.Errorf("tokens: create key file: %w", err)
	}
	matchDirOwner(f, filepath.Dir(path))
	_, err = f.Write(key)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = syncDir(filepath.Dir(path))
	}
	if err != nil {
		os.Remove(path)
		return nil, fmt.Errorf("tokens: write key file: %w", err)
	}
	return key, nil
}

// checkPrivate refuses files that the group or others may access.
func checkPrivate(path string, fi fs.FileInfo) error {
	if perm := fi.Mode().Perm(); perm&0o077 != 0 {
		return fmt.Errorf("tokens: %s is accessible by group or others (mode %04o); it protects OAuth tokens: run 'chmod 600 %s'", path, perm, path)
	}
	return nil
}

func stampOf(fi fs.FileInfo) fileStamp {
	st := fileStamp{mod: fi.ModTime(), size: fi.Size()}
	if sys, ok := fi.Sys().(*syscall.Stat_t); ok {
		st.ino = uint64(sys.Ino)
	}
	return st
}

// stamp returns the store file's current stamp (zero if it is missing).
func (s *store) stamp() fileStamp {
	fi, err := os.Stat(s.path)
	if err != nil {
		return fileStamp{}
	}
	return stampOf(fi)
}

// read returns the decrypted contents; a missing file is an empty store.
func (s *store) read() (map[string]*entry, fileStamp, error) {
	f, err := os.Open(s.path)
	if errors.Is(err, fs.ErrNotExist) {
		return map[string]*entry{}, fileStamp{}, nil
	}
	if err != nil {
		return nil, fileStamp{}, fmt.Errorf("tokens: open token store: %w", err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, fileStamp{}, fmt.Errorf("tokens: stat token store: %w", err)
	}
	if err := checkPrivate(s.path, fi); err != nil {
		return nil, fileStamp{}, err
	}
	var buf bytes.Buffer
	if _, err := buf.ReadFrom(f); err != nil {
		return nil, fileStamp{}, fmt.Errorf("tokens: read token store: %w", err)
	}
	accts, err := s.decode(buf.Bytes())
	if err != nil {
		return nil, fileStamp{}, err
	}
	return accts, stampOf(fi), nil
}

func (s *store) corrupt(why string) error {
	return fmt.Errorf("tokens: token store %s is damaged (%s): restore it from a backup, or move it aside and log every account in again ('oauthbridge login ACCOUNT')", s.path, why)
}

func (s *store) decode(data []byte) (map[string]*entry, error) {
	ns := s.aead.NonceSize()
	if len(data) < storeHeaderLen+ns+s.aead.Overhead() {
		return nil, s.corrupt("too short")
	}
	if !bytes.Equal(data[:8], storeMagic) {
		return nil, s.corrupt("not an oauthbridge token store")
	}
	if data[8] != storeVersion {
		return nil, fmt.Errorf("tokens: token store %s has format version %d, this oauthbridge reads version %d: use a matching oauthbridge release", s.path, data[8], storeVersion)
	}
	if !bytes.Equal(data[9:storeHeaderLen], s.keyID[:]) {
		return nil, fmt.Errorf("tokens: token store %s was encrypted with a different key than the configured key file: restore the original key file, or move %s aside and log every account in again ('oauthbridge login ACCOUNT')", s.path, s.path)
	}
	nonce := data[storeHeaderLen : storeHeaderLen+ns]
	plain, err := s.aead.Open(nil, nonce, data[storeHeaderLen+ns:], data[:storeHeaderLen])
	if err != nil {
		return nil, s.corrupt("authentication failed")
	}
	defer clear(plain)
	var sf storeFile
	if err := json.Unmarshal(plain, &sf); err != nil {
		return nil, s.corrupt("bad contents")
	}
	if sf.Accounts == nil {
		sf.Accounts = map[string]*entry{}
	}
	return sf.Accounts, nil
}

func (s *store) encode(accts map[string]*entry) ([]byte, error) {
	plain, err := json.Marshal(storeFile{Version: storeVersion, Accounts: accts})
	if err != nil {
		return nil, fmt.Errorf("tokens: encode token store: %w", err)
	}
	defer clear(plain)
	out := make([]byte, 0, storeHeaderLen+s.aead.NonceSize()+len(plain)+s.aead.Overhead())
	out = append(out, storeMagic...)
	out = append(out, storeVersion)
	out = append(out, s.keyID[:]...)
	nonce := make([]byte, s.aead.NonceSize())
	if _, err := rand.Read(nonce); err != nil {
		return nil, fmt.Errorf("tokens: nonce: %w", err)
	}
	out = append(out, nonce...)
	return s.aead.Seal(out, nonce, plain, out[:storeHeaderLen]), nil
}

// update merges changes into the store under the exclusive file lock: the
// file is read, only the named accounts are replaced, and the result is
// written atomically. An entry on disk that comes from a newer sign-in
// (made by another process) is not overwritten; it is returned in newer so
// that the caller can adopt it.
func (s *store) update(changes map[string]*entry) (newer map[string]*entry, err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	unlock, err := s.lock()
	if err != nil {
		return nil, err
	}
	defer unlock()
	cur, readStamp, err := s.read()
	if err != nil {
		return nil, err // never overwrite a store we cannot read
	}
	for name, e := range changes {
		if d := cur[name]; d != nil && d.LoginID != e.LoginID && d.LoginAt.After(e.LoginAt) {
			if newer == nil {
				newer = map[string]*entry{}
			}
			newer[name] = d
			continue
		}
		cp := *e
		cur[name] = &cp
	}
	data, err := s.encode(cur)
	if err != nil {
		return newer, err
	}
	stamp, err := s.writeAtomic(data)
	if err != nil {
		return newer, err
	}
	// Advance last only if nobody else changed the file since we last looked:
	// otherwise their change (a CLI sign-in) would be merged into our write
	// and never seen by the poll that adopts it.
	if readStamp == s.last {
		s.last = stamp
	}
	return newer, nil
}

func (s *store) lock() (func(), error) {
	f, err := os.OpenFile(s.lockPath, os.O_RDWR|os.O_CREATE, 0o600)
	if err == nil {
		matchDirOwner(f, s.dir)
	}
	if err != nil {
		return nil, fmt.Errorf("tokens: open lock file: %w", err)
	}
	for {
		err = syscall.Flock(int(f.Fd()), syscall.LOCK_EX)
		if !errors.Is(err, syscall.EINTR) {
			break
		}
	}
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("tokens: lock %s: %w", s.lockPath, err)
	}
	return func() {
		syscall.Flock(int(f.Fd()), syscall.LOCK_UN)
		f.Close()
	}, nil
}

// writeAtomic writes data to a temporary file in the same directory,
// fsyncs it, renames it over the store and fsyncs the directory. It
// returns the stamp of what it wrote (a rename keeps inode and mtime), so
// that a later change by another process is never mistaken for our own.
func (s *store) writeAtomic(data []byte) (stamp fileStamp, err error) {
	tmp, err := os.CreateTemp(s.dir, "."+StoreFileName+".tmp-*") // mode 0600
	if err != nil {
		return stamp, fmt.Errorf("tokens: write token store: %w", err)
	}
	defer func() {
		if err != nil {
			tmp.Close()
			os.Remove(tmp.Name())
			err = fmt.Errorf("tokens: write token store: %w", err)
		}
	}()
	if err = tmp.Chmod(0o600); err != nil {
		return stamp, err
	}
	matchDirOwner(tmp, s.dir)
	if s.writeFile != nil {
		err = s.writeFile(tmp, data)
	} else {
		_, err = tmp.Write(data)
	}
	if err != nil {
		return stamp, err
	}
	if err = tmp.Sync(); err != nil {
		return stamp, err
	}
	fi, err := tmp.Stat()
	if err != nil {
		return stamp, err
	}
	if err = tmp.Close(); err != nil {
		return stamp, err
	}
	if err = os.Rename(tmp.Name(), s.path); err != nil {
		return stamp, err
	}
	return stampOf(fi), syncDir(s.dir)
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

// matchDirOwner gives a file root just created in the state directory to the
// directory's owner. Under systemd's DynamicUser=yes the state directory
// belongs to the service's user; a sysadmin running `oauthbridge login
// -local` or `status` as root with the daemon stopped must not leave a key,
// lock or store the service can no longer read. A no-op unless running as
// root.
func matchDirOwner(f *os.File, dir string) {
	if os.Geteuid() != 0 {
		return
	}
	fi, err := os.Stat(dir)
	if err != nil {
		return
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok || st.Uid == 0 {
		return
	}
	_ = f.Chown(int(st.Uid), int(st.Gid))
}
