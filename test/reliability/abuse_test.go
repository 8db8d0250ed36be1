package reliability

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/oauthbridge/oauthbridge/config"
	"github.com/oauthbridge/oauthbridge/internal/localauth"
)

// garbage returns n lines of random bytes (no CR/LF inside).
func garbage(r *rand.Rand, n int) []string {
	var out []string
	for range n {
		b := make([]byte, 1+r.IntN(200))
		for i := range b {
			b[i] = byte(r.IntN(256))
			if b[i] == '\r' || b[i] == '\n' {
				b[i] = 0xff
			}
		}
		out = append(out, string(b))
	}
	return out
}

// TestBadInput: oversized lines, a 1 GB literal announced in LOGIN and
// binary garbage get a clear protocol error and a closed connection, on
// all three listeners, and the bridge keeps serving.
func TestBadInput(t *testing.T) {
	e := newEnv(t, 0, []account{{"badinput", "alice@contoso.com", "alice@contoso.com"}},
		[]user{{"otrs", "BadInput-Passw0rd-1", "badinput"}})
	d := e.start()
	r := rand.New(rand.NewPCG(1, 2))
	huge := strings.Repeat("A", 100_000) // over the 50 KB max_line_bytes default

	t.Run("imap", func(t *testing.T) {
		c := dialLine(t, d.Addr("imap"))
		c.expectPrefix("* OK")
		c.send("a1 LOGIN " + huge + " x")
		if rest := c.expectClosed(5 * time.Second); rest != "* BYE Command line too long\r\n" {
			t.Errorf("oversized line: %q", rest)
		}

		// A synchronising 1 GB literal: refused without a continuation.
		c = dialLine(t, d.Addr("imap"))
		c.expectPrefix("* OK")
		c.send("a1 LOGIN {1073741824}")
		if got := c.line(); got != fmt.Sprintf("a1 BAD Literal too large (max %d bytes)", config.DefaultMaxLiteralBytes) {
			t.Errorf("1 GB literal: %q", got)
		}
		c.send("a2 NOOP") // the connection is still in sync
		c.expectPrefix("a2 OK")
		// A non-synchronising one: the rest of the line cannot be found, so
		// the connection is closed.
		c.send("a3 LOGIN {1073741824+}")
		if rest := c.expectClosed(5 * time.Second); !strings.HasPrefix(rest, "a3 BAD Literal too large") || !strings.HasSuffix(rest, "* BYE Literal too large\r\n") {
			t.Errorf("non-synchronising 1 GB literal: %q", rest)
		}

		c = dialLine(t, d.Addr("imap"))
		c.expectPrefix("* OK")
		for _, g := range garbage(r, 10) {
			if c.write(g+"\r\n") != nil {
				break
			}
		}
		rest := c.expectClosed(5 * time.Second)
		if strings.Count(rest, " BAD ") != 3 || !strings.HasSuffix(rest, "* BYE Too many invalid commands\r\n") {
			t.Errorf("binary garbage: %q", rest)
		}
	})
	t.Run("pop3", func(t *testing.T) {
		c := dialLine(t, d.Addr("pop3"))
		c.expectPrefix("+OK")
		c.send("USER " + huge)
		if rest := c.expectClosed(5 * time.Second); rest != "-ERR line too long\r\n" {
			t.Errorf("oversized line: %q", rest)
		}
		c = dialLine(t, d.Addr("pop3"))
		c.expectPrefix("+OK")
		for _, g := range garbage(r, 10) {
			if c.write(g+"\r\n") != nil {
				break
			}
		}
		rest := c.expectClosed(5 * time.Second)
		if strings.Count(rest, "-ERR unknown command") != 2 || !strings.HasSuffix(rest, "-ERR too many bad commands, closing connection\r\n") {
			t.Errorf("binary garbage: %q", rest)
		}
		// A SASL response larger than the line limit.
		c = dialLine(t, d.Addr("pop3"))
		c.expectPrefix("+OK")
		c.send("AUTH PLAIN")
		c.expectPrefix("+ ")
		c.send(base64.StdEncoding.EncodeToString([]byte(huge)))
		if rest := c.expectClosed(5 * time.Second); rest != "-ERR line too long\r\n" {
			t.Errorf("oversized SASL response: %q", rest)
		}
	})
	t.Run("smtp", func(t *testing.T) {
		c := dialLine(t, d.Addr("smtp"))
		c.expectPrefix("220 ")
		c.send("EHLO " + huge)
		if rest := c.expectClosed(5 * time.Second); rest != "500 5.4.0 Too long line, closing connection\r\n" {
			t.Errorf("oversized line: %q", rest)
		}
		c = dialLine(t, d.Addr("smtp"))
		c.expectPrefix("220 ")
		for _, g := range garbage(r, 10) {
			if c.write(g+"\r\n") != nil {
				break
			}
		}
		rest := c.expectClosed(5 * time.Second)
		if !strings.HasSuffix(rest, "500 5.5.1 Too many errors. Quiting now\r\n") {
			t.Errorf("binary garbage: %q", rest)
		}
		c = dialLine(t, d.Addr("smtp"))
		c.expectPrefix("220 ")
		c.send("EHLO x")
		c.until("250 ")
		c.send("AUTH PLAIN")
		c.expectPrefix("334")
		c.send(strings.Repeat("QUFB", 20_000)) // 80 KB, over smtpproxy.DefaultMaxLineLength
		if rest := c.expectClosed(5 * time.Second); !strings.HasPrefix(rest, "500 5.4.0 Too long line") {
			t.Errorf("oversized SASL response: %q", rest)
		}
	})

	// After all that the bridge still serves.
	c, reply := imapLogin(t, d.Addr("imap"), "otrs", "BadInput-Passw0rd-1")
	if !strings.HasPrefix(reply, "a1 OK") {
		t.Errorf("login after the abuse: %q", reply)
	}
	c.close()
}

