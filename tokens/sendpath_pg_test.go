package tokens_test

import (
	"testing"
	"time"
)

// In a shared store the kept send path is written through the row's
// compare-and-swap: a replica that reports a switch after another one
// refreshed does not undo that refresh, later refreshes keep the path,
// and a replica that starts later reports it.
func TestPGSendPathKept(t *testing.T) {
	haSendVia = "auto"
	defer func() { haSendVia = "smtp" }()
	h := newHA(t, 2, nil)
	h.signIn(0)
	a, b := h.replicas[0], h.replicas[1]
	prev := h.row().AccessToken
	due(a)
	eventually(t, "the first replica's refresh in the store", func() bool { return h.row().AccessToken != prev })
	refreshed := h.row()

	since := b.clock.Now()
	recheck := since.Add(6 * time.Hour)
	b.m.SetSendPath(helpdesk, "graph", "535 5.7.139", recheck)
	b.m.Close() // waits for its write
	if row := h.row(); row.AccessToken != refreshed.AccessToken || row.RefreshToken != refreshed.RefreshToken || row.Version <= refreshed.Version {
		t.Fatalf("after the send path write: row %+v, want the refreshed tokens (version %d) in a newer version", row, refreshed.Version)
	}
	check := func(what string, r *replica) {
		t.Helper()
		path, reason, s, re, ok := r.m.SendPath(helpdesk)
		if !ok || path != "graph" || reason != "535 5.7.139" || !s.Equal(since) || !re.Equal(recheck) {
			t.Fatalf("%s: SendPath = %q %q %v %v %v, want graph since %v", what, path, reason, s, re, ok, since)
		}
	}
	check("a replica started after the switch", h.add("replica3"))

	prev = h.row().AccessToken
	due(a)
	eventually(t, "the first replica's second refresh in the store", func() bool { return h.row().AccessToken != prev })
	check("a replica started after another refresh", h.add("replica4"))
	h.noSpentTokens()
}
