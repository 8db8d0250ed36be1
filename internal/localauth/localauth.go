// Package localauth checks the local credentials that legacy clients present
// (LOGIN, USER/PASS, AUTH PLAIN/LOGIN) against the bcrypt hashes in the
// configuration. It is shared by the IMAP, POP3 and SMTP proxies.
//
// Three mechanisms keep bcrypt affordable and guessing expensive:
//
//   - Successful verifications are cached in memory for CacheTTL, keyed by an
//     HMAC (with a per-process random key) of user, password and hash, so a
//     helpdesk that polls every minute pays bcrypt once per TTL and a
//     password change invalidates the entry by itself.
//   - Failures are counted per remote address and per user. Past a threshold
//     each further attempt is refused without running bcrypt until a growing
//     delay has passed. A remote address that recently logged in as a user
//     is exempt from that user's counter, so a distributed guessing attack on
//     "otrs" does not lock out the OTRS server itself.
//   - At most MaxConcurrentBcrypt comparisons run at once (default: half the
//     cores); attempts beyond that queue briefly and are then refused, so a
//     flood cannot use more CPU than that.
package localauth

import (
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"net"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/crypto/bcrypt"

	"github.com/oauthbridge/oauthbridge/config"
)

// Named defaults.
const (
	DefaultCacheTTL        = 10 * time.Minute
	DefaultRemoteThreshold = 5  // failures from one address before delays start
	DefaultUserThreshold   = 10 // failures for one user (from unknown addresses) before delays start
	DefaultBaseDelay       = time.Second
	DefaultMaxDelay        = 5 * time.Minute
	DefaultForgetAfter     = 15 * time.Minute // a failure counter resets after this long without failures
	DefaultKnownRemoteTTL  = 24 * time.Hour   // how long a successful address stays exempt from the user counter
	DefaultBcryptQueueWait = 2 * time.Second
	// MaxTrackedKeys bounds each failure table (remote addresses, user names)
	// and the known-address table: about 100 bytes an entry.
	MaxTrackedKeys = 100_000
)

// Errors returned by Check. Proxies must answer the client with the same
// generic "invalid credentials" text for all of them, so a client cannot tell
// an unknown user from a wrong password, and log the distinction.
var (
	ErrInvalid   = errors.New("localauth: invalid credentials")
	ErrThrottled = errors.New("localauth: too many failed logins, throttled")
)

// Options tune an Authenticator; zero values take the defaults above.
type Options struct {
	CacheTTL            time.Duration
	RemoteThreshold     int
	UserThreshold       int
	BaseDelay           time.Duration
	MaxDelay            time.Duration
	MaxConcurrentBcrypt int
	Now                 func() time.Time // for tests
}

// Authenticator verifies local credentials. It is safe for concurrent use;
// SetUsers swaps the user table on reload.
type Authenticator struct {
	opts      Options
	users     atomic.Pointer[map[string]*config.User]
	key       [32]byte
	sem       chan struct{}
	dummy     []byte // a bcrypt hash compared against for unknown users (under mu)
	dummyCost int

	mu       sync.Mutex
	cache    map[[32]byte]time.Time
	remotes  map[string]*failures
	userFail map[string]*failures
	known    map[string]time.Time // user + "\x00" + remote ip -> expiry
	bcrypts  atomic.Int64
}

type failures struct {
	count   int
	last    time.Time
	blocked time.Time // attempts before this instant are refused without bcrypt
}

