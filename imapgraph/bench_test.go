package imapgraph

import (
	"fmt"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-imap/v2"
)

// fill delivers n small messages to the Inbox.
func (m *memMailbox) fill(n int) {
	for i := range n {
		m.deliver("f-inbox", testMIME(i, fmt.Sprint("ticket ", i)), day.Add(time.Duration(i)*time.Second))
	}
}

// BenchmarkSelect10k measures SELECT INBOX on a 10,000-message folder:
// cold (after a restart: full delta listing, UIDs from the persisted map)
// and warm (the shared folder cache, a delta with no changes). It reports
// the heap the cache keeps for the folder.
func BenchmarkSelect10k(b *testing.B) {
	const n = 10000
	b.Run("cold", func(b *testing.B) {
		h := newHarness(b, nil)
		h.mb.fill(n)
		c := h.dial(nil)
		if _, err := c.Select("INBOX", nil).Wait(); err != nil { // assign the UIDs once
			b.Fatal(err)
		}
		c.Close()
		b.ResetTimer()
		for range b.N {
			b.StopTimer()
			h.restart()
			c := h.dial(nil)
			b.StartTimer()
			sel, err := c.Select("INBOX", nil).Wait()
			if err != nil || sel.NumMessages != n {
				b.Fatal(sel, err)
			}
			b.StopTimer()
			c.Close()
			b.StartTimer()
		}
	})
	b.Run("warm", func(b *testing.B) {
		h := newHarness(b, nil)
		h.mb.fill(n)
		c := h.dial(nil)
		var before runtime.MemStats
		runtime.GC()
		runtime.ReadMemStats(&before)
		if _, err := c.Select("INBOX", nil).Wait(); err != nil {
			b.Fatal(err)
		}
		var after runtime.MemStats
		runtime.GC()
		runtime.ReadMemStats(&after)
		b.ResetTimer()
		for range b.N {
			sel, err := c.Select("INBOX", nil).Wait()
			if err != nil || sel.NumMessages != n {
				b.Fatal(sel, err)
			}
		}
		b.StopTimer()
		b.ReportMetric(float64(after.HeapAlloc-before.HeapAlloc)/n, "heap-B/msg")
	})
	b.Run("search-unseen+fetch-flags", func(b *testing.B) {
		h := newHarness(b, nil)
		h.mb.fill(n)
		c := h.dial(nil)
		if _, err := c.Select("INBOX", nil).Wait(); err != nil {
			b.Fatal(err)
		}
		b.ResetTimer()
		for range b.N {
			if _, err := c.UIDSearch(&imap.SearchCriteria{NotFlag: []imap.Flag{imap.FlagSeen}}, nil).Wait(); err != nil {
				b.Fatal(err)
			}
			if _, err := c.Fetch(imap.UIDSet{{Start: 1, Stop: 0}}, &imap.FetchOptions{UID: true, Flags: true, RFC822Size: true}).Collect(); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// BenchmarkFakeMS365Select10k measures a cold SELECT (bridge just started:
// graphmail's full paged delta listing over HTTP, UIDs from the map on
// disk) of a 10,000-message Inbox in the fake Microsoft 365.
func BenchmarkFakeMS365Select10k(b *testing.B) {
	const n = 10000
	e := newFakeEnv(b)
	for i := range n {
		e.deliver(i, "bulk")
	}
	c := e.dial()
	if _, err := c.Select("INBOX", nil).Wait(); err != nil {
		b.Fatal(err)
	}
	c.Close()
	b.ResetTimer()
	for range b.N {
		b.StopTimer()
		e.stop()
		e.start()
		c := e.dial()
		b.StartTimer()
		sel, err := c.Select("INBOX", nil).Wait()
		if err != nil || sel.NumMessages != n {
			b.Fatal(sel, err)
		}
		b.StopTimer()
		c.Close()
		b.StartTimer()
	}
}

// BenchmarkAppend10MB measures an APPEND of a 10 MB message (76-byte
// lines) through a session: the client stream hands imapserver the
// command a line at a time so that it sees every command start.
func BenchmarkAppend10MB(b *testing.B) {
	h := newHarness(b, nil)
	c := h.dial(nil)
	line := strings.Repeat("x", 74) + "\r\n"
	msg := []byte("Subject: big\r\n\r\n" + strings.Repeat(line, 10<<20/len(line)))
	b.SetBytes(int64(len(msg)))
	b.ResetTimer()
	for range b.N {
		cmd := c.Append("INBOX", int64(len(msg)), nil)
		if _, err := cmd.Write(msg); err != nil {
			b.Fatal(err)
		}
		if err := cmd.Close(); err != nil {
			b.Fatal(err)
		}
		if _, err := cmd.Wait(); err != nil {
			b.Fatal(err)
		}
		b.StopTimer()
		h.mb.mu.Lock()
		clear(h.mb.msgs)
		h.mb.mu.Unlock()
		b.StartTimer()
	}
}
