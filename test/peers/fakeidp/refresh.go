package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"
)

// refreshAudit watches every POST to the token endpoint on its way to the
// fake, for the high-availability suite (test/ha): it follows each sign-in's
// chain of rotated refresh tokens and counts what a set of replicas sharing
// one token store must never do.
//
//	GET  /test/refresh-stats  per grant (a sign-in, named by its UPN and a
//	                          number): refreshes, their times, re-presented
//	                          and stale refresh tokens; unknown ones; held.
//	POST /test/token-hold     ms=&count= holds the answers of the next count
//	                          refresh_token requests ms milliseconds after the
//	                          fake answered them (the redemption happened, the
//	                          bridge has not got the new token yet).
//
// A refresh token presented again (reused) was already redeemed once: that
// happens when a replica died or stalled between redeeming it and storing
// the result, and another replica took the grant over (Entra accepts it: it
// does not revoke a refresh token when it issues the next). A stale one is
// older than, or a sibling of, one already redeemed: a replica worked from
// an outdated copy. That must never happen.
type refreshAudit struct {
	hc       *http.Client
	fakeBase string

	mu       sync.Mutex
	rts      map[string]*rtInfo
	grants   map[string]*grantStats
	order    []string
	unknown  int
	holdFor  time.Duration
	holdLeft int
	holding  int
	// holdingGrant is the sign-in whose answer was held last.
	holdingGrant string
	held         int
	signins      map[string]int // UPN -> sign-ins so far
}

type rtInfo struct {
	grant     string
	depth     int
	presented int
}

type grantStats struct {
	UPN       string      `json:"upn"`
	Refreshes int         `json:"refreshes"` // refresh_token requests answered 200
	Times     []time.Time `json:"times"`     // when each was presented
	Reused    int         `json:"reused"`
	Stale     int         `json:"stale"`
	maxDepth  int
	lastRT    string
}

func newRefreshAudit(fakeBase string) *refreshAudit {
	return &refreshAudit{hc: &http.Client{Timeout: 30 * time.Second}, fakeBase: fakeBase,
		rts: map[string]*rtInfo{}, grants: map[string]*grantStats{}, signins: map[string]int{}}
}

// isToken reports whether r is a token request to the fake.
func isToken(r *http.Request) bool {
	return r.Method == http.MethodPost && strings.HasSuffix(r.URL.Path, "/oauth2/v2.0/token")
}

func (a *refreshAudit) serveToken(w http.ResponseWriter, r *http.Request) {
	body, err := io.ReadAll(io.LimitReader(r.Body, 1<<20))
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	form, _ := url.ParseQuery(string(body))
	grantType := form.Get("grant_type")
	var parent *rtInfo
	presentedAt := time.Now()
	if grantType == "refresh_token" {
		parent = a.present(form.Get("refresh_token"))
	}
	req, err := http.NewRequestWithContext(r.Context(), http.MethodPost, a.fakeBase+r.URL.Path, bytes.NewReader(body))
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadGateway)
		return
	}
	req.Header.Set("Content-Type", r.Header.Get("Content-Type"))
	resp, err := a.hc.Do(req)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadGateway)
		return
	}
	out, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode == http.StatusOK {
		var tr struct {
			AccessToken  string `json:"access_token"`
			RefreshToken string `json:"refresh_token"`
		}
		_ = json.Unmarshal(out, &tr)
		if grantType == "refresh_token" && parent != nil {
			a.redeemed(parent, tr.RefreshToken, presentedAt)
		} else if tr.RefreshToken != "" && (grantType == "device_code" || grantType == "urn:ietf:params:oauth:grant-type:device_code" || grantType == "authorization_code") {
			a.signedIn(a.upnOf(tr.AccessToken), tr.RefreshToken)
		}
		if grantType == "refresh_token" && parent != nil {
			a.hold(parent.grant)
		}
	}
	for k, v := range resp.Header {
		w.Header()[k] = v
	}
	w.WriteHeader(resp.StatusCode)
	_, _ = w.Write(out)
}

