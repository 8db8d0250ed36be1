package fakems

import (
	"html/template"
	"net/http"
	"net/url"
	"strconv"
	"strings"
)

// The sign-in pages are deliberately tiny: no scripts, no external assets.
// A browser (or chromedp) fills "login" and clicks the button with
// id="signin".
var pageTmpl = template.Must(template.New("page").Parse(`<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{{.Title}}</title>
<style>body{font-family:sans-serif;max-width:28em;margin:3em auto}input{display:block;width:100%;margin:.3em 0 1em}</style>
</head><body>
<h1>{{.Title}}</h1>
{{if .Error}}<p id="error" role="alert">{{.Error}}</p>{{end}}
{{if .Message}}<p id="message">{{.Message}}</p>{{end}}
{{if .Form}}<form method="post" action="{{.Action}}">
{{range $k, $v := .Hidden}}<input type="hidden" name="{{$k}}" value="{{$v}}">
{{end}}{{if .AskCode}}<label for="otc">Code</label><input id="otc" name="otc" value="{{.Code}}" autocomplete="off">
{{end}}<label for="login">Email, phone, or Skype</label><input id="login" name="login" type="email" value="{{.Login}}">
<button id="signin" type="submit" name="action" value="signin">Sign in</button>
<button id="deny" type="submit" name="action" value="deny">Cancel</button>
</form>{{end}}
</body></html>
`))

type pageData struct {
	Title, Error, Message string
	Form, AskCode         bool
	Action                string
	Hidden                map[string]string
	Code, Login           string
}

func renderPage(w http.ResponseWriter, status int, d pageData) {
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	_ = pageTmpl.Execute(w, d)
}

// authorizeParams are the /authorize query parameters the fake honours.
var authorizeParams = []string{"client_id", "response_type", "redirect_uri", "scope", "state", "code_challenge", "code_challenge_method", "login_hint", "prompt", "response_mode"}

// authorizeRequest validates an /authorize request. A nil redirect means
// the error must be shown as a page, not sent to the redirect URI.
func (f *Fake) authorizeRequest(v url.Values) (redirect *url.URL, scopes scopeSet, errCode, errDesc string) {
	f.mu.Lock()
	a := f.apps[v.Get("client_id")]
	f.mu.Unlock()
	if a == nil {
		return nil, scopes, "unauthorized_client", "AADSTS700016: Application with identifier '" + v.Get("client_id") + "' was not found in the directory 'Fake'."
	}
	ru, err := url.Parse(v.Get("redirect_uri"))
	if v.Get("redirect_uri") == "" || err != nil || !ru.IsAbs() {
		return nil, scopes, "invalid_request", "AADSTS900144: The request body must contain the following parameter: 'redirect_uri'."
	}
	if v.Get("response_type") != "code" {
		return ru, scopes, "unsupported_response_type", "AADSTS700054: response_type '" + v.Get("response_type") + "' is not enabled for the application."
	}
	if m := v.Get("code_challenge_method"); v.Get("code_challenge") != "" && m != "S256" && m != "plain" && m != "" {
		return ru, scopes, "invalid_request", "AADSTS501491: Invalid code_challenge_method."
	}
	scopes, aerr := parseScopes(v.Get("scope"))
	if aerr != nil {
		return ru, scopes, aerr.code, "AADSTS" + strconv.Itoa(aerr.aadsts) + ": " + aerr.desc
	}
	return ru, scopes, "", ""
}

func redirectWith(w http.ResponseWriter, r *http.Request, ru *url.URL, params url.Values) {
	u := *ru
	q := u.Query()
	for k, vs := range params {
		for _, v := range vs {
			if v != "" {
				q.Add(k, v)
			}
		}
	}
	u.RawQuery = q.Encode()
	http.Redirect(w, r, u.String(), http.StatusFound)
}

func (f *Fake) handleAuthorizePage(w http.ResponseWriter, r *http.Request) {
	v := r.URL.Query()
	ru, _, code, desc := f.authorizeRequest(v)
	if code != "" {
		if ru == nil {
			renderPage(w, http.StatusBadRequest, pageData{Title: "Sign in", Error: desc})
			return
		}
		redirectWith(w, r, ru, url.Values{"error": {code}, "error_description": {desc}, "state": {v.Get("state")}})
		return
	}
	f.mu.Lock()
	login := f.signInUser
	f.mu.Unlock()
	if login == "" {
		login = v.Get("login_hint")
	}
	hidden := map[string]string{}
	for _, k := range authorizeParams {
		if x := v.Get(k); x != "" {
			hidden[k] = x
		}
	}
	renderPage(w, http.StatusOK, pageData{
		Title:  "Sign in to your account",
		Form:   true,
		Action: r.URL.Path,
		Hidden: hidden,
		Login:  login,
	})
}

