package bench

import (
	"bytes"
	"context"
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

// dialSMTPBridge connects to a bridge in plaintext on loopback and
// authenticates with the local password.
func dialSMTPBridge(addr string, a account) (*smtp.Client, error) {
	c, err := smtp.Dial(addr)
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
// rounds. Connection setup is outside the timing.
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
				clients[i], err = dialSMTPBridge(e.d.Addr("smtp"), a)
			}
			if err != nil {
				return 0, err
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
	var dt, bt time.Duration
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
				dt += d
			} else {
				bt += d
			}
		}
	}
	total := float64(o.SMTPMessages * o.Rounds)
	dr, br := total/dt.Seconds(), total/bt.Seconds()
	e.logf("smtp: direct %.0f msg/s, bridge %.0f msg/s", dr, br)
	name := fmt.Sprintf("SMTP %d x %s over %d conns", o.SMTPMessages, sizeName(int64(o.SMTPSize)), o.SMTPConns)
	return []Row{ratioRow(name, "messages/s", dr, br, 0.90, "%.0f")}, nil
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

// runBig sends one o.BigMessage-byte message directly and through the bridge
// process, and samples the bridge process's RSS while it relays.
func (e *env) runBig(ctx context.Context, o Options, p *bridgeProc) ([]Row, error) {
	a := e.accounts[bigAccount]
	one := func(c *smtp.Client) (time.Duration, error) {
		defer c.Quit()
		t0 := time.Now()
		hdr := "From: " + a.mailbox + "\r\nTo: " + smtpRecipient + "\r\nSubject: big\r\n\r\n"
		body := io.MultiReader(bytes.NewReader([]byte(hdr)), &bodyGen{left: o.BigMessage - int64(len(hdr))})
		if err := c.SendMail(a.mailbox, []string{smtpRecipient}, body); err != nil {
			return 0, fmt.Errorf("bench: big message: %w", err)
		}
		return time.Since(t0), nil
	}
	// Warm the bridge process with one small message on the same path.
	wc, err := dialSMTPBridge(p.smtp, a)
	if err != nil {
		return nil, err
	}
	if err := wc.SendMail(a.mailbox, []string{smtpRecipient}, bytes.NewReader(makeMessage(4096))); err != nil {
		wc.Close()
		return nil, err
	}
	_ = wc.Quit()
	time.Sleep(500 * time.Millisecond)

	dc, err := e.dialSMTPDirect(a.mailbox)
	if err != nil {
		return nil, err
	}
	dd, err := one(dc)
	if err != nil {
		return nil, err
	}
	before, err := p.rss()
	if err != nil {
		return nil, err
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
	bc, err := dialSMTPBridge(p.smtp, a)
	if err == nil {
		var bd time.Duration
		bd, err = one(bc)
		close(stop)
		wg.Wait()
		if err != nil {
			return nil, err
		}
		// VmHWM (the kernel's exact peak) backs up the sampling; it is
		// still the process's peak so far, as the IDLE workload runs later.
		if hwm, herr := p.status("VmHWM"); herr == nil && hwm > peak.Load() {
			peak.Store(hwm)
		}
		growth := float64(peak.Load()-before) / (1 << 20)
		dr := float64(o.BigMessage) / dd.Seconds() / 1e6
		br := float64(o.BigMessage) / bd.Seconds() / 1e6
		e.logf("big: direct %v, bridge %v, bridge RSS %d MiB, peak growth %.1f MiB", dd, bd, before>>20, growth)
		ok := growth <= 16
		name := fmt.Sprintf("SMTP one %s message (bridge process)", sizeName(o.BigMessage))
		return []Row{
			{Workload: name, Metric: "bridge peak RSS growth MiB", Direct: "-", Bridge: fmt.Sprintf("%.1f", growth), Ratio: "-", Target: "<= 16 MiB", OK: &ok},
			{Workload: name, Metric: "MB/s", Direct: fmt.Sprintf("%.0f", dr), Bridge: fmt.Sprintf("%.0f", br), Ratio: fmt.Sprintf("%.2f", br/dr), Target: "(reported)"},
		}, nil
	}
	close(stop)
	wg.Wait()
	return nil, err
}
