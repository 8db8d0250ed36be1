package fakems

import (
	"net/http"
	"time"
)

// knobState holds the per-mailbox protocol switches and the clock skew
// that `oauthbridge doctor` is tested against. Guarded by Fake.mu.
type knobState struct {
	imapDisabled map[string]bool // Set-CASMailbox -ImapEnabled $false
	popDisabled  map[string]bool // Set-CASMailbox -PopEnabled $false
	clockSkew    time.Duration   // added to the identity platform's Date header
}

// SetIMAPEnabled models Set-CASMailbox -Identity mailbox -ImapEnabled: while
// disabled, AUTHENTICATE XOAUTH2 for the mailbox answers "NO AUTHENTICATE
// failed." whatever the token (Exchange says no more).
func (f *Fake) SetIMAPEnabled(mailbox string, enabled bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.knobs.imapDisabled == nil {
		f.knobs.imapDisabled = map[string]bool{}
	}
	f.knobs.imapDisabled[norm(mailbox)] = !enabled
}

// SetPOPEnabled models Set-CASMailbox -Identity mailbox -PopEnabled: while
// disabled, AUTH XOAUTH2 for the mailbox answers "-ERR Authentication
// failure: unknown user name or bad password.".
func (f *Fake) SetPOPEnabled(mailbox string, enabled bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.knobs.popDisabled == nil {
		f.knobs.popDisabled = map[string]bool{}
	}
	f.knobs.popDisabled[norm(mailbox)] = !enabled
}

// protocolDisabled reports whether proto ("imap" or "pop3") is switched
// off for mailbox addr.
func (f *Fake) protocolDisabled(proto, addr string) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	if proto == "imap" {
		return f.knobs.imapDisabled[norm(addr)]
	}
	return f.knobs.popDisabled[norm(addr)]
}

// RemoveFullAccess models Remove-MailboxPermission -Identity mailbox -User
// trustee -AccessRights FullAccess: a delegated token of trustee no longer
// opens the mailbox (IMAP: "BAD User is authenticated but not connected."
// after AUTHENTICATE; POP3 and SMTP: authentication failure).
func (f *Fake) RemoveFullAccess(mailbox, trustee string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	delete(f.mailboxLocked(mailbox).delegates, norm(trustee))
}

// RemoveSendAs takes back AllowSendAs: MAIL FROM one of from in a session
// of mailbox answers "550 5.7.60 SMTP; Client does not have permissions to
// send as this sender".
func (f *Fake) RemoveSendAs(mailbox string, from ...string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	mb := f.mailboxLocked(mailbox)
	for _, a := range from {
		delete(mb.sendAs, norm(a))
	}
}

// SetClockSkew makes the identity platform's HTTP Date header run d ahead
// of the fake's clock (negative: behind), as a server would look to a host
// whose own clock is off by -d.
func (f *Fake) SetClockSkew(d time.Duration) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.knobs.clockSkew = d
}

// withDate sets the Date header of every identity-platform answer from the
// fake's clock plus the skew.
func (f *Fake) withDate(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		f.mu.Lock()
		skew := f.knobs.clockSkew
		f.mu.Unlock()
		w.Header().Set("Date", f.now().Add(skew).UTC().Format(http.TimeFormat))
		h.ServeHTTP(w, r)
	})
}
