package metrics

import "github.com/prometheus/client_golang/prometheus"

// Shared token store (store type = "postgres").
var (
	TokenStoreUp = prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "oauthbridge_token_store_up", Help: "1 while the shared token store (database) answers, 0 while it does not; 1 for the file store.",
	})
	TokenStoreQueries = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "oauthbridge_token_store_queries_total", Help: "Queries sent to the shared token store, by operation (poll, load, get, claim, renew, release, write, migrate).",
	}, []string{"op"})
	TokenLeaseClaims = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "oauthbridge_token_lease_claims_total", Help: "Refresh lease claims by result: acquired (this replica refreshes), held (another replica does), error (store unreachable).",
	}, []string{"result"})
	TokenLeasesLost = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "oauthbridge_token_leases_lost_total", Help: "Refresh leases this replica held that another replica took over (the heartbeat found it gone, e.g. after a stall).",
	})
	TokenStoreConflicts = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "oauthbridge_token_store_conflicts_total", Help: "Token writes refused by the version check because another replica wrote newer tokens first; the newer tokens are adopted.",
	})
)

func init() {
	TokenStoreUp.Set(1)
	Registry.MustRegister(TokenStoreUp, TokenStoreQueries, TokenLeaseClaims, TokenLeasesLost, TokenStoreConflicts)
}
