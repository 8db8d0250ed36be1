// Package frontdoor holds what the IMAP, POP3 and SMTP proxies share in
// front of a login: today the kinds of login failure (failure.go) and the
// per-connection failure policy (policy.go). Each proxy keeps one switch
// from Kind to its wire text; everything else about a failed login is
// decided here once.
//
// It is the seed of the shared front door (accept loop, limits, plaintext
// rule, account resolution) described in the architecture notes; those
// parts still live in the proxies.
package frontdoor
