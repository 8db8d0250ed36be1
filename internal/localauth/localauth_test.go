package localauth

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net"
	"runtime"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/crypto/bcrypt"
	"golang.org/x/time/rate"

	"github.com/oauthbridge/oauthbridge/config"
)

func testConfig(t testing.TB, users map[string]string) *config.Config {
	t.Helper()
	return testConfigCost(t, users, bcrypt.MinCost)
}

func testConfigCost(t testing.TB, users map[string]string, cost int) *config.Config {
	t.Helper()
	src := fmt.Sprintf("state_dir = %q\nprovider \"p\" {\n tenant = \"t\"\n client_id = \"c\"\n}\naccount \"a\" {\n provider = \"p\"\n mailbox = \"a@x.com\"\n}\naccount \"b\" {\n provider = \"p\"\n mailbox = \"b@x.com\"\n}\n", t.TempDir())
	for name, pw := range users {
		h, err := bcrypt.GenerateFromPassword([]byte(pw), cost)
		if err != nil {
			t.Fatal(err)
		}
		acct := "a"
		if strings.HasPrefix(name, "b") {
			acct = "b"
		}
		src += fmt.Sprintf("user %q {\n password_hash = %q\n account = %q\n}\n", name, h, acct)
	}
	cfg, err := config.Parse("t.hcl", []byte(src))
	if err != nil {
		t.Fatal(err)
	}
	return cfg
}

const local = "127.0.0.1" // every legacy client, as in production

func newAuth(t testing.TB, users map[string]string, o Options) (*Authenticator, *fakeClock) {
	clk := newFakeClock()
	o.Now, o.After = clk.Now, clk.After
	if o.MaxConcurrentBcrypt == 0 {
		o.MaxConcurrentBcrypt = 64 // no queueing for the global slot unless a test wants it
	}
	return New(testConfig(t, users), o), clk
}

func TestCheckAndCache(t *testing.T) {
	a, clk := newAuth(t, map[string]string{"otrs": "right", "bob": "bobpw"}, Options{CacheTTL: time.Minute})
	ctx := context.Background()

	u, err := a.Check(ctx, "otrs", "right", local)
	if err != nil || u.Name != "otrs" || u.Account.Name != "a" {
		t.Fatalf("Check(right) = %v, %v", u, err)
	}
	if n := a.BcryptCount(); n != 1 {
		t.Fatalf("bcrypt count after first check = %d, want 1", n)
	}
	for i := 0; i < 10; i++ {
		if _, err := a.Check(ctx, "otrs", "right", local); err != nil {
			t.Fatal(err)
		}
	}
	if n := a.BcryptCount(); n != 1 {
		t.Errorf("cached checks ran bcrypt: count = %d, want 1", n)
	}
	// The cache holds only successes: a wrong password is checked for real.
	if _, err := a.Check(ctx, "otrs", "wrong", local); !errors.Is(err, ErrInvalid) {
		t.Errorf("Check(wrong) = %v, want ErrInvalid", err)
	}
	// Unknown users fail the same way, after the same bcrypt work.
	before := a.BcryptCount()
	if _, err := a.Check(ctx, "nobody", "x", local); !errors.Is(err, ErrInvalid) {
		t.Errorf("Check(unknown) = %v, want ErrInvalid", err)
	}
	if a.BcryptCount() != before+1 {
		t.Error("unknown user did not cost a bcrypt comparison (timing oracle)")
	}
	// After the TTL the cache entry is stale.
	clk.Advance(2 * time.Minute)
	before = a.BcryptCount()
	if _, err := a.Check(ctx, "otrs", "right", local); err != nil {
		t.Fatal(err)
	}
	if a.BcryptCount() != before+1 {
		t.Error("expired cache entry was still used")
	}
	// A password change (reload) invalidates the cache by construction.
	a.SetUsers(testConfig(t, map[string]string{"otrs": "new", "bob": "bobpw"}))
	if _, err := a.Check(ctx, "otrs", "right", local); !errors.Is(err, ErrInvalid) {
		t.Errorf("old password after reload = %v, want ErrInvalid", err)
	}
	if _, err := a.Check(ctx, "otrs", "new", local); err != nil {
		t.Errorf("new password after reload: %v", err)
	}
}

