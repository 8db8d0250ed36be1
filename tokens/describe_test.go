package tokens

import (
	"strings"
	"testing"

	"github.com/oauthbridge/oauthbridge/config"
)

func TestDescribe(t *testing.T) {
	a := &config.Account{Name: "helpdesk", ProviderName: "contoso", Mailbox: "helpdesk@contoso.com", Delegate: "alice@contoso.com", Flow: config.FlowDelegated}
	reason, fix, ok := Describe(a, 50105)
	if !ok || !strings.Contains(reason, "not assigned") || !strings.Contains(fix, "assign alice@contoso.com, then run 'oauthbridge login helpdesk'") {
		t.Errorf("Describe(50105) = %q, %q, %v", reason, fix, ok)
	}
	if _, fix, ok := Describe(a, 90002); !ok || !strings.Contains(fix, "provider contoso") {
		t.Errorf("Describe(90002) = %q, %v", fix, ok)
	}
	app := *a
	app.Flow = config.FlowApp
	if _, fix, _ := Describe(&app, 65001); !strings.Contains(fix, "consent-url contoso") || strings.Contains(fix, "login") {
		t.Errorf("Describe(65001) for the app flow = %q, want the consent fix only", fix)
	}
	if _, _, ok := Describe(a, 1); ok {
		t.Error("Describe(1) ok")
	}
}
