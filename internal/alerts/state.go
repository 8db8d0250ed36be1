package alerts

import (
	"encoding/json"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"time"
)

// StateFileName is the file in state_dir that keeps the firing alerts
// across restarts: a condition still present after a restart is not
// announced again, and one that cleared while the bridge was down is
// announced as resolved.
const StateFileName = "alerts.json"

type stateFile struct {
	Active []Alert `json:"active"`
}

// load reads the firing alerts of the previous run. Callers hold e.mu.
func (e *Engine) loadLocked() {
	if e.opts.StateFile == "" {
		return
	}
	b, err := os.ReadFile(e.opts.StateFile)
	if errors.Is(err, fs.ErrNotExist) {
		return
	}
	var st stateFile
	if err == nil {
		err = json.Unmarshal(b, &st)
	}
	if err != nil {
		e.log.Warn("alerts: cannot read the alert state of the previous run; conditions still present are announced again", "file", e.opts.StateFile, "error", err)
		return
	}
	now := e.opts.Now()
	for _, a := range st.Active {
		if a.Key == "" {
			continue
		}
		e.active[a.Key] = a
		if a.Condition == UpstreamLoginFailures && a.Account != "" {
			// The failures themselves are not kept: the alert stays for
			// one upstream_login_window unless a login works.
			e.restored[a.Account] = now
		}
	}
}

// saveLocked writes the firing alerts (atomically). Callers hold e.mu.
func (e *Engine) saveLocked() {
	if e.opts.StateFile == "" {
		return
	}
	st := stateFile{Active: make([]Alert, 0, len(e.active))}
	for _, a := range e.active {
		st.Active = append(st.Active, a)
	}
	b, _ := json.Marshal(st)
	tmp, err := os.CreateTemp(filepath.Dir(e.opts.StateFile), ".alerts-*.tmp")
	if err == nil {
		_, err = tmp.Write(b)
		if cerr := tmp.Close(); err == nil {
			err = cerr
		}
		if err == nil {
			err = os.Rename(tmp.Name(), e.opts.StateFile)
		}
		if err != nil {
			os.Remove(tmp.Name())
		}
	}
	if err != nil {
		if e.saveErr != err.Error() {
			e.log.Warn("alerts: cannot save the alert state; after a restart conditions still present are announced again", "file", e.opts.StateFile, "error", err)
		}
		e.saveErr = err.Error()
		return
	}
	e.saveErr = ""
}

// restoredWindow reports whether an upstream_login_failures alert restored
// from the previous run should stay firing. Callers hold e.mu.
func (e *Engine) restoredFiring(account string, now time.Time, window time.Duration) bool {
	t, ok := e.restored[account]
	if !ok {
		return false
	}
	if now.Sub(t) > window {
		delete(e.restored, account)
		return false
	}
	return true
}
