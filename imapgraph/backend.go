package imapgraph

import (
	"context"
	"errors"
	"io"
	"time"
)

// Folder is one mail folder of the mailbox.
type Folder struct {
	ID        string // Graph's folder id
	ParentID  string // "" or the id of the parent folder
	Name      string // display name
	WellKnown string // Graph's well-known name when known: "inbox", "sentitems", "drafts", "deleteditems", "junkemail", "archive"
	Total     int    // totalItemCount, when known
	Unread    int    // unreadItemCount, when known
}

// Message is what the IMAP session keeps of one message: the fields
// SEARCH and FETCH answer without the message's content.
type Message struct {
	ID        string    // immutable id (Prefer: IdType="ImmutableId")
	Size      int64     // size in bytes: Exchange's estimate unless SizeExact
	SizeExact bool      // Size is the exact size of the MIME (it was read)
	Received  time.Time // receivedDateTime: the INTERNALDATE
	Read      bool      // isRead: \Seen
	Flagged   bool      // flag.flagStatus == "flagged": \Flagged
	Draft     bool      // isDraft: \Draft
	MessageID string    // internetMessageId, when known (SEARCH HEADER Message-ID)
}

// FlagUpdate changes a message's flags; nil fields are left alone.
type FlagUpdate struct {
	Read    *bool
	Flagged *bool
}

// Mailbox is what the IMAP session needs from one Microsoft 365 mailbox.
// Implementations talk to Microsoft Graph (see NewGraphMailbox); the tests
// use an in-memory one.
type Mailbox interface {
	// Folders lists every mail folder (children included).
	Folders(ctx context.Context) ([]Folder, error)
	// List returns the folder's current messages. The backend keeps its
	// own copy of the list current with Graph's messages/delta (a full
	// paged listing first, then only changes), so a call costs one delta
	// round, not a listing.
	List(ctx context.Context, folderID string) ([]Message, error)
	// Content opens the message's MIME ($value), byte-exact.
	Content(ctx context.Context, id string) (io.ReadCloser, error)
	// Update sets isRead and/or the follow-up flag.
	Update(ctx context.Context, id string, u FlagUpdate) error
	// Move moves the message to another folder and returns its id there.
	Move(ctx context.Context, id, destFolderID string) (string, error)
	// Copy copies the message to another folder and returns the copy's id.
	Copy(ctx context.Context, id, destFolderID string) (string, error)
	// Delete deletes the message permanently.
	Delete(ctx context.Context, id string) error
	// Append creates a message from MIME in the folder and returns its id.
	Append(ctx context.Context, folderID string, mime []byte, read, flagged bool) (string, error)
}

// ErrNotFound is a message or folder that no longer exists.
var ErrNotFound = errors.New("imapgraph: not found")
