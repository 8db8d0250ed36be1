package smtpproxy

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/textproto"
	"strings"
	"sync"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/oauthbridge/oauthbridge/config"
	"github.com/oauthbridge/oauthbridge/internal/frontdoor"
	"github.com/oauthbridge/oauthbridge/tokens"
)

// upstream is one authenticated submission connection to Microsoft 365.
type upstream struct {
	c       *smtp.Client
	conn    net.Conn   // the TLS connection under c
	batch   *batchConn // under conn, if set: body writes leave in batches
	addr    string
	release func() // frees the per-account limiter slot

	chunking   bool // send bodies with BDAT (the upstream offers CHUNKING)
	pipelining bool // the upstream offers PIPELINING: MAIL goes up with the first RCPT, and a BDAT chunk need not wait for the previous chunk's reply

	closeOnce sync.Once
}

func (u *upstream) close() {
	u.closeOnce.Do(func() {
		u.conn.Close()
		if u.release != nil {
			u.release()
		}
	})
}

// quit says goodbye politely; the slot is released either way.
func (u *upstream) quit() {
	_ = u.c.Quit()
	u.close()
}

// connectError says at which step connecting upstream failed.
type connectError struct {
	stage string // dial, greeting, ehlo, starttls, tls, auth
	err   error
}

func (e *connectError) Error() string { return "smtpproxy: upstream " + e.stage + ": " + e.err.Error() }
func (e *connectError) Unwrap() error { return e.err }

// dial opens, secures and authenticates the upstream connection for the
// session's account. Every error it returns is a wire error for the client.
func (s *session) dial() (*upstream, *smtp.SMTPError) {
	acct := s.account
	lim := s.limits()
	addr := acct.Provider.SMTPServer
	log := s.log.With("upstream", addr)

	// Exchange allows three concurrent submissions per mailbox and answers
	// a fourth with 432 4.3.2; wait briefly for a slot, then answer 4xx.
	g, f := s.srv.gate.Open(s.ctx, s.checked)
	if f != nil {
		if f.Class != "" {
			s.srv.m.UpstreamErrors.WithLabelValues("smtp", f.Class).Inc()
		}
		log.Warn("per-mailbox SMTP connection limit reached; client told to retry", "limit", acct.SMTPMaxConnections, "error", f.Error())
		return nil, failureReply(f, false)
	}
	ok := false
	defer func() {
		if !ok {
			g.Release()
		}
	}()

	tok, werr := s.token(log, g)
	if werr != nil {
		return nil, werr
	}
	up, err := s.connect(addr, tok, lim.UpstreamTimeout)
	if se, rejected := authRejected(err); rejected && !isSMTPAuthDisabled(se) {
		// The token may have been revoked early: forget it and try once
		// more with a fresh one.
		g.Rejected(tok)
		log.Warn("upstream rejected the access token; retrying once with a fresh token", "error", codeString(se))
		tok, werr = s.token(log, g)
		if werr != nil {
			return nil, werr
		}
		up, err = s.connect(addr, tok, lim.UpstreamTimeout)
	}
	if se, rejected := authRejected(err); rejected && isSMTPAuthDisabled(se) && acct.SendVia == config.SendViaAuto {
		// send_via = "auto": Mail switches this account to Graph.
		s.smtpAuthOff = se
		s.srv.m.UpstreamErrors.WithLabelValues("smtp", "auth").Inc()
		return nil, failureReply(&frontdoor.Failure{Kind: frontdoor.Rejected}, false)
	}
	s.srv.notifyUpstreamLogin(acct, err) // send.go
	if err != nil {
		return nil, s.connectFailure(log, err)
	}
	up.release = g.Release
	ok = true
	log.Debug("upstream connection ready")
	return up, nil
}

// token gets an access token; a failure is logged and answered with a
// reply that keeps the message on the client: 454 when a person or an
// administrator must act, 451 for temporary trouble.
func (s *session) token(log *slog.Logger, g *frontdoor.Grant) (string, *smtp.SMTPError) {
	tok, f := g.Token(s.ctx)
	if f != nil {
		logTokenFailure(log, f, "")
		return "", failureReply(f, false)
	}
	return tok, nil
}

