package bench

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/oauthbridge/oauthbridge/config"
	"github.com/oauthbridge/oauthbridge/internal/fakems"
	"github.com/oauthbridge/oauthbridge/tokens"
)

// Client-side limits of the bench's IMAP driver.
const (
	imapReadBuffer = 64 << 10 // the client's bufio.Reader, same for both paths
	imapTimeout    = 2 * time.Minute
	dialTimeout    = 10 * time.Second
)

// imapConn is a minimal raw IMAP client: identical code drives the direct
// and the bridged connection, so only the path differs.
type imapConn struct {
	c   net.Conn
	r   *bufio.Reader
	seq int
}

// dialIMAPDirect connects to the fake with TLS and logs in with XOAUTH2.
func (e *env) dialIMAPDirect(mailbox string) (*imapConn, error) {
	nc, err := tls.DialWithDialer(&net.Dialer{Timeout: dialTimeout}, "tcp", e.f.IMAPAddr, e.f.ClientTLS())
	if err != nil {
		return nil, fmt.Errorf("bench: dial upstream imap: %w", err)
	}
	c := &imapConn{c: nc, r: bufio.NewReaderSize(nc, imapReadBuffer)}
	if err := c.greeting(); err != nil {
		nc.Close()
		return nil, err
	}
	if _, err := c.do("AUTHENTICATE XOAUTH2 " + tokens.XOAUTH2Base64(mailbox, e.directToken(mailbox))); err != nil {
		nc.Close()
		return nil, err
	}
	return c, nil
}

// dialIMAPBridge connects to a bridge on loopback, with implicit TLS when
// tc is set (as the direct client does to the upstream), and logs in with
// the local password.
func dialIMAPBridge(addr string, a account, tc *tls.Config) (*imapConn, error) {
	var nc net.Conn
	var err error
	if tc != nil {
		nc, err = tls.DialWithDialer(&net.Dialer{Timeout: dialTimeout}, "tcp", addr, tc)
	} else {
		nc, err = net.DialTimeout("tcp", addr, dialTimeout)
	}
	if err != nil {
		return nil, fmt.Errorf("bench: dial bridge imap: %w", err)
	}
	c := &imapConn{c: nc, r: bufio.NewReaderSize(nc, imapReadBuffer)}
	if err := c.greeting(); err != nil {
		nc.Close()
		return nil, err
	}
	if _, err := c.do("LOGIN " + a.user + " " + a.password); err != nil {
		nc.Close()
		return nil, err
	}
	return c, nil
}

func (c *imapConn) greeting() error {
	_ = c.c.SetDeadline(time.Now().Add(imapTimeout))
	line, err := c.r.ReadString('\n')
	if err != nil {
		return fmt.Errorf("bench: imap greeting: %w", err)
	}
	if !strings.HasPrefix(line, "* OK") {
		return fmt.Errorf("bench: imap greeting %q", strings.TrimSpace(line))
	}
	return nil
}

// do sends one command and reads to its tagged reply, skipping literals.
// It returns the number of literal bytes received.
func (c *imapConn) do(cmd string) (int64, error) {
	c.seq++
	tag := "b" + strconv.Itoa(c.seq)
	_ = c.c.SetDeadline(time.Now().Add(imapTimeout))
	if _, err := io.WriteString(c.c, tag+" "+cmd+"\r\n"); err != nil {
		return 0, fmt.Errorf("bench: imap write: %w", err)
	}
	return c.readTagged(tag)
}

