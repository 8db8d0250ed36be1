package imapproxy

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"strings"
)

// Parser errors. errLineTooLong and a non-synchronising literal over the
// limit end the connection; a syntaxError is answered with BAD and the rest
// of the line is skipped.
var errLineTooLong = errors.New("imapproxy: command line too long")

type syntaxError struct{ msg string }

func (e *syntaxError) Error() string { return "imapproxy: syntax error: " + e.msg }

func syntaxErrf(format string, args ...any) error {
	return &syntaxError{msg: fmt.Sprintf(format, args...)}
}

// literalTooLarge is a literal announced larger than MaxLiteralBytes. Its
// data is never read (and never allocated): for {n} the client waits for our
// continuation, which it does not get; {n+} data is already on its way, so
// the connection cannot be resynchronised and is closed.
type literalTooLarge struct {
	size    uint64
	max     int
	nonSync bool
}

func (e *literalTooLarge) Error() string {
	return fmt.Sprintf("imapproxy: literal of %d bytes exceeds the limit of %d", e.size, e.max)
}

// cmdReader decodes pre-auth commands straight from the connection's
// bufio.Reader, so a literal announced with {n} can be answered with a
// continuation request before its data is read. The non-literal bytes and
// the literal data of one command share a budget of maxLine bytes.
type cmdReader struct {
	br         *bufio.Reader
	cont       func() error // writes "+ Ready for literal data" and flushes
	maxLine    int
	maxLiteral int
	budget     int
}

// begin starts a new command with a fresh byte budget.
func (r *cmdReader) begin() { r.budget = r.maxLine }

func (r *cmdReader) readByte() (byte, error) {
	if r.budget <= 0 {
		return 0, errLineTooLong
	}
	b, err := r.br.ReadByte()
	if err != nil {
		return 0, err
	}
	r.budget--
	return b, nil
}

// readInLine is readByte for bytes inside a command line: a LF is returned
// but left unread, so that after a syntax error skipLine ends at this line
// instead of swallowing the client's next command.
func (r *cmdReader) readInLine() (byte, error) {
	c, err := r.peek()
	if err != nil || c == '\n' {
		return c, err
	}
	return r.readByte()
}

func (r *cmdReader) peek() (byte, error) {
	b, err := r.br.Peek(1)
	if err != nil {
		return 0, err
	}
	return b[0], nil
}

// Character classes of RFC 9051 section 9.
func isAtomChar(c byte) bool {
	if c <= 0x1f || c >= 0x7f {
		return false
	}
	switch c {
	case '(', ')', '{', ' ', '%', '*', '"', '\\', ']':
		return false
	}
	return true
}

func isAStringChar(c byte) bool { return isAtomChar(c) || c == ']' }

func isTagChar(c byte) bool { return isAStringChar(c) && c != '+' }

// token reads 1*c for which ok(c) holds.
func (r *cmdReader) token(ok func(byte) bool, what string) (string, error) {
	var sb strings.Builder
	for {
		c, err := r.peek()
		if err != nil {
			return "", err
		}
		if !ok(c) {
			break
		}
		if _, err := r.readByte(); err != nil {
			return "", err
		}
		sb.WriteByte(c)
	}
	if sb.Len() == 0 {
		return "", syntaxErrf("expected %s", what)
	}
	return sb.String(), nil
}

func (r *cmdReader) expectSP() error {
	c, err := r.peek()
	if err != nil {
		return err
	}
	if c != ' ' {
		return syntaxErrf("expected a space")
	}
	_, err = r.readByte()
	return err
}

// maybeSP consumes a space if one follows and reports whether it did.
func (r *cmdReader) maybeSP() (bool, error) {
	c, err := r.peek()
	if err != nil {
		return false, err
	}
	if c != ' ' {
		return false, nil
	}
	_, err = r.readByte()
	return true, err
}

// expectCRLF ends a command. A bare LF is accepted too (telnet users,
// sloppy scripts); anything else is a syntax error.
func (r *cmdReader) expectCRLF() error {
	c, err := r.peek()
	if err != nil {
		return err
	}
	if c == '\r' {
		if _, err := r.readByte(); err != nil {
			return err
		}
		if c, err = r.peek(); err != nil {
			return err
		}
	}
	if c != '\n' {
		return syntaxErrf("unexpected characters at the end of the command")
	}
	_, err = r.readByte()
	return err
}

