package graphmail_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/oauthbridge/oauthbridge/graph"
	"github.com/oauthbridge/oauthbridge/graphmail"
	"github.com/oauthbridge/oauthbridge/internal/fakems"
)

const box = "helpdesk@contoso.com"

type hookRT struct {
	rt     http.RoundTripper
	before func(*http.Request)
}

func (h *hookRT) RoundTrip(r *http.Request) (*http.Response, error) {
	if h.before != nil {
		h.before(r)
	}
	return h.rt.RoundTrip(r)
}

type env struct {
	f      *fakems.Fake
	c      *graph.Client
	hook   *hookRT
	sleeps chan time.Duration
}

func newEnv(t testing.TB, scopes ...string) *env {
	t.Helper()
	f, err := fakems.Start(fakems.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	f.AddUser(box)
	if len(scopes) == 0 {
		scopes = []string{fakems.ScopeGraphMailReadWrite}
	}
	tok := f.IssueGraphToken(box, scopes...)
	hook := &hookRT{rt: f.GraphHTTPClient().Transport}
	return &env{
		f:      f,
		hook:   hook,
		sleeps: make(chan time.Duration, 100),
		c: &graph.Client{
			BaseURL:     f.GraphURL(),
			HTTP:        &http.Client{Transport: hook},
			Token:       func(context.Context) (string, error) { return tok, nil },
			MaxAttempts: 1, // leave throttling to graphmail
		},
	}
}

func (e *env) mailbox(opts graphmail.Options) *graphmail.Mailbox {
	opts.Sleep = func(_ context.Context, d time.Duration) error { e.sleeps <- d; return nil }
	return graphmail.New(e.c, box, opts)
}

func deliver(t testing.TB, f *fakems.Fake, n int) {
	t.Helper()
	for i := range n {
		if err := f.Deliver(box, []byte(fmt.Sprintf("Subject: s%d\r\n\r\nbody %d\r\n", i, i))); err != nil {
			t.Fatal(err)
		}
	}
}

func TestSnapshotAndDelta(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	deliver(t, e.f, 10)
	mb := e.mailbox(graphmail.Options{PageSize: 3})
	ctx := context.Background()
	inbox, err := mb.FolderID(ctx, "Inbox")
	if err != nil {
		t.Fatal(err)
	}
	snap, err := mb.Snapshot(ctx, inbox)
	if err != nil || len(snap) != 10 {
		t.Fatalf("Snapshot = %d, %v", len(snap), err)
	}
	if n := e.f.GraphRequestCount(fakems.RouteDelta, 200); n != 4 {
		t.Errorf("full round took %d delta pages, want 4 of 3", n)
	}
	for i := 1; i < len(snap); i++ {
		if snap[i].Received.Before(snap[i-1].Received) {
			t.Fatalf("not oldest first: %v", snap)
		}
	}
	if snap[0].Size != int64(len("Subject: s0\r\n\r\nbody 0\r\n")) || snap[0].MIMESize != -1 {
		t.Errorf("entry = %+v", snap[0])
	}
	// Changes: one deleted, one read, two new; only changes travel.
	if err := mb.Delete(ctx, snap[0].ID); err != nil {
		t.Fatal(err)
	}
	yes := true
	if err := mb.SetFlags(ctx, snap[1].ID, &yes, nil); err != nil {
		t.Fatal(err)
	}
	deliver(t, e.f, 2)
	n, err := mb.MIMESize(ctx, inbox, snap[1].ID)
	if err != nil || n != snap[1].Size {
		t.Fatalf("MIMESize = %d, %v", n, err)
	}
	snap2, err := mb.Snapshot(ctx, inbox)
	if err != nil || len(snap2) != 11 {
		t.Fatalf("second Snapshot = %d, %v", len(snap2), err)
	}
	// Same-second messages sort by id, so look the changed one up.
	var changed *graphmail.Entry
	for i := range snap2 {
		if snap2[i].ID == snap[0].ID {
			t.Errorf("deleted message still listed")
		}
		if snap2[i].ID == snap[1].ID {
			changed = &snap2[i]
		}
	}
	if changed == nil || !changed.Seen || changed.MIMESize != n {
		t.Errorf("changed entry = %+v (measured size must survive a flag change)", changed)
	}
	if n := e.f.GraphRequestCount(fakems.RouteDelta, 200); n != 6 {
		t.Errorf("delta pages after the change round = %d, want 6 (4 changes in pages of 3)", n)
	}
}

// A 429 in the middle of a paged listing is waited out and the listing
// goes on from the same page.
func TestThrottledMidListing(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	deliver(t, e.f, 9)
	var deltas atomic.Int32
	e.hook.before = func(r *http.Request) {
		if strings.HasSuffix(r.URL.Path, "/delta") && deltas.Add(1) == 2 {
			e.f.SetGraphFault(fakems.GraphFault{Status: 429, RetryAfter: 7, Count: 1, Route: fakems.RouteDelta})
		}
	}
	mb := e.mailbox(graphmail.Options{PageSize: 3})
	snap, err := mb.Snapshot(context.Background(), graph.FolderInbox)
	if err != nil || len(snap) != 9 {
		t.Fatalf("Snapshot = %d, %v", len(snap), err)
	}
	if d := <-e.sleeps; d != 7*time.Second {
		t.Errorf("waited %v, want the Retry-After of 7s", d)
	}
	if n := e.f.GraphRequestCount(fakems.RouteDelta, 429); n != 1 {
		t.Errorf("429s = %d", n)
	}
}

func TestThrottlingBeyondBoundIsTemporary(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	deliver(t, e.f, 1)
	e.f.SetGraphFault(fakems.GraphFault{Status: 429, RetryAfter: 20})
	mb := e.mailbox(graphmail.Options{MaxThrottleWait: 30 * time.Second})
	_, err := mb.Snapshot(context.Background(), graph.FolderInbox)
	var ge *graphmail.Error
	if !errors.As(err, &ge) || !ge.Temporary() || graphmail.KindOf(err) != graphmail.Temporary {
		t.Fatalf("err = %v, want temporary", err)
	}
	if len(e.sleeps) != 1 {
		t.Errorf("waited %d times, want 1 (20s fits in 30s, 40s does not)", len(e.sleeps))
	}
}

func TestPermissionIsPermanent(t *testing.T) {
	t.Parallel()
	e := newEnv(t, fakems.ScopeGraphMailSend)
	mb := e.mailbox(graphmail.Options{})
	_, err := mb.Snapshot(context.Background(), graph.FolderInbox)
	var ge *graphmail.Error
	if !errors.As(err, &ge) || ge.Kind != graphmail.Permanent || !strings.Contains(ge.Fix, "Mail.ReadWrite") {
		t.Fatalf("err = %v", err)
	}
	if _, err := mb.FolderID(context.Background(), "Inbox/Nope"); graphmail.KindOf(err) != graphmail.Permanent && graphmail.KindOf(err) != graphmail.NotFound {
		t.Errorf("missing folder: %v", err)
	}
}

// Never more than MailboxConcurrency requests in flight for one mailbox,
// even with open MIME readers.
func TestLimiter(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	deliver(t, e.f, 12)
	mb := e.mailbox(graphmail.Options{})
	ctx := context.Background()
	snap, err := mb.Snapshot(ctx, graph.FolderInbox)
	if err != nil {
		t.Fatal(err)
	}
	// Hold all slots with open readers; a fifth open waits for a Close.
	var open []io.ReadCloser
	for i := range graphmail.MailboxConcurrency {
		rc, err := mb.MIME(ctx, snap[i].ID)
		if err != nil {
			t.Fatal(err)
		}
		open = append(open, rc)
	}
	done := make(chan error, 1)
	go func() {
		rc, err := mb.MIME(ctx, snap[5].ID)
		if err == nil {
			rc.Close()
		}
		done <- err
	}()
	select {
	case err := <-done:
		t.Fatalf("fifth request ran with %d slots held: %v", graphmail.MailboxConcurrency, err)
	default:
	}
	open[0].Close()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	for _, rc := range open[1:] {
		rc.Close()
	}
	var wg sync.WaitGroup
	for _, m := range snap {
		wg.Go(func() {
			if _, err := mb.MIMESize(ctx, graph.FolderInbox, m.ID); err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	if p := e.f.GraphPeakConcurrency(box); p > graphmail.MailboxConcurrency || p < 1 {
		t.Errorf("peak concurrency %d", p)
	}
	if n := e.f.GraphRequestCount(fakems.RouteGetMIME, 429); n != 0 {
		t.Errorf("%d requests refused for concurrency", n)
	}
}
