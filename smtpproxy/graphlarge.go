package smtpproxy

import (
	"bufio"
	"bytes"
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"mime"
	"mime/quotedprintable"
	"net/http"
	"net/mail"
	"net/textproto"
	"sort"
	"strings"
	"time"

	"github.com/oauthbridge/oauthbridge/graph"
)

// The large-message path. Graph's sendMail takes at most 4 MB of base64
// (graph.MaxMIMEBytes of raw message). A larger message is split at its
// top-level multipart boundaries: the biggest parts (never the first, the
// message text) are taken out until the rest fits, the rest becomes a
// draft (POST /users/{mailbox}/messages with the MIME), each part taken out
// is attached (a JSON fileAttachment when small, else an upload session
// with ranged PUTs), and the draft is sent (POST .../send, 202). Parts are
// decoded from the spool file as they are uploaded; nothing is held in
// memory whole. A draft left by a failure is deleted.
//
// What cannot go this way is refused with 552 5.3.4: a single-part message
// over the limit, one whose text part alone is over it, and parts over
// Graph's 150 MB attachment limit. S/MIME messages over 4 MB cannot be
// split (Graph's documented limit), and attachments in nested multiparts
// stay where they are.

var (
	errTooLargeForGraph = errors.New("an attachment is larger than Microsoft Graph's 150 MB limit")
	errCannotSplit      = errors.New("the message is over Microsoft Graph's 4 MB request limit and cannot be split into attachments")
)

// smallAttachmentMax: a part up to this size (decoded) is posted as JSON
// (its base64 stays under 4 MB); larger ones use an upload session.
const smallAttachmentMax = 3_000_000

// DraftCleanupTimeout bounds the DELETE of a draft left by a failed large
// Graph send; it runs even when the client has gone.
const DraftCleanupTimeout = 30 * time.Second

// mimePart is one top-level part of the spooled body, by offsets into the
// spool file: [start, end) is the part (headers and content) without the
// CRLF before the next delimiter.
type mimePart struct {
	start, end   int64
	contentStart int64
	ctype        string
	cte          string
	name         string
	inline       bool
	contentID    string
	multipart    bool
	decodedSize  int64
}

// splitMultipart finds the top-level parts of the body.
func splitMultipart(m *spooled, boundary string) (parts []*mimePart, preambleEnd, epilogueStart int64, err error) {
	body := io.NewSectionReader(m.f, m.bodyOff, m.size-m.bodyOff)
	br := bufio.NewReaderSize(body, 16<<10)
	delim := []byte("--" + boundary)
	var pos int64
	var cur *mimePart
	preambleEnd = -1
	closed := false
	lineStart := true
	for {
		line, rerr := br.ReadSlice('\n')
		start := pos
		pos += int64(len(line))
		isDelim := false
		if lineStart && bytes.HasPrefix(line, delim) {
			rest := bytes.TrimRight(line[len(delim):], " \t\r\n")
			switch {
			case len(rest) == 0:
				isDelim = true
			case string(rest) == "--":
				isDelim, closed = true, true
			}
		}
		lineStart = rerr != bufio.ErrBufferFull
		if isDelim {
			end := start
			// The CRLF before a delimiter belongs to it.
			if cur != nil || preambleEnd < 0 {
				end = crlfBefore(m, start)
			}
			if cur != nil {
				cur.end = end
				parts = append(parts, cur)
				cur = nil
			} else if preambleEnd < 0 {
				preambleEnd = end
			}
			if closed {
				epilogueStart = start
				return parts, preambleEnd, epilogueStart, nil
			}
			cur = &mimePart{start: pos}
		}
		if rerr == io.EOF {
			break
		}
		if rerr != nil && rerr != bufio.ErrBufferFull {
			return nil, 0, 0, rerr
		}
	}
	return nil, 0, 0, errors.New("the multipart body has no closing boundary")
}

// crlfBefore returns off minus the line break that precedes it (body-relative).
func crlfBefore(m *spooled, off int64) int64 {
	if off == 0 {
		return 0
	}
	var b [2]byte
	if off >= 2 {
		if _, err := m.f.ReadAt(b[:], m.bodyOff+off-2); err == nil && b[0] == '\r' && b[1] == '\n' {
			return off - 2
		}
	}
	if _, err := m.f.ReadAt(b[:1], m.bodyOff+off-1); err == nil && b[0] == '\n' {
		return off - 1
	}
	return off
}

