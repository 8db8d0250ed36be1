// Package localauth checks the local credentials that legacy clients present
// (LOGIN, USER/PASS, AUTH PLAIN/LOGIN) against the bcrypt hashes in the
// configuration. It is shared by the IMAP, POP3 and SMTP proxies and the
// admin API.
//
// In the real deployment every legacy client (helpdesk, cron scripts,
// scanners) reaches the bridge from 127.0.0.1, so the remote address tells
// clients apart only for names that do not exist. Throttling is therefore
// keyed by user name:
//
//   - Successful verifications are cached in memory until CacheTTL after
//     their last use, keyed by an HMAC (with a per-process random key) of
//     user, password and hash, so a helpdesk that polls every few minutes
//     pays bcrypt once after a start and a password change (a reload)
//     invalidates the entry by itself.
//   - Identical credentials presented at the same time share one check (a
//     cold start with 100 helpdesk workers runs one bcrypt per user).
//   - Each user name has a token bucket of password checks (bcrypt): Burst
//     at once, then one per CheckInterval, whoever asks and from wherever.
//     Names that do not exist share one bucket per remote address. A user
//     whose bucket is empty is "throttled": that slows only that user.
//   - While a user is throttled, every new password presented for it is held
//     for ThrottledHold before it is decided, and at most MaxPending
//     different passwords per user are held at once (more are refused at
//     once, without looking at them). After the hold, the right password
//     known from the cache is accepted; any other waits for the user's next
//     check slot (at most MaxQueueWait) and is then checked with bcrypt. So
//     the helpdesk's right password gets in within ThrottledHold (+ the
//     queue when it is not cached) while a guesser learns at most
//     MaxPending/ThrottledHold + 1/CheckInterval answers per second for
//     that user: a hit in the cache can never be told from a miss faster
//     than the hold.
//   - At most MaxConcurrentBcrypt comparisons run at once (default: half the
//     cores); attempts beyond that queue up to BcryptQueueWait and are then
//     refused as busy, so a flood cannot use more CPU than that.
//
// Refusals without a check are ErrThrottled or ErrBusy, never ErrInvalid:
// only a checked wrong password (or unknown name) is ErrInvalid.
package localauth

import (
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"net"
	"runtime"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/crypto/bcrypt"
	"golang.org/x/sync/singleflight"
	"golang.org/x/time/rate"

	"github.com/oauthbridge/oauthbridge/audit"
	"github.com/oauthbridge/oauthbridge/config"
)

// Named defaults.
const (
	DefaultCacheTTL = 10 * time.Minute
	// DefaultBurst password checks per user (or per address for unknown
	// names) run at once; after that one per DefaultCheckInterval.
	DefaultBurst         = 5
	DefaultCheckInterval = time.Second
	// DefaultThrottledHold is how long a password presented for a throttled
	// user waits before it is decided (accepted from the cache, or queued for
	// a check).
	DefaultThrottledHold = 5 * time.Second
	// DefaultMaxPending different passwords per throttled user are held at
	// once; further ones are refused as throttled without being looked at.
	DefaultMaxPending = 32
	// DefaultMaxQueueWait bounds the wait for the user's next check slot
	// after the hold; an attempt that would wait longer is refused as
	// throttled.
	DefaultMaxQueueWait = 8 * time.Second
	// DefaultBcryptQueueWait bounds the wait for a free bcrypt slot (all
	// users together); past it the attempt is refused as busy.
	DefaultBcryptQueueWait = 10 * time.Second
	// MaxTrackedKeys bounds the table of per-address buckets for unknown
	// names: about 200 bytes an entry.
	MaxTrackedKeys = 100_000
)

// Errors returned by Check. Only ErrInvalid means a password was checked
// and found wrong (or the name does not exist); the proxies answer it with
// their "invalid credentials" reply. ErrThrottled and ErrBusy mean nothing
// was checked and are answered as temporary failures. Each is returned
// wrapped with "localauth:" and the detail for the log; test with
// errors.Is.
//
// They are the public errors of package audit, the ones a password checker
// written outside this module returns to the proxies, so errors.Is matches
// either name.
var (
	ErrInvalid   = audit.ErrBadCredentials
	ErrThrottled = audit.ErrThrottled
	ErrBusy      = audit.ErrBusy
)

// errInvalid is the wrong-password answer of Check, with its source named
// for the log.
var errInvalid = fmt.Errorf("localauth: %w", ErrInvalid)

