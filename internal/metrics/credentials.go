package metrics

import "github.com/prometheus/client_golang/prometheus"

// newCredentialExpiry is the expiry of each client credential of a
// provider: kind "certificate" (name: its SHA-1 thumbprint, as the Entra
// admin center shows it) or "secret" (name "client_secret", when its expiry
// is known). Labels are bounded: configured provider names and at most two
// certificates each.
func newCredentialExpiry() *prometheus.GaugeVec {
	return prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "oauthbridge_credential_expiry_timestamp_seconds",
		Help: "Unix time at which a provider's client credential (certificate or secret) expires; alert when it is less than 30 days away.",
	}, []string{"provider", "kind", "name"})
}
