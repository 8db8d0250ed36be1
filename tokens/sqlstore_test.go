package tokens

import (
	"context"
	"crypto/rand"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/crypto/chacha20poly1305"

	"github.com/oauthbridge/oauthbridge/config"
)

func writeTestKey(t *testing.T) string {
	t.Helper()
	k := make([]byte, KeySize)
	rand.Read(k)
	p := filepath.Join(t.TempDir(), "key")
	if err := os.WriteFile(p, k, 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func testStoreBlock(dsn, replica string, lease time.Duration) *config.StoreBlock {
	return &config.StoreBlock{Type: config.StorePostgres, DSN: config.Secret(dsn), Replica: replica,
		Lease: lease, Heartbeat: lease / 4, Poll: 50 * time.Millisecond}
}

func openTestPG(t *testing.T, sc *config.StoreBlock, keyFile string) *sqlStore {
	t.Helper()
	s, _, err := openPostgres(sc, keyFile, slog.New(slog.DiscardHandler), nil)
	if err != nil {
		t.Fatalf("openPostgres(, nil) = %v", err)
	}
	t.Cleanup(func() { s.close() })
	return s
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// The lease and compare-and-swap protocol against a real PostgreSQL: one
// holder at a time, renewal by heartbeat, take-over after the holder
// stops renewing, the old holder notices, and its stale write is refused.
func TestPGLeaseAndCompareAndSwap(t *testing.T) {
	dsn := PGTestDSN(t)
	key := writeTestKey(t)
	leaseD := 400 * time.Millisecond
	s1 := openTestPG(t, testStoreBlock(dsn, "r1", leaseD), key)
	s2 := openTestPG(t, testStoreBlock(dsn, "r2", leaseD), key)
	if s1.owner == s2.owner || !strings.HasPrefix(s1.owner, "r1/") {
		t.Fatalf("owners %q and %q: want distinct, named after the replica", s1.owner, s2.owner)
	}
	var frozen sync.Map // account -> true: s1 stops renewing
	s1.beatHook = func(a string) bool { _, f := frozen.Load(a); return !f }
	ctx := context.Background()

	// A sign-in through s1.
	now := time.Now()
	e := &entry{RefreshToken: "rt0", AccessToken: "at0", LoginID: "L1", LoginAt: now, Binding: "b"}
	if newer, err := s1.update(map[string]*entry{"a": e}); err != nil || newer != nil {
		t.Fatalf("update(sign-in) = %v, %v", newer, err)
	}
	if e.Version != 1 {
		t.Fatalf("version after the first write = %d, want 1", e.Version)
	}

	l1, err := s1.claim(ctx, "a")
	if err != nil || !l1.held || l1.row == nil || l1.row.ent.RefreshToken != "rt0" || l1.row.version != 1 {
		t.Fatalf("s1.claim() = %+v, %v; want held with the row", l1, err)
	}
	l2, err := s2.claim(ctx, "a")
	if err != nil || l2.held || l2.holder != s1.owner || !l2.until.After(time.Now()) {
		t.Fatalf("s2.claim() while s1 holds it = %+v, %v; want refused naming %s", l2, err, s1.owner)
	}

	// The heartbeat renews: lease_until moves on, and s2 is still refused
	// after more than a lease duration.
	until := func() time.Time {
		var u time.Time
		if err := s1.db.QueryRow(`SELECT lease_until FROM oauthbridge_tokens WHERE id = 'a'`).Scan(&u); err != nil {
			t.Fatal(err)
		}
		return u
	}
	first := until()
	waitFor(t, "a renewal", func() bool { return until().After(first.Add(leaseD)) })
	if l2, _ := s2.claim(ctx, "a"); l2.held {
		t.Fatal("s2 took a lease that s1 kept renewing")
	}

	// s1 stalls: no more renewals. s2 takes over once the lease ran out
	// on the database's clock.
	frozen.Store("a", true)
	var l2b *lease
	waitFor(t, "s2 to take the expired lease", func() bool {
		l, err := s2.claim(ctx, "a")
		if err != nil {
			t.Fatal(err)
		}
		l2b = l
		return l.held
	})
	defer l2b.end()
	frozen.Delete("a")
	waitFor(t, "s1's heartbeat to notice the lost lease", l1.lost.Load)

	// s2 refreshes and writes over version 1.
	e2 := *l2b.row.ent
	e2.RefreshToken, e2.AccessToken = "rt2", "at2"
	if newer, err := s2.update(map[string]*entry{"a": &e2}); err != nil || newer != nil || e2.Version != 2 {
		t.Fatalf("s2.update() = %v, %v, version %d; want written as version 2", newer, err, e2.Version)
	}
	// s1, resumed, writes its own refresh of version 1: refused, and the
	// newer row comes back.
	e1 := *l1.row.ent
	e1.RefreshToken, e1.AccessToken = "rt1", "at1"
	newer, err := s1.update(map[string]*entry{"a": &e1})
	if err != nil || newer["a"] == nil || newer["a"].RefreshToken != "rt2" || newer["a"].Version != 2 {
		t.Fatalf("stale s1.update() = %v, %v; want refused with the version-2 row", newer, err)
	}
	if r, _ := s2.get(ctx, "a"); r.version != 2 || r.ent.RefreshToken != "rt2" {
		t.Fatalf("row after the stale write = v%d %q, want v2 rt2", r.version, r.ent.RefreshToken)
	}
	l1.end() // releasing a lost lease must not clear s2's
	if l, _ := s1.claim(ctx, "a"); l.held {
		t.Fatal("s1 took the lease s2 holds after releasing its lost one")
	}

	// A new sign-in replaces the row whatever its version; an older one
	// does not.
	si := &entry{RefreshToken: "rt-new", LoginID: "L2", LoginAt: now.Add(time.Minute), Binding: "b"}
	if newer, err := s1.update(map[string]*entry{"a": si}); err != nil || newer != nil || si.Version != 3 {
		t.Fatalf("sign-in update = %v, %v, v%d; want written as version 3", newer, err, si.Version)
	}
	old := &entry{RefreshToken: "rt-old", LoginID: "L0", LoginAt: now.Add(-time.Minute), Binding: "b"}
	if newer, err := s2.update(map[string]*entry{"a": old}); err != nil || newer["a"] == nil || newer["a"].LoginID != "L2" {
		t.Fatalf("older sign-in update = %v, %v; want refused with L2", newer, err)
	}

	// Release hands the lease over at once.
	l2b.end()
	if l, err := s1.claim(ctx, "a"); err != nil || !l.held {
		t.Fatalf("claim after release = %+v, %v", l, err)
	} else {
		l.end()
	}

	// The poll reports other writers' changes and who holds leases.
	s2.poll()
	if _, err := s1.update(map[string]*entry{"a": {RefreshToken: "rt4", LoginID: "L2", LoginAt: si.LoginAt, Binding: "b", Version: 3}}); err != nil {
		t.Fatal(err)
	}
	hold, _ := s1.claim(ctx, "a")
	defer hold.end()
	got, err := s2.poll()
	if err != nil || got["a"] == nil || got["a"].RefreshToken != "rt4" || got["a"].Version != 4 {
		t.Fatalf("poll() = %v, %v; want a at version 4", got, err)
	}
	if li := s2.leases()["a"]; li.Holder != s1.owner {
		t.Fatalf("leases() = %v, want a held by %s", s2.leases(), s1.owner)
	}
	if got, err := s2.poll(); err != nil || got != nil {
		t.Fatalf("poll() without changes = %v, %v; want nothing", got, err)
	}
}

// Several replicas starting at once on an empty database all migrate it
// without error; the schema is recorded once; a replica with another key
// is refused with a message that names the fix.
func TestPGMigrationsConcurrentAndKeyCheck(t *testing.T) {
	dsn := PGTestDSN(t)
	key := writeTestKey(t)
	var wg sync.WaitGroup
	errs := make(chan error, 4)
	for i := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			s, _, err := openPostgres(testStoreBlock(dsn, "r", time.Second), key, slog.New(slog.DiscardHandler), nil)
			if err == nil {
				s.close()
			}
			if err != nil {
				errs <- err
			}
			_ = i
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Errorf("concurrent start: %v", err)
	}
	s := openTestPG(t, testStoreBlock(dsn, "r", time.Second), key)
	var n, v int
	if err := s.db.QueryRow(`SELECT count(*), max(version) FROM oauthbridge_schema`).Scan(&n, &v); err != nil || n != 1 || v != 1 {
		t.Fatalf("oauthbridge_schema: %d rows, max %d, %v; want one row, version 1", n, v, err)
	}

	_, _, err := openPostgres(testStoreBlock(dsn, "r", time.Second), writeTestKey(t), slog.New(slog.DiscardHandler), nil)
	if err == nil || !strings.Contains(err.Error(), "not the key the shared token store was created with") || !strings.Contains(err.Error(), "copy the key file") {
		t.Fatalf("open with another key = %v", err)
	}
	_, _, err = openPostgres(testStoreBlock(dsn, "r", time.Second), filepath.Join(t.TempDir(), "nokey"), slog.New(slog.DiscardHandler), nil)
	if err == nil || !strings.Contains(err.Error(), "is missing") || !strings.Contains(err.Error(), "same key on every replica") {
		t.Fatalf("open without a key = %v", err)
	}

	// A schema newer than this release is refused.
	if _, err := s.db.Exec(`INSERT INTO oauthbridge_schema (version) VALUES (99)`); err != nil {
		t.Fatal(err)
	}
	_, _, err = openPostgres(testStoreBlock(dsn, "r", time.Second), key, slog.New(slog.DiscardHandler), nil)
	if err == nil || !strings.Contains(err.Error(), "upgrade this replica") {
		t.Fatalf("open of a newer schema = %v", err)
	}
}

// A wrong password in the DSN fails with an error that does not show it.
func TestPGDSNSecretNotInErrors(t *testing.T) {
	dsn := PGTestDSN(t)
	bad := strings.Replace(dsn, "://oauthbridge:", "://oauthbridge:wrong-Secret-123", 1)
	if bad == dsn {
		t.Skip("the test DSN has no password")
	}
	_, _, err := openPostgres(testStoreBlock(bad, "r", time.Second), writeTestKey(t), slog.New(slog.DiscardHandler), nil)
	if err == nil {
		t.Fatal("open with a wrong password succeeded")
	}
	if strings.Contains(err.Error(), "wrong-Secret-123") {
		t.Fatalf("error shows the password: %v", err)
	}
}

// Rows are sealed to their account and the key; no database needed.
func TestRowSealing(t *testing.T) {
	k := make([]byte, KeySize)
	rand.Read(k)
	aead, _ := chacha20poly1305.NewX(k)
	s := &sqlStore{aead: aead, keyID: keyID(k)}
	data, err := s.seal("a", &entry{RefreshToken: "secret-rt", Binding: "b"})
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(data), "secret-rt") {
		t.Fatal("the sealed row holds the refresh token in clear")
	}
	if e, err := s.open("a", data); err != nil || e.RefreshToken != "secret-rt" {
		t.Fatalf("open() = %v, %v", e, err)
	}
	if _, err := s.open("b", data); err == nil || !strings.Contains(err.Error(), "copied from another account") {
		t.Fatalf("open() of a row copied to another account = %v", err)
	}
	k2 := make([]byte, KeySize)
	rand.Read(k2)
	aead2, _ := chacha20poly1305.NewX(k2)
	s2 := &sqlStore{aead: aead2, keyID: keyID(k2)}
	if _, err := s2.open("a", data); err == nil || !strings.Contains(err.Error(), "different key") {
		t.Fatalf("open() with another key = %v", err)
	}
	if got := redactor("postgres://u:pw@h/db", "pw")("cannot parse postgres://u:pw@h/db: pw"); strings.Contains(got, "pw") {
		t.Fatalf("redactor left the password: %q", got)
	}
}
