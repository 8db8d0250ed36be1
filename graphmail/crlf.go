package graphmail

import "io"

// CRLF returns a reader of r's content with every bare LF turned into
// CRLF and a final CRLF added when the content does not end with one: the
// octets POP3 RETR and IMAP BODY[] send and RFC822.SIZE counts. Exchange's
// $value already uses CRLF; this keeps the count right when it does not.
func CRLF(r io.Reader) io.Reader { return &crlfReader{r: r} }

type crlfReader struct {
	r       io.Reader
	buf     [16 << 10]byte
	out     []byte
	prevCR  bool
	last    byte
	any     bool
	eof     bool
	done    bool
	scratch []byte
}

func (c *crlfReader) Read(p []byte) (int, error) {
	for len(c.out) == 0 {
		if c.done {
			return 0, io.EOF
		}
		if c.eof {
			c.done = true
			if c.any && c.last != '\n' {
				if c.last == '\r' {
					c.out = []byte("\n")
				} else {
					c.out = []byte("\r\n")
				}
				continue
			}
			return 0, io.EOF
		}
		n, err := c.r.Read(c.buf[:])
		if n > 0 {
			c.scratch = c.scratch[:0]
			for _, b := range c.buf[:n] {
				if b == '\n' && !c.prevCR {
					c.scratch = append(c.scratch, '\r')
				}
				c.scratch = append(c.scratch, b)
				c.prevCR = b == '\r'
			}
			c.last = c.buf[n-1]
			c.any = true
			c.out = c.scratch
		}
		if err == io.EOF {
			c.eof = true
		} else if err != nil {
			return 0, err
		}
	}
	n := copy(p, c.out)
	c.out = c.out[n:]
	return n, nil
}
