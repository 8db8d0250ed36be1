package daemon

import (
	"context"
	"testing"
	"time"

	"github.com/oauthbridge/oauthbridge/config"
)

// Graph-served IMAP sessions get the configured imap { idle_timeout },
// the one spliced sessions get, including after a reload.
func TestGraphIMAPIdleTimeoutFromConfig(t *testing.T) {
	e := newEnv(t)
	e.writeConfig(t, map[string]string{"otrs": "pw-1"}, "")
	d := e.start(t)
	defer d.Shutdown(context.Background())
	cfg, err := config.Load(e.cfgPath)
	if err != nil {
		t.Fatal(err)
	}
	cfg.IMAP.Limits.IdleTimeout = 47 * time.Minute
	if err := d.Reload(cfg); err != nil {
		t.Fatal(err)
	}
	if got := d.graphIMAP.srv.IdleTimeout(); got != 47*time.Minute {
		t.Errorf("Graph-served IMAP idle timeout = %v, want imap { idle_timeout } = 47m", got)
	}
}