func (c *imapConn) readTagged(tag string) (int64, error) {
	var lits int64
	for {
		line, err := c.r.ReadSlice('\n')
		for errors.Is(err, bufio.ErrBufferFull) { // a long line: only its end matters
			line, err = c.r.ReadSlice('\n')
		}
		if err != nil {
			return lits, fmt.Errorf("bench: imap read: %w", err)
		}
		if n, ok := literalSize(line); ok {
			if _, err := c.r.Discard(int(n)); err != nil {
				return lits, fmt.Errorf("bench: imap literal: %w", err)
			}
			lits += n
			continue
		}
		if bytes.HasPrefix(line, []byte(tag+" ")) {
			if rest := line[len(tag)+1:]; !bytes.HasPrefix(rest, []byte("OK")) {
				return lits, fmt.Errorf("bench: imap %s: %s", tag, strings.TrimSpace(string(rest)))
			}
			return lits, nil
		}
	}
}

// literalSize parses a trailing "{n}\r\n".
func literalSize(line []byte) (int64, bool) {
	line = bytes.TrimRight(line, "\r\n")
	if len(line) < 3 || line[len(line)-1] != '}' {
		return 0, false
	}
	i := bytes.LastIndexByte(line, '{')
	if i < 0 {
		return 0, false
	}
	n, err := strconv.ParseInt(string(line[i+1:len(line)-1]), 10, 64)
	return n, err == nil
}

func (c *imapConn) close() { c.c.Close() }

// runFetch measures bulk FETCH throughput: each round fetches every message
// of the fetch mailbox on an established, selected connection.
func (e *env) runFetch(o Options) ([]Row, error) {
	a := e.accounts[fetchAccount]
	msg := makeMessage(o.FetchSize)
	for range o.FetchMessages {
		if err := e.f.Deliver(a.mailbox, msg); err != nil {
			return nil, err
		}
	}
	direct, err := e.dialIMAPDirect(a.mailbox)
	if err != nil {
		return nil, err
	}
	defer direct.close()
	bridge, err := dialIMAPBridge(e.d.Addr("imaps"), a, e.bridgeTLS())
	if err != nil {
		return nil, err
	}
	defer bridge.close()
	plain, err := dialIMAPBridge(e.d.Addr("imap"), a, nil)
	if err != nil {
		return nil, err
	}
	defer plain.close()
	paths := []*imapConn{direct, bridge, plain}
	for _, c := range paths {
		if _, err := c.do("SELECT INBOX"); err != nil {
			return nil, err
		}
		if _, err := c.do("FETCH 1:* BODY.PEEK[]"); err != nil { // warm-up
			return nil, err
		}
	}
	times := make([][]time.Duration, len(paths)) // per round
	per := int64(o.FetchMessages) * int64(o.FetchSize)
	for i := range o.Rounds {
		for k := range paths { // rotate which path goes first
			j := (i + k) % len(paths)
			t0 := time.Now()
			got, err := paths[j].do("FETCH 1:* BODY.PEEK[]")
			times[j] = append(times[j], time.Since(t0))
			if err == nil && got < int64(o.FetchMessages)*int64(o.FetchSize) {
				err = fmt.Errorf("bench: fetch returned %d bytes, want %d", got, int64(o.FetchMessages)*int64(o.FetchSize))
			}
			if err != nil {
				return nil, err
			}
		}
	}
	// The median round: one round slowed down by another job on the
	// machine does not move it.
	rate := func(j int) float64 { return float64(per) / percentile(times[j], 50).Seconds() / 1e6 }
	dr, br, pr := rate(0), rate(1), rate(2)
	e.logf("fetch: direct %.0f MB/s, bridge (TLS) %.0f MB/s, bridge (plaintext) %.0f MB/s", dr, br, pr)
	name := fmt.Sprintf("IMAP FETCH %d x %s", o.FetchMessages, sizeName(int64(o.FetchSize)))
	row := ratioRow(name, "MB/s, bridged client on TLS", dr, br, 0.95, "%.0f")
	row.Note = "both clients speak implicit TLS (direct: to the fake, XOAUTH2; bridged: to the bridge, password), so the bridged path decrypts and encrypts once more; on a CPU-bound machine that shows"
	prow := ratioRow(name, "MB/s, bridged client plaintext on loopback", dr, pr, 0.95, "%.0f")
	prow.Target, prow.OK = "(reported)", nil
	return []Row{row, prow}, nil
}

