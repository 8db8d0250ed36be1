package tokens

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

func TestStoreRoundTripAndMode(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "state")
	s, accts, err := openStore(dir, "")
	if err != nil {
		t.Fatalf("openStore() = %v", err)
	}
	if len(accts) != 0 {
		t.Fatalf("new store has %d accounts", len(accts))
	}
	for _, p := range []string{dir, filepath.Join(dir, KeyFileName)} {
		fi, err := os.Stat(p)
		if err != nil {
			t.Fatal(err)
		}
		if perm := fi.Mode().Perm(); perm&0o077 != 0 {
			t.Errorf("%s mode %04o, want no group/other bits", p, perm)
		}
	}
	at := time.Now().Round(0).UTC()
	if _, err := s.update(map[string]*entry{"a": {RefreshToken: "rt-secret", AccessToken: "at-secret", Expiry: at, State: StateOK, Binding: "b"}}); err != nil {
		t.Fatalf("update() = %v", err)
	}
	fi, err := os.Stat(filepath.Join(dir, StoreFileName))
	if err != nil {
		t.Fatal(err)
	}
	if perm := fi.Mode().Perm(); perm != 0o600 {
		t.Errorf("store mode %04o, want 0600", perm)
	}
	raw, _ := os.ReadFile(filepath.Join(dir, StoreFileName))
	if strings.Contains(string(raw), "rt-secret") || strings.Contains(string(raw), "at-secret") {
		t.Fatal("store file holds a token in clear text")
	}
	ents, _ := os.ReadDir(dir)
	for _, e := range ents {
		if strings.Contains(e.Name(), ".tmp-") {
			t.Errorf("temporary file %s left behind", e.Name())
		}
	}
	_, got, err := openStore(dir, "")
	if err != nil {
		t.Fatalf("reopen: %v", err)
	}
	if e := got["a"]; e == nil || e.RefreshToken != "rt-secret" || !e.Expiry.Equal(at) {
		t.Fatalf("reopened entry = %+v", got["a"])
	}
}

func TestStoreWrongKey(t *testing.T) {
	dir := t.TempDir()
	s, _, err := openStore(dir, "")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.update(map[string]*entry{"a": {RefreshToken: "x"}}); err != nil {
		t.Fatal(err)
	}
	other := filepath.Join(t.TempDir(), "otherkey")
	if err := os.WriteFile(other, []byte(strings.Repeat("k", KeySize)), 0o600); err != nil {
		t.Fatal(err)
	}
	_, _, err = openStore(dir, other)
	if err == nil || !strings.Contains(err.Error(), "different key") || !strings.Contains(err.Error(), "restore the original key file") {
		t.Fatalf("openStore(wrong key) = %v, want a 'different key ... restore' error", err)
	}
	// Nothing was reset: the right key still opens the store.
	if _, accts, err := openStore(dir, ""); err != nil || accts["a"] == nil {
		t.Fatalf("right key after wrong key: %v %v", accts, err)
	}
}

func TestStoreCorrupt(t *testing.T) {
	dir := t.TempDir()
	s, _, err := openStore(dir, "")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.update(map[string]*entry{"a": {RefreshToken: "x"}}); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, StoreFileName)
	raw, _ := os.ReadFile(path)
	flipped := append([]byte(nil), raw...)
	flipped[len(flipped)-3] ^= 0x40
	for name, data := range map[string][]byte{
		"bit flip":  flipped,
		"truncated": raw[:20],
		"garbage":   []byte(strings.Repeat("not a store at all ", 10)),
		"empty":     {},
	} {
		t.Run(name, func(t *testing.T) {
			if err := os.WriteFile(path, data, 0o600); err != nil {
				t.Fatal(err)
			}
			_, _, err := openStore(dir, "")
			if err == nil || !strings.Contains(err.Error(), "damaged") || !strings.Contains(err.Error(), "move it aside") {
				t.Fatalf("openStore(%s) = %v, want a 'damaged ... move it aside' error", name, err)
			}
			// A damaged store is never overwritten by an update.
			s.last = fileStamp{}
			if _, err := s.update(map[string]*entry{"b": {RefreshToken: "y"}}); err == nil {
				t.Fatal("update() over a damaged store succeeded")
			}
			if got, _ := os.ReadFile(path); string(got) != string(data) {
				t.Fatal("damaged store was modified")
			}
		})
	}
}

