// Package pop3proxy lets password-only POP3 clients (GLPI, osTicket,
// OTRS/Znuny, fetchmail) read a Microsoft 365 mailbox.
//
// Each local connection goes through four phases:
//
//	greeting   "+OK oauthbridge POP3 ready"
//	   |
//	pre-auth   handled here: CAPA, STLS, USER/PASS, AUTH PLAIN|LOGIN, QUIT;
//	   |       anything else is -ERR (the third one closes the connection)
//	   |       local password checked with localauth (bcrypt, throttled)
//	   |
//	upstream   per-account slot from the shared limiter ("mail:"+account),
//	   |       access token from tokens.Source, implicit TLS to pop3_server,
//	   |       the two-step "AUTH XOAUTH2" / "+" / <base64> that Exchange
//	   |       requires; a refused token is reported and retried once
//	   |
//	splice     "+OK logged in" to the client, then bytes are copied both
//	           ways from the bufio readers (internal/splice), so commands
//	           pipelined behind PASS are forwarded, not lost
//
// Failures are reported with RFC 2449/3206 response codes: [AUTH] for a
// wrong local password or a token the upstream refused, [SYS/PERM] when a
// person must act (re-login, configuration), [SYS/TEMP] for trouble that may
// pass, and [IN-USE] when the account's connection limit is reached.
//
// The proxy never writes into a spliced stream: on Shutdown it stops
// accepting, tells pre-auth clients "-ERR [SYS/TEMP] ..." and waits for
// spliced sessions until the context expires, then closes them.
package pop3proxy