// trickle writes one byte of s every interval until the connection fails
// or stop is closed.
func trickle(c net.Conn, s string, interval time.Duration, stop <-chan struct{}) {
	for i := 0; ; i++ {
		c.SetWriteDeadline(time.Now().Add(time.Second))
		if _, err := c.Write([]byte{s[i%len(s)]}); err != nil {
			return
		}
		select {
		case <-stop:
			return
		case <-time.After(interval):
		}
	}
}

// TestSlowloris: a client that trickles bytes (faster than the timeout, so
// every single read succeeds) is still closed once a command has taken
// longer than the pre-auth timeout (IMAP, POP3) or the read timeout (SMTP).
func TestSlowloris(t *testing.T) {
	e := newEnv(t, 0, []account{{"slow", "alice@contoso.com", "alice@contoso.com"}},
		[]user{{"otrs", "Slow-Passw0rd-1", "slow"}})
	e.imapExtra = `preauth_timeout = "1s"`
	e.pop3Extra = `preauth_timeout = "1s"`
	e.smtpExtra = `read_timeout = "1s"`
	d := e.start()

	for _, tc := range []struct {
		proto, greeting, payload, want string
		within                         time.Duration
	}{
		{"imap", "* OK", "a1 LOGIN otrs Slow-Passw0rd-1", "* BYE Autologout; idle for too long\r\n", 2500 * time.Millisecond},
		{"pop3", "+OK", "USER otrs", "-ERR [SYS/TEMP] autologout\r\n", 2500 * time.Millisecond},
		// go-smtp counts each timed-out read as an error and gives up after
		// a few: bounded by a small multiple of read_timeout.
		{"smtp", "220 ", "EHLO slow.example", "500 5.5.1 Too many errors. Quiting now\r\n", 8 * time.Second},
	} {
		t.Run(tc.proto, func(t *testing.T) {
			c := dialLine(t, d.Addr(tc.proto))
			c.expectPrefix(tc.greeting)
			start := time.Now()
			stop := make(chan struct{})
			defer close(stop)
			go trickle(c.c, tc.payload, 300*time.Millisecond, stop)
			rest := c.expectClosed(tc.within + 2*time.Second)
			took := time.Since(start)
			if took > tc.within {
				t.Errorf("closed after %v, want within %v", took, tc.within)
			}
			if !strings.HasSuffix(rest, tc.want) {
				t.Errorf("slowloris got %q, want it to end with %q", rest, tc.want)
			}
		})
	}
}

