package tokens

import (
	"context"
	"time"
)

// tokenStore is where a Manager keeps tokens. Two implementations:
//
//   - *store, the encrypted file state_dir/tokens.enc (store.go): one
//     bridge; `oauthbridge login` in another process may write sign-ins.
//   - *sqlStore (sqlstore.go), a table in a SQL database that several
//     bridges (replicas) share: PostgreSQL today (pgstore.go); the schema
//     and queries are plain SQL so that MySQL 8 / MariaDB 10.6 is a second
//     dialect, not a second design.
//
// Every entry is encrypted with the service key before it leaves the
// process; a database sees only ciphertext.
//
// Entries carry a Version. In a shared store, every write of an entry that
// belongs to the stored sign-in is a compare-and-swap on that version, so
// a replica that refreshed from a stale copy (it stalled past its lease)
// can never overwrite a newer refresh token; a new sign-in replaces the
// entry whatever its version.
type tokenStore interface {
	// load returns every stored entry, keyed by account.
	load() (map[string]*entry, error)
	// update writes changes. An entry whose stored counterpart comes from a
	// newer sign-in is not written; neither is (in a shared store) an entry
	// of the same sign-in whose Version is no longer the stored one. Both
	// come back in newer, holding what is stored, for the caller to adopt.
	// Written entries get their new Version.
	update(changes map[string]*entry) (newer map[string]*entry, err error)
	// poll returns the entries that changed since the last load or poll
	// (another process's sign-in; in a shared store, also another
	// replica's refresh), or nil when none did.
	poll() (map[string]*entry, error)
	// claim takes the refresh lease of account's grant (see lease.go). The
	// file store grants it at once: one process refreshes.
	claim(ctx context.Context, account string) (*lease, error)
	// confirm reports whether l, taken by claim, is still held (the
	// process may have been stopped since).
	confirm(account string, l *lease) bool
	// get reads account's current entry (a nil ent if none).
	get(ctx context.Context, account string) (storeRow, error)
	// shared reports whether several bridges use this store.
	shared() bool
	// leases returns the lease holders seen by the last poll (shared
	// stores; nil otherwise), for Status.
	leases() map[string]LeaseInfo
	// health is nil while the store is reachable.
	health() error
	// fix says what to check when the store cannot be written.
	fix() string
	close() error
}

// LeaseInfo is who holds an account's refresh lease in a shared store.
type LeaseInfo struct {
	Holder string    // the replica (store.replica and a per-process id)
	Until  time.Time // on this replica's clock
}

// The file store.

func (s *store) load() (map[string]*entry, error) {
	accts, _, err := s.read()
	return accts, err
}

// poll reads the file again if its stamp changed since our last read or
// write, i.e. another process wrote it.
func (s *store) poll() (map[string]*entry, error) {
	st := s.stamp()
	s.mu.Lock()
	changed := st != s.last
	s.mu.Unlock()
	if !changed {
		return nil, nil
	}
	disk, stamp, err := s.read()
	if err != nil {
		return nil, err
	}
	s.mu.Lock()
	s.last = stamp
	s.mu.Unlock()
	return disk, nil
}

func (s *store) claim(context.Context, string) (*lease, error) { return &lease{held: true}, nil }
func (s *store) confirm(string, *lease) bool                   { return true }
func (s *store) get(_ context.Context, account string) (storeRow, error) {
	accts, err := s.load()
	if err != nil {
		return storeRow{}, err
	}
	return storeRow{ent: accts[account]}, nil
}
func (s *store) shared() bool                 { return false }
func (s *store) leases() map[string]LeaseInfo { return nil }
func (s *store) health() error                { return nil }
func (s *store) close() error                 { return nil }
func (s *store) fix() string {
	return "check free space and permissions of " + s.dir + "; tokens are kept in memory until then"
}