// New returns an Authenticator for the users of cfg.
func New(cfg *config.Config, opts Options) *Authenticator {
	if opts.CacheTTL <= 0 {
		opts.CacheTTL = DefaultCacheTTL
	}
	if opts.RemoteThreshold <= 0 {
		opts.RemoteThreshold = DefaultRemoteThreshold
	}
	if opts.UserThreshold <= 0 {
		opts.UserThreshold = DefaultUserThreshold
	}
	if opts.BaseDelay <= 0 {
		opts.BaseDelay = DefaultBaseDelay
	}
	if opts.MaxDelay <= 0 {
		opts.MaxDelay = DefaultMaxDelay
	}
	if opts.MaxConcurrentBcrypt <= 0 {
		// Half the cores: a spray of guesses (or of unknown user names from
		// many addresses, which no per-key counter catches) can then use at
		// most half the CPU, and spliced sessions keep the rest.
		opts.MaxConcurrentBcrypt = max(1, runtime.GOMAXPROCS(0)/2)
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	a := &Authenticator{
		opts:     opts,
		sem:      make(chan struct{}, opts.MaxConcurrentBcrypt),
		cache:    map[[32]byte]time.Time{},
		remotes:  map[string]*failures{},
		userFail: map[string]*failures{},
		known:    map[string]time.Time{},
	}
	if _, err := rand.Read(a.key[:]); err != nil {
		panic("localauth: no randomness: " + err.Error())
	}
	a.SetUsers(cfg)
	return a
}

// usersCost is the bcrypt cost of the first user's hash, or the default.
func usersCost(cfg *config.Config) int {
	if cfg != nil {
		for _, u := range cfg.Users {
			if c, err := bcrypt.Cost([]byte(u.PasswordHash.Reveal())); err == nil {
				return c
			}
		}
	}
	return bcrypt.DefaultCost
}

// SetUsers replaces the user table (on reload). Cached verifications of
// users whose hash changed stop matching by construction.
func (a *Authenticator) SetUsers(cfg *config.Config) {
	// The hash compared for unknown users follows the users' cost, so that
	// after a re-hash at another cost unknown names still take as long as
	// real ones.
	cost := usersCost(cfg)
	a.mu.Lock()
	if a.dummy == nil || a.dummyCost != cost {
		a.dummy, _ = bcrypt.GenerateFromPassword([]byte("oauthbridge-dummy-password"), cost)
		a.dummyCost = cost
	}
	a.mu.Unlock()
	m := map[string]*config.User{}
	if cfg != nil {
		for _, u := range cfg.Users {
			m[u.Name] = u
		}
	}
	a.users.Store(&m)
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

// Check verifies user and password presented from remote (an IP, see
// RemoteIP). It returns the configured user on success, ErrInvalid for an
// unknown user or a wrong password, ErrThrottled when the attempt was
// refused without checking, or the context's error.
func (a *Authenticator) Check(ctx context.Context, user, password, remote string) (*config.User, error) {
	now := a.opts.Now()
	users := *a.users.Load()
	u := users[user]

	var hash string
	if u != nil {
		hash = u.PasswordHash.Reveal()
	}
	key := a.cacheKey(user, password, hash)

	// Throttling is checked before the cache: otherwise a blocked guesser
	// could test passwords at HMAC speed against a cached success.
	a.mu.Lock()
	if f := a.remotes[remote]; f != nil && now.Before(f.blocked) {
		a.mu.Unlock()
		return nil, ErrThrottled
	}
	knownRemote := now.Before(a.known[user+"\x00"+remote])
	if f := a.userFail[user]; f != nil && !knownRemote && now.Before(f.blocked) {
		a.mu.Unlock()
		return nil, ErrThrottled
	}
	if u != nil {
		if exp, ok := a.cache[key]; ok && now.Before(exp) {
			a.mu.Unlock()
			return u, nil
		}
	}
	a.mu.Unlock()

	// Bound CPU: at most MaxConcurrentBcrypt comparisons at once.
	wait := time.NewTimer(DefaultBcryptQueueWait)
	defer wait.Stop()
	select {
	case a.sem <- struct{}{}:
	case <-ctx.Done():
		return nil, ctx.Err()
	case <-wait.C:
		return nil, ErrThrottled
	}
	a.bcrypts.Add(1)
	var ok bool
	if u != nil {
		ok = bcrypt.CompareHashAndPassword([]byte(hash), []byte(password)) == nil
	} else {
		// Same cost as a real check, so timing does not reveal which users exist.
		a.mu.Lock()
		dummy := a.dummy
		a.mu.Unlock()
		_ = bcrypt.CompareHashAndPassword(dummy, []byte(password))
	}
	<-a.sem

	now = a.opts.Now()
	a.mu.Lock()
	defer a.mu.Unlock()
	a.gc(now)
	if ok {
		a.cache[key] = now.Add(a.opts.CacheTTL)
		delete(a.remotes, remote)
		a.known[user+"\x00"+remote] = now.Add(DefaultKnownRemoteTTL)
		return u, nil
	}
	a.fail(a.remotes, remote, a.opts.RemoteThreshold, now)
	// Only real users get a per-user counter: counting typed names that do
	// not exist protects nothing and would let a client grow the map with
	// names of its choosing.
	if !knownRemote && u != nil {
		a.fail(a.userFail, user, a.opts.UserThreshold, now)
	}
	return nil, ErrInvalid
}

func (a *Authenticator) fail(m map[string]*failures, k string, threshold int, now time.Time) {
	f := m[k]
	if f == nil && len(m) >= MaxTrackedKeys {
		// Full (addresses rotated faster than DefaultForgetAfter): stop
		// tracking new keys rather than grow without bound; the bcrypt
		// concurrency cap still bounds the CPU such a flood can use.
		return
	}
	if f == nil || now.Sub(f.last) > DefaultForgetAfter {
		f = &failures{}
		m[k] = f
	}
	f.count++
	f.last = now
	if over := f.count - threshold; over >= 0 {
		d := a.opts.BaseDelay << min(over, 20)
		if d > a.opts.MaxDelay || d <= 0 {
			d = a.opts.MaxDelay
		}
		f.blocked = now.Add(d)
	}
}

// gc drops expired entries; called with mu held on every checked attempt, so
// the maps stay bounded by the attempts of the last few minutes.
func (a *Authenticator) gc(now time.Time) {
	if len(a.cache)+len(a.remotes)+len(a.userFail)+len(a.known) < 1024 {
		return
	}
	for k, exp := range a.cache {
		if now.After(exp) {
			delete(a.cache, k)
		}
	}
	for _, m := range []map[string]*failures{a.remotes, a.userFail} {
		for k, f := range m {
			if now.Sub(f.last) > DefaultForgetAfter && now.After(f.blocked) {
				delete(m, k)
			}
		}
	}
	for k, exp := range a.known {
		if now.After(exp) {
			delete(a.known, k)
		}
	}
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
