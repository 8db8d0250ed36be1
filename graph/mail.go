package graph

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"
)

// Reading mail. Every read call asks for immutable ids
// (Prefer: IdType="ImmutableId"), so a message keeps its id when it moves
// between folders; ids from these calls and from the send path's drafts
// are both accepted by Graph.

// Well-known folder names (mailfolder resource, "well-known folder
// names"); they stand in for a folder id in every call.
const (
	FolderInbox        = "inbox"
	FolderDeletedItems = "deleteditems"
	FolderSentItems    = "sentitems"
	FolderDrafts       = "drafts"
	FolderArchive      = "archive"
	FolderJunkEmail    = "junkemail"
)

// Paging. Graph returns 10 messages per page unless asked for more; the
// bridge asks for DefaultPageSize, within Graph's MaxPageSize.
const (
	DefaultPageSize = 500
	MaxPageSize     = 1000
)

// PR_MESSAGE_SIZE (0x0E08): Exchange's size of the item in the store. It
// is close to, but not always equal to, the size of the MIME from $value.
const sizeProperty = "Long 0x0E08"

// messageSelect is what list, delta and get ask for: what a POP3 or IMAP
// session needs to know of a message without its content.
const messageSelect = "receivedDateTime,isRead,isDraft,flag,parentFolderId,internetMessageId"

var sizeExpand = "singleValueExtendedProperties($filter=id eq '" + sizeProperty + "')"

// Folder is a mail folder.
type Folder struct {
	ID               string `json:"id"`
	DisplayName      string `json:"displayName"`
	ParentFolderID   string `json:"parentFolderId"`
	ChildFolderCount int    `json:"childFolderCount"`
	TotalItemCount   int    `json:"totalItemCount"`
	UnreadItemCount  int    `json:"unreadItemCount"`
}

// Message is what the bridge reads of a message without its content.
type Message struct {
	ID                string
	ReceivedDateTime  time.Time
	IsRead            bool
	IsDraft           bool
	Flagged           bool  // flag.flagStatus = "flagged"
	Size              int64 // PR_MESSAGE_SIZE; -1 if Graph did not give it
	ParentFolderID    string
	InternetMessageID string
}

type wireMessage struct {
	ID                string     `json:"id"`
	ReceivedDateTime  *time.Time `json:"receivedDateTime"`
	IsRead            bool       `json:"isRead"`
	IsDraft           bool       `json:"isDraft"`
	ParentFolderID    string     `json:"parentFolderId"`
	InternetMessageID string     `json:"internetMessageId"`
	Flag              *struct {
		FlagStatus string `json:"flagStatus"`
	} `json:"flag"`
	Props []struct {
		ID    string `json:"id"`
		Value string `json:"value"`
	} `json:"singleValueExtendedProperties"`
	Removed *struct {
		Reason string `json:"reason"`
	} `json:"@removed"`
}

func (w *wireMessage) message() Message {
	m := Message{ID: w.ID, IsRead: w.IsRead, IsDraft: w.IsDraft, Size: -1, ParentFolderID: w.ParentFolderID, InternetMessageID: w.InternetMessageID}
	if w.ReceivedDateTime != nil {
		m.ReceivedDateTime = *w.ReceivedDateTime
	}
	if w.Flag != nil {
		m.Flagged = w.Flag.FlagStatus == "flagged"
	}
	for _, p := range w.Props {
		if strings.EqualFold(p.ID, sizeProperty) || strings.EqualFold(p.ID, "Long 0xe08") {
			if n, err := strconv.ParseInt(p.Value, 10, 64); err == nil && n >= 0 {
				m.Size = n
			}
		}
	}
	return m
}

var preferImmutable = http.Header{"Prefer": {`IdType="ImmutableId"`}}

func msgPath(user, id string) string { return userPath(user) + "/messages/" + url.PathEscape(id) }

func folderPath(user, id string) string { return userPath(user) + "/mailFolders/" + url.PathEscape(id) }

