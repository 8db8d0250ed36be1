package config

import (
	"fmt"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/hashicorp/hcl/v2"
	"github.com/zclconf/go-cty/cty"
)

// Alert defaults (the alerts block). A token refresh may fail for a few
// minutes (Entra has short outages) without anything to do; after
// DefaultRefreshFailingFor the cached token is gone or going and a person
// should look. Entra lets a client secret live two years at most; thirty
// days leave time for a change request. Five failed upstream logins of one
// account within fifteen minutes are not a client typing a wrong password
// (that never reaches Microsoft 365): the mailbox or tenant refuses us.
const (
	DefaultRefreshFailingFor       = 30 * time.Minute
	DefaultCredentialExpiryWarning = 30 * 24 * time.Hour
	DefaultUpstreamLoginFailures   = 5
	DefaultUpstreamLoginWindow     = 15 * time.Minute
	DefaultAlertCheckInterval      = time.Minute
)

// AlertsBlock is the top-level alerts { } block: where the bridge tells
// an administrator that something needs a person, before the mail stops.
type AlertsBlock struct {
	// WebhookURL receives a JSON POST per alert (Teams, Slack, Mattermost
	// incoming webhooks; Alertmanager-style receivers). Its query string
	// and path may hold a secret: it is never logged.
	WebhookURL      string
	Headers         map[string]string
	WebhookRedacted string // scheme://host of webhook_url, for logs

	Recipients     []string      // email_to as a list
	Sender         *Account      // email_account resolved
	RefreshFailing time.Duration // refresh_failing_for
	ExpiryWarning  time.Duration // credential_expiry_warning
	LoginFailures  int           // upstream_login_failures
	LoginWindow    time.Duration // upstream_login_window
	EvaluateEvery  time.Duration // check_interval
}

// alertsSchema is the alerts { } block as written (first stage): raw
// strings, email_to as HCL wrote it, and the ranges. validateAlerts
// builds AlertsBlock from it.
type alertsSchema struct {
	WebhookURL string            `hcl:"webhook_url,optional"`
	Headers    map[string]string `hcl:"headers,optional"`
	// EmailTo is one address or a list; EmailAccount is the account
	// (an account block's label) whose mailbox sends the alert mail.
	EmailTo      cty.Value `hcl:"email_to,optional"`
	EmailAccount string    `hcl:"email_account,optional"`

	RefreshFailingFor       string `hcl:"refresh_failing_for,optional"`
	CredentialExpiryWarning string `hcl:"credential_expiry_warning,optional"`
	UpstreamLoginFailures   int    `hcl:"upstream_login_failures,optional"`
	UpstreamLoginWindow     string `hcl:"upstream_login_window,optional"`
	CheckInterval           string `hcl:"check_interval,optional"`

	DefRange          hcl.Range `hcl:",def_range"`
	WebhookRange      hcl.Range `hcl:"webhook_url,attr_range"`
	HeadersRange      hcl.Range `hcl:"headers,attr_range"`
	EmailToRange      hcl.Range `hcl:"email_to,attr_range"`
	EmailAccountRange hcl.Range `hcl:"email_account,attr_range"`
	RefreshRange      hcl.Range `hcl:"refresh_failing_for,attr_range"`
	ExpiryRange       hcl.Range `hcl:"credential_expiry_warning,attr_range"`
	FailuresRange     hcl.Range `hcl:"upstream_login_failures,attr_range"`
	WindowRange       hcl.Range `hcl:"upstream_login_window,attr_range"`
	IntervalRange     hcl.Range `hcl:"check_interval,attr_range"`
}

// parseExpiryDate reads client_secret_expires: a date ("2027-06-30",
// midnight UTC at its start, so a warning comes rather early than late) or
// an RFC 3339 time.
func parseExpiryDate(s string) (time.Time, error) {
	if t, err := time.Parse(time.DateOnly, s); err == nil {
		return t, nil
	}
	return time.Parse(time.RFC3339, s)
}

// parseDays reads a duration that may also be written in days ("30d").
func parseDays(s string) (time.Duration, error) {
	if n, ok := strings.CutSuffix(s, "d"); ok {
		d, err := strconv.Atoi(n)
		if err != nil || d <= 0 {
			return 0, fmt.Errorf("%q is not a positive number of days", s)
		}
		return time.Duration(d) * 24 * time.Hour, nil
	}
	d, err := time.ParseDuration(s)
	if err != nil {
		return 0, err
	}
	if d <= 0 {
		return 0, fmt.Errorf("%q is not positive", s)
	}
	return d, nil
}

