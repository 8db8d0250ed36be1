package tokens

import (
	"bytes"
	"context"
	"crypto/cipher"
	"crypto/rand"
	"database/sql"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/oauthbridge/oauthbridge/internal/metrics"
)

// The shared token store: one row per account in a SQL table, used by
// several bridges (replicas) at once.
//
// Schema (migrations in dialect.migrations, version recorded in
// oauthbridge_schema):
//
//	oauthbridge_tokens(id PK, version BIGINT, data BLOB, lease_owner, lease_until, updated_at)
//	oauthbridge_meta(name PK, value)   -- key_id: fingerprint of the service key
//
// data is the entry as JSON, sealed with XChaCha20-Poly1305 under the
// service key; the additional data binds it to the row's id, so a row
// copied onto another account does not open.
//
// The protocol is plain SQL: every statement is a single-row INSERT,
// UPDATE or SELECT whose only database-specific parts are placeholders,
// "now() + n milliseconds" and "insert unless present"; they live in a
// dialect. The database's clock (now()) is the only clock leases use.
//
//   - claim: ensure the row exists, then
//     UPDATE ... SET lease_owner = me, lease_until = now() + lease
//     WHERE id = ? AND (lease_until < now() OR lease_owner = me);
//     one row affected = this replica holds the lease and alone redeems
//     the grant's refresh token. It then reads the row (version, data).
//   - heartbeat: UPDATE ... SET lease_until = now() + lease WHERE id = ?
//     AND lease_owner = me, every lease_heartbeat while the redemption
//     runs; zero rows = the lease was lost (this replica stalled).
//   - write: UPDATE ... SET data = ?, version = version + 1 WHERE id = ?
//     AND version = ?; zero rows = another replica wrote first, and the
//     newer row is adopted (fencing: a stalled former holder never
//     overwrites a newer refresh token).
//   - release: UPDATE ... SET lease_owner = ”, lease_until = epoch
//     WHERE id = ? AND lease_owner = me.
//
// No advisory locks and no session state: every statement stands alone,
// so a transaction-pooling PgBouncer in front of the database is fine.
type sqlStore struct {
	met     *metrics.Metrics
	db      *sql.DB
	d       *dialect
	aead    cipher.AEAD
	keyID   [8]byte
	owner   string // lease owner: replica name + "/" + a per-process id
	lease   time.Duration
	beat    time.Duration
	timeout time.Duration // one statement
	log     *slog.Logger
	redact  func(string) string // removes the DSN's password from error text

	mu      sync.Mutex
	known   map[string]bool  // rows known to exist
	seen    map[string]int64 // version of each row after our last read or write
	holders map[string]LeaseInfo
	healthy error

	// hooks for tests
	beatHook func(account string) bool // false: skip this renewal (a frozen process)
}

// Named defaults of the shared store.
const (
	// DefaultStoreStatementTimeout bounds one statement to the database.
	DefaultStoreStatementTimeout = 10 * time.Second
	// maxLeaseWait: while another replica holds a grant's lease, this one
	// looks for its result at least this often.
	maxLeaseWait = 500 * time.Millisecond
	// maxSignInRetries bounds the retries of a sign-in's write that raced
	// another write of the same row.
	maxSignInRetries = 5
)

const (
	rowFormat = 1
	rowAD     = "oauthbridge token row\x00"
)

// errStoreDown marks errors of an unreachable shared store.
var errStoreDown = errors.New("the shared token store is unreachable")

// dialect holds what differs between SQL databases.
type dialect struct {
	name       string
	migrations []string // one entry per schema version; ";\n"-separated statements
	isDup      func(error) bool
	// Statements; placeholders numbered in order of the arguments below.
	ensure   string // (id, epoch)                  insert the row unless present
	claim    string // (id, owner, lease_ms, owner) conditional lease UPDATE
	renew    string // (id, owner, lease_ms)
	release  string // (id, owner, epoch)
	get      string // (id) -> version, data
	holder   string // (id) -> lease_owner, lease_until, now
	write    string // (data, id, version)           compare-and-swap
	poll     string // () -> id, version, lease_owner, lease_until, now
	loadAll  string // () -> id, version, data
	metaPut  string // (name, value)                 insert unless present
	metaGet  string // (name) -> value
	schemaV  string // () -> max version
	schemaIn string // (version)                     insert the version row
	schemaT  string // create the version table if missing
}

var epoch = time.Unix(0, 0).UTC()

// storeRow is one decrypted row.
type storeRow struct {
	version int64
	ent     *entry // nil: no tokens yet
}

