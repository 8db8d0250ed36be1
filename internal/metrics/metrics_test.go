package metrics

import (
	"testing"

	"github.com/prometheus/client_golang/prometheus/testutil"
)

// Two components building their Metrics on one registry share the
// collectors; two registries are independent.
func TestNewSharesOneRegistry(t *testing.T) {
	reg := NewRegistry()
	a, b := New(reg), New(reg)
	a.Logins.WithLabelValues("imap", "ok").Inc()
	b.Logins.WithLabelValues("imap", "ok").Inc()
	if v := testutil.ToFloat64(a.Logins.WithLabelValues("imap", "ok")); v != 2 {
		t.Fatalf("shared counter = %v, want 2", v)
	}
	if v := testutil.ToFloat64(a.TokenStoreUp); v != 1 {
		t.Fatalf("token_store_up = %v, want 1", v)
	}
	other := New(nil)
	if v := testutil.ToFloat64(other.Logins.WithLabelValues("imap", "ok")); v != 0 {
		t.Fatalf("a private registry sees %v logins", v)
	}
	n, err := testutil.GatherAndCount(reg, "oauthbridge_logins_total", "oauthbridge_token_store_up")
	if err != nil || n != 2 {
		t.Fatalf("GatherAndCount = %d, %v", n, err)
	}
}
