package graph

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"time"
)

// Named defaults and Graph's documented limits.
const (
	// MaxRequestBytes is Graph's request body limit (4 MB); larger
	// requests get 413.
	MaxRequestBytes = 4 * 1024 * 1024
	// MaxMIMEBytes is the largest raw message sent in one sendMail: its
	// base64 form (4/3 larger) must stay under MaxRequestBytes.
	MaxMIMEBytes = MaxRequestBytes / 4 * 3
	// MaxUploadChunk is one ranged PUT to an upload session: "keep each
	// byte range less than 4 MB"; a multiple of 320 KiB.
	MaxUploadChunk = 10 * 320 * 1024
	// MaxAttachmentBytes is the largest attachment Graph takes (150 MB).
	MaxAttachmentBytes = 150 * 1024 * 1024
	// DefaultMaxRetryWait bounds the time one call spends waiting on
	// Retry-After before it gives up and returns the throttling error.
	DefaultMaxRetryWait = 30 * time.Second
	// DefaultMaxAttempts bounds the attempts of one call (429/503 retries
	// and the 401 retry with a fresh token).
	DefaultMaxAttempts = 4
	// defaultRetryWait is the wait after a 429/503 without Retry-After.
	defaultRetryWait = 2 * time.Second
	// maxJSONBody caps a success document read from Graph.
	maxJSONBody = 1 << 20
)

// Client calls Microsoft Graph for one mailbox set. The zero value is not
// usable: BaseURL and Token are required.
type Client struct {
	// BaseURL is the Graph endpoint without a version, e.g.
	// "https://graph.microsoft.com" (the provider's graph_url).
	BaseURL string
	// HTTP sends the requests; nil means http.DefaultClient. It is also
	// used for upload URLs, without the Authorization header.
	HTTP *http.Client
	// Token returns a Graph access token; its errors are returned as they
	// are (e.g. *tokens.Error), so the caller can tell token trouble apart.
	Token func(ctx context.Context) (string, error)
	// Rejected, if set, is told about a token Graph refused with 401.
	Rejected func(token string)
	// MaxRetryWait and MaxAttempts: see the Default* constants.
	MaxRetryWait time.Duration
	MaxAttempts  int
	// Sleep waits between retries; nil means a timer. Tests replace it.
	Sleep func(ctx context.Context, d time.Duration) error
	// Now is the clock for HTTP-date Retry-After values; nil means time.Now.
	Now func() time.Time
}

// body is a request body that can be opened again for a retry.
type body struct {
	open        func() (io.Reader, error)
	length      int64
	contentType string
}

func bytesBody(b []byte, contentType string) *body {
	return &body{open: func() (io.Reader, error) { return bytes.NewReader(b), nil }, length: int64(len(b)), contentType: contentType}
}

// base64Body streams base64 of what open returns (size bytes) as
// text/plain, which is how Graph takes MIME.
func base64Body(open func() (io.Reader, error), size int64) *body {
	return &body{
		open: func() (io.Reader, error) {
			r, err := open()
			if err != nil {
				return nil, err
			}
			return NewBase64Reader(io.LimitReader(r, size)), nil
		},
		length:      int64(base64.StdEncoding.EncodedLen(int(size))),
		contentType: "text/plain",
	}
}

func (c *Client) httpClient() *http.Client {
	if c.HTTP != nil {
		return c.HTTP
	}
	return http.DefaultClient
}

func (c *Client) now() time.Time {
	if c.Now != nil {
		return c.Now()
	}
	return time.Now()
}

