package admin

import (
	"context"
	"net/http"
	"time"

	"github.com/oauthbridge/oauthbridge/internal/doctor"
)

// DefaultDoctorTimeout bounds POST /api/doctor: below the daemon's admin
// write timeout (60 s), so that a slow upstream gives a report whose late
// checks failed on the deadline rather than a cut connection.
const DefaultDoctorTimeout = 50 * time.Second

// apiDoctor runs `oauthbridge doctor` inside the daemon: its checks take
// their tokens from the daemon's own token manager, so a doctor run next
// to the service never redeems a refresh token itself (with a shared or
// file store a second refresher would rotate the refresh token behind the
// daemon's back). ?account=NAME checks one account; without it, all. The
// body is a doctor.Report.
func (h *handler) apiDoctor(w http.ResponseWriter, r *http.Request) {
	if r.Header.Get(APIRequestHeader) == "" {
		h.log.Warn("admin: API POST without "+APIRequestHeader, "remote", r.RemoteAddr)
		writeJSON(w, http.StatusForbidden, apiError{"POST to /api needs the " + APIRequestHeader + " header"})
		return
	}
	src, ok := h.opts.Tokens.(doctor.Tokens)
	if !ok {
		writeJSON(w, http.StatusNotImplemented, apiError{"this daemon's token manager cannot run the doctor"})
		return
	}
	cfg := h.config()
	var names []string
	if a := r.URL.Query().Get("account"); a != "" {
		if cfg.AccountByName[a] == nil {
			writeJSON(w, http.StatusNotFound, apiError{"no such account in the running configuration (reload the service after editing it)"})
			return
		}
		names = []string{a}
	}
	ctx, cancel := context.WithTimeout(r.Context(), DefaultDoctorTimeout)
	defer cancel()
	rep := doctor.Run(ctx, cfg, names, doctor.Options{Tokens: src, Source: "daemon"})
	h.log.Info("admin: doctor run", "remote", r.RemoteAddr, "accounts", len(rep.Accounts), "ok", rep.OK)
	writeJSON(w, http.StatusOK, rep)
}