// getJSON GETs path (or an absolute link on BaseURL's host) into v.
func (c *Client) getJSON(ctx context.Context, op, path string, hdr http.Header, v any) error {
	data, err := c.doH(ctx, op, http.MethodGet, path, hdr, nil, http.StatusOK)
	if err != nil {
		return err
	}
	if err := json.Unmarshal(data, v); err != nil {
		return &Error{Op: op, Status: http.StatusOK, Message: "the answer is not the expected JSON document"}
	}
	return nil
}

// linkPath turns an @odata.nextLink / deltaLink into a path on BaseURL. A
// link to another host is refused: the token must not travel there.
func (c *Client) linkPath(op, link string) (string, error) {
	base, err := url.Parse(strings.TrimSuffix(c.BaseURL, "/"))
	if err != nil {
		return "", err
	}
	u, err := url.Parse(link)
	if err != nil || !strings.EqualFold(u.Host, base.Host) || u.Scheme != base.Scheme {
		return "", &Error{Op: op, Status: http.StatusOK, Message: "the answer's link points away from graph_url"}
	}
	p := strings.TrimPrefix(u.EscapedPath(), base.EscapedPath())
	if u.RawQuery != "" {
		p += "?" + u.RawQuery
	}
	return p, nil
}

// ListFolders lists the folders under parentID (a folder id or a
// well-known name); "" lists the top-level folders.
func (c *Client) ListFolders(ctx context.Context, user, parentID string) ([]Folder, error) {
	path := userPath(user) + "/mailFolders?$top=250"
	if parentID != "" {
		path = folderPath(user, parentID) + "/childFolders?$top=250"
	}
	var out []Folder
	for path != "" {
		var page struct {
			Value []Folder `json:"value"`
			Next  string   `json:"@odata.nextLink"`
		}
		if err := c.getJSON(ctx, "listFolders", path, nil, &page); err != nil {
			return nil, err
		}
		out = append(out, page.Value...)
		path = ""
		if page.Next != "" {
			p, err := c.linkPath("listFolders", page.Next)
			if err != nil {
				return nil, err
			}
			path = p
		}
	}
	return out, nil
}

// GetFolder returns a folder by id or well-known name.
func (c *Client) GetFolder(ctx context.Context, user, id string) (*Folder, error) {
	var f Folder
	if err := c.getJSON(ctx, "getFolder", folderPath(user, id), nil, &f); err != nil {
		return nil, err
	}
	return &f, nil
}

// ErrFolderNotFound is returned by FolderByPath for a path that names no
// folder.
var ErrFolderNotFound = errors.New("graph: folder not found")

// FolderByPath finds a folder by a path of display names separated by
// "/" ("Inbox/Tickets"); the first element may be a well-known name
// ("inbox", "archive", ...). Names compare case-insensitively.
func (c *Client) FolderByPath(ctx context.Context, user, path string) (*Folder, error) {
	parts := strings.Split(strings.Trim(path, "/"), "/")
	if len(parts) == 0 || parts[0] == "" {
		return nil, fmt.Errorf("%w: empty path", ErrFolderNotFound)
	}
	var cur *Folder
	switch strings.ToLower(parts[0]) {
	case FolderInbox, FolderDeletedItems, FolderSentItems, FolderDrafts, FolderArchive, FolderJunkEmail:
		f, err := c.GetFolder(ctx, user, strings.ToLower(parts[0]))
		if err != nil {
			if ge, ok := AsError(err); ok && ge.Status == http.StatusNotFound {
				return nil, fmt.Errorf("%w: %q", ErrFolderNotFound, parts[0])
			}
			return nil, err
		}
		cur, parts = f, parts[1:]
	}
	for _, name := range parts {
		parent := ""
		if cur != nil {
			parent = cur.ID
		}
		fs, err := c.ListFolders(ctx, user, parent)
		if err != nil {
			return nil, err
		}
		var next *Folder
		for i := range fs {
			if strings.EqualFold(fs[i].DisplayName, name) {
				next = &fs[i]
				break
			}
		}
		if next == nil {
			return nil, fmt.Errorf("%w: %q in %q", ErrFolderNotFound, name, path)
		}
		cur = next
	}
	return cur, nil
}

