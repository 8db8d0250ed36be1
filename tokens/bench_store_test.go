package tokens_test

import (
	"context"
	"crypto/rand"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/oauthbridge/oauthbridge/config"
	"github.com/oauthbridge/oauthbridge/internal/fakems"
	. "github.com/oauthbridge/oauthbridge/tokens"
)

// benchManager is one replica with n app-flow accounts on the file store
// (dsn "") or a shared PostgreSQL store, on a fake clock, every account
// holding a token.
func benchManager(b *testing.B, dsn string, n int) (*Manager, *fakeClock, *fakems.Fake) {
	b.Helper()
	f, err := fakems.Start(fakems.Options{AccessTokenLifetime: tokenLife})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { f.Close() })
	f.AddApp("app1", secret)
	var src strings.Builder
	fmt.Fprintf(&src, "state_dir = %q\n", filepath.Join(b.TempDir(), "s"))
	if dsn != "" {
		// The default poll_interval (5 s): what a deployment pays.
		fmt.Fprintf(&src, "store {\n  type = \"postgres\"\n  dsn = %q\n}\n", dsn)
	}
	fmt.Fprintf(&src, "provider \"p\" {\n  tenant = \"t\"\n  client_id = \"app1\"\n  client_secret = %q\n  authority = %q\n}\n", secret, f.AuthorityURL)
	for i := range n {
		mb := fmt.Sprintf("box%d@contoso.com", i)
		f.AddMailbox(mb)
		f.GrantApp("app1", mb)
		fmt.Fprintf(&src, "account \"a%d\" {\n  provider = \"p\"\n  mailbox = %q\n  flow = \"app\"\n}\n", i, mb)
	}
	cfg, err := config.Parse("bench.hcl", []byte(src.String()))
	if err != nil {
		b.Fatal(err)
	}
	k := make([]byte, KeySize)
	_, _ = rand.Read(k)
	keyFile := filepath.Join(b.TempDir(), "key")
	if err := os.WriteFile(keyFile, k, 0o600); err != nil {
		b.Fatal(err)
	}
	c := newFakeClock()
	m, err := NewManager(cfg, Options{Now: c.Now, KeyFile: keyFile, Registerer: testRegistry})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { m.Close() })
	m.Start(context.Background())
	for i := range n {
		if _, err := m.AccessToken(context.Background(), fmt.Sprintf("a%d", i)); err != nil {
			b.Fatal(err)
		}
	}
	return m, c, f
}

// BenchmarkLoginToken is what a login asks of the token store: the
// account's access token, from the replica's cache. The shared store is
// not on this path, so both stores serve the same logins per second.
// The PostgreSQL case runs when OAUTHBRIDGE_TEST_PG_DSN is set (make
// pgbench).
func BenchmarkLoginToken(b *testing.B) {
	for _, store := range []string{"file", "postgres"} {
		b.Run(store, func(b *testing.B) {
			dsn := ""
			if store == "postgres" {
				dsn = PGTestDSN(b)
			}
			m, _, _ := benchManager(b, dsn, 100)
			b.ReportAllocs()
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				i := 0
				for pb.Next() {
					i++
					if _, err := m.AccessToken(context.Background(), fmt.Sprintf("a%d", i%100)); err != nil {
						b.Error(err)
						return
					}
				}
			})
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "logins/s")
		})
	}
}

// storeStatements counts the shared store's statements other than polls.
func storeStatements() float64 {
	var total float64
	for _, op := range []string{"get", "claim", "renew", "release", "write"} {
		total += testutil.ToFloat64(testMetrics.TokenStoreQueries.WithLabelValues(op))
	}
	return total
}

// BenchmarkPGRefresh is one redemption through the shared store: a login
// finds the access token expired and waits while the replica takes the
// grant's lease, asks the (fake) identity platform, compare-and-swaps the
// new tokens into the table and releases the lease. It reports the
// statements each redemption costs and, from that, what a replica that
// does every redemption itself costs the database at 100 accounts with
// one-hour tokens and the default poll_interval: 12 polls a minute plus
// 100 redemptions every 50 minutes (tokens are refreshed 10 minutes ahead
// of expiry). (With two replicas sharing the work,
// TestPGQueriesPer100Accounts measures both together.)
func BenchmarkPGRefresh(b *testing.B) {
	dsn := PGTestDSN(b)
	const n = 100 // accounts in the estimate; one is enough to measure
	m, c, f := benchManager(b, dsn, 1)
	q0, r0 := storeStatements(), f.TokenRequestsByGrant()[grantCC]
	b.ResetTimer()
	for range b.N {
		c.Add(tokenLife + time.Minute)
		if _, err := m.AccessToken(context.Background(), "a0"); err != nil {
			b.Fatal(err)
		}
	}
	b.StopTimer()
	redeemed := f.TokenRequestsByGrant()[grantCC] - r0
	if redeemed < b.N {
		b.Fatalf("%d redemptions for %d expired tokens", redeemed, b.N)
	}
	perRefresh := (storeStatements() - q0) / float64(redeemed)
	polls := float64(time.Minute / config.DefaultStorePoll)
	b.ReportMetric(perRefresh, "stmts/refresh")
	b.ReportMetric(polls+perRefresh*n/50, "queries/min@100accts")
}
