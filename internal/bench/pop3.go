package bench

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"time"
)

// pop3Conn is a minimal POP3 client for the CPU-cost workload.
type pop3Conn struct {
	c net.Conn
	r *bufio.Reader
}

// dialPOP3Bridge connects to a bridge with implicit TLS and logs in with
// USER/PASS.
func dialPOP3Bridge(addr string, a account, tc *tls.Config) (*pop3Conn, error) {
	nc, err := tls.DialWithDialer(&net.Dialer{Timeout: dialTimeout}, "tcp", addr, tc)
	if err != nil {
		return nil, fmt.Errorf("bench: dial bridge pop3: %w", err)
	}
	c := &pop3Conn{c: nc, r: bufio.NewReaderSize(nc, imapReadBuffer)}
	_ = nc.SetDeadline(time.Now().Add(imapTimeout))
	if _, err := c.status(); err != nil {
		nc.Close()
		return nil, err
	}
	for _, cmd := range []string{"USER " + a.user, "PASS " + a.password} {
		if _, err := c.do(cmd); err != nil {
			nc.Close()
			return nil, err
		}
	}
	return c, nil
}

// status reads one +OK/-ERR line.
func (c *pop3Conn) status() (string, error) {
	line, err := c.r.ReadString('\n')
	if err != nil {
		return "", fmt.Errorf("bench: pop3 read: %w", err)
	}
	if !strings.HasPrefix(line, "+OK") {
		return "", fmt.Errorf("bench: pop3: %s", strings.TrimSpace(line))
	}
	return line, nil
}

func (c *pop3Conn) do(cmd string) (string, error) {
	_ = c.c.SetDeadline(time.Now().Add(imapTimeout))
	if _, err := io.WriteString(c.c, cmd+"\r\n"); err != nil {
		return "", fmt.Errorf("bench: pop3 write: %w", err)
	}
	return c.status()
}

// count returns the number of messages (STAT).
func (c *pop3Conn) count() (int, error) {
	line, err := c.do("STAT")
	if err != nil {
		return 0, err
	}
	f := strings.Fields(line)
	if len(f) < 2 {
		return 0, fmt.Errorf("bench: pop3 STAT %q", strings.TrimSpace(line))
	}
	return strconv.Atoi(f[1])
}

// retr fetches message i and returns its size on the wire up to the final
// dot line.
func (c *pop3Conn) retr(i int) (int64, error) {
	if _, err := c.do("RETR " + strconv.Itoa(i)); err != nil {
		return 0, err
	}
	var n int64
	for {
		line, err := c.r.ReadSlice('\n')
		for errors.Is(err, bufio.ErrBufferFull) {
			n += int64(len(line))
			line, err = c.r.ReadSlice('\n')
		}
		if err != nil {
			return n, fmt.Errorf("bench: pop3 RETR: %w", err)
		}
		if bytes.Equal(line, []byte(".\r\n")) {
			return n, nil
		}
		n += int64(len(line))
	}
}

func (c *pop3Conn) close() {
	_, _ = c.do("QUIT")
	c.c.Close()
}