// logTokenFailure says who has to act on a token failure; resource is ""
// for the SMTP token, "graph" for Microsoft Graph's.
func logTokenFailure(log *slog.Logger, f *frontdoor.Failure, resource string) {
	attrs := []any{"error", f.Err.Error()}
	if resource != "" {
		attrs = append(attrs, "resource", resource)
	}
	var te *tokens.Error
	if errors.As(f.Err, &te) && te.AADSTS != 0 {
		attrs = append(attrs, "aadsts", te.AADSTS)
	}
	graph := resource == "graph"
	switch {
	case f.Kind == frontdoor.NeedsLogin && graph:
		log.Error(fmt.Sprintf("no Microsoft Graph token for this account: run 'oauthbridge login %s' (after adding any missing Graph permission); mail is kept by the client (454) until then", f.Account), attrs...)
	case f.Kind == frontdoor.NeedsLogin:
		log.Error(fmt.Sprintf("mailbox needs re-authorisation: run 'oauthbridge login %s'; mail is kept by the client (454) until then", f.Account), attrs...)
	case f.Kind == frontdoor.Failing && graph:
		log.Error("cannot get a Microsoft Graph token: bridge or app registration configuration problem; mail is kept by the client (454)", attrs...)
	case f.Kind == frontdoor.Failing:
		log.Error("cannot get an access token: bridge or app registration configuration problem; mail is kept by the client (454)", attrs...)
	case graph:
		log.Warn("Microsoft Graph token temporarily unavailable; client told to retry", attrs...)
	default:
		log.Warn("access token temporarily unavailable; client told to retry", attrs...)
	}
}

// connect dials addr and runs greeting, EHLO, STARTTLS (certificate
// verified), EHLO and AUTH XOAUTH2.
//
// The plaintext part is done by hand because go-smtp's client has no public
// STARTTLS and its NewClientStartTLS would greet as "localhost"; after the
// handshake, go-smtp's Client takes over, fed a synthetic 220 greeting (a
// server sends none after STARTTLS).
func (s *session) connect(addr, tok string, timeout time.Duration) (*upstream, error) {
	domain := "localhost"
	if s.cfg != nil && s.cfg.SMTP != nil && s.cfg.SMTP.Domain != "" {
		domain = s.cfg.SMTP.Domain
	}
	if implicitTLS(addr) {
		return s.connectImplicitTLS(addr, tok, domain, timeout) // implicit.go
	}
	d := net.Dialer{Timeout: timeout}
	raw, err := d.DialContext(s.ctx, "tcp", addr)
	if err != nil {
		return nil, &connectError{"dial", err}
	}
	stop := context.AfterFunc(s.ctx, func() { raw.Close() })
	defer stop()
	fail := func(stage string, err error) (*upstream, error) {
		raw.Close()
		return nil, &connectError{stage, err}
	}
	_ = raw.SetDeadline(time.Now().Add(timeout))
	tp := textproto.NewConn(raw)
	if _, err := readReply(tp, 220); err != nil {
		return fail("greeting", err)
	}
	if err := tp.PrintfLine("EHLO %s", domain); err != nil {
		return fail("ehlo", err)
	}
	ehlo, err := readReply(tp, 250)
	if err != nil {
		return fail("ehlo", err)
	}
	if !hasExtension(ehlo, "STARTTLS") {
		return fail("starttls", errors.New("server does not offer STARTTLS; refusing to send a token in the clear"))
	}
	if err := tp.PrintfLine("STARTTLS"); err != nil {
		return fail("starttls", err)
	}
	if _, err := readReply(tp, 220); err != nil {
		return fail("starttls", err)
	}
	if tp.R.Buffered() > 0 {
		// RFC 3207 section 6: nothing may follow the 220 in plaintext.
		return fail("starttls", errors.New("server sent data after STARTTLS"))
	}
	bc := &batchConn{Conn: raw}
	tc := tls.Client(bc, s.account.Provider.UpstreamTLS(addr))
	if err := tc.HandshakeContext(s.ctx); err != nil {
		return fail("tls", err)
	}
	_ = raw.SetDeadline(time.Time{}) // go-smtp sets its own per command

	c := smtp.NewClient(&greetedConn{Conn: tc, pending: []byte("220 " + addr + " ESMTP (TLS)\r\n")})
	c.CommandTimeout = timeout
	c.SubmissionTimeout = DefaultSubmissionTimeout
	if err := c.Hello(domain); err != nil {
		return fail("ehlo", err)
	}
	if err := c.Auth(tokens.NewXOAUTH2Client(s.account.Mailbox, tok)); err != nil {
		return fail("auth", err)
	}
	up := s.srv.newUpstream(c, tc, addr)
	up.batch = bc
	return up, nil
}