func (f *Fake) handleAuthorizeSignIn(w http.ResponseWriter, r *http.Request) {
	_ = r.ParseForm()
	v := r.PostForm
	ru, scopes, code, desc := f.authorizeRequest(v)
	if code != "" {
		if ru == nil {
			renderPage(w, http.StatusBadRequest, pageData{Title: "Sign in", Error: desc})
			return
		}
		redirectWith(w, r, ru, url.Values{"error": {code}, "error_description": {desc}, "state": {v.Get("state")}})
		return
	}
	state := v.Get("state")
	if v.Get("action") == "deny" {
		redirectWith(w, r, ru, url.Values{"error": {"access_denied"}, "error_description": {"AADSTS65004: User declined to consent to access the app."}, "state": {state}})
		return
	}
	upn := norm(v.Get("login"))
	f.mu.Lock()
	known := f.users[upn]
	f.mu.Unlock()
	if !known {
		redirectWith(w, r, ru, url.Values{"error": {"access_denied"}, "error_description": {"AADSTS50034: The user account " + upn + " does not exist in the Fake directory."}, "state": {state}})
		return
	}
	method := v.Get("code_challenge_method")
	if v.Get("code_challenge") != "" && method == "" {
		method = "plain"
	}
	c := &authCode{
		clientID:        v.Get("client_id"),
		redirectURI:     v.Get("redirect_uri"),
		challenge:       v.Get("code_challenge"),
		challengeMethod: method,
		upn:             upn,
		scopes:          scopes,
	}
	codeVal := "1.AQ" + randomToken(64)
	f.mu.Lock()
	c.expires = f.now().Add(authCodeLifetime)
	f.codes[codeVal] = c
	f.grantConsentLocked(c.clientID, upn, scopes.all())
	f.mu.Unlock()
	redirectWith(w, r, ru, url.Values{"code": {codeVal}, "state": {state}, "session_state": {newGUID()}})
}

func (f *Fake) handleAdminConsent(w http.ResponseWriter, r *http.Request) {
	v := r.URL.Query()
	ru, err := url.Parse(v.Get("redirect_uri"))
	if v.Get("redirect_uri") == "" || err != nil || !ru.IsAbs() {
		renderPage(w, http.StatusBadRequest, pageData{Title: "Admin consent", Error: "AADSTS900144: The request body must contain the following parameter: 'redirect_uri'."})
		return
	}
	f.mu.Lock()
	a := f.apps[v.Get("client_id")]
	f.mu.Unlock()
	if a == nil {
		redirectWith(w, r, ru, url.Values{"error": {"unauthorized_client"}, "error_description": {"AADSTS700016: Application with identifier '" + v.Get("client_id") + "' was not found in the directory 'Fake'."}, "state": {v.Get("state")}})
		return
	}
	redirectWith(w, r, ru, url.Values{"admin_consent": {"True"}, "tenant": {f.TenantID}, "state": {v.Get("state")}, "scope": {v.Get("scope")}})
}

func (f *Fake) handleDeviceLoginPage(w http.ResponseWriter, r *http.Request) {
	renderPage(w, http.StatusOK, pageData{
		Title:   "Enter code",
		Message: "Enter the code displayed on your app or device, then sign in.",
		Form:    true,
		AskCode: true,
		Action:  "/devicelogin",
		Code:    r.URL.Query().Get("code"),
		Login:   r.URL.Query().Get("login_hint"),
	})
}

func (f *Fake) handleDeviceLoginPost(w http.ResponseWriter, r *http.Request) {
	_ = r.ParseForm()
	code, login := r.PostForm.Get("otc"), r.PostForm.Get("login")
	var err error
	if r.PostForm.Get("action") == "deny" {
		err = f.DenyDevice(code)
	} else {
		err = f.ApproveDevice(code, login)
	}
	if err != nil {
		renderPage(w, http.StatusBadRequest, pageData{
			Title: "Enter code", Error: strings.TrimPrefix(err.Error(), "fakems: device login: "),
			Form: true, AskCode: true, Action: "/devicelogin", Code: code, Login: login,
		})
		return
	}
	renderPage(w, http.StatusOK, pageData{Title: "Done", Message: "You have signed in to the application on your device. You may now close this window."})
}
