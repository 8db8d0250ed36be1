package smtpproxy

import (
	"net"
	"sync"
)

// batchConn sits under an upstream TLS connection so that a message body
// leaves in fewer, larger writes. crypto/tls writes each record (at most
// 16 KiB of body) with a write system call of its own; between begin and
// end the records of one body write are gathered and sent together, so a
// DataWriteBuffer-sized flush costs one system call instead of four.
// Outside begin/end (commands, replies to TLS alerts) writes go straight
// through.
type batchConn struct {
	net.Conn
	mu  sync.Mutex
	on  bool
	buf *[]byte
}

// UpstreamBatchBytes is the most a batchConn gathers before writing: one
// DataWriteBuffer of body as TLS records, with their headers and tags.
const UpstreamBatchBytes = DataWriteBuffer + 4<<10

var batchPool = sync.Pool{New: func() any { b := make([]byte, 0, UpstreamBatchBytes); return &b }}

func (b *batchConn) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if !b.on {
		return b.Conn.Write(p)
	}
	buf := *b.buf
	if len(buf)+len(p) > cap(buf) {
		if err := b.flushLocked(); err != nil {
			return 0, err
		}
		if len(p) > cap(buf) {
			return b.Conn.Write(p)
		}
		buf = *b.buf
	}
	*b.buf = append(buf, p...)
	return len(p), nil
}

func (b *batchConn) flushLocked() error {
	buf := *b.buf
	*b.buf = buf[:0]
	if len(buf) == 0 {
		return nil
	}
	_, err := b.Conn.Write(buf)
	return err
}

// begin starts gathering writes; end writes what was gathered and stops.
func (b *batchConn) begin() {
	b.mu.Lock()
	b.on = true
	if b.buf == nil {
		b.buf = batchPool.Get().(*[]byte)
	}
	b.mu.Unlock()
}

func (b *batchConn) end() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	err := b.flushLocked()
	b.on = false
	batchPool.Put(b.buf)
	b.buf = nil
	return err
}