// newUpstream wraps an authenticated client connection and notes which
// of the extensions the relay uses the upstream offers.
func (s *Server) newUpstream(c *smtp.Client, conn net.Conn, addr string) *upstream {
	up := &upstream{c: c, conn: conn, addr: addr}
	up.chunking, _ = c.Extension("CHUNKING")
	up.chunking = up.chunking && !s.noBDAT
	up.pipelining, _ = c.Extension("PIPELINING")
	up.pipelining = up.pipelining && !s.noPipelining
	return up
}

// readReply reads one reply; a code other than want comes back as an
// *smtp.SMTPError.
func readReply(tp *textproto.Conn, want int) (string, error) {
	_, msg, err := tp.ReadResponse(want)
	var pe *textproto.Error
	if errors.As(err, &pe) {
		return "", replyError(pe.Code, pe.Msg)
	}
	return msg, err
}

// hasExtension looks for ext among the EHLO reply's keyword lines.
func hasExtension(ehlo, ext string) bool {
	lines := strings.Split(ehlo, "\n")
	for _, l := range lines[1:] {
		if f := strings.Fields(l); len(f) > 0 && strings.EqualFold(f[0], ext) {
			return true
		}
	}
	return false
}

// greetedConn hands go-smtp's client a greeting before the real stream.
type greetedConn struct {
	net.Conn
	pending []byte
}

func (g *greetedConn) Read(p []byte) (int, error) {
	if len(g.pending) > 0 {
		n := copy(p, g.pending)
		g.pending = g.pending[n:]
		return n, nil
	}
	return g.Conn.Read(p)
}

// authRejected reports a permanent upstream AUTH failure (535 and friends).
func authRejected(err error) (*smtp.SMTPError, bool) {
	var ce *connectError
	if !errors.As(err, &ce) || ce.stage != "auth" {
		return nil, false
	}
	se, ok := asSMTP(ce.err)
	if !ok || se.Code/100 != 5 {
		return nil, false
	}
	return se, true
}

// isSMTPAuthDisabled matches 535 5.7.139: SMTP AUTH is switched off for
// the tenant or mailbox (or blocked by security defaults / Conditional
// Access). A fresh token does not help.
func isSMTPAuthDisabled(se *smtp.SMTPError) bool {
	return se.EnhancedCode == smtp.EnhancedCode{5, 7, 139}
}