// TestPreauthChatterBounded: a client that never logs in but keeps the
// connection busy with valid commands, each well within the pre-auth
// timeout, is still closed after a bounded number of commands (it would
// otherwise hold one of max_connections forever).
func TestPreauthChatterBounded(t *testing.T) {
	e := newEnv(t, 0, []account{{"chatter", "alice@contoso.com", "alice@contoso.com"}},
		[]user{{"otrs", "Chatter-Passw0rd-1", "chatter"}})
	e.imapExtra = `preauth_timeout = "1s"`
	e.pop3Extra = `preauth_timeout = "1s"`
	d := e.start()
	for _, tc := range []struct{ proto, greeting, cmd, bye string }{
		{"imap", "* OK", "NOOP", "* BYE Too many commands before login"},
		{"pop3", "+OK", "CAPA", "-ERR too many commands before login, closing connection"},
	} {
		t.Run(tc.proto, func(t *testing.T) {
			c := dialLine(t, d.Addr(tc.proto))
			c.expectPrefix(tc.greeting)
			for i := range 1000 {
				line := tc.cmd
				if tc.proto == "imap" {
					line = fmt.Sprintf("c%d %s", i, tc.cmd)
				}
				if c.write(line+"\r\n") != nil {
					break
				}
				s, err := c.readLine()
				for err == nil && !strings.HasPrefix(s, "c") && !strings.HasPrefix(s, "-ERR") && !strings.HasPrefix(s, "* BYE") && s != "." {
					s, err = c.readLine()
				}
				if err != nil || s == tc.bye {
					if i > 100 {
						t.Errorf("closed only after %d commands", i)
					}
					if s != tc.bye {
						t.Errorf("closed with %v after %d commands, want %q", err, i, tc.bye)
					}
					return
				}
				time.Sleep(time.Millisecond)
			}
			t.Errorf("%s: 1,000 commands before login and the connection is still open", tc.proto)
		})
	}
}

