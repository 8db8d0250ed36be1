package alerts

import (
	"fmt"
	"runtime"
	"testing"
	"time"

	"github.com/oauthbridge/oauthbridge/tokens"
)

// After a restart the engine evaluates as soon as the token manager's
// first refresh round ended, not one check_interval (1h here) later, and
// not before it: until then Status shows the tokens as stored (ok), which
// would resolve the refresh_failing alert restored from the previous run
// and miss the account whose sign-in died while the bridge was down. A
// kick (a reload) before the round ended waits for it.
func TestFirstEvaluationWhenTokensSettle(t *testing.T) {
	r := newReceiver(t)
	cfg := loadConfig(t, "", fmt.Sprintf("webhook_url = %q\ncheck_interval = \"1h\"", r.srv.URL))
	file := t.TempDir() + "/alerts.json"

	// The previous run: helpdesk's refresh had been failing for an hour.
	h := newHarness(t, cfg, Options{StateFile: file})
	failing := ok("helpdesk", "helpdesk@contoso.com")
	failing.LastError = "the token endpoint answered 503"
	h.st.set(failing)
	h.st.set(ok("scanner", "scanner@contoso.com"))
	h.changes(t)
	h.clk.Add(time.Hour)
	if a := h.evalOne(t); a.Condition != RefreshFailing || a.Account != "helpdesk" {
		t.Fatalf("before the restart: %+v, want refresh_failing of helpdesk", a)
	}
	r.next(t) // delivered before the stop
	h.e.Close()

	// The restart: both accounts show as stored until the round ends.
	settled := make(chan struct{})
	st := &statuses{}
	st.set(ok("helpdesk", "helpdesk@contoso.com"))
	st.set(ok("scanner", "scanner@contoso.com"))
	status := func() []tokens.AccountStatus {
		select {
		case <-settled:
		default:
			t.Error("the engine read the token status before the first refresh round ended")
		}
		return st.Status()
	}
	h2 := newHarness(t, cfg, Options{StateFile: file, TokensSettled: settled, Status: status})
	h2.clk.Add(2 * time.Hour)
	h2.e.Kick() // e.g. a reload right after the start
	runtime.Gosched()

	// The round ends: helpdesk's refresh still fails, scanner's sign-in was
	// revoked meanwhile.
	st.set(failing)
	dead := ok("scanner", "scanner@contoso.com")
	dead.State, dead.LastError, dead.AADSTS = tokens.StateNeedsLogin, "the refresh token was revoked", 50173
	st.set(dead)
	close(settled)

	// No Evaluate call here: the engine evaluates by itself.
	if got := h2.nextEvaluation(t); len(got) != 1 || got[0].Condition != NeedsLogin || got[0].State != Firing || got[0].Account != "scanner" {
		t.Fatalf("the evaluation at the start announced %+v, want needs_login of scanner only (the restored refresh_failing stays)", got)
	}
	if p := r.next(t); p.Condition != NeedsLogin || p.State != Firing || p.Account != "scanner" {
		t.Fatalf("webhook: %s %s %s", p.Condition, p.State, p.Account)
	}
	// The kick made before the round ended runs next, perhaps while Active
	// is read: with the status unchanged it announces nothing and leaves
	// the active alerts as they are.
	act := map[string]bool{}
	for _, a := range h2.e.Active() {
		act[a.Key] = true
	}
	if len(act) != 2 || !act[key(RefreshFailing, "helpdesk")] || !act[key(NeedsLogin, "scanner")] {
		t.Fatalf("active after the first evaluation: %v", act)
	}
}

// A token manager whose first round never ends (a hung shared store) does
// not keep the engine from evaluating: it evaluates after check_interval,
// as without TokensSettled.
func TestFirstEvaluationWithoutSettling(t *testing.T) {
	r := newReceiver(t)
	cfg := loadConfig(t, "", fmt.Sprintf("webhook_url = %q\ncheck_interval = \"50ms\"", r.srv.URL))
	h := newHarness(t, cfg, Options{TokensSettled: make(chan struct{})})
	dead := ok("scanner", "scanner@contoso.com")
	dead.State = tokens.StateNeedsLogin
	h.st.set(dead)
	if p := r.next(t); p.Condition != NeedsLogin || p.Account != "scanner" {
		t.Fatalf("webhook: %s %s %s", p.Condition, p.State, p.Account)
	}
}

// Accounts that are fine at the start announce nothing.
func TestFirstEvaluationAllFine(t *testing.T) {
	r := newReceiver(t)
	cfg := loadConfig(t, "", fmt.Sprintf("webhook_url = %q\ncheck_interval = \"1h\"", r.srv.URL))
	settled := make(chan struct{})
	h := newHarness(t, cfg, Options{TokensSettled: settled})
	h.st.set(ok("helpdesk", "helpdesk@contoso.com"))
	h.st.set(ok("scanner", "scanner@contoso.com"))
	close(settled)
	if got := h.nextEvaluation(t); len(got) != 0 {
		t.Fatalf("the evaluation at the start announced %+v, want nothing", got)
	}
	r.none(t)
}

// nextEvaluation waits for the next evaluation the engine runs by itself
// and returns what it announced.
func (h *harness) nextEvaluation(t *testing.T) []Alert {
	t.Helper()
	var out []Alert
	for {
		select {
		case ev := <-h.events:
			switch ev.Kind {
			case "evaluated":
				return out
			case string(Firing), string(Resolved):
				out = append(out, ev.Alert)
			}
		case <-time.After(20 * time.Second):
			t.Fatal("no evaluation")
		}
	}
}
