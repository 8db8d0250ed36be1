package tokens

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"regexp"
	"strconv"
	"strings"

	"golang.org/x/oauth2"

	"github.com/oauthbridge/oauthbridge/config"
)

// remedy is what an Entra error means for the bridge. Fix texts may use
// {account}, {provider} and {hint} (the person who signs in).
type remedy struct {
	kind   Kind
	reason string
	fix    string
	appFix string // fix for app-flow accounts, if it differs; app-flow NeedsLogin becomes Failing
}

const (
	fixLogin   = "run 'oauthbridge login {account}'"
	fixConsent = "an administrator must grant consent: oauthbridge consent-url {provider}"
	fixAppPerm = "add the Office 365 Exchange Online permissions (IMAP.AccessAsUser.All, POP.AccessAsUser.All, SMTP.Send; for the app flow IMAP.AccessAsApp, POP.AccessAsApp, SMTP.SendAsApp) to the app registration of provider {provider}, then " + fixConsent
	fixBackOff = "none; the bridge backs off and retries"
)

// aadstsTable maps Entra's AADSTS error codes (microsoft-365.md §4.7) to
// what the bridge does and what a person must do. Codes change; anything
// not in the table falls back to the RFC 6749 error code.
var aadstsTable = map[int]remedy{
	// The refresh token is gone: a person must sign in again.
	70000:  {NeedsLogin, "the refresh token is not valid", fixLogin, ""},
	70008:  {NeedsLogin, "the refresh token expired or was revoked", fixLogin, ""},
	700082: {NeedsLogin, "the refresh token expired after 90 days without use", fixLogin, ""},
	50173:  {NeedsLogin, "the sign-in was revoked (password change or an administrator revoked the sessions)", fixLogin, ""},
	70043:  {NeedsLogin, "the refresh token expired under a Conditional Access sign-in frequency policy", fixLogin, ""},
	50058:  {NeedsLogin, "no signed-in session", fixLogin, ""},
	50076:  {NeedsLogin, "multi-factor authentication is required", fixLogin + " and complete multi-factor authentication", ""},
	50072:  {NeedsLogin, "the user must enrol in multi-factor authentication", "{hint} must finish MFA registration, then " + fixLogin, ""},
	50074:  {NeedsLogin, "multi-factor authentication was not completed", fixLogin + " and complete multi-factor authentication", ""},
	50079:  {NeedsLogin, "the user must register for multi-factor authentication", "{hint} must finish MFA registration, then " + fixLogin, ""},
	65001:  {NeedsLogin, "the app has no consent for the mail permissions", fixConsent + "; then " + fixLogin, fixConsent},
	65004:  {NeedsLogin, "the user declined consent", fixLogin + " and accept the permissions", fixConsent},
	90094:  {NeedsLogin, "administrator consent is required", fixConsent + "; then " + fixLogin, fixConsent},
	53003:  {NeedsLogin, "blocked by a Conditional Access policy", "ask your Entra administrator to allow this sign-in under Conditional Access, then " + fixLogin, "ask your Entra administrator to exclude the app of provider {provider} from the Conditional Access policy"},
	53000:  {NeedsLogin, "Conditional Access requires a compliant device", "ask your Entra administrator to allow this sign-in under Conditional Access, then " + fixLogin, ""},
	53001:  {NeedsLogin, "Conditional Access requires a domain-joined device", "ask your Entra administrator to allow this sign-in under Conditional Access, then " + fixLogin, ""},
	530035: {NeedsLogin, "blocked by the tenant's security defaults", "ask your Entra administrator to allow this sign-in, then " + fixLogin, ""},
	50057:  {NeedsLogin, "the user account is disabled", "enable {hint} in Entra (or configure another delegate), then " + fixLogin, ""},
	50053:  {NeedsLogin, "the user account is locked or the sign-in came from a blocked IP address", "wait or have an administrator unlock {hint}, then " + fixLogin, ""},
	50055:  {NeedsLogin, "the user's password has expired", "{hint} must change the password, then " + fixLogin, ""},
	50144:  {NeedsLogin, "the user's Active Directory password has expired", "{hint} must change the password, then " + fixLogin, ""},
	50126:  {NeedsLogin, "invalid user name or password", fixLogin, ""},
	16000:  {NeedsLogin, "the signed-in user is not in this tenant", "sign in as {hint}: " + fixLogin, ""},
	50020:  {NeedsLogin, "the signed-in user is not in this tenant", "sign in as {hint}, or check tenant of provider {provider}: " + fixLogin, ""},
	50034:  {NeedsLogin, "the user does not exist in this tenant", "sign in as {hint}, or check tenant of provider {provider}: " + fixLogin, ""},
	51004:  {NeedsLogin, "the user is not in the directory", "sign in as {hint}: " + fixLogin, ""},
	54005:  {NeedsLogin, "the authorization code was already redeemed", "start the sign-in again: " + fixLogin, ""},
	70019:  {NeedsLogin, "the device code expired before the sign-in finished", "start the sign-in again: " + fixLogin, ""},
	70018:  {NeedsLogin, "the device code is not valid", "start the sign-in again: " + fixLogin, ""},

	// The app registration or the configuration is wrong: an administrator must fix it.
	7000215: {Failing, "invalid client secret (often the secret's ID was copied instead of its value)", "put the secret's Value (not its Secret ID) in client_secret of provider {provider} and reload", ""},
	7000222: {Failing, "the client secret has expired", "rotate the client secret in Entra and update client_secret of provider {provider}, then reload", ""},
	700016:  {Failing, "the application was not found in the tenant", "check client_id, tenant and cloud of provider {provider}; the app must be registered in (or consented to by) that tenant", ""},
	500011:  {Failing, "the Exchange Online resource was not found in the tenant", "check tenant and cloud of provider {provider}; the tenant needs Exchange Online", ""},
	90002:   {Failing, "the tenant was not found", "check tenant (GUID or domain) and cloud of provider {provider}", ""},
	90038:   {Failing, "the tenant is in another national cloud", "set cloud of provider {provider} to the tenant's cloud", ""},
	9001023: {Failing, "this grant is not supported over /common or /consumers", "set tenant of provider {provider} to the tenant's GUID or domain", ""},
	50194:   {Failing, "a single-tenant app cannot use the /common endpoint", "set tenant of provider {provider} to the tenant's GUID or domain", ""},
	7000218: {Failing, "the token request needs a client credential (public client flows are disabled)", "enable 'Allow public client flows' in the app registration of provider {provider}, or set its client_secret", ""},
	700025:  {Failing, "the app is a public client, so it must not send a client secret", "remove client_secret from provider {provider}, or add a Web platform (confidential client) to the app registration", ""},
	700084:  {Failing, "the refresh token of a single-page-app registration expired (24 h limit)", "change the redirect URI platform of the app registration from 'Single-page application' to 'Web' or 'Mobile and desktop', then " + fixLogin, ""},
	70011:   {Failing, "the requested scope is not valid", "check cloud of provider {provider} (it determines the scopes)", ""},
	700022:  {Failing, "the requested scopes span several resources", "check cloud of provider {provider} (it determines the scopes)", ""},
	700023:  {Failing, "the requested scope names no resource", "check cloud of provider {provider} (it determines the scopes)", ""},
	650057:  {Failing, "the app registration does not request the mail permissions", fixAppPerm, ""},
	65005:   {Failing, "the app registration is misconfigured for the mail permissions", fixAppPerm, ""},
	650056:  {Failing, "the app registration is misconfigured for the mail permissions", fixAppPerm, ""},
	700024:  {Failing, "the client assertion is not within its valid time range (clock skew)", fixClock, ""},
	// Client certificates (certcred.go names the certificate in the fix).
	// 700027, 7000274, 1000502, 7000214, 7000277 are Microsoft.Identity.Web's
	// list of certificate errors.
	700027:  {Failing, "the app registration does not accept the client certificate (not uploaded, key not matching, or expired)", "upload the certificate of provider {provider} to its app registration (" + uploadPath + "), or " + fixCertNew, ""},
	7000274: {Failing, "the client certificate is outside its validity period", fixCertNew, ""},
	1000502: {Failing, "the client certificate is outside its validity period", fixCertNew, ""},
	7000214: {Failing, "the client certificate was revoked", fixRevoked, ""},
	7000277: {Failing, "the client certificate was revoked", fixRevoked, ""},
	// InvalidJwtToken: Entra's reference lists an unexpected audience and a
	// token outside its time range among its causes. A client assertion
	// sent again is not among them: Entra accepts one until its exp
	// (Microsoft's own libraries reuse assertions; see the fake identity
	// platform's ReusedAssertions), and the bridge signs one per request.
	50027:  {Failing, "Entra refused the client assertion as an invalid JWT (wrong audience or malformed)", fixJWT, ""},
	50011:  {Failing, "the redirect URI does not match the app registration", "add the bridge's redirect URI (admin public_url + /oauth/callback) to the app registration of provider {provider}", ""},
	500113: {Failing, "the app registration has no redirect URI", "add the bridge's redirect URI (admin public_url + /oauth/callback) to the app registration of provider {provider}", ""},

	// Throttling and outages: retry later.
	50196: {Temporary, "Entra is throttling repeated requests (loop detected)", fixBackOff, ""},
	90055: {Temporary, "Entra is throttling the tenant", fixBackOff, ""},
}

