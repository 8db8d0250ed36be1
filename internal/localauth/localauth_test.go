package localauth

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/crypto/bcrypt"

	"github.com/oauthbridge/oauthbridge/config"
)

type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *clock) add(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

func testConfig(t testing.TB, users map[string]string) *config.Config {
	t.Helper()
	src := fmt.Sprintf("state_dir = %q\nprovider \"p\" {\n tenant = \"t\"\n client_id = \"c\"\n}\naccount \"a\" {\n provider = \"p\"\n mailbox = \"a@x.com\"\n}\naccount \"b\" {\n provider = \"p\"\n mailbox = \"b@x.com\"\n}\n", t.TempDir())
	for name, pw := range users {
		h, err := bcrypt.GenerateFromPassword([]byte(pw), bcrypt.MinCost)
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

func TestCheckAndCache(t *testing.T) {
	cfg := testConfig(t, map[string]string{"otrs": "right", "bob": "bobpw"})
	clk := &clock{t: time.Unix(1e9, 0)}
	a := New(cfg, Options{Now: clk.now, CacheTTL: time.Minute})
	ctx := context.Background()

	u, err := a.Check(ctx, "otrs", "right", "10.0.0.1")
	if err != nil || u.Name != "otrs" || u.Account.Name != "a" {
		t.Fatalf("Check(right) = %v, %v", u, err)
	}
	if n := a.BcryptCount(); n != 1 {
		t.Fatalf("bcrypt count after first check = %d, want 1", n)
	}
	for i := 0; i < 10; i++ {
		if _, err := a.Check(ctx, "otrs", "right", "10.0.0.1"); err != nil {
			t.Fatal(err)
		}
	}
	if n := a.BcryptCount(); n != 1 {
		t.Errorf("cached checks ran bcrypt: count = %d, want 1", n)
	}
	// The cache holds only successes: a wrong password is checked for real.
	if _, err := a.Check(ctx, "otrs", "wrong", "10.0.0.1"); !errors.Is(err, ErrInvalid) {
		t.Errorf("Check(wrong) = %v, want ErrInvalid", err)
	}
	// Unknown users fail the same way, after the same bcrypt work.
	before := a.BcryptCount()
	if _, err := a.Check(ctx, "nobody", "x", "10.0.0.2"); !errors.Is(err, ErrInvalid) {
		t.Errorf("Check(unknown) = %v, want ErrInvalid", err)
	}
	if a.BcryptCount() != before+1 {
		t.Error("unknown user did not cost a bcrypt comparison (timing oracle)")
	}
	// After the TTL the cache entry is stale.
	clk.add(2 * time.Minute)
	before = a.BcryptCount()
	if _, err := a.Check(ctx, "otrs", "right", "10.0.0.1"); err != nil {
		t.Fatal(err)
	}
	if a.BcryptCount() != before+1 {
		t.Error("expired cache entry was still used")
	}
	// A password change (reload) invalidates the cache by construction.
	a.SetUsers(testConfig(t, map[string]string{"otrs": "new", "bob": "bobpw"}))
	if _, err := a.Check(ctx, "otrs", "right", "10.0.0.1"); !errors.Is(err, ErrInvalid) {
		t.Errorf("old password after reload = %v, want ErrInvalid", err)
	}
	if _, err := a.Check(ctx, "otrs", "new", "10.0.0.1"); err != nil {
		t.Errorf("new password after reload: %v", err)
	}
}

func TestThrottlePerRemote(t *testing.T) {
	cfg := testConfig(t, map[string]string{"otrs": "right"})
	clk := &clock{t: time.Unix(1e9, 0)}
	a := New(cfg, Options{Now: clk.now, RemoteThreshold: 3, UserThreshold: 1000})
	ctx := context.Background()
	for i := 0; i < 3; i++ {
		if _, err := a.Check(ctx, "otrs", "bad", "192.0.2.1"); !errors.Is(err, ErrInvalid) {
			t.Fatalf("attempt %d: %v", i, err)
		}
	}
	// Blocked now: refused without bcrypt, even with the right password.
	before := a.BcryptCount()
	for i := 0; i < 1000; i++ {
		if _, err := a.Check(ctx, "otrs", "bad", "192.0.2.1"); !errors.Is(err, ErrThrottled) {
			t.Fatalf("flood attempt %d: %v, want ErrThrottled", i, err)
		}
	}
	if _, err := a.Check(ctx, "otrs", "right", "192.0.2.1"); !errors.Is(err, ErrThrottled) {
		t.Errorf("right password from blocked address = %v, want ErrThrottled", err)
	}
	if a.BcryptCount() != before {
		t.Errorf("throttled attempts ran bcrypt %d times", a.BcryptCount()-before)
	}
	// Another address is not affected.
	if _, err := a.Check(ctx, "otrs", "right", "192.0.2.2"); err != nil {
		t.Errorf("other address: %v", err)
	}
	// The delay grows: after it passes, one more failure blocks for longer.
	clk.add(DefaultBaseDelay + time.Millisecond)
	if _, err := a.Check(ctx, "otrs", "bad", "192.0.2.1"); !errors.Is(err, ErrInvalid) {
		t.Fatalf("after delay: %v", err)
	}
	clk.add(DefaultBaseDelay + time.Millisecond)
	if _, err := a.Check(ctx, "otrs", "bad", "192.0.2.1"); !errors.Is(err, ErrThrottled) {
		t.Errorf("second delay did not grow: %v", err)
	}
	clk.add(2 * DefaultBaseDelay)
	if _, err := a.Check(ctx, "otrs", "right", "192.0.2.1"); err != nil {
		t.Errorf("after the grown delay, right password: %v", err)
	}
}

func TestThrottlePerUserSparesKnownRemote(t *testing.T) {
	cfg := testConfig(t, map[string]string{"otrs": "right"})
	clk := &clock{t: time.Unix(1e9, 0)}
	a := New(cfg, Options{Now: clk.now, RemoteThreshold: 1000, UserThreshold: 5, CacheTTL: time.Minute, BaseDelay: time.Hour, MaxDelay: 2 * time.Hour})
	ctx := context.Background()
	// The OTRS server logs in once from its usual address.
	if _, err := a.Check(ctx, "otrs", "right", "10.1.1.1"); err != nil {
		t.Fatal(err)
	}
	// A distributed attack: one wrong password from each of many addresses.
	for i := 0; i < 50; i++ {
		_, err := a.Check(ctx, "otrs", "guess", fmt.Sprintf("198.51.100.%d", i))
		if i >= 5 && !errors.Is(err, ErrThrottled) {
			t.Fatalf("attempt %d from a new address: %v, want ErrThrottled", i, err)
		}
	}
	// The known server is not locked out, even after its cache entry expired.
	clk.add(2 * time.Minute)
	if _, err := a.Check(ctx, "otrs", "right", "10.1.1.1"); err != nil {
		t.Errorf("known address locked out by a distributed attack: %v", err)
	}
	// A new address waits for the user's delay, even with the right (cached)
	// password: a cache hit must not become a guessing oracle during a lockout.
	if _, err := a.Check(ctx, "otrs", "right", "203.0.113.9"); !errors.Is(err, ErrThrottled) {
		t.Errorf("new address during attack = %v, want ErrThrottled", err)
	}
}

func TestBcryptConcurrencyBound(t *testing.T) {
	cfg := testConfig(t, map[string]string{"otrs": "right"})
	a := New(cfg, Options{MaxConcurrentBcrypt: 1, RemoteThreshold: 1 << 20, UserThreshold: 1 << 20})
	a.sem <- struct{}{} // occupy the only slot
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if _, err := a.Check(ctx, "otrs", "right", "10.0.0.1"); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Check with a full bcrypt queue = %v, want the context's error", err)
	}
	<-a.sem
	if _, err := a.Check(context.Background(), "otrs", "right", "10.0.0.1"); err != nil {
		t.Errorf("after the slot freed: %v", err)
	}
}

func TestAuditLine(t *testing.T) {
	var b bytes.Buffer
	log := slog.New(slog.NewJSONHandler(&b, nil))
	Audit(log, Attempt{Proto: "imap", User: "otrs", Remote: "10.0.0.1", Result: ResultNeedsLogin, Account: "a", Mailbox: "a@x.com", Err: errors.New("tokens: refresh revoked")})
	s := b.String()
	for _, want := range []string{`"level":"ERROR"`, `"msg":"login"`, `"proto":"imap"`, `"user":"otrs"`, `"result":"needs_login"`, `"account":"a"`, `"remote":"10.0.0.1"`} {
		if !strings.Contains(s, want) {
			t.Errorf("audit line lacks %s: %s", want, s)
		}
	}
	b.Reset()
	Audit(log, Attempt{Proto: "smtp", User: strings.Repeat("x", 500), Remote: "r", Result: ResultBadCredentials})
	if !strings.Contains(b.String(), `"level":"WARN"`) || strings.Count(b.String(), "x") > 80 {
		t.Errorf("bad credentials line: %s", b.String())
	}
}

func BenchmarkCheckCached(b *testing.B) {
	cfg := testConfig(b, map[string]string{"otrs": "right"})
	a := New(cfg, Options{})
	ctx := context.Background()
	if _, err := a.Check(ctx, "otrs", "right", "10.0.0.1"); err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if _, err := a.Check(ctx, "otrs", "right", "10.0.0.1"); err != nil {
			b.Fatal(err)
		}
	}
}

func TestDefaultBcryptCapLeavesCores(t *testing.T) {
	a := New(testConfig(t, map[string]string{"otrs": "x"}), Options{})
	want := max(1, runtime.GOMAXPROCS(0)/2)
	if cap(a.sem) != want {
		t.Errorf("default bcrypt concurrency = %d, want %d (half the cores)", cap(a.sem), want)
	}
}

func TestUnknownNamesNotTrackedAndTablesBounded(t *testing.T) {
	cfg := testConfig(t, map[string]string{"otrs": "right"})
	a := New(cfg, Options{MaxConcurrentBcrypt: 4})
	ctx := context.Background()
	for i := 0; i < 20; i++ {
		a.Check(ctx, fmt.Sprintf("%s-%d", strings.Repeat("n", 1000), i), "x", fmt.Sprintf("10.9.0.%d", i))
	}
	a.mu.Lock()
	n := len(a.userFail)
	a.mu.Unlock()
	if n != 0 {
		t.Errorf("%d per-user counters for names that do not exist", n)
	}
	// A full table stops growing.
	a.mu.Lock()
	for i := 0; len(a.remotes) < MaxTrackedKeys; i++ {
		a.remotes[fmt.Sprintf("fill-%d", i)] = &failures{count: 1, last: time.Now()}
	}
	a.mu.Unlock()
	a.Check(ctx, "otrs", "wrong", "203.0.113.77")
	a.mu.Lock()
	n = len(a.remotes)
	a.mu.Unlock()
	if n > MaxTrackedKeys {
		t.Errorf("remote table grew to %d, cap %d", n, MaxTrackedKeys)
	}
}

func TestDummyHashFollowsReloadedCost(t *testing.T) {
	a := New(testConfig(t, map[string]string{"otrs": "x"}), Options{}) // MinCost hashes
	if c, _ := bcrypt.Cost(a.dummy); c != bcrypt.MinCost {
		t.Fatalf("dummy cost %d, want the users' %d", c, bcrypt.MinCost)
	}
	h, _ := bcrypt.GenerateFromPassword([]byte("x"), bcrypt.MinCost+2)
	cfg2, err := config.Parse("t.hcl", []byte(fmt.Sprintf("state_dir = %q\nprovider \"p\" {\n tenant = \"t\"\n client_id = \"c\"\n}\naccount \"a\" {\n provider = \"p\"\n mailbox = \"a@x.com\"\n}\nuser \"otrs\" {\n password_hash = %q\n account = \"a\"\n}\n", t.TempDir(), h)))
	if err != nil {
		t.Fatal(err)
	}
	a.SetUsers(cfg2)
	if c, _ := bcrypt.Cost(a.dummy); c != bcrypt.MinCost+2 {
		t.Errorf("after reload at cost %d the dummy hash has cost %d: unknown users answer faster than real ones", bcrypt.MinCost+2, c)
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