// makeMessage returns an RFC 5322 message of exactly size bytes.
func makeMessage(size int) []byte {
	hdr := "From: bench@contoso.com\r\nTo: bench@contoso.com\r\nSubject: bench\r\n\r\n"
	b := make([]byte, 0, size)
	b = append(b, hdr...)
	line := []byte("0123456789abcdefghijklmnopqrstuvwxyz0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ0123\r\n")
	for len(b)+len(line) <= size {
		b = append(b, line...)
	}
	for len(b) < size-2 {
		b = append(b, 'x')
	}
	b = append(b, "\r\n"...)
	return b[:size]
}

// runLogin measures connect + login + SELECT + LOGOUT, alternating direct
// and bridge for each sample. The bridge's credential cache and token are
// warmed first.
func (e *env) runLogin(o Options) ([]Row, error) {
	a := e.accounts[loginAccount]
	once := func(direct bool) (time.Duration, error) {
		t0 := time.Now()
		var c *imapConn
		var err error
		if direct {
			c, err = e.dialIMAPDirect(a.mailbox)
		} else {
			c, err = dialIMAPBridge(e.d.Addr("imaps"), a, e.bridgeTLS())
		}
		if err != nil {
			return 0, err
		}
		defer c.close()
		if _, err := c.do("SELECT INBOX"); err != nil {
			return 0, err
		}
		if _, err := c.do("LOGOUT"); err != nil {
			return 0, err
		}
		return time.Since(t0), nil
	}
	for range 3 { // warm: credential cache, token, TLS session state
		if _, err := once(true); err != nil {
			return nil, err
		}
		if _, err := once(false); err != nil {
			return nil, err
		}
	}
	var ds, bs []time.Duration
	for i := range o.Logins {
		order := []bool{true, false}
		if i%2 == 1 {
			order = []bool{false, true}
		}
		for _, direct := range order {
			d, err := once(direct)
			if err != nil {
				return nil, err
			}
			if direct {
				ds = append(ds, d)
			} else {
				bs = append(bs, d)
			}
		}
	}
	d50, d99 := percentile(ds, 50), percentile(ds, 99)
	b50, b99 := percentile(bs, 50), percentile(bs, 99)
	e.logf("login: direct p50 %v p99 %v, bridge p50 %v p99 %v", d50, d99, b50, b99)
	name := fmt.Sprintf("IMAP login+SELECT+LOGOUT (%d, warm)", o.Logins)
	added50 := ms(b50 - d50)
	added99 := ms(b99 - d99)
	ok := added50 <= 2
	return []Row{
		{Workload: name, Metric: "p50 ms", Direct: f2(ms(d50)), Bridge: f2(ms(b50)), Ratio: fmt.Sprintf("+%.2f ms", added50), Target: "added <= 2 ms", OK: &ok,
			Note: "both clients open a new implicit-TLS connection per sample (direct: XOAUTH2 to the fake; bridged: password to the bridge); the bridge checks the password (cached) and opens its own TLS connection upstream with XOAUTH2 for each login, so the bridged path has a second TLS handshake and login round trip"},
		{Workload: name, Metric: "p99 ms", Direct: f2(ms(d99)), Bridge: f2(ms(b99)), Ratio: fmt.Sprintf("+%.2f ms", added99), Target: "(reported)"},
	}, nil
}

// idleRow is one IDLE workload: which account the sessions log in to, and
// what each session costs in descriptors.
type idleRow struct {
	name    string // the row's workload, after "IMAP IDLE x N"
	account int    // index in env.accounts
	// fds is the descriptors one session holds in the bridge process and
	// in the bench process (RLIMIT_NOFILE bounds the sessions at
	// (limit - fdSlack) / fds).
	fds  int
	note string // what the sessions cost besides memory, for the row's note
	// cpuWindow, if set, is how long the bridge's CPU time and the fake's
	// Graph requests are measured with every session idling.
	cpuWindow time.Duration
}