// connectFailure logs why the upstream connection failed, in words an
// administrator can act on, and returns the client's reply. Nothing here
// bounces a message: a bridge-side problem is always 4xx.
func (s *session) connectFailure(log *slog.Logger, err error) *smtp.SMTPError {
	var ce *connectError
	if !errors.As(err, &ce) {
		ce = &connectError{"dial", err}
	}
	se, isSMTP := asSMTP(ce.err)
	switch {
	case ce.stage == "auth" && isSMTP && se.Code/100 == 5:
		s.srv.m.UpstreamErrors.WithLabelValues("smtp", "auth").Inc()
		msg := explainAuthRejection(se, s.account.Mailbox)
		if s.account.Provider.IsGoogle() {
			msg = fmt.Sprintf("Gmail rejected the access token for %s even after a refresh. Check that the token is the mailbox's own (a person signs in as %s; a service account needs domain-wide delegation for https://mail.google.com/). Clients are told to retry (454) until then", s.account.Mailbox, s.account.Mailbox)
		}
		log.Error(msg, "error", codeString(se))
		return failureReply(&frontdoor.Failure{Kind: frontdoor.Rejected, Google: s.account.Provider.IsGoogle()}, false)
	case isSMTP && se.Code/100 == 4:
		class := "protocol"
		if se.EnhancedCode == (smtp.EnhancedCode{4, 3, 2}) {
			class = "limit"
		}
		s.srv.m.UpstreamErrors.WithLabelValues("smtp", class).Inc()
		log.Warn("upstream refused the connection temporarily; client told to retry", "stage", ce.stage, "error", codeString(se))
		return se
	case ce.stage == "tls":
		s.srv.m.UpstreamErrors.WithLabelValues("smtp", "tls").Inc()
		log.Error("upstream TLS handshake failed (is the server certificate trusted? see the provider's ca_file)", "error", ce.err.Error())
		return failureReply(&frontdoor.Failure{Kind: frontdoor.Unreachable}, false)
	case ce.stage == "dial":
		s.srv.m.UpstreamErrors.WithLabelValues("smtp", "dial").Inc()
		log.Warn("upstream unreachable; client told to retry", "error", ce.err.Error())
		return failureReply(&frontdoor.Failure{Kind: frontdoor.Unreachable}, false)
	default:
		s.srv.m.UpstreamErrors.WithLabelValues("smtp", errorClass(ce.err)).Inc()
		log.Warn("upstream connection failed; client told to retry", "stage", ce.stage, "error", ce.err.Error())
		return failureReply(&frontdoor.Failure{Kind: frontdoor.Unreachable}, false)
	}
}

func explainAuthRejection(se *smtp.SMTPError, mailbox string) string {
	if isSMTPAuthDisabled(se) {
		return fmt.Sprintf("Microsoft 365 refused SMTP AUTH for %s: authenticated client submission (SMTP AUTH) is disabled for this mailbox or the whole tenant, "+
			"or blocked by security defaults or Conditional Access. An Exchange administrator can enable it with "+
			"'Set-CASMailbox -Identity %s -SmtpClientAuthenticationDisabled $false' (or tenant-wide 'Set-TransportConfig -SmtpClientAuthenticationDisabled $false'); "+
			"see https://aka.ms/smtp_auth_disabled. Clients are told to retry (454) until then", mailbox, mailbox)
	}
	return fmt.Sprintf("Microsoft 365 rejected the access token for %s even after a refresh. Check that the app registration has the delegated SMTP.Send permission with consent "+
		"(or, for an app-only account, that the Exchange service principal exists and has FullAccess/SendAs on the mailbox: New-ServicePrincipal, Add-MailboxPermission), "+
		"that the signed-in user may send as the mailbox, and that SMTP AUTH is enabled for it (Set-CASMailbox -Identity %s -SmtpClientAuthenticationDisabled $false). "+
		"Permission changes can take up to an hour. Clients are told to retry (454) until then", mailbox, mailbox)
}

// Named sizes of the message-body path.
const (
	// DataWriteBuffer sits between a DATA body and the upstream TLS
	// connection, so the body leaves in full TLS records rather than in the
	// 4 KiB pieces of go-smtp's writer.
	DataWriteBuffer = 64 << 10
	// BDATChunkBytes is the largest BDAT chunk sent upstream when the
	// upstream offers CHUNKING; one chunk per message in transit is held in
	// memory. A message smaller than this goes up as one "BDAT n LAST".
	BDATChunkBytes = 256 << 10
)

var (
	writerPool = sync.Pool{New: func() any { return bufio.NewWriterSize(nil, DataWriteBuffer) }}
	chunkPool  = sync.Pool{New: func() any { b := make([]byte, BDATChunkBytes); return &b }}
)

// relayStage says how far sendMessage got when it failed.
type relayStage int

