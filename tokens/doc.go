// Package tokens owns every OAuth concern of oauthbridge: it keeps each
// account's Microsoft 365 access token valid, serves it to the IMAP, POP3
// and SMTP proxies through Source, runs the sign-in flows (device code,
// browser authorization code + PKCE) and keeps refresh tokens in one
// encrypted file.
//
// Tokens. A delegated account holds a refresh token from a sign-in; an
// app-flow account uses client credentials. A cached access token is
// handed out with no token request while it is valid minus a small safety
// margin. A background loop refreshes ahead of expiry (10 min, clamped to a
// quarter of the lifetime, plus jitter) and idle delegated accounts at
// least every 72 h, so the 90-day inactivity limit is never reached.
// Concurrent demands share one token request. Temporary failures (network,
// 5xx, 429) back off exponentially while the current token keeps serving;
// permanent ones put the account in needs_login or failing, are logged
// once, and stop the requests until a sign-in or a reload. The AADSTS
// table in aadsts.go says what each Entra error means and how to fix it.
//
// The token endpoint is called directly (postForm/tokenRequest) rather than
// through oauth2.Config.TokenSource and DeviceAccessToken: every request is
// then bound to a context and a timeout, device-code polling survives a
// network blip and has an injectable sleeper, rotated refresh tokens are
// persisted before any other use, and expiry follows the injected clock.
// x/oauth2 still builds the authorize URL and the PKCE verifier, and its
// RetrieveError carries endpoint errors.
//
// Resources. One sign-in serves Exchange Online (IMAP, POP3, SMTP) and,
// for accounts with send_via = "graph" or "auto", Microsoft Graph: the
// sign-in asks consent for both, the refresh token is redeemed separately
// per resource (never mixing scopes of two resources in one request), and
// each resource has its own cached, proactively refreshed access token
// (graph.go; For(Graph) is the Graph Source). All redemptions of one grant
// are serialised, so each uses the newest (rotated) refresh token.
//
// Store. state_dir/tokens.enc is XChaCha20-Poly1305 encrypted under a
// 32-byte key (state_dir/key, created 0600, or a systemd credential). Its
// header carries a key fingerprint, so a wrong key and a damaged file give
// different errors; neither is ever silently reset. Writes are atomic
// (temp file, fsync, rename, fsync directory) and read-merge-write under
// an exclusive flock on state_dir/tokens.lock, replacing only the accounts
// that changed, so `oauthbridge login` and the daemon can both write. The
// daemon polls the file and adopts sign-ins made by another process. If a
// write fails, tokens keep serving from memory and Status shows the error.
//
// No token, refresh token, device code, authorization code or secret is
// ever put in a log line, an error string or Status.
package tokens
