package smtp

import (
	"bytes"
	"errors"
	"io"
)

var ErrTooLongLine = errors.New("smtp: too long a line in input stream")

// lineLimitReader reads from the underlying Reader but restricts
// line length of lines in input stream to a certain length.
//
// If line length exceeds the limit - Read returns ErrTooLongLine
type lineLimitReader struct {
	R         io.Reader
	LineLimit int

	curLineLength int
}

func (r *lineLimitReader) Read(b []byte) (int, error) {
	if r.curLineLength > r.LineLimit && r.LineLimit > 0 {
		return 0, ErrTooLongLine
	}

	n, err := r.R.Read(b)
	if err != nil {
		return n, err
	}

	if r.LineLimit == 0 {
		return n, nil
	}

	// oauthbridge patch: the same count as the byte loop it replaces
	// (a line's length includes the LF that ends the previous line),
	// checked a window at a time instead of a byte at a time. From the
	// current count, the next LineLimit-curLineLength bytes may hold no
	// LF; the byte after them must be one. So in the window of the next
	// room+1 bytes, every line that starts and ends inside it is short
	// enough, and only the last LF in it matters (bytes.LastIndexByte):
	// one search per LineLimit bytes, not one per line.
	rest := b[:n]
	for len(rest) > 0 {
		room := r.LineLimit - r.curLineLength
		w := rest
		if len(w) > room+1 {
			w = w[:room+1]
		}
		j := bytes.LastIndexByte(w, '\n')
		if j < 0 {
			if len(w) > room {
				r.curLineLength = r.LineLimit + 1
				return 0, ErrTooLongLine
			}
			r.curLineLength += len(w)
			break // w was all of rest
		}
		r.curLineLength = 1 // the LF
		rest = rest[j+1:]
	}
	return n, nil
}