const (
	// stageStart: DATA was refused or failed; no body byte went upstream.
	stageStart relayStage = iota
	// stageBody: failed while the body was being read or sent; the
	// upstream never saw the end of the message.
	stageBody
	// stageEnd: the end of the message was sent; the error is the
	// upstream's refusal, or no reply came (the message may be delivered).
	stageEnd
)

// relayError is sendMessage's error. err is an *smtp.SMTPError when the
// upstream refused, otherwise a transport error or the body reader's error.
type relayError struct {
	stage relayStage
	err   error
}

func (e *relayError) Error() string { return "smtpproxy: relaying the message: " + e.err.Error() }
func (e *relayError) Unwrap() error { return e.err }

// sendMessage sends the body from src in the open transaction and returns
// the upstream's final 2xx reply text. src must yield CRLF-normalised bytes
// (crlfReader). With CHUNKING the body goes up in BDAT chunks, otherwise as
// dot-stuffed DATA. Either way the end of the message (the LAST chunk, the
// final ".") is sent only after src returned io.EOF: a body that fails
// half-way is never completed upstream; the caller drops the connection.
func (u *upstream) sendMessage(src io.Reader, writeTimeout time.Duration) (string, error) {
	dw := &deadlineWriter{w: u.conn, conn: u.conn, timeout: writeTimeout, batch: u.batch}
	bw := writerPool.Get().(*bufio.Writer)
	bw.Reset(dw)
	defer func() {
		bw.Reset(nil)
		writerPool.Put(bw)
	}()
	if u.chunking {
		return u.sendBDAT(src, bw)
	}
	return u.sendData(src, bw, dw)
}

// sendData sends DATA with go-smtp's client and writes the body itself,
// dot-stuffed, through bw. The last CRLF of the body is written through
// go-smtp's DATA writer, which then ends the message with ".\r\n" and reads
// the reply.
func (u *upstream) sendData(src io.Reader, bw *bufio.Writer, dw *deadlineWriter) (string, error) {
	dc, err := u.c.Data()
	if err != nil {
		return "", &relayError{stageStart, err}
	}
	bp := chunkPool.Get().(*[]byte)
	defer chunkPool.Put(bp)
	buf := (*bp)[:DataWriteBuffer/2]
	st := dotStuffer{w: bw, bol: true}
	for {
		n, rerr := src.Read(buf)
		st.write(buf[:n])
		if rerr == io.EOF {
			break
		}
		if rerr != nil {
			return "", &relayError{stageBody, rerr}
		}
		if st.err != nil {
			return "", &relayError{stageBody, st.err}
		}
	}
	crlf := st.np == 2 && st.pending == [2]byte{'\r', '\n'}
	if !crlf {
		// Only a BDAT body from the client can end without CRLF; DATA
		// needs one before the final dot, as go-smtp's writer would add.
		st.emit(st.pending[:st.np])
	}
	if st.err == nil {
		st.err = bw.Flush()
	}
	if st.err != nil {
		return "", &relayError{stageBody, st.err}
	}
	dw.arm()
	if st.total > 0 {
		// go-smtp's writer is at the start of its state machine: "\r\n"
		// leaves it at the start of a line, so Close adds only ".\r\n".
		if _, err := dc.Write([]byte("\r\n")); err != nil {
			return "", &relayError{stageBody, err}
		}
	}
	resp, err := dc.CloseWithResponse()
	if err != nil {
		return "", &relayError{stageEnd, err}
	}
	return resp.StatusText, nil
}

// dotStuffer writes a CRLF-normalised body with a "." added in front of
// every line that starts with "." (RFC 5321 section 4.5.2). It keeps the
// last two bytes of the body back so the caller can end the message
// exactly.
type dotStuffer struct {
	w       *bufio.Writer
	bol     bool // the next byte written starts a line
	pending [2]byte
	np      int
	total   int64
	err     error
}

func (d *dotStuffer) write(b []byte) {
	d.total += int64(len(b))
	switch {
	case len(b) >= 2:
		d.emit(d.pending[:d.np])
		d.emit(b[:len(b)-2])
		d.np = copy(d.pending[:], b[len(b)-2:])
	case len(b) == 1 && d.np == 2:
		d.emit(d.pending[:1])
		d.pending = [2]byte{d.pending[1], b[0]}
	case len(b) == 1:
		d.pending[d.np] = b[0]
		d.np++
	}
}

