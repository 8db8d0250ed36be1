// Package audit is the public side of the login audit of the IMAP, POP3 and
// SMTP proxies (imapproxy, pop3proxy, smtpproxy): the LoginAttempt each of
// them reports for every login it audits, and the LoginObserver interface a
// caller implements to see them (each proxy's Options.LoginObservers). The
// three proxies share these types, so one observer serves all three.
//
// It also holds the errors a password checker (each proxy's
// PasswordChecker, Options.Auth) returns to say why it refused a login:
// ErrBadCredentials, ErrThrottled and ErrBusy. Only ErrBadCredentials is
// answered as wrong credentials; every other error is a temporary failure.
// They live here, beside Result, because each maps to one Result and the
// three proxies share them, so one checker serves all three.
//
// A LoginAttempt never carries a password or a token.
package audit
