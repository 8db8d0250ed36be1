package fakems

import "strings"

// SMTPAuthAttempts returns how many SMTP AUTH XOAUTH2 attempts the SMTP
// server got for mailbox (the user= of the request), whatever their answer.
func (f *Fake) SMTPAuthAttempts(mailbox string) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.smtpAuthAttempts[strings.ToLower(mailbox)]
}

func (f *Fake) countSMTPAuth(user string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.smtpAuthAttempts == nil {
		f.smtpAuthAttempts = map[string]int{}
	}
	f.smtpAuthAttempts[strings.ToLower(user)]++
}
