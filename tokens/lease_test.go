package tokens

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/oauthbridge/oauthbridge/config"
)

// memStore is an in-memory shared store with the same lease and
// compare-and-swap rules as sqlStore, so that the Manager's decisions
// (wait, adopt, write unsaved tokens first, redeem) are tested without a
// database.
type memStore struct {
	mu      sync.Mutex
	rows    map[string]*memRow
	owner   string
	down    error
	claims  int
	onClaim func() // called (without mu) when a claim is refused
}

type memRow struct {
	version int64
	ent     *entry
	owner   string
}

func newMemStore() *memStore { return &memStore{rows: map[string]*memRow{}, owner: "me"} }

func (s *memStore) row(name string) *memRow {
	r := s.rows[name]
	if r == nil {
		r = &memRow{}
		s.rows[name] = r
	}
	return r
}

// put writes e as another replica would (compare-and-swap on e.Version).
func (s *memStore) put(name string, e entry) {
	s.mu.Lock()
	defer s.mu.Unlock()
	r := s.row(name)
	r.version++
	e.Version = r.version
	r.ent = &e
}

func (s *memStore) load() (map[string]*entry, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := map[string]*entry{}
	for n, r := range s.rows {
		if r.ent != nil {
			cp := *r.ent
			out[n] = &cp
		}
	}
	return out, s.down
}

func (s *memStore) update(changes map[string]*entry) (map[string]*entry, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.down != nil {
		return nil, s.down
	}
	var newer map[string]*entry
	for n, e := range changes {
		r := s.row(n)
		signIn := r.ent == nil || r.ent.LoginID != e.LoginID
		if (signIn && r.ent != nil && r.ent.LoginAt.After(e.LoginAt)) || (!signIn && r.version != e.Version) {
			cp := *r.ent
			newer = addNewer(newer, n, &cp)
			continue
		}
		r.version++
		e.Version = r.version
		cp := *e
		r.ent = &cp
	}
	return newer, nil
}

func (s *memStore) poll() (map[string]*entry, error) { return nil, nil }

func (s *memStore) claim(_ context.Context, name string) (*lease, error) {
	s.mu.Lock()
	s.claims++
	if s.down != nil {
		s.mu.Unlock()
		return nil, fmt.Errorf("%w: claim: connection refused", errStoreDown)
	}
	r := s.row(name)
	if r.owner != "" && r.owner != s.owner {
		holder, cb := r.owner, s.onClaim
		s.mu.Unlock()
		if cb != nil {
			cb()
		}
		return &lease{holder: holder}, nil
	}
	r.owner = s.owner
	row := storeRow{version: r.version}
	if r.ent != nil {
		cp := *r.ent
		row.ent = &cp
	}
	s.mu.Unlock()
	l := &lease{held: true, row: &row}
	l.release = func() {
		s.mu.Lock()
		if r.owner == s.owner {
			r.owner = ""
		}
		s.mu.Unlock()
	}
	return l, nil
}

func (s *memStore) confirm(name string, _ *lease) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.row(name).owner == s.owner
}

func (s *memStore) get(_ context.Context, name string) (storeRow, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	r := s.row(name)
	row := storeRow{version: r.version}
	if r.ent != nil {
		cp := *r.ent
		row.ent = &cp
	}
	return row, s.down
}

func (s *memStore) shared() bool                 { return true }
func (s *memStore) leases() map[string]LeaseInfo { return nil }
func (s *memStore) health() error                { return nil }
func (s *memStore) fix() string                  { return "" }
func (s *memStore) close() error                 { return nil }

// memManager is a Manager with one delegated account "a" on a memStore.
func memManager(t *testing.T) (*Manager, *memStore, *account, *bytes.Buffer) {
	t.Helper()
	src := fmt.Sprintf(`state_dir = %q
provider "p" {
  tenant    = "t"
  client_id = "c"
}
account "a" {
  provider = "p"
  mailbox  = "a@contoso.com"
}
`, filepath.Join(t.TempDir(), "state"))
	cfg, err := config.Parse("t.hcl", []byte(src))
	if err != nil {
		t.Fatal(err)
	}
	var logs bytes.Buffer
	m, err := NewManager(cfg, Options{Logger: slog.New(slog.NewTextHandler(&logs, nil))})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close() })
	ms := newMemStore()
	m.store = ms
	return m, ms, m.account("a"), &logs
}

func signedIn(a *account, rt, at string, issued time.Time) entry {
	return entry{RefreshToken: rt, AccessToken: at, Issued: issued, Expiry: issued.Add(time.Hour), LastRefresh: issued,
		LoginID: "L", LoginAt: issued.Add(-time.Hour), Binding: binding(a.cfg), State: StateOK}
}

func TestHoldGrantRedeemsWhenStoredTokenIsDue(t *testing.T) {
	m, ms, a, _ := memManager(t)
	old := signedIn(a, "rt1", "at1", time.Now().Add(-58*time.Minute))
	ms.put("a", old)
	a.ent = old
	a.ent.Version = 1
	l, _, fresh, err := m.holdGrant(a, Outlook, a.gen)
	if err != nil || fresh || !l.held {
		t.Fatalf("holdGrant() = %+v, fresh %v, %v; want the lease and a redemption", l, fresh, err)
	}
	if ms.rows["a"].owner != "me" {
		t.Fatal("the lease is not held in the store")
	}
	l.end()
	if ms.rows["a"].owner != "" {
		t.Fatal("end() did not release the lease")
	}
}

