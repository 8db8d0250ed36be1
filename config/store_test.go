package config

import (
	"fmt"
	"strings"
	"testing"
	"time"
)

func TestStoreBlock(t *testing.T) {
	cfg, err := Parse("ok.hcl", []byte(base(t)))
	if err != nil {
		t.Fatal(err)
	}
	if s := cfg.Store; s == nil || s.Type != StoreFile || s.Shared() || s.Lease != DefaultLeaseDuration {
		t.Fatalf("default store = %+v, want the file store", s)
	}

	t.Setenv("OAUTHBRIDGE_TEST_DSN", "postgres://ob:pa55-Word@db.example.org/ob")
	cfg, err = Parse("pg.hcl", []byte(base(t)+`store {
  type = "postgres"
  dsn  = env("OAUTHBRIDGE_TEST_DSN")
  replica = "bridge-a"
}
`))
	if err != nil {
		t.Fatal(err)
	}
	s := cfg.Store
	if !s.Shared() || s.DSN.Reveal() != "postgres://ob:pa55-Word@db.example.org/ob" || s.Replica != "bridge-a" ||
		s.Lease != DefaultLeaseDuration || s.Heartbeat != DefaultLeaseHeartbeat || s.Poll != DefaultStorePoll {
		t.Fatalf("store = %+v", s)
	}
	if out := fmt.Sprintf("%v %+v %#v", s.DSN, *s, s.DSN); strings.Contains(out, "pa55-Word") {
		t.Fatalf("the DSN's password shows when printed: %s", out)
	}

	cfg, err = Parse("pg.hcl", []byte(base(t)+"store {\n  type = \"postgres\"\n  dsn = \"postgres://x@y/z\"\n  lease_duration = \"2m\"\n  lease_heartbeat = \"20s\"\n  poll_interval = \"1s\"\n}\n"))
	if err != nil {
		t.Fatal(err)
	}
	if s := cfg.Store; s.Lease != 2*time.Minute || s.Heartbeat != 20*time.Second || s.Poll != time.Second {
		t.Fatalf("durations = %+v", s)
	}
}

func TestStoreDiagnostics(t *testing.T) {
	cases := []struct {
		name, extra string
		want        []string
	}{
		{"postgres without dsn", "store {\n  type = \"postgres\"\n}\n", []string{"Missing dsn", "credential(", "line 14"}},
		{"unknown type", "store {\n  type = \"mysql\"\n}\n", []string{"Invalid store type", `"file"`, `"postgres"`, "line 15"}},
		{"dsn with file", "store {\n  dsn = \"postgres://x@y/z\"\n}\n", []string{"dsn without a database store", "line 15"}},
		{"heartbeat too long", "store {\n  type = \"postgres\"\n  dsn = \"postgres://x@y/z\"\n  lease_duration = \"10s\"\n  lease_heartbeat = \"6s\"\n}\n", []string{"lease_heartbeat too long", "at most half"}},
		{"bad lease", "store {\n  type = \"postgres\"\n  dsn = \"postgres://x@y/z\"\n  lease_duration = \"forever\"\n}\n", []string{"Invalid duration", "lease_duration"}},
		{"unset dsn env", "store {\n  type = \"postgres\"\n  dsn = env(\"OAUTHBRIDGE_TEST_UNSET_DSN\")\n}\n", []string{"OAUTHBRIDGE_TEST_UNSET_DSN", "is not set"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			out := diagFor(t, base(t)+tc.extra)
			for _, w := range tc.want {
				if !strings.Contains(out, w) {
					t.Errorf("diagnostics lack %q:\n%s", w, out)
				}
			}
		})
	}
}