// TestConnectionFlood: 2,000 IMAP connections that never log in. The first
// max_connections (1,000) get a greeting, the rest a clear BYE; heap growth
// stays bounded; all of them are closed by the pre-auth timeout.
func TestConnectionFlood(t *testing.T) {
	const n = 2000
	e := newEnv(t, 0, []account{{"flood", "alice@contoso.com", "alice@contoso.com"}},
		[]user{{"otrs", "Flood-Passw0rd-1", "flood"}})
	e.imapExtra = `preauth_timeout = "6s"`
	d := e.start()
	addr := d.Addr("imap")
	base := goroutines()

	var before runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)

	conns := make([]net.Conn, n)
	greetings := make([]string, n)
	start := time.Now()
	var wg sync.WaitGroup
	sem := make(chan struct{}, 200)
	for i := range n {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			c, err := net.DialTimeout("tcp", addr, ioTimeout)
			if err != nil {
				greetings[i] = "dial: " + err.Error()
				return
			}
			conns[i] = c
			c.SetReadDeadline(time.Now().Add(ioTimeout))
			buf := make([]byte, 128)
			k, _ := c.Read(buf)
			greetings[i] = string(buf[:k])
		}()
	}
	wg.Wait()
	dialTime := time.Since(start)
	defer func() {
		for _, c := range conns {
			if c != nil {
				c.Close()
			}
		}
	}()
	var after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&after)
	growth := int64(after.HeapInuse) - int64(before.HeapInuse)
	t.Logf("%d connections in %v; HeapInuse %d -> %d MB (growth %.1f MB, %.1f KB per connection, client side included)",
		n, dialTime, before.HeapInuse>>20, after.HeapInuse>>20, float64(growth)/(1<<20), float64(growth)/n/1024)
	worstHeapMB.Store(max(worstHeapMB.Load(), int64(after.HeapInuse>>20)))

	ok, bye := 0, 0
	for i, g := range greetings {
		switch {
		case strings.HasPrefix(g, "* OK"):
			ok++
		case g == "* BYE Too many connections\r\n":
			bye++
		default:
			t.Errorf("connection %d got %q", i, g)
		}
	}
	if dialTime < 5*time.Second && (ok != config.DefaultMaxConnections || bye != n-config.DefaultMaxConnections) {
		t.Errorf("%d greeted, %d refused; want %d and %d", ok, bye, config.DefaultMaxConnections, n-config.DefaultMaxConnections)
	}
	// 64 MB for 2,000 sockets on both ends under the race detector.
	if growth > 64<<20 {
		t.Errorf("heap grew by %d MB for %d idle connections", growth>>20, n)
	}

	// Every greeted connection is closed by the pre-auth timeout.
	deadline := time.Now().Add(6*time.Second + 5*time.Second)
	for i, c := range conns {
		if c == nil || !strings.HasPrefix(greetings[i], "* OK") {
			continue
		}
		c.SetReadDeadline(deadline)
		buf := make([]byte, 256)
		var got []byte
		for {
			k, err := c.Read(buf)
			got = append(got, buf[:k]...)
			if err != nil {
				if ne, ok := err.(net.Error); ok && ne.Timeout() {
					t.Fatalf("connection %d still open after the pre-auth timeout", i)
				}
				break
			}
		}
		if string(got) != "* BYE Autologout; idle for too long\r\n" {
			t.Errorf("connection %d closed with %q", i, got)
			break
		}
	}
	for _, c := range conns {
		if c != nil {
			c.Close()
		}
	}
	waitGoroutines(t, base, "after the flood")
	// And the service works again.
	c, reply := imapLogin(t, addr, "otrs", "Flood-Passw0rd-1")
	if !strings.HasPrefix(reply, "a1 OK") {
		t.Errorf("login after the flood: %q", reply)
	}
	c.close()
}

// TestPasswordGuessingLocalauth drives 2,000 wrong passwords for one user
// from 127.0.0.1 through localauth, one after the other, with a fake clock
// (10 ms per attempt; every wait passes at once on it): bcrypt runs stay
// within one per second after the burst, and the helpdesk's right password
// from the same address is never refused as wrong.
func TestPasswordGuessingLocalauth(t *testing.T) {
	const right = "Guess-Right-Passw0rd"
	addSecret(right)
	cfg, err := config.Parse("guess.hcl", []byte(fmt.Sprintf(`
state_dir = %q
provider "p" {
  tenant    = "contoso.com"
  client_id = "app"
}
account "a" {
  provider = "p"
  mailbox  = "a@contoso.com"
}
user "otrs" {
  password_hash = %q
  account       = "a"
}
`, t.TempDir(), hashOf(t, right))))
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	clock := func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	advance := func(d time.Duration) time.Time { mu.Lock(); defer mu.Unlock(); now = now.Add(d); return now }
	after := func(d time.Duration) <-chan time.Time {
		ch := make(chan time.Time, 1)
		ch <- advance(d)
		return ch
	}
	a := localauth.New(cfg, localauth.Options{Now: clock, After: after})
	ctx := context.Background()

	if _, err := a.Check(ctx, "otrs", right, "127.0.0.1"); err != nil {
		t.Fatalf("legitimate login: %v", err)
	}
	start, b0 := clock(), a.BcryptCount()
	var invalid, throttled int
	for i := range 2_000 {
		_, err := a.Check(ctx, "otrs", fmt.Sprintf("wrong-%d", i), "127.0.0.1")
		switch {
		case errors.Is(err, localauth.ErrInvalid):
			invalid++
		case errors.Is(err, localauth.ErrThrottled):
			throttled++
		default:
			t.Fatalf("attempt %d: %v", i, err)
		}
		advance(10 * time.Millisecond)
		if i%100 == 0 {
			if _, err := a.Check(ctx, "otrs", right, "127.0.0.1"); err != nil {
				t.Fatalf("right password from the guessing address after %d guesses: %v", i, err)
			}
		}
	}
	elapsed := clock().Sub(start)
	runs := a.BcryptCount() - b0
	t.Logf("%d invalid, %d throttled, %d bcrypt runs in %s of clock time", invalid, throttled, runs, elapsed)
	if bound := int64(localauth.DefaultBurst) + int64(elapsed/localauth.DefaultCheckInterval); runs > bound {
		t.Errorf("%d bcrypt runs in %s, bound %d", runs, elapsed, bound)
	}
}

