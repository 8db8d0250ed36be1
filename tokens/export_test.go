package tokens

import (
	"context"
	"log/slog"
	"net/url"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/oauthbridge/oauthbridge/config"
)

// Test hooks for the external tests (package tokens_test), which cannot
// live in package tokens: they import internal/fakems, which imports tokens.

// SetSleepForTest replaces the device-code poll sleeper.
func (m *Manager) SetSleepForTest(f func(ctx context.Context, d time.Duration) error) { m.sleep = f }

// WakeForTest wakes the background loop (after a fake clock moved).
func (m *Manager) WakeForTest() { m.signal() }

// TamperVerifierForTest changes the PKCE verifier of a pending browser login.
func (m *Manager) TamperVerifierForTest(state string) {
	m.pendMu.Lock()
	defer m.pendMu.Unlock()
	if pl := m.pending[state]; pl != nil {
		pl.verifier += "x"
	}
}

// SetLoginStoredHookForTest calls f in a sign-in between its store write
// and installing its tokens.
func (m *Manager) SetLoginStoredHookForTest(f func(account string)) { m.loginStoredHook = f }

// SetStoreWriteErrorForTest makes every store write fail with err (nil: normal).
func (m *Manager) SetStoreWriteErrorForTest(err error) {
	st := m.store.(*store)
	st.mu.Lock()
	defer st.mu.Unlock()
	if err == nil {
		st.writeFile = nil
		return
	}
	st.writeFile = func(*os.File, []byte) error { return err }
}

// StoredForTest is the part of a store entry the tests look at.
type StoredForTest struct {
	RefreshToken, AccessToken, SignedInAs string
	State                                 State
}

// StoredEntryForTest reads account's entry from the store in dir (nil if none).
func StoredEntryForTest(dir, account string) (*StoredForTest, error) {
	_, accts, err := openStore(dir, "")
	if err != nil {
		return nil, err
	}
	e := accts[account]
	if e == nil {
		return nil, nil
	}
	return &StoredForTest{RefreshToken: e.RefreshToken, AccessToken: e.AccessToken, SignedInAs: e.SignedInAs, State: e.State}, nil
}

// SleepCtx is sleepCtx.
var SleepCtx = sleepCtx

// SeedStoreForTest writes a signed-in entry for account (refresh token rt,
// signed in as who) into cfg's store, as a sign-in would.
func SeedStoreForTest(cfg *config.Config, account, rt, who string) error {
	ac := cfg.AccountByName[account]
	st, _, err := openStore(cfg.StateDir, "")
	if err != nil {
		return err
	}
	now := time.Now()
	_, err = st.update(map[string]*entry{account: {RefreshToken: rt, SignedInAs: who, State: StateOK,
		LoginID: randomID(12), LoginAt: now, LastRefresh: now, Binding: binding(ac)}})
	return err
}

// StoredRefreshTokenForTest is the refresh token in the store of dir.
func StoredRefreshTokenForTest(dir, account string) string {
	e, err := StoredEntryForTest(dir, account)
	if err != nil || e == nil {
		return ""
	}
	return e.RefreshToken
}

// SetLeaseHookForTest calls f at the steps of a shared store's refresh
// lease: "claimed" (before the redemption), "redeemed" (after it, before
// the write) and "waiting" (another replica holds it). freeze stops the
// lease's heartbeat and its release until f returns, as if the process
// had been stopped (SIGSTOP) for that long; a killed process is one
// stopped until CancelForTest.
func (m *Manager) SetLeaseHookForTest(f func(step, account string, freeze func())) {
	m.leaseHook = func(step, account string, l *lease) {
		f(step, account, func() { l.frozen.Store(true) })
		l.frozen.Store(false)
	}
}

// CancelForTest cancels everything the manager does, like a killed
// process: nothing more reaches the token endpoint or the store.
func (m *Manager) CancelForTest() { m.cancel() }

// LeaseOwnerForTest is the lease owner name of a manager on a shared store.
func (m *Manager) LeaseOwnerForTest() string {
	if s, ok := m.store.(*sqlStore); ok {
		return s.owner
	}
	return ""
}

// SharedForTest reads a shared store's rows as a replica would.
type SharedForTest struct{ s *sqlStore }

// SharedRowForTest is one decrypted row.
type SharedRowForTest struct {
	RefreshToken, AccessToken, SignedInAs string
	Version                               int64
}

// OpenSharedForTest opens cfg's shared store with keyFile.
func OpenSharedForTest(cfg *config.Config, keyFile string) (*SharedForTest, error) {
	s, _, err := openPostgres(cfg.Store, keyFile, slog.New(slog.DiscardHandler), nil)
	if err != nil {
		return nil, err
	}
	return &SharedForTest{s}, nil
}

// Row returns account's row (nil without tokens).
func (t *SharedForTest) Row(account string) (*SharedRowForTest, error) {
	r, err := t.s.get(context.Background(), account)
	if err != nil || r.ent == nil {
		return nil, err
	}
	return &SharedRowForTest{RefreshToken: r.ent.RefreshToken, AccessToken: r.ent.AccessToken, SignedInAs: r.ent.SignedInAs, Version: r.version}, nil
}

// Close closes the store.
func (t *SharedForTest) Close() { t.s.close() }

// PGTestDSN returns the DSN of a new, empty database on the test
// PostgreSQL named by OAUTHBRIDGE_TEST_PG_DSN (test/pg/run.sh starts one),
// dropped when t ends. Without that variable the test is skipped, unless
// CI is set: then it fails, so that CI never passes without running it.
func PGTestDSN(t testing.TB) string {
	t.Helper()
	dsn := os.Getenv("OAUTHBRIDGE_TEST_PG_DSN")
	if dsn == "" {
		if os.Getenv("CI") != "" {
			t.Fatal("OAUTHBRIDGE_TEST_PG_DSN is not set, but CI is: run the tests through test/pg/run.sh ('make pgtest' or 'make test'), which starts a PostgreSQL for them")
		}
		t.Skip("PostgreSQL integration test skipped: OAUTHBRIDGE_TEST_PG_DSN is not set; run 'make pgtest' (test/pg/run.sh starts a throwaway PostgreSQL from Debian's packages)")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatalf("connect to the test PostgreSQL: %v", err)
	}
	defer conn.Close(ctx)
	name := "obt_" + strings.ToLower(strings.NewReplacer("-", "", "_", "").Replace(randomID(9)))
	if _, err := conn.Exec(ctx, "CREATE DATABASE "+name); err != nil {
		t.Fatalf("create test database: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if c, err := pgx.Connect(ctx, dsn); err == nil {
			c.Exec(ctx, "DROP DATABASE IF EXISTS "+name+" WITH (FORCE)")
			c.Close(ctx)
		}
	})
	u, err := url.Parse(dsn)
	if err != nil {
		t.Fatalf("OAUTHBRIDGE_TEST_PG_DSN must be a URL: %v", err)
	}
	u.Path = "/" + name
	return u.String()
}