// ListMessages returns one page of folderID's messages, oldest first,
// with their sizes, and the link of the next page ("" after the last).
// Pass the returned link as next to get the following page; pageSize <= 0
// means DefaultPageSize.
func (c *Client) ListMessages(ctx context.Context, user, folderID, next string, pageSize int) ([]Message, string, error) {
	path := next
	if path == "" {
		if pageSize <= 0 {
			pageSize = DefaultPageSize
		}
		pageSize = min(pageSize, MaxPageSize)
		q := url.Values{
			"$select":  {messageSelect},
			"$top":     {strconv.Itoa(pageSize)},
			"$orderby": {"receivedDateTime asc"},
			"$expand":  {sizeExpand},
		}
		path = folderPath(user, folderID) + "/messages?" + q.Encode()
	} else {
		p, err := c.linkPath("listMessages", next)
		if err != nil {
			return nil, "", err
		}
		path = p
	}
	var page struct {
		Value []wireMessage `json:"value"`
		Next  string        `json:"@odata.nextLink"`
	}
	if err := c.getJSON(ctx, "listMessages", path, preferImmutable, &page); err != nil {
		return nil, "", err
	}
	out := make([]Message, len(page.Value))
	for i := range page.Value {
		out[i] = page.Value[i].message()
	}
	return out, page.Next, nil
}

// DeltaPage is one page of a delta round.
type DeltaPage struct {
	Changed []Message // new or changed messages
	Removed []string  // ids of messages that left the folder
	// NextLink continues this round; DeltaLink (on the last page) starts
	// the next round. Exactly one is set.
	NextLink, DeltaLink string
}

// IsSyncReset reports Graph's answer to an expired or unknown delta
// token (410 Gone, SyncStateNotFound / resyncRequired): the caller must
// start over with a full round.
func IsSyncReset(err error) bool {
	ge, ok := AsError(err)
	return ok && ge.Status == http.StatusGone
}

// DeltaMessages fetches one page of messages/delta for folderID: link ""
// starts a full round (every message in the folder is "changed"); a
// NextLink or DeltaLink from an earlier page continues. pageSize <= 0 means
// DefaultPageSize (sent as Prefer: odata.maxpagesize).
func (c *Client) DeltaMessages(ctx context.Context, user, folderID, link string, pageSize int) (*DeltaPage, error) {
	if pageSize <= 0 {
		pageSize = DefaultPageSize
	}
	pageSize = min(pageSize, MaxPageSize)
	path := link
	if link == "" {
		q := url.Values{"$select": {messageSelect}, "$expand": {sizeExpand}}
		path = folderPath(user, folderID) + "/messages/delta?" + q.Encode()
	} else {
		p, err := c.linkPath("delta", link)
		if err != nil {
			return nil, err
		}
		path = p
	}
	hdr := http.Header{"Prefer": {`IdType="ImmutableId"`, "odata.maxpagesize=" + strconv.Itoa(pageSize)}}
	var page struct {
		Value []wireMessage `json:"value"`
		Next  string        `json:"@odata.nextLink"`
		Delta string        `json:"@odata.deltaLink"`
	}
	if err := c.getJSON(ctx, "delta", path, hdr, &page); err != nil {
		return nil, err
	}
	if (page.Next == "") == (page.Delta == "") {
		return nil, &Error{Op: "delta", Status: http.StatusOK, Message: "the answer has neither a nextLink nor a deltaLink"}
	}
	dp := &DeltaPage{NextLink: page.Next, DeltaLink: page.Delta}
	for i := range page.Value {
		if page.Value[i].Removed != nil {
			dp.Removed = append(dp.Removed, page.Value[i].ID)
			continue
		}
		dp.Changed = append(dp.Changed, page.Value[i].message())
	}
	return dp, nil
}

// Delta runs delta rounds from link ("" = a full round) until a DeltaLink,
// calling fn for each page, and returns the new DeltaLink. fn sees pages
// in order; nothing is kept in between, so a large folder costs one page
// of memory.
func (c *Client) Delta(ctx context.Context, user, folderID, link string, pageSize int, fn func(*DeltaPage) error) (string, error) {
	for {
		p, err := c.DeltaMessages(ctx, user, folderID, link, pageSize)
		if err != nil {
			return "", err
		}
		if err := fn(p); err != nil {
			return "", err
		}
		if p.DeltaLink != "" {
			return p.DeltaLink, nil
		}
		link = p.NextLink
	}
}

