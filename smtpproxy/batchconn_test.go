package smtpproxy

import (
	"bytes"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"strings"
	"testing"
	"time"
)

// writeLog is a net.Conn that records each Write it gets.
type writeLog struct {
	net.Conn
	writes [][]byte
	err    error
}

func (w *writeLog) Write(p []byte) (int, error) {
	if w.err != nil {
		return 0, w.err
	}
	w.writes = append(w.writes, bytes.Clone(p))
	return len(p), nil
}

func (w *writeLog) SetWriteDeadline(time.Time) error { return nil }

func TestBatchConnGathersOneBodyWrite(t *testing.T) {
	log := &writeLog{}
	bc := &batchConn{Conn: log}
	if _, err := bc.Write([]byte("BDAT 5\r\n")); err != nil {
		t.Fatal(err)
	}
	if len(log.writes) != 1 {
		t.Fatalf("a write outside begin/end made %d writes, want 1 (straight through)", len(log.writes))
	}
	bc.begin()
	for _, p := range []string{"rec1", "rec2", "rec3"} {
		if n, err := bc.Write([]byte(p)); n != len(p) || err != nil {
			t.Fatalf("Write(%q) = %d, %v", p, n, err)
		}
	}
	if len(log.writes) != 1 {
		t.Fatalf("writes between begin and end reached the connection before end (%d writes)", len(log.writes))
	}
	if err := bc.end(); err != nil {
		t.Fatal(err)
	}
	if len(log.writes) != 2 || string(log.writes[1]) != "rec1rec2rec3" {
		t.Fatalf("writes = %q, want the three records in one write after the command", log.writes)
	}
	// More than UpstreamBatchBytes: what is gathered goes first, in order.
	bc.begin()
	big := bytes.Repeat([]byte("x"), UpstreamBatchBytes+1)
	bc.Write([]byte("head"))
	bc.Write(big)
	bc.Write([]byte("tail"))
	if err := bc.end(); err != nil {
		t.Fatal(err)
	}
	got := bytes.Join(log.writes[2:], nil)
	if want := append(append([]byte("head"), big...), "tail"...); !bytes.Equal(got, want) || len(log.writes) != 5 {
		t.Fatalf("an oversized write: %d writes, %d bytes; want head, the write itself, tail (%d bytes)", len(log.writes)-2, len(got), len(want))
	}
}

// A failed batch write fails the body write that made it: the relay sees
// the error and never sends the end of the message.
func TestBatchConnWriteErrorReachesTheBody(t *testing.T) {
	log := &writeLog{err: errors.New("connection reset by peer")}
	bc := &batchConn{Conn: log}
	dw := &deadlineWriter{w: bc, conn: log, timeout: time.Minute, batch: bc}
	if n, err := dw.Write([]byte("body")); err == nil || n != 0 {
		t.Fatalf("Write = %d, %v; want 0 and the connection's error", n, err)
	}
}

// Through real TLS: a DataWriteBuffer of body leaves in one system call
// (tls writes each record on its own), and the peer reads every byte.
func TestBatchConnUnderTLS(t *testing.T) {
	pki := getPKI(t)
	ln, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{Certificates: []tls.Certificate{pki.leaf}})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	body := []byte(strings.Repeat("0123456789abcdefghijklmnopqrstuvwxyz0123456789abcdefghijklmnopqrstuvwxyz12\r\n", DataWriteBuffer/76))
	got := make(chan []byte, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			got <- nil
			return
		}
		defer c.Close()
		b, _ := io.ReadAll(io.LimitReader(c, int64(len(body))))
		got <- b
	}()
	raw, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	counting := &countingConn{Conn: raw}
	bc := &batchConn{Conn: counting}
	tc := tls.Client(bc, &tls.Config{RootCAs: pki.pool, ServerName: "localhost"})
	defer tc.Close()
	if err := tc.Handshake(); err != nil {
		t.Fatal(err)
	}
	before := counting.writes
	dw := &deadlineWriter{w: tc, conn: tc, timeout: time.Minute, batch: bc}
	if _, err := dw.Write(body); err != nil {
		t.Fatal(err)
	}
	if n := counting.writes - before; n != 1 {
		t.Errorf("%d KiB of body took %d writes to the socket, want 1", len(body)>>10, n)
	}
	if b := <-got; !bytes.Equal(b, body) {
		t.Fatalf("the peer read %d bytes, want the %d-byte body", len(b), len(body))
	}
}

type countingConn struct {
	net.Conn
	writes int
}

func (c *countingConn) Write(p []byte) (int, error) {
	c.writes++
	return c.Conn.Write(p)
}