func (d *dotStuffer) emit(b []byte) {
	for len(b) > 0 && d.err == nil {
		if d.bol && b[0] == '.' {
			d.err = d.w.WriteByte('.')
		}
		i := bytes.IndexByte(b, '\n')
		if i < 0 {
			_, d.err = d.w.Write(b)
			d.bol = false
			return
		}
		_, d.err = d.w.Write(b[:i+1])
		b = b[i+1:]
		d.bol = true
	}
}

// sendBDAT sends the body as BDAT chunks of up to BDATChunkBytes (RFC
// 3030), the last one marked LAST only after src returned io.EOF. With
// PIPELINING the next chunk is read from the client while the upstream
// answers the previous one; without, each chunk waits for its reply.
func (u *upstream) sendBDAT(src io.Reader, bw *bufio.Writer) (string, error) {
	bp := chunkPool.Get().(*[]byte)
	defer chunkPool.Put(bp)
	buf := *bp
	rr := textproto.NewReader(bufio.NewReaderSize(oneByteReader{u.conn}, 16))
	awaiting := false // a chunk's reply is still to be read
	for {
		n, rerr := fill(src, buf)
		if rerr != nil && rerr != io.EOF {
			return "", &relayError{stageBody, rerr}
		}
		last := rerr == io.EOF
		if awaiting {
			if _, err := u.bdatReply(rr, false); err != nil {
				return "", &relayError{stageBody, err}
			}
			awaiting = false
		}
		if last {
			fmt.Fprintf(bw, "BDAT %d LAST\r\n", n)
		} else {
			fmt.Fprintf(bw, "BDAT %d\r\n", n)
		}
		_, _ = bw.Write(buf[:n])
		if err := bw.Flush(); err != nil {
			if last {
				// Perhaps all of it went out: treat like a lost reply.
				return "", &relayError{stageEnd, err}
			}
			return "", &relayError{stageBody, err}
		}
		if last {
			msg, err := u.bdatReply(rr, true)
			if err != nil {
				return "", &relayError{stageEnd, err}
			}
			return msg, nil
		}
		awaiting = true
		if !u.pipelining {
			if _, err := u.bdatReply(rr, false); err != nil {
				return "", &relayError{stageBody, err}
			}
			awaiting = false
		}
	}
}

// bdatReply reads the reply to one BDAT command within go-smtp's command
// timeout, or its submission timeout after the LAST chunk.
func (u *upstream) bdatReply(rr *textproto.Reader, last bool) (string, error) {
	timeout := u.c.CommandTimeout
	if last {
		timeout = u.c.SubmissionTimeout
	}
	_ = u.conn.SetReadDeadline(time.Now().Add(timeout))
	defer u.conn.SetReadDeadline(time.Time{})
	_, msg, err := rr.ReadResponse(250)
	var pe *textproto.Error
	if errors.As(err, &pe) {
		return "", replyError(pe.Code, pe.Msg)
	}
	return msg, err
}

// fill reads from r until buf is full or r fails; io.EOF is returned only
// at the real end of r (io.ReadFull would turn a source's own
// io.ErrUnexpectedEOF, a client gone mid-DATA, into an ambiguity).
func fill(r io.Reader, buf []byte) (int, error) {
	n := 0
	for n < len(buf) {
		m, err := r.Read(buf[n:])
		n += m
		if err != nil {
			return n, err
		}
	}
	return n, nil
}

// oneByteReader makes the BDAT reply reader read no further than the end
// of a reply: the rest of the stream belongs to go-smtp's client, whose
// own buffered reader is empty between commands. tls.Conn serves these
// small reads from the record it already decrypted.
type oneByteReader struct{ r io.Reader }

func (o oneByteReader) Read(p []byte) (int, error) {
	if len(p) > 1 {
		p = p[:1]
	}
	return o.r.Read(p)
}
