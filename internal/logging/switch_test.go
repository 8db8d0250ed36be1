package logging

import (
	"bytes"
	"encoding/json"
	"strings"
	"sync"
	"testing"
)

type syncBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuf) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuf) take() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := s.b.String()
	s.b.Reset()
	return out
}

// A reload changes level and format for loggers derived before it (a
// connection's child logger keeps its attributes and groups).
func TestControlSetLevelAndFormat(t *testing.T) {
	var buf syncBuf
	root := New(&buf, "json", "info")
	child := root.With("proto", "imap").WithGroup("g").With("conn", "7")

	child.Debug("hidden")
	child.Info("one")
	out := buf.take()
	if strings.Contains(out, "hidden") {
		t.Fatalf("debug line at level info: %s", out)
	}
	var m map[string]any
	if err := json.Unmarshal([]byte(out), &m); err != nil || m["proto"] != "imap" || m["g"].(map[string]any)["conn"] != "7" {
		t.Fatalf("json line = %q (%v)", out, err)
	}

	c := ControlOf(root)
	if c == nil || ControlOf(child) != c {
		t.Fatal("ControlOf does not find the logger's control")
	}
	lv, f := c.Set("text", "debug")
	if !lv || !f {
		t.Fatalf("Set reported level changed %v, format changed %v; want both", lv, f)
	}
	child.Debug("shown")
	out = buf.take()
	if !strings.Contains(out, "level=DEBUG") || !strings.Contains(out, "msg=shown") || !strings.Contains(out, "proto=imap") || !strings.Contains(out, "g.conn=7") {
		t.Fatalf("after reload to text/debug: %q", out)
	}
	if lv, f := c.Set("text", "debug"); lv || f {
		t.Fatalf("Set with the same values reported a change (%v, %v)", lv, f)
	}
	c.Set("json", "error")
	child.Warn("dropped")
	if out := buf.take(); out != "" {
		t.Fatalf("warn line at level error: %q", out)
	}
	if ControlOf(Discard) != nil {
		t.Fatal("ControlOf(Discard) != nil")
	}
}
