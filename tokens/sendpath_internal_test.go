package tokens

import (
	"encoding/json"
	"path/filepath"
	"testing"
	"time"
)

// An entry written by a version without the kept send path loads as
// before; one with it round-trips.
func TestStoreEntryWithoutSendPath(t *testing.T) {
	old := []byte(`{"version":1,"accounts":{"a":{"refresh_token":"rt","access_token":"at","expiry":"2026-11-26T04:00:00Z","state":"ok","login_id":"x","login_at":"2026-11-26T03:00:00Z","binding":"b","graph_scope":"s"}}}`)
	var sf storeFile
	if err := json.Unmarshal(old, &sf); err != nil {
		t.Fatalf("old entry: %v", err)
	}
	e := sf.Accounts["a"]
	if e == nil || e.RefreshToken != "rt" || e.Binding != "b" || e.GraphScope != "s" || e.KeptPath != nil {
		t.Fatalf("old entry loaded as %+v", e)
	}

	dir := filepath.Join(t.TempDir(), "state")
	s, _, err := openStore(dir, "")
	if err != nil {
		t.Fatal(err)
	}
	since := time.Date(2026, 11, 26, 3, 0, 0, 123, time.UTC)
	e.KeptPath = &keptPath{Path: "graph", Reason: "r", Since: since, RecheckAt: since.Add(6 * time.Hour)}
	if _, err := s.update(map[string]*entry{"a": e, "old": {RefreshToken: "rt2", Binding: "b"}}); err != nil {
		t.Fatal(err)
	}
	_, got, err := openStore(dir, "")
	if err != nil {
		t.Fatal(err)
	}
	if k := got["a"].KeptPath; k == nil || !k.same(*e.KeptPath) {
		t.Errorf("kept path read back as %+v, want %+v", k, e.KeptPath)
	}
	if got["old"].KeptPath != nil || got["old"].RefreshToken != "rt2" {
		t.Errorf("entry without a send path read back as %+v", got["old"])
	}
}