func (s *sqlStore) ctx(parent context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(parent, s.timeout)
}

// fail records a failed statement: the store is down until one succeeds.
func (s *sqlStore) fail(op string, err error) error {
	err = fmt.Errorf("%w: %s: %s", errStoreDown, op, s.redact(err.Error()))
	s.mu.Lock()
	was := s.healthy
	s.healthy = err
	s.mu.Unlock()
	s.met.TokenStoreUp.Set(0)
	if was == nil {
		s.log.Error("tokens: the shared token store is unreachable; cached access tokens keep serving, no refresh token is redeemed until it is back", "error", err)
	}
	return err
}

func (s *sqlStore) ok() {
	s.mu.Lock()
	was := s.healthy
	s.healthy = nil
	s.mu.Unlock()
	s.met.TokenStoreUp.Set(1)
	if was != nil {
		s.log.Info("tokens: the shared token store answers again")
	}
}

func (s *sqlStore) health() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.healthy
}

func (s *sqlStore) exec(ctx context.Context, op, q string, args ...any) (int64, error) {
	c, cancel := s.ctx(ctx)
	defer cancel()
	s.met.TokenStoreQueries.WithLabelValues(op).Inc()
	res, err := s.db.ExecContext(c, q, args...)
	if err != nil {
		return 0, s.fail(op, err)
	}
	n, err := res.RowsAffected()
	if err != nil {
		return 0, s.fail(op, err)
	}
	s.ok()
	return n, nil
}

// migrate brings the schema to the newest version. Each version is applied
// in a transaction that first inserts its row into oauthbridge_schema: a
// replica starting at the same moment blocks on that row until the first
// commits, then sees a duplicate and skips the version. The statements
// themselves are idempotent (IF NOT EXISTS), for databases whose DDL is not
// transactional.
func (s *sqlStore) migrate(ctx context.Context) error {
	s.met.TokenStoreQueries.WithLabelValues("migrate").Inc()
	var err error
	for try := 0; try < 5; try++ {
		// Two replicas' CREATE TABLE IF NOT EXISTS at the same moment: one
		// of them can fail on PostgreSQL's catalog ("type ... already
		// exists"); the retry then sees the table.
		if _, err = s.db.ExecContext(ctx, s.d.schemaT); err == nil {
			break
		}
		if sleepCtx(ctx, time.Duration(try+1)*50*time.Millisecond) != nil {
			break
		}
	}
	if err != nil {
		return fmt.Errorf("tokens: create the schema version table: %s", s.redact(err.Error()))
	}
	var have sql.NullInt64
	if err := s.db.QueryRowContext(ctx, s.d.schemaV).Scan(&have); err != nil {
		return fmt.Errorf("tokens: read the schema version: %s", s.redact(err.Error()))
	}
	if int(have.Int64) > len(s.d.migrations) {
		return fmt.Errorf("tokens: the token store's schema is version %d, but this oauthbridge knows versions up to %d: a newer oauthbridge migrated it; upgrade this replica to the same release as the others", have.Int64, len(s.d.migrations))
	}
	for v := int(have.Int64) + 1; v <= len(s.d.migrations); v++ {
		if err := s.migrateOne(ctx, v); err != nil {
			return fmt.Errorf("tokens: migrate the token store to schema version %d: %s", v, s.redact(err.Error()))
		}
	}
	return nil
}

func (s *sqlStore) migrateOne(ctx context.Context, v int) error {
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	defer tx.Rollback()
	if _, err := tx.ExecContext(ctx, s.d.schemaIn, v); err != nil {
		if s.d.isDup(err) {
			return nil // another replica applied it
		}
		return err
	}
	for _, stmt := range strings.Split(s.d.migrations[v-1], ";\n") {
		if strings.TrimSpace(stmt) == "" {
			continue
		}
		if _, err := tx.ExecContext(ctx, stmt); err != nil {
			return err
		}
	}
	if err := tx.Commit(); err != nil {
		if s.d.isDup(err) {
			return nil
		}
		return err
	}
	s.log.Info("tokens: token store schema migrated", "version", v)
	return nil
}

