package admin

import (
	"context"
	"fmt"
	"html/template"
	"net/http"
	"net/url"
	"sort"
	"strings"
	"time"

	"github.com/oauthbridge/oauthbridge/config"
	"github.com/oauthbridge/oauthbridge/tokens"
)

var pageTmpl = template.Must(template.New("page").Parse(`<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="referrer" content="no-referrer">
<title>oauthbridge status</title>
<style>
body{font-family:system-ui,sans-serif;margin:1.5em;color:#222}
table{border-collapse:collapse;width:100%}
th,td{border:1px solid #ccc;padding:.35em .5em;text-align:left;vertical-align:top}
th{background:#f3f3f3}
.state{font-weight:bold}
.s-ok{color:#176d17}.s-needs_login{color:#a15c00}.s-failing{color:#b00020}.s-unknown{color:#555}
.flash{padding:.6em 1em;margin-bottom:1em;border-radius:4px}
.flash-ok{background:#e5f5e5;border:1px solid #7c7}
.flash-error{background:#fde8e8;border:1px solid #d77}
.fix{color:#444}
small{color:#666}
form{margin:0}
</style>
</head>
<body>
<h1>oauthbridge</h1>
{{with .Flash}}<p id="flash" class="flash flash-{{.Kind}}">{{.Text}}</p>{{end}}
{{if .Accounts}}
<table id="accounts">
<thead><tr><th>Account</th><th>Mailbox</th><th>Flow</th><th>State</th><th>Access token expiry</th><th>Last refresh</th><th>Last error</th><th></th></tr></thead>
<tbody>
{{range .Accounts}}<tr id="acct-{{.Account}}">
<td class="account">{{.Account}}</td>
<td class="mailbox">{{.Mailbox}}{{with .Delegate}}<br><small>delegate: {{.}}</small>{{end}}{{with .SignedInAs}}<br><small>signed in as: {{.}}</small>{{end}}</td>
<td class="flow">{{.Flow}}{{with .SendPath}}<br><small class="sendpath">sends via {{.}}{{end}}{{if and .SendVia (ne .SendVia .SendPath)}} (send_via = {{.SendVia}}){{end}}{{with .SendPathReason}}: {{.}}{{end}}{{if .SendPath}}</small>{{end}}</td>
<td class="state s-{{.State}}">{{.State}}</td>
<td class="expiry">{{if .ExpiryAbs}}{{.ExpiryRel}}<br><small><time datetime="{{.ExpiryAbs}}">{{.ExpiryAbs}}</time></small>{{else}}-{{end}}{{if .SecretAbs}}<br><small class="secretexpiry">client secret expires <time datetime="{{.SecretAbs}}">{{.SecretAbs}}</time> ({{.SecretRel}})</small>{{end}}</td>
<td class="refresh">{{if .RefreshAbs}}{{.RefreshRel}}<br><small><time datetime="{{.RefreshAbs}}">{{.RefreshAbs}}</time></small>{{else}}-{{end}}</td>
<td class="error">{{with .LastError}}<span class="lasterror">{{.}}</span>{{end}}{{with .AADSTS}} <small>(AADSTS{{.}})</small>{{end}}{{with .Fix}}<br><span class="fix">Fix: {{.}}</span>{{end}}{{with .GraphError}}<br><span class="grapherror">Microsoft Graph: {{.}}</span>{{end}}{{with .GraphFix}}<br><span class="fix">Fix: {{.}}</span>{{end}}</td>
<td class="action">{{if .Button}}<form method="post" action="{{.ConnectPath}}"><input type="hidden" name="csrf" value="{{$.CSRF}}"><button type="submit" id="connect-{{.Account}}">{{.Button}}</button></form>{{end}}</td>
</tr>
{{end}}</tbody>
</table>
{{else}}
<p id="no-accounts">No accounts are configured.</p>
{{end}}
{{if .Credentials}}
<h2>Client credentials</h2>
<table id="credentials">
<thead><tr><th>Provider</th><th>Credential</th><th>Thumbprint (SHA-1)</th><th>Expires</th><th>In use</th></tr></thead>
<tbody>
{{range .Credentials}}<tr class="credential">
<td>{{.Provider}}</td><td>{{if eq .Kind "secret"}}client_secret{{else}}certificate<br><small>{{.CertFile}}</small>{{end}}</td>
<td class="thumbprint">{{if eq .Kind "certificate"}}{{.Name}}{{else}}-{{end}}</td>
<td class="{{if .Expired}}s-failing{{else if .Soon}}s-needs_login{{end}}">{{if .ExpiresAbs}}{{.ExpiresRel}}<br><small><time datetime="{{.ExpiresAbs}}">{{.ExpiresAbs}}</time></small>{{else}}-{{end}}</td>
<td class="inuse">{{if .InUse}}yes{{else}}no{{end}}</td>
</tr>
{{end}}</tbody>
</table>
{{end}}
<p id="signin-help"><small>Connect signs the account in with the browser; the sign-in returns to {{.RedirectURI}}, which must be a redirect URI registered for the provider's app.{{if .Microsoft}} Without a browser on this host, a Microsoft 365 account can sign in with a device code: <code>oauthbridge login ACCOUNT</code>.{{end}}{{if .Google}} A Google account signs in with the browser only (Google's device flow does not cover Gmail): press Connect, or run <code>oauthbridge login ACCOUNT</code> where a browser can reach {{.RedirectURI}} (or forward it with ssh -L).{{end}} Times are UTC. oauthbridge {{.Version}}, page rendered {{.Now}}.</small></p>
</body>
</html>
`))

