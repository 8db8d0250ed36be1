package imapgraph

import (
	"fmt"
	"runtime"
	"testing"
	"time"

	"github.com/emersion/go-imap/v2/imapclient"
)

// BenchmarkSessionMemory measures the heap each of N sessions that have
// the same INBOX of M messages selected costs: after SELECT, and after a
// new message arrived and every session reported it (NOOP). Sessions
// share the folder's message list, so the cost per session does not grow
// with M. The figure includes the in-process test client's side of each
// connection.
func BenchmarkSessionMemory(b *testing.B) {
	const sessions = 100
	for _, m := range []int{0, 100, 1000, 10000} {
		b.Run(fmt.Sprintf("sessions=%d/messages=%d", sessions, m), func(b *testing.B) {
			h := newHarness(b, func(o *Options) { o.SyncAge = time.Hour })
			h.mb.fill(m)
			// One session keeps the folder listed throughout.
			first := h.dial(nil)
			if _, err := first.Select("INBOX", nil).Wait(); err != nil {
				b.Fatal(err)
			}
			var selected, afterNew float64
			for i := range b.N {
				before := heap()
				cs := make([]*imapclient.Client, sessions)
				for j := range cs {
					cs[j] = h.dial(nil)
					if sel, err := cs[j].Select("INBOX", nil).Wait(); err != nil || int(sel.NumMessages) != m+i {
						b.Fatal(sel, err)
					}
				}
				selected += float64(heap()-before) / sessions
				// New mail: the next poll of every session sees it.
				h.mb.deliver("f-inbox", testMIME(m+i, "new"), day.Add(time.Hour))
				fc := h.srv.folder(testAccount, "f-inbox")
				err := fc.sync(b.Context(), h.mb, 0)
				h.srv.releaseFolder(fc)
				if err != nil {
					b.Fatal(err)
				}
				for _, c := range append(cs, first) {
					if err := c.Noop().Wait(); err != nil {
						b.Fatal(err)
					}
				}
				afterNew += float64(heap()-before) / sessions
				for _, c := range cs {
					c.Close()
				}
			}
			b.ReportMetric(selected/float64(b.N), "heap-B/session")
			b.ReportMetric(afterNew/float64(b.N), "heap-B/session-after-new-mail")
		})
	}
}

func heap() int64 {
	runtime.GC()
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return int64(ms.HeapAlloc)
}
