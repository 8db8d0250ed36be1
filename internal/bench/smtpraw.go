package bench

import (
	"bufio"
	"crypto/tls"
	"encoding/base64"
	"fmt"
	"io"
	"net"
	"net/textproto"
	"time"
)

// bulkWriteBuffer is the write buffer of bulkSMTPClient: the body leaves
// in 16 KiB TLS records (TLS's largest), as it does from a client that
// hands the whole message to one write (Python's smtplib: sendall).
const bulkWriteBuffer = 64 << 10

// sendBulk submits one message over STARTTLS the way a client that writes
// the body in large pieces does: go-smtp's client (the bench's other
// SMTP client) flushes its 4 KiB buffer as one TLS record each, so the
// receiving side decrypts four records where this client sends one.
// auth is the AUTH command's argument ("PLAIN <base64>").
func sendBulk(addr string, tc *tls.Config, auth, from, to string, body io.Reader) error {
	raw, err := net.DialTimeout("tcp", addr, 10*time.Second)
	if err != nil {
		return err
	}
	defer raw.Close()
	_ = raw.SetDeadline(time.Now().Add(5 * time.Minute))
	tp := textproto.NewConn(raw)
	step := func(want int, format string, args ...any) error {
		if format != "" {
			if err := tp.PrintfLine(format, args...); err != nil {
				return err
			}
		}
		if _, _, err := tp.ReadResponse(want); err != nil {
			return fmt.Errorf("bench: bulk client %q: %w", format, err)
		}
		return nil
	}
	if err := step(220, ""); err != nil {
		return err
	}
	if err := step(250, "EHLO bench.localhost"); err != nil {
		return err
	}
	if err := step(220, "STARTTLS"); err != nil {
		return err
	}
	tlsConn := tls.Client(raw, tc)
	if err := tlsConn.Handshake(); err != nil {
		return err
	}
	bw := bufio.NewWriterSize(tlsConn, bulkWriteBuffer)
	tp = &textproto.Conn{Reader: *textproto.NewReader(bufio.NewReader(tlsConn)), Writer: *textproto.NewWriter(bw)}
	for _, c := range []struct {
		want int
		cmd  string
	}{{250, "EHLO bench.localhost"}, {235, "AUTH " + auth}, {250, "MAIL FROM:<" + from + ">"}, {250, "RCPT TO:<" + to + ">"}, {354, "DATA"}} {
		if err := step(c.want, "%s", c.cmd); err != nil {
			return err
		}
	}
	dw := tp.DotWriter()
	if _, err := io.Copy(dw, body); err != nil {
		return err
	}
	if err := dw.Close(); err != nil { // ".\r\n" and a flush
		return err
	}
	if err := step(250, ""); err != nil {
		return err
	}
	return step(221, "QUIT")
}

func plainAuth(user, password string) string {
	return "PLAIN " + base64.StdEncoding.EncodeToString([]byte("\x00"+user+"\x00"+password))
}
