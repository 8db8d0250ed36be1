package tokens

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"testing"

	"golang.org/x/oauth2"

	"github.com/oauthbridge/oauthbridge/config"
)

func retrieveErr(status int, code string, aadsts int) error {
	body := map[string]any{"error": code, "error_description": fmt.Sprintf("AADSTS%d: something. Trace ID: x", aadsts)}
	if aadsts != 0 {
		body["error_codes"] = []int{aadsts}
	}
	b, _ := json.Marshal(body)
	return &oauth2.RetrieveError{Response: &http.Response{StatusCode: status}, Body: b, ErrorCode: code, ErrorDescription: body["error_description"].(string)}
}

func TestClassify(t *testing.T) {
	prov := &config.Provider{Name: "contoso", Authority: "https://login.example"}
	deleg := &config.Account{Name: "helpdesk", ProviderName: "contoso", Flow: config.FlowDelegated, Mailbox: "hd@contoso.com", Delegate: "alice@contoso.com", Provider: prov}
	app := &config.Account{Name: "scanner", ProviderName: "contoso", Flow: config.FlowApp, Mailbox: "scan@contoso.com", Provider: prov}
	tests := []struct {
		name    string
		acct    *config.Account
		err     error
		kind    Kind
		aadsts  int
		fixHas  string
		reasHas string
	}{
		{"revoked", deleg, retrieveErr(400, "invalid_grant", 50173), NeedsLogin, 50173, "run 'oauthbridge login helpdesk'", "revoked"},
		{"inactive 90 days", deleg, retrieveErr(400, "invalid_grant", 700082), NeedsLogin, 700082, "oauthbridge login helpdesk", "90 days"},
		{"expired grant", deleg, retrieveErr(400, "invalid_grant", 70008), NeedsLogin, 70008, "oauthbridge login helpdesk", "expired"},
		{"invalid grant", deleg, retrieveErr(400, "invalid_grant", 70000), NeedsLogin, 70000, "oauthbridge login helpdesk", "not valid"},
		{"mfa", deleg, retrieveErr(400, "invalid_grant", 50076), NeedsLogin, 50076, "multi-factor", "multi-factor"},
		{"mfa enrol", deleg, retrieveErr(400, "interaction_required", 50079), NeedsLogin, 50079, "alice@contoso.com must finish MFA", "register"},
		{"consent delegated", deleg, retrieveErr(400, "invalid_grant", 65001), NeedsLogin, 65001, "oauthbridge consent-url contoso", "consent"},
		{"consent app", app, retrieveErr(400, "invalid_grant", 65001), Failing, 65001, "an administrator must grant consent: oauthbridge consent-url contoso", "consent"},
		{"admin consent", deleg, retrieveErr(400, "invalid_grant", 90094), NeedsLogin, 90094, "oauthbridge consent-url contoso", "administrator"},
		{"conditional access", deleg, retrieveErr(400, "invalid_grant", 53003), NeedsLogin, 53003, "Conditional Access", "Conditional Access"},
		{"sign in frequency", deleg, retrieveErr(400, "invalid_grant", 70043), NeedsLogin, 70043, "oauthbridge login helpdesk", "sign-in frequency"},
		{"disabled", deleg, retrieveErr(400, "invalid_grant", 50057), NeedsLogin, 50057, "enable alice@contoso.com", "disabled"},
		{"locked", deleg, retrieveErr(400, "invalid_grant", 50053), NeedsLogin, 50053, "unlock alice@contoso.com", "locked"},
		{"password expired", deleg, retrieveErr(400, "invalid_grant", 50055), NeedsLogin, 50055, "change the password", "expired"},
		{"secret invalid", app, retrieveErr(401, "invalid_client", 7000215), Failing, 7000215, "client_secret of provider contoso", "secret"},
		{"secret expired", app, retrieveErr(401, "invalid_client", 7000222), Failing, 7000222, "rotate the client secret in Entra and update client_secret", "expired"},
		{"secret expired delegated", deleg, retrieveErr(401, "invalid_client", 7000222), Failing, 7000222, "rotate the client secret", "expired"},
		{"app not found", app, retrieveErr(400, "unauthorized_client", 700016), Failing, 700016, "client_id", "not found"},
		{"no exchange", app, retrieveErr(400, "invalid_resource", 500011), Failing, 500011, "tenant", "Exchange Online"},
		{"tenant not found", app, retrieveErr(400, "invalid_request", 90002), Failing, 90002, "tenant", "tenant"},
		{"common tenant", app, retrieveErr(400, "invalid_request", 9001023), Failing, 9001023, "tenant's GUID", "/common"},
		{"public client flows", deleg, retrieveErr(401, "invalid_client", 7000218), Failing, 7000218, "Allow public client flows", "public client"},
		{"public must not send secret", deleg, retrieveErr(401, "invalid_client", 700025), Failing, 700025, "remove client_secret", "public client"},
		{"invalid_client no code", app, retrieveErr(401, "invalid_client", 0), Failing, 0, "client_secret", "invalid_client"},
		{"unauthorized_client no code", app, retrieveErr(400, "unauthorized_client", 0), Failing, 0, "client_id", "unauthorized_client"},
		{"invalid_grant unknown code", deleg, retrieveErr(400, "invalid_grant", 9002313), NeedsLogin, 9002313, "oauthbridge login helpdesk", "invalid_grant"},
		{"invalid_grant app", app, retrieveErr(400, "invalid_grant", 0), Failing, 0, "provider contoso", "invalid_grant"},
		{"500", deleg, retrieveErr(500, "", 0), Temporary, 0, "backs off", "HTTP 500"},
		{"503 with code", deleg, retrieveErr(503, "invalid_grant", 70008), Temporary, 70008, "backs off", "HTTP 503"},
		{"429", deleg, retrieveErr(429, "", 0), Temporary, 0, "backs off", "HTTP 429"},
		{"temporarily_unavailable 400", deleg, retrieveErr(400, "temporarily_unavailable", 0), Temporary, 0, "backs off", "temporarily_unavailable"},
		{"throttled", deleg, retrieveErr(400, "invalid_request", 50196), Temporary, 50196, "backs off", "throttling"},
		{"unknown 4xx", app, retrieveErr(400, "weird_error", 12345), Failing, 12345, "provider contoso", "weird_error"},
		{"network", deleg, errors.New("dial tcp: connection refused"), Temporary, 0, "login.example", "unreachable or did not answer with a token: dial tcp: connection refused"},
		{"deadline", deleg, fmt.Errorf("post: %w", context.DeadlineExceeded), Temporary, 0, "login.example", "in time"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			e := classify(tc.acct, tc.err)
			if e.Kind != tc.kind || e.AADSTS != tc.aadsts {
				t.Fatalf("classify() = kind %v aadsts %d, want %v %d (%v)", e.Kind, e.AADSTS, tc.kind, tc.aadsts, e)
			}
			if !strings.Contains(e.Fix, tc.fixHas) {
				t.Errorf("Fix = %q, want it to contain %q", e.Fix, tc.fixHas)
			}
			if !strings.Contains(e.Reason, tc.reasHas) {
				t.Errorf("Reason = %q, want it to contain %q", e.Reason, tc.reasHas)
			}
			if e.Account != tc.acct.Name || !errors.Is(e, tc.err) {
				t.Errorf("Account = %q, Unwrap chain lost the cause", e.Account)
			}
			if strings.Contains(e.Fix, "{") {
				t.Errorf("Fix %q has an unexpanded placeholder", e.Fix)
			}
		})
	}
}

