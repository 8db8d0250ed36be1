package imapgraph

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Named limits of a Graph-served session's client stream (see clientStream).
const (
	// DefaultIdleTimeout is Options.IdleTimeout's default: the
	// configuration's imap { idle_timeout } default.
	DefaultIdleTimeout = 35 * time.Minute
	// CommandTimeout: once the first byte of a command (or of IDLE's DONE)
	// has come, the rest of its line must come within this; imapserver's
	// own per-command read timeout, and the proxy's preauth_timeout
	// default. A literal's data gets imapserver's 5 minutes.
	CommandTimeout = 30 * time.Second
	// maxIDLiteral bounds a literal in an ID command: RFC 2971 limits a
	// value to 1024 octets.
	maxIDLiteral = 1024
	// maxIDCommand bounds a whole ID command (30 pairs of RFC 2971's
	// limits fit easily).
	maxIDCommand = 64 << 10
	// idReply is the bridge's answer to ID, the same as the IMAP proxy's
	// before login.
	idReply = `* ID ("name" "oauthbridge")`
	// byeIdle ends a session idle for longer than the idle timeout, as
	// the proxy's pre-auth timeout does.
	byeIdle = "* BYE Autologout; idle for too long"
)

// clientStream sits between the client connection and imapserver's reader.
// imapserver reads a command only after it has answered the previous one,
// so the stream hands it at most one line per Read and knows where each
// command begins: a command begins after a line end once imapserver has
// written the tagged answer of the previous command (lines inside a
// command, IDLE's DONE and literal data come before that answer). There
// the stream
//   - waits for the client at most the idle timeout (imapserver's own
//     35 minutes do not apply), then says BYE and ends the session; the
//     same applies to the wait for IDLE's DONE;
//   - answers ID itself (imapserver has no ID), as the proxy does before
//     login, and CAPABILITY, so that both list ID.
//
// While the client is idle (nothing buffered at a command start: hours in
// IDLE) the stream holds no read buffer: it waits for the client's first
// byte with a one-byte read and takes a buffer from a pool when the
// command comes.
//
// Read runs on imapserver's connection goroutine; the output side
// (sawOutput) runs under handoffConn.mu.
type clientStream struct {
	c    *handoffConn
	src  prefixReader  // the client: what the proxy read ahead, then the connection
	br   *bufio.Reader // over src; nil while waiting for an idle client (see acquire)
	idle time.Duration
	one  [1]byte // the first byte after an idle wait

	pending  []byte // the rest of the line being handed over
	literal  int64  // bytes of literal data announced by the last line, not yet handed over
	lineDone bool   // the last byte handed over ended a line
	tag      string // tag of the command being served; "" before the first
	idling   bool   // that command is IDLE: the next line is DONE
	timedOut func() // logs the idle timeout
}

// streamBuffer is the size of a clientStream's read buffer: a command
// line longer than this is handed over in parts, but ID (which the stream
// parses itself) must fit.
const streamBuffer = 4096

// streamReaders holds the read buffers of the streams whose clients are
// idle.
var streamReaders = sync.Pool{New: func() any { return bufio.NewReaderSize(nil, streamBuffer) }}

// newClientStream returns the stream of c's client. in is the client's
// input; when it is a *bufio.Reader over c's connection (the proxy's), what
// it has buffered is copied and the rest is read from the connection, so
// that its buffer is not kept for the session.
func newClientStream(c *handoffConn, in io.Reader, idle time.Duration) *clientStream {
	s := &clientStream{c: c, idle: idle, lineDone: true, src: prefixReader{r: in}}
	if br, ok := in.(*bufio.Reader); ok {
		if n := br.Buffered(); n > 0 {
			b, _ := br.Peek(n)
			s.src.pre = bytes.Clone(b)
		}
		s.src.r = c.Conn
	}
	return s
}

// acquire takes a read buffer for the stream if it has none.
func (s *clientStream) acquire() {
	if s.br == nil {
		s.br = streamReaders.Get().(*bufio.Reader)
		s.br.Reset(&s.src)
	}
}

// release gives the stream's read buffer back if it holds nothing.
func (s *clientStream) release() {
	if s.br != nil && s.br.Buffered() == 0 {
		s.br.Reset(nil)
		streamReaders.Put(s.br)
		s.br = nil
	}
}

// prefixReader reads pre, then r.
type prefixReader struct {
	pre []byte
	r   io.Reader
}

func (p *prefixReader) Read(b []byte) (int, error) {
	if len(p.pre) > 0 {
		n := copy(b, p.pre)
		p.pre = p.pre[n:]
		if len(p.pre) == 0 {
			p.pre = nil
		}
		return n, nil
	}
	return p.r.Read(b)
}

