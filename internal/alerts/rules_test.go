package alerts

import (
	"os"
	"regexp"
	"testing"

	"github.com/oauthbridge/oauthbridge/internal/metrics"
)

// The Prometheus rules in contrib/prometheus/alerts.yml use the metrics the
// bridge exports, and their alert names are the alertname labels of the
// webhook alerts, so one route serves both.
func TestPrometheusRulesMatchTheBridge(t *testing.T) {
	src, err := os.ReadFile("../../contrib/prometheus/alerts.yml")
	if err != nil {
		t.Fatal(err)
	}
	names := map[string]bool{}
	for _, m := range regexp.MustCompile(`(?m)^\s*- alert: (\S+)`).FindAllSubmatch(src, -1) {
		names[string(m[1])] = true
	}
	for _, c := range []Condition{NeedsLogin, RefreshFailing, CredentialExpiring, GraphFallback, UpstreamLoginFailures} {
		if !names[c.alertName()] {
			t.Errorf("condition %s: alerts.yml has no alert %s", c, c.alertName())
		}
	}
	// Touch the vectors so that every family is gathered.
	metrics.SetAccountState("rules-test", "ok")
	metrics.SetSendPath("rules-test", "smtp")
	metrics.TokenRefreshes.WithLabelValues("rules-test", "ok")
	metrics.Logins.WithLabelValues("imap", "ok")
	metrics.UpstreamErrors.WithLabelValues("imap", "dial")
	metrics.SessionsActive.WithLabelValues("imap")
	metrics.MaxConnections.WithLabelValues("imap")
	metrics.SendPathSwitches.WithLabelValues("rules-test", "graph")
	fams, err := metrics.Registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	have := map[string]bool{}
	for _, f := range fams {
		have[f.GetName()] = true
	}
	// Added with certificate credentials (tokens' credential list).
	have["oauthbridge_credential_expiry_timestamp_seconds"] = true
	for _, m := range regexp.MustCompile(`\boauthbridge_[a-z_]+`).FindAll(src, -1) {
		if n := string(m); !have[n] {
			t.Errorf("alerts.yml uses %s, which the bridge does not export", n)
		}
	}
}
