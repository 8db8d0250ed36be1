package config

import (
	"strings"
	"testing"
	"time"
)

func TestGraphPollInterval(t *testing.T) {
	cfg, err := Parse("ok.hcl", []byte(base(t)))
	if err != nil {
		t.Fatal(err)
	}
	if cfg.IMAP.GraphPoll != DefaultIMAPGraphPoll {
		t.Errorf("default graph_poll_interval = %v", cfg.IMAP.GraphPoll)
	}
	cfg, err = Parse("ok.hcl", []byte(base(t)+"imap {\n  graph_poll_interval = \"5s\"\n}\n"))
	if err != nil {
		t.Fatal(err)
	}
	if cfg.IMAP.GraphPoll != 5*time.Second {
		t.Errorf("graph_poll_interval = %v", cfg.IMAP.GraphPoll)
	}
	for bad, want := range map[string]string{`"100ms"`: "graph_poll_interval too short", `"soon"`: "Invalid duration"} {
		_, err := Parse("bad.hcl", []byte(base(t)+"imap {\n  graph_poll_interval = "+bad+"\n}\n"))
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("graph_poll_interval = %s: %v, want %q", bad, err, want)
		}
	}
}
