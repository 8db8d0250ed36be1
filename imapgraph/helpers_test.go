package imapgraph

import (
	"context"
	"crypto/rand"
	"fmt"
	"net"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/oauthbridge/oauthbridge/graph"

	"github.com/emersion/go-imap/v2/imapclient"
)

const testAccount = "helpdesk"

type harness struct {
	t    testing.TB
	mb   *memMailbox
	dir  string
	key  []byte
	uids *UIDStore
	srv  *Server
	opts Options

	mu     sync.Mutex
	sleeps []time.Duration
}

func newHarness(t testing.TB, tweak func(*Options)) *harness {
	t.Helper()
	key := make([]byte, 32)
	rand.Read(key)
	h := &harness{t: t, mb: newMemMailbox(), dir: t.TempDir(), key: key}
	h.opts = Options{
		Mailbox: func(account string) (Mailbox, error) {
			if account != testAccount {
				return nil, fmt.Errorf("no account %q", account)
			}
			return h.mb, nil
		},
		SyncAge: time.Nanosecond, // every command sees Graph's current state
		Sleep: func(ctx context.Context, d time.Duration) error {
			h.mu.Lock()
			h.sleeps = append(h.sleeps, d)
			h.mu.Unlock()
			return ctx.Err()
		},
	}
	if tweak != nil {
		tweak(&h.opts)
	}
	h.start()
	return h
}

func (h *harness) start() {
	h.t.Helper()
	uids, err := OpenUIDStore(h.dir, h.key)
	if err != nil {
		h.t.Fatal(err)
	}
	h.uids = uids
	opts := h.opts
	opts.UIDs = uids
	srv, err := New(opts)
	if err != nil {
		h.t.Fatal(err)
	}
	h.srv = srv
	h.t.Cleanup(h.stop)
}

func (h *harness) stop() {
	if h.srv != nil {
		h.srv.Close()
		h.uids.Close()
		h.srv = nil
	}
}

// restart simulates a daemon restart: everything in memory is dropped,
// only the UID map file stays.
func (h *harness) restart() {
	h.stop()
	h.start()
}

func (h *harness) sleepCount() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return len(h.sleeps)
}

// dial connects a go-imap client, pre-authenticated as testAccount, over
// 127.0.0.1 like the legacy clients.
func (h *harness) dial(opts *imapclient.Options) *imapclient.Client {
	h.t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		h.t.Fatal(err)
	}
	defer ln.Close()
	done := make(chan struct{})
	go func() {
		defer close(done)
		c, err := ln.Accept()
		if err != nil {
			return
		}
		h.srv.ServePreauth(context.Background(), c, testAccount)
	}()
	conn, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		h.t.Fatal(err)
	}
	c := imapclient.New(conn, opts)
	h.t.Cleanup(func() {
		c.Close()
		<-done
	})
	if err := c.WaitGreeting(); err != nil {
		h.t.Fatal(err)
	}
	return c
}

func testMIME(n int, subject string) string {
	return fmt.Sprintf("From: Alice <alice@example.com>\r\nTo: helpdesk@example.com\r\nSubject: %s\r\nMessage-ID: <msg%d@example.com>\r\nDate: Thu, 26 Nov 2026 10:00:00 +0000\r\n\r\nBody of message %d.\r\n", subject, n, n)
}

var day = time.Date(2026, 11, 20, 9, 0, 0, 0, time.UTC)

func readFile(p string) ([]byte, error) { return os.ReadFile(p) }

func graphErr(status int, code string) error {
	return &graph.Error{Op: "test", Status: status, Code: code}
}
