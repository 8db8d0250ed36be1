package smtp

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
)

type EnhancedCode [3]int

// SMTPError specifies the error code, enhanced error code (if any) and
// message returned by the server.
type SMTPError struct {
	Code         int
	EnhancedCode EnhancedCode
	Message      string
}

// NoEnhancedCode is used to indicate that enhanced error code should not be
// included in response.
//
// Note that RFC 2034 requires an enhanced code to be included in all 2xx, 4xx
// and 5xx responses. This constant is exported for use by extensions, you
// should probably use EnhancedCodeNotSet instead.
var NoEnhancedCode = EnhancedCode{-1, -1, -1}

// EnhancedCodeNotSet is a nil value of EnhancedCode field in SMTPError, used
// to indicate that backend failed to provide enhanced status code. X.0.0 will
// be used (X is derived from error code).
var EnhancedCodeNotSet = EnhancedCode{0, 0, 0}

func (err *SMTPError) Error() string {
	s := fmt.Sprintf("SMTP error %03d", err.Code)
	if err.Message != "" {
		s += ": " + err.Message
	}
	return s
}

func (err *SMTPError) Temporary() bool {
	return err.Code/100 == 4
}

var ErrDataTooLarge = &SMTPError{
	Code:         552,
	EnhancedCode: EnhancedCode{5, 3, 4},
	Message:      "Maximum message size exceeded",
}

type dataReader struct {
	r     *bufio.Reader
	state int

	limited bool
	n       int64 // Maximum bytes remaining
}

func newDataReader(c *Conn) *dataReader {
	dr := &dataReader{
		r: c.text.R,
	}

	if c.server.MaxMessageBytes > 0 {
		dr.limited = true
		dr.n = int64(c.server.MaxMessageBytes)
	}

	return dr
}

func (r *dataReader) Read(b []byte) (n int, err error) {
	if r.limited {
		if r.n <= 0 {
			return 0, ErrDataTooLarge
		}
		if int64(len(b)) > r.n {
			b = b[0:r.n]
		}
	}

	// Code below is taken from net/textproto with only one modification to
	// not rewrite CRLF -> LF.
	//
	// oauthbridge patch: in the middle of a line (stateData), the bytes
	// that the state machine below would copy unchanged and that leave it
	// in stateData (see dataRun) are copied in bulk from what the
	// bufio.Reader already holds, instead of one ReadByte call per byte.
	// Every other byte still goes through the state machine, so the result
	// is the same byte for byte; only a Read now returns what it has once
	// the buffered input is used up (as io.Reader allows) instead of
	// blocking to fill b.

	// Run data through a simple state machine to
	// elide leading dots and detect End-of-Data (<CR><LF>.<CR><LF>) line.
	const (
		stateBeginLine = iota // beginning of line; initial state; must be zero
		stateDot              // read . at beginning of line
		stateDotCR            // read .\r at beginning of line
		stateCR               // read \r (possibly at end of line)
		stateData             // reading data in middle of line
		stateEOF              // reached .\r\n end marker line
	)
	for n < len(b) && r.state != stateEOF {
		avail := r.r.Buffered()
		if avail == 0 && n > 0 {
			// Return what is there rather than wait for more.
			break
		}
		if r.state == stateData && avail > 0 {
			if avail > len(b)-n {
				avail = len(b) - n
			}
			run, _ := r.r.Peek(avail)
			if i := dataRun(run); i > 0 {
				n += copy(b[n:], run[:i])
				r.r.Discard(i)
				continue
			}
		}
		var c byte
		c, err = r.r.ReadByte()
		if err != nil {
			if err == io.EOF {
				err = io.ErrUnexpectedEOF
			}
			break
		}
		switch r.state {
		case stateBeginLine:
			if c == '.' {
				r.state = stateDot
				continue
			}
			if c == '\r' {
				r.state = stateCR
				break
			}
			r.state = stateData
		case stateDot:
			if c == '\r' {
				r.state = stateDotCR
				continue
			}
			r.state = stateData
		case stateDotCR:
			if c == '\n' {
				r.state = stateEOF
				continue
			}
			r.state = stateData
		case stateCR:
			if c == '\n' {
				r.state = stateBeginLine
				break
			}
			r.state = stateData
		case stateData:
			if c == '\r' {
				r.state = stateCR
			}
		}
		b[n] = c
		n++
	}
	if err == nil && r.state == stateEOF {
		err = io.EOF
	}

	if r.limited {
		r.n -= int64(n)
	}
	return
}

// dataRun returns how many leading bytes of p the dataReader state machine,
// starting in stateData, copies unchanged and ends in stateData: bytes
// other than CR, and each CR LF that is followed by a byte other than "."
// and CR (which starts an ordinary line: CR -> stateCR, LF ->
// stateBeginLine, that byte -> stateData). It stops at the first CR that
// is not such a line break or whose next two bytes are not in p yet.
// (oauthbridge patch)
func dataRun(p []byte) int {
	i := 0
	for {
		j := bytes.IndexByte(p[i:], '\r')
		if j < 0 {
			return len(p)
		}
		k := i + j
		if k+2 >= len(p) || p[k+1] != '\n' || p[k+2] == '.' || p[k+2] == '\r' {
			return k
		}
		i = k + 3
	}
}
