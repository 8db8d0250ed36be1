package alerts

import (
	"fmt"
	"math"
	"sort"
	"time"

	"github.com/oauthbridge/oauthbridge/config"
	"github.com/oauthbridge/oauthbridge/tokens"
)

// Evaluate checks every condition now, announces the ones that started
// and the ones that cleared, and queues their delivery. It returns at once
// (delivery is asynchronous). Without an alerts block it does nothing and
// keeps the state, so a reload that adds the block again continues.
func (e *Engine) Evaluate() {
	e.evalMu.Lock()
	defer e.evalMu.Unlock()
	cfg := e.opts.Config()
	if cfg == nil || cfg.Alerts == nil {
		return
	}
	ac := cfg.Alerts
	now := e.opts.Now()
	want := map[string]Alert{}
	add := func(a Alert) {
		a.State, a.Severity = Firing, a.Condition.severity()
		if a.StartsAt.IsZero() {
			a.StartsAt = now
		}
		want[a.Key] = a
	}

	var status []tokens.AccountStatus
	if e.opts.Status != nil {
		status = e.opts.Status()
	}
	e.mu.Lock()
	seen := map[string]bool{}
	for _, st := range status {
		seen[st.Account] = true
		if a, ok := needsLogin(st); ok {
			add(a)
		}
		if reason, fix, failing := refreshFailing(st); failing {
			since, ok := e.failSince[st.Account]
			if !ok {
				since = now
				if a, firing := e.active[key(RefreshFailing, st.Account)]; firing {
					since = a.StartsAt // firing before a restart
				}
				e.failSince[st.Account] = since
			}
			if d := now.Sub(since); d >= ac.RefreshFailing {
				if fix == "" {
					fix = "check the network path to the identity platform and the app registration; `oauthbridge status` shows the last error"
				}
				add(Alert{Key: key(RefreshFailing, st.Account), Condition: RefreshFailing, Account: st.Account, Mailbox: st.Mailbox,
					Message: fmt.Sprintf("the token refresh of account %s (%s) has been failing for %s (alerts refresh_failing_for = %s): %s",
						st.Account, st.Mailbox, roundDur(d), ac.RefreshFailing, reason),
					Fix: fix, StartsAt: since})
			}
		} else {
			delete(e.failSince, st.Account)
		}
		if st.SendVia == config.SendViaAuto && st.SendPath == config.SendViaGraph {
			since := st.SendPathSince
			if since.IsZero() {
				since = now
			}
			why := st.SendPathReason
			if why == "" {
				why = "Microsoft 365 refused SMTP AUTH"
			}
			add(Alert{Key: key(GraphFallback, st.Account), Condition: GraphFallback, Account: st.Account, Mailbox: st.Mailbox,
				Message:  fmt.Sprintf("account %s (%s) has send_via = \"auto\" and now sends through Microsoft Graph instead of SMTP: %s; mail still flows", st.Account, st.Mailbox, why),
				Fix:      fmt.Sprintf("none needed for mail to flow; to send through SMTP again an Exchange administrator runs 'Set-CASMailbox -Identity %s -SmtpClientAuthenticationDisabled $false' (or enables SMTP AUTH tenant-wide with Set-TransportConfig); the bridge tries SMTP again every smtp auto_smtp_recheck", st.Mailbox),
				StartsAt: since})
		}
	}
	for name := range e.failSince {
		if !seen[name] {
			delete(e.failSince, name)
		}
	}
	for name := range e.restored {
		if _, counting := e.logins[name]; !counting && cfg.AccountByName[name] != nil && e.restoredFiring(name, now, ac.LoginWindow) {
			if a, ok := e.active[key(UpstreamLoginFailures, name)]; ok {
				want[a.Key] = a
			}
		}
	}
	for name, tr := range e.logins {
		if cfg.AccountByName[name] == nil {
			delete(e.logins, name)
			continue
		}
		tr.failures = pruned(tr.failures, now, ac.LoginWindow)
		if len(tr.failures) == 0 {
			delete(e.logins, name)
			continue
		}
		if len(tr.failures) < ac.LoginFailures {
			continue
		}
		acct := cfg.AccountByName[name]
		msg := fmt.Sprintf("%d upstream logins of account %s (%s) failed within %s (alerts upstream_login_failures = %d in upstream_login_window = %s); the last one (%s)",
			len(tr.failures), name, acct.Mailbox, ac.LoginWindow, ac.LoginFailures, ac.LoginWindow, tr.proto)
		if tr.lastErr != "" {
			msg += ": " + tr.lastErr
		}
		add(Alert{Key: key(UpstreamLoginFailures, name), Condition: UpstreamLoginFailures, Account: name, Mailbox: acct.Mailbox,
			Message:  msg,
			Fix:      fmt.Sprintf("the bridge's login log lines (result upstream_rejected or temporary, account %s) name the cause; if Microsoft 365 refuses the token, check that IMAP/POP/SMTP AUTH is enabled for %s (Get-CASMailbox -Identity %s) and that the signed-in person has access to it", name, acct.Mailbox, acct.Mailbox),
			StartsAt: tr.failures[0]})
	}
	e.mu.Unlock()

	for _, c := range e.credentials(cfg) {
		if c.NotAfter.IsZero() || c.NotAfter.Sub(now) > ac.ExpiryWarning {
			continue
		}
		add(credentialAlert(cfg, c, now, ac.ExpiryWarning))
	}

	// Transitions, in a stable order.
	var changes []Alert
	e.mu.Lock()
	for k, a := range want {
		if _, ok := e.active[k]; !ok {
			e.active[k] = a
			changes = append(changes, a)
		}
	}
	for k, a := range e.active {
		if _, ok := want[k]; !ok {
			delete(e.active, k)
			a.State, a.EndsAt = Resolved, now
			a.Message, a.Fix = resolvedMessage(a), ""
			changes = append(changes, a)
		}
	}
	if len(changes) > 0 {
		e.saveLocked() // state.go
	}
	e.mu.Unlock()
	sort.Slice(changes, func(i, j int) bool {
		if changes[i].State != changes[j].State {
			return changes[i].State == Resolved // clears first
		}
		return changes[i].Key < changes[j].Key
	})
	for _, a := range changes {
		lvl := e.log.Warn
		if a.State == Resolved {
			lvl = e.log.Info
		}
		lvl("alert "+string(a.State), "condition", string(a.Condition), "account", a.Account, "provider", a.Provider, "message", a.Message, "fix", a.Fix)
		e.event(Event{Kind: string(a.State), Alert: a})
		e.dispatch(cfg, a)
	}
	e.event(Event{Kind: "evaluated"})
}

