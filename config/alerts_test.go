package config

import (
	"errors"
	"os"
	"strings"
	"testing"
	"time"
)

const alertsBase = `state_dir = "/tmp"
provider "contoso" {
  tenant        = "contoso.com"
  client_id     = "app-id"
  client_secret = "s3cret"
  %s
}
account "helpdesk" {
  provider = "contoso"
  mailbox  = "helpdesk@contoso.com"
}
account "scanner" {
  provider = "contoso"
  mailbox  = "scanner@contoso.com"
}
%s
`

func parseAlerts(t *testing.T, provider, block string) (*Config, error) {
	t.Helper()
	src := strings.Replace(strings.Replace(alertsBase, "%s", provider, 1), "%s", block, 1)
	return Parse("alerts.hcl", []byte(src))
}

func TestAlertsBlock(t *testing.T) {
	cfg, err := parseAlerts(t, `client_secret_expires = "2027-06-30"`, `alerts {
  webhook_url   = "https://hooks.example.com/services/T0/B0/SECRETPART?token=x"
  headers       = { Authorization = "Bearer abc" }
  email_to      = "admin@contoso.com"
  email_account = "scanner"
  refresh_failing_for       = "45m"
  credential_expiry_warning = "14d"
  upstream_login_failures   = 3
  upstream_login_window     = "10m"
}`)
	if err != nil {
		t.Fatal(err)
	}
	a := cfg.Alerts
	if a.Sender != cfg.AccountByName["scanner"] || len(a.Recipients) != 1 || a.Recipients[0] != "admin@contoso.com" {
		t.Errorf("email: sender %v recipients %v", a.Sender, a.Recipients)
	}
	if a.RefreshFailing != 45*time.Minute || a.ExpiryWarning != 14*24*time.Hour || a.LoginFailures != 3 || a.LoginWindow != 10*time.Minute {
		t.Errorf("thresholds: %+v", a)
	}
	if a.WebhookRedacted != "https://hooks.example.com" || a.Headers["Authorization"] != "Bearer abc" {
		t.Errorf("webhook: %q %v", a.WebhookRedacted, a.Headers)
	}
	if want := time.Date(2027, 6, 30, 0, 0, 0, 0, time.UTC); !cfg.ProviderByName["contoso"].SecretExpires.Equal(want) {
		t.Errorf("client_secret_expires = %v, want %v", cfg.ProviderByName["contoso"].SecretExpires, want)
	}

	// Defaults and a list of recipients; RFC 3339 expiry.
	cfg, err = parseAlerts(t, `client_secret_expires = "2027-06-30T12:30:00+02:00"`, `alerts {
  email_to      = ["a@contoso.com", "b@contoso.com"]
  email_account = "helpdesk"
}`)
	if err != nil {
		t.Fatal(err)
	}
	a = cfg.Alerts
	if a.RefreshFailing != DefaultRefreshFailingFor || a.ExpiryWarning != DefaultCredentialExpiryWarning ||
		a.LoginFailures != DefaultUpstreamLoginFailures || a.LoginWindow != DefaultUpstreamLoginWindow || a.EvaluateEvery != DefaultAlertCheckInterval {
		t.Errorf("defaults: %+v", a)
	}
	if len(a.Recipients) != 2 || a.Recipients[1] != "b@contoso.com" {
		t.Errorf("recipients %v", a.Recipients)
	}
	if want := time.Date(2027, 6, 30, 10, 30, 0, 0, time.UTC); !cfg.ProviderByName["contoso"].SecretExpires.Equal(want) {
		t.Errorf("RFC 3339 client_secret_expires = %v", cfg.ProviderByName["contoso"].SecretExpires)
	}
}

func TestAlertsBlockErrorsNameTheFix(t *testing.T) {
	for _, c := range []struct{ provider, block, want string }{
		{"", `alerts { webhook_url = "ftp://x.example.com/h" }`, "must be an absolute http:// or https:// URL"},
		{"", `alerts { webhook_url = "hooks.example.com/x" }`, "must be an absolute http:// or https:// URL"},
		{"", `alerts {
  email_to      = "admin@contoso.com"
  email_account = "nosuch"
}`, `must name an account block whose mailbox sends the alert mail; defined accounts: "helpdesk", "scanner"`},
		{"", `alerts { email_to = "admin@contoso.com" }`, "email_account must name the account"},
		{"", `alerts { email_account = "helpdesk" }`, "email_to (the administrator's address) is missing"},
		{"", `alerts {
  email_to      = "not-an-address"
  email_account = "helpdesk"
}`, "is not an e-mail address"},
		{"", `alerts { refresh_failing_for = "30m" }`, "neither webhook_url nor email_to"},
		{"", `alerts {
  webhook_url = "https://h.example.com/x"
  credential_expiry_warning = "soon"
}`, `a number of days such as "30d"`},
		{"", `alerts {
  webhook_url = "https://h.example.com/x"
  upstream_login_failures = 0
}`, "must be a positive number"},
		{`client_secret_expires = "30.06.2027"`, "", `nor an RFC 3339 time`},
	} {
		_, err := parseAlerts(t, c.provider, c.block)
		var ce *Error
		if !errors.As(err, &ce) {
			t.Errorf("%s %s: err = %v, want a config error", c.provider, c.block, err)
			continue
		}
		if !strings.Contains(ce.Diags.Error(), c.want) {
			t.Errorf("%s %s:\n got %s\nwant %q", c.provider, c.block, ce.Diags.Error(), c.want)
		}
	}
}

// The commented alerts block of config.hcl.example works when uncommented.
func TestExampleAlertsBlock(t *testing.T) {
	src, err := os.ReadFile("../config.hcl.example")
	if err != nil {
		t.Fatal(err)
	}
	var block []string
	in := false
	for _, l := range strings.Split(string(src), "\n") {
		if strings.HasPrefix(l, "# alerts {") {
			in = true
		}
		if in {
			block = append(block, strings.TrimPrefix(strings.TrimPrefix(l, "#"), " "))
		}
		if in && l == "# }" {
			break
		}
	}
	if len(block) < 3 {
		t.Fatal("config.hcl.example has no commented alerts block")
	}
	full := string(src) + "\n" + strings.Join(block, "\n") + "\n"
	full = strings.Replace(full, `  # client_secret_expires = "2027-06-30"`, `  client_secret_expires = "2027-06-30"`, 1)
	cfg, err := Parse("config.hcl.example", []byte(full))
	if err != nil {
		t.Fatal(err)
	}
	a := cfg.Alerts
	if a == nil || a.Sender == nil || a.Sender.Name != "helpdesk" || a.WebhookRedacted != "https://contoso.webhook.office.com" || a.LoginFailures != DefaultUpstreamLoginFailures {
		t.Errorf("example alerts block: %+v", a)
	}
	if cfg.ProviderByName["contoso"].SecretExpires.IsZero() {
		t.Error("example client_secret_expires not parsed")
	}
}
