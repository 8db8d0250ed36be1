package graphmail_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"testing"

	"github.com/oauthbridge/oauthbridge/graph"
	"github.com/oauthbridge/oauthbridge/graphmail"
)

// start is a bridge start over the fake: a new size store reading dir and
// a new registry (empty lists).
func (e *env) start(t *testing.T, dir string, key []byte) (*graphmail.SizeStore, *graphmail.Mailbox) {
	t.Helper()
	s := graphmail.NewSizeStore(graphmail.SizeStoreOptions{Dir: dir, Key: func() ([]byte, error) { return bytes.Clone(key), nil }})
	t.Cleanup(func() { s.Close() })
	r := &graphmail.Registry{Sizes: s}
	return s, r.Get("helpdesk", "sig", func() *graphmail.Mailbox { return e.mailbox(graphmail.Options{}) })
}

// Sizes measured before a restart are known after it without reading a
// message; the entries of messages that left a folder are pruned when it
// is listed (changes, or a full listing after a restart), and a message
// that moved is measured again in its new folder.
func TestSizesSurviveRestartAndArePruned(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.f.SetGraphSizeSkew(40) // Exchange's size is not the MIME size
	deliver(t, e.f, 5)
	dir, key := t.TempDir(), make([]byte, 32)
	rand.Read(key)
	ctx := context.Background()

	s, mb := e.start(t, dir, key)
	inbox, err := mb.FolderID(ctx, "Inbox")
	if err != nil {
		t.Fatal(err)
	}
	snap, err := mb.Snapshot(ctx, inbox)
	if err != nil || len(snap) != 5 {
		t.Fatalf("Snapshot = %d, %v", len(snap), err)
	}
	want := map[string]int64{}
	for _, en := range snap {
		n, err := mb.MIMESize(ctx, inbox, en.ID)
		if err != nil {
			t.Fatal(err)
		}
		want[en.ID] = n
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}

	reads := e.f.GraphContentRequests()
	s, mb = e.start(t, dir, key)
	snap, err = mb.Snapshot(ctx, inbox)
	if err != nil || len(snap) != 5 {
		t.Fatalf("Snapshot after restart = %d, %v", len(snap), err)
	}
	for _, en := range snap {
		if en.MIMESize != want[en.ID] || en.MIMESize == en.Size {
			t.Errorf("after restart %s: MIMESize %d, want %d (Exchange's size %d)", en.ID, en.MIMESize, want[en.ID], en.Size)
		}
		if n, err := mb.MIMESize(ctx, inbox, en.ID); err != nil || n != want[en.ID] {
			t.Errorf("MIMESize = %d, %v", n, err)
		}
	}
	if n := e.f.GraphContentRequests() - reads; n != 0 {
		t.Errorf("%d message reads after the restart, want 0", n)
	}

	// One deleted, one moved: the next round of changes prunes both.
	if err := mb.Delete(ctx, snap[0].ID); err != nil {
		t.Fatal(err)
	}
	moved, err := mb.Move(ctx, snap[1].ID, graph.FolderDeletedItems)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := mb.Snapshot(ctx, inbox); err != nil {
		t.Fatal(err)
	}
	if s.Len() != 3 {
		t.Errorf("after a delete and a move: %d sizes, want 3", s.Len())
	}
	deleted, err := mb.FolderID(ctx, graph.FolderDeletedItems)
	if err != nil {
		t.Fatal(err)
	}
	del, err := mb.Snapshot(ctx, deleted)
	if err != nil || len(del) != 1 || del[0].ID != moved || del[0].MIMESize != -1 {
		t.Errorf("Deleted Items = %+v, %v: a moved message is measured again in its new folder", del, err)
	}
	s.Close()

	// A message deleted while the bridge is down: the first full listing
	// after the restart drops its size.
	if err := e.c.DeleteMessage(ctx, box, snap[2].ID); err != nil {
		t.Fatal(err)
	}
	s, mb = e.start(t, dir, key)
	if s.Len() != 3 {
		t.Fatalf("after restart %d sizes", s.Len())
	}
	if _, err := mb.Snapshot(ctx, inbox); err != nil {
		t.Fatal(err)
	}
	if s.Len() != 2 {
		t.Errorf("after the full listing %d sizes, want 2", s.Len())
	}
}