func TestStoreKeyChecks(t *testing.T) {
	t.Run("short key", func(t *testing.T) {
		dir := t.TempDir()
		kf := filepath.Join(dir, "key")
		os.WriteFile(kf, []byte("too short\n"), 0o600)
		_, _, err := openStore(dir, kf)
		if err == nil || !strings.Contains(err.Error(), "holds 10 bytes, want exactly 32") {
			t.Fatalf("openStore() = %v", err)
		}
	})
	t.Run("group readable key", func(t *testing.T) {
		dir := t.TempDir()
		kf := filepath.Join(dir, "key")
		os.WriteFile(kf, make([]byte, 32), 0o640)
		os.Chmod(kf, 0o640)
		_, _, err := openStore(dir, kf)
		if err == nil || !strings.Contains(err.Error(), "chmod 600") {
			t.Fatalf("openStore() = %v, want chmod 600 advice", err)
		}
	})
	t.Run("world readable store", func(t *testing.T) {
		dir := t.TempDir()
		s, _, _ := openStore(dir, "")
		s.update(map[string]*entry{"a": {}})
		os.Chmod(filepath.Join(dir, StoreFileName), 0o644)
		_, _, err := openStore(dir, "")
		if err == nil || !strings.Contains(err.Error(), "chmod 600") {
			t.Fatalf("openStore() = %v, want chmod 600 advice", err)
		}
	})
	t.Run("missing key with store", func(t *testing.T) {
		dir := t.TempDir()
		s, _, _ := openStore(dir, "")
		s.update(map[string]*entry{"a": {}})
		os.Remove(filepath.Join(dir, KeyFileName))
		_, _, err := openStore(dir, "")
		if err == nil || !strings.Contains(err.Error(), "is missing") {
			t.Fatalf("openStore() = %v", err)
		}
		if _, err := os.Stat(filepath.Join(dir, KeyFileName)); !errors.Is(err, os.ErrNotExist) {
			t.Fatal("a new key was created next to an existing store")
		}
	})
}

// Two processes (here: two store handles) merging under the file lock
// never lose each other's accounts.
func TestStoreConcurrentMerge(t *testing.T) {
	dir := t.TempDir()
	s1, _, err := openStore(dir, "")
	if err != nil {
		t.Fatal(err)
	}
	s2, _, err := openStore(dir, "")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	for i := range 20 {
		wg.Add(2)
		go func() {
			defer wg.Done()
			s1.update(map[string]*entry{"one" + string(rune('a'+i)): {RefreshToken: "1"}})
		}()
		go func() {
			defer wg.Done()
			s2.update(map[string]*entry{"two" + string(rune('a'+i)): {RefreshToken: "2"}})
		}()
	}
	wg.Wait()
	got, _, err := s1.read()
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 40 {
		t.Fatalf("store has %d accounts after 40 merged writes, want 40", len(got))
	}
}

// An update never overwrites an entry from a newer sign-in; it returns it.
func TestStoreNewerLoginWins(t *testing.T) {
	dir := t.TempDir()
	s, _, _ := openStore(dir, "")
	now := time.Now()
	s.update(map[string]*entry{"a": {RefreshToken: "new", LoginID: "L2", LoginAt: now}})
	newer, err := s.update(map[string]*entry{"a": {RefreshToken: "old-chain", LoginID: "L1", LoginAt: now.Add(-time.Hour)}})
	if err != nil {
		t.Fatal(err)
	}
	if newer["a"] == nil || newer["a"].RefreshToken != "new" {
		t.Fatalf("update() newer = %v, want the newer sign-in", newer)
	}
	got, _, _ := s.read()
	if got["a"].RefreshToken != "new" {
		t.Fatalf("stored %q, want the newer sign-in kept", got["a"].RefreshToken)
	}
}

