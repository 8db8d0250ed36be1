package localauth

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"golang.org/x/crypto/bcrypt"

	"github.com/oauthbridge/oauthbridge/config"
)

// FuzzCheck feeds arbitrary user names, passwords and remote addresses to
// Check: it never panics, accepts only the configured user with exactly
// its password, answers only ErrInvalid or ErrThrottled otherwise (never ErrInvalid for the right password), and a
// flood of failures cannot make bcrypt run more often than the throttle
// allows.
func FuzzCheck(f *testing.F) {
	const user, pass = "otrs", "s3cret pass"
	h, err := bcrypt.GenerateFromPassword([]byte(pass), bcrypt.MinCost)
	if err != nil {
		f.Fatal(err)
	}
	cfg, err := config.Parse("fuzz.hcl", []byte(fmt.Sprintf(`
state_dir = %q
provider "p" {
  tenant    = "contoso.com"
  client_id = "app"
}
account "a" {
  provider = "p"
  mailbox  = "a@contoso.com"
}
user %q {
  password_hash = %q
  account       = "a"
}
`, f.TempDir(), user, h)))
	if err != nil {
		f.Fatal(err)
	}
	for _, s := range [][3]string{
		{user, pass, "10.0.0.1"},
		{user, "wrong", "10.0.0.1"},
		{"OTRS", pass, "10.0.0.2"},
		{user + "\x00", pass, "::1"},
		{user, pass + "\x00", ""},
		{"", "", "unknown"},
		{user, pass[:len(pass)-1], "10.0.0.1"},
	} {
		f.Add(s[0], s[1], s[2])
	}
	// A fake clock that advances with every attempt, and timers that fire
	// at once (moving the clock), keep the throttle's waits short in real
	// time.
	var mu sync.Mutex
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	clock := func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	advance := func(d time.Duration) time.Time { mu.Lock(); defer mu.Unlock(); now = now.Add(d); return now }
	after := func(d time.Duration) <-chan time.Time {
		ch := make(chan time.Time, 1)
		ch <- advance(d)
		return ch
	}
	a := New(cfg, Options{Now: clock, After: after, MaxConcurrentBcrypt: 1})
	attempts := 0
	f.Fuzz(func(t *testing.T, u, p, remote string) {
		advance(10 * time.Millisecond)
		attempts++
		got, err := a.Check(context.Background(), u, p, remote)
		switch {
		case err == nil:
			if u != user || p != pass || got == nil || got.Name != user {
				t.Fatalf("Check(%q, %q) accepted", u, p)
			}
		case errors.Is(err, ErrInvalid) || errors.Is(err, ErrThrottled):
			if got != nil {
				t.Fatal("a user returned with an error")
			}
			if u == user && p == pass && errors.Is(err, ErrInvalid) {
				t.Fatalf("right password refused: %v", err)
			}
		default:
			t.Fatalf("Check: unexpected error %v", err)
		}
		if n := a.BcryptCount(); n > int64(attempts) {
			t.Fatalf("%d bcrypt runs for %d attempts", n, attempts)
		}
	})
}