func (s *clientStream) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	if len(s.pending) == 0 && s.literal > 0 {
		// Literal data (APPEND's message) goes through in bulk, unless
		// imapserver refused the literal (it answered the command).
		if !s.c.answered() {
			s.acquire()
			n, err := s.br.Read(p[:min(int64(len(p)), s.literal)])
			s.literal -= int64(n)
			s.lineDone = false // the command's line goes on after the literal
			return n, err
		}
		s.literal = 0
	}
	for len(s.pending) == 0 {
		if err := s.next(); err != nil {
			return 0, err
		}
	}
	n := copy(p, s.pending)
	s.pending = s.pending[n:]
	return n, nil
}

// next reads the next line (or up to a buffer of it) into pending,
// answering the ID commands it finds at command starts.
func (s *clientStream) next() error {
	atStart := s.lineDone && (s.tag == "" || s.c.answered())
	if atStart || (s.lineDone && s.idling) {
		// Waiting for a command, or for DONE: the idle timeout.
		if err := s.waitClient(); err != nil {
			return err
		}
		_ = s.c.Conn.SetReadDeadline(time.Now().Add(CommandTimeout))
	}
	s.acquire()
	line, err := s.br.ReadSlice('\n')
	if len(line) == 0 {
		if errors.Is(err, bufio.ErrBufferFull) {
			err = nil
		}
		return err
	}
	complete := err == nil
	if atStart && complete {
		tag, name, rest := commandName(line)
		switch {
		case name == "ID":
			return s.id(tag, line)
		case name == "CAPABILITY" && len(bytes.TrimSpace(rest)) == 0:
			if caps := s.c.capabilities(); caps != "" {
				return s.c.direct("* CAPABILITY " + caps + "\r\n" + tag + " OK CAPABILITY completed\r\n")
			}
		}
		s.begin(tag)
		s.idling = name == "IDLE"
	} else if atStart {
		s.begin(firstToken(line))
		s.idling = false
	} else if s.lineDone && s.idling {
		s.idling = false // this is DONE (or what imapserver makes of it)
	}
	s.pending = append(s.pending[:0], line...)
	s.lineDone = complete
	if n, _, ok := literalAtEnd(line); ok && complete {
		s.literal = n
	}
	return nil
}

// begin notes the command that starts now; its tagged answer (written
// by imapserver) marks where the next one starts.
func (s *clientStream) begin(tag string) {
	if tag == "" {
		tag = "\x00" // no tag: imapserver ends the session; nothing matches
	}
	s.tag = tag
	s.c.beginCommand(tag)
}

// waitClient waits up to the idle timeout for the client's next byte; on
// timeout the client gets BYE. The read buffer, if empty, is given back
// for the wait.
func (s *clientStream) waitClient() error {
	if (s.br != nil && s.br.Buffered() > 0) || len(s.src.pre) > 0 {
		return nil
	}
	s.release()
	if s.idle > 0 {
		_ = s.c.Conn.SetReadDeadline(time.Now().Add(s.idle))
	}
	n, err := io.ReadAtLeast(s.src.r, s.one[:], 1)
	if n > 0 {
		s.src.pre = s.one[:n]
		return nil
	}
	var ne net.Error
	if err != nil && errors.As(err, &ne) && ne.Timeout() {
		if s.timedOut != nil {
			s.timedOut()
		}
		s.c.bye(byeIdle)
	}
	return err
}

// commandName returns a command line's tag and upper-cased name.
func commandName(line []byte) (tag, name string, rest []byte) {
	tag = firstToken(line)
	if tag == "" {
		return "", "", nil
	}
	rest = line[len(tag):]
	if len(rest) == 0 || rest[0] != ' ' {
		return tag, "", nil
	}
	rest = rest[1:]
	i := bytes.IndexAny(rest, " \r\n")
	if i < 0 {
		i = len(rest)
	}
	return tag, strings.ToUpper(string(rest[:i])), rest[i:]
}

func firstToken(line []byte) string {
	i := bytes.IndexAny(line, " \r\n")
	if i < 0 {
		i = len(line)
	}
	return string(line[:i])
}

// id answers the ID command whose first line is line (RFC 2971): the
// client's literals are read (with a continuation for {n}), its
// parameters logged, and the answer is the proxy's.
func (s *clientStream) id(tag string, line []byte) error {
	cmd := append([]byte(nil), line...)
	for {
		n, nonSync, ok := literalAtEnd(cmd)
		if !ok {
			break
		}
		if n > maxIDLiteral || len(cmd)+int(n) > maxIDCommand {
			if nonSync { // its data is on its way: the stream cannot resynchronise
				s.c.bye("* BYE Literal too large")
				return fmt.Errorf("imapgraph: ID literal of %d bytes (max %d)", n, maxIDLiteral)
			}
			return s.c.direct(tag + fmt.Sprintf(" BAD Literal too large (max %d bytes)\r\n", maxIDLiteral))
		}
		if !nonSync {
			if err := s.c.direct("+ Ready for literal data\r\n"); err != nil {
				return err
			}
		}
		_ = s.c.Conn.SetReadDeadline(time.Now().Add(CommandTimeout))
		lit := make([]byte, n)
		if _, err := io.ReadFull(s.br, lit); err != nil {
			return err
		}
		cmd = append(cmd, lit...)
		more, err := s.br.ReadSlice('\n')
		cmd = append(cmd, more...)
		if err != nil {
			if errors.Is(err, bufio.ErrBufferFull) {
				s.c.bye("* BYE Command line too long")
			}
			return err
		}
	}
	_, _, rest := commandName(cmd)
	params, err := parseIDParams(rest)
	if err != nil {
		return s.c.direct(tag + " BAD Syntax error in ID: " + err.Error() + "\r\n")
	}
	if s.c.log != nil {
		s.c.log.Debug("client id", "client_name", params["name"], "client_version", params["version"])
	}
	return s.c.direct(idReply + "\r\n" + tag + " OK ID completed\r\n")
}

