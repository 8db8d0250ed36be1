package metrics

import (
	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus"
)

// Gauges for alerting rules (contrib/prometheus/alerts.yml): the limits
// the sessions gauges are compared with, and the daemon's readiness.
var (
	MaxConnections = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "oauthbridge_max_connections", Help: "The configured max_connections of each protocol's listeners (local sessions served at once), to compare with oauthbridge_sessions_active.",
	}, []string{"proto"})
	Ready = prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "oauthbridge_ready", Help: "1 while every listener is bound and serving, state_dir is readable and the token store answers (the daemon's part of /readyz; accounts needing a sign-in are oauthbridge_account_state), 0 otherwise.",
	}, func() float64 {
		if f := readyFn.Load(); f != nil && (*f)() == nil {
			return 1
		}
		return 0
	})
)

var readyFn atomic.Pointer[func() error]

// SetReady makes oauthbridge_ready report fn's answer (nil error: ready).
func SetReady(fn func() error) { readyFn.Store(&fn) }

func init() {
	Registry.MustRegister(MaxConnections, Ready)
}