func (c *Client) sleep(ctx context.Context, d time.Duration) error {
	if c.Sleep != nil {
		return c.Sleep(ctx, d)
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

func userPath(user string) string { return "/v1.0/users/" + url.PathEscape(user) }

// do sends one authenticated Graph request and returns the body of an
// answer with status want. 429 and 503 are retried within the retry
// budget; 401 once with a fresh token.
func (c *Client) do(ctx context.Context, op, method, path string, b *body, want int) ([]byte, error) {
	return c.doH(ctx, op, method, path, nil, b, want)
}

// doH is do with extra request headers.
func (c *Client) doH(ctx context.Context, op, method, path string, hdr http.Header, b *body, want int) ([]byte, error) {
	resp, err := c.roundTrip(ctx, op, method, path, hdr, b, want)
	if err != nil {
		return nil, err
	}
	data, err := io.ReadAll(io.LimitReader(resp.Body, maxJSONBody))
	resp.Body.Close()
	if err != nil {
		// The operation succeeded; only its answer's body is lost.
		return nil, nil
	}
	return data, nil
}

// roundTrip sends one authenticated Graph request with the retry policy
// of do and returns the answer with status want, its body unread.
func (c *Client) roundTrip(ctx context.Context, op, method, path string, hdr http.Header, b *body, want int) (*http.Response, error) {
	maxWait := c.MaxRetryWait
	if maxWait <= 0 {
		maxWait = DefaultMaxRetryWait
	}
	attempts := c.MaxAttempts
	if attempts <= 0 {
		attempts = DefaultMaxAttempts
	}
	var waited time.Duration
	refreshed := false
	for attempt := 1; ; attempt++ {
		tok, err := c.Token(ctx)
		if err != nil {
			return nil, err
		}
		resp, sent, err := c.send(ctx, method, strings.TrimSuffix(c.BaseURL, "/")+path, hdr, b, tok)
		if err != nil {
			return nil, &TransportError{Op: op, Sent: sent, Err: err}
		}
		if resp.StatusCode == want {
			return resp, nil
		}
		data, _ := io.ReadAll(io.LimitReader(resp.Body, maxErrorBody))
		resp.Body.Close()
		ge := parseError(op, resp, data, c.now())
		if ge.Status == http.StatusUnauthorized && !refreshed && attempt < attempts {
			refreshed = true
			if c.Rejected != nil {
				c.Rejected(tok)
			}
			continue
		}
		if (ge.Status == http.StatusTooManyRequests || ge.Status == http.StatusServiceUnavailable) && attempt < attempts {
			wait := ge.RetryAfter
			if wait <= 0 {
				wait = defaultRetryWait
			}
			if waited+wait <= maxWait {
				if err := c.sleep(ctx, wait); err != nil {
					return nil, ge
				}
				waited += wait
				continue
			}
		}
		return nil, ge
	}
}

// send performs one HTTP request; sent reports whether the whole body was
// handed to the transport before the error.
func (c *Client) send(ctx context.Context, method, u string, hdr http.Header, b *body, tok string) (*http.Response, bool, error) {
	var rd io.Reader = http.NoBody
	var length int64
	var cr *countingReader
	if b != nil {
		r, err := b.open()
		if err != nil {
			return nil, false, fmt.Errorf("open request body: %w", err)
		}
		cr = &countingReader{r: r}
		rd, length = cr, b.length
	}
	req, err := http.NewRequestWithContext(ctx, method, u, rd)
	if err != nil {
		return nil, false, err
	}
	req.ContentLength = length
	if b == nil {
		req.Body = http.NoBody
	}
	if b != nil && b.contentType != "" {
		req.Header.Set("Content-Type", b.contentType)
	}
	req.Header.Set("Accept", "application/json")
	for k, v := range hdr {
		req.Header[k] = v
	}
	if tok != "" {
		req.Header.Set("Authorization", "Bearer "+tok)
	}
	resp, err := c.httpClient().Do(req)
	if err != nil {
		sent := b == nil || (cr != nil && cr.n >= length)
		return nil, sent, err
	}
	return resp, true, nil
}

type countingReader struct {
	r io.Reader
	n int64
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	return n, err
}

// SendMIME sends a whole RFC 5322 message (size bytes from open) with
// POST /users/{user}/sendMail. Graph takes the recipients from the To, Cc
// and Bcc headers and saves a copy in the mailbox's Sent Items. Only 202
// is success. open is called again for a retry.
func (c *Client) SendMIME(ctx context.Context, user string, open func() (io.Reader, error), size int64) error {
	_, err := c.do(ctx, "sendMail", http.MethodPost, userPath(user)+"/sendMail", base64Body(open, size), http.StatusAccepted)
	return err
}

// CreateDraftMIME creates a draft in user's mailbox from a MIME message
// (POST /users/{user}/messages) and returns its id.
func (c *Client) CreateDraftMIME(ctx context.Context, user string, open func() (io.Reader, error), size int64) (string, error) {
	data, err := c.do(ctx, "createDraft", http.MethodPost, userPath(user)+"/messages", base64Body(open, size), http.StatusCreated)
	if err != nil {
		return "", err
	}
	var m struct {
		ID string `json:"id"`
	}
	if json.Unmarshal(data, &m) != nil || m.ID == "" {
		return "", &Error{Op: "createDraft", Status: http.StatusCreated, Message: "the answer names no message id"}
	}
	return m.ID, nil
}

// Attachment describes a file attachment.
type Attachment struct {
	Name        string
	ContentType string
	Size        int64 // decoded bytes
	IsInline    bool
	ContentID   string
}

// AddFileAttachment posts a small attachment (its JSON form must stay
// under MaxRequestBytes) to a draft:
// POST /users/{user}/messages/{id}/attachments. The content (a.Size
// decoded bytes from open) is base64-encoded on the fly.
func (c *Client) AddFileAttachment(ctx context.Context, user, msgID string, a Attachment, open func() (io.Reader, error)) error {
	head := map[string]any{
		"@odata.type": "#microsoft.graph.fileAttachment",
		"name":        a.Name,
		"contentType": a.ContentType,
		"isInline":    a.IsInline,
	}
	if a.ContentID != "" {
		head["contentId"] = a.ContentID
	}
	hj, err := json.Marshal(head)
	if err != nil {
		return err
	}
	// {"@odata.type":...,"contentBytes":"<base64>"}
	prefix := append(hj[:len(hj)-1:len(hj)-1], []byte(`,"contentBytes":"`)...)
	suffix := []byte(`"}`)
	b := &body{
		open: func() (io.Reader, error) {
			r, err := open()
			if err != nil {
				return nil, err
			}
			return io.MultiReader(bytes.NewReader(prefix), NewBase64Reader(io.LimitReader(r, a.Size)), bytes.NewReader(suffix)), nil
		},
		length:      int64(len(prefix)+len(suffix)) + int64(base64.StdEncoding.EncodedLen(int(a.Size))),
		contentType: "application/json",
	}
	_, err = c.do(ctx, "addAttachment", http.MethodPost, userPath(user)+"/messages/"+url.PathEscape(msgID)+"/attachments", b, http.StatusCreated)
	return err
}

// UploadSession is an answer of createUploadSession.
type UploadSession struct {
	UploadURL          string    `json:"uploadUrl"`
	ExpirationDateTime time.Time `json:"expirationDateTime"`
	NextExpectedRanges []string  `json:"nextExpectedRanges"`
}

// CreateUploadSession starts the upload of a large attachment to a draft:
// POST /users/{user}/messages/{id}/attachments/createUploadSession.
func (c *Client) CreateUploadSession(ctx context.Context, user, msgID string, a Attachment) (*UploadSession, error) {
	item := map[string]any{
		"attachmentType": "file",
		"name":           a.Name,
		"size":           a.Size,
		"contentType":    a.ContentType,
		"isInline":       a.IsInline,
	}
	if a.ContentID != "" {
		item["contentId"] = a.ContentID
	}
	js, err := json.Marshal(map[string]any{"AttachmentItem": item})
	if err != nil {
		return nil, err
	}
	data, err := c.do(ctx, "createUploadSession", http.MethodPost,
		userPath(user)+"/messages/"+url.PathEscape(msgID)+"/attachments/createUploadSession", bytesBody(js, "application/json"), http.StatusCreated)
	if err != nil {
		return nil, err
	}
	var us UploadSession
	if json.Unmarshal(data, &us) != nil || us.UploadURL == "" {
		return nil, &Error{Op: "createUploadSession", Status: http.StatusCreated, Message: "the answer has no uploadUrl"}
	}
	u, err := url.Parse(us.UploadURL)
	if err != nil || (u.Scheme != "https" && !(u.Scheme == "http" && isLoopbackHost(u.Hostname()))) {
		return nil, &Error{Op: "createUploadSession", Status: http.StatusCreated, Message: "the uploadUrl is not an https URL"}
	}
	return &us, nil
}

func isLoopbackHost(h string) bool {
	return h == "localhost" || h == "::1" || strings.HasPrefix(h, "127.")
}

// Upload sends size bytes from r to an upload session in ranged PUTs of
// at most chunk bytes (MaxUploadChunk if chunk <= 0). The upload URL is
// pre-authenticated: no Authorization header is sent to it. The final
// range's answer is 201; the ones before are 200.
func (c *Client) Upload(ctx context.Context, us *UploadSession, r io.Reader, size, chunk int64) error {
	if chunk <= 0 || chunk > MaxUploadChunk {
		chunk = MaxUploadChunk
	}
	for off := int64(0); off < size; {
		n := min(chunk, size-off)
		req, err := http.NewRequestWithContext(ctx, http.MethodPut, us.UploadURL, io.LimitReader(r, n))
		if err != nil {
			return &TransportError{Op: "upload", Err: errors.New("bad upload URL")}
		}
		req.ContentLength = n
		req.Header.Set("Content-Type", "application/octet-stream")
		req.Header.Set("Content-Range", fmt.Sprintf("bytes %d-%d/%d", off, off+n-1, size))
		resp, err := c.httpClient().Do(req)
		if err != nil {
			return &TransportError{Op: "upload", Err: redactURL(err)}
		}
		data, _ := io.ReadAll(io.LimitReader(resp.Body, maxErrorBody))
		resp.Body.Close()
		last := off+n == size
		switch {
		case last && (resp.StatusCode == http.StatusCreated || resp.StatusCode == http.StatusOK):
			return nil
		case !last && resp.StatusCode == http.StatusOK:
			var st struct {
				NextExpectedRanges []string `json:"nextExpectedRanges"`
			}
			if json.Unmarshal(data, &st) == nil && len(st.NextExpectedRanges) > 0 {
				want := fmt.Sprintf("%d-", off+n)
				if !strings.HasPrefix(st.NextExpectedRanges[0], want) {
					return &Error{Op: "upload", Status: resp.StatusCode, Message: fmt.Sprintf("upload session expects range %s, not %s", st.NextExpectedRanges[0], want)}
				}
			}
		default:
			return parseError("upload", resp, data, c.now())
		}
		off += n
	}
	return nil
}

// redactURL drops the query of the URL in a transport error: an upload
// URL carries its pre-authentication token there (authtoken=...).
func redactURL(err error) error {
	var ue *url.Error
	if errors.As(err, &ue) {
		if u, perr := url.Parse(ue.URL); perr == nil && u.RawQuery != "" {
			u.RawQuery = "(redacted)"
			return &url.Error{Op: ue.Op, URL: u.String(), Err: ue.Err}
		}
	}
	return err
}

// SendDraft sends a draft: POST /users/{user}/messages/{id}/send. Only 202
// is success.
func (c *Client) SendDraft(ctx context.Context, user, msgID string) error {
	_, err := c.do(ctx, "sendDraft", http.MethodPost, userPath(user)+"/messages/"+url.PathEscape(msgID)+"/send", bytesBody(nil, ""), http.StatusAccepted)
	return err
}

// DeleteMessage deletes a message (a draft left by a failed send).
func (c *Client) DeleteMessage(ctx context.Context, user, msgID string) error {
	_, err := c.do(ctx, "deleteMessage", http.MethodDelete, userPath(user)+"/messages/"+url.PathEscape(msgID), nil, http.StatusNoContent)
	return err
}

// NewBase64Reader returns a reader of the standard base64 encoding (one
// line, padded) of r, encoded on the fly with a small fixed buffer.
func NewBase64Reader(r io.Reader) io.Reader { return &base64Reader{src: r} }

type base64Reader struct {
	src  io.Reader
	in   [3 * 1024]byte
	out  [4 * 1024]byte
	o, e int // out[o:e] is pending
	err  error
}

func (b *base64Reader) Read(p []byte) (int, error) {
	for b.o == b.e {
		if b.err != nil {
			return 0, b.err
		}
		n, err := io.ReadFull(b.src, b.in[:])
		if err == io.ErrUnexpectedEOF || err == io.EOF {
			err = io.EOF
		}
		if n > 0 {
			base64.StdEncoding.Encode(b.out[:], b.in[:n])
			b.o, b.e = 0, base64.StdEncoding.EncodedLen(n)
		}
		if err != nil {
			b.err = err
		}
	}
	n := copy(p, b.out[b.o:b.e])
	b.o += n
	return n, nil
}
