package imapgraph

import (
	"crypto/rand"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

func testKey() []byte {
	k := make([]byte, 32)
	rand.Read(k)
	return k
}

func TestUIDStorePersistsAndNeverReuses(t *testing.T) {
	dir, key := t.TempDir(), testKey()
	s, err := OpenUIDStore(dir, key)
	if err != nil {
		t.Fatal(err)
	}
	uids, st, err := s.Assign("a", "inbox", []string{"x", "y", "z"}, nil)
	if err != nil || !slices.Equal(uids, []uint32{1, 2, 3}) || st.Next != 4 || st.Validity == 0 {
		t.Fatalf("Assign = %v %+v %v", uids, st, err)
	}
	if _, _, err := s.Assign("a", "inbox", nil, []string{"z"}); err != nil {
		t.Fatal(err)
	}
	// A second process on the same state_dir is refused.
	if _, err := OpenUIDStore(dir, key); err == nil || !strings.Contains(err.Error(), "another oauthbridge process") {
		t.Fatalf("second open: %v", err)
	}
	s.Close()

	s, err = OpenUIDStore(dir, key)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	uids, st2, err := s.Assign("a", "inbox", []string{"y", "x", "z"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	// z was forgotten: it comes back with a new UID, never 3 again.
	if !slices.Equal(uids, []uint32{2, 1, 4}) || st2.Validity != st.Validity || st2.Next != 5 {
		t.Fatalf("after reopen: %v %+v (validity before %d)", uids, st2, st.Validity)
	}
	if st3, _ := s.Open("a", "other"); st3.Validity == 0 || st3.Next != 1 {
		t.Fatalf("new folder state %+v", st3)
	}
}

func TestUIDStoreWrongKeyAndDamage(t *testing.T) {
	dir, key := t.TempDir(), testKey()
	s, err := OpenUIDStore(dir, key)
	if err != nil {
		t.Fatal(err)
	}
	s.Assign("a", "inbox", []string{"x"}, nil)
	s.Assign("a", "inbox", []string{"y"}, nil)
	s.Close()
	if _, err := OpenUIDStore(dir, testKey()); err == nil || !strings.Contains(err.Error(), "different key") {
		t.Fatalf("wrong key: %v", err)
	}
	p := filepath.Join(dir, UIDFileName)
	data, _ := os.ReadFile(p)
	// A torn last record (crash mid-write) is dropped, the rest is kept.
	os.WriteFile(p, append(data, 0, 0, 0, 80, 1, 2, 3), 0o600)
	s, err = OpenUIDStore(dir, key)
	if err != nil {
		t.Fatalf("torn tail: %v", err)
	}
	if s.Lookup("a", "inbox", "y") != 2 {
		t.Fatal("record lost after a torn tail")
	}
	s.Assign("a", "sent", []string{"q"}, nil)
	s.Close()
	// A flipped bit in a record followed by others is damage, reported
	// with the fix. (The last record failing is taken for a torn write.)
	data, _ = os.ReadFile(p)
	data[uidHeaderLen+4+30] ^= 1
	os.WriteFile(p, data, 0o600)
	if _, err := OpenUIDStore(dir, key); err == nil || !strings.Contains(err.Error(), "move it aside") {
		t.Fatalf("damaged file: %v", err)
	}
	os.Chmod(p, 0o644)
	if _, err := OpenUIDStore(dir, key); err == nil || !strings.Contains(err.Error(), "chmod 600") {
		t.Fatalf("readable file: %v", err)
	}
}

func TestUIDStoreCompacts(t *testing.T) {
	dir, key := t.TempDir(), testKey()
	s, err := OpenUIDStore(dir, key)
	if err != nil {
		t.Fatal(err)
	}
	for i := range CompactAfterRecords + 10 {
		if _, _, err := s.Assign("a", "inbox", []string{fmt.Sprint("m", i)}, []string{fmt.Sprint("m", i-1)}); err != nil {
			t.Fatal(err)
		}
	}
	fi, _ := os.Stat(filepath.Join(dir, UIDFileName))
	if fi.Size() > 10<<10 {
		t.Errorf("UID map is %d bytes after compaction", fi.Size())
	}
	s.Close()
	s, err = OpenUIDStore(dir, key)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if got := s.Known("a", "inbox"); len(got) != 1 || s.Lookup("a", "inbox", got[0]) != CompactAfterRecords+10 {
		t.Fatalf("after compaction: %v", got)
	}
	if st, _ := s.Open("a", "inbox"); st.Next != CompactAfterRecords+11 {
		t.Fatalf("UIDNEXT after compaction %d", st.Next)
	}
}
