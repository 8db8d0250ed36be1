package bench

import (
	"bytes"
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"

	"github.com/oauthbridge/oauthbridge/tokens"
)

// smtpRecipient is outside the fake tenant: the fake accepts it without
// delivering it to an IMAP mailbox.
const smtpRecipient = "someone@example.net"

// dialSMTPDirect connects to the fake (STARTTLS) and authenticates with
// XOAUTH2 as the mailbox.
func (e *env) dialSMTPDirect(mailbox string) (*smtp.Client, error) {
	host, _, _ := net.SplitHostPort(e.f.SMTPAddr)
	tc := e.f.ClientTLS()
	tc.ServerName = host
	c, err := smtp.DialStartTLS(e.f.SMTPAddr, tc)
	if err != nil {
		return nil, fmt.Errorf("bench: dial upstream smtp: %w", err)
	}
	if err := c.Auth(tokens.NewXOAUTH2Client(mailbox, e.directToken(mailbox))); err != nil {
		c.Close()
		return nil, fmt.Errorf("bench: direct smtp auth: %w", err)
	}
	return c, nil
}

// dialSMTPBridge connects to a bridge on loopback, with STARTTLS when tc
// is set (as the direct client does to the upstream), and authenticates
// with the local password.
func dialSMTPBridge(addr string, a account, tc *tls.Config) (*smtp.Client, error) {
	var c *smtp.Client
	var err error
	if tc != nil {
		c, err = smtp.DialStartTLS(addr, tc)
	} else {
		c, err = smtp.Dial(addr)
	}
	if err != nil {
		return nil, fmt.Errorf("bench: dial bridge smtp: %w", err)
	}
	if err := c.Auth(sasl.NewPlainClient("", a.user, a.password)); err != nil {
		c.Close()
		return nil, fmt.Errorf("bench: bridge smtp auth: %w", err)
	}
	return c, nil
}

// runSMTP sends o.SMTPMessages messages of o.SMTPSize bytes over
// o.SMTPConns connections (one mailbox each, because Exchange allows three
// authenticated connections per mailbox), alternating direct and bridge
// rounds. Connection setup, and one message per connection that makes the
// bridge open its upstream connection, are outside the timing.
func (e *env) runSMTP(o Options) ([]Row, error) {
	msg := makeMessage(o.SMTPSize)
	round := func(direct bool) (time.Duration, error) {
		clients := make([]*smtp.Client, o.SMTPConns)
		defer func() {
			for _, c := range clients {
				if c != nil {
					_ = c.Quit()
				}
			}
		}()
		for i := range clients {
			a := e.accounts[i]
			var err error
			if direct {
				clients[i], err = e.dialSMTPDirect(a.mailbox)
			} else {
				clients[i], err = dialSMTPBridge(e.d.Addr("smtp"), a, e.bridgeTLS())
			}
			if err != nil {
				return 0, err
			}
			// One untimed message per connection on both paths: the
			// bridge opens its upstream connection (TLS + XOAUTH2) at the
			// first MAIL, which the direct client did before the timing.
			if err := clients[i].SendMail(a.mailbox, []string{smtpRecipient}, bytes.NewReader(msg)); err != nil {
				return 0, fmt.Errorf("bench: smtp warm-up: %w", err)
			}
		}
		var next atomic.Int64
		errs := make([]error, len(clients))
		var wg sync.WaitGroup
		t0 := time.Now()
		for i, c := range clients {
			wg.Go(func() {
				for next.Add(1) <= int64(o.SMTPMessages) {
					if err := c.SendMail(e.accounts[i].mailbox, []string{smtpRecipient}, bytes.NewReader(msg)); err != nil {
						errs[i] = err
						return
					}
				}
			})
		}
		wg.Wait()
		d := time.Since(t0)
		for _, err := range errs {
			if err != nil {
				return 0, fmt.Errorf("bench: smtp send: %w", err)
			}
		}
		return d, nil
	}
	var dt, bt []time.Duration
	for i := range o.Rounds {
		order := []bool{true, false}
		if i%2 == 1 {
			order = []bool{false, true}
		}
		for _, direct := range order {
			d, err := round(direct)
			if err != nil {
				return nil, err
			}
			if direct {
				dt = append(dt, d)
			} else {
				bt = append(bt, d)
			}
		}
	}
	// The median round of each path.
	total := float64(o.SMTPMessages)
	dr, br := total/percentile(dt, 50).Seconds(), total/percentile(bt, 50).Seconds()
	e.logf("smtp: direct %.0f msg/s, bridge %.0f msg/s", dr, br)
	name := fmt.Sprintf("SMTP %d x %s over %d conns", o.SMTPMessages, sizeName(int64(o.SMTPSize)), o.SMTPConns)
	row := ratioRow(name, "messages/s", dr, br, 0.90, "%.0f")
	row.Note = "both clients use STARTTLS (direct: XOAUTH2 to the fake; bridged: password to the bridge) and send one untimed message per connection first (the bridge opens its upstream connection at the first MAIL); the bridge sends MAIL upstream with the first RCPT (PIPELINING) and waits for the upstream's reply to RCPT and to the end of the body (relayed verbatim), so the bridged path has two more hops per message (six in a row against four) and a second TLS stream"
	return []Row{row}, nil
}

