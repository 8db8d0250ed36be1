package imapgraph

import (
	"bytes"
	"context"
	"errors"
	"io"

	"github.com/oauthbridge/oauthbridge/graph"
	"github.com/oauthbridge/oauthbridge/graphmail"
)

// wellKnownFolders are the folders whose IMAP special use the bridge
// announces (Graph v1.0 folders carry no well-known name: each is looked
// up once per mailbox by that name).
var wellKnownFolders = []string{graph.FolderInbox, graph.FolderSentItems, graph.FolderDrafts,
	graph.FolderDeletedItems, graph.FolderJunkEmail, graph.FolderArchive}

// maxFolderDepth bounds the folder tree walk.
const maxFolderDepth = 16

// GraphMailbox adapts a graphmail.Mailbox (shared by every POP3 and IMAP
// session of the mailbox: its limiter of 4 requests, throttling and delta
// lists) to the Mailbox the IMAP session needs.
type GraphMailbox struct {
	mb *graphmail.Mailbox
}

// NewGraphMailbox returns the IMAP view of a graphmail mailbox.
func NewGraphMailbox(mb *graphmail.Mailbox) *GraphMailbox { return &GraphMailbox{mb: mb} }

var _ Mailbox = (*GraphMailbox)(nil)

// Folders walks the folder tree (one listing per folder with children)
// and names the well-known ones.
func (g *GraphMailbox) Folders(ctx context.Context) ([]Folder, error) {
	var out []Folder
	var walk func(parent string, depth int) error
	walk = func(parent string, depth int) error {
		fs, err := g.mb.ListFolders(ctx, parent)
		if err != nil {
			return mapErr(err)
		}
		for _, f := range fs {
			pid := f.ParentFolderID
			if parent == "" {
				pid = "" // the top level's parent is the hidden root
			}
			out = append(out, Folder{ID: f.ID, ParentID: pid, Name: f.DisplayName, Total: f.TotalItemCount, Unread: f.UnreadItemCount})
			if f.ChildFolderCount > 0 && depth < maxFolderDepth {
				if err := walk(f.ID, depth+1); err != nil {
					return err
				}
			}
		}
		return nil
	}
	if err := walk("", 0); err != nil {
		return nil, err
	}
	for _, name := range wellKnownFolders {
		id, err := g.mb.FolderID(ctx, name)
		if err != nil {
			if graphmail.KindOf(err) == graphmail.NotFound {
				continue // no Archive folder, say
			}
			return nil, mapErr(err)
		}
		for i := range out {
			if out[i].ID == id {
				out[i].WellKnown = name
			}
		}
	}
	return out, nil
}

// List returns the folder's messages from graphmail's delta-kept list.
func (g *GraphMailbox) List(ctx context.Context, folderID string) ([]Message, error) {
	es, err := g.mb.Snapshot(ctx, folderID)
	if err != nil {
		return nil, mapErr(err)
	}
	out := make([]Message, len(es))
	for i, e := range es {
		m := Message{ID: e.ID, Received: e.Received, Read: e.Seen, Flagged: e.Flagged, Draft: e.Draft, MessageID: e.MessageID, Size: e.Size}
		if e.MIMESize >= 0 {
			m.Size, m.SizeExact = e.MIMESize, true
		} else if m.Size < 0 {
			m.Size = 0
		}
		out[i] = m
	}
	return out, nil
}

// NoteSize shares a measured size with graphmail (POP3's LIST uses it).
func (g *GraphMailbox) NoteSize(folderID, id string, n int64) { g.mb.NoteMIMESize(folderID, id, n) }

func (g *GraphMailbox) Content(ctx context.Context, id string) (io.ReadCloser, error) {
	rc, err := g.mb.MIME(ctx, id)
	return rc, mapErr(err)
}

func (g *GraphMailbox) Update(ctx context.Context, id string, u FlagUpdate) error {
	return mapErr(g.mb.SetFlags(ctx, id, u.Read, u.Flagged))
}

func (g *GraphMailbox) Move(ctx context.Context, id, dest string) (string, error) {
	nid, err := g.mb.Move(ctx, id, dest)
	return nid, mapErr(err)
}

func (g *GraphMailbox) Copy(ctx context.Context, id, dest string) (string, error) {
	nid, err := g.mb.Copy(ctx, id, dest)
	return nid, mapErr(err)
}

func (g *GraphMailbox) Delete(ctx context.Context, id string) error {
	return mapErr(g.mb.Delete(ctx, id))
}

// Append creates the message from MIME: Graph makes it a draft, and the
// bridge leaves it one (see Session.Append). \Seen and \Flagged are set
// afterwards.
func (g *GraphMailbox) Append(ctx context.Context, folderID string, mime []byte, read, flagged bool) (string, error) {
	open := func() (io.Reader, error) { return bytes.NewReader(mime), nil }
	id, err := g.mb.CreateMIME(ctx, folderID, open, int64(len(mime)))
	if err != nil {
		return "", mapErr(err)
	}
	if read || flagged {
		var r, f *bool
		if read {
			r = ptr(true)
		}
		if flagged {
			f = ptr(true)
		}
		if err := g.mb.SetFlags(ctx, id, r, f); err != nil {
			// The message exists: the APPEND succeeded, only its flags
			// did not; no retry may create it twice.
			return id, &flagsAfterAppendError{err: err}
		}
	}
	return id, nil
}

// mapErr marks graphmail's "not found" for the session; every other error
// keeps its chain (*graph.Error, *tokens.Error) for the client's answer.
func mapErr(err error) error {
	if err == nil {
		return nil
	}
	if graphmail.KindOf(err) == graphmail.NotFound {
		return errors.Join(ErrNotFound, err)
	}
	return err
}

// flagsAfterAppendError is an APPEND whose message was created but whose
// flags could not be set. It has no Unwrap on purpose: nothing may retry
// the creation.
type flagsAfterAppendError struct{ err error }

func (e *flagsAfterAppendError) Error() string {
	return "imapgraph: message created, but setting its flags failed: " + e.err.Error()
}
