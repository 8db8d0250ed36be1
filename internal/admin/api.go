package admin

import (
	"context"
	"encoding/json"
	"net/http"
	"sort"
	"sync"
	"time"

	"github.com/oauthbridge/oauthbridge/tokens"
)

// DeviceResult is the body of GET /api/accounts/{name}/device-login: whether
// the last device-code login started through the API has finished, and its
// error ("" on success or while running).
type DeviceResult struct {
	Done    bool      `json:"done"`
	Error   string    `json:"error,omitempty"`
	Started time.Time `json:"started"`
}

type deviceState struct {
	mu  sync.Mutex
	res DeviceResult
}

// apiError is the body of every non-2xx API answer.
type apiError struct {
	Error string `json:"error"`
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	enc.Encode(v)
}

func (h *handler) apiAccounts(w http.ResponseWriter, _ *http.Request) {
	st := h.opts.Tokens.Status()
	if st == nil {
		st = []tokens.AccountStatus{}
	}
	sort.SliceStable(st, func(i, j int) bool { return st[i].Account < st[j].Account })
	writeJSON(w, http.StatusOK, st)
}

func (h *handler) apiAccount(w http.ResponseWriter, r *http.Request) {
	s, ok := h.findAccount(r.PathValue("name"))
	if !ok {
		writeJSON(w, http.StatusNotFound, apiError{"no such account"})
		return
	}
	writeJSON(w, http.StatusOK, s)
}

// apiDeviceStart starts a device-code login in the daemon, so the refresh
// token lands in the daemon's store, and returns what the person must open
// and type. The login's final result is kept for apiDeviceResult.
func (h *handler) apiDeviceStart(w http.ResponseWriter, r *http.Request) {
	if r.Header.Get(APIRequestHeader) == "" {
		h.log.Warn("admin: API POST without "+APIRequestHeader, "remote", r.RemoteAddr)
		writeJSON(w, http.StatusForbidden, apiError{"POST to /api needs the " + APIRequestHeader + " header"})
		return
	}
	name := r.PathValue("name")
	if _, ok := h.findAccount(name); !ok {
		writeJSON(w, http.StatusNotFound, apiError{"no such account"})
		return
	}
	// The login outlives this request: the person types the code within
	// minutes while the CLI polls.
	ctx, cancel := context.WithTimeout(context.WithoutCancel(r.Context()), DefaultDeviceLoginTimeout)
	dl, done, err := h.opts.Tokens.StartDeviceLogin(ctx, name)
	if err != nil {
		cancel()
		h.log.Error("admin: device login", "account", name, "error", err)
		writeJSON(w, http.StatusBadRequest, apiError{err.Error()})
		return
	}
	ds := &deviceState{res: DeviceResult{Started: h.opts.Now()}}
	h.devMu.Lock()
	h.device[name] = ds
	h.devMu.Unlock()
	go func() {
		defer cancel()
		var err error
		select {
		case err = <-done:
		case <-ctx.Done():
			err = ctx.Err()
		}
		if err != nil {
			h.log.Error("admin: device login failed", "account", name, "error", err)
		} else {
			h.log.Info("admin: device login complete", "account", name)
		}
		ds.mu.Lock()
		ds.res.Done = true
		if err != nil {
			ds.res.Error = err.Error()
		}
		ds.mu.Unlock()
	}()
	h.log.Info("admin: device login started", "account", name, "remote", r.RemoteAddr)
	writeJSON(w, http.StatusOK, dl)
}

func (h *handler) apiDeviceResult(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("name")
	h.devMu.Lock()
	ds := h.device[name]
	h.devMu.Unlock()
	if ds == nil {
		writeJSON(w, http.StatusNotFound, apiError{"no device login was started for this account"})
		return
	}
	ds.mu.Lock()
	res := ds.res
	ds.mu.Unlock()
	writeJSON(w, http.StatusOK, res)
}
