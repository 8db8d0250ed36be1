// Package imapproxy lets a legacy IMAP client that can only send a password
// use a Microsoft 365 mailbox. It terminates the IMAP pre-auth phase itself,
// logs in upstream with SASL XOAUTH2, and from then on copies bytes both ways.
//
// One connection goes through these states:
//
//	greeting  * OK [CAPABILITY IMAP4rev1 ID SASL-IR AUTH=PLAIN AUTH=LOGIN] oauthbridge ready
//	   |
//	pre-auth  CAPABILITY, NOOP, ID, LOGOUT, STARTTLS, LOGIN, AUTHENTICATE PLAIN|LOGIN
//	   |      (a small hand-written parser; anything else is BAD, three BADs end
//	   |      the connection; go-imap's imapserver cannot hand a connection over)
//	   |  local credentials OK (localauth), per-account slot (limiter), token (tokens)
//	   v
//	upstream  TLS dial, ob1 AUTHENTICATE XOAUTH2 <ir>, CAPABILITY + NOOP probe
//	   |      (Exchange may accept the token and then answer "BAD User is
//	   |      authenticated but not connected." to the next command)
//	   v
//	client    tag OK [CAPABILITY <upstream post-auth caps>] Logged in
//	   |
//	splice    protocol-blind byte copy (internal/splice) until either side closes
//
// The upstream's tagged lines are never relayed (their tag is ours, not the
// client's), and nothing is ever written into a running splice: Shutdown lets
// spliced sessions run until its context ends and then closes them.
package imapproxy
