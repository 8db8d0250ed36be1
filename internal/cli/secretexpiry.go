package cli

import (
	"fmt"
	"io"
	"sort"
	"strings"
	"time"

	"github.com/oauthbridge/oauthbridge/config"
	"github.com/oauthbridge/oauthbridge/tokens"
)

// writeSecretExpiry prints, under the status table, when each provider's
// client secret expires (client_secret_expires, as the rows report it),
// with the fix when that is within the alert warning.
func writeSecretExpiry(w io.Writer, cfg *config.Config, rows []tokens.AccountStatus, now time.Time) {
	type prov struct {
		expires  time.Time
		accounts []string
	}
	byProv := map[string]*prov{}
	for _, r := range rows {
		if r.ClientSecretExpires.IsZero() {
			continue
		}
		name := "of the provider of account " + r.Account // not in this configuration
		if a := cfg.AccountByName[r.Account]; a != nil {
			name = "of provider " + a.ProviderName
		}
		p := byProv[name]
		if p == nil {
			p = &prov{expires: r.ClientSecretExpires}
			byProv[name] = p
		}
		p.accounts = append(p.accounts, r.Account)
	}
	if len(byProv) == 0 {
		return
	}
	warn := config.DefaultCredentialExpiryWarning
	if cfg.Alerts != nil && cfg.Alerts.ExpiryWarning > 0 {
		warn = cfg.Alerts.ExpiryWarning
	}
	names := make([]string, 0, len(byProv))
	for n := range byProv {
		names = append(names, n)
	}
	sort.Strings(names)
	fmt.Fprintln(w)
	for _, n := range names {
		p := byProv[n]
		date := p.expires.UTC().Format("2006-01-02")
		left := p.expires.Sub(now)
		line := fmt.Sprintf("Client secret %s (accounts %s) expires %s (in %d days).", n, strings.Join(p.accounts, ", "), date, int(left.Hours()/24))
		switch {
		case left <= 0:
			line = fmt.Sprintf("Client secret %s (accounts %s) EXPIRED on %s: token requests fail with AADSTS7000222.", n, strings.Join(p.accounts, ", "), date)
		case left <= warn:
			line = fmt.Sprintf("Client secret %s (accounts %s) expires %s, in %d days.", n, strings.Join(p.accounts, ", "), date, int(left.Hours()/24))
		default:
			fmt.Fprintln(w, line)
			continue
		}
		fmt.Fprintln(w, line+" Fix: in Entra, App registrations > the app > Certificates & secrets > New client secret; put it in client_secret, set client_secret_expires to its Expires date, then systemctl reload oauthbridge.")
	}
}