// attackers runs k goroutines that each present a new wrong password for
// user from 127.0.0.1 in a loop, as a looping client with a stale password
// does. After each answer a goroutine waits one second on the fake clock
// (the proxies' per-connection failure delay), so each one is always either
// deciding or blocked on exactly one fake timer. It returns a stop function
// that ends them and reports the answers they got.
func attackers(t *testing.T, a *Authenticator, clk *fakeClock, user string, k int) (stop func() map[string]int) {
	t.Helper()
	var mu sync.Mutex
	answers := map[string]int{}
	done := make(chan struct{})
	var wg sync.WaitGroup
	for g := range k {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; ; i++ {
				_, err := a.Check(context.Background(), user, fmt.Sprintf("stale-%d-%d", g, i), local)
				kind := "other: " + fmt.Sprint(err)
				switch {
				case err == nil:
					kind = "accepted"
				case errors.Is(err, ErrInvalid):
					kind = "invalid"
				case errors.Is(err, ErrThrottled):
					kind = "throttled"
				case errors.Is(err, ErrBusy):
					kind = "busy"
				}
				mu.Lock()
				answers[kind]++
				mu.Unlock()
				select {
				case <-done:
					return
				case <-clk.After(time.Second):
				}
			}
		}()
	}
	return func() map[string]int {
		mu.Lock()
		snap := maps.Clone(answers)
		mu.Unlock()
		close(done)
		// Let the blocked ones finish: move the clock until they have.
		fin := make(chan struct{})
		go func() { wg.Wait(); close(fin) }()
		for {
			select {
			case <-fin:
				return snap
			default:
				clk.Advance(time.Minute)
				runtime.Gosched()
			}
		}
	}
}

// Failures for one user (or for names that do not exist) from 127.0.0.1
// do not slow another user's right password from 127.0.0.1 at all: it is
// answered without waiting on the clock, cold or cached.
func TestOtherUsersFailuresDoNotSlowAUser(t *testing.T) {
	for _, attacked := range []string{"bob", "no-such-user"} {
		t.Run(attacked, func(t *testing.T) {
			a, clk := newAuth(t, map[string]string{"otrs": "right", "bob": "bobpw"}, Options{CacheTTL: 30 * time.Second})
			const k = 3
			stop := attackers(t, a, clk, attacked, k)
			all := func() int { return k }
			bcrypts := func() int64 { return a.BcryptCount() }
			start := clk.Now()
			b0 := bcrypts()
			for i := range 240 { // four simulated minutes
				if i%20 == 0 {
					// Cold every 30 s (CacheTTL), then cached: answered at
					// once, without the clock moving.
					for range 2 {
						at := clk.Now()
						if _, err := a.Check(context.Background(), "otrs", "right", local); err != nil {
							t.Fatalf("otrs at +%s while %s fails from the same address: %v", at.Sub(start), attacked, err)
						}
						if !clk.Now().Equal(at) {
							t.Fatal("otrs waited on the clock")
						}
					}
				}
				clk.Step(t, all)
			}
			window := clk.Now().Sub(start)
			answers := stop()
			t.Logf("%s after %s: %v, %d bcrypt runs in all", attacked, window, answers, bcrypts()-b0)
			if answers["invalid"] == 0 || answers["accepted"] != 0 || answers["busy"] != 0 {
				t.Errorf("answers to the stale client: %v", answers)
			}
			// The failing name itself is slowed: at most Burst + one check
			// per CheckInterval (plus otrs's 20 checks).
			if max := int64(DefaultBurst) + int64(window/DefaultCheckInterval) + 1; int64(answers["invalid"]) > max {
				t.Errorf("%d checked guesses for %s in %s, bound %d", answers["invalid"], attacked, window, max)
			}
		})
	}
}

