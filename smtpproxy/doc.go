// Package smtpproxy accepts password SMTP submission from legacy software
// (helpdesks, scanners, cron scripts) and submits each message to Microsoft
// 365 over SMTP with SASL XOAUTH2.
//
// go-smtp runs both ends. Per local connection:
//
//	accept -> EHLO -> [STARTTLS -> EHLO] -> AUTH PLAIN|LOGIN (local bcrypt check)
//	       -> MAIL (sender policy, then upstream: dial, EHLO, STARTTLS, EHLO,
//	          AUTH XOAUTH2, MAIL) -> RCPT... (relayed one by one)
//	       -> DATA or BDAT (streamed upstream as BDAT chunks where the upstream
//	          offers CHUNKING, else as DATA; 250 only after the upstream's 250)
//	       -> more transactions on the same upstream connection -> QUIT
//
// An account with send_via = "graph" (or "auto" while Microsoft 365 answers
// its SMTP AUTH with 535 5.7.139) has no upstream SMTP connection: the
// message is submitted through Microsoft Graph after DATA (graph.go,
// graphmime.go, graphlarge.go), with the same guarantees.
//
// Guarantees:
//
//   - Nothing is lost: the client sees 250 only after the upstream's 250. Any
//     failure while the body streams closes the upstream connection without
//     the final "." (or the LAST chunk) so a truncated message is never
//     delivered, and the client
//     gets a 4xx (552 for size) and keeps its copy. Temporary trouble (token
//     endpoint, network, Exchange 4xx, the per-mailbox connection limit, and
//     tenant settings an administrator must fix) is always a 4xx, never a
//     bounce.
//   - No open relay: MAIL is refused until AUTH succeeded, and the envelope
//     sender must be the login's mailbox or one of its send_as addresses,
//     checked before anything goes upstream.
//   - Upstream replies reach the client verbatim: go-smtp type-asserts
//     *smtp.SMTPError, so upstream errors are returned bare, never wrapped
//     (a wrapped 550 would become a 451).
//
// Listener-level settings (SIZE, MaxRecipients, timeouts, line length) are
// taken from the configuration when Serve is called; reloads change them for
// new listeners only. The per-session checks (sender policy, message size,
// recipient count, insecure-auth rule, connection limits) and the local TLS
// certificate use the configuration current at the time.
package smtpproxy