// checkKey records the service key's fingerprint in the database on first
// use and refuses a replica whose key differs: its rows would not open,
// and its writes would be unreadable by every other replica.
func (s *sqlStore) checkKey(ctx context.Context, keyFile string) error {
	id := hex.EncodeToString(s.keyID[:])
	if _, err := s.db.ExecContext(ctx, s.d.metaPut, "key_id", id); err != nil {
		return fmt.Errorf("tokens: token store: %s", s.redact(err.Error()))
	}
	var have string
	if err := s.db.QueryRowContext(ctx, s.d.metaGet, "key_id").Scan(&have); err != nil {
		return fmt.Errorf("tokens: token store: %s", s.redact(err.Error()))
	}
	if have != id {
		return fmt.Errorf("tokens: the key file %s is not the key the shared token store was created with (fingerprint %s, the store's is %s): every replica needs the same key; copy the key file from a replica that works", keyFile, id, have)
	}
	return nil
}

func (s *sqlStore) seal(account string, e *entry) ([]byte, error) {
	plain, err := json.Marshal(e)
	if err != nil {
		return nil, fmt.Errorf("tokens: encode token row: %w", err)
	}
	defer clear(plain)
	out := make([]byte, 0, 1+8+s.aead.NonceSize()+len(plain)+s.aead.Overhead())
	out = append(out, rowFormat)
	out = append(out, s.keyID[:]...)
	nonce := make([]byte, s.aead.NonceSize())
	if _, err := rand.Read(nonce); err != nil {
		return nil, fmt.Errorf("tokens: nonce: %w", err)
	}
	out = append(out, nonce...)
	return s.aead.Seal(out, nonce, plain, s.ad(account, out[:9])), nil
}

func (s *sqlStore) ad(account string, hdr []byte) []byte {
	return append(append([]byte(rowAD+account+"\x00"), hdr...), 0)
}

func (s *sqlStore) open(account string, data []byte) (*entry, error) {
	ns := s.aead.NonceSize()
	if len(data) < 9+ns+s.aead.Overhead() || data[0] != rowFormat {
		return nil, fmt.Errorf("tokens: the shared token store's row for account %q is damaged or from another oauthbridge release: sign the account in again ('oauthbridge login %s')", account, account)
	}
	if !bytes.Equal(data[1:9], s.keyID[:]) {
		return nil, fmt.Errorf("tokens: the shared token store's row for account %q was encrypted with a different key: every replica needs the same key file", account)
	}
	plain, err := s.aead.Open(nil, data[9:9+ns], data[9+ns:], s.ad(account, data[:9]))
	if err != nil {
		return nil, fmt.Errorf("tokens: the shared token store's row for account %q does not decrypt (damaged, or copied from another account): sign the account in again ('oauthbridge login %s')", account, account)
	}
	defer clear(plain)
	var e entry
	if err := json.Unmarshal(plain, &e); err != nil {
		return nil, fmt.Errorf("tokens: the shared token store's row for account %q has bad contents: sign the account in again", account)
	}
	return &e, nil
}

func (s *sqlStore) ensure(ctx context.Context, account string) error {
	s.mu.Lock()
	k := s.known[account]
	s.mu.Unlock()
	if k {
		return nil
	}
	if _, err := s.exec(ctx, "write", s.d.ensure, account, epoch); err != nil {
		return err
	}
	s.mu.Lock()
	s.known[account] = true
	s.mu.Unlock()
	return nil
}

// get reads one row; a row without tokens yields a nil entry.
func (s *sqlStore) get(ctx context.Context, account string) (storeRow, error) {
	c, cancel := s.ctx(ctx)
	defer cancel()
	s.met.TokenStoreQueries.WithLabelValues("get").Inc()
	var r storeRow
	var data []byte
	err := s.db.QueryRowContext(c, s.d.get, account).Scan(&r.version, &data)
	if errors.Is(err, sql.ErrNoRows) {
		s.ok()
		return r, nil
	}
	if err != nil {
		return r, s.fail("get", err)
	}
	s.ok()
	if len(data) > 0 {
		e, err := s.open(account, data)
		if err != nil {
			return r, err
		}
		e.Version = r.version
		r.ent = e
	}
	s.mu.Lock()
	s.known[account] = true
	s.mu.Unlock()
	return r, nil
}