// A user under attack from its own address: its right password still gets
// in within 15 s of clock time, never as "invalid", while the guessing rate
// for that user stays within the documented bound. Cold logins (nothing
// cached: after a start, or CacheTTL after the last use) get in within
// 15 s too while the attack leaves the user's check queue short; past
// that they get a temporary "throttled", never "invalid".
func TestUserUnderAttackFromOwnAddress(t *testing.T) {
	for _, tc := range []struct {
		attackers  int
		ttl        time.Duration
		coldRefuse bool // a cold login may be refused as throttled
	}{
		{1, time.Minute, false},
		{4, time.Minute, false},
		{DefaultMaxPending - 2, time.Minute, false},
		{1, 10 * time.Second, false},
		{4, 10 * time.Second, false},
		{DefaultMaxPending - 2, 10 * time.Second, true},
	} {
		k := tc.attackers
		t.Run(fmt.Sprintf("%d-attackers-ttl-%s", k, tc.ttl), func(t *testing.T) {
			a, clk := newAuth(t, map[string]string{"otrs": "right"}, Options{CacheTTL: tc.ttl})
			ctx := context.Background()
			if _, err := a.Check(ctx, "otrs", "right", local); err != nil {
				t.Fatal(err)
			}
			stop := attackers(t, a, clk, "otrs", k)
			var inFlight atomic.Int32
			want := func() int { return k + int(inFlight.Load()) }
			start := clk.Now()
			b0 := a.BcryptCount()
			var worst time.Duration
			refused := 0
			for i := range 16 {
				// The helpdesk logs in every 15 s.
				for range 15 {
					clk.Step(t, want)
				}
				sent := clk.Now()
				inFlight.Store(1)
				res := make(chan error, 1)
				var took time.Duration
				go func() {
					_, err := a.Check(ctx, "otrs", "right", local)
					took = clk.Now().Sub(sent)
					inFlight.Store(0)
					res <- err
					clk.Kick()
				}()
				var err error
			wait:
				for {
					select {
					case err = <-res:
						break wait
					default:
						clk.Step(t, want)
					}
				}
				switch {
				case err == nil:
					worst = max(worst, took)
					if took > 15*time.Second {
						t.Errorf("login %d: right password took %s of clock time, want <= 15s", i, took)
					}
				case tc.coldRefuse && errors.Is(err, ErrThrottled) && !errors.Is(err, ErrInvalid):
					refused++
				default:
					t.Fatalf("login %d: right password during the attack: %v", i, err)
				}
			}
			window := clk.Now().Sub(start)
			runs := a.BcryptCount() - b0
			answers := stop()
			t.Logf("%d attackers, TTL %s, %s: %v; %d bcrypt runs; slowest right login %s; %d of 16 logins refused as throttled",
				k, tc.ttl, window, answers, runs, worst, refused)
			// Bound 1: bcrypt for the user <= Burst + window/CheckInterval.
			if bound := int64(DefaultBurst) + int64(window/DefaultCheckInterval); runs > bound {
				t.Errorf("%d bcrypt runs in %s, bound %d (<= 1 per second after the burst)", runs, window, bound)
			}
			// Bound 2: answers about distinct wrong passwords <= the bcrypt
			// bound + MaxPending per ThrottledHold.
			decided := answers["invalid"] + answers["throttled"]
			if bound := DefaultBurst + int(window/DefaultCheckInterval) + DefaultMaxPending*(int(window/DefaultThrottledHold)+1); decided > bound {
				t.Errorf("%d guesses answered in %s, bound %d", decided, window, bound)
			}
			if answers["accepted"] != 0 || answers["busy"] != 0 {
				t.Errorf("attacker answers %v", answers)
			}
		})
	}
}

// settle moves the clock a second at a time until n answers arrived on res.
func settle(t *testing.T, clk *fakeClock, res <-chan error, n int) []error {
	t.Helper()
	var out []error
	for len(out) < n {
		select {
		case err := <-res:
			out = append(out, err)
		default:
			clk.Advance(time.Second)
			runtime.Gosched()
		}
	}
	return out
}

