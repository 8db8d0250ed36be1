package tokens

import (
	"context"
	"os"
	"time"

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

// SetStoreWriteErrorForTest makes every store write fail with err (nil: normal).
func (m *Manager) SetStoreWriteErrorForTest(err error) {
	m.store.mu.Lock()
	defer m.store.mu.Unlock()
	if err == nil {
		m.store.writeFile = nil
		return
	}
	m.store.writeFile = func(*os.File, []byte) error { return err }
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
