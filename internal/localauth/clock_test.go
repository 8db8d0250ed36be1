package localauth

import (
	"sort"
	"sync"
	"testing"
	"time"
)

// fakeClock is a manual clock for Options.Now and Options.After. Tests move
// it with Advance or step it as a discrete-event simulation with Run: time
// only moves when every goroutine under test is blocked on one of its
// timers, so "within 15 s" is measured on this clock, not on the wall.
type fakeClock struct {
	mu     sync.Mutex
	cond   *sync.Cond
	now    time.Time
	timers []*fakeTimer
}

type fakeTimer struct {
	at time.Time
	ch chan time.Time
}

func newFakeClock() *fakeClock {
	c := &fakeClock{now: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)}
	c.cond = sync.NewCond(&c.mu)
	return c
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) After(d time.Duration) <-chan time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	ch := make(chan time.Time, 1)
	if d <= 0 {
		ch <- c.now
		return ch
	}
	c.timers = append(c.timers, &fakeTimer{at: c.now.Add(d), ch: ch})
	c.cond.Broadcast()
	return ch
}

// Advance moves the clock by d and fires the timers that are due.
func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.setLocked(c.now.Add(d))
}

func (c *fakeClock) setLocked(t time.Time) {
	c.now = t
	keep := c.timers[:0]
	for _, tm := range c.timers {
		if !tm.at.After(t) {
			tm.ch <- t
		} else {
			keep = append(keep, tm)
		}
	}
	c.timers = keep
	c.cond.Broadcast()
}

// Kick wakes WaitTimers after a change it must re-evaluate.
func (c *fakeClock) Kick() {
	c.mu.Lock()
	c.cond.Broadcast()
	c.mu.Unlock()
}

// WaitTimers blocks until at least want() timers are pending (want is
// re-evaluated on every change), or fails the test after a generous
// wall-clock guard (a hang, not a timing assertion).
func (c *fakeClock) WaitTimers(t testing.TB, want func() int) {
	t.Helper()
	guard := time.AfterFunc(60*time.Second, c.Kick)
	defer guard.Stop()
	deadline := time.Now().Add(60 * time.Second)
	c.mu.Lock()
	defer c.mu.Unlock()
	for len(c.timers) < want() {
		if time.Now().After(deadline) {
			t.Fatalf("fake clock: %d timers pending, want %d: a goroutine is stuck", len(c.timers), want())
		}
		c.cond.Wait()
	}
}

// Step waits until want() timers are pending, then moves the clock to the
// earliest deadline and fires it.
func (c *fakeClock) Step(t testing.TB, want func() int) {
	t.Helper()
	c.WaitTimers(t, want)
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.timers) == 0 {
		return
	}
	sort.Slice(c.timers, func(i, j int) bool { return c.timers[i].at.Before(c.timers[j].at) })
	c.setLocked(c.timers[0].at)
}

func (c *fakeClock) Pending() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.timers)
}
