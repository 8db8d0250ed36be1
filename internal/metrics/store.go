package metrics

import "github.com/prometheus/client_golang/prometheus"

// registerStore registers the shared token store's metrics (store type =
// "postgres").
func (m *Metrics) registerStore(reg prometheus.Registerer) {
	up := prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "oauthbridge_token_store_up", Help: "1 while the shared token store (database) answers, 0 while it does not; 1 for the file store.",
	})
	m.TokenStoreUp = register(reg, prometheus.Gauge(up))
	if m.TokenStoreUp == up { // newly registered: the file store is always up
		up.Set(1)
	}
	m.TokenStoreQueries = register(reg, prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "oauthbridge_token_store_queries_total", Help: "Queries sent to the shared token store, by operation (poll, load, get, claim, renew, release, write, migrate).",
	}, []string{"op"}))
	m.TokenLeaseClaims = register(reg, prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "oauthbridge_token_lease_claims_total", Help: "Refresh lease claims by result: acquired (this replica refreshes), held (another replica does), error (store unreachable).",
	}, []string{"result"}))
	m.TokenLeasesLost = register(reg, prometheus.Counter(prometheus.NewCounter(prometheus.CounterOpts{
		Name: "oauthbridge_token_leases_lost_total", Help: "Refresh leases this replica held that another replica took over (the heartbeat found it gone, e.g. after a stall).",
	})))
	m.TokenStoreConflicts = register(reg, prometheus.Counter(prometheus.NewCounter(prometheus.CounterOpts{
		Name: "oauthbridge_token_store_conflicts_total", Help: "Token writes refused by the version check because another replica wrote newer tokens first; the newer tokens are adopted.",
	})))
}