// splicedIdle: sessions spliced to the fake's IMAP server hold the client
// socket and the upstream socket in the bridge process, and the client end
// and the fake's end in the bench process.
func (e *env) splicedIdle() idleRow {
	return idleRow{name: " (bridge process)", account: idleAccount, fds: 2,
		note: "spliced to the fake's IMAP server: 2 descriptors per session in the bridge process (client and upstream socket)"}
}

// graphIdleRow: sessions served from Graph hold only the client socket in the
// bridge process (Graph is a few pooled HTTPS connections), and only the
// client end in the bench process.
func (e *env) graphIdleRow(o Options) idleRow {
	return idleRow{name: ", served from Graph (bridge process)", account: e.graphIdle, fds: 1, cpuWindow: o.IdleWindow,
		note: "read_via = \"graph\": 1 descriptor per session in the bridge process (Graph is a few pooled HTTPS connections); IDLE polls Graph delta every imap { graph_poll_interval }"}
}

// runIdle holds o.IdleSessions IDLE sessions through the bridge process and
// reports its RSS growth per session.
func (e *env) runIdle(ctx context.Context, o Options, p *bridgeProc, r idleRow) ([]Row, error) {
	a := e.accounts[r.account]
	msg := makeMessage(4 << 10)
	for range o.IdleMessages {
		if err := e.f.Deliver(a.mailbox, msg); err != nil {
			return nil, err
		}
	}
	// One session first, so the bridge's one-off costs (token load, pools,
	// the folder's first listing) are in the baseline rather than in the
	// per-session figure.
	warm, err := openIdle(p.imap, a)
	if err != nil {
		return nil, err
	}
	defer warm.close()
	time.Sleep(500 * time.Millisecond)
	before, err := p.rss()
	if err != nil {
		return nil, err
	}
	goBefore, goErr := p.goStats()
	conns := make([]*imapConn, o.IdleSessions)
	var errCount atomic.Int64
	var firstErr error
	var errOnce sync.Once
	const parallel = 64
	sem := make(chan struct{}, parallel)
	var wg sync.WaitGroup
	t0 := time.Now()
	for i := range conns {
		if ctx.Err() != nil {
			break
		}
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			c, err := openIdle(p.imap, a)
			if err != nil {
				errCount.Add(1)
				errOnce.Do(func() { firstErr = err })
				return
			}
			conns[i] = c
		})
	}
	wg.Wait()
	opened := time.Since(t0)
	defer func() {
		for _, c := range conns {
			if c != nil {
				c.close()
			}
		}
	}()
	time.Sleep(2 * time.Second) // let the bridge settle (GC, freed setup buffers)
	after, err := p.rss()
	if err != nil {
		return nil, err
	}
	held := int64(o.IdleSessions) - errCount.Load()
	var goNote string
	if goErr == nil {
		var goAfter goStats
		if goAfter, goErr = p.goStats(); goErr == nil {
			goNote = "; " + goAfter.perSession(goBefore, held)
		}
	}
	if goErr != nil {
		goNote = fmt.Sprintf("; no Go runtime figures: %v", goErr)
	}
	var idleNote string
	if r.cpuWindow > 0 {
		if idleNote, err = e.idleCPU(ctx, p, r.cpuWindow, held); err != nil {
			return nil, err
		}
	}
	// Every session must still be alive: DONE and a NOOP on each.
	for _, c := range append(conns, warm) {
		if c == nil {
			continue
		}
		if err := c.endIdle(); err != nil {
			errCount.Add(1)
			errOnce.Do(func() { firstErr = err })
		}
	}
	perSession := float64(after-before) / float64(max(held, 1)) / 1024
	e.logf("idle%s: %d sessions held in %v, RSS %d -> %d MiB, %.1f KiB/session%s, %d errors (first: %v)%s", r.name, held, opened.Round(time.Millisecond), before>>20, after>>20, perSession, goNote, errCount.Load(), firstErr, idleNote)
	ok := perSession <= 48 && errCount.Load() == 0
	note := fmt.Sprintf("%d errors", errCount.Load())
	if firstErr != nil {
		note += " (first: " + firstErr.Error() + ")"
	}
	note += goNote + "; " + r.note + idleNote
	if o.IdleMessages > 0 {
		note += fmt.Sprintf("; %d messages in the INBOX", o.IdleMessages)
	}
	if lim, err := noFileLimit(); err == nil {
		note += fmt.Sprintf("; RLIMIT_NOFILE %d here, so at most %d sessions fit", lim, maxIdleSessions(lim, r.fds))
	}
	return []Row{{Workload: fmt.Sprintf("IMAP IDLE x %d%s", o.IdleSessions, r.name), Metric: "bridge RSS KiB/session", Direct: "-", Bridge: fmt.Sprintf("%.1f", perSession), Ratio: "-", Target: "<= 48 KiB, 0 errors", OK: &ok, Note: note}}, nil
}