func TestHoldGrantWaitsForHolderAndAdopts(t *testing.T) {
	m, ms, a, _ := memManager(t)
	old := signedIn(a, "rt1", "at1", time.Now().Add(-58*time.Minute))
	ms.put("a", old)
	a.ent = old
	a.ent.Version = 1
	ms.rows["a"].owner = "other"
	var once sync.Once
	ms.onClaim = func() {
		// The other replica finishes its refresh and releases the lease.
		once.Do(func() {
			ms.put("a", signedIn(a, "rt2", "at2", time.Now()))
			ms.mu.Lock()
			ms.rows["a"].owner = ""
			ms.mu.Unlock()
		})
	}
	gen := a.gen
	_, g, fresh, err := m.holdGrant(a, Outlook, gen)
	if err != nil || !fresh {
		t.Fatalf("holdGrant() = fresh %v, %v; want the other replica's fresh tokens", fresh, err)
	}
	if a.ent.RefreshToken != "rt2" || a.ent.AccessToken != "at2" || a.ent.Version != 2 || g != gen {
		t.Fatalf("account after holdGrant: rt %q at %q v%d gen %d->%d; want rt2/at2 v2, same generation", a.ent.RefreshToken, a.ent.AccessToken, a.ent.Version, gen, g)
	}
}

func TestHoldGrantWritesUnsavedTokensFirst(t *testing.T) {
	m, ms, a, _ := memManager(t)
	stored := signedIn(a, "rt1", "at1", time.Now().Add(-time.Hour))
	ms.put("a", stored)
	// This replica redeemed rt1 -> rt2 but could not store it.
	a.ent = signedIn(a, "rt2", "at2", time.Now())
	a.ent.Version = 1
	a.unsaved = true
	l, _, fresh, err := m.holdGrant(a, Outlook, a.gen)
	if err != nil {
		t.Fatal(err)
	}
	defer l.end()
	if !fresh {
		t.Fatal("holdGrant() would redeem although this replica's unsaved tokens are fresh")
	}
	if r := ms.rows["a"]; r.ent.RefreshToken != "rt2" || r.version != 2 || a.unsaved || a.ent.Version != 2 {
		t.Fatalf("store %q v%d, unsaved %v, account v%d; want rt2 written as v2", r.ent.RefreshToken, r.version, a.unsaved, a.ent.Version)
	}
}

func TestHoldGrantDiscardsUnsavedWhenStoreMovedOn(t *testing.T) {
	m, ms, a, logs := memManager(t)
	ms.put("a", signedIn(a, "rt1", "at1", time.Now().Add(-time.Hour)))
	ms.put("a", signedIn(a, "rt3", "at3", time.Now())) // another replica, after this one's lease ran out
	a.ent = signedIn(a, "rt2", "at2", time.Now())
	a.ent.Version = 1
	a.unsaved = true
	l, _, fresh, err := m.holdGrant(a, Outlook, a.gen)
	if err != nil {
		t.Fatal(err)
	}
	defer l.end()
	if !fresh || a.ent.RefreshToken != "rt3" || a.unsaved || ms.rows["a"].ent.RefreshToken != "rt3" {
		t.Fatalf("fresh %v, account rt %q, unsaved %v, store rt %q; want the stored rt3 adopted and nothing overwritten",
			fresh, a.ent.RefreshToken, a.unsaved, ms.rows["a"].ent.RefreshToken)
	}
	if !strings.Contains(logs.String(), "discarded") {
		t.Fatalf("no warning about the discarded tokens:\n%s", logs)
	}
}

func TestHoldGrantStoreDown(t *testing.T) {
	m, ms, a, _ := memManager(t)
	ms.put("a", signedIn(a, "rt1", "at1", time.Now().Add(-58*time.Minute)))
	ms.down = errors.New("down")
	_, _, _, err := m.holdGrant(a, Outlook, a.gen)
	var te *Error
	if !errors.As(err, &te) || te.Kind != Temporary || !strings.Contains(te.Reason, "not redeemed") {
		t.Fatalf("holdGrant() with the store down = %v; want a temporary error saying nothing is redeemed", err)
	}
}

// A sign-in made through another replica is adopted as a sign-in (new
// generation), not as a refresh.
func TestHoldGrantAdoptsOtherSignIn(t *testing.T) {
	m, ms, a, _ := memManager(t)
	a.ent = signedIn(a, "rt1", "at1", time.Now().Add(-58*time.Minute))
	ms.put("a", a.ent)
	a.ent.Version = 1
	other := signedIn(a, "rtX", "atX", time.Now())
	other.LoginID, other.LoginAt = "L2", time.Now()
	ms.put("a", other)
	gen := a.gen
	l, g, fresh, err := m.holdGrant(a, Outlook, gen)
	if err != nil {
		t.Fatal(err)
	}
	defer l.end()
	if !fresh || g == gen || a.ent.LoginID != "L2" {
		t.Fatalf("fresh %v gen %d->%d login %q; want the new sign-in adopted with a new generation", fresh, gen, g, a.ent.LoginID)
	}
}