// TestStoreKeyFromCredential: with the systemd credential token-store-key
// present, the store is encrypted under it and no state_dir/key is created;
// without it the same store cannot be opened (the key really came from the
// credential).
func TestStoreKeyFromCredential(t *testing.T) {
	creds := t.TempDir()
	key := make([]byte, KeySize)
	for i := range key {
		key[i] = byte(i*7 + 3)
	}
	if err := os.WriteFile(filepath.Join(creds, CredentialKeyName), key, 0o400); err != nil {
		t.Fatal(err)
	}
	t.Setenv("CREDENTIALS_DIRECTORY", creds)
	dir := filepath.Join(t.TempDir(), "state")
	kf := credentialKeyFile()
	if kf != filepath.Join(creds, CredentialKeyName) {
		t.Fatalf("credentialKeyFile() = %q", kf)
	}
	s, _, err := openStore(dir, kf)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.update(map[string]*entry{"a": {RefreshToken: "rt", State: StateOK, Binding: "b"}}); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(dir, KeyFileName)); !os.IsNotExist(err) {
		t.Errorf("state_dir/key exists (%v); the credential should have been used", err)
	}
	t.Setenv("CREDENTIALS_DIRECTORY", "")
	if credentialKeyFile() != "" {
		t.Error("credentialKeyFile() without CREDENTIALS_DIRECTORY")
	}
	if _, _, err := openStore(dir, ""); err == nil {
		t.Error("store opened without the credential key")
	}
}

// TestStoreFilesFollowDirOwner: files root creates in a state directory owned
// by the service's (dynamic) user end up owned by that user, so the service
// can still read them.
func TestStoreFilesFollowDirOwner(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to create files for another owner")
	}
	dir := filepath.Join(t.TempDir(), "state")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	const uid, gid = 61234, 61235 // like a systemd DynamicUser
	if err := os.Chown(dir, uid, gid); err != nil {
		t.Fatal(err)
	}
	s, _, err := openStore(dir, "")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.update(map[string]*entry{"a": {RefreshToken: "rt", State: StateOK, Binding: "b"}}); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{KeyFileName, LockFileName, StoreFileName} {
		fi, err := os.Stat(filepath.Join(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		st := fi.Sys().(*syscall.Stat_t)
		if st.Uid != uid || st.Gid != gid {
			t.Errorf("%s owned by %d:%d, want %d:%d", name, st.Uid, st.Gid, uid, gid)
		}
		if fi.Mode().Perm() != 0o600 {
			t.Errorf("%s mode %04o", name, fi.Mode().Perm())
		}
	}
}

// TestStoreForeignChangeStaysVisible: when another process (the CLI's
// `login -local`) writes the store and this process then writes it too, the
// other process's change is merged into our write; the poll that adopts
// foreign sign-ins must still see the file as changed.
func TestStoreForeignChangeStaysVisible(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "state")
	daemon, _, err := openStore(dir, "")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := daemon.update(map[string]*entry{"y": {RefreshToken: "y1", State: StateOK, Binding: "by"}}); err != nil {
		t.Fatal(err)
	}
	cli, _, err := openStore(dir, "")
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(10 * time.Millisecond) // distinct mtimes on coarse filesystems
	if _, err := cli.update(map[string]*entry{"x": {RefreshToken: "x1", LoginID: "l1", LoginAt: time.Now(), State: StateOK, Binding: "bx"}}); err != nil {
		t.Fatal(err)
	}
	// The daemon refreshes y before its poll runs.
	if _, err := daemon.update(map[string]*entry{"y": {RefreshToken: "y2", State: StateOK, Binding: "by"}}); err != nil {
		t.Fatal(err)
	}
	daemon.mu.Lock()
	last := daemon.last
	daemon.mu.Unlock()
	if daemon.stamp() == last {
		t.Fatal("after merging a foreign change into its own write, the daemon's poll would see no change and never adopt the CLI's sign-in")
	}
	disk, _, err := daemon.read()
	if err != nil {
		t.Fatal(err)
	}
	if disk["x"] == nil || disk["x"].RefreshToken != "x1" || disk["y"].RefreshToken != "y2" {
		t.Errorf("merged store = %+v", disk)
	}
}