// validateAlerts resolves client_secret_expires of every provider and the
// alerts block. It runs after the accounts are resolved.
func (c *Config) validateAlerts(providers []*providerSchema, a *alertsSchema, file hcl.Range, diags *hcl.Diagnostics) {
	for _, p := range providers {
		if p.ClientSecretExpires == "" || p.rt == nil {
			continue
		}
		t, err := parseExpiryDate(p.ClientSecretExpires)
		if err != nil {
			*diags = append(*diags, diagAt(p.SecretExpiresRange, p.DefRange, "Invalid client_secret_expires",
				fmt.Sprintf("provider %q: client_secret_expires = %q is neither a date such as \"2027-06-30\" nor an RFC 3339 time such as \"2027-06-30T12:00:00Z\". Copy the Expires date of the secret from Entra: App registrations > the app > Certificates & secrets.", p.Name, p.ClientSecretExpires)))
			continue
		}
		p.rt.SecretExpires = t
	}
	if a == nil {
		return
	}
	rt := &AlertsBlock{WebhookURL: a.WebhookURL, Headers: a.Headers}
	def := orRange(a.DefRange, file)
	if a.WebhookURL != "" {
		u, err := url.Parse(a.WebhookURL)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			*diags = append(*diags, diagAt(a.WebhookRange, def, "Invalid webhook_url",
				"alerts webhook_url must be an absolute http:// or https:// URL, such as the incoming-webhook URL Teams, Slack or Mattermost gives you, or an Alertmanager-style receiver (\"https://alerts.example.com/hook\")."))
		} else {
			rt.WebhookRedacted = u.Scheme + "://" + u.Host
		}
	}
	for k := range a.Headers {
		if k == "" || strings.ContainsAny(k, " \t\r\n:") {
			*diags = append(*diags, diagAt(a.HeadersRange, def, "Invalid header name",
				fmt.Sprintf("alerts headers: %q is not an HTTP header name; write headers = { Authorization = \"Bearer ...\" }.", k)))
		}
	}
	if !a.EmailTo.IsNull() && a.EmailTo.IsKnown() {
		ty := a.EmailTo.Type()
		switch {
		case ty == cty.String:
			rt.Recipients = []string{a.EmailTo.AsString()}
		case ty.IsListType() || ty.IsTupleType() || ty.IsSetType():
			for it := a.EmailTo.ElementIterator(); it.Next(); {
				_, v := it.Element()
				if v.IsNull() || !v.IsKnown() || v.Type() != cty.String {
					rt.Recipients = append(rt.Recipients, "")
					continue
				}
				rt.Recipients = append(rt.Recipients, v.AsString())
			}
		default:
			rt.Recipients = []string{""}
		}
		for _, r := range rt.Recipients {
			if !strings.Contains(r, "@") || strings.ContainsAny(r, " \t\r\n<>,") {
				*diags = append(*diags, diagAt(a.EmailToRange, def, "Invalid email_to",
					fmt.Sprintf("alerts email_to: %q is not an e-mail address; write email_to = \"admin@contoso.com\" or a list [\"a@contoso.com\", \"b@contoso.com\"].", r)))
			}
		}
	}
	switch {
	case len(rt.Recipients) > 0 && a.EmailAccount == "":
		*diags = append(*diags, diagAt(a.EmailToRange, def, "email_to needs email_account",
			fmt.Sprintf("alerts email_to is set, so email_account must name the account whose mailbox sends the alert mail (one of %s).", names(c.AccountByName))))
	case a.EmailAccount != "" && len(rt.Recipients) == 0:
		*diags = append(*diags, diagAt(a.EmailAccountRange, def, "email_account without email_to",
			"alerts email_account names the sending account, but email_to (the administrator's address) is missing; add email_to = \"admin@contoso.com\"."))
	case a.EmailAccount != "":
		if ac, ok := c.AccountByName[a.EmailAccount]; ok {
			rt.Sender = ac
		} else {
			*diags = append(*diags, diagAt(a.EmailAccountRange, def, "Undefined email_account",
				fmt.Sprintf("alerts email_account = %q is not an account of this configuration. It must name an account block whose mailbox sends the alert mail; defined accounts: %s.", a.EmailAccount, names(c.AccountByName))))
		}
	}
	if a.WebhookURL == "" && len(rt.Recipients) == 0 {
		*diags = append(*diags, diagAt(a.DefRange, file, "Alerts go nowhere",
			"the alerts block has neither webhook_url nor email_to, so no alert could be delivered; add webhook_url = \"https://...\" and/or email_to with email_account."))
	}
	rt.RefreshFailing = parseDuration(a.RefreshFailingFor, DefaultRefreshFailingFor, a.RefreshRange, def, "alerts refresh_failing_for", diags)
	rt.LoginWindow = parseDuration(a.UpstreamLoginWindow, DefaultUpstreamLoginWindow, a.WindowRange, def, "alerts upstream_login_window", diags)
	rt.EvaluateEvery = parseDuration(a.CheckInterval, DefaultAlertCheckInterval, a.IntervalRange, def, "alerts check_interval", diags)
	rt.ExpiryWarning = DefaultCredentialExpiryWarning
	if a.CredentialExpiryWarning != "" {
		d, err := parseDays(a.CredentialExpiryWarning)
		if err != nil {
			*diags = append(*diags, diagAt(a.ExpiryRange, def, "Invalid credential_expiry_warning",
				fmt.Sprintf("alerts credential_expiry_warning must be a number of days such as \"30d\" or a Go duration such as \"720h\": %v", err)))
		} else {
			rt.ExpiryWarning = d
		}
	}
	positive(diags, def, "alerts", "upstream_login_failures", a.UpstreamLoginFailures, a.FailuresRange, DefaultUpstreamLoginFailures)
	rt.LoginFailures = orInt(a.UpstreamLoginFailures, DefaultUpstreamLoginFailures)
	c.Alerts = rt
}
