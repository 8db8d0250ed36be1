package admin

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"net/http"
	"net/url"
	"strconv"

	"github.com/oauthbridge/oauthbridge/config"
	"github.com/oauthbridge/oauthbridge/internal/localauth"
)

const (
	csrfCookie = "oauthbridge_csrf"
	csrfField  = "csrf"
	// retryAfterThrottled is the Retry-After sent with 429 when failed
	// logins from the address are being throttled.
	retryAfterThrottled = 5
)

// protect wraps the status page, /connect and /api: Basic auth when the
// admin block has a password hash, a Host check when it has none, and the
// cross-origin check for POSTs in both cases.
func (h *handler) protect(next http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		cfg := h.config()
		a := cfg.Admin
		if a.PasswordHash == "" {
			if !hostAllowed(cfg, r.Host) {
				h.log.Warn("admin: request for a foreign host refused", "remote", r.RemoteAddr, "host", r.Host)
				http.Error(w, "unknown host (set admin public_url when the page is reached under another name)", http.StatusMisdirectedRequest)
				return
			}
		} else if !h.authorized(w, r, a) {
			return
		}
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			h.trustOrigin(a.PublicURL)
			if err := h.cop.Check(r); err != nil {
				h.log.Warn("admin: cross-origin request refused", "remote", r.RemoteAddr, "path", r.URL.Path,
					"origin", r.Header.Get("Origin"), "sec_fetch_site", r.Header.Get("Sec-Fetch-Site"))
				http.Error(w, "cross-origin request refused", http.StatusForbidden)
				return
			}
			r.Body = http.MaxBytesReader(w, r.Body, DefaultMaxBodyBytes)
		}
		next(w, r)
	}
}

// monitored wraps /readyz and /metrics. They name accounts and show token
// state, so with a password_hash they need it too, unless the admin block
// sets metrics_public (Prometheus and most probes can send Basic auth).
func (h *handler) monitored(next http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		a := h.config().Admin
		if a.PasswordHash != "" && !a.MetricsPublic && !h.authorized(w, r, a) {
			return
		}
		next(w, r)
	}
}

// authorized checks Basic credentials and answers 401/429 itself when they
// do not pass.
func (h *handler) authorized(w http.ResponseWriter, r *http.Request, a *config.AdminBlock) bool {
	user, pass, ok := r.BasicAuth()
	if !ok {
		challenge(w)
		return false
	}
	_, err := h.authenticator(a).Check(r.Context(), user, pass, remoteIP(r))
	switch {
	case err == nil:
		return true
	case errors.Is(err, localauth.ErrThrottled):
		h.log.Warn("admin: login throttled", "remote", r.RemoteAddr, "user", clip(user, 64))
		w.Header().Set("Retry-After", strconv.Itoa(retryAfterThrottled))
		http.Error(w, "too many login attempts for this user; password not checked, wait and try again", http.StatusTooManyRequests)
	case errors.Is(err, localauth.ErrBusy):
		h.log.Warn("admin: login not checked, bridge busy", "remote", r.RemoteAddr, "user", clip(user, 64), "error", err)
		w.Header().Set("Retry-After", strconv.Itoa(retryAfterThrottled))
		http.Error(w, "bridge busy checking passwords; wait and try again", http.StatusServiceUnavailable)
	case errors.Is(err, localauth.ErrInvalid):
		h.log.Warn("admin: login failed", "remote", r.RemoteAddr, "user", clip(user, 64))
		challenge(w)
	default: // the client went away
		http.Error(w, "authentication aborted", http.StatusServiceUnavailable)
	}
	return false
}

func challenge(w http.ResponseWriter) {
	w.Header().Set("WWW-Authenticate", `Basic realm="oauthbridge", charset="UTF-8"`)
	http.Error(w, "authentication required", http.StatusUnauthorized)
}

// authenticator returns the localauth checker for the admin credentials,
// built on first use and updated when a reload changes them. It holds one
// synthetic user, so localauth's cache, throttling and bcrypt limit apply.
func (h *handler) authenticator(a *config.AdminBlock) *localauth.Authenticator {
	h.authMu.Lock()
	defer h.authMu.Unlock()
	hash := a.PasswordHash.Reveal()
	if h.auth != nil && h.authUser == a.Username && h.authHash == hash {
		return h.auth
	}
	cfg := &config.Config{Users: []*config.User{{Name: a.Username, PasswordHash: a.PasswordHash}}}
	if h.auth == nil {
		h.auth = localauth.New(cfg, h.opts.Auth)
	} else {
		h.auth.SetUsers(cfg)
	}
	h.authUser, h.authHash = a.Username, hash
	return h.auth
}

// trustOrigin lets POSTs whose Origin is public_url through the
// cross-origin check, for a page served behind a reverse proxy that
// rewrites Host.
func (h *handler) trustOrigin(publicURL string) {
	u, err := url.Parse(publicURL)
	if err != nil || u.Scheme == "" || u.Host == "" {
		return
	}
	o := u.Scheme + "://" + u.Host
	h.trustedMu.Lock()
	defer h.trustedMu.Unlock()
	if !h.trusted[o] {
		if h.cop.AddTrustedOrigin(o) == nil {
			h.trusted[o] = true
		}
	}
}

// csrfToken returns the form token for the browser's CSRF cookie, setting
// a fresh cookie when it has none: the token is an HMAC of the cookie value
// with a per-process key, so a forged form needs both the cookie (which
// another site cannot read or set) and the key.
func (h *handler) csrfToken(w http.ResponseWriter, r *http.Request, cfg *config.Config) string {
	if c, err := r.Cookie(csrfCookie); err == nil && len(c.Value) >= 32 {
		return h.csrfMAC(c.Value)
	}
	var b [32]byte
	rand.Read(b[:])
	v := base64.RawURLEncoding.EncodeToString(b[:])
	secure := r.TLS != nil
	if u, err := url.Parse(cfg.Admin.PublicURL); err == nil && u.Scheme == "https" && u.Host == r.Host {
		secure = true
	}
	http.SetCookie(w, &http.Cookie{
		Name: csrfCookie, Value: v, Path: "/", HttpOnly: true, Secure: secure,
		// Lax: the cookie survives the top-level redirect back from Entra;
		// cross-site POSTs never carry it.
		SameSite: http.SameSiteLaxMode,
	})
	return h.csrfMAC(v)
}

func (h *handler) csrfMAC(cookie string) string {
	m := hmac.New(sha256.New, h.csrfKey[:])
	m.Write([]byte("oauthbridge-admin-csrf\x00"))
	m.Write([]byte(cookie))
	return base64.RawURLEncoding.EncodeToString(m.Sum(nil))
}

// csrfValid checks the form token of a POST against its cookie.
func (h *handler) csrfValid(r *http.Request) bool {
	c, err := r.Cookie(csrfCookie)
	if err != nil || len(c.Value) < 32 {
		return false
	}
	got := r.PostFormValue(csrfField)
	return got != "" && hmac.Equal([]byte(got), []byte(h.csrfMAC(c.Value)))
}

func clip(s string, n int) string {
	if len(s) > n {
		return s[:n] + "..."
	}
	return s
}