// Past MaxPending different passwords waiting for a throttled user, more
// are refused unseen: as throttled (a temporary answer), never as invalid,
// and without looking at the cache or running bcrypt.
func TestPendingLimitRefusesUnseen(t *testing.T) {
	a, clk := newAuth(t, map[string]string{"otrs": "right"}, Options{MaxPending: 2, Burst: 1})
	ctx := context.Background()
	if _, err := a.Check(ctx, "otrs", "right", local); err != nil { // spends the burst, caches
		t.Fatal(err)
	}
	res := make(chan error, 2)
	for i := range 2 {
		go func() { _, err := a.Check(ctx, "otrs", fmt.Sprint("guess", i), local); res <- err }()
	}
	clk.WaitTimers(t, func() int { return 2 }) // both held
	before := a.BcryptCount()
	if _, err := a.Check(ctx, "otrs", "right", local); !errors.Is(err, ErrThrottled) {
		t.Errorf("right password with the pending table full = %v, want ErrThrottled", err)
	}
	if _, err := a.Check(ctx, "otrs", "guess3", local); !errors.Is(err, ErrThrottled) || errors.Is(err, ErrInvalid) {
		t.Errorf("third guess = %v, want ErrThrottled", err)
	}
	if a.BcryptCount() != before {
		t.Error("a refused attempt ran bcrypt")
	}
	for _, err := range settle(t, clk, res, 2) {
		if !errors.Is(err, ErrInvalid) && !errors.Is(err, ErrThrottled) {
			t.Errorf("held guess = %v", err)
		}
	}
	// Once they are answered the cached right password gets in again.
	clk.Advance(time.Minute)
	if _, err := a.Check(ctx, "otrs", "right", local); err != nil {
		t.Errorf("right password after the flood: %v", err)
	}
}

// A throttled user's cached password is accepted only after the hold: a
// guesser cannot tell a hit from a miss faster than ThrottledHold.
func TestThrottledHitWaitsForTheHold(t *testing.T) {
	a, clk := newAuth(t, map[string]string{"otrs": "right"}, Options{Burst: 1, CheckInterval: time.Hour})
	ctx := context.Background()
	if _, err := a.Check(ctx, "otrs", "right", local); err != nil {
		t.Fatal(err)
	}
	res := make(chan error, 1)
	go func() { _, err := a.Check(ctx, "otrs", "right", local); res <- err }()
	clk.WaitTimers(t, func() int { return 1 })
	select {
	case err := <-res:
		t.Fatalf("answered before the hold: %v", err)
	default:
	}
	clk.Advance(DefaultThrottledHold - time.Millisecond)
	select {
	case err := <-res:
		t.Fatalf("answered before the hold: %v", err)
	default:
	}
	clk.Advance(time.Millisecond)
	if err := <-res; err != nil {
		t.Errorf("cached right password after the hold: %v", err)
	}
	// A miss with the next slot an hour away is refused after the same
	// hold, as throttled.
	go func() { _, err := a.Check(ctx, "otrs", "guess", local); res <- err }()
	clk.WaitTimers(t, func() int { return 1 })
	clk.Advance(DefaultThrottledHold)
	if err := <-res; !errors.Is(err, ErrThrottled) {
		t.Errorf("guess with no check slot = %v, want ErrThrottled", err)
	}
}