func (s *sqlStore) load() (map[string]*entry, error) {
	c, cancel := s.ctx(context.Background())
	defer cancel()
	s.met.TokenStoreQueries.WithLabelValues("load").Inc()
	rows, err := s.db.QueryContext(c, s.d.loadAll)
	if err != nil {
		return nil, s.fail("load", err)
	}
	defer rows.Close()
	out := map[string]*entry{}
	seen := map[string]int64{}
	var bad error
	for rows.Next() {
		var id string
		var v int64
		var data []byte
		if err := rows.Scan(&id, &v, &data); err != nil {
			return nil, s.fail("load", err)
		}
		seen[id] = v
		if len(data) == 0 {
			continue
		}
		e, err := s.open(id, data)
		if err != nil {
			bad = err
			continue
		}
		e.Version = v
		out[id] = e
	}
	if err := rows.Err(); err != nil {
		return nil, s.fail("load", err)
	}
	s.ok()
	if bad != nil && len(out) == 0 {
		return nil, bad // a wrong key opens nothing: say so at start
	}
	if bad != nil {
		s.log.Error("tokens: a row of the shared token store cannot be read; its account needs a new sign-in", "error", bad)
	}
	s.mu.Lock()
	for id, v := range seen {
		s.known[id] = true
		s.seen[id] = v
	}
	s.mu.Unlock()
	return out, nil
}

// poll reads every row's version and lease holder (no token data), then
// the data of the rows whose version changed.
func (s *sqlStore) poll() (map[string]*entry, error) {
	c, cancel := s.ctx(context.Background())
	defer cancel()
	s.met.TokenStoreQueries.WithLabelValues("poll").Inc()
	rows, err := s.db.QueryContext(c, s.d.poll)
	if err != nil {
		return nil, s.fail("poll", err)
	}
	defer rows.Close()
	local := time.Now()
	holders := map[string]LeaseInfo{}
	var changed []string
	s.mu.Lock()
	for rows.Next() {
		var id, owner string
		var v int64
		var until, now time.Time
		if err := rows.Scan(&id, &v, &owner, &until, &now); err != nil {
			s.mu.Unlock()
			return nil, s.fail("poll", err)
		}
		s.known[id] = true
		if owner != "" && until.After(now) {
			holders[id] = LeaseInfo{Holder: owner, Until: local.Add(until.Sub(now))}
		}
		if old, ok := s.seen[id]; !ok || old != v {
			changed = append(changed, id)
		}
	}
	s.holders = holders
	s.mu.Unlock()
	if err := rows.Err(); err != nil {
		return nil, s.fail("poll", err)
	}
	s.ok()
	var out map[string]*entry
	for _, id := range changed {
		r, err := s.get(context.Background(), id)
		if err != nil {
			if errors.Is(err, errStoreDown) {
				return out, err
			}
			s.log.Warn("tokens: cannot read a changed row of the shared token store", "account", id, "error", err)
			continue
		}
		s.mu.Lock()
		s.seen[id] = r.version
		s.mu.Unlock()
		if r.ent != nil {
			if out == nil {
				out = map[string]*entry{}
			}
			out[id] = r.ent
		}
	}
	return out, nil
}

func (s *sqlStore) leases() map[string]LeaseInfo {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.holders
}

// write stores e if the row's version is still base; ok=false when
// another write came first.
func (s *sqlStore) write(account string, e *entry, base int64) (bool, error) {
	data, err := s.seal(account, e)
	if err != nil {
		return false, err
	}
	n, err := s.exec(context.Background(), "write", s.d.write, data, account, base)
	if err != nil {
		return false, err
	}
	if n != 1 {
		return false, nil
	}
	e.Version = base + 1
	s.mu.Lock()
	s.seen[account] = e.Version
	s.mu.Unlock()
	return true, nil
}

// update implements tokenStore. A new sign-in replaces the row (unless the
// stored one is from a newer sign-in); anything else is written only over
// the version it was read at.
func (s *sqlStore) update(changes map[string]*entry) (newer map[string]*entry, err error) {
	for name, e := range changes {
		if err := s.ensure(context.Background(), name); err != nil {
			return newer, err
		}
		for try := 0; ; try++ {
			cur, err := s.get(context.Background(), name)
			if err != nil {
				return newer, err
			}
			d := cur.ent
			if d != nil && d.LoginID != e.LoginID && d.LoginAt.After(e.LoginAt) {
				newer = addNewer(newer, name, d)
				break
			}
			signIn := d == nil || d.LoginID != e.LoginID
			base := e.Version
			if signIn {
				base = cur.version
			}
			ok, err := s.write(name, e, base)
			if err != nil {
				return newer, err
			}
			if ok {
				break
			}
			if signIn && try < maxSignInRetries {
				continue // raced another write: read again
			}
			s.met.TokenStoreConflicts.Inc()
			cur, err = s.get(context.Background(), name)
			if err != nil {
				return newer, err
			}
			if cur.ent != nil {
				if cur.ent.RefreshToken != e.RefreshToken {
					s.log.Warn("tokens: another replica stored newer tokens while this one refreshed (its lease had run out); this replica's refresh result is discarded and the stored tokens are used",
						"account", name, "stored_version", cur.version, "our_base_version", base)
				}
				newer = addNewer(newer, name, cur.ent)
			}
			break
		}
	}
	return newer, nil
}

