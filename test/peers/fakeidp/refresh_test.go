package main

import (
	"testing"
	"time"
)

// The audit's verdicts on sequences of presented refresh tokens.
func TestRefreshAudit(t *testing.T) {
	a := newRefreshAudit("")
	a.signedIn("alice", "rt0")
	g := a.grants["alice#1"]

	p := a.present("rt0")
	a.redeemed(p, "rt1", time.Now())
	if g.Reused != 0 || g.Stale != 0 || g.Refreshes != 1 {
		t.Fatalf("one redemption: %+v", *g)
	}
	// A takeover after the holder died: rt0 again.
	p = a.present("rt0")
	a.redeemed(p, "rt1b", time.Now())
	if g.Reused != 1 || g.Stale != 0 {
		t.Fatalf("rt0 again: %+v, want reused 1, stale 0", *g)
	}
	// The stored one (rt1b) is redeemed; then the dead holder's sibling
	// rt1, then the spent rt0.
	p = a.present("rt1b")
	a.redeemed(p, "rt2", time.Now())
	if g.Stale != 0 {
		t.Fatalf("rt1b: %+v", *g)
	}
	a.present("rt1")
	if g.Stale != 1 {
		t.Fatalf("the sibling rt1 after rt1b: stale %d, want 1", g.Stale)
	}
	a.present("rt0")
	if g.Stale != 2 {
		t.Fatalf("rt0 after rt1b: stale %d, want 2", g.Stale)
	}
	if a.present("never-issued") != nil || a.unknown != 1 {
		t.Fatalf("unknown token: unknown %d", a.unknown)
	}
}
