package admin

import (
	"context"
	"net/http"
	"strings"
	"testing"

	"github.com/oauthbridge/oauthbridge/tokens"
)

// doctorTokens is fakeTokens that can also hand out tokens per resource,
// as *tokens.Manager does.
type doctorTokens struct {
	*fakeTokens
	asked int
}

func (d *doctorTokens) For(tokens.Resource) tokens.Source { return d }
func (d *doctorTokens) AccessToken(context.Context, string) (string, error) {
	d.asked++
	return "", &tokens.Error{Kind: tokens.NeedsLogin, Reason: "nobody has signed in"}
}
func (d *doctorTokens) Rejected(string, string) {}

// TestDoctorAPIProtected: POST /api/doctor needs the admin password and the
// API request header like every other API POST, names an unknown account,
// and needs a token manager that can run the checks.
func TestDoctorAPIProtected(t *testing.T) {
	e := newEnv(t, true)
	wantStatus(t, e.do("POST", "/api/doctor", nil, fromIP("192.0.2.50")), http.StatusUnauthorized)
	wantStatus(t, e.do("GET", "/api/doctor", nil, basic("admin", adminPass), header(APIRequestHeader, "t")), http.StatusMethodNotAllowed)
	wantStatus(t, e.do("POST", "/api/doctor", nil, basic("admin", adminPass)), http.StatusForbidden)
	// fakeTokens has no For: this daemon cannot run the checks.
	wantStatus(t, e.do("POST", "/api/doctor", nil, basic("admin", adminPass), header(APIRequestHeader, "t")), http.StatusNotImplemented)

	dt := &doctorTokens{fakeTokens: e.fake}
	e.h = New(Options{Config: e.h.(*handler).opts.Config, Tokens: dt, Logger: testLogger(t)})
	wantStatus(t, e.do("POST", "/api/doctor?account=nosuch", nil, basic("admin", adminPass), header(APIRequestHeader, "t")), http.StatusNotFound)
	body := wantStatus(t, e.do("POST", "/api/doctor", nil, basic("admin", adminPass), header(APIRequestHeader, "t")), http.StatusOK)
	if want := `"source": "daemon"`; !strings.Contains(body, want) {
		t.Errorf("body lacks %s: %s", want, body)
	}
}