// literalAtEnd reports the literal "{n}" or "{n+}" (or "~{n}") a line
// ends with before its CRLF.
func literalAtEnd(line []byte) (n int64, nonSync, ok bool) {
	l := bytes.TrimSuffix(bytes.TrimSuffix(line, []byte("\n")), []byte("\r"))
	if len(l) == 0 || l[len(l)-1] != '}' {
		return 0, false, false
	}
	i := bytes.LastIndexByte(l, '{')
	if i < 0 {
		return 0, false, false
	}
	num := string(l[i+1 : len(l)-1])
	if strings.HasSuffix(num, "+") {
		num, nonSync = num[:len(num)-1], true
	}
	n, err := strconv.ParseInt(num, 10, 64)
	if err != nil || n < 0 || num == "" || num[0] == '+' {
		return 0, false, false
	}
	return n, nonSync, true
}

// parseIDParams parses what follows "tag ID": SP ("(" *(string SP
// nstring) ")" / "NIL") CRLF, with literals inline ({n}CRLF and n bytes).
// Keys are lower-cased; at most 30 pairs are kept (RFC 2971).
func parseIDParams(b []byte) (map[string]string, error) {
	p := idParser{b: b}
	if !p.byte(' ') {
		return nil, errors.New("expected SP")
	}
	params := map[string]string{}
	if p.word("NIL") {
		return params, p.crlf()
	}
	if !p.byte('(') {
		return nil, errors.New("expected a parameter list or NIL")
	}
	for i := 0; !p.byte(')'); i++ {
		if i > 0 && !p.byte(' ') {
			return nil, errors.New("expected SP or )")
		}
		k, err := p.nstring()
		if err != nil {
			return nil, err
		}
		if !p.byte(' ') {
			return nil, errors.New("expected SP after a field name")
		}
		v, err := p.nstring()
		if err != nil {
			return nil, err
		}
		if len(params) < 30 {
			params[strings.ToLower(k)] = v
		}
	}
	return params, p.crlf()
}

type idParser struct {
	b []byte
	i int
}

func (p *idParser) byte(c byte) bool {
	if p.i < len(p.b) && p.b[p.i] == c {
		p.i++
		return true
	}
	return false
}

func (p *idParser) word(w string) bool {
	if len(p.b)-p.i >= len(w) && strings.EqualFold(string(p.b[p.i:p.i+len(w)]), w) {
		p.i += len(w)
		return true
	}
	return false
}

func (p *idParser) crlf() error {
	if p.byte('\r') && p.byte('\n') && p.i == len(p.b) {
		return nil
	}
	return errors.New("expected CRLF")
}

// nstring reads a quoted string, a literal or NIL ("").
func (p *idParser) nstring() (string, error) {
	if p.word("NIL") {
		return "", nil
	}
	switch {
	case p.byte('"'):
		var sb strings.Builder
		for p.i < len(p.b) {
			c := p.b[p.i]
			p.i++
			switch c {
			case '"':
				return sb.String(), nil
			case '\\':
				if p.i == len(p.b) {
					return "", errors.New("unterminated quoted string")
				}
				c = p.b[p.i]
				p.i++
			case '\r', '\n':
				return "", errors.New("line break in a quoted string")
			}
			sb.WriteByte(c)
		}
		return "", errors.New("unterminated quoted string")
	case p.byte('{'):
		j := bytes.IndexByte(p.b[p.i:], '}')
		if j < 0 {
			return "", errors.New("malformed literal")
		}
		num := strings.TrimSuffix(string(p.b[p.i:p.i+j]), "+")
		n, err := strconv.Atoi(num)
		p.i += j + 1
		if err != nil || n < 0 || !p.byte('\r') || !p.byte('\n') || len(p.b)-p.i < n {
			return "", errors.New("malformed literal")
		}
		s := string(p.b[p.i : p.i+n])
		p.i += n
		return s, nil
	}
	return "", errors.New("expected a string or NIL")
}
