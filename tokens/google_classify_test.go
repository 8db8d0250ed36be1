package tokens

import (
	"encoding/json"
	"net/http"
	"strings"
	"testing"
	"time"

	"golang.org/x/oauth2"

	"github.com/oauthbridge/oauthbridge/config"
)

func googleErr(status int, code, desc string) *oauth2.RetrieveError {
	b, _ := json.Marshal(map[string]string{"error": code, "error_description": desc})
	return &oauth2.RetrieveError{Response: &http.Response{StatusCode: status}, Body: b, ErrorCode: code, ErrorDescription: desc}
}

func TestClassifyGoogle(t *testing.T) {
	prov := &config.Provider{Name: "workspace", Type: config.ProviderGoogle, Authority: config.GoogleAuthority, TokenURL: config.GoogleTokenURL,
		ServiceAccount: &config.ServiceAccount{Email: "sa@p.iam.gserviceaccount.com", ClientID: "1177"}}
	person := &config.Account{Name: "alice", ProviderName: "workspace", Flow: config.FlowDelegated, Mailbox: "alice@example.org", Provider: prov}
	robot := &config.Account{Name: "robot", ProviderName: "workspace", Flow: config.FlowApp, Mailbox: "hd@example.org", Provider: prov}
	for _, tc := range []struct {
		name      string
		acct      *config.Account
		err       error
		kind      Kind
		reas, fix string
	}{
		{"refresh token gone", person, googleErr(400, "invalid_grant", "Token has been expired or revoked."), NeedsLogin, "Token has been expired or revoked.", "oauthbridge login alice"},
		{"no delegation", robot, googleErr(401, "unauthorized_client", "Client is unauthorized to retrieve access tokens using this method, or client not authorized for any of the scopes requested."), Failing, "domain-wide delegation", "client ID 1177"},
		{"unknown mailbox", robot, googleErr(400, "invalid_grant", "Invalid email or User ID"), Failing, "not know the mailbox", "mailbox of account robot"},
		{"key deleted", robot, googleErr(400, "invalid_grant", "Invalid JWT Signature."), Failing, "signature", "new JSON key"},
		{"clock", robot, googleErr(400, "invalid_grant", "Invalid JWT: Token must be a short-lived token (60 minutes) and in a reasonable timeframe. Check your iat and exp values in the JWT claim."), Failing, "time range", "system clock"},
		{"client secret", person, googleErr(401, "invalid_client", "Unauthorized"), Failing, "OAuth client", "client_secret of provider workspace"},
		{"scope", person, googleErr(400, "invalid_scope", "Some requested scopes were invalid."), Failing, "scope", "Gmail API"},
		{"blocked by admin", person, googleErr(400, "admin_policy_enforced", "blocked"), NeedsLogin, "Workspace policy", "App access control"},
		{"outage", person, googleErr(503, "", ""), Temporary, "HTTP 503", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := classify(tc.acct, tc.err)
			if e.Kind != tc.kind || !strings.Contains(e.Reason, tc.reas) || !strings.Contains(e.Fix, tc.fix) || e.AADSTS != 0 {
				t.Errorf("classify = %v (kind %s), want %s, reason ~%q, fix ~%q", e, e.Kind, tc.kind, tc.reas, tc.fix)
			}
		})
	}
	// A refresh token that dies 7 days after the sign-in points at Testing.
	now := time.Now()
	e := googleRefreshDied(person, googleErr(400, "invalid_grant", "Token has been expired or revoked."), now.Add(-7*24*time.Hour), now)
	if e.Kind != NeedsLogin || !strings.HasPrefix(strings.SplitN(e.Reason, "; ", 2)[1], "the sign-in was 168h0m0s ago") || !strings.Contains(e.Fix, "In production") {
		t.Errorf("7 days: %v", e)
	}
	e = googleRefreshDied(person, googleErr(400, "invalid_grant", "Token has been expired or revoked."), now.Add(-2*24*time.Hour), now)
	if strings.Contains(e.Reason, "ago") {
		t.Errorf("2 days: %v", e)
	}
}
