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
	reg := metrics.NewRegistry()
	m := metrics.New(reg)
	reg.MustRegister(metrics.NewReadyGauge(func() error { return nil }))
	m.SetAccountState("rules-test", "ok")
	m.SetSendPath("rules-test", "smtp")
	m.TokenRefreshes.WithLabelValues("rules-test", "ok")
	m.Logins.WithLabelValues("imap", "ok")
	m.UpstreamErrors.WithLabelValues("imap", "dial")
	m.SessionsActive.WithLabelValues("imap")
	m.MaxConnections.WithLabelValues("imap")
	m.SendPathSwitches.WithLabelValues("rules-test", "graph")
	m.CredentialExpiry.WithLabelValues("p", "certificate", "AB12")
	fams, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	have := map[string]bool{}
	for _, f := range fams {
		have[f.GetName()] = true
	}
	for _, m := range regexp.MustCompile(`\boauthbridge_[a-z_]+`).FindAll(src, -1) {
		if n := string(m); !have[n] {
			t.Errorf("alerts.yml uses %s, which the bridge does not export", n)
		}
	}
}
