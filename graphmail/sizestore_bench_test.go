package graphmail

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"testing"

	"github.com/oauthbridge/oauthbridge/graph"
)

// fullSizeStore returns a store in dir holding DefaultMaxStoredSizes sizes
// of Graph-length ids (152 characters) in 10 folders.
func fullSizeStore(b *testing.B, dir string, key []byte) *SizeStore {
	s := NewSizeStore(SizeStoreOptions{Dir: dir, Key: func() ([]byte, error) { return bytes.Clone(key), nil }})
	mb := (&Registry{Sizes: s}).Get("helpdesk", "sig", func() *Mailbox {
		return New(&graph.Client{BaseURL: "https://graph.microsoft.com"}, "helpdesk@contoso.com", Options{})
	})
	for i := range DefaultMaxStoredSizes {
		id := fmt.Sprintf("AAkALgAAAAAAHYQDEapmEc2byACqAC-EWg0A%0116d", i)
		s.put(mb.sizeScope, fmt.Sprintf("AAMkAGfolder%02d", i%10), id, int64(2000+i), int64(2500+i))
	}
	return s
}

// BenchmarkSizeStoreFlush100k rewrites a full size file (what one batched
// write costs at the bound) and reports its size and the store's heap per
// entry.
//
//	go test -run '^$' -bench SizeStore ./graphmail/
func BenchmarkSizeStoreFlush100k(b *testing.B) {
	dir, key := b.TempDir(), sizeKey()
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	s := fullSizeStore(b, dir, key)
	runtime.GC()
	runtime.ReadMemStats(&after)
	defer s.Close()
	for b.Loop() {
		s.mu.Lock()
		s.dirty = true
		s.mu.Unlock()
		if err := s.Flush(); err != nil {
			b.Fatal(err)
		}
	}
	fi, err := os.Stat(filepath.Join(dir, SizeFileName))
	if err != nil {
		b.Fatal(err)
	}
	b.ReportMetric(float64(fi.Size())/DefaultMaxStoredSizes, "file-bytes/size")
	b.ReportMetric(float64(int64(after.HeapAlloc)-int64(before.HeapAlloc))/DefaultMaxStoredSizes, "heap-bytes/size")
}

// BenchmarkSizeStoreLoad100k reads a full size file (the cost added to the
// first Graph-served login after a start).
func BenchmarkSizeStoreLoad100k(b *testing.B) {
	dir, key := b.TempDir(), sizeKey()
	if err := fullSizeStore(b, dir, key).Close(); err != nil {
		b.Fatal(err)
	}
	for b.Loop() {
		s := NewSizeStore(SizeStoreOptions{Dir: dir, Key: func() ([]byte, error) { return bytes.Clone(key), nil }})
		s.mu.Lock()
		s.loadLocked()
		n := s.count
		s.mu.Unlock()
		if n != DefaultMaxStoredSizes {
			b.Fatalf("loaded %d sizes", n)
		}
		s.Close()
	}
}
