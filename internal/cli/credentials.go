package cli

import (
	"context"
	"fmt"
	"io"
	"text/tabwriter"
	"time"

	"github.com/oauthbridge/oauthbridge/config"
	"github.com/oauthbridge/oauthbridge/tokens"
)

// CredentialExpiryWarning: status marks a client certificate or secret that
// expires within this time.
const CredentialExpiryWarning = 30 * 24 * time.Hour

// statusCredentials returns the providers' client credentials: from the
// running daemon (which knows the certificate in use), else from the
// configuration (which certificate is in use is then unknown).
func statusCredentials(ctx context.Context, cl *adminClient, cfg *config.Config, daemonUp bool) (creds []tokens.CredentialInfo, fromDaemon bool) {
	if daemonUp && cl.do(ctx, "GET", "/api/credentials", &creds) == nil {
		return creds, true
	}
	creds = nil
	for _, p := range cfg.Providers {
		for _, cc := range p.ClientCertificates {
			ci := tokens.CredentialInfo{Provider: p.Name, Kind: tokens.CredentialCertificate, Name: cc.Thumbprint(), CertFile: cc.CertFile}
			if cc.Cert != nil {
				ci.NotAfter = cc.Cert.NotAfter
			}
			creds = append(creds, ci)
		}
		if len(p.ClientCertificates) == 0 && p.ClientSecret != "" {
			creds = append(creds, tokens.CredentialInfo{Provider: p.Name, Kind: tokens.CredentialSecret, Name: "client_secret", InUse: true})
		}
	}
	return creds, false
}

// writeCredentialTable prints the providers' client credentials below the
// account table: each certificate's thumbprint, expiry and whether it is in
// use.
func writeCredentialTable(w io.Writer, creds []tokens.CredentialInfo, fromDaemon bool, now time.Time) {
	if len(creds) == 0 {
		return
	}
	fmt.Fprintln(w)
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "PROVIDER\tCREDENTIAL\tTHUMBPRINT (SHA-1)\tEXPIRES\tIN USE")
	for _, c := range creds {
		name, exp := c.Name, "-"
		if c.Kind == tokens.CredentialSecret {
			name = "-"
		}
		if name == "" {
			name = "(unreadable: " + c.CertFile + ")"
		}
		if !c.NotAfter.IsZero() {
			left := c.NotAfter.Sub(now)
			exp = c.NotAfter.UTC().Format("2006-01-02") + fmt.Sprintf(" (in %dd)", int(left/(24*time.Hour)))
			switch {
			case left <= 0:
				exp = c.NotAfter.UTC().Format("2006-01-02") + " (EXPIRED: oauthbridge cert new, upload, add the block)"
			case left < CredentialExpiryWarning:
				exp += " (soon: make and upload the next one)"
			}
		}
		inUse := "no"
		switch {
		case c.InUse:
			inUse = "yes"
		case !fromDaemon && c.Kind == tokens.CredentialCertificate:
			inUse = "?"
		}
		kind := c.Kind
		if c.Kind == tokens.CredentialSecret {
			kind = "client_secret"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", c.Provider, kind, name, exp, inUse)
	}
	tw.Flush()
}

// writeCheckCertificates lists, after check's OK, each client certificate
// with the thumbprint to find in Entra and its expiry.
func writeCheckCertificates(w io.Writer, cfg *config.Config) {
	now := time.Now()
	for _, p := range cfg.Providers {
		for _, cc := range p.ClientCertificates {
			if cc.Cert == nil {
				continue
			}
			days := int(cc.Cert.NotAfter.Sub(now) / (24 * time.Hour))
			fmt.Fprintf(w, "  provider %s: client certificate %s (%s, %s) valid until %s (%d days)\n",
				p.Name, cc.Thumbprint(), cc.CertFile, cc.Algorithm, cc.Cert.NotAfter.UTC().Format("2006-01-02"), days)
		}
	}
}
