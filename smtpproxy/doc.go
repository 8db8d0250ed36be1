// Package smtpproxy accepts password SMTP submission from legacy software
// (helpdesks, scanners, cron scripts) and submits each message to Microsoft
// 365 over SMTP with SASL XOAUTH2.
//
// go-smtp runs both ends. Per local connection:
//
//	accept -> EHLO -> [STARTTLS -> EHLO] -> AUTH PLAIN|LOGIN (local bcrypt check)
//	       -> MAIL (sender policy, then upstream: dial, EHLO, STARTTLS, EHLO,
//	          AUTH XOAUTH2) -> RCPT... (relayed one by one; the upstream MAIL
//	          goes in the same write as the first RCPT where the upstream
//	          offers PIPELINING, else on its own at MAIL)
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
//     endpoint, network, Exchange 4xx, Graph 429/5xx, the per-mailbox
//     connection limit, and a missing sign-in or consent) is always a 4xx,
//     never a bounce. Permanent refusals are 5xx, as Microsoft's own are:
//     on the Graph path ErrorSendAsDenied (550 5.7.60), an application
//     access policy ("Access to OData is disabled", 550 5.7.1) and
//     MailboxNotEnabledForRESTAPI (550), each logged with its fix.
//   - No open relay: MAIL is refused until AUTH succeeded, and the envelope
//     sender must be the login's mailbox or one of its send_as addresses,
//     checked before anything goes upstream.
//   - Upstream replies reach the client verbatim: go-smtp type-asserts
//     *smtp.SMTPError, so upstream errors are returned bare, never wrapped
//     (a wrapped 550 would become a 451).
//     With a pipelined MAIL, the upstream's refusal of MAIL is the reply to
//     every RCPT of that transaction (MAIL itself got 250 from the bridge;
//     no message can follow without an accepted RCPT). Dial, token and
//     upstream-login failures still answer MAIL.
//
// Listener-level settings (SIZE, MaxRecipients, timeouts, line length) are
// taken from the configuration when Serve is called; reloads change them for
// new listeners only. The per-session checks (sender policy, message size,
// recipient count, insecure-auth rule, connection limits) and the local TLS
// certificate use the configuration current at the time.
package smtpproxy