// Options tune an Authenticator; zero values take the defaults above.
type Options struct {
	CacheTTL            time.Duration
	Burst               int
	CheckInterval       time.Duration
	ThrottledHold       time.Duration
	MaxPending          int
	MaxQueueWait        time.Duration
	MaxConcurrentBcrypt int
	BcryptQueueWait     time.Duration

	// Now and After replace the wall clock (tests). After must return a
	// channel that receives once d has passed on the same clock as Now.
	Now   func() time.Time
	After func(d time.Duration) <-chan time.Time
}

// Authenticator verifies local credentials. It is safe for concurrent use;
// SetUsers swaps the user table on reload.
type Authenticator struct {
	opts    Options
	users   atomic.Pointer[userTable]
	key     [32]byte
	sem     chan struct{}
	flight  singleflight.Group
	bcrypts atomic.Int64

	mu      sync.Mutex
	cache   map[[32]byte]time.Time
	buckets map[string]*bucket
	dummies map[int][]byte // bcrypt cost -> hash compared for unknown names
	gcAt    int
}

// userTable is one configuration's users.
type userTable struct {
	byName map[string]*config.User
	// dummies holds one hash per configured user (sorted by name), at that
	// user's cost: an unknown name is compared against the one its HMAC
	// picks, so it costs what some real user's check costs.
	dummies [][]byte
}

type bucket struct {
	lim     *rate.Limiter
	pending int // distinct passwords held in the throttled path
}