// readPartHeader parses a part's header fields.
func readPartHeader(m *spooled, p *mimePart) error {
	sr := io.NewSectionReader(m.f, m.bodyOff+p.start, min(p.end-p.start, 64<<10))
	br := bufio.NewReader(sr)
	tp := textproto.NewReader(br)
	h, err := tp.ReadMIMEHeader()
	if err != nil && err != io.EOF {
		return fmt.Errorf("a MIME part header cannot be parsed: %w", err)
	}
	consumed := min(p.end-p.start, 64<<10) - int64(br.Buffered()) - remaining(sr)
	p.contentStart = p.start + consumed
	ct := h.Get("Content-Type")
	if ct == "" {
		ct = "text/plain"
	}
	mt, params, err := mime.ParseMediaType(ct)
	if err != nil {
		mt = "application/octet-stream"
	}
	p.ctype = mt
	p.multipart = strings.HasPrefix(mt, "multipart/")
	p.cte = strings.ToLower(strings.TrimSpace(h.Get("Content-Transfer-Encoding")))
	dec := new(mime.WordDecoder)
	name := params["name"]
	if d, dp, err := mime.ParseMediaType(h.Get("Content-Disposition")); err == nil {
		if fn := dp["filename"]; fn != "" {
			name = fn
		}
		p.inline = d == "inline"
	}
	if n, err := dec.DecodeHeader(name); err == nil {
		name = n
	}
	p.name = name
	if cid := strings.Trim(strings.TrimSpace(h.Get("Content-Id")), "<>"); cid != "" {
		p.contentID = cid
	}
	p.inline = p.inline && p.contentID != ""
	return nil
}

func remaining(sr *io.SectionReader) int64 {
	cur, _ := sr.Seek(0, io.SeekCurrent)
	return sr.Size() - cur
}

// decoded returns a reader of the part's decoded content.
func (p *mimePart) decoded(m *spooled) io.Reader {
	raw := io.NewSectionReader(m.f, m.bodyOff+p.contentStart, p.end-p.contentStart)
	switch p.cte {
	case "base64":
		return base64.NewDecoder(base64.StdEncoding, &skipSpace{r: raw})
	case "quoted-printable":
		return quotedprintable.NewReader(raw)
	}
	return raw
}

// skipSpace drops the spaces and tabs some generators leave in base64
// lines (the decoder itself skips CR and LF).
type skipSpace struct{ r io.Reader }

func (s *skipSpace) Read(p []byte) (int, error) {
	for {
		n, err := s.r.Read(p)
		j := 0
		for _, c := range p[:n] {
			if c != ' ' && c != '\t' {
				p[j] = c
				j++
			}
		}
		if j > 0 || err != nil {
			return j, err
		}
	}
}

