package tokens

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"strings"
	"time"

	"golang.org/x/oauth2"
	"golang.org/x/oauth2/jwt"

	"github.com/oauthbridge/oauthbridge/config"
)

// Google Workspace / Gmail (provider type = "google", microsoft-365.md §8).
//
// A person signs in with the authorization-code flow with PKCE on the
// loopback redirect (Google's device flow does not cover Gmail's scope);
// access_type=offline and prompt=consent make every sign-in return a
// refresh token. The app flow is a service account with domain-wide
// delegation: an RS256 JWT (iss = the service account, sub = the mailbox,
// scope, aud = the token endpoint) redeemed with the JWT bearer grant
// (RFC 7523) by golang.org/x/oauth2/jwt.

// GrantJWTBearer is the JWT bearer grant type (RFC 7523).
const GrantJWTBearer = "urn:ietf:params:oauth:grant-type:jwt-bearer"

// Google's refresh-token lifetimes, used to guess why a refresh token
// died (the endpoint only says "Token has been expired or revoked.").
const (
	googleTestingRefreshLifetime = 7 * 24 * time.Hour
	googleUnusedRefreshLifetime  = 183 * 24 * time.Hour
)

// googleEndpoint is a google provider's authorize and token endpoints. It
// has no device endpoint: Gmail's scope is not among the device flow's.
func googleEndpoint(p *config.Provider) oauth2.Endpoint {
	return oauth2.Endpoint{AuthURL: p.AuthURL(), TokenURL: p.TokenURL, AuthStyle: oauth2.AuthStyleInParams}
}

// googleDelegatedScopes: Gmail's one scope for IMAP, POP and SMTP, and
// openid email for the id_token that says who signed in.
func googleDelegatedScopes() []string {
	return []string{config.GoogleMailScope, "openid", "email"}
}

// googleAuthParams are the extra authorize parameters of a Google
// sign-in: a refresh token (access_type=offline), and a new one even when
// the person consented before (prompt=consent): a re-authentication that
// returned no refresh token would leave the account without one.
func googleAuthParams() []oauth2.AuthCodeOption {
	return []oauth2.AuthCodeOption{oauth2.AccessTypeOffline, oauth2.SetAuthURLParam("prompt", "consent")}
}

// googleDeviceError is the answer to a device-code sign-in for a Google
// account.
func googleDeviceError(ac *config.Account) *Error {
	return &Error{Account: ac.Name, Kind: Failing,
		Reason: "Google's device flow does not cover Gmail's scope " + config.GoogleMailScope + ", so a Google account cannot sign in with a device code",
		Fix: fmt.Sprintf("sign in with the browser: run 'oauthbridge login -browser %s' on a host with a browser, or press Connect for %s on the status page (admin public_url)",
			ac.Name, ac.Name)}
}

// googleGrant redeems the account's grant at Google: the refresh token of
// a person, or the service account's JWT assertion for the mailbox.
func (m *Manager) googleGrant(ctx context.Context, ac *config.Account, refreshToken string, loginAt time.Time) (*tokenResponse, error) {
	p := ac.Provider
	if ac.Flow == config.FlowApp {
		return m.serviceAccountToken(ctx, ac)
	}
	tr, err := m.tokenRequest(ctx, p, url.Values{"grant_type": {"refresh_token"}, "refresh_token": {refreshToken}})
	var re *oauth2.RetrieveError
	if err != nil && errors.As(err, &re) && re.ErrorCode == "invalid_grant" {
		return nil, googleRefreshDied(ac, re, loginAt, m.now())
	}
	return tr, err
}