// codeTable maps RFC 6749 / RFC 8628 error codes when no AADSTS code is known.
var codeTable = map[string]remedy{
	"invalid_grant":           {NeedsLogin, "the refresh token was refused (invalid_grant)", fixLogin, ""},
	"interaction_required":    {NeedsLogin, "an interactive sign-in is required", fixLogin, ""},
	"consent_required":        {NeedsLogin, "consent is required", fixConsent + "; then " + fixLogin, fixConsent},
	"login_required":          {NeedsLogin, "an interactive sign-in is required", fixLogin, ""},
	"access_denied":           {NeedsLogin, "the sign-in was declined", "start the sign-in again: " + fixLogin, ""},
	"authorization_declined":  {NeedsLogin, "the sign-in was declined", "start the sign-in again: " + fixLogin, ""},
	"expired_token":           {NeedsLogin, "the device code expired before the sign-in finished", "start the sign-in again: " + fixLogin, ""},
	"bad_verification_code":   {NeedsLogin, "the device code is not valid", "start the sign-in again: " + fixLogin, ""},
	"invalid_client":          {Failing, "the app registration refused the client credentials (invalid_client)", "check client_id and client_secret of provider {provider}; rotate the client secret in Entra if it expired", ""},
	"unauthorized_client":     {Failing, "the app registration may not use this grant (unauthorized_client)", "check client_id and tenant of provider {provider} and the app registration's platform settings", ""},
	"invalid_scope":           {Failing, "the requested scope is not valid", "check cloud of provider {provider} and the app registration's API permissions", ""},
	"invalid_resource":        {Failing, "the resource is not valid", "check cloud and tenant of provider {provider}", ""},
	"unsupported_grant_type":  {Failing, "the token endpoint does not support this grant", "check authority and tenant of provider {provider}", ""},
	"invalid_request":         {Failing, "the token endpoint refused the request as malformed", "check authority, tenant and client_id of provider {provider}", ""},
	"temporarily_unavailable": {Temporary, "the token endpoint is temporarily unavailable", fixBackOff, ""},
	"server_error":            {Temporary, "the token endpoint had an internal error", fixBackOff, ""},
}