// TestPasswordGuessingIMAP: wrong passwords for the helpdesk's user through
// the real IMAP listener, 24 connections at once (below localauth's
// DefaultMaxPending), all from 127.0.0.1 like the helpdesk itself. Each is
// answered either "invalid credentials" (checked) or "[UNAVAILABLE]"
// (throttled, not checked); the throttled ones are counted and logged as
// such; the helpdesk's right password from the same address still logs in.
func TestPasswordGuessingIMAP(t *testing.T) {
	const right = "Imap-Right-Passw0rd"
	e := newEnv(t, 0, []account{{"guess", "alice@contoso.com", "alice@contoso.com"}},
		[]user{{"otrs", right, "guess"}})
	d := e.start()
	addr := d.Addr("imap")

	if c, r := imapLogin(t, addr, "otrs", right); !strings.HasPrefix(r, "a1 OK") {
		t.Fatalf("legitimate login: %q", r)
	} else {
		c.close()
	}
	replies := map[string]int{}
	var mu sync.Mutex
	var wg sync.WaitGroup
	const conns, perConn = 24, 1
	for i := range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c := dialLine(t, addr)
			defer c.close()
			c.expectPrefix("* OK")
			for j := range perConn {
				tag := fmt.Sprintf("g%d", j)
				if c.write(fmt.Sprintf("%s LOGIN otrs wrong-%d-%d\r\n", tag, i, j)) != nil {
					return
				}
				// A throttled guess may wait the hold, the queue and the
				// failure delay (about 15 s) before its answer.
				c.c.SetReadDeadline(time.Now().Add(time.Minute))
				s, err := c.br.ReadString('\n')
				if err != nil {
					t.Errorf("guess %d/%d: no answer: %v", i, j, err)
					return
				}
				s = strings.TrimRight(s, "\r\n")
				mu.Lock()
				replies[strings.TrimPrefix(s, tag+" ")]++
				mu.Unlock()
			}
		}()
	}
	// Meanwhile the helpdesk keeps logging in from the same address.
	for range 3 {
		c, r := imapLogin(t, addr, "otrs", right)
		if !strings.HasPrefix(r, "a1 OK") {
			t.Errorf("legitimate login during the attack: %q", r)
		}
		c.close()
	}
	wg.Wait()
	total := 0
	for k, v := range replies {
		total += v
		if k != "NO [AUTHENTICATIONFAILED] Invalid credentials" && !strings.HasPrefix(k, "NO [UNAVAILABLE] Too many login attempts") {
			t.Errorf("guess got %q %d times", k, v)
		}
	}
	if total != conns*perConn {
		t.Errorf("%d replies to %d guesses: %v", total, conns*perConn, replies)
	}
	text := scrapeMetrics(t, d.Addr("admin"))
	if v, _ := metricValue(text, `oauthbridge_logins_total{proto="imap",result="throttled"}`); v == "" || v == "0" {
		t.Errorf("no throttled IMAP logins counted: %q", v)
	}
	if c, r := imapLogin(t, addr, "otrs", right); !strings.HasPrefix(r, "a1 OK") {
		t.Errorf("legitimate login after the attack: %q", r)
	} else {
		c.close()
	}
	logs := e.logs.String()
	if strings.Contains(logs, "too many failed logins") {
		t.Error(`the log says "too many failed logins"`)
	}
	if !strings.Contains(logs, `"result":"throttled"`) || !strings.Contains(logs, "localauth: throttled") {
		t.Error(`no audit line says "throttled"`)
	}
}
