package metrics

import "github.com/prometheus/client_golang/prometheus"

// Gauges for alerting rules (contrib/prometheus/alerts.yml): the limits
// the sessions gauges are compared with, and the daemon's readiness.

func newMaxConnections() *prometheus.GaugeVec {
	return prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "oauthbridge_max_connections", Help: "The configured max_connections of each protocol's listeners (local sessions served at once), to compare with oauthbridge_sessions_active.",
	}, []string{"proto"})
}

// NewReadyGauge returns oauthbridge_ready, which reports fn's answer at
// each scrape (nil error: 1, ready); the daemon registers it on its
// registry with its own readiness check.
func NewReadyGauge(fn func() error) prometheus.GaugeFunc {
	return prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "oauthbridge_ready", Help: "1 while every listener is bound and serving, state_dir is readable and the token store answers (the daemon's part of /readyz; accounts needing a sign-in are oauthbridge_account_state), 0 otherwise.",
	}, func() float64 {
		if fn() == nil {
			return 1
		}
		return 0
	})
}