func addNewer(m map[string]*entry, name string, e *entry) map[string]*entry {
	if m == nil {
		m = map[string]*entry{}
	}
	m[name] = e
	return m
}

// claim implements tokenStore.
func (s *sqlStore) claim(ctx context.Context, account string) (*lease, error) {
	if err := s.ensure(ctx, account); err != nil {
		s.met.TokenLeaseClaims.WithLabelValues("error").Inc()
		return nil, err
	}
	n, err := s.exec(ctx, "claim", s.d.claim, account, s.owner, s.lease.Milliseconds(), s.owner)
	if err != nil {
		s.met.TokenLeaseClaims.WithLabelValues("error").Inc()
		return nil, err
	}
	if n != 1 {
		s.met.TokenLeaseClaims.WithLabelValues("held").Inc()
		l := &lease{}
		c, cancel := s.ctx(ctx)
		defer cancel()
		s.met.TokenStoreQueries.WithLabelValues("get").Inc()
		var until, now time.Time
		if err := s.db.QueryRowContext(c, s.d.holder, account).Scan(&l.holder, &until, &now); err == nil {
			l.until = time.Now().Add(until.Sub(now))
		}
		return l, nil
	}
	s.met.TokenLeaseClaims.WithLabelValues("acquired").Inc()
	r, err := s.get(ctx, account)
	if err != nil {
		s.releaseLease(account)
		return nil, err
	}
	l := &lease{held: true, holder: s.owner, row: &r, claimedAt: time.Now(), stop: make(chan struct{}), done: make(chan struct{})}
	l.release = func() {
		l.once.Do(func() {
			close(l.stop)
			<-l.done
			if !l.frozen.Load() {
				s.releaseLease(account)
			}
		})
	}
	go s.heartbeat(account, l)
	return l, nil
}

func (s *sqlStore) heartbeat(account string, l *lease) {
	defer close(l.done)
	t := time.NewTicker(s.beat)
	defer t.Stop()
	for {
		select {
		case <-l.stop:
			return
		case <-t.C:
		}
		if l.frozen.Load() || (s.beatHook != nil && !s.beatHook(account)) {
			continue
		}
		n, err := s.exec(context.Background(), "renew", s.d.renew, account, s.owner, s.lease.Milliseconds())
		if err == nil && n != 1 {
			l.lost.Store(true)
			s.met.TokenLeasesLost.Inc()
			s.log.Warn("tokens: this replica lost the refresh lease of an account (it stalled longer than lease_duration); its refresh result will be refused and the stored tokens used", "account", account)
			return
		}
	}
}

// confirm makes sure l is still held when it was taken more than a
// heartbeat ago (the process may have been stopped since): it renews it,
// and reports false if another replica has it now.
func (s *sqlStore) confirm(account string, l *lease) bool {
	if time.Since(l.claimedAt) < s.beat {
		return !l.lost.Load()
	}
	n, err := s.exec(context.Background(), "renew", s.d.renew, account, s.owner, s.lease.Milliseconds())
	if err != nil || n != 1 {
		if err == nil {
			s.met.TokenLeasesLost.Inc()
			s.log.Warn("tokens: this replica was stopped longer than its refresh lease; another replica has the grant now", "account", account)
		}
		l.lost.Store(true)
		return false
	}
	return true
}

func (s *sqlStore) releaseLease(account string) {
	s.exec(context.Background(), "release", s.d.release, account, s.owner, epoch)
}

func (s *sqlStore) shared() bool { return true }
func (s *sqlStore) fix() string {
	return "check that the database of store dsn runs and is reachable from this host; cached access tokens keep serving until they expire"
}
func (s *sqlStore) close() error { return s.db.Close() }

// lease is a grant's refresh lease. The file store's is always held.
type lease struct {
	held   bool
	holder string    // who holds it (when not held by us)
	until  time.Time // when it runs out (when not held by us)
	row    *storeRow // the row read right after claiming (shared stores)
	// claimedAt is when this process took it (monotonic clock).
	claimedAt time.Time

	release func() // nil for the file store
	once    sync.Once
	stop    chan struct{}
	done    chan struct{}
	lost    atomic.Bool // the heartbeat found another holder
	frozen  atomic.Bool // tests: behave like a killed or stopped process
}

// end releases the lease (stopping its heartbeat).
func (l *lease) end() {
	if l != nil && l.release != nil {
		l.release()
	}
}