var aadstsInText = regexp.MustCompile(`AADSTS(\d+)`)

// aadstsOf returns the first Entra error code of a token endpoint error:
// from the error_codes array, else from "AADSTSnnnn:" in the description.
func aadstsOf(re *oauth2.RetrieveError) int {
	var body struct {
		ErrorCodes []int `json:"error_codes"`
	}
	if json.Unmarshal(re.Body, &body) == nil && len(body.ErrorCodes) > 0 {
		return body.ErrorCodes[0]
	}
	if m := aadstsInText.FindStringSubmatch(re.ErrorDescription); m != nil {
		n, _ := strconv.Atoi(m[1])
		return n
	}
	return 0
}

// classify turns a token endpoint or transport error into the *Error the
// proxies see. Unknown trouble without an HTTP answer is Temporary; 5xx and
// 429 answers are Temporary whatever their body says.
func classify(a *config.Account, err error) *Error {
	var te *Error
	if errors.As(err, &te) {
		return te
	}
	e := &Error{Account: a.Name, Err: err}
	var re *oauth2.RetrieveError
	if !errors.As(err, &re) {
		e.Kind = Temporary
		switch {
		case errors.Is(err, context.DeadlineExceeded):
			e.Reason = "the token endpoint did not answer in time"
		case errors.Is(err, context.Canceled):
			e.Reason = "the token request was cancelled"
		default:
			// Name the cause (DNS, TLS verification, a reply that is not a
			// token): "unreachable" alone sends the sysadmin to the wrong
			// place. These errors carry the endpoint URL at most; the
			// client secret travels in the request body, never in them.
			e.Reason = "the token endpoint is unreachable or did not answer with a token: " + err.Error()
		}
		e.Fix = "check the network path to " + authorityOf(a) + ", its TLS certificate (provider ca_file) and any HTTP proxy"
		return e
	}
	status := 0
	if re.Response != nil {
		status = re.Response.StatusCode
	}
	e.AADSTS = aadstsOf(re)
	if status >= 500 || status == http.StatusTooManyRequests || re.ErrorCode == "temporarily_unavailable" {
		e.Kind = Temporary
		e.Reason = fmt.Sprintf("the token endpoint answered HTTP %d", status)
		if re.ErrorCode != "" {
			e.Reason += " (" + re.ErrorCode + ")"
		}
		e.Fix = fixBackOff
		return e
	}
	r, ok := aadstsTable[e.AADSTS]
	if !ok {
		r, ok = codeTable[re.ErrorCode]
	}
	if a.Provider.IsGoogle() {
		r, ok = googleRemedy(a, re), true // google.go
	}
	if !ok {
		r = remedy{Failing, fmt.Sprintf("the token endpoint refused the request (HTTP %d %s)", status, re.ErrorCode), "check provider {provider} against its app registration; see the AADSTS code in Microsoft's error reference", ""}
	}
	e.Kind, e.Reason, e.Fix = r.kind, r.reason, r.fix
	if a.Flow == config.FlowApp {
		if r.appFix != "" {
			e.Fix = r.appFix
		}
		if e.Kind == NeedsLogin { // nobody can sign in for the app flow
			e.Kind = Failing
			if r.appFix == "" {
				e.Fix = "check the app registration and configuration of provider {provider}"
			}
		}
	}
	certRemedy(e, err) // certcred.go: name the certificate
	e.Fix = expandFix(e.Fix, a)
	return e
}

func expandFix(fix string, a *config.Account) string {
	return strings.NewReplacer("{account}", a.Name, "{provider}", a.ProviderName, "{hint}", a.LoginHint()).Replace(fix)
}

func authorityOf(a *config.Account) string {
	if a.Provider == nil {
		return "the identity platform"
	}
	if a.Provider.IsGoogle() { // sign-in and token endpoint are on different hosts
		return a.Provider.Authority + " and " + a.Provider.TokenURL
	}
	return a.Provider.Authority
}
