package daemon

import (
	"context"
	"io"
	"net/http"
	"strings"
	"testing"

	"github.com/oauthbridge/oauthbridge/config"
	"github.com/oauthbridge/oauthbridge/internal/logging"
)

// A reload applies log_level at once (to loggers handed out before it) and
// names each setting that needs a restart.
func TestReloadAppliesLogLevelAndNamesRestartSettings(t *testing.T) {
	e := newEnv(t)
	e.log = logging.New(e.logs, "json", "info")
	child := e.log.With("proto", "imap") // as a connection's logger
	e.writeConfig(t, map[string]string{"otrs": "pw-1"}, "")
	d := e.start(t)
	defer d.Shutdown(context.Background())

	child.Debug("probe before reload")
	e.writeConfig(t, map[string]string{"otrs": "pw-1"}, `log_level = "debug"`)
	cfg, err := config.Load(e.cfgPath)
	if err != nil {
		t.Fatal(err)
	}
	cfg.IMAP.Listen = []string{"127.0.0.1:1"} // a listener address change
	if err := d.Reload(cfg); err != nil {
		t.Fatal(err)
	}
	child.Debug("probe after reload")

	logs := e.logs.String()
	if strings.Contains(logs, "probe before reload") {
		t.Error("debug line written at log_level info")
	}
	if !strings.Contains(logs, "probe after reload") {
		t.Error("log_level = debug not applied by the reload")
	}
	for _, want := range []string{`"setting":"imap.listen"`, `"needs_restart":["imap.listen"]`, `"applied":["log_level"]`} {
		if !strings.Contains(logs, want) {
			t.Errorf("reload log lacks %s:\n%s", want, logs)
		}
	}
	if strings.Contains(logs, `"setting":"pop3.listen"`) {
		t.Errorf("unchanged setting reported as needing a restart:\n%s", logs)
	}
}

// Every component registers on the daemon's one registry, which /metrics
// serves: the proxies' logins and sessions and the token manager's metrics
// appear side by side, under their unchanged names.
func TestMetricsOneRegistry(t *testing.T) {
	e := newEnv(t)
	e.writeConfig(t, map[string]string{"otrs": "pw-1"}, "")
	d := e.start(t)
	defer d.Shutdown(context.Background())
	c, err := imapLogin(t, d.Addr("imap"), "otrs", "pw-1")
	if err != nil {
		t.Fatal(err)
	}
	c.Logout().Wait()
	resp, err := http.Get("http://" + d.Addr("admin") + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	for _, want := range []string{
		`oauthbridge_logins_total{proto="imap",result="ok"} 1`,
		`oauthbridge_sessions_total{proto="imap"} 1`,
		`oauthbridge_account_state{account="helpdesk",state="ok"} 1`,
		`oauthbridge_token_store_up 1`,
		`go_goroutines`,
	} {
		if !strings.Contains(string(body), want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}
}