// bodyGen produces an n-byte CRLF message body without holding it in memory.
type bodyGen struct {
	left int64
	col  int
}

func (g *bodyGen) Read(p []byte) (int, error) {
	if g.left <= 0 {
		return 0, io.EOF
	}
	n := 0
	for n < len(p) && g.left > 0 {
		var c byte
		switch {
		case g.col == 76:
			c = '\r'
		case g.col == 77:
			c, g.col = '\n', -1
		default:
			c = 'A' + byte(g.col%26)
		}
		p[n] = c
		n++
		g.col++
		g.left--
	}
	return n, nil
}

// bigResult is what runBig measured for one message size.
type bigResult struct {
	size           int64
	direct, bridge []time.Duration // per round
	rounds         int
	peakGrowth     float64       // MiB, the worst round
	cpu            time.Duration // bridge process CPU over the bridge rounds
	// The same sizes once more through the bridge from a client writing
	// 16 KiB TLS records (sendBulk): bytes sent and the bridge's CPU.
	bulkSize int64
	bulkCPU  time.Duration
}

// runBig sends one message of each of o.BigMessages bytes directly and
// through the bridge process, alternating for o.BigRounds rounds, while it
// samples the bridge process's RSS and reads its CPU time.
func (e *env) runBig(ctx context.Context, o Options, p *bridgeProc) ([]Row, *bigResult, error) {
	a := e.accounts[bigAccount]
	one := func(c *smtp.Client, size int64) (time.Duration, error) {
		defer c.Quit()
		t0 := time.Now()
		hdr := "From: " + a.mailbox + "\r\nTo: " + smtpRecipient + "\r\nSubject: big\r\n\r\n"
		body := io.MultiReader(bytes.NewReader([]byte(hdr)), &bodyGen{left: size - int64(len(hdr))})
		if err := c.SendMail(a.mailbox, []string{smtpRecipient}, body); err != nil {
			return 0, fmt.Errorf("bench: big message: %w", err)
		}
		return time.Since(t0), nil
	}
	// Warm the bridge process with one small message on the same path.
	wc, err := dialSMTPBridge(p.smtp, a, e.bridgeTLS())
	if err != nil {
		return nil, nil, err
	}
	if err := wc.SendMail(a.mailbox, []string{smtpRecipient}, bytes.NewReader(makeMessage(4096))); err != nil {
		wc.Close()
		return nil, nil, err
	}
	_ = wc.Quit()
	time.Sleep(500 * time.Millisecond)

	viaBridge := func(size int64, r *bigResult) error {
		before, err := p.rss()
		if err != nil {
			return err
		}
		cpu0, err := p.cpu()
		if err != nil {
			return err
		}
		var peak atomic.Int64
		peak.Store(before)
		stop := make(chan struct{})
		var wg sync.WaitGroup
		wg.Go(func() {
			t := time.NewTicker(2 * time.Millisecond)
			defer t.Stop()
			for {
				if v, err := p.rss(); err == nil && v > peak.Load() {
					peak.Store(v)
				}
				select {
				case <-stop:
					return
				case <-t.C:
				}
			}
		})
		bc, err := dialSMTPBridge(p.smtp, a, e.bridgeTLS())
		var d time.Duration
		if err == nil {
			d, err = one(bc, size)
		}
		close(stop)
		wg.Wait()
		if err != nil {
			return err
		}
		cpu1, err := p.cpu()
		if err != nil {
			return err
		}
		r.bridge = append(r.bridge, d)
		r.cpu += cpu1 - cpu0
		r.peakGrowth = max(r.peakGrowth, float64(peak.Load()-before)/(1<<20))
		return nil
	}
	var rows []Row
	total := &bigResult{}
	for _, size := range o.BigMessages {
		r := &bigResult{size: size, rounds: max(o.BigRounds, 1)}
		for i := range r.rounds {
			if ctx.Err() != nil {
				return rows, nil, ctx.Err()
			}
			for _, direct := range []bool{i%2 == 0, i%2 == 1} {
				if direct {
					dc, err := e.dialSMTPDirect(a.mailbox)
					if err != nil {
						return rows, nil, err
					}
					d, err := one(dc, size)
					if err != nil {
						return rows, nil, err
					}
					r.direct = append(r.direct, d)
				} else if err := viaBridge(size, r); err != nil {
					return rows, nil, err
				}
			}
		}
		mb := float64(size) / 1e6
		dr, br := mb/percentile(r.direct, 50).Seconds(), mb/percentile(r.bridge, 50).Seconds()
		e.logf("big %s: direct %.0f MB/s, bridge %.0f MB/s, bridge peak RSS growth %.1f MiB, bridge CPU %v", sizeName(size), dr, br, r.peakGrowth, r.cpu)
		name := fmt.Sprintf("SMTP one %s message x %d (bridge process)", sizeName(size), r.rounds)
		ok := r.peakGrowth <= 16
		rate := ratioRow(name, "MB/s (client-perceived)", dr, br, 0.95, "%.0f")
		rate.Note = "both clients use STARTTLS (direct: to the fake, XOAUTH2, DATA; bridged: to the bridge, password, DATA); the bridge relays with BDAT where the upstream offers CHUNKING (the fake does, as Exchange Online does)"
		rows = append(rows, rate,
			Row{Workload: name, Metric: "bridge peak RSS growth MiB", Direct: "-", Bridge: fmt.Sprintf("%.1f", r.peakGrowth), Ratio: "-", Target: "<= 16 MiB", OK: &ok})
		total.size += size * int64(r.rounds)
		total.cpu += r.cpu
	}
	// The bridge's CPU for the same bodies from a client that writes them
	// in large pieces (CPURounds rounds per size, as many as the FETCH
	// figure it is compared with; not timed against direct).
	for i := range len(o.BigMessages) * max(o.CPURounds, 1) {
		size := o.BigMessages[i%len(o.BigMessages)]
		if ctx.Err() != nil {
			return rows, nil, ctx.Err()
		}
		cpu0, err := p.cpu()
		if err != nil {
			return rows, nil, err
		}
		hdr := "From: " + a.mailbox + "\r\nTo: " + smtpRecipient + "\r\nSubject: big\r\n\r\n"
		body := io.MultiReader(bytes.NewReader([]byte(hdr)), &bodyGen{left: size - int64(len(hdr))})
		if err := sendBulk(p.smtp, e.bridgeTLS(), plainAuth(a.user, a.password), a.mailbox, smtpRecipient, body); err != nil {
			return rows, nil, fmt.Errorf("bench: big message, bulk client: %w", err)
		}
		cpu1, err := p.cpu()
		if err != nil {
			return rows, nil, err
		}
		total.bulkSize += size
		total.bulkCPU += cpu1 - cpu0
	}
	return rows, total, nil
}
