package graph_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/oauthbridge/oauthbridge/graph"
	"github.com/oauthbridge/oauthbridge/internal/fakems"
)

const helpdesk = "helpdesk@contoso.com"

func fakeClient(t *testing.T) (*fakems.Fake, *graph.Client, *atomic.Int32) {
	t.Helper()
	f, err := fakems.Start(fakems.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	f.AddUser(helpdesk)
	tok := f.IssueGraphToken(helpdesk, fakems.ScopeGraphMailReadWrite)
	var sleeps atomic.Int32
	c := &graph.Client{
		BaseURL: f.GraphURL(),
		HTTP:    f.GraphHTTPClient(),
		Token:   func(context.Context) (string, error) { return tok, nil },
		Sleep:   func(context.Context, time.Duration) error { sleeps.Add(1); return nil },
	}
	return f, c, &sleeps
}

func msg(i int) string {
	return fmt.Sprintf("Subject: t%d\r\nMessage-ID: <t%d@x>\r\n\r\nline\r\n.dot\r\n", i, i)
}

func TestReadClient(t *testing.T) {
	t.Parallel()
	f, c, sleeps := fakeClient(t)
	ctx := context.Background()
	for i := range 7 {
		if err := f.Deliver(helpdesk, []byte(msg(i))); err != nil {
			t.Fatal(err)
		}
	}
	if err := f.CreateFolder(helpdesk, "Inbox/Tickets"); err != nil {
		t.Fatal(err)
	}
	tickets, err := c.FolderByPath(ctx, helpdesk, "inbox/tickets")
	if err != nil || tickets.DisplayName != "Tickets" {
		t.Fatalf("FolderByPath = %+v, %v", tickets, err)
	}
	if _, err := c.FolderByPath(ctx, helpdesk, "Inbox/Nope"); !errors.Is(err, graph.ErrFolderNotFound) {
		t.Errorf("missing folder: %v", err)
	}

	// Paging: 3 pages of 3, 3, 1; throttled once in the middle.
	var all []graph.Message
	next, pages := "", 0
	for {
		if pages == 1 {
			f.SetGraphFault(fakems.GraphFault{Status: 429, Count: 1, Route: fakems.RouteListMessages})
		}
		ms, n, err := c.ListMessages(ctx, helpdesk, graph.FolderInbox, next, 3)
		if err != nil {
			t.Fatal(err)
		}
		pages++
		all = append(all, ms...)
		if n == "" {
			break
		}
		next = n
	}
	if pages != 3 || len(all) != 7 || sleeps.Load() != 1 {
		t.Fatalf("pages %d messages %d sleeps %d", pages, len(all), sleeps.Load())
	}
	if all[0].Size != int64(len(msg(0))) || all[0].InternetMessageID != "<t0@x>" || all[0].IsRead {
		t.Errorf("first = %+v", all[0])
	}

	// MIME is byte-exact.
	rc, size, err := c.MIME(ctx, helpdesk, all[0].ID)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(rc)
	rc.Close()
	if string(b) != msg(0) || size != int64(len(b)) {
		t.Errorf("MIME = %q (%d)", b, size)
	}

	// Delta: a full round, then changes.
	var changed int
	link, err := c.Delta(ctx, helpdesk, graph.FolderInbox, "", 2, func(p *graph.DeltaPage) error {
		changed += len(p.Changed)
		return nil
	})
	if err != nil || changed != 7 || link == "" {
		t.Fatalf("Delta = %d, %q, %v", changed, link, err)
	}
	yes := true
	if err := c.PatchMessage(ctx, helpdesk, all[1].ID, graph.Patch{IsRead: &yes, Flagged: &yes}); err != nil {
		t.Fatal(err)
	}
	moved, err := c.Move(ctx, helpdesk, all[2].ID, graph.FolderDeletedItems)
	if err != nil || moved != all[2].ID {
		t.Fatalf("Move = %q, %v (immutable id must survive)", moved, err)
	}
	cp, err := c.Copy(ctx, helpdesk, all[3].ID, tickets.ID)
	if err != nil || cp == all[3].ID {
		t.Fatalf("Copy = %q, %v", cp, err)
	}
	if err := c.DeleteMessage(ctx, helpdesk, all[4].ID); err != nil {
		t.Fatal(err)
	}
	var ch []graph.Message
	var removed []string
	if _, err := c.Delta(ctx, helpdesk, graph.FolderInbox, link, 0, func(p *graph.DeltaPage) error {
		ch = append(ch, p.Changed...)
		removed = append(removed, p.Removed...)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if len(ch) != 1 || ch[0].ID != all[1].ID || !ch[0].IsRead || !ch[0].Flagged || len(removed) != 2 {
		t.Errorf("delta changes %+v removed %v", ch, removed)
	}
	m, err := c.GetMessage(ctx, helpdesk, moved)
	if err != nil || m.ParentFolderID == "" {
		t.Errorf("GetMessage after move = %+v, %v", m, err)
	}

	// A stale delta link gets 410: the caller resyncs.
	_, err = c.DeltaMessages(ctx, helpdesk, graph.FolderInbox, f.GraphURL()+"/v1.0/users/"+helpdesk+"/mailFolders/inbox/messages/delta?$deltatoken=old", 0)
	if !graph.IsSyncReset(err) {
		t.Errorf("stale delta link: %v", err)
	}

	// CreateMessageMIME makes a draft in the folder.
	raw := []byte("Subject: appended\r\n\r\nhi\r\n")
	id, err := c.CreateMessageMIME(ctx, helpdesk, tickets.ID, func() (io.Reader, error) { return bytes.NewReader(raw), nil }, int64(len(raw)))
	if err != nil || id == "" {
		t.Fatalf("CreateMessageMIME = %q, %v", id, err)
	}
	if got := f.FolderMessages(helpdesk, "INBOX/Tickets"); len(got) != 2 {
		t.Errorf("Tickets = %d messages", len(got))
	}

	// Permission trouble is a 403 *graph.Error.
	f.SetGraphFault(fakems.GraphFault{})
	c.Token = func(context.Context) (string, error) {
		return f.IssueGraphToken(helpdesk, fakems.ScopeGraphMailSend), nil
	}
	_, _, err = c.ListMessages(ctx, helpdesk, graph.FolderInbox, "", 0)
	if ge, ok := graph.AsError(err); !ok || ge.Status != 403 || ge.Code != graph.CodeAccessDenied {
		t.Errorf("send-only token: %v", err)
	}
}

// A next link to another host is not followed with the token.
func TestLinkElsewhereRefused(t *testing.T) {
	var hits atomic.Int32
	other := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { hits.Add(1) }))
	defer other.Close()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		fmt.Fprintf(w, `{"value":[{"id":"a","receivedDateTime":"2026-11-26T10:00:00Z"}],"@odata.nextLink":%q}`, other.URL+"/v1.0/x")
	}))
	defer srv.Close()
	c := &graph.Client{BaseURL: srv.URL, Token: func(context.Context) (string, error) { return "t", nil }}
	ms, next, err := c.ListMessages(context.Background(), "u", "inbox", "", 10)
	if err != nil || len(ms) != 1 || ms[0].Size != -1 || !strings.HasPrefix(next, other.URL) {
		t.Fatalf("first page = %v %q %v", ms, next, err)
	}
	if _, _, err := c.ListMessages(context.Background(), "u", "inbox", next, 10); err == nil || hits.Load() != 0 {
		t.Errorf("foreign link followed: %v, hits %d", err, hits.Load())
	}
}