// New returns an Authenticator for the users of cfg.
func New(cfg *config.Config, opts Options) *Authenticator {
	if opts.CacheTTL <= 0 {
		opts.CacheTTL = DefaultCacheTTL
	}
	if opts.Burst <= 0 {
		opts.Burst = DefaultBurst
	}
	if opts.CheckInterval <= 0 {
		opts.CheckInterval = DefaultCheckInterval
	}
	if opts.ThrottledHold <= 0 {
		opts.ThrottledHold = DefaultThrottledHold
	}
	if opts.MaxPending <= 0 {
		opts.MaxPending = DefaultMaxPending
	}
	if opts.MaxQueueWait <= 0 {
		opts.MaxQueueWait = DefaultMaxQueueWait
	}
	if opts.BcryptQueueWait <= 0 {
		opts.BcryptQueueWait = DefaultBcryptQueueWait
	}
	if opts.MaxConcurrentBcrypt <= 0 {
		// Half the cores: a spray of guesses (or of unknown user names from
		// many addresses, which no per-key bucket catches) can then use at
		// most half the CPU, and spliced sessions keep the rest.
		opts.MaxConcurrentBcrypt = max(1, runtime.GOMAXPROCS(0)/2)
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.After == nil {
		opts.After = time.After
	}
	a := &Authenticator{
		opts:    opts,
		sem:     make(chan struct{}, opts.MaxConcurrentBcrypt),
		cache:   map[[32]byte]time.Time{},
		buckets: map[string]*bucket{},
		dummies: map[int][]byte{},
		gcAt:    1024,
	}
	if _, err := rand.Read(a.key[:]); err != nil {
		panic("localauth: no randomness: " + err.Error())
	}
	a.SetUsers(cfg)
	return a
}

// SetUsers replaces the user table (on reload). Cached verifications of
// users whose hash changed stop matching by construction.
func (a *Authenticator) SetUsers(cfg *config.Config) {
	t := &userTable{byName: map[string]*config.User{}}
	var names []string
	if cfg != nil {
		for _, u := range cfg.Users {
			t.byName[u.Name] = u
			names = append(names, u.Name)
		}
	}
	sort.Strings(names)
	for _, n := range names {
		cost, err := bcrypt.Cost([]byte(t.byName[n].PasswordHash.Reveal()))
		if err != nil {
			cost = bcrypt.DefaultCost // config validation rejects such hashes
		}
		t.dummies = append(t.dummies, a.dummy(cost))
	}
	if len(t.dummies) == 0 {
		t.dummies = [][]byte{a.dummy(bcrypt.DefaultCost)}
	}
	a.users.Store(t)
}

// dummy returns a hash of a fixed password at cost, made once per cost.
func (a *Authenticator) dummy(cost int) []byte {
	a.mu.Lock()
	h := a.dummies[cost]
	a.mu.Unlock()
	if h != nil {
		return h
	}
	h, err := bcrypt.GenerateFromPassword([]byte("oauthbridge-dummy-password"), cost)
	if err != nil {
		panic("localauth: dummy hash: " + err.Error())
	}
	a.mu.Lock()
	a.dummies[cost] = h
	a.mu.Unlock()
	return h
}

// BcryptCount reports how many bcrypt comparisons have run (for tests and
// benchmarks that check the cache and the throttle).
func (a *Authenticator) BcryptCount() int64 { return a.bcrypts.Load() }

// RemoteIP extracts the IP of a net.Addr, or its string form when it has
// none (net.Pipe).
func RemoteIP(addr net.Addr) string {
	if addr == nil {
		return "unknown"
	}
	if ta, ok := addr.(*net.TCPAddr); ok {
		return ta.IP.String()
	}
	s := addr.String()
	if host, _, err := net.SplitHostPort(s); err == nil {
		return host
	}
	return s
}

// IsLoopback reports whether a client's address is on this host, where the
// proxies accept a password without TLS: a loopback IP, a Unix socket peer,
// or one end of a net.Pipe (an in-process connection only this process can
// make). It is the one implementation of the plaintext-password rule's
// "loopback" for IMAP, POP3 and SMTP.
func IsLoopback(addr net.Addr) bool {
	switch a := addr.(type) {
	case nil:
		return false
	case *net.TCPAddr:
		return a.IP.IsLoopback()
	case *net.UnixAddr:
		return true
	}
	if addr.Network() == "pipe" {
		return true
	}
	ip := net.ParseIP(RemoteIP(addr))
	return ip != nil && ip.IsLoopback()
}

// attempt is one distinct credential being decided.
type attempt struct {
	user, password, hash string
	u                    *config.User
	key                  [32]byte
	bkey                 string // bucket: the user name, or the address for unknown names
	dummy                []byte
}

// Check verifies user and password presented from remote (an IP, see
// RemoteIP). It returns the configured user on success; ErrInvalid for an
// unknown user or a wrong password; ErrThrottled or ErrBusy (wrapped) when
// the password was not checked; or the context's error.
func (a *Authenticator) Check(ctx context.Context, user, password, remote string) (*config.User, error) {
	t := a.users.Load()
	at := &attempt{user: user, password: password, u: t.byName[user]}
	if at.u != nil {
		at.hash = at.u.PasswordHash.Reveal()
		at.bkey = "u\x00" + user
	} else {
		at.bkey = "r\x00" + remote
		at.dummy = t.dummies[a.pick(user, len(t.dummies))]
	}
	at.key = a.cacheKey(user, password, at.hash)

	// Fast path: the right password of a user who is not throttled.
	if at.u != nil {
		now := a.opts.Now()
		a.mu.Lock()
		exp, hit := a.cache[at.key]
		b := a.buckets[at.bkey]
		fast := hit && now.Before(exp) && (b == nil || b.lim.TokensAt(now) >= 1)
		if fast {
			a.cache[at.key] = now.Add(a.opts.CacheTTL) // kept while in use
		}
		a.mu.Unlock()
		if fast {
			return at.u, nil
		}
	}

	// Everything else is decided once per distinct credential: concurrent
	// identical attempts share the decision and its one bcrypt.
	ch := a.flight.DoChan(string(at.key[:]), func() (any, error) { return a.decide(at) })
	select {
	case r := <-ch:
		if r.Err != nil {
			return nil, r.Err
		}
		return at.u, nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// decide runs the throttle, the hold, the queue and bcrypt for one
// credential. Its waits are bounded (ThrottledHold + MaxQueueWait +
// BcryptQueueWait), so it needs no context: callers that give up stop
// waiting for it, and the shared result stays right for the others.
func (a *Authenticator) decide(at *attempt) (any, error) {
	now := a.opts.Now()
	a.mu.Lock()
	b := a.bucketLocked(at.bkey, now)
	exp, hit := a.cache[at.key]
	hit = hit && at.u != nil && now.Before(exp)
	if b.lim.TokensAt(now) >= 1 {
		if hit {
			a.mu.Unlock()
			return nil, nil
		}
		b.lim.ReserveN(now, 1) // available now: no wait
		a.mu.Unlock()
		return a.bcrypt(at)
	}

	// Throttled.
	if b.pending >= a.opts.MaxPending {
		a.mu.Unlock()
		return nil, fmt.Errorf("localauth: %w (%d other passwords for this name are already waiting)", ErrThrottled, b.pending)
	}
	b.pending++
	a.mu.Unlock()
	defer func() {
		a.mu.Lock()
		b.pending--
		a.mu.Unlock()
	}()
	<-a.opts.After(a.opts.ThrottledHold)
	if hit {
		a.mu.Lock()
		a.cache[at.key] = a.opts.Now().Add(a.opts.CacheTTL)
		a.mu.Unlock()
		return nil, nil
	}
	now = a.opts.Now()
	a.mu.Lock()
	r := b.lim.ReserveN(now, 1)
	wait := r.DelayFrom(now)
	if wait > a.opts.MaxQueueWait {
		r.CancelAt(now)
		a.mu.Unlock()
		return nil, fmt.Errorf("localauth: %w (next check slot for this name in %s, over the %s queue limit)", ErrThrottled, wait.Round(time.Second), a.opts.MaxQueueWait)
	}
	a.mu.Unlock()
	if wait > 0 {
		<-a.opts.After(wait)
	}
	return a.bcrypt(at)
}

// bcrypt compares under the global concurrency bound and caches a success.
func (a *Authenticator) bcrypt(at *attempt) (any, error) {
	select {
	case a.sem <- struct{}{}:
	default:
		select {
		case a.sem <- struct{}{}:
		case <-a.opts.After(a.opts.BcryptQueueWait):
			return nil, fmt.Errorf("localauth: %w (%d checks running, none finished within %s)", ErrBusy, cap(a.sem), a.opts.BcryptQueueWait)
		}
	}
	a.bcrypts.Add(1)
	var ok bool
	if at.u != nil {
		ok = bcrypt.CompareHashAndPassword([]byte(at.hash), []byte(at.password)) == nil
	} else {
		// Same cost as some real user's check, so timing does not reveal
		// which names exist.
		_ = bcrypt.CompareHashAndPassword(at.dummy, []byte(at.password))
	}
	<-a.sem
	if !ok {
		return nil, errInvalid
	}
	now := a.opts.Now()
	a.mu.Lock()
	a.gcLocked(now)
	a.cache[at.key] = now.Add(a.opts.CacheTTL)
	a.mu.Unlock()
	return nil, nil
}

// bucketLocked returns the bucket for key, creating it; with mu held.
func (a *Authenticator) bucketLocked(key string, now time.Time) *bucket {
	if b := a.buckets[key]; b != nil {
		return b
	}
	if len(a.buckets) >= a.gcAt {
		a.gcBucketsLocked(now)
	}
	if len(a.buckets) >= MaxTrackedKeys {
		// Addresses rotate faster than buckets refill: they share one
		// bucket rather than grow the table without bound.
		key = "overflow"
		if b := a.buckets[key]; b != nil {
			return b
		}
	}
	b := &bucket{lim: rate.NewLimiter(rate.Every(a.opts.CheckInterval), a.opts.Burst)}
	a.buckets[key] = b
	return b
}

// gcBucketsLocked drops full, idle buckets (they behave like new ones).
func (a *Authenticator) gcBucketsLocked(now time.Time) {
	for k, b := range a.buckets {
		if b.pending == 0 && b.lim.TokensAt(now) >= float64(a.opts.Burst) {
			delete(a.buckets, k)
		}
	}
	a.gcAt = max(1024, 2*len(a.buckets))
}

// gcLocked drops expired cache entries once the cache is large.
func (a *Authenticator) gcLocked(now time.Time) {
	if len(a.cache) < 1024 {
		return
	}
	for k, exp := range a.cache {
		if !now.Before(exp) {
			delete(a.cache, k)
		}
	}
}

// pick maps an unknown name to one of n dummy hashes, the same one every
// time within this process.
func (a *Authenticator) pick(name string, n int) int {
	m := hmac.New(sha256.New, a.key[:])
	m.Write([]byte("dummy\x00"))
	m.Write([]byte(name))
	return int(binary.BigEndian.Uint64(m.Sum(nil)) % uint64(n))
}

func (a *Authenticator) cacheKey(user, password, hash string) [32]byte {
	m := hmac.New(sha256.New, a.key[:])
	m.Write([]byte(user))
	m.Write([]byte{0})
	m.Write([]byte(password))
	m.Write([]byte{0})
	m.Write([]byte(hash))
	var k [32]byte
	copy(k[:], m.Sum(nil))
	return k
}
