// Package admin is oauthbridge's admin listener: an http.Handler the daemon
// mounts on admin.listen. It serves
//
//	GET  /healthz                          200 "ok" while the process runs (open)
//	GET  /readyz                           200, or 503 with the reason: not serving yet, or a
//	                                       delegated account needs a sign-in (see below)
//	GET  /metrics                          Prometheus metrics of internal/metrics (see below)
//	GET  /                                 the status page: one row per account, Connect buttons
//	POST /connect/{account}                starts a browser sign-in (303 to Entra)
//	GET  /oauth/callback                   Entra's redirect back; protected by the OAuth state
//	GET  /api/accounts                     []tokens.AccountStatus as JSON
//	GET  /api/accounts/{name}              one tokens.AccountStatus
//	POST /api/accounts/{name}/device-login starts a device-code login, returns tokens.DeviceLogin
//	GET  /api/accounts/{name}/device-login {"done":bool,"error":"..."} of the last one started
//
// When the admin block has a password_hash, the status page, /connect,
// /api, /readyz and /metrics (the last two unless metrics_public = true)
// require HTTP Basic authentication, checked through internal/localauth
// (bcrypt, cached successes, throttled failures). Without one (the config
// allows that only on loopback) everything is open, and requests must name a
// loopback host or the public_url host, so a DNS-rebinding page cannot reach
// the listener.
//
// Every POST must pass net/http's cross-origin check (Sec-Fetch-Site /
// Origin). In addition a POST from the status page carries a CSRF token, an
// HMAC with a per-process key over a random cookie (double submit), and a
// POST to /api must carry the APIRequestHeader header, which a browser cannot
// send cross-origin without a CORS preflight that this handler never grants.
//
// Pages are plain HTML from html/template with inline CSS and no script or
// external asset, under Content-Security-Policy default-src 'none'. Nothing
// the handler renders or returns contains a token or a secret.
package admin