// Names that do not exist share one bucket per address: they slow only
// further unknown names from that address.
func TestUnknownNamesBucketPerAddress(t *testing.T) {
	a, clk := newAuth(t, map[string]string{"otrs": "right"}, Options{CheckInterval: time.Hour})
	ctx := context.Background()
	for i := range DefaultBurst {
		if _, err := a.Check(ctx, fmt.Sprint("ghost", i), "x", local); !errors.Is(err, ErrInvalid) {
			t.Fatalf("unknown name %d: %v", i, err)
		}
	}
	res := make(chan error, 1)
	go func() { _, err := a.Check(ctx, "ghost-next", "x", local); res <- err }()
	clk.WaitTimers(t, func() int { return 1 })
	// Meanwhile a real user from the same address is not slowed.
	at := clk.Now()
	if _, err := a.Check(ctx, "otrs", "right", local); err != nil || !clk.Now().Equal(at) {
		t.Errorf("otrs beside unknown names: %v", err)
	}
	// Nor are unknown names from another address.
	if _, err := a.Check(ctx, "ghost", "x", "127.0.0.2"); !errors.Is(err, ErrInvalid) {
		t.Errorf("unknown name from another address: %v", err)
	}
	clk.Advance(DefaultThrottledHold)
	if err := <-res; !errors.Is(err, ErrThrottled) {
		t.Errorf("unknown name past the burst = %v, want ErrThrottled", err)
	}
}

// A cold start: 100 concurrent logins with the right password for one
// user, and 100 spread over 10 users, all succeed; identical credentials
// share one bcrypt. (Their latency is in BenchmarkColdBurst.)
func TestColdBurst(t *testing.T) {
	users := map[string]string{}
	for i := range 10 {
		users[fmt.Sprint("user", i)] = fmt.Sprint("pw", i)
	}
	for _, tc := range []struct {
		name  string
		nUser int
	}{{"one-user", 1}, {"ten-users", 10}} {
		t.Run(tc.name, func(t *testing.T) {
			a := New(testConfig(t, users), Options{}) // real clock, default bcrypt slots
			var wg sync.WaitGroup
			errs := make(chan error, 100)
			for i := range 100 {
				wg.Add(1)
				go func() {
					defer wg.Done()
					n := i % tc.nUser
					if _, err := a.Check(context.Background(), fmt.Sprint("user", n), fmt.Sprint("pw", n), local); err != nil {
						errs <- err
					}
				}()
			}
			wg.Wait()
			close(errs)
			for err := range errs {
				t.Errorf("cold login: %v", err)
			}
			if n := a.BcryptCount(); n != int64(tc.nUser) {
				t.Errorf("%d bcrypt runs for %d distinct credentials", n, tc.nUser)
			}
		})
	}
}

// Overload is reported as busy, never as invalid credentials.
func TestBusy(t *testing.T) {
	a, clk := newAuth(t, map[string]string{"otrs": "right"}, Options{MaxConcurrentBcrypt: 1})
	a.sem <- struct{}{} // occupy the only slot
	res := make(chan error, 1)
	go func() { _, err := a.Check(context.Background(), "otrs", "right", local); res <- err }()
	clk.WaitTimers(t, func() int { return 1 })
	clk.Advance(DefaultBcryptQueueWait)
	if err := <-res; !errors.Is(err, ErrBusy) || errors.Is(err, ErrInvalid) {
		t.Errorf("Check with every slot taken = %v, want ErrBusy", err)
	}
	// A caller that gives up gets its context's error.
	ctx, cancel := context.WithCancel(context.Background())
	go func() { _, err := a.Check(ctx, "otrs", "right2", local); res <- err }()
	clk.WaitTimers(t, func() int { return 1 })
	cancel()
	if err := <-res; !errors.Is(err, context.Canceled) {
		t.Errorf("cancelled Check = %v", err)
	}
	<-a.sem
	if _, err := a.Check(context.Background(), "otrs", "right", local); err != nil {
		t.Errorf("after the slot freed: %v", err)
	}
}