// astring = 1*ASTRING-CHAR / quoted / literal.
func (r *cmdReader) astring() (string, error) {
	c, err := r.peek()
	if err != nil {
		return "", err
	}
	switch {
	case c == '"':
		return r.quoted()
	case c == '{':
		return r.literal()
	case isAStringChar(c):
		return r.token(isAStringChar, "a string")
	}
	return "", syntaxErrf("expected a string")
}

// nstring = "NIL" / quoted / literal; ok is false for NIL.
func (r *cmdReader) nstring() (s string, ok bool, err error) {
	c, err := r.peek()
	if err != nil {
		return "", false, err
	}
	switch c {
	case '"':
		s, err = r.quoted()
		return s, err == nil, err
	case '{':
		s, err = r.literal()
		return s, err == nil, err
	}
	a, err := r.token(isAtomChar, "a string or NIL")
	if err != nil {
		return "", false, err
	}
	if !strings.EqualFold(a, "NIL") {
		return "", false, syntaxErrf("expected a string or NIL")
	}
	return "", false, nil
}

// quoted reads a quoted string; inside it only \" and \\ are escapes.
func (r *cmdReader) quoted() (string, error) {
	if _, err := r.readByte(); err != nil { // the opening quote
		return "", err
	}
	var sb strings.Builder
	for {
		c, err := r.readInLine()
		if err != nil {
			return "", err
		}
		switch c {
		case '"':
			return sb.String(), nil
		case '\\':
			e, err := r.readInLine()
			if err != nil {
				return "", err
			}
			if e != '"' && e != '\\' {
				return "", syntaxErrf("invalid escape in quoted string")
			}
			sb.WriteByte(e)
		case '\r', '\n', 0:
			return "", syntaxErrf("unterminated quoted string")
		default:
			sb.WriteByte(c)
		}
	}
}

// literal reads {n}CRLF or {n+}CRLF and n bytes of data. The size is checked
// against maxLiteral and the remaining budget before anything is allocated or
// a continuation is sent (Per RFC 9051 section 7.5 the continuation for a
// synchronising literal must be sent before the client sends the data).
func (r *cmdReader) literal() (string, error) {
	if _, err := r.readByte(); err != nil { // '{'
		return "", err
	}
	var n uint64
	digits := 0
	for {
		c, err := r.peek()
		if err != nil {
			return "", err
		}
		if c < '0' || c > '9' {
			break
		}
		if _, err := r.readByte(); err != nil {
			return "", err
		}
		digits++
		if n < 1<<40 { // saturate instead of overflowing; anything this big is refused below
			n = n*10 + uint64(c-'0')
		}
	}
	if digits == 0 {
		return "", syntaxErrf("invalid literal size")
	}
	nonSync := false
	c, err := r.readInLine()
	if err != nil {
		return "", err
	}
	if c == '+' {
		nonSync = true
		if c, err = r.readInLine(); err != nil {
			return "", err
		}
	}
	if c != '}' {
		return "", syntaxErrf("invalid literal")
	}
	if err := r.expectCRLF(); err != nil {
		if _, ok := err.(*syntaxError); ok {
			return "", syntaxErrf("a literal size must end the line")
		}
		return "", err
	}
	if n > uint64(r.maxLiteral) {
		return "", &literalTooLarge{size: n, max: r.maxLiteral, nonSync: nonSync}
	}
	if int(n) > r.budget {
		return "", errLineTooLong
	}
	if !nonSync && r.cont != nil {
		if err := r.cont(); err != nil {
			return "", err
		}
	}
	buf := make([]byte, n)
	if _, err := io.ReadFull(r.br, buf); err != nil {
		return "", err
	}
	r.budget -= int(n)
	return string(buf), nil
}

// restOfLine reads up to the end of the line (without the CRLF); used for
// SASL continuation responses.
func (r *cmdReader) restOfLine() (string, error) {
	var sb strings.Builder
	for {
		c, err := r.readByte()
		if err != nil {
			return "", err
		}
		if c == '\n' {
			return strings.TrimSuffix(sb.String(), "\r"), nil
		}
		sb.WriteByte(c)
	}
}

// skipLine discards the rest of a command after a syntax error. If the
// skipped line announces a non-synchronising literal, the client sends its
// data without waiting, so that is skipped as well (within the limits).
func (r *cmdReader) skipLine() error {
	for {
		line, err := r.restOfLine()
		if err != nil {
			return err
		}
		n, nonSync, ok := trailingLiteral(line)
		if !ok || !nonSync {
			return nil
		}
		if n > uint64(r.maxLiteral) {
			return &literalTooLarge{size: n, max: r.maxLiteral, nonSync: true}
		}
		if int(n) > r.budget {
			return errLineTooLong
		}
		if _, err := r.br.Discard(int(n)); err != nil {
			return err
		}
		r.budget -= int(n)
	}
}