func key(c Condition, subject string) string { return string(c) + "/" + subject }

func needsLogin(st tokens.AccountStatus) (Alert, bool) {
	if st.State != tokens.StateNeedsLogin {
		return Alert{}, false
	}
	msg := fmt.Sprintf("account %s (%s) needs a person to sign in; IMAP, POP3 and SMTP logins of its clients fail until then (mail waits on the clients and in the mailbox, nothing is lost yet)", st.Account, st.Mailbox)
	if st.LastError != "" {
		msg += ": " + st.LastError
		if st.AADSTS != 0 {
			msg += fmt.Sprintf(" (AADSTS%d)", st.AADSTS)
		}
	}
	fix := st.Fix
	if fix == "" {
		fix = fmt.Sprintf("run 'oauthbridge login %s' (or use Connect on the status page) and sign in", st.Account)
	}
	return Alert{Key: key(NeedsLogin, st.Account), Condition: NeedsLogin, Account: st.Account, Mailbox: st.Mailbox, Message: msg, Fix: fix, StartsAt: time.Time{}}, true
}

// refreshFailing reports whether an account's token refresh fails now (a
// needs_login account is the needs_login condition instead), with the
// reason and the fix tokens gave. A failing Microsoft Graph token of an
// account that sends through Graph counts too.
func refreshFailing(st tokens.AccountStatus) (reason, fix string, failing bool) {
	switch {
	case st.State == tokens.StateNeedsLogin:
		return "", "", false
	case st.State == tokens.StateFailing || st.LastError != "":
		reason = st.LastError
		if reason == "" {
			reason = "no valid access token"
		}
		if st.AADSTS != 0 {
			reason += fmt.Sprintf(" (AADSTS%d)", st.AADSTS)
		}
		return reason, st.Fix, true
	case st.GraphError != "" && st.SendPath == config.SendViaGraph:
		return "Microsoft Graph token: " + st.GraphError, st.GraphFix, true
	}
	return "", "", false
}

