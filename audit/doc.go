// Package audit is the public side of the login audit of the IMAP, POP3 and
// SMTP proxies (imapproxy, pop3proxy, smtpproxy): the LoginAttempt each of
// them reports for every login it audits, and the LoginObserver interface a
// caller implements to see them (each proxy's Options.LoginObservers). The
// three proxies share these types, so one observer serves all three.
//
// A LoginAttempt never carries a password or a token.
package audit
