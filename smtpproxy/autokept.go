package smtpproxy

import (
	"time"

	"github.com/oauthbridge/oauthbridge/config"
)

// autoStateLocked returns the send_via = "auto" state of account a,
// creating it at the account's first use after start from the path the
// token store kept (tokens.Manager.SendPath): an account that was
// switched to Microsoft Graph before a restart goes straight to Graph
// until its recheck time, instead of making a failing SMTP AUTH attempt
// first. A kept recheck time later than now plus the configured
// auto_smtp_recheck (the setting was shortened meanwhile) is due at once.
// Callers hold s.gb.mu.
func (s *Server) autoStateLocked(a *config.Account) *autoState {
	if s.gb.auto == nil {
		s.gb.auto = map[string]*autoState{}
	}
	if st := s.gb.auto[a.Name]; st != nil {
		return st
	}
	st := &autoState{}
	s.gb.auto[a.Name] = st
	ps, ok := s.opts.Tokens.(sendPathSetter)
	if !ok {
		return st
	}
	path, reason, since, recheckAt, ok := ps.SendPath(a.Name)
	if !ok || path != config.SendViaGraph {
		return st
	}
	if now := time.Now(); recheckAt.After(now.Add(autoRecheck(smtpLimits(s.opts.Config())))) {
		recheckAt = now
	}
	st.onGraph, st.since, st.reason, st.recheckAt = true, since, reason, recheckAt
	s.log.Info("send_via = auto: this account was switched to Microsoft Graph before the restart; it stays on Graph until SMTP is tried again",
		"account", a.Name, "since", since.Format(time.RFC3339), "reason", reason, "recheck_at", recheckAt.Format(time.RFC3339))
	s.m.SetSendPath(a.Name, "graph")
	return st
}

// autoRecheck is l's auto_smtp_recheck, or its default.
func autoRecheck(l config.SMTPLimits) time.Duration {
	if l.AutoSMTPRecheck > 0 {
		return l.AutoSMTPRecheck
	}
	return config.DefaultAutoSMTPRecheck
}

// dropAuto forgets the "auto" state of an account whose send_via is no
// longer "auto" (a reload changed it); tokens drops the kept path too, so
// that a reload back to "auto" starts on SMTP, as status then says.
func (s *Server) dropAuto(account string) {
	s.gb.mu.Lock()
	defer s.gb.mu.Unlock()
	delete(s.gb.auto, account)
}