// idleCPU measures, over window with every session idling, the bridge
// process's CPU time and the Graph requests the fake saw, and describes
// them for the row's note.
func (e *env) idleCPU(ctx context.Context, p *bridgeProc, window time.Duration, sessions int64) (string, error) {
	cpu0, err := p.cpu()
	if err != nil {
		return "", err
	}
	req0 := e.f.GraphRequests()
	t0 := time.Now()
	select {
	case <-ctx.Done():
		return "", ctx.Err()
	case <-time.After(window):
	}
	cpu1, err := p.cpu()
	if err != nil {
		return "", err
	}
	el := time.Since(t0)
	req1 := e.f.GraphRequests()
	var deltas, total, throttled int
	for k, n := range req1 {
		d := n - req0[k]
		total += d
		if strings.HasPrefix(k, fakems.RouteDelta+" ") {
			deltas += d
		}
		if strings.HasSuffix(k, " 429") {
			throttled += d
		}
	}
	poll := e.graphPoll
	if poll <= 0 {
		poll = config.DefaultIMAPGraphPoll
	}
	pct := 100 * float64(cpu1-cpu0) / float64(el)
	perPoll := float64(deltas) * float64(poll) / float64(el)
	return fmt.Sprintf("; idle for %v with graph_poll_interval %v: bridge CPU %.2f%% of one core (%v), %d Graph delta requests (%.1f per poll interval for %d sessions on one folder), %d Graph requests in all, %d throttled (429)",
		el.Round(time.Second), poll, pct, (cpu1 - cpu0).Round(time.Millisecond), deltas, perPoll, sessions+1, total, throttled), nil
}

// openIdle logs in through the bridge, selects INBOX and enters IDLE.
func openIdle(addr string, a account) (*imapConn, error) {
	c, err := dialIMAPBridge(addr, a, nil)
	if err != nil {
		return nil, err
	}
	if _, err := c.do("SELECT INBOX"); err != nil {
		c.close()
		return nil, err
	}
	c.seq++
	if _, err := io.WriteString(c.c, "b"+strconv.Itoa(c.seq)+" IDLE\r\n"); err != nil {
		c.close()
		return nil, err
	}
	line, err := c.r.ReadString('\n')
	if err != nil || !strings.HasPrefix(line, "+") {
		c.close()
		return nil, fmt.Errorf("bench: idle: %q %v", strings.TrimSpace(line), err)
	}
	_ = c.c.SetDeadline(time.Time{})
	return c, nil
}

func (c *imapConn) endIdle() error {
	_ = c.c.SetDeadline(time.Now().Add(imapTimeout))
	if _, err := io.WriteString(c.c, "DONE\r\n"); err != nil {
		return err
	}
	if _, err := c.readTagged("b" + strconv.Itoa(c.seq)); err != nil {
		return err
	}
	_, err := c.do("NOOP")
	return err
}
