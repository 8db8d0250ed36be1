// Package metrics defines every Prometheus metric oauthbridge exports, in
// one registry served at the admin listener's /metrics. Label values are
// bounded: protocol names, fixed result words and configured account names;
// never a user name typed by a client, never a secret.
package metrics

import (
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
)

// Registry holds all oauthbridge metrics plus the Go and process collectors.
var Registry = prometheus.NewRegistry()

var (
	SessionsActive = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "oauthbridge_sessions_active", Help: "Local client sessions currently open, per protocol.",
	}, []string{"proto"})
	SessionsTotal = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "oauthbridge_sessions_total", Help: "Local client sessions accepted, per protocol.",
	}, []string{"proto"})
	Logins = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "oauthbridge_logins_total", Help: "Login attempts by protocol and result (ok, bad_credentials, throttled, busy, needs_login, temporary, upstream_rejected, unavailable, error).",
	}, []string{"proto", "result"})
	UpstreamErrors = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "oauthbridge_upstream_errors_total", Help: "Upstream failures by protocol and class (dial, tls, auth, protocol, limit, timeout).",
	}, []string{"proto", "class"})
	TokenRefreshes = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "oauthbridge_token_refreshes_total", Help: "Token requests by account and result (ok, temporary, needs_login, failing).",
	}, []string{"account", "result"})
	TokenExpiry = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "oauthbridge_token_expiry_seconds", Help: "Seconds until the account's cached access token expires (negative: expired).",
	}, []string{"account"})
	AccountState = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "oauthbridge_account_state", Help: "1 for the account's current state (ok, needs_login, failing, unknown), 0 for the others.",
	}, []string{"account", "state"})
	BytesRelayed = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "oauthbridge_bytes_relayed_total", Help: "Bytes relayed after login, per protocol and direction (up: client to server, down: server to client).",
	}, []string{"proto", "direction"})
	SMTPMessages = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "oauthbridge_smtp_messages_total", Help: "SMTP messages by result (relayed, refused, failed).",
	}, []string{"result"})
	GraphMessages = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "oauthbridge_graph_messages_total", Help: "Messages submitted through Microsoft Graph by method (sendmail, upload) and result (sent, refused, failed).",
	}, []string{"method", "result"})
	GraphTokenRefreshes = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "oauthbridge_graph_token_refreshes_total", Help: "Microsoft Graph token requests by account and result (ok, temporary, needs_login, failing).",
	}, []string{"account", "result"})
	SendPath = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "oauthbridge_send_path", Help: "1 for the path (smtp, graph) an account's messages take now, 0 for the other.",
	}, []string{"account", "path"})
	SendPathSwitches = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "oauthbridge_send_path_switches_total", Help: "Switches of send_via = \"auto\" accounts between SMTP and Graph, by account and new path.",
	}, []string{"account", "to"})
)

// SetSendPath sets the account's send-path gauge to 1 for path, 0 for the other.
func SetSendPath(account, path string) {
	for _, p := range []string{"smtp", "graph"} {
		v := 0.0
		if p == path {
			v = 1
		}
		SendPath.WithLabelValues(account, p).Set(v)
	}
}

// AccountStates are the values of the state label of AccountState.
var AccountStates = []string{"ok", "needs_login", "failing", "unknown"}

// SetAccountState sets the account's state gauge to 1 and the others to 0.
func SetAccountState(account, state string) {
	for _, s := range AccountStates {
		v := 0.0
		if s == state {
			v = 1
		}
		AccountState.WithLabelValues(account, s).Set(v)
	}
}

func init() {
	Registry.MustRegister(
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		SessionsActive, SessionsTotal, Logins, UpstreamErrors, TokenRefreshes,
		TokenExpiry, AccountState, BytesRelayed, SMTPMessages,
		GraphMessages, GraphTokenRefreshes, SendPath, SendPathSwitches,
	)
}
