package graphmail_test

import (
	"context"
	"fmt"
	"runtime"
	"slices"
	"testing"

	"github.com/oauthbridge/oauthbridge/graph"
	"github.com/oauthbridge/oauthbridge/graphmail"
)

// BenchmarkSync10k lists a 10,000-message folder (a full delta round in
// pages of DefaultPageSize) and reports the heap one Mailbox keeps for it,
// per message (measured by releasing the Mailbox).
//
//	go test -run '^$' -bench Sync10k ./graphmail/
func BenchmarkSync10k(b *testing.B) {
	const n = 10000
	e := newEnv(b)
	for i := range n {
		if err := e.f.Deliver(box, []byte(fmt.Sprintf("Subject: %d\r\n\r\nbody\r\n", i))); err != nil {
			b.Fatal(err)
		}
	}
	ctx := context.Background()
	var kept float64
	for b.Loop() {
		mb := e.mailbox(graphmail.Options{})
		snap, err := mb.Snapshot(ctx, graph.FolderInbox)
		if err != nil || len(snap) != n {
			b.Fatalf("Snapshot = %d, %v", len(snap), err)
		}
		snap = nil
		var with, without runtime.MemStats
		runtime.GC()
		runtime.ReadMemStats(&with)
		runtime.KeepAlive(mb)
		mb = nil
		runtime.GC()
		runtime.ReadMemStats(&without)
		kept = float64(int64(with.HeapAlloc)-int64(without.HeapAlloc)) / n
	}
	b.ReportMetric(kept, "heap-bytes/msg")
}

// BenchmarkSync10kKeptSizes is BenchmarkSync10k after a restart with the
// 10,000 sizes kept: the full round applies every size from the store
// and prunes it.
func BenchmarkSync10kKeptSizes(b *testing.B) {
	const n = 10000
	e := newEnv(b)
	for i := range n {
		if err := e.f.Deliver(box, []byte(fmt.Sprintf("Subject: %d\r\n\r\nbody\r\n", i))); err != nil {
			b.Fatal(err)
		}
	}
	ctx := context.Background()
	key := make([]byte, 32)
	s := graphmail.NewSizeStore(graphmail.SizeStoreOptions{Dir: b.TempDir(), Key: func() ([]byte, error) { return slices.Clone(key), nil }})
	defer s.Close()
	mb := (&graphmail.Registry{Sizes: s}).Get("helpdesk", "sig", func() *graphmail.Mailbox { return e.mailbox(graphmail.Options{}) })
	snap, err := mb.Snapshot(ctx, graph.FolderInbox)
	if err != nil {
		b.Fatal(err)
	}
	for _, m := range snap {
		mb.NoteMIMESize(graph.FolderInbox, m.ID, m.Size)
	}
	for b.Loop() {
		mb := (&graphmail.Registry{Sizes: s}).Get("helpdesk", "sig", func() *graphmail.Mailbox { return e.mailbox(graphmail.Options{}) })
		snap, err := mb.Snapshot(ctx, graph.FolderInbox)
		if err != nil || len(snap) != n || snap[n-1].MIMESize < 0 {
			b.Fatalf("Snapshot = %d, %v", len(snap), err)
		}
	}
}