// sendLarge sends a message as a draft of at most target bytes plus
// attachments.
func (s *session) sendLarge(ctx context.Context, c *graph.Client, m *spooled, target int64) error {
	hdr, err := mail.ReadMessage(bytes.NewReader(m.header))
	if err != nil {
		return errCannotSplit
	}
	mt, params, err := mime.ParseMediaType(hdr.Header.Get("Content-Type"))
	if err != nil || !strings.HasPrefix(mt, "multipart/") || params["boundary"] == "" {
		return fmt.Errorf("%w (it is not a multipart message)", errCannotSplit)
	}
	switch mt {
	case "multipart/alternative":
		// Its parts are versions of one text, not attachments.
		return fmt.Errorf("%w (its text alone is too large)", errCannotSplit)
	case "multipart/signed", "multipart/encrypted":
		// Taking parts out would break the signature.
		return fmt.Errorf("%w (it is signed or encrypted)", errCannotSplit)
	}
	parts, preambleEnd, epilogueStart, err := splitMultipart(m, params["boundary"])
	if err != nil || len(parts) == 0 {
		return fmt.Errorf("%w (%v)", errCannotSplit, err)
	}
	for _, p := range parts {
		if err := readPartHeader(m, p); err != nil {
			p.multipart = true // unreadable header: the part stays in the message as it is
		}
	}
	// Take the biggest parts out until the draft fits.
	cands := make([]*mimePart, 0, len(parts))
	for i, p := range parts {
		if i > 0 && !p.multipart {
			cands = append(cands, p)
		}
	}
	sort.SliceStable(cands, func(i, j int) bool { return cands[i].end-cands[i].start > cands[j].end-cands[j].start })
	out := map[*mimePart]bool{}
	d := &draft{m: m, parts: parts, out: out, boundary: params["boundary"], preambleEnd: preambleEnd, epilogueStart: epilogueStart}
	for _, p := range cands {
		if d.len() <= target {
			break
		}
		out[p] = true
	}
	if d.len() > target {
		return fmt.Errorf("%w (what stays in the message body is still %d bytes)", errCannotSplit, d.len())
	}
	var extracted []*mimePart
	for _, p := range parts {
		if out[p] {
			n, err := io.Copy(io.Discard, p.decoded(m))
			if err != nil {
				return fmt.Errorf("%w (an attachment cannot be decoded: %v)", errCannotSplit, err)
			}
			if n > graph.MaxAttachmentBytes {
				return errTooLargeForGraph
			}
			p.decodedSize = n
			if p.name == "" {
				p.name = fmt.Sprintf("attachment-%d", len(extracted)+1)
			}
			extracted = append(extracted, p)
		}
	}

	mb := s.account.Mailbox
	id, err := c.CreateDraftMIME(ctx, mb, d.open, d.len())
	if err != nil {
		return err
	}
	keep := false
	defer func() {
		if keep {
			return
		}
		dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), DraftCleanupTimeout)
		defer cancel()
		if derr := c.DeleteMessage(dctx, mb, id); derr != nil {
			s.log.Warn("could not delete the draft left by a failed Graph send; delete it in the mailbox's Drafts folder", "error", derr.Error())
		}
	}()
	for _, p := range extracted {
		a := graph.Attachment{Name: p.name, ContentType: p.ctype, Size: p.decodedSize, IsInline: p.inline, ContentID: p.contentID}
		upload := p.decodedSize > smallAttachmentMax
		if !upload {
			err = c.AddFileAttachment(ctx, mb, id, a, func() (io.Reader, error) { return p.decoded(m), nil })
			if ge, ok := graph.AsError(err); ok && ge.Status == http.StatusRequestEntityTooLarge {
				upload = true // the request limit is lower than documented
			}
		}
		if upload {
			var us *graph.UploadSession
			us, err = c.CreateUploadSession(ctx, mb, id, a)
			if err == nil {
				err = c.Upload(ctx, us, p.decoded(m), p.decodedSize, 0)
			}
		}
		if err != nil {
			return err
		}
	}
	err = c.SendDraft(ctx, mb, id)
	var te *graph.TransportError
	if errors.As(err, &te) && te.Sent {
		keep = true // it may have been sent; deleting could remove a sent message
	}
	if err == nil {
		keep = true
	}
	s.log.Debug("large message sent as a draft with attachments", "attachments", len(extracted), "draft_bytes", d.len())
	return err
}

// draft is the message without the parts taken out.
type draft struct {
	m                          *spooled
	parts                      []*mimePart
	out                        map[*mimePart]bool
	boundary                   string
	preambleEnd, epilogueStart int64
}

func (d *draft) pieces() []io.Reader {
	m := d.m
	body := func(a, b int64) io.Reader { return io.NewSectionReader(m.f, m.bodyOff+a, b-a) }
	rs := []io.Reader{bytes.NewReader(m.header), body(0, d.preambleEnd)}
	for _, p := range d.parts {
		if d.out[p] {
			continue
		}
		rs = append(rs, strings.NewReader("\r\n--"+d.boundary+"\r\n"), body(p.start, p.end))
	}
	rs = append(rs, strings.NewReader("\r\n"), body(d.epilogueStart, m.size-m.bodyOff))
	return rs
}

func (d *draft) len() int64 {
	var n int64
	for _, r := range d.pieces() {
		switch v := r.(type) {
		case *bytes.Reader:
			n += v.Size()
		case *strings.Reader:
			n += v.Size()
		case *io.SectionReader:
			n += v.Size()
		}
	}
	return n
}

func (d *draft) open() (io.Reader, error) { return io.MultiReader(d.pieces()...), nil }
