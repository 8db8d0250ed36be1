package smtpproxy

import (
	"bytes"
	"io"
	"sync"
)

// crlfReader turns every bare CR and bare LF of a message body into CRLF
// before it goes upstream. SMTP smuggling hides a second message behind an
// end-of-data marker that the receiving server reads differently from the
// bridge (`<LF>.<LF>`, `<CR>.<CR><LF>`, ...); go-smtp only ends DATA at
// `<CR><LF>.<CR><LF>`, and once every line ends in CRLF the upstream can
// find no other end either. This is Postfix 3.9's default choice
// (smtpd_forbid_bare_newline = normalize): old scripts that end lines with a
// bare LF keep working, and nothing ambiguous is forwarded.
//
// It works a line at a time (bytes.IndexByte), not a byte at a time: a body
// of well-formed CRLF lines is copied, not rewritten.
type crlfReader struct {
	r      io.Reader
	bufs   *crlfBufs
	out    []byte // converted bytes not yet returned
	prevCR bool   // the last byte read was a CR whose line ending is not yet known
	fixed  int64  // bare CRs and LFs turned into CRLF
	err    error
}

// crlfReadSize is how much crlfReader reads from the client side at a time.
const crlfReadSize = 32 << 10

// crlfBufs are one crlfReader's buffers, recycled between messages.
type crlfBufs struct{ in, out []byte }

var crlfPool = sync.Pool{New: func() any {
	return &crlfBufs{in: make([]byte, crlfReadSize), out: make([]byte, 0, 2*crlfReadSize+2)}
}}

func newCRLFReader(r io.Reader) *crlfReader { return &crlfReader{r: r} }

// release returns the buffers for the next message; c must not be used
// afterwards.
func (c *crlfReader) release() {
	if c.bufs != nil {
		c.out = nil
		crlfPool.Put(c.bufs)
		c.bufs = nil
	}
}

func (c *crlfReader) Read(p []byte) (int, error) {
	for len(c.out) == 0 {
		if c.err != nil {
			return 0, c.err
		}
		c.fill()
	}
	n := copy(p, c.out)
	c.out = c.out[n:]
	return n, nil
}

// fill reads from r and converts what it got into out.
func (c *crlfReader) fill() {
	if c.bufs == nil {
		c.bufs = crlfPool.Get().(*crlfBufs)
	}
	n, err := c.r.Read(c.bufs.in)
	src := c.bufs.in[:n]
	out := c.bufs.out[:0]
	if c.prevCR && len(src) > 0 {
		c.prevCR = false
		out = append(out, '\r', '\n')
		if src[0] == '\n' {
			src = src[1:]
		} else {
			c.fixed++ // a CR not followed by LF
		}
	}
	for len(src) > 0 {
		i := bytes.IndexByte(src, '\n')
		if i < 0 {
			// The tail of this read: no LF. A final CR may be the first
			// half of a CRLF that the next read completes.
			line := src
			if line[len(line)-1] == '\r' {
				c.prevCR = true
				line = line[:len(line)-1]
			}
			out = c.appendLine(out, line)
			break
		}
		line := src[:i]
		src = src[i+1:]
		if len(line) > 0 && line[len(line)-1] == '\r' {
			line = line[:len(line)-1]
		} else {
			c.fixed++ // an LF without CR
		}
		out = append(c.appendLine(out, line), '\r', '\n')
	}
	if err != nil {
		if c.prevCR && err == io.EOF {
			// go-smtp ends DATA only after CRLF, so this is a BDAT body
			// whose last byte is a CR.
			c.prevCR = false
			c.fixed++
			out = append(out, '\r', '\n')
		}
		c.err = err
	}
	c.out = out
}

// appendLine appends line (no LF in it) with every CR in it turned into
// CRLF: a CR inside a line is a bare CR.
func (c *crlfReader) appendLine(out, line []byte) []byte {
	for {
		i := bytes.IndexByte(line, '\r')
		if i < 0 {
			return append(out, line...)
		}
		c.fixed++
		out = append(out, line[:i]...)
		out = append(out, '\r', '\n')
		line = line[i+1:]
	}
}
