package daemon

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/oauthbridge/oauthbridge/config"
)

// A listener that dies while the bridge runs (here: closed behind the
// daemon's back, as a broken socket would be) makes the bridge not ready,
// and Run returns an error naming the listener, so the process exits
// non-zero and systemd restarts it.
func TestListenerDeathExitsRun(t *testing.T) {
	e := newEnv(t)
	e.writeConfig(t, map[string]string{"otrs": "pw-otrs-3"}, "")
	cfg, err := config.Load(e.cfgPath)
	if err != nil {
		t.Fatal(err)
	}
	d, err := New(cfg, Options{Logger: e.log})
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() {
		done <- Run(context.Background(), d, func() (*config.Config, error) { return config.Load(e.cfgPath) })
	}()
	waitFor(t, func() bool { return d.Addr("pop3") != "" && d.ready.Load() })
	if err := d.readyErr(); err != nil {
		t.Fatalf("readyErr() = %v before the failure", err)
	}
	addr := d.Addr("pop3")
	d.mu.Lock()
	for _, l := range d.listeners {
		if l.proto == "pop3" && !l.implicitTLS {
			l.ln.Close()
		}
	}
	d.mu.Unlock()

	select {
	case err := <-done:
		if err == nil || !strings.Contains(err.Error(), "pop3 listener "+addr) {
			t.Errorf("Run() = %v, want an error naming the pop3 listener %s", err, addr)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("Run did not return after a listener died")
	}
	if err := d.readyErr(); err == nil || !strings.Contains(err.Error(), addr) {
		t.Errorf("readyErr() = %v, want the listener failure", err)
	}
	if logs := e.logs.String(); !strings.Contains(logs, "listener stopped") || !strings.Contains(logs, addr) {
		t.Errorf("no log line names the stopped listener:\n%s", logs)
	}
}