// trailingLiteral reports whether line ends with {n} or {n+}.
func trailingLiteral(line string) (n uint64, nonSync, ok bool) {
	if !strings.HasSuffix(line, "}") {
		return 0, false, false
	}
	i := strings.LastIndexByte(line, '{')
	if i < 0 {
		return 0, false, false
	}
	num := line[i+1 : len(line)-1]
	if strings.HasSuffix(num, "+") {
		nonSync = true
		num = num[:len(num)-1]
	}
	if num == "" || len(num) > 12 {
		return 0, false, len(num) > 12
	}
	for _, c := range []byte(num) {
		if c < '0' || c > '9' {
			return 0, false, false
		}
		n = n*10 + uint64(c-'0')
	}
	return n, nonSync, true
}

// command is one decoded pre-auth command. Only the fields its name needs
// are set.
type command struct {
	tag  string
	name string // upper case

	user, pass string // LOGIN
	mech       string // AUTHENTICATE
	ir         *string
	id         map[string]string // ID
}

// readCommand decodes one command up to and including its CRLF. On a
// syntax error the returned command carries whatever tag was read, so the
// BAD can be tagged.
func (r *cmdReader) readCommand() (*command, error) {
	r.begin()
	cmd := &command{}
	tag, err := r.token(isTagChar, "a tag")
	if err != nil {
		return cmd, err
	}
	cmd.tag = tag
	if err := r.expectSP(); err != nil {
		return cmd, err
	}
	name, err := r.token(isAtomChar, "a command")
	if err != nil {
		return cmd, err
	}
	cmd.name = strings.ToUpper(name)
	switch cmd.name {
	case "CAPABILITY", "NOOP", "LOGOUT", "STARTTLS":
	case "LOGIN":
		if err := r.expectSP(); err != nil {
			return cmd, err
		}
		if cmd.user, err = r.astring(); err != nil {
			return cmd, err
		}
		if err := r.expectSP(); err != nil {
			return cmd, err
		}
		if cmd.pass, err = r.astring(); err != nil {
			return cmd, err
		}
	case "AUTHENTICATE":
		if err := r.expectSP(); err != nil {
			return cmd, err
		}
		mech, err := r.token(isAtomChar, "a mechanism")
		if err != nil {
			return cmd, err
		}
		cmd.mech = strings.ToUpper(mech)
		sp, err := r.maybeSP()
		if err != nil {
			return cmd, err
		}
		if sp {
			ir, err := r.token(isAtomChar, "an initial response")
			if err != nil {
				return cmd, err
			}
			cmd.ir = &ir
		}
	case "ID":
		if err := r.expectSP(); err != nil {
			return cmd, err
		}
		if cmd.id, err = r.idParams(); err != nil {
			return cmd, err
		}
	default:
		return cmd, syntaxErrf("unknown command or not allowed before login")
	}
	return cmd, r.expectCRLF()
}

// idParams reads "(" *(string SP nstring) ")" / NIL (RFC 2971).
func (r *cmdReader) idParams() (map[string]string, error) {
	c, err := r.peek()
	if err != nil {
		return nil, err
	}
	if c != '(' {
		if _, ok, err := r.nstring(); err != nil || ok {
			if err == nil {
				err = syntaxErrf("expected an ID parameter list or NIL")
			}
			return nil, err
		}
		return nil, nil
	}
	if _, err := r.readByte(); err != nil {
		return nil, err
	}
	params := map[string]string{}
	for i := 0; ; i++ {
		c, err := r.peek()
		if err != nil {
			return nil, err
		}
		if c == ')' {
			_, err := r.readByte()
			return params, err
		}
		if i > 0 {
			if err := r.expectSP(); err != nil {
				return nil, err
			}
		}
		k, _, err := r.nstring()
		if err != nil {
			return nil, err
		}
		if err := r.expectSP(); err != nil {
			return nil, err
		}
		v, _, err := r.nstring()
		if err != nil {
			return nil, err
		}
		if len(params) < 30 { // RFC 2971: at most 30 field-value pairs
			params[strings.ToLower(k)] = v
		}
	}
}