type pageData struct {
	Flash       *flash
	Accounts    []row
	Credentials []credRow // credentials.go
	CSRF        string
	RedirectURI string
	// Which sign-in help the footer gives: Microsoft (device code
	// possible) and/or Google (browser only) delegated accounts.
	Microsoft, Google bool
	Version           string
	Now               string
}

type flash struct {
	Kind string // ok | error
	Text string
}

type row struct {
	tokens.AccountStatus
	ExpiryRel, ExpiryAbs   string
	RefreshRel, RefreshAbs string
	SecretRel, SecretAbs   string // client_secret_expires
	Button                 string // "" = no button
	ConnectPath            string
}

func (h *handler) statusPage(w http.ResponseWriter, r *http.Request) {
	cfg := h.config()
	now := h.opts.Now()
	st := h.opts.Tokens.Status()
	sort.SliceStable(st, func(i, j int) bool { return st[i].Account < st[j].Account })
	d := pageData{
		Flash:       flashFrom(r.URL.Query()),
		CSRF:        h.csrfToken(w, r, cfg),
		RedirectURI: redirectURI(cfg),
		Version:     h.opts.Version,
		Now:         now.UTC().Format(time.RFC3339),
		Credentials: h.credentialRows(now),
	}
	for _, s := range st {
		rw := row{AccountStatus: s, ConnectPath: "/connect/" + url.PathEscape(s.Account)}
		if !s.Expiry.IsZero() {
			rw.ExpiryAbs = s.Expiry.UTC().Format(time.RFC3339)
			rw.ExpiryRel = relative(now, s.Expiry, "in %s", "expired %s ago")
		}
		if !s.ClientSecretExpires.IsZero() {
			rw.SecretAbs = s.ClientSecretExpires.UTC().Format(time.RFC3339)
			rw.SecretRel = relative(now, s.ClientSecretExpires, "in %s", "EXPIRED %s ago")
		}
		if !s.LastRefresh.IsZero() {
			rw.RefreshAbs = s.LastRefresh.UTC().Format(time.RFC3339)
			rw.RefreshRel = relative(now, s.LastRefresh, "in %s", "%s ago")
		}
		if s.Flow != config.FlowApp {
			if a := cfg.AccountByName[s.Account]; a != nil && a.Provider.IsGoogle() {
				d.Google = true
			} else {
				d.Microsoft = true
			}
			rw.Button = "Connect"
			if s.State == tokens.StateOK {
				rw.Button = "Re-authenticate"
			}
		}
		d.Accounts = append(d.Accounts, rw)
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	if err := pageTmpl.Execute(w, d); err != nil {
		h.log.Error("admin: render status page", "error", err)
	}
}

// flashFrom builds the message shown after a sign-in from the query string
// the callback redirected to. It is escaped by the template and clipped:
// anybody can craft such a link.
func flashFrom(q url.Values) *flash {
	acct := q.Get("account")
	if e := q.Get("error"); e != "" {
		t := "Sign-in failed"
		if acct != "" {
			t += " for " + acct
		}
		return &flash{Kind: "error", Text: clip(t+": "+e, DefaultMaxFlashBytes)}
	}
	if q.Get("result") == "ok" && acct != "" {
		return &flash{Kind: "ok", Text: clip("Account "+acct+" is connected.", DefaultMaxFlashBytes)}
	}
	return nil
}

func redirectURI(cfg *config.Config) string {
	return strings.TrimSuffix(cfg.Admin.PublicURL, "/") + CallbackPath
}

// relative formats t relative to now, e.g. "in 52m" or "3h10m ago".
func relative(now, t time.Time, future, past string) string {
	d := t.Sub(now)
	f := future
	if d < 0 {
		d, f = -d, past
	}
	return fmt.Sprintf(f, roughDuration(d))
}

func roughDuration(d time.Duration) string {
	switch {
	case d < time.Minute:
		return fmt.Sprintf("%ds", int(d/time.Second))
	case d < time.Hour:
		return fmt.Sprintf("%dm", int(d/time.Minute))
	case d < 48*time.Hour:
		return fmt.Sprintf("%dh%02dm", int(d/time.Hour), int(d%time.Hour/time.Minute))
	}
	return fmt.Sprintf("%dd", int(d/(24*time.Hour)))
}

// findAccount returns the status of the named account.
func (h *handler) findAccount(name string) (tokens.AccountStatus, bool) {
	for _, s := range h.opts.Tokens.Status() {
		if s.Account == name {
			return s, true
		}
	}
	return tokens.AccountStatus{}, false
}

// connect starts a browser sign-in: POST /connect/{account} with the CSRF
// token, answered by a 303 to the identity platform.
func (h *handler) connect(w http.ResponseWriter, r *http.Request) {
	if !h.csrfValid(r) {
		h.log.Warn("admin: connect without a valid CSRF token", "remote", r.RemoteAddr)
		http.Error(w, "missing or stale form token; reload the status page and try again", http.StatusForbidden)
		return
	}
	name := r.PathValue("account")
	s, ok := h.findAccount(name)
	if !ok {
		http.Error(w, "no such account", http.StatusNotFound)
		return
	}
	if s.Flow == config.FlowApp {
		http.Error(w, "this account uses the app flow (client credentials); there is nobody to sign in", http.StatusBadRequest)
		return
	}
	u, err := h.opts.Tokens.BrowserLoginURL(name, redirectURI(h.config()))
	if err != nil {
		h.log.Error("admin: browser login URL", "account", name, "error", err)
		http.Redirect(w, r, "/?"+url.Values{"account": {name}, "error": {err.Error()}}.Encode(), http.StatusSeeOther)
		return
	}
	h.log.Info("admin: browser sign-in started", "account", name, "remote", r.RemoteAddr)
	http.Redirect(w, r, u, http.StatusSeeOther)
}

// callback is Entra's redirect back after a browser sign-in. The OAuth
// state (validated by tokens) is what protects it, not Basic auth: it
// redeems a code only for a sign-in this process started.
func (h *handler) callback(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	back := func(v url.Values) { http.Redirect(w, r, "/?"+v.Encode(), http.StatusSeeOther) }
	if e := q.Get("error"); e != "" {
		msg := e
		if d := q.Get("error_description"); d != "" {
			msg += ": " + d
		}
		v := url.Values{"error": {clip(msg, DefaultMaxFlashBytes)}}
		// Redeeming the state with no code consumes the pending sign-in and
		// names its account; the error that comes back is expected.
		var acct string
		if state := q.Get("state"); state != "" {
			ctx, cancel := context.WithTimeout(r.Context(), DefaultCallbackTimeout)
			acct, _ = h.opts.Tokens.CompleteBrowserLogin(ctx, state, "")
			cancel()
			if acct != "" {
				v.Set("account", acct)
			}
		}
		h.log.Warn("admin: sign-in refused by the identity platform", "account", acct, "error", clip(msg, DefaultMaxFlashBytes), "remote", r.RemoteAddr)
		back(v)
		return
	}
	code, state := q.Get("code"), q.Get("state")
	if code == "" || state == "" {
		back(url.Values{"error": {"the sign-in callback had no code or state; start again with Connect"}})
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), DefaultCallbackTimeout)
	defer cancel()
	acct, err := h.opts.Tokens.CompleteBrowserLogin(ctx, state, code)
	if err != nil {
		h.log.Error("admin: browser sign-in failed", "account", acct, "error", err)
		v := url.Values{"error": {err.Error()}}
		if acct != "" {
			v.Set("account", acct)
		}
		back(v)
		return
	}
	h.log.Info("admin: browser sign-in complete", "account", acct)
	back(url.Values{"result": {"ok"}, "account": {acct}})
}
