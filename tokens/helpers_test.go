package tokens_test

import (
	"bytes"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/oauthbridge/oauthbridge/config"
	"github.com/oauthbridge/oauthbridge/internal/metrics"
)

// testRegistry is what every manager of these tests registers its metrics
// on (Options.Registerer), so that the tests read them in testMetrics, as
// the daemon's single registry does (replicas of the HA tests add up).
var (
	testRegistry = prometheus.NewRegistry()
	testMetrics  = metrics.New(testRegistry)
)

// testAccount describes one account block of a test configuration.
type testAccount struct {
	name, mailbox, delegate, flow string
	sendVia, readVia              string // "" : the defaults
}

// testConfig builds a configuration with one provider "p" (tenant "t",
// client "app1" with secret unless secret is "") and the given accounts.
func testConfig(t *testing.T, dir, authority, secret string, accts ...testAccount) *config.Config {
	t.Helper()
	var b strings.Builder
	fmt.Fprintf(&b, "state_dir = %q\n", dir)
	fmt.Fprintf(&b, "provider \"p\" {\n  tenant = \"t\"\n  client_id = \"app1\"\n  authority = %q\n", authority)
	if secret != "" {
		fmt.Fprintf(&b, "  client_secret = %q\n", secret)
	}
	b.WriteString("}\n")
	for _, a := range accts {
		fmt.Fprintf(&b, "account %q {\n  provider = \"p\"\n  mailbox = %q\n", a.name, a.mailbox)
		if a.delegate != "" {
			fmt.Fprintf(&b, "  delegate = %q\n", a.delegate)
		}
		if a.flow != "" {
			fmt.Fprintf(&b, "  flow = %q\n", a.flow)
		}
		if a.sendVia != "" {
			fmt.Fprintf(&b, "  send_via = %q\n", a.sendVia)
		}
		if a.readVia != "" {
			fmt.Fprintf(&b, "  read_via = %q\n", a.readVia)
		}
		b.WriteString("}\n")
	}
	cfg, err := config.Parse("test.hcl", []byte(b.String()))
	if err != nil {
		t.Fatalf("config.Parse() = %v\n%s", err, b.String())
	}
	return cfg
}

// syncBuffer collects log output from concurrent goroutines.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func testLogger() (*slog.Logger, *syncBuffer) {
	buf := &syncBuffer{}
	return slog.New(slog.NewTextHandler(buf, &slog.HandlerOptions{Level: slog.LevelDebug})), buf
}

// fakeClock is a settable clock.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func newFakeClock() *fakeClock { return &fakeClock{t: time.Now()} }

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) Add(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}