// googleRefreshDied explains Google's invalid_grant on a refresh: the
// refresh token is gone, for one of the reasons Google documents.
func googleRefreshDied(ac *config.Account, re *oauth2.RetrieveError, loginAt, now time.Time) *Error {
	said := re.ErrorDescription
	if said == "" {
		said = "invalid_grant"
	}
	why := "Google ends a refresh token after 7 days while the Google Cloud project's OAuth consent screen is in \"Testing\", after 6 months without use, when the user changes the password, when the user or an administrator removes the app's access, and, without warning, when more than 100 refresh tokens exist for the account and OAuth client (each sign-in makes one)"
	if !loginAt.IsZero() {
		age := now.Sub(loginAt)
		switch {
		case age >= googleTestingRefreshLifetime-time.Hour && age < googleTestingRefreshLifetime+24*time.Hour:
			why = fmt.Sprintf("the sign-in was %s ago: a project whose OAuth consent screen is in \"Testing\" gets refresh tokens that expire after 7 days. ", age.Round(time.Hour)) + why
		case age >= googleUnusedRefreshLifetime:
			why = fmt.Sprintf("the sign-in was %s ago. ", age.Round(24*time.Hour)) + why
		}
	}
	return &Error{Account: ac.Name, Kind: NeedsLogin, Err: re,
		Reason: fmt.Sprintf("Google refused the refresh token (invalid_grant: %s); %s", said, why),
		Fix: fmt.Sprintf("publish the OAuth consent screen to \"In production\" (Google Cloud console > APIs & Services > OAuth consent screen > Publish app) so new refresh tokens do not expire after 7 days, then sign in again: run 'oauthbridge login %s' (as %s)",
			ac.Name, ac.Mailbox)}
}

// serviceAccountToken redeems a service account assertion for the
// account's mailbox (domain-wide delegation).
func (m *Manager) serviceAccountToken(ctx context.Context, ac *config.Account) (*tokenResponse, error) {
	p := ac.Provider
	sa := p.ServiceAccount
	if sa == nil {
		return nil, &Error{Account: ac.Name, Kind: Failing, Reason: "provider " + ac.ProviderName + " has no usable service_account_key",
			Fix: fmt.Sprintf("set service_account_key = file(\"/path/key.json\") (or credential(\"name\")) in provider %s and reload", ac.ProviderName)}
	}
	jc := &jwt.Config{
		Email:        sa.Email,
		PrivateKey:   []byte(sa.PrivateKey.Reveal()),
		PrivateKeyID: sa.KeyID,
		Subject:      ac.Mailbox,
		Scopes:       []string{config.GoogleMailScope},
		TokenURL:     p.TokenURL,
		// Expires stays 0: x/oauth2/jws then makes exp - iat exactly the
		// hour Google allows (with Expires it would be an hour and 10 s).
	}
	ctx, cancel := context.WithTimeout(ctx, m.opts.RequestTimeout)
	defer cancel()
	ctx = context.WithValue(ctx, oauth2.HTTPClient, m.httpClient(p))
	tok, err := jc.TokenSource(ctx).Token()
	if err != nil {
		var re *oauth2.RetrieveError
		if errors.As(err, &re) && re.ErrorCode == "" {
			// x/oauth2/jwt leaves the error JSON unparsed.
			var eb struct {
				Error string `json:"error"`
				Desc  string `json:"error_description"`
			}
			if json.Unmarshal(re.Body, &eb) == nil {
				re.ErrorCode, re.ErrorDescription = eb.Error, eb.Desc
			}
		}
		return nil, err
	}
	if tok.AccessToken == "" {
		return nil, errors.New("tokens: token response has no access_token")
	}
	tr := &tokenResponse{AccessToken: tok.AccessToken, TokenType: tok.TokenType}
	if !tok.Expiry.IsZero() {
		tr.ExpiresIn = flexInt(time.Until(tok.Expiry).Round(time.Second) / time.Second)
	}
	return tr, nil
}