// GetMessage returns one message's metadata.
func (c *Client) GetMessage(ctx context.Context, user, id string) (*Message, error) {
	q := url.Values{"$select": {messageSelect}, "$expand": {sizeExpand}}
	var w wireMessage
	if err := c.getJSON(ctx, "getMessage", msgPath(user, id)+"?"+q.Encode(), preferImmutable, &w); err != nil {
		return nil, err
	}
	m := w.message()
	return &m, nil
}

// MIME opens the message's MIME content (GET .../messages/{id}/$value),
// byte for byte as Exchange gives it. The caller closes the reader. size
// is the Content-Length, or -1.
func (c *Client) MIME(ctx context.Context, user, id string) (io.ReadCloser, int64, error) {
	resp, err := c.roundTrip(ctx, "getMIME", http.MethodGet, msgPath(user, id)+"/$value", nil, nil, http.StatusOK)
	if err != nil {
		return nil, 0, err
	}
	return resp.Body, resp.ContentLength, nil
}

// Patch is a change of a message's state; nil fields stay as they are.
type Patch struct {
	IsRead  *bool
	Flagged *bool
}

// PatchMessage changes isRead and flag.flagStatus.
func (c *Client) PatchMessage(ctx context.Context, user, id string, p Patch) error {
	doc := map[string]any{}
	if p.IsRead != nil {
		doc["isRead"] = *p.IsRead
	}
	if p.Flagged != nil {
		st := "notFlagged"
		if *p.Flagged {
			st = "flagged"
		}
		doc["flag"] = map[string]any{"flagStatus": st}
	}
	if len(doc) == 0 {
		return nil
	}
	js, _ := json.Marshal(doc)
	_, err := c.doH(ctx, "patchMessage", http.MethodPatch, msgPath(user, id), preferImmutable, bytesBody(js, "application/json"), http.StatusOK)
	return err
}

// Move moves a message to destFolderID (an id or a well-known name) and
// returns its id there (the same immutable id).
func (c *Client) Move(ctx context.Context, user, id, destFolderID string) (string, error) {
	return c.moveCopy(ctx, "moveMessage", "/move", user, id, destFolderID)
}

// Copy copies a message to destFolderID and returns the copy's id.
func (c *Client) Copy(ctx context.Context, user, id, destFolderID string) (string, error) {
	return c.moveCopy(ctx, "copyMessage", "/copy", user, id, destFolderID)
}

func (c *Client) moveCopy(ctx context.Context, op, verb, user, id, dest string) (string, error) {
	js, _ := json.Marshal(map[string]string{"destinationId": dest})
	data, err := c.doH(ctx, op, http.MethodPost, msgPath(user, id)+verb, preferImmutable, bytesBody(js, "application/json"), http.StatusCreated)
	if err != nil {
		return "", err
	}
	var m struct {
		ID string `json:"id"`
	}
	if json.Unmarshal(data, &m) != nil || m.ID == "" {
		return "", &Error{Op: op, Status: http.StatusCreated, Message: "the answer names no message id"}
	}
	return m.ID, nil
}

// CreateMessageMIME creates a message from MIME in folderID
// (POST .../mailFolders/{id}/messages). Graph always makes it a draft
// (isDraft true): there is no way to create a received item from MIME.
func (c *Client) CreateMessageMIME(ctx context.Context, user, folderID string, open func() (io.Reader, error), size int64) (string, error) {
	data, err := c.doH(ctx, "createMessage", http.MethodPost, folderPath(user, folderID)+"/messages", preferImmutable, base64Body(open, size), http.StatusCreated)
	if err != nil {
		return "", err
	}
	var m struct {
		ID string `json:"id"`
	}
	if json.Unmarshal(data, &m) != nil || m.ID == "" {
		return "", &Error{Op: "createMessage", Status: http.StatusCreated, Message: "the answer names no message id"}
	}
	return m.ID, nil
}
