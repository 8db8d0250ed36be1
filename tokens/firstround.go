package tokens

// FirstRound returns a channel closed when the background loop's first
// round has ended: every refresh (Exchange and Microsoft Graph) that was
// due when Start ran, or already running then, has finished, successfully
// or not. From then on Status describes what the tokens are worth now;
// before it, an account whose stored token expired while the bridge was
// down still shows as it was stored (ok, or the error of the previous
// run) until its first refresh answers. An account without a due refresh
// (a valid token, no sign-in yet, a needs_login state) adds nothing to the
// round. The channel is never closed without Start, nor when the manager
// is closed before the first round started.
func (m *Manager) FirstRound() <-chan struct{} { return m.round }

// endFirstRound closes the FirstRound channel once the refreshes of the
// first round have finished. It is called once, by the loop.
func (m *Manager) endFirstRound(running []chan struct{}) {
	if len(running) == 0 {
		close(m.round)
		return
	}
	// Not spawned (the manager closed meanwhile): the round never ends.
	m.spawn(func() {
		for _, done := range running {
			<-done // every refresh closes its channel, also when the manager closes
		}
		close(m.round)
	})
}
