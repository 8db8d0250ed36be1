package tokens

import "github.com/oauthbridge/oauthbridge/config"

// Describe returns what Entra error code AADSTS<code> means for account a
// and how to fix it, from the same table the token manager uses (with the
// account's names filled in). ok is false for a code not in the table.
// `oauthbridge doctor` uses it for errors it meets outside a token request
// (the tenant's OpenID configuration document).
func Describe(a *config.Account, code int) (reason, fix string, ok bool) {
	r, ok := aadstsTable[code]
	if !ok {
		return "", "", false
	}
	fix = r.fix
	if a.Flow == config.FlowApp && r.appFix != "" {
		fix = r.appFix
	}
	return r.reason, expandFix(fix, a), true
}