// The timing guard: a name that does not exist is compared against a hash
// at the cost of some configured user (picked per name, the same each
// time), whatever mix of costs the users have, also after a reload.
func TestDummyCostFollowsUsers(t *testing.T) {
	mk := func(costs map[string]int) *config.Config {
		src := fmt.Sprintf("state_dir = %q\nprovider \"p\" {\n tenant = \"t\"\n client_id = \"c\"\n}\naccount \"a\" {\n provider = \"p\"\n mailbox = \"a@x.com\"\n}\n", t.TempDir())
		for name, c := range costs {
			h, _ := bcrypt.GenerateFromPassword([]byte("x"), c)
			src += fmt.Sprintf("user %q {\n password_hash = %q\n account = \"a\"\n}\n", name, h)
		}
		cfg, err := config.Parse("t.hcl", []byte(src))
		if err != nil {
			t.Fatal(err)
		}
		return cfg
	}
	check := func(a *Authenticator, want map[int]bool) {
		t.Helper()
		tbl := a.users.Load()
		seen := map[int]int{}
		for i := range 200 {
			name := fmt.Sprint("ghost", i)
			h := tbl.dummies[a.pick(name, len(tbl.dummies))]
			c, err := bcrypt.Cost(h)
			if err != nil || !want[c] {
				t.Fatalf("unknown name %q compared at cost %d (%v); users have %v", name, c, err, want)
			}
			if again := tbl.dummies[a.pick(name, len(tbl.dummies))]; string(again) != string(h) {
				t.Fatal("the same unknown name got another dummy")
			}
			seen[c]++
		}
		if len(seen) != len(want) {
			t.Errorf("costs used for unknown names: %v, want every one of %v", seen, want)
		}
	}
	a := New(mk(map[string]int{"otrs": bcrypt.MinCost, "bob": bcrypt.MinCost + 2}), Options{})
	check(a, map[int]bool{bcrypt.MinCost: true, bcrypt.MinCost + 2: true})
	a.SetUsers(mk(map[string]int{"otrs": bcrypt.MinCost + 1}))
	check(a, map[int]bool{bcrypt.MinCost + 1: true})
}

func TestTablesBounded(t *testing.T) {
	a, _ := newAuth(t, map[string]string{"otrs": "right"}, Options{})
	ctx := context.Background()
	a.mu.Lock()
	for i := 0; len(a.buckets) < MaxTrackedKeys; i++ {
		a.buckets[fmt.Sprintf("r\x00fill-%d", i)] = &bucket{lim: rate.NewLimiter(0, 0)} // never idle
	}
	a.mu.Unlock()
	if _, err := a.Check(ctx, "ghost", "x", "203.0.113.77"); !errors.Is(err, ErrInvalid) {
		t.Errorf("unknown name with a full table: %v", err)
	}
	a.mu.Lock()
	n := len(a.buckets)
	a.mu.Unlock()
	if n > MaxTrackedKeys+1 {
		t.Errorf("bucket table grew to %d, cap %d", n, MaxTrackedKeys)
	}
	// Idle (full) buckets are collected when the table grows.
	a2, _ := newAuth(t, map[string]string{"otrs": "right"}, Options{})
	a2.mu.Lock()
	for i := range 1500 {
		a2.buckets[fmt.Sprintf("r\x00idle-%d", i)] = &bucket{lim: rate.NewLimiter(rate.Every(time.Second), DefaultBurst)}
	}
	a2.mu.Unlock()
	a2.Check(ctx, "ghost", "x", "10.9.9.9")
	a2.mu.Lock()
	n = len(a2.buckets)
	a2.mu.Unlock()
	if n > 10 {
		t.Errorf("%d buckets after the addresses went idle", n)
	}
}

func TestAuditLine(t *testing.T) {
	var b bytes.Buffer
	log := slog.New(slog.NewJSONHandler(&b, nil))
	Audit(log, nil, nil, Attempt{Proto: "imap", User: "otrs", Remote: "10.0.0.1", Result: ResultNeedsLogin, Account: "a", Mailbox: "a@x.com", Err: errors.New("tokens: refresh revoked")})
	s := b.String()
	for _, want := range []string{`"level":"ERROR"`, `"msg":"login"`, `"proto":"imap"`, `"user":"otrs"`, `"result":"needs_login"`, `"account":"a"`, `"remote":"10.0.0.1"`} {
		if !strings.Contains(s, want) {
			t.Errorf("audit line lacks %s: %s", want, s)
		}
	}
	b.Reset()
	Audit(log, nil, nil, Attempt{Proto: "smtp", User: strings.Repeat("x", 500), Remote: "r", Result: ResultBadCredentials})
	if !strings.Contains(b.String(), `"level":"WARN"`) || strings.Count(b.String(), "x") > 80 {
		t.Errorf("bad credentials line: %s", b.String())
	}
}