// credentials is the expiry list: the providers' client_secret_expires
// plus Options.Credentials (certificates).
func (e *Engine) credentials(cfg *config.Config) []CredentialExpiry {
	var out []CredentialExpiry
	for _, p := range cfg.Providers {
		if !p.SecretExpires.IsZero() {
			out = append(out, CredentialExpiry{Provider: p.Name, Kind: "secret", Name: "client_secret", NotAfter: p.SecretExpires, InUse: p.ClientSecret != ""})
		}
	}
	if e.opts.Credentials != nil {
		for _, c := range e.opts.Credentials() {
			if c.Kind == "secret" && cfg.ProviderByName[c.Provider] != nil && !cfg.ProviderByName[c.Provider].SecretExpires.IsZero() {
				continue // already from client_secret_expires
			}
			out = append(out, c)
		}
	}
	return out
}

func credentialAlert(cfg *config.Config, c CredentialExpiry, now time.Time, warn time.Duration) Alert {
	clientID := ""
	if p := cfg.ProviderByName[c.Provider]; p != nil {
		clientID = p.ClientID
	}
	what := fmt.Sprintf("the client secret of provider %s (app registration %s)", c.Provider, clientID)
	cred := "secret"
	// What Entra answers once it expired: 7000222 for a secret; for a
	// certificate 700027 "The key used is expired" (tokens/aadsts.go).
	code := "AADSTS7000222"
	fix := fmt.Sprintf("in Entra: App registrations > the app %s > Certificates & secrets > New client secret; put its value in provider %s's client_secret, set client_secret_expires to its Expires date, then reload the bridge (systemctl reload oauthbridge)", clientID, c.Provider)
	if c.Kind == "certificate" {
		what = fmt.Sprintf("the certificate %s of provider %s (app registration %s)", c.Name, c.Provider, clientID)
		cred = "certificate " + c.Name
		code = "AADSTS700027"
		fix = fmt.Sprintf("make a new key and certificate (oauthbridge cert new), upload the certificate in Entra (App registrations > the app %s > Certificates & secrets > Certificates), add it as a second client_certificate block of provider %s and reload the bridge; remove the old block once status shows the new one in use", clientID, c.Provider)
	}
	if !c.InUse {
		what += " (not in use now)"
	}
	date := c.NotAfter.UTC().Format("2006-01-02 15:04 MST")
	var msg string
	if left := c.NotAfter.Sub(now); left <= 0 {
		msg = fmt.Sprintf("%s expired on %s; token requests with it fail (%s) and the accounts of this provider stop when their tokens run out", what, date, code)
	} else {
		msg = fmt.Sprintf("%s expires on %s, in %s (alerts credential_expiry_warning = %s); after that token requests fail with %s and the mail of this provider's accounts stops",
			what, date, days(left), days(warn), code)
	}
	return Alert{Key: key(CredentialExpiring, c.Provider+"/"+c.Kind+"/"+c.Name), Condition: CredentialExpiring,
		Provider: c.Provider, Credential: cred, Message: msg, Fix: fix, StartsAt: now}
}

func resolvedMessage(a Alert) string {
	switch a.Condition {
	case NeedsLogin:
		return fmt.Sprintf("account %s (%s) is signed in again (or was removed from the configuration); its clients' logins work", a.Account, a.Mailbox)
	case RefreshFailing:
		return fmt.Sprintf("the token refresh of account %s (%s) works again (or the account was removed or needs a sign-in, which is its own alert)", a.Account, a.Mailbox)
	case CredentialExpiring:
		return fmt.Sprintf("the expiring %s of provider %s was replaced (its expiry is beyond the warning now, or it is no longer configured)", a.Credential, a.Provider)
	case GraphFallback:
		return fmt.Sprintf("account %s (%s) sends through SMTP again", a.Account, a.Mailbox)
	case UpstreamLoginFailures:
		return fmt.Sprintf("upstream logins of account %s (%s) work again, or none failed for a whole upstream_login_window", a.Account, a.Mailbox)
	}
	return "cleared: " + a.Message
}

func roundDur(d time.Duration) time.Duration {
	if d >= time.Minute {
		return d.Round(time.Minute)
	}
	return d.Round(time.Second)
}

// days writes a duration as whole days when it is a day or more.
func days(d time.Duration) string {
	if d >= 24*time.Hour {
		n := int(math.Floor(d.Hours() / 24))
		if n == 1 {
			return "1 day"
		}
		return fmt.Sprintf("%d days", n)
	}
	return roundDur(d).String()
}