// googleRemedy maps a Google token endpoint error (RFC 6749 code plus
// Google's error_description) to what the bridge does and what a person
// must do. Fix texts use the placeholders of aadstsTable.
func googleRemedy(a *config.Account, re *oauth2.RetrieveError) remedy {
	desc := strings.ToLower(re.ErrorDescription)
	app := a.Flow == config.FlowApp
	saID := "the service account's client ID"
	if p := a.Provider; p != nil && p.ServiceAccount != nil && p.ServiceAccount.ClientID != "" {
		saID = "client ID " + p.ServiceAccount.ClientID
	}
	dwd := "in the Google Workspace Admin console (Security > Access and data control > API controls > Domain-wide delegation) allow " + saID + " the scope " + config.GoogleMailScope + " (a change can take hours to apply)"
	newKey := "create a new JSON key for the service account (Google Cloud console > IAM & Admin > Service accounts > Keys), put it in service_account_key of provider {provider} and reload"
	switch re.ErrorCode {
	case "invalid_grant":
		switch {
		case !app:
			return remedy{NeedsLogin, "Google refused the grant (invalid_grant: " + re.ErrorDescription + ")",
				"publish the OAuth consent screen to \"In production\" if it is in \"Testing\", then sign in again: " + fixLogin, ""}
		case strings.Contains(desc, "invalid email or user id"):
			return remedy{Failing, "Google does not know the mailbox as a user of the service account's Workspace domain (invalid_grant: " + re.ErrorDescription + ")",
				"check mailbox of account {account}: it must be a user of the Workspace domain that granted domain-wide delegation", ""}
		case strings.Contains(desc, "signature"):
			return remedy{Failing, "Google refused the service account's signature (invalid_grant: " + re.ErrorDescription + "): the key was deleted or does not belong to the service account", newKey, ""}
		case strings.Contains(desc, "iat") || strings.Contains(desc, "exp") || strings.Contains(desc, "timeframe"):
			return remedy{Failing, "Google refused the assertion's time range (invalid_grant: " + re.ErrorDescription + ")", "check the system clock (timedatectl; NTP must be on)", ""}
		}
		return remedy{Failing, "Google refused the service account assertion (invalid_grant: " + re.ErrorDescription + ")", "check service_account_key of provider {provider} and the domain-wide delegation: " + dwd, ""}
	case "unauthorized_client":
		if app {
			return remedy{Failing, "the service account may not act for the mailbox with Gmail's scope (unauthorized_client: domain-wide delegation is missing)", dwd, ""}
		}
		return remedy{Failing, "Google's OAuth client refused this grant (unauthorized_client)", "check client_id and client_secret of provider {provider}: the OAuth client must be of type \"Desktop app\" (or \"Web application\" with the bridge's redirect URI)", ""}
	case "invalid_client":
		if app {
			return remedy{Failing, "Google refused the service account (invalid_client: " + re.ErrorDescription + "): it or its key was deleted or disabled", newKey, ""}
		}
		return remedy{Failing, "Google refused the OAuth client (invalid_client: " + re.ErrorDescription + ")", "check client_id and client_secret of provider {provider} against the OAuth client in Google Cloud console > APIs & Services > Credentials", ""}
	case "invalid_scope":
		return remedy{Failing, "Google refused the scope (invalid_scope: " + re.ErrorDescription + ")", "enable the Gmail API for the Google Cloud project of provider {provider} and add the scope " + config.GoogleMailScope + " to its OAuth consent screen", ""}
	case "access_denied", "admin_policy_enforced":
		return remedy{NeedsLogin, "the sign-in was declined or a Workspace policy blocks the app (" + re.ErrorCode + ")",
			"a Workspace administrator must allow the OAuth client (Admin console > Security > Access and data control > API controls > App access control), then " + fixLogin, ""}
	case "org_internal":
		return remedy{NeedsLogin, "the OAuth consent screen is \"Internal\" and the account is outside its organisation (org_internal)",
			"create the OAuth client in a project of the mailbox's Workspace organisation, or make the consent screen \"External\" and publish it, then " + fixLogin, ""}
	}
	if r, ok := codeTable[re.ErrorCode]; ok {
		return r
	}
	return remedy{Failing, fmt.Sprintf("Google's token endpoint refused the request (%s: %s)", re.ErrorCode, re.ErrorDescription), "check provider {provider} against its Google Cloud project", ""}
}
