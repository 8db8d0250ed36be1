package smtpproxy

import "io"

// crlfReader turns every bare CR and bare LF of a message body into CRLF
// before it goes upstream. SMTP smuggling hides a second message behind an
// end-of-data marker that the receiving server reads differently from the
// bridge (`<LF>.<LF>`, `<CR>.<CR><LF>`, ...); go-smtp only ends DATA at
// `<CR><LF>.<CR><LF>`, and once every line ends in CRLF the upstream can
// find no other end either. This is Postfix 3.9's default choice
// (smtpd_forbid_bare_newline = normalize): old scripts that end lines with a
// bare LF keep working, and nothing ambiguous is forwarded.
type crlfReader struct {
	r      io.Reader
	in     []byte
	out    []byte // converted bytes not yet returned
	prevCR bool   // the last byte read was a CR whose line ending is not yet known
	fixed  int64  // bare CRs and LFs turned into CRLF
	err    error
}

func newCRLFReader(r io.Reader) *crlfReader { return &crlfReader{r: r} }

func (c *crlfReader) Read(p []byte) (int, error) {
	for len(c.out) == 0 {
		if c.err != nil {
			return 0, c.err
		}
		c.fill(len(p))
	}
	n := copy(p, c.out)
	c.out = c.out[n:]
	return n, nil
}

// fill reads up to max bytes from r and converts them into out.
func (c *crlfReader) fill(max int) {
	if max < 512 {
		max = 512
	}
	if cap(c.in) < max {
		c.in = make([]byte, max)
		c.out = make([]byte, 0, 2*max+2)
	}
	n, err := c.r.Read(c.in[:max])
	out := c.out[:0]
	for _, b := range c.in[:n] {
		if c.prevCR {
			c.prevCR = false
			out = append(out, '\r', '\n')
			if b == '\n' {
				continue
			}
			c.fixed++ // a CR not followed by LF
		}
		switch b {
		case '\r':
			c.prevCR = true
		case '\n':
			c.fixed++ // an LF without CR
			out = append(out, '\r', '\n')
		default:
			out = append(out, b)
		}
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