func BenchmarkCheckCached(b *testing.B) {
	cfg := testConfig(b, map[string]string{"otrs": "right"})
	a := New(cfg, Options{})
	ctx := context.Background()
	if _, err := a.Check(ctx, "otrs", "right", local); err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if _, err := a.Check(ctx, "otrs", "right", local); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkColdBurst: right after a start, 100 concurrent logins with the
// right password (bcrypt cost 10, as hash-password makes them) for one user
// and spread over 10 users. Reports the p99 and max latency of one login;
// the target is every login within 10 s on 2 cores.
func BenchmarkColdBurst(b *testing.B) {
	users := map[string]string{}
	for i := range 10 {
		users[fmt.Sprint("user", i)] = fmt.Sprint("pw", i)
	}
	cfg := testConfigCost(b, users, bcrypt.DefaultCost)
	for _, nUser := range []int{1, 10} {
		b.Run(fmt.Sprintf("users=%d", nUser), func(b *testing.B) {
			var all []time.Duration
			for range b.N {
				b.StopTimer()
				a := New(cfg, Options{})
				b.StartTimer()
				lat := make([]time.Duration, 100)
				var wg sync.WaitGroup
				for i := range 100 {
					wg.Add(1)
					go func() {
						defer wg.Done()
						n := i % nUser
						t0 := time.Now()
						if _, err := a.Check(context.Background(), fmt.Sprint("user", n), fmt.Sprint("pw", n), local); err != nil {
							b.Error(err)
						}
						lat[i] = time.Since(t0)
					}()
				}
				wg.Wait()
				all = append(all, lat...)
			}
			sort.Slice(all, func(i, j int) bool { return all[i] < all[j] })
			b.ReportMetric(float64(all[len(all)*99/100].Milliseconds()), "p99-ms")
			b.ReportMetric(float64(all[len(all)-1].Milliseconds()), "max-ms")
		})
	}
}

func TestDefaultBcryptCapLeavesCores(t *testing.T) {
	a := New(testConfig(t, map[string]string{"otrs": "x"}), Options{})
	want := max(1, runtime.GOMAXPROCS(0)/2)
	if cap(a.sem) != want {
		t.Errorf("default bcrypt concurrency = %d, want %d (half the cores)", cap(a.sem), want)
	}
}

// otherAddr is a net.Addr of no standard type, as some wrappers produce.
type otherAddr string

func (a otherAddr) Network() string { return "tcp" }
func (a otherAddr) String() string  { return string(a) }

func TestIsLoopback(t *testing.T) {
	p1, p2 := net.Pipe()
	defer p1.Close()
	defer p2.Close()
	for _, tc := range []struct {
		addr net.Addr
		want bool
	}{
		{&net.TCPAddr{IP: net.ParseIP("127.0.0.1"), Port: 1}, true},
		{&net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 1}, true},
		{&net.TCPAddr{IP: net.ParseIP("::1"), Port: 1}, true},
		{&net.TCPAddr{IP: net.IPv6loopback, Port: 1}, true},
		{&net.TCPAddr{IP: net.ParseIP("10.1.2.3"), Port: 1}, false},
		{&net.TCPAddr{IP: net.IPv4(192, 0, 2, 1), Port: 1}, false},
		{&net.UnixAddr{Name: "/run/x.sock", Net: "unix"}, true},
		{&net.UnixAddr{Name: "@x", Net: "unix"}, true},
		{p1.RemoteAddr(), true},
		{otherAddr("127.0.0.5:143"), true},
		{otherAddr("[::1]:143"), true},
		{otherAddr("203.0.113.1:143"), false},
		{nil, false},
	} {
		if got := IsLoopback(tc.addr); got != tc.want {
			t.Errorf("IsLoopback(%v) = %v, want %v", tc.addr, got, tc.want)
		}
	}
}
