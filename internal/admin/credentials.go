package admin

import (
	"net/http"
	"time"

	"github.com/oauthbridge/oauthbridge/tokens"
)

// credentialLister is what the credentials view needs; *tokens.Manager
// implements it. It is not part of Tokens, so other implementations (test
// doubles) need not.
type credentialLister interface {
	Credentials() []tokens.CredentialInfo
}

var _ credentialLister = (*tokens.Manager)(nil)

func (h *handler) credentials() []tokens.CredentialInfo {
	if cl, ok := h.opts.Tokens.(credentialLister); ok {
		return cl.Credentials()
	}
	return nil
}

// apiCredentials answers GET /api/credentials: each provider's client
// certificates (thumbprint, expiry, which one is in use) or client secret.
func (h *handler) apiCredentials(w http.ResponseWriter, _ *http.Request) {
	c := h.credentials()
	if c == nil {
		c = []tokens.CredentialInfo{}
	}
	writeJSON(w, http.StatusOK, c)
}

// credRow is one line of the status page's credentials table.
type credRow struct {
	tokens.CredentialInfo
	ExpiresAbs, ExpiresRel string
	Expired, Soon          bool
}

// CredentialExpirySoon: the status page marks a credential that expires
// within this time.
const CredentialExpirySoon = 30 * 24 * time.Hour

func (h *handler) credentialRows(now time.Time) []credRow {
	var out []credRow
	for _, c := range h.credentials() {
		r := credRow{CredentialInfo: c}
		if !c.NotAfter.IsZero() {
			r.ExpiresAbs = c.NotAfter.UTC().Format(time.RFC3339)
			r.ExpiresRel = relative(now, c.NotAfter, "in %s", "expired %s ago")
			r.Expired = !c.NotAfter.After(now)
			r.Soon = !r.Expired && c.NotAfter.Sub(now) < CredentialExpirySoon
		}
		out = append(out, r)
	}
	return out
}