// Every table row must be complete: a kind, a reason and a fix.
func TestAADSTSTableComplete(t *testing.T) {
	for code, r := range aadstsTable {
		if r.kind < Temporary || r.kind > Failing || r.reason == "" || r.fix == "" {
			t.Errorf("aadstsTable[%d] = %+v is incomplete", code, r)
		}
	}
	for code, r := range codeTable {
		if r.kind < Temporary || r.kind > Failing || r.reason == "" || r.fix == "" {
			t.Errorf("codeTable[%q] = %+v is incomplete", code, r)
		}
	}
	// The brief's permanent codes must all be mapped with the right kind.
	for _, c := range []int{70000, 70008, 700082, 50173, 50076, 50079, 65001, 53003, 70043, 50057, 50053, 50055, 90094} {
		if aadstsTable[c].kind != NeedsLogin {
			t.Errorf("AADSTS%d kind = %v, want needs_login", c, aadstsTable[c].kind)
		}
	}
	for _, c := range []int{7000215, 7000222, 700016, 500011, 90002, 9001023, 7000218, 700025} {
		if aadstsTable[c].kind != Failing {
			t.Errorf("AADSTS%d kind = %v, want failing", c, aadstsTable[c].kind)
		}
	}
}

func TestAADSTSFromDescription(t *testing.T) {
	re := &oauth2.RetrieveError{Response: &http.Response{StatusCode: 400}, Body: []byte(`{"error":"invalid_grant"}`),
		ErrorCode: "invalid_grant", ErrorDescription: "AADSTS700082: The refresh token has expired due to inactivity."}
	if got := aadstsOf(re); got != 700082 {
		t.Fatalf("aadstsOf() = %d, want 700082", got)
	}
}
