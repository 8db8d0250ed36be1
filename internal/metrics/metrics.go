// Package metrics defines every Prometheus metric oauthbridge exports. A
// Metrics holds them, registered on the registry it was built for (the
// daemon builds one, serves its registry at the admin listener's /metrics
// and hands the Metrics to every component); nothing is package-global.
// Label values are bounded: protocol names, fixed result words and
// configured account names; never a user name typed by a client, never a
// secret.
package metrics

import (
	"errors"
	"fmt"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
)

// Metrics is oauthbridge's set of metrics on one registry.
type Metrics struct {
	SessionsActive      *prometheus.GaugeVec
	SessionsTotal       *prometheus.CounterVec
	Logins              *prometheus.CounterVec
	UpstreamErrors      *prometheus.CounterVec
	TokenRefreshes      *prometheus.CounterVec
	TokenExpiry         *prometheus.GaugeVec
	AccountState        *prometheus.GaugeVec
	BytesRelayed        *prometheus.CounterVec
	SMTPMessages        *prometheus.CounterVec
	GraphMessages       *prometheus.CounterVec
	GraphTokenRefreshes *prometheus.CounterVec
	SendPath            *prometheus.GaugeVec
	SendPathSwitches    *prometheus.CounterVec
	CredentialExpiry    *prometheus.GaugeVec // credentials.go
	MaxConnections      *prometheus.GaugeVec // limits.go

	// Shared token store (store type = "postgres").
	TokenStoreUp        prometheus.Gauge
	TokenStoreQueries   *prometheus.CounterVec
	TokenLeaseClaims    *prometheus.CounterVec
	TokenLeasesLost     prometheus.Counter
	TokenStoreConflicts prometheus.Counter
}

// NewRegistry returns a registry with the Go and process collectors, for
// New and the /metrics handler.
func NewRegistry() *prometheus.Registry {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return reg
}

// New registers oauthbridge's metrics on reg and returns them; metrics
// already registered there (New called again for another component) are
// shared. A nil reg gets a private registry (tests, library use without
// metrics).
func New(reg prometheus.Registerer) *Metrics {
	if reg == nil {
		reg = prometheus.NewRegistry()
	}
	m := &Metrics{
		SessionsActive: register(reg, prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "oauthbridge_sessions_active", Help: "Local client sessions currently open, per protocol.",
		}, []string{"proto"})),
		SessionsTotal: register(reg, prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "oauthbridge_sessions_total", Help: "Local client sessions accepted, per protocol.",
		}, []string{"proto"})),
		Logins: register(reg, prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "oauthbridge_logins_total", Help: "Login attempts by protocol and result (ok, bad_credentials, throttled, busy, needs_login, temporary, upstream_rejected, unavailable, error).",
		}, []string{"proto", "result"})),
		UpstreamErrors: register(reg, prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "oauthbridge_upstream_errors_total", Help: "Upstream failures by protocol and class (dial, tls, auth, protocol, limit, timeout).",
		}, []string{"proto", "class"})),
		TokenRefreshes: register(reg, prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "oauthbridge_token_refreshes_total", Help: "Token requests by account and result (ok, temporary, needs_login, failing).",
		}, []string{"account", "result"})),
		TokenExpiry: register(reg, prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "oauthbridge_token_expiry_seconds", Help: "Seconds until the account's cached access token expires (negative: expired).",
		}, []string{"account"})),
		AccountState: register(reg, prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "oauthbridge_account_state", Help: "1 for the account's current state (ok, needs_login, failing, unknown), 0 for the others.",
		}, []string{"account", "state"})),
		BytesRelayed: register(reg, prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "oauthbridge_bytes_relayed_total", Help: "Bytes relayed after login, per protocol and direction (up: client to server, down: server to client).",
		}, []string{"proto", "direction"})),
		SMTPMessages: register(reg, prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "oauthbridge_smtp_messages_total", Help: "SMTP messages by result (relayed, refused, failed).",
		}, []string{"result"})),
		GraphMessages: register(reg, prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "oauthbridge_graph_messages_total", Help: "Messages submitted through Microsoft Graph by method (sendmail, upload) and result (sent, refused, failed).",
		}, []string{"method", "result"})),
		GraphTokenRefreshes: register(reg, prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "oauthbridge_graph_token_refreshes_total", Help: "Microsoft Graph token requests by account and result (ok, temporary, needs_login, failing).",
		}, []string{"account", "result"})),
		SendPath: register(reg, prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "oauthbridge_send_path", Help: "1 for the path (smtp, graph) an account's messages take now, 0 for the other.",
		}, []string{"account", "path"})),
		SendPathSwitches: register(reg, prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "oauthbridge_send_path_switches_total", Help: "Switches of send_via = \"auto\" accounts between SMTP and Graph, by account and new path.",
		}, []string{"account", "to"})),
	}
	m.CredentialExpiry = register(reg, newCredentialExpiry())
	m.MaxConnections = register(reg, newMaxConnections())
	m.registerStore(reg)
	return m
}

// register registers c on reg, or returns the collector of the same
// description already registered there.
func register[T prometheus.Collector](reg prometheus.Registerer, c T) T {
	err := reg.Register(c)
	if err == nil {
		return c
	}
	var are prometheus.AlreadyRegisteredError
	if errors.As(err, &are) {
		if ex, ok := are.ExistingCollector.(T); ok {
			return ex
		}
	}
	panic(fmt.Sprintf("metrics: %v", err)) // two different metrics of one name: a programming error
}

// SetSendPath sets the account's send-path gauge to 1 for path, 0 for the other.
func (m *Metrics) SetSendPath(account, path string) {
	for _, p := range []string{"smtp", "graph"} {
		v := 0.0
		if p == path {
			v = 1
		}
		m.SendPath.WithLabelValues(account, p).Set(v)
	}
}

// AccountStates are the values of the state label of AccountState.
var AccountStates = []string{"ok", "needs_login", "failing", "unknown"}

// SetAccountState sets the account's state gauge to 1 and the others to 0.
func (m *Metrics) SetAccountState(account, state string) {
	for _, s := range AccountStates {
		v := 0.0
		if s == state {
			v = 1
		}
		m.AccountState.WithLabelValues(account, s).Set(v)
	}
}