// present records a refresh token presented; nil if it is not one the
// audit saw issued.
func (a *refreshAudit) present(rt string) *rtInfo {
	a.mu.Lock()
	defer a.mu.Unlock()
	info := a.rts[rt]
	if info == nil {
		a.unknown++
		return nil
	}
	g := a.grants[info.grant]
	info.presented++
	switch {
	case info.depth < g.maxDepth, info.depth == g.maxDepth && g.lastRT != "" && g.lastRT != rt:
		g.Stale++
	case info.presented > 1:
		g.Reused++
	}
	if info.depth >= g.maxDepth {
		g.maxDepth, g.lastRT = info.depth, rt
	}
	return info
}

func (a *refreshAudit) redeemed(parent *rtInfo, rt string, at time.Time) {
	a.mu.Lock()
	defer a.mu.Unlock()
	g := a.grants[parent.grant]
	g.Refreshes++
	g.Times = append(g.Times, at)
	if rt != "" {
		a.rts[rt] = &rtInfo{grant: parent.grant, depth: parent.depth + 1}
	}
}

func (a *refreshAudit) signedIn(upn, rt string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.signins[upn]++
	name := fmt.Sprintf("%s#%d", upn, a.signins[upn])
	a.grants[name] = &grantStats{UPN: upn, maxDepth: -1}
	a.order = append(a.order, name)
	a.rts[rt] = &rtInfo{grant: name}
}

// upnOf asks the fake whose access token tok is.
func (a *refreshAudit) upnOf(tok string) string {
	resp, err := a.hc.PostForm(a.fakeBase+"/introspect", url.Values{"token": {tok}})
	if err != nil {
		return "?"
	}
	defer resp.Body.Close()
	var r struct {
		Username string `json:"username"`
	}
	_ = json.NewDecoder(resp.Body).Decode(&r)
	return norm(r.Username)
}

func (a *refreshAudit) hold(grant string) {
	a.mu.Lock()
	if a.holdLeft <= 0 {
		a.mu.Unlock()
		return
	}
	a.holdLeft--
	d := a.holdFor
	a.holding++
	a.holdingGrant = grant
	a.held++
	a.mu.Unlock()
	time.Sleep(d)
	a.mu.Lock()
	a.holding--
	a.mu.Unlock()
}

func (a *refreshAudit) setHold(w http.ResponseWriter, r *http.Request) {
	var ms, count int
	if _, err := fmt.Sscan(r.FormValue("ms"), &ms); err != nil {
		writeJSON(w, http.StatusBadRequest, map[string]any{"error": "ms: not a number"})
		return
	}
	if _, err := fmt.Sscan(r.FormValue("count"), &count); err != nil {
		writeJSON(w, http.StatusBadRequest, map[string]any{"error": "count: not a number"})
		return
	}
	a.mu.Lock()
	a.holdFor, a.holdLeft = time.Duration(ms)*time.Millisecond, count
	a.mu.Unlock()
	writeJSON(w, http.StatusOK, map[string]any{"ok": true})
}

// RefreshStats is the body of GET /test/refresh-stats.
type RefreshStats struct {
	Grants       map[string]*grantStats `json:"grants"`
	Order        []string               `json:"order"`
	Unknown      int                    `json:"unknown"` // refresh tokens presented that were never issued
	Holding      int                    `json:"holding"` // answers held back now
	HoldingGrant string                 `json:"holding_grant"`
	Held         int                    `json:"held"`
}

func (a *refreshAudit) stats(w http.ResponseWriter, _ *http.Request) {
	a.mu.Lock()
	defer a.mu.Unlock()
	st := RefreshStats{Grants: map[string]*grantStats{}, Order: append([]string(nil), a.order...), Unknown: a.unknown, Holding: a.holding, HoldingGrant: a.holdingGrant, Held: a.held}
	for k, g := range a.grants {
		c := *g
		c.Times = append([]time.Time(nil), g.Times...)
		st.Grants[k] = &c
	}
	writeJSON(w, http.StatusOK, st)
}
