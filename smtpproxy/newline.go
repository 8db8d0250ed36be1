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
	if len(c.out) == 0 && c.err == nil && len(p) >= crlfDirectMin {
		if n, ok := c.direct(p); ok {
			return n, nil
		}
	}
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

// crlfDirectMin is the smallest read that direct serves: below it the
// copy through out costs less than the checks.
const crlfDirectMin = 512

// direct reads straight into p and returns the bytes unchanged when every
// CR and LF in them is part of a CRLF, as in nearly every message: no copy
// and one search per line. A CR at the end is kept back (prevCR), as fill
// does, until the next read shows what follows it. Otherwise, or on a read
// error, the bytes go through fill's conversion and ok is false.
func (c *crlfReader) direct(p []byte) (n int, ok bool) {
	if c.bufs == nil {
		c.bufs = crlfPool.Get().(*crlfBufs)
	}
	p = p[:min(len(p), crlfReadSize)] // what fill's buffer can take back
	start := 0
	if c.prevCR {
		p[0], start = '\r', 1
	}
	m, err := c.r.Read(p[start:])
	b := p[:start+m]
	if err == nil && wellFormed(b) {
		c.prevCR = len(b) > 0 && b[len(b)-1] == '\r'
		if c.prevCR {
			b = b[:len(b)-1]
		}
		return len(b), true
	}
	// The slow way, from where fill would start: prevCR is in b already.
	c.prevCR = false
	c.convert(append(c.bufs.in[:0], b...), err)
	return 0, false
}

// wellFormed reports whether every CR and LF in b belongs to a CRLF,
// except that b may end with a CR. As many CRs as LFs (bytes.Count is a
// vectorised pass), and a CR in front of every LF, leave no room for a
// bare one.
func wellFormed(b []byte) bool {
	crs := bytes.Count(b, []byte{'\r'})
	if len(b) > 0 && b[len(b)-1] == '\r' {
		crs--
	}
	if crs != bytes.Count(b, []byte{'\n'}) {
		return false
	}
	for i := 0; ; {
		j := bytes.IndexByte(b[i:], '\n')
		if j < 0 {
			return true
		}
		if i+j == 0 || b[i+j-1] != '\r' {
			return false
		}
		i += j + 1
	}
}

// fill reads from r and converts what it got into out.
func (c *crlfReader) fill() {
	if c.bufs == nil {
		c.bufs = crlfPool.Get().(*crlfBufs)
	}
	n, err := c.r.Read(c.bufs.in)
	c.convert(c.bufs.in[:n], err)
}

// convert turns src, read with err, into out.
func (c *crlfReader) convert(src []byte, err error) {
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
