package fakems

import (
	"slices"
)

// ---- Test hooks ----

// IssueAccessToken mints a delegated Outlook token for upn with all three
// mail scopes, without any token request.
func (f *Fake) IssueAccessToken(upn string) string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.mintLocked(&accessToken{upn: norm(upn), aud: audOutlook, scopes: slices.Clone(mailScopes)})
}

// IssueAppToken mints an app-only Outlook token for clientID.
func (f *Fake) IssueAppToken(clientID string) string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.mintLocked(&accessToken{clientID: clientID, app: true, aud: audOutlook, scopes: []string{scopeApp}})
}

// IssueGraphToken mints a delegated Microsoft Graph token for upn with the
// given scopes (full URIs such as ScopeGraphMailSend), without any token
// request or consent check. No scopes means Mail.Send, Mail.Send.Shared
// and Mail.ReadWrite.
func (f *Fake) IssueGraphToken(upn string, scopes ...string) string {
	if len(scopes) == 0 {
		scopes = []string{ScopeGraphMailSend, ScopeGraphMailSendShared, ScopeGraphMailReadWrite}
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.mintLocked(&accessToken{upn: norm(upn), aud: audGraph, scopes: slices.Clone(scopes)})
}

// IssueGraphAppToken mints an app-only Microsoft Graph token for clientID
// with the roles SetAppRoles gave it.
func (f *Fake) IssueGraphAppToken(clientID string) string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.mintLocked(&accessToken{clientID: clientID, app: true, aud: audGraph, scopes: []string{ScopeGraphDefault}, roles: slices.Clone(f.appRoles[clientID])})
}

// SetAppRoles sets the application permissions (RoleMailSend,
// RoleMailReadWrite) of clientID on Microsoft Graph, as an admin granting
// them with admin consent. Client-credentials tokens for
// https://graph.microsoft.com/.default minted afterwards carry them.
func (f *Fake) SetAppRoles(clientID string, roles ...string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.appRoles[clientID] = slices.Clone(roles)
}

// GrantConsent records that upn (or an admin on upn's behalf) consented to
// scopes (full URIs) for clientID, as a sign-in asking for them does.
func (f *Fake) GrantConsent(clientID, upn string, scopes ...string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	k := consentKey(clientID, upn)
	if f.consent[k] == nil {
		f.consent[k] = make(map[string]bool)
	}
	for _, sc := range scopes {
		f.consent[k][sc] = true
	}
}

// RevokeConsent withdraws upn's consent to scopes for clientID. Token
// requests that need one of them then fail with AADSTS65001.
func (f *Fake) RevokeConsent(clientID, upn string, scopes ...string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, sc := range scopes {
		delete(f.consent[consentKey(clientID, upn)], sc)
	}
}

// WithholdConsent makes sign-ins for clientID stop granting scopes, like a
// tenant where users may not consent to these permissions and no admin has.
// Simplification: the sign-in itself still succeeds for the other scopes
// (real Entra would show "Need admin approval"); a later token request for
// a withheld scope fails with AADSTS65001 consent_required. nil scopes lifts
// nothing; use GrantConsent to consent for one user anyway.
func (f *Fake) WithholdConsent(clientID string, scopes ...string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.withheld[clientID] == nil {
		f.withheld[clientID] = make(map[string]bool)
	}
	for _, sc := range scopes {
		f.withheld[clientID][sc] = true
	}
}

// ExpireAccessToken makes tok invalid from now on.
func (f *Fake) ExpireAccessToken(tok string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if at := f.access[tok]; at != nil {
		at.expired = true
	}
}

// RevokeRefreshTokens revokes every refresh token issued to upn so far
// ("Revoke sessions"): later refresh_token grants with them fail with
// 400 invalid_grant AADSTS50173. Tokens from a new sign-in work.
func (f *Fake) RevokeRefreshTokens(upn string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	upn = norm(upn)
	f.revokedAt[upn] = f.now()
	for _, rt := range f.refresh {
		if rt.upn == upn {
			rt.revoked = true
		}
	}
}

// SetTokenFault makes POST /token (all grants) misbehave until reset with
// TokenFault{}.
func (f *Fake) SetTokenFault(fault TokenFault) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.fault = fault
}

// TokenRequests returns the number of POST /token requests seen.
func (f *Fake) TokenRequests() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.tokenReqs
}

// TokenRequestsByGrant returns the POST /token requests seen by grant_type.
func (f *Fake) TokenRequestsByGrant() map[string]int {
	f.mu.Lock()
	defer f.mu.Unlock()
	m := make(map[string]int, len(f.tokenReqsByGrant))
	for k, v := range f.tokenReqsByGrant {
		m[k] = v
	}
	return m
}

// SetDeviceSlowDown makes the next n device-code polls get slow_down.
func (f *Fake) SetDeviceSlowDown(n int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.slowDown = n
}

// SetSignInUser sets who "signs in" on /authorize; "" means login_hint.
func (f *Fake) SetSignInUser(upn string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.signInUser = upn
}
