package fakems

import (
	"errors"
	"fmt"
	"net/http"
	"strings"
	"time"
)

func (f *Fake) handleDeviceCode(w http.ResponseWriter, r *http.Request) {
	_ = r.ParseForm()
	clientID := r.PostForm.Get("client_id")
	f.mu.Lock()
	a := f.apps[clientID]
	f.mu.Unlock()
	if a == nil {
		f.writeAADError(w, newAADError(400, "unauthorized_client", 700016, "Application with identifier '%s' was not found in the directory 'Fake'.", clientID))
		return
	}
	scopes, aerr := parseScopes(r.PostForm.Get("scope"))
	if aerr != nil {
		f.writeAADError(w, aerr)
		return
	}
	f.mu.Lock()
	d := &deviceAuth{
		deviceCode: "DAQABAAEAAA" + randomToken(48),
		clientID:   clientID,
		scopes:     scopes,
		expires:    f.now().Add(f.opts.DeviceCodeLifetime),
	}
	for {
		d.userCode = newUserCode()
		if f.userCodes[d.userCode] == nil {
			break
		}
	}
	f.devices[d.deviceCode] = d
	f.userCodes[d.userCode] = d
	f.mu.Unlock()

	verify := f.AuthorityURL + "/devicelogin"
	writeJSON(w, http.StatusOK, map[string]any{
		"user_code":        d.userCode,
		"device_code":      d.deviceCode,
		"verification_uri": verify,
		"expires_in":       int(f.opts.DeviceCodeLifetime / time.Second),
		"interval":         f.opts.DeviceInterval,
		"message":          fmt.Sprintf("To sign in, use a web browser to open the page %s and enter the code %s to authenticate.", verify, d.userCode),
	})
}

// ApproveDevice plays the person who opens the verification page, enters
// userCode and signs in as upn.
func (f *Fake) ApproveDevice(userCode, upn string) error {
	return f.decideDevice(userCode, upn, true)
}

// DenyDevice plays the person who declines the sign-in; the next poll gets
// authorization_declined.
func (f *Fake) DenyDevice(userCode string) error {
	return f.decideDevice(userCode, "", false)
}

func (f *Fake) decideDevice(userCode, upn string, approve bool) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	d := f.userCodes[strings.ToUpper(strings.TrimSpace(userCode))]
	if d == nil {
		return fmt.Errorf("fakems: device login: unknown code %q", userCode)
	}
	if !f.now().Before(d.expires) {
		return errors.New("fakems: device login: AADSTS70019: the code has expired")
	}
	if d.state != devicePending {
		return errors.New("fakems: device login: AADSTS90120: the request was already authorized or declined")
	}
	if !approve {
		d.state = deviceDenied
		return nil
	}
	if !f.users[norm(upn)] {
		return fmt.Errorf("fakems: device login: AADSTS50034: the user account %q does not exist", upn)
	}
	d.upn, d.state = norm(upn), deviceApproved
	f.grantConsentLocked(d.clientID, d.upn, d.scopes.all())
	return nil
}
