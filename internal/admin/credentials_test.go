package admin

import (
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/oauthbridge/oauthbridge/tokens"
)

// fakeCredTokens adds the credential list to fakeTokens.
type fakeCredTokens struct {
	*fakeTokens
	creds []tokens.CredentialInfo
}

func (f *fakeCredTokens) Credentials() []tokens.CredentialInfo { return f.creds }

func TestCredentialsView(t *testing.T) {
	e := newEnv(t, true)
	auth := basic("admin", adminPass)
	// A Tokens without Credentials: an empty list, no table.
	if body := wantStatus(t, e.do("GET", "/api/credentials", nil, auth), 200); strings.TrimSpace(body) != "[]" {
		t.Fatalf("/api/credentials without a lister = %s", body)
	}
	if body := wantStatus(t, e.do("GET", "/", nil, auth), 200); strings.Contains(body, `id="credentials"`) {
		t.Fatal("credentials table without credentials")
	}

	ft := &fakeCredTokens{fakeTokens: e.fake, creds: []tokens.CredentialInfo{
		{Provider: "m365", Kind: tokens.CredentialCertificate, Name: "AAAA0000AAAA0000AAAA0000AAAA0000AAAA0000", NotAfter: testNow.Add(10 * 24 * time.Hour), CertFile: "/etc/oauthbridge/old.crt"},
		{Provider: "m365", Kind: tokens.CredentialCertificate, Name: "BBBB1111BBBB1111BBBB1111BBBB1111BBBB1111", NotAfter: testNow.Add(400 * 24 * time.Hour), InUse: true, CertFile: "/etc/oauthbridge/<new>.crt"},
		{Provider: "other", Kind: tokens.CredentialSecret, Name: "client_secret", InUse: true},
	}}
	opts := e.h.(*handler).opts
	opts.Tokens = ft
	e.h = New(opts)
	var got []tokens.CredentialInfo
	if err := json.Unmarshal([]byte(wantStatus(t, e.do("GET", "/api/credentials", nil, auth), 200)), &got); err != nil || len(got) != 3 || !got[1].InUse || got[1].Name != ft.creds[1].Name {
		t.Fatalf("/api/credentials = %+v, %v", got, err)
	}
	wantStatus(t, e.do("GET", "/api/credentials", nil), 401)
	page := wantStatus(t, e.do("GET", "/", nil, auth), 200)
	for _, want := range []string{`id="credentials"`, "BBBB1111BBBB1111BBBB1111BBBB1111BBBB1111", "in 400d", `class="s-needs_login">in 10d`, "&lt;new&gt;.crt", "client_secret"} {
		if !strings.Contains(page, want) {
			t.Errorf("status page lacks %q", want)
		}
	}
	if strings.Contains(page, "<new>") {
		t.Error("the certificate file name is not escaped")
	}
}
