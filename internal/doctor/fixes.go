package doctor

import (
	"fmt"

	"github.com/oauthbridge/oauthbridge/config"
	"github.com/oauthbridge/oauthbridge/tokens"
)

// The fix texts: Exchange Online PowerShell lines with the configuration's
// names filled in (microsoft-365.md §3.2-3.4). psPrefix says where to run
// them; psDelay is how long Exchange takes to apply them.
const (
	psPrefix = "in Exchange Online PowerShell (Install-Module ExchangeOnlineManagement; Connect-ExchangeOnline):"
	psDelay  = "Exchange can take up to an hour to apply a permission change; run 'oauthbridge doctor %s' again then"
)

// spIdentity is the PowerShell expression of the app's Exchange service
// principal.
func (r *run) spIdentity() string {
	return fmt.Sprintf("(Get-ServicePrincipal -Identity %s).Identity", r.p.ClientID)
}

// fullAccessFix grants the token's identity FullAccess on the mailbox.
func (r *run) fullAccessFix() []string {
	if r.a.Flow == config.FlowApp {
		return []string{
			psPrefix,
			fmt.Sprintf("New-ServicePrincipal -AppId %s -ObjectId <Object ID of the app in Entra admin center > Enterprise applications (not the App registration's)>", r.p.ClientID),
			fmt.Sprintf("Add-MailboxPermission -Identity %s -User %s -AccessRights FullAccess", r.a.Mailbox, r.spIdentity()),
			fmt.Sprintf(psDelay, r.a.Name),
		}
	}
	return []string{
		psPrefix,
		fmt.Sprintf("Add-MailboxPermission -Identity %s -User %s -AccessRights FullAccess -InheritanceType All", r.a.Mailbox, r.a.LoginHint()),
		fmt.Sprintf(psDelay, r.a.Name),
	}
}

// sendAsFix grants Send As on addr to the identity that submits for the
// account: the mailbox the SMTP session authenticates as (user=), or the
// app's service principal.
func (r *run) sendAsFix(addr string) []string {
	trustee := r.a.Mailbox
	if r.a.Flow == config.FlowApp {
		trustee = r.spIdentity()
	}
	return []string{
		psPrefix,
		fmt.Sprintf("Add-RecipientPermission -Identity %s -Trustee %s -AccessRights SendAs -Confirm:$false", addr, trustee),
		fmt.Sprintf(psDelay, r.a.Name),
	}
}

// consentURL is the admin-consent URL of the account's provider, with
// the admin listener's redirect URI (admin.CallbackPath; admin imports
// this package, so the path is spelled out).
func (r *run) consentURL() string {
	return tokens.ConsentURL(r.p, r.cfg.Admin.PublicURL+"/oauth/callback")
}

// tokenFix is a token error's fix, plus the consent URL itself when the
// fix is consent (so nobody has to run another command to get it).
func (r *run) tokenFix(te *tokens.Error) []string {
	fix := []string{te.Fix}
	switch te.AADSTS {
	case 65001, 65004, 90094, 650057, 65005, 650056:
		fix = append(fix, "admin-consent URL (a tenant administrator opens it): "+r.consentURL())
	}
	return fix
}
