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

// moreAADSTS extends aadstsTable with the tenant-side codes sysadmins meet
// when they first connect an account (microsoft-365.md §4.7 and Entra's
// error reference). An entry of aadsts.go for the same code wins.
var moreAADSTS = map[int]remedy{
	50105:   {NeedsLogin, "the signed-in user is not assigned to the app (the enterprise application requires user assignment)", "in Entra: Enterprise applications > the app of provider {provider} > Users and groups > Add user/group: assign {hint}, then " + fixLogin, ""},
	7000112: {Failing, "the application is disabled in the tenant", "in Entra: Enterprise applications > the app of provider {provider} > Properties: set 'Enabled for users to sign in?' to Yes", ""},
	50059:   {Failing, "the request names no tenant Entra can find", "set tenant of provider {provider} to the tenant's GUID or domain", ""},
	90019:   {Failing, "the request names no tenant Entra can find", "set tenant of provider {provider} to the tenant's GUID or domain", ""},
	50097:   {NeedsLogin, "Conditional Access requires device authentication", "ask your Entra administrator to allow this sign-in under Conditional Access, then " + fixLogin, ""},
	65002:   {Failing, "the app may not use this Microsoft API without preauthorization", "check client_id of provider {provider}: it must be your own app registration, not a Microsoft one", ""},
}

func init() {
	for code, r := range moreAADSTS {
		if _, ok := aadstsTable[code]; !ok {
			aadstsTable[code] = r
		}
	}
}
